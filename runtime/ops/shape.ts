// Shape ops. Views share storage where the layout allows (reshape of a contiguous
// tensor, permute, transpose, expand, squeeze, unsqueeze, slice); concat, stack and pad
// copy into a new tensor (shaders/concat.wgsl, shaders/pad.wgsl).
//
// Backward rules of views return views of the gradient where they can (permute,
// squeeze, unsqueeze, pad), so a leaf's gradient may be a non-contiguous view.
import { record } from '../autograd.ts';
import { Params, getEngine } from '../engine.ts';
import { Tensor, empty, numel, shapeStr } from '../tensor.ts';
import { contiguous } from './copy.ts';
import { sumTo } from './reduce.ts';
import { MAX_RANK, checkF16, collapseDims, enableFor, grid1d, normAxis, padTo } from './util.ts';

/** Resolves one -1 in a target shape; the error names both shapes. */
export function resolveShape(op: string, from: readonly number[], to: readonly number[]): number[] {
  const n = numel(from);
  const unknown = to.filter((d) => d === -1).length;
  if (unknown > 1) throw new RangeError(`${op}: more than one -1 in ${shapeStr(to)}`);
  const known = to.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
  const out = to.map((d) => (d === -1 ? (known === 0 ? 0 : n / known) : d));
  if (numel(out) !== n || out.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new RangeError(`${op}: cannot reshape ${shapeStr(from)} (${n} elements) to ${shapeStr(to)}`);
  }
  return out;
}

/** Same elements in a new shape; a view when x is contiguous. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const to = resolveShape('reshape', x.shape, shape);
  let y: Tensor;
  if (x.isContiguous()) y = x.view(to, undefined, x.offset);
  else {
    const c = contiguous(x);
    y = c.view(to);
    c.dispose();
  }
  const from = x.shape;
  return record(y, 'reshape', [x], (g) => [reshape(g, from)]);
}

// ---------------------------------------------------------------- permute, transpose

/** Reorders the axes: out axis i is x's axis dims[i]. A view (strides permuted, no copy). */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  const r = x.rank;
  if (dims.length !== r) {
    throw new RangeError(`permute: ${dims.length} axes [${dims.join(', ')}] given for shape ${shapeStr(x.shape)} of rank ${r}`);
  }
  const p = dims.map((d) => normAxis('permute', d, r));
  if (new Set(p).size !== r) throw new RangeError(`permute: [${dims.join(', ')}] is not a permutation of the ${r} axes of ${shapeStr(x.shape)}`);
  const y = x.view(
    p.map((d) => x.shape[d]),
    p.map((d) => x.strides[d]),
  );
  const inverse = new Array<number>(r);
  p.forEach((d, i) => (inverse[d] = i));
  return record(y, 'permute', [x], (g) => [permute(g, inverse)]);
}

/** Swaps two axes (the last two by default). A view. */
export function transpose(x: Tensor, d0 = -2, d1 = -1): Tensor {
  const a = normAxis('transpose', d0, x.rank);
  const b = normAxis('transpose', d1, x.rank);
  const dims = x.shape.map((_, i) => i);
  dims[a] = b;
  dims[b] = a;
  return permute(x, dims);
}

// ---------------------------------------------------------------- expand

/**
 * Broadcasts x to `shape` without copying: a view with stride 0 on every broadcast
 * dim. New leading dims are allowed; -1 keeps x's size for that dim. Only size-1 dims
 * of x can grow. Backward sums the gradient back (sumTo).
 */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const fail = () => new RangeError(`expand: cannot expand ${shapeStr(x.shape)} to ${shapeStr(shape)}`);
  const lead = shape.length - x.rank;
  if (lead < 0) throw fail();
  const to: number[] = [];
  const strides: number[] = [];
  shape.forEach((want, j) => {
    const have = j < lead ? undefined : x.shape[j - lead];
    if (have !== undefined && (want === -1 || want === have)) {
      to.push(have);
      strides.push(x.strides[j - lead]);
    } else if ((have === undefined || have === 1) && Number.isInteger(want) && want >= 0) {
      to.push(want);
      strides.push(0);
    } else throw fail();
  });
  const y = x.view(to, strides);
  const from = x.shape;
  return record(y, 'expand', [x], (g) => [sumTo(g, from)]);
}

