// Index ops: indexSelect, gather, scatterAdd, embedding. Index tensors are i32.
//
// All gathers run shaders/gather.wgsl and all scatters shaders/scatter_add.wgsl, both
// straight on strided views (no contiguous copies of inputs).
//
// Out-of-range indices: checking a GPU index tensor would need a readback, so the
// kernels never do: an index outside [0, size) gathers 0 and is ignored by scatter-add
// (and gets a zero gradient). The kernels never read or write out of bounds. Where an
// op is given indices as host data (an Int32Array or number[]), they are checked on the
// host before upload, which costs nothing on the GPU.
//
// Scatter-add is deterministic: no atomics (WGSL has none for floats). Entries that hit
// the same output element are linked in order and summed by one invocation, so
// repeated ids (a token embedding's backward) accumulate exactly and reproducibly.
// Cost: O(J) per index entry for the linking pass (J = index size along the axis;
// for embedding, J = number of ids) plus the sums.
import { assertDType } from '../dtype.ts';
import { record } from '../autograd.ts';
import { Params, getEngine } from '../engine.ts';
import { Tensor, contiguousStrides, empty, fromArray, numel, shapeStr } from '../tensor.ts';
import { unaryKernel, zeros } from './copy.ts';
import { pad, reshape } from './shape.ts';
import { MAX_RANK, checkF16, collapseDims, computeType, enableFor, grid1d, normAxis, padTo } from './util.ts';

/** An index: an i32 tensor, or host data (checked on the host, then uploaded). */
export type IndexLike = Tensor | Int32Array | readonly number[];

/** The index as an i32 tensor; host data is range-checked against `bound` first. */
function indexTensor(op: string, name: string, index: IndexLike, bound: number): { t: Tensor; owned: boolean } {
  if (index instanceof Tensor) {
    assertDType(op, name, index.dtype, ['i32']);
    return { t: index, owned: false };
  }
  for (let i = 0; i < index.length; i++) {
    const v = index[i];
    if (!Number.isInteger(v) || v < 0 || v >= bound) throw new RangeError(`${op}: ${name}[${i}] = ${v} is out of range [0, ${bound})`);
  }
  return { t: fromArray(Int32Array.from(index), [index.length], 'i32'), owned: true };
}

// ---------------------------------------------------------------- kernels

/**
 * y[c] = x[xbase(c) + index[ibase(c)] * kStride] over the output shape `shape`, where
 * xStrides / idxStrides give, per output dim, the strides into x and into the index.
 */
function gatherKernel(x: Tensor, K: number, kStride: number, shape: readonly number[], xStrides: readonly number[], idx: Tensor, idxStrides: readonly number[], label: string): Tensor {
  checkF16(label, x);
  const y = empty(shape, x.dtype);
  const n = y.size;
  if (n === 0) return y;
  const c = collapseDims(shape, [xStrides, idxStrides]);
  getEngine().dispatch({
    shader: 'gather',
    defines: { ENABLE: enableFor(x.dtype), T: x.dtype },
    params: new Params()
      .u32(n, c.shape.length, x.offset, idx.offset, K, kStride, 0, 0)
      .u32(...padTo(c.shape))
      .u32(...padTo(c.strides[0], 0))
      .u32(...padTo(c.strides[1], 0)),
    buffers: [x.buf, idx.buf, y.buf],
    workgroups: grid1d(n),
    label: `${label} ${shapeStr(x.shape)} by ${shapeStr(idx.shape)}`,
  });
  return y;
}

/** collapseDims on each side of `axis`, keeping the axis as its own dim. */
function collapseAround(shape: readonly number[], axis: number, strides: readonly (readonly number[])[], label: string) {
  const left = collapseDims(shape.slice(0, axis), strides.map((s) => s.slice(0, axis)));
  const right = collapseDims(shape.slice(axis + 1), strides.map((s) => s.slice(axis + 1)));
  const rank = left.shape.length + 1 + right.shape.length;
  if (rank > MAX_RANK) throw new RangeError(`${label}: shape ${shapeStr(shape)} has more than ${MAX_RANK} non-mergeable dims`);
  return {
    shape: [...left.shape, shape[axis], ...right.shape],
    axis: left.shape.length,
    strides: strides.map((s, q) => [...left.strides[q], s[axis], ...right.strides[q]]),
  };
}

