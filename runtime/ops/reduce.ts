// Reductions over any axes: sum, mean, max, min, logsumexp, argmax, argmin; and the
// broadcast pair broadcastTo / sumTo that elementwise backward rules use.
//
// Every reduction is one kernel over its input seen as a dense [outer, R, inner] tensor:
// - when the reduced dims form one run among the dims larger than 1, the input is read in
//   place (copied once first if it is strided);
// - otherwise one strided copy moves the kept dims to the front and the reduced ones to the
//   back, giving [outer, R, 1].
// Either way the output, [outer, inner], holds the kept dims in their order, which is the
// result's layout with or without keepdim, so no reshape copy is needed.
//
// Kernels (shaders/reduce*.wgsl) have two entries: `main`, one invocation per output with a
// serial loop over R (the default; best on lavapipe, where barriers are costly, and whenever
// inner > 1), and `rows`, one workgroup per output row with a shared-memory tree, used when
// inner == 1 and R >= reduceTuning.rowsMinR on hardware GPUs.
import { type DType, assertDType } from '../dtype.ts';
import { Params, getEngine } from '../engine.ts';
import { Tensor, contiguousStrides, empty, numel, shapeStr } from '../tensor.ts';
import { record } from '../autograd.ts';
import { contiguous, unaryKernel } from './copy.ts';
import { binaryKernel } from './elementwise.ts';
import { reshape } from './shape.ts';
import { checkF16, computeType, enableFor, grid1d, normAxis, sameShape } from './util.ts';

/**
 * When the `rows` (workgroup-per-row) kernels are used: inner == 1 and R >= rowsMinR.
 * `undefined` means the adapter default: never on software adapters (lavapipe), 256 elsewhere.
 * Tests set it to force either variant.
 */
export const reduceTuning: { rowsMinR: number | undefined } = { rowsMinR: undefined };

function rowsMinR(): number {
  return reduceTuning.rowsMinR ?? (getEngine().ctx.isSoftware ? Infinity : 256);
}

// ---------------------------------------------------------------- planning

/** How a reduction reads its input: a dense [outer, R, inner] source. */
interface Plan {
  /** Dense input (a view or a copy); dispose after the dispatch. */
  src: Tensor;
  outer: number;
  R: number;
  inner: number;
  /** Set when the input was permuted: x's dims in src order (kept dims, then reduced). */
  perm: number[] | null;
  /** x's shape with the reduced axes set to 1. */
  kept: number[];
  /** The result's shape (kept, or with the reduced axes dropped). */
  out: number[];
}

/** A dense (row-major from its offset) view of x, or a dense copy when x is strided. */
function dense(x: Tensor, label: string): Tensor {
  if (x.isContiguous()) return x.view(x.shape, x.strides, x.offset);
  return unaryKernel(x, 'x', label);
}

/** `axes` must be normalised, unique, sorted ascending and < rank. */
function plan(x: Tensor, axes: number[], keepdim: boolean, label: string): Plan {
  const red = new Set(axes);
  const kept = x.shape.map((d, i) => (red.has(i) ? 1 : d));
  const out = keepdim ? kept : x.shape.filter((_, i) => !red.has(i));
  // Dims of size 1 never affect the layout; look only at the larger ones.
  const big = x.shape.map((_, i) => i).filter((i) => x.shape[i] !== 1);
  const rb = big.filter((i) => red.has(i));
  const R = numel(rb.map((i) => x.shape[i]));
  if (rb.length === 0) return { src: dense(x, label), outer: numel(x.shape), R: 1, inner: 1, perm: null, kept, out };
  const first = big.indexOf(rb[0]);
  const last = big.indexOf(rb[rb.length - 1]);
  if (last - first + 1 === rb.length) {
    const outer = numel(x.shape.slice(0, rb[0]));
    const inner = numel(x.shape.slice(rb[rb.length - 1] + 1));
    return { src: dense(x, label), outer, R, inner, perm: null, kept, out };
  }
  const keptDims = x.shape.map((_, i) => i).filter((i) => !red.has(i));
  const perm = [...keptDims, ...axes];
  const v = x.view(
    perm.map((i) => x.shape[i]),
    perm.map((i) => x.strides[i]),
    x.offset,
  );
  const src = unaryKernel(v, 'x', `${label} (move reduced axes last)`);
  v.dispose();
  return { src, outer: numel(keptDims.map((i) => x.shape[i])), R, inner: 1, perm, kept, out };
}