// ---------------------------------------------------------------- squeeze, unsqueeze

/** A view of t with a size-1 axis inserted at position a (no autograd). */
function insertUnitAxis(t: Tensor, a: number): Tensor {
  const shape = [...t.shape];
  const strides = [...t.strides];
  shape.splice(a, 0, 1);
  // The stride of a size-1 axis is never used; pick the one a contiguous tensor would have.
  strides.splice(a, 0, a < t.rank ? t.strides[a] * t.shape[a] : 1);
  return t.view(shape, strides);
}

/** A view of t without the given size-1 axes (no autograd). */
function dropUnitAxes(t: Tensor, axes: readonly number[]): Tensor {
  return t.view(
    t.shape.filter((_, i) => !axes.includes(i)),
    t.strides.filter((_, i) => !axes.includes(i)),
  );
}

/** Inserts a size-1 axis at `axis` (in -(rank+1)..rank). A view. */
export function unsqueeze(x: Tensor, axis: number): Tensor {
  const a = normAxis('unsqueeze', axis, x.rank + 1);
  const y = insertUnitAxis(x, a);
  return record(y, 'unsqueeze', [x], (g) => [dropUnitAxes(g, [a])]);
}

/**
 * Removes size-1 axes: all of them, or only `axis`. Unlike torch, squeezing an axis
 * whose size is not 1 is an error rather than a silent no-op. A view.
 */
export function squeeze(x: Tensor, axis?: number): Tensor {
  let axes: number[];
  if (axis === undefined) axes = x.shape.flatMap((d, i) => (d === 1 ? [i] : []));
  else {
    const a = normAxis('squeeze', axis, x.rank);
    if (x.shape[a] !== 1) throw new RangeError(`squeeze: axis ${axis} of shape ${shapeStr(x.shape)} has size ${x.shape[a]}, not 1`);
    axes = [a];
  }
  const y = dropUnitAxes(x, axes);
  return record(y, 'squeeze', [x], (g) => {
    // Re-insert the axes in ascending order so each position is final when inserted.
    let cur = g.view(g.shape, g.strides);
    for (const a of axes) {
      const next = insertUnitAxis(cur, a);
      cur.dispose();
      cur = next;
    }
    return [cur];
  });
}

// ---------------------------------------------------------------- pad kernel

/**
 * out[o] = x[(o - before) / step] per dim where that lands on an element of x, else
 * `value`. Pad is step 1; the backward of slice is before = start, step = step.
 */
function padKernel(x: Tensor, outShape: readonly number[], before: readonly number[], step: readonly number[], value: number, label: string): Tensor {
  checkF16(label, x);
  const y = empty(outShape, x.dtype);
  const n = y.size;
  if (n === 0) return y;
  // Merge runs of untouched dims (no pad, step 1) that x lays out contiguously, and
  // drop untouched size-1 dims, so any rank works while the kernel sees at most MAX_RANK.
  const dims: { out: number; inp: number; stride: number; before: number; step: number; plain: boolean }[] = [];
  for (let i = 0; i < outShape.length; i++) {
    const plain = before[i] === 0 && step[i] === 1 && x.shape[i] === outShape[i];
    if (plain && outShape[i] === 1) continue;
    const last = dims[dims.length - 1];
    if (plain && last?.plain && last.stride === x.strides[i] * x.shape[i]) {
      last.out *= outShape[i];
      last.inp *= x.shape[i];
      last.stride = x.strides[i];
      continue;
    }
    dims.push({ out: outShape[i], inp: x.shape[i], stride: x.strides[i], before: before[i], step: step[i], plain });
  }
  if (dims.length > MAX_RANK) throw new RangeError(`${label}: ${shapeStr(x.shape)} -> ${shapeStr(outShape)} touches more than ${MAX_RANK} non-mergeable dims`);
  const p = new Params().u32(n, dims.length, x.offset);
  let valueExpr: string;
  if (x.dtype === 'i32') (p.i32(Math.trunc(value)), (valueExpr = 'bitcast<i32>(pu(3u))'));
  else if (x.dtype === 'u32') (p.u32(Math.trunc(value)), (valueExpr = 'pu(3u)'));
  else (p.f32(value), (valueExpr = `${x.dtype}(bitcast<f32>(pu(3u)))`));
  p.u32(...padTo(dims.map((d) => d.out)))
    .u32(...padTo(dims.map((d) => d.inp)))
    .u32(...padTo(dims.map((d) => d.stride), 0))
    .u32(...padTo(dims.map((d) => d.before), 0))
    .u32(...padTo(dims.map((d) => d.step)));
  getEngine().dispatch({
    shader: 'pad',
    defines: { ENABLE: enableFor(x.dtype), T: x.dtype, VALUE: valueExpr },
    params: p,
    buffers: [x.buf, y.buf],
    workgroups: grid1d(n),
    label: `${label} ${shapeStr(x.shape)} -> ${shapeStr(outShape)}`,
  });
  return y;
}