/**
 * In place on `out` (a fresh contiguous tensor holding the base values):
 * out[c with axis coordinate idx[c]] += src[c] for every c in `shape`, which has out's
 * rank. idxStrides / srcStrides are per dim of `shape` (0 where broadcast).
 */
function scatterAddKernel(out: Tensor, axis: number, shape: readonly number[], idx: Tensor, idxStrides: readonly number[], src: Tensor, srcStrides: readonly number[], label: string): void {
  const n = numel(shape);
  if (n === 0) return;
  const J = shape[axis];
  const K = out.shape[axis];
  // Dims where the index is broadcast share their links: link only the distinct entries.
  const compact = shape.map((d, i) => (i !== axis && idxStrides[i] === 0 ? 1 : d));
  const cs = contiguousStrides(compact);
  const linkStrides = compact.map((d, i) => (d === 1 && i !== axis ? 0 : cs[i]));
  const link = empty(compact, 'u32');
  const zero = shape.map(() => 0);
  const defines = { ENABLE: enableFor(out.dtype), T: out.dtype, ACC: computeType(out.dtype) };
  const params = (sh: readonly number[], strides: readonly (readonly number[])[], count: number) => {
    const c = collapseAround(sh, axis, strides, label);
    return new Params()
      .u32(count, c.shape.length, c.axis, J, K, idx.offset, src.offset, 0)
      .u32(...padTo(c.shape))
      .u32(...c.strides.flatMap((s) => padTo(s, 0)));
  };
  const eng = getEngine();
  eng.dispatch({
    shader: 'scatter_add',
    entry: 'chain',
    defines,
    params: params(compact, [idxStrides, zero, cs, zero], numel(compact)),
    buffers: [idx.buf, link.buf],
    workgroups: grid1d(numel(compact)),
    label: `${label} (link) ${shapeStr(compact)}`,
  });
  eng.dispatch({
    shader: 'scatter_add',
    entry: 'scatter',
    defines,
    params: params(shape, [idxStrides, srcStrides, linkStrides, out.strides], n),
    buffers: [idx.buf, link.buf, src.buf, out.buf],
    workgroups: grid1d(n),
    label: `${label} ${shapeStr(shape)} into ${shapeStr(out.shape)}`,
  });
  link.dispose();
}

/** x's strides with the gathered axis zeroed (the kernel adds index * kStride instead). */
function offAxis(strides: readonly number[], axis: number): number[] {
  return strides.map((s, i) => (i === axis ? 0 : s));
}

// ---------------------------------------------------------------- indexSelect

/**
 * Picks entries along `axis` by a 1-D index: out shape is x's with dim `axis` replaced
 * by index.length. Backward (to x): the gradient scatter-added into zeros.
 */
export function indexSelect(x: Tensor, axis: number, index: IndexLike): Tensor {
  const op = 'indexSelect';
  const a = normAxis(op, axis, x.rank);
  const { t: idx, owned } = indexTensor(op, 'index', index, x.shape[a]);
  if (idx.rank !== 1) throw new RangeError(`${op}: index must be 1-D, got shape ${shapeStr(idx.shape)}`);
  const outShape = x.shape.map((d, i) => (i === a ? idx.shape[0] : d));
  const idxStrides = (t: Tensor) => outShape.map((_, i) => (i === a ? t.strides[0] : 0));
  const y = gatherKernel(x, x.shape[a], x.strides[a], outShape, offAxis(x.strides, a), idx, idxStrides(idx), op);
  const inShape = x.shape;
  const out = record(
    y,
    op,
    [x],
    (g, [ix]) => {
      const gx = zeros(inShape, g.dtype);
      scatterAddKernel(gx, a, g.shape, ix, idxStrides(ix), g, g.strides, `${op} backward`);
      return [gx];
    },
    [idx],
  );
  if (owned) idx.dispose();
  return out;
}

// ---------------------------------------------------------------- gather

/**
 * torch.gather: out[c] = x[c with coordinate `axis` replaced by index[c]]. index has
 * x's rank and no dim larger than x's outside `axis`; out has index's shape.
 * Backward (to x): the gradient scatter-added into zeros.
 */