/** Normalises `axes` (all when omitted; a number or a list, negatives allowed). */
function axesList(op: string, x: Tensor, axes?: number | readonly number[]): number[] {
  if (axes === undefined) return x.shape.map((_, i) => i);
  const raw = typeof axes === 'number' ? [axes] : [...axes];
  const list = raw.map((a) => axisOf(op, a, x.rank));
  if (new Set(list).size !== list.length) throw new RangeError(`${op}: axis repeated in [${raw.join(', ')}] for rank ${x.rank}`);
  // A rank-0 tensor accepts axis 0 / -1 (as in PyTorch); there is nothing to reduce.
  return list.filter((a) => a < x.rank).sort((a, b) => a - b);
}

/** normAxis, plus axis -1 on a rank-0 tensor (0 already passes); both mean "nothing". */
function axisOf(op: string, axis: number, rank: number): number {
  return rank === 0 && axis === -1 ? 0 : normAxis(op, axis, rank);
}

function assertFloatReduce(op: string, x: Tensor): void {
  if (x.dtype !== 'f32' && x.dtype !== 'f16') {
    throw new TypeError(`${op}: x has dtype ${x.dtype}, expected f32 or f16 (cast integer tensors to f32 first)`);
  }
  checkF16(op, x);
}

function dispatchReduce(shader: string, p: Plan, defines: Record<string, string>, outs: Tensor[], params: Params, label: string, x: Tensor): void {
  const n = p.outer * p.inner;
  const rows = p.inner === 1 && p.R >= rowsMinR();
  getEngine().dispatch({
    shader,
    entry: rows ? 'rows' : 'main',
    defines,
    params,
    buffers: [p.src.buf, ...outs.map((t) => t.buf)],
    workgroups: rows ? grid1d(n, 1) : grid1d(n),
    label: `${label} ${shapeStr(x.shape)} as [${p.outer}, ${p.R}, ${p.inner}]`,
  });
}

/** Sum of x over `axes` into a new tensor of `outShape` (numel outer * inner), times scale. */
function sumKernel(x: Tensor, axes: number[], keepdim: boolean, scale: number, label: string, outShape?: readonly number[]): Tensor {
  const p = plan(x, axes, keepdim, label);
  const y = empty(outShape ?? p.out, x.dtype);
  if (y.size > 0) {
    dispatchReduce(
      'reduce',
      p,
      { ENABLE: enableFor(x.dtype), TIN: x.dtype, TOUT: x.dtype },
      [y],
      new Params().u32(p.outer * p.inner, p.R, p.inner, p.src.offset).f32(scale),
      label,
      x,
    );
  }
  p.src.dispose();
  return y;
}

/**
 * The backward of a sum over `axes`: g (the result's shape) broadcast back to `inShape`,
 * times scale, in one strided pass.
 */
function expandBack(g: Tensor, inShape: readonly number[], axes: number[], scale: number, label: string): Tensor {
  const kept = inShape.map((d, i) => (axes.includes(i) ? 1 : d));
  const gk = reshape(g, kept);
  const v = gk.view(
    inShape,
    kept.map((d, i) => (d === 1 ? 0 : gk.strides[i])),
    gk.offset,
  );
  const out = unaryKernel(v, scale === 1 ? 'x' : 'x * a0', label, v.dtype, scale);
  v.dispose();
  gk.dispose();
  return out;
}

// ---------------------------------------------------------------- sum, mean

/**
 * Sum over `axes` (a number or a list, negatives allowed; all axes when omitted, giving
 * shape []). An empty list reduces nothing. f16 inputs accumulate in f32 and return f16.
 * Backward: the gradient broadcast back over the reduced axes.
 */
export function sum(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  assertFloatReduce('sum', x);
  const list = axesList('sum', x, axes);
  const y = sumKernel(x, list, keepdim, 1, 'sum');
  const inShape = x.shape;
  return record(y, 'sum', [x], (g) => [expandBack(g, inShape, list, 1, 'sum backward')]);
}