// ---------------------------------------------------------------- slice

/**
 * Elements start, start+step, ... before end along `axis`, as a view (element offset +
 * scaled stride). Negative start/end count from the end and both are clamped to the
 * axis like Python slicing (x[start:end:step]); end defaults to the axis size. step
 * must be a positive integer. Backward: the gradient placed into zeros of x's shape.
 */
export function slice(x: Tensor, axis: number, start: number, end: number = Infinity, step = 1): Tensor {
  const a = normAxis('slice', axis, x.rank);
  if (!Number.isInteger(step) || step < 1) throw new RangeError(`slice: step must be a positive integer, got ${step}`);
  for (const [name, v] of [['start', start], ['end', end]] as const) {
    if (!Number.isInteger(v) && Math.abs(v) !== Infinity) throw new RangeError(`slice: ${name} must be an integer, got ${v}`);
  }
  const n = x.shape[a];
  const clampIdx = (v: number) => (v < 0 ? Math.max(v + n, 0) : Math.min(v, n));
  const s = clampIdx(start);
  const e = clampIdx(end);
  const len = Math.max(0, Math.ceil((e - s) / step));
  const shape = [...x.shape];
  const strides = [...x.strides];
  shape[a] = len;
  strides[a] *= step;
  const y = x.view(shape, strides, x.offset + (len > 0 ? s * x.strides[a] : 0));
  const inShape = x.shape;
  return record(y, 'slice', [x], (g) =>
    [padKernel(g, inShape, inShape.map((_, i) => (i === a ? s : 0)), inShape.map((_, i) => (i === a ? step : 1)), 0, 'slice backward')],
  );
}

// ---------------------------------------------------------------- pad

/**
 * Constant padding. pads[i] = [before, after] (non-negative integers). The list is
 * written first-axis-first, and when it is shorter than the rank it applies to the
 * LAST axes: for rank 3, pad(x, [[1, 1], [2, 0]]) pads axis 1 by 1/1 and axis 2 by 2/0.
 * (torch's F.pad also pads the last axes but lists them last-axis-first.)
 * Backward: the slice of the gradient that covers x (a view).
 */
export function pad(x: Tensor, pads: readonly (readonly [number, number])[], value = 0): Tensor {
  const r = x.rank;
  if (pads.length > r) throw new RangeError(`pad: ${pads.length} [before, after] pairs given for shape ${shapeStr(x.shape)} of rank ${r}`);
  const before = new Array<number>(r).fill(0);
  const after = new Array<number>(r).fill(0);
  pads.forEach(([b, e], i) => {
    if (!Number.isInteger(b) || !Number.isInteger(e) || b < 0 || e < 0) {
      throw new RangeError(`pad: pads[${i}] = [${b}, ${e}] must be non-negative integers`);
    }
    before[r - pads.length + i] = b;
    after[r - pads.length + i] = e;
  });
  const outShape = x.shape.map((d, i) => d + before[i] + after[i]);
  const y = padKernel(x, outShape, before, new Array<number>(r).fill(1), value, 'pad');
  const inShape = x.shape;
  return record(y, 'pad', [x], (g) => {
    const offset = before.reduce((acc, b, i) => acc + b * g.strides[i], g.offset);
    return [g.view(inShape, g.strides, numel(inShape) > 0 ? offset : g.offset)];
  });
}