export function gather(x: Tensor, axis: number, index: Tensor): Tensor {
  const op = 'gather';
  assertDType(op, 'index', index.dtype, ['i32']);
  const a = normAxis(op, axis, x.rank);
  if (index.rank !== x.rank || index.shape.some((d, i) => i !== a && d > x.shape[i])) {
    throw new RangeError(`${op}: index shape ${shapeStr(index.shape)} must have x's rank and no dim larger than x's ${shapeStr(x.shape)} outside axis ${a}`);
  }
  const y = gatherKernel(x, x.shape[a], x.strides[a], index.shape, offAxis(x.strides, a), index, index.strides, op);
  const inShape = x.shape;
  return record(
    y,
    op,
    [x],
    (g, [ix]) => {
      const gx = zeros(inShape, g.dtype);
      scatterAddKernel(gx, a, ix.shape, ix, ix.strides, g, g.strides, `${op} backward`);
      return [gx];
    },
    [index],
  );
}

// ---------------------------------------------------------------- scatterAdd

/**
 * torch's scatter_add, out of place: a copy of x with src[c] added at x[c with
 * coordinate `axis` replaced by index[c]] for every c in index's shape. index, src
 * and x have one rank; index is no larger than src in any dim, nor than x outside
 * `axis`. Repeated targets accumulate (deterministically, see the file comment).
 * Backward: g to x; to src, g gathered at the index (zero outside index's shape).
 */
export function scatterAdd(x: Tensor, axis: number, index: Tensor, src: Tensor): Tensor {
  const op = 'scatterAdd';
  assertDType(op, 'index', index.dtype, ['i32']);
  if (x.dtype !== src.dtype) throw new TypeError(`${op}: x has dtype ${x.dtype} but src has ${src.dtype}`);
  checkF16(op, x, src);
  const a = normAxis(op, axis, x.rank);
  if (
    index.rank !== x.rank ||
    src.rank !== x.rank ||
    index.shape.some((d, i) => d > src.shape[i] || (i !== a && d > x.shape[i]))
  ) {
    throw new RangeError(
      `${op}: index shape ${shapeStr(index.shape)} must have the rank of x ${shapeStr(x.shape)} and src ${shapeStr(src.shape)}, ` +
        `no dim larger than src's, and none larger than x's outside axis ${a}`,
    );
  }
  // A fresh copy even when x is contiguous (contiguous() would return a view).
  const y = unaryKernel(x, 'x', `${op} copy`);
  scatterAddKernel(y, a, index.shape, index, index.strides, src, src.strides, op);
  const srcShape = src.shape;
  return record(
    y,
    op,
    [x, src],
    (g, [ix]) => {
      const gs = gatherKernel(g, g.shape[a], g.strides[a], ix.shape, offAxis(g.strides, a), ix, ix.strides, `${op} backward`);
      if (gs.shape.every((d, i) => d === srcShape[i])) return [g, gs];
      // src entries beyond index's shape were never added: their gradient is 0.
      const padded = pad(gs, srcShape.map((d, i) => [0, d - gs.shape[i]] as [number, number]));
      gs.dispose();
      return [g, padded];
    },
    [index],
  );
}

// ---------------------------------------------------------------- embedding

/**
 * Token embedding: rows of weight [V, D] picked by ids (i32, any shape) ->
 * [...ids.shape, D]. Host ids are range-checked; on the GPU an id outside [0, V)
 * gives a zero row. Backward (to weight): each row gets the sum of the gradients of
 * every position holding its id (deterministic scatter-add).
 */
export function embedding(weight: Tensor, ids: IndexLike): Tensor {
  const op = 'embedding';
  if (weight.rank !== 2) throw new RangeError(`${op}: weight must be [vocab, dim], got shape ${shapeStr(weight.shape)}`);
  const [V, D] = weight.shape;
  const { t: idx, owned } = indexTensor(op, 'ids', ids, V);
  const outShape = [...idx.shape, D];
  const y = gatherKernel(weight, V, weight.strides[0], outShape, [...idx.shape.map(() => 0), weight.strides[1]], idx, [...idx.strides, 0], op);
  const out = record(
    y,
    op,
    [weight],
    (g, [ix]) => {
      // Flatten positions: every position may hit every row, so they form one axis.
      const flatIds = reshape(ix, [-1]);
      const g2 = reshape(g, [-1, D]);
      const N = flatIds.shape[0];
      const gw = zeros([V, D], g.dtype);
      scatterAddKernel(gw, 0, [N, D], flatIds, [flatIds.strides[0], 0], g2, g2.strides, `${op} backward`);
      flatIds.dispose();
      g2.dispose();
      return [gw];
    },
    [idx],
  );
  if (owned) idx.dispose();
  return out;
}