/** Mean over `axes` (as sum). A mean over zero elements is 0. */
export function mean(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  assertFloatReduce('mean', x);
  const list = axesList('mean', x, axes);
  const scale = 1 / Math.max(list.reduce((a, i) => a * x.shape[i], 1), 1);
  const y = sumKernel(x, list, keepdim, scale, 'mean');
  const inShape = x.shape;
  return record(y, 'mean', [x], (g) => [expandBack(g, inShape, list, scale, 'mean backward')]);
}

// ---------------------------------------------------------------- max, min, argmax, argmin

const ORDERED: readonly DType[] = ['f32', 'f16', 'i32', 'u32'];

/** Runs reduce_arg: the extreme values (x's dtype) and their first index (i32) in the reduced run. */
function extremeKernel(op: string, cmp: '>' | '<', x: Tensor, axes: number[], keepdim: boolean): { y: Tensor; idx: Tensor; p: Plan } {
  assertDType(op, 'x', x.dtype, ORDERED);
  checkF16(op, x);
  const p = plan(x, axes, keepdim, op);
  const n = p.outer * p.inner;
  if (p.R === 0 && n > 0) {
    p.src.dispose();
    throw new RangeError(`${op}: cannot reduce an empty axis (shape ${shapeStr(x.shape)}, axes [${axes.join(', ')}])`);
  }
  const y = empty(p.out, x.dtype);
  const idx = empty(p.out, 'i32');
  if (n > 0) {
    dispatchReduce(
      'reduce_arg',
      p,
      { ENABLE: enableFor(x.dtype), T: x.dtype, CT: computeType(x.dtype), CMP: cmp },
      [y, idx],
      new Params().u32(n, p.R, p.inner, p.src.offset),
      op,
      x,
    );
  }
  p.src.dispose();
  return { y, idx, p };
}

/**
 * Backward of max/min: g goes to the position of the extreme (I holds its index r in the
 * plan's [outer, R, inner] layout), zeros elsewhere; undoes the plan's permutation.
 */
function extremeBackward(g: Tensor, idx: Tensor, p: { outer: number; R: number; inner: number; perm: number[] | null }, inShape: readonly number[], label: string): Tensor {
  const gd = dense(g, label);
  const { outer, R, inner, perm } = p;
  const out = empty(perm ? perm.map((i) => inShape[i]) : inShape, g.dtype);
  const N = outer * R * inner;
  if (N > 0) {
    getEngine().dispatch({
      shader: 'reduce_arg_backward',
      defines: { ENABLE: enableFor(g.dtype), T: g.dtype },
      params: new Params().u32(N, R, inner, gd.offset, idx.offset),
      buffers: [gd.buf, idx.buf, out.buf],
      workgroups: grid1d(N),
      label: `${label} ${shapeStr(inShape)}`,
    });
  }
  gd.dispose();
  if (!perm) return out;
  // x's dim d sits at position perm.indexOf(d) of `out`.
  const ps = contiguousStrides(out.shape);
  const v = out.view(
    inShape,
    inShape.map((_, d) => ps[perm.indexOf(d)]),
    0,
  );
  const r = unaryKernel(v, 'x', label);
  v.dispose();
  out.dispose();
  return r;
}

function extreme(op: 'max' | 'min', x: Tensor, axes: number | readonly number[] | undefined, keepdim: boolean): Tensor {
  const list = axesList(op, x, axes);
  const { y, idx, p } = extremeKernel(op, op === 'max' ? '>' : '<', x, list, keepdim);
  const layout = { outer: p.outer, R: p.R, inner: p.inner, perm: p.perm };
  const inShape = x.shape;
  const out = record(y, op, [x], (g, [ix]) => [extremeBackward(g, ix, layout, inShape, `${op} backward`)], [idx]);
  idx.dispose(); // record kept its own view when a backward needs it
  return out;
}

/**
 * Maximum over `axes` (as sum; f32, f16, i32 or u32). Reducing an empty axis is an error.
 * Backward: the whole gradient goes to the position of the maximum; on ties, to the first
 * occurrence only (lowest index in row-major order over the reduced axes), not shared.
 */
export function max(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  return extreme('max', x, axes, keepdim);
}

/** Minimum over `axes`; backward and ties as in max. */
export function min(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  return extreme('min', x, axes, keepdim);
}