// ---------------------------------------------------------------- concat, stack

/** Copies each input into its region of a new tensor along `axis` (one dispatch per input). */
function concatKernel(xs: readonly Tensor[], axis: number, outShape: readonly number[], label: string): Tensor {
  const y = empty(outShape, xs[0].dtype);
  const yStrides = y.strides;
  let at = 0;
  for (const x of xs) {
    const n = x.size;
    if (n > 0) {
      const c = collapseDims(x.shape, [x.strides, yStrides]);
      getEngine().dispatch({
        shader: 'concat',
        defines: { ENABLE: enableFor(x.dtype), T: x.dtype },
        params: new Params()
          .u32(n, c.shape.length, x.offset, at * yStrides[axis])
          .u32(...padTo(c.shape))
          .u32(...padTo(c.strides[0], 0))
          .u32(...padTo(c.strides[1], 0)),
        buffers: [x.buf, y.buf],
        workgroups: grid1d(n),
        label: `${label} ${shapeStr(x.shape)} into ${shapeStr(outShape)}`,
      });
    }
    at += x.shape[axis];
  }
  return y;
}

/** Checks dtypes and that shapes agree outside `skip` (an axis, or -1 for all). */
function checkParts(op: string, xs: readonly Tensor[], skip: number): void {
  if (xs.length === 0) throw new RangeError(`${op}: needs at least one tensor`);
  const first = xs[0];
  checkF16(op, ...xs);
  xs.forEach((x, i) => {
    if (x.dtype !== first.dtype) throw new TypeError(`${op}: tensor ${i} has dtype ${x.dtype}, tensor 0 has ${first.dtype}`);
    if (x.rank !== first.rank || x.shape.some((d, q) => q !== skip && d !== first.shape[q])) {
      const where = skip >= 0 ? ` outside axis ${skip}` : '';
      throw new RangeError(`${op}: tensor ${i} has shape ${shapeStr(x.shape)}, which differs from tensor 0's ${shapeStr(first.shape)}${where}`);
    }
  });
}

/** Joins tensors along an existing axis (a copy). Backward: the slices of g, made contiguous. */
export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new RangeError('concat: needs at least one tensor');
  const a = normAxis('concat', axis, xs[0].rank);
  checkParts('concat', xs, a);
  const sizes = xs.map((x) => x.shape[a]);
  const outShape = xs[0].shape.map((d, i) => (i === a ? sizes.reduce((p, q) => p + q, 0) : d));
  const y = concatKernel(xs, a, outShape, 'concat');
  const needs = xs.map((x) => x.requiresGrad);
  return record(y, 'concat', [...xs], (g) => {
    let at = 0;
    return sizes.map((len, i) => {
      const from = at;
      at += len;
      if (!needs[i]) return null;
      const v = slice(g, a, from, from + len);
      const c = contiguous(v);
      v.dispose();
      return c;
    });
  });
}

/** Joins same-shaped tensors along a new axis (in -(rank+1)..rank). A copy. */
export function stack(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new RangeError('stack: needs at least one tensor');
  const a = normAxis('stack', axis, xs[0].rank + 1);
  checkParts('stack', xs, -1);
  // Plain views (no graph): stack records its own backward below.
  const parts = xs.map((x) => insertUnitAxis(x, a));
  const outShape = [...xs[0].shape];
  outShape.splice(a, 0, xs.length);
  const y = concatKernel(parts, a, outShape, 'stack');
  for (const p of parts) p.dispose();
  const needs = xs.map((x) => x.requiresGrad);
  return record(y, 'stack', [...xs], (g) =>
    needs.map((need, i) => {
      if (!need) return null;
      const v = slice(g, a, i, i + 1);
      const sq = dropUnitAxes(v, [a]);
      const c = contiguous(sq);
      v.dispose();
      sq.dispose();
      return c;
    }),
  );
}