function argExtreme(op: string, cmp: '>' | '<', x: Tensor, axis: number, keepdim: boolean): Tensor {
  const a = axisOf(op, axis, x.rank);
  const { y, idx } = extremeKernel(op, cmp, x, a < x.rank ? [a] : [], keepdim);
  y.dispose();
  return idx;
}

/** Index (i32) of the maximum along `axis`; the first one on ties. Not differentiable. */
export function argmax(x: Tensor, axis = -1, keepdim = false): Tensor {
  return argExtreme('argmax', '>', x, axis, keepdim);
}

/** Index (i32) of the minimum along `axis`; the first one on ties. Not differentiable. */
export function argmin(x: Tensor, axis = -1, keepdim = false): Tensor {
  return argExtreme('argmin', '<', x, axis, keepdim);
}

// ---------------------------------------------------------------- logsumexp

/**
 * log(sum(exp(x))) over `axes` (as sum), computed stably (running max subtracted).
 * Reducing an empty axis gives -inf. Backward: g * softmax(x) over the reduced axes,
 * that is g * exp(x - y).
 */
export function logsumexp(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  assertFloatReduce('logsumexp', x);
  const list = axesList('logsumexp', x, axes);
  const p = plan(x, list, keepdim, 'logsumexp');
  const y = empty(p.out, x.dtype);
  const n = p.outer * p.inner;
  if (n > 0) {
    dispatchReduce(
      'reduce_lse',
      p,
      { ENABLE: enableFor(x.dtype), TIN: x.dtype, TOUT: x.dtype },
      [y],
      new Params().u32(n, p.R, p.inner, p.src.offset),
      'logsumexp',
      x,
    );
  }
  p.src.dispose();
  const kept = p.kept;
  return record(
    y,
    'logsumexp',
    [x],
    (g, [xs, ys]) => {
      const yk = reshape(ys, kept);
      const gk = reshape(g, kept);
      const w = binaryKernel(xs, yk, 'exp(a - b)', 'logsumexp backward');
      const r = binaryKernel(w, gk, 'a * b', 'logsumexp backward');
      yk.dispose();
      gk.dispose();
      w.dispose();
      return [r];
    },
    [x, y],
  );
}

// ---------------------------------------------------------------- broadcasting

/** Materialises a broadcast of x to `shape` (a contiguous copy). Backward: sumTo. */
export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(x.shape, shape)) return contiguous(x);
  const r = shape.length;
  const bad = () => new RangeError(`broadcastTo: cannot broadcast ${shapeStr(x.shape)} to ${shapeStr(shape)}`);
  if (x.rank > r) throw bad();
  const strides = new Array<number>(r).fill(0);
  for (let i = 0; i < x.rank; i++) {
    const j = r - x.rank + i;
    if (x.shape[i] !== shape[j] && x.shape[i] !== 1) throw bad();
    strides[j] = x.shape[i] === 1 ? 0 : x.strides[i];
  }
  const v = x.view(shape, strides, x.offset);
  const out = unaryKernel(v, 'x', 'broadcastTo');
  v.dispose();
  const from = x.shape;
  return record(out, 'broadcastTo', [x], (g) => [sumTo(g, from)]);
}

/**
 * Sums a broadcast gradient back down to `shape` (the inverse of broadcasting): leading
 * dims are summed away, dims where `shape` has 1 are summed with keepdim.
 * Returns a view of g when the shapes already match.
 */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(g.shape, shape)) return g.view(g.shape, g.strides, g.offset);
  const lead = g.rank - shape.length;
  const bad = () => new RangeError(`sumTo: cannot sum ${shapeStr(g.shape)} down to ${shapeStr(shape)}`);
  if (lead < 0) throw bad();
  const axes: number[] = [];
  for (let i = 0; i < g.rank; i++) {
    if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
    else if (shape[i - lead] !== g.shape[i]) throw bad();
  }
  assertFloatReduce('sumTo', g);
  // The kept dims in order are exactly `shape` (its 1s included), so write that shape directly.
  const y = sumKernel(g, axes, false, 1, 'sumTo', shape);
  const from = g.shape;
  return record(y, 'sumTo', [g], (gg) => [expandBack(gg, from, axes, 1, 'sumTo backward')]);
}
