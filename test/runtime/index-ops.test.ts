// Index ops against float64 CPU references: random shapes (size 1, odd sizes, negative
// axes, strided inputs and indices, many repeated indices), gradients by finite
// differences w.r.t. the float inputs (index tensors come in through closures).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import * as T from '../../runtime/index.ts';
import { checkOp, expectClose, prod, randArray, rng } from '../helpers.ts';

// ---------------------------------------------------------------- float64 reference

function coordsOf(i: number, shape: readonly number[]): number[] {
  const c = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    c[d] = i % shape[d];
    i = Math.floor(i / shape[d]);
  }
  return c;
}

function indexOf(c: readonly number[], shape: readonly number[]): number {
  let i = 0;
  for (let d = 0; d < shape.length; d++) i = i * shape[d] + c[d];
  return i;
}

/** torch.gather; an out-of-range index gives 0. */
function refGather(x: Float64Array, xShape: number[], axis: number, idx: Int32Array, idxShape: number[]): Float64Array {
  const out = new Float64Array(prod(idxShape));
  for (let o = 0; o < out.length; o++) {
    const c = coordsOf(o, idxShape);
    const k = idx[o];
    if (k < 0 || k >= xShape[axis]) continue;
    c[axis] = k;
    out[o] = x[indexOf(c, xShape)];
  }
  return out;
}

/** torch.scatter_add out of place; out-of-range indices are ignored. */
function refScatterAdd(x: Float64Array, xShape: number[], axis: number, idx: Int32Array, idxShape: number[], src: Float64Array, srcShape: number[]): Float64Array {
  const out = Float64Array.from(x);
  for (let e = 0; e < idx.length; e++) {
    const c = coordsOf(e, idxShape);
    const k = idx[e];
    if (k < 0 || k >= xShape[axis]) continue;
    const s = src[indexOf(c, srcShape)];
    c[axis] = k;
    out[indexOf(c, xShape)] += s;
  }
  return out;
}

function refIndexSelect(x: Float64Array, xShape: number[], axis: number, idx: ArrayLike<number>): Float64Array {
  const outShape = xShape.map((d, i) => (i === axis ? idx.length : d));
  const out = new Float64Array(prod(outShape));
  for (let o = 0; o < out.length; o++) {
    const c = coordsOf(o, outShape);
    c[axis] = idx[c[axis]];
    out[o] = x[indexOf(c, xShape)];
  }
  return out;
}

function refEmbedding(w: Float64Array, D: number, ids: ArrayLike<number>): Float64Array {
  const out = new Float64Array(ids.length * D);
  for (let n = 0; n < ids.length; n++) for (let d = 0; d < D; d++) out[n * D + d] = w[ids[n] * D + d];
  return out;
}

// ---------------------------------------------------------------- generators

const dimArb = fc.integer({ min: 1, max: 5 });
const shapeArb = (minRank = 1, maxRank = 4) => fc.array(dimArb, { minLength: minRank, maxLength: maxRank });
const axisArb = (r: number) => fc.tuple(fc.integer({ min: 0, max: r - 1 }), fc.boolean()).map(([a, neg]) => (neg ? a - r : a));
const norm = (a: number, r: number) => (a < 0 ? a + r : a);

let seed = 100;
const input = (shape: number[]) => ({ data: randArray(prod(shape), seed++), shape });

/** n random indices in [0, bound) from a seed (small bounds give many repeats). */
function randIndex(n: number, bound: number, s: number): Int32Array {
  const r = rng(s);
  return Int32Array.from({ length: n }, () => Math.floor(r() * bound));
}

/** Shapes for gather/scatter: x, index (<= x off the axis), src (>= index). */
const gatherCase = shapeArb(1, 4).chain((xs) =>
  fc.record({
    xs: fc.constant(xs),
    axis: axisArb(xs.length),
    shrink: fc.array(fc.integer({ min: 0, max: 4 }), { minLength: xs.length, maxLength: xs.length }),
    along: fc.integer({ min: 1, max: 7 }),
    grow: fc.array(fc.integer({ min: 0, max: 1 }), { minLength: xs.length, maxLength: xs.length }),
    seed: fc.integer(),
    transposeX: fc.boolean(),
  }),
).map((c) => {
  const a = norm(c.axis, c.xs.length);
  const is = c.xs.map((d, i) => (i === a ? c.along : Math.max(1, d - c.shrink[i])));
  const ss = is.map((d, i) => d + c.grow[i]);
  return { ...c, a, is, ss };
});

// ---------------------------------------------------------------- tests

describe('gather', () => {
  it('matches torch.gather semantics, with the gradient to x', async () => {
    await fc.assert(
      fc.asyncProperty(gatherCase, async ({ xs, axis, a, is, seed: s, transposeX }) => {
        const idx = randIndex(prod(is), xs[a], s);
        // Optionally x arrives as a view: stored with reversed axes, permuted back.
        const rev = [...xs.keys()].reverse();
        const stored = transposeX ? rev.map((d) => xs[d]) : xs;
        await checkOp({
          inputs: [input(stored)],
          gpu: ([x]) => T.gather(transposeX ? T.permute(x, rev) : x, axis, T.fromArray(idx, is, 'i32')),
          cpu: ([x]) => {
            const xx = transposeX ? Float64Array.from({ length: x.length }, (_, o) => x[indexOf(coordsOf(o, xs).reverse(), stored)]) : x;
            return refGather(xx, xs, a, idx, is);
          },
        });
      }),
      { numRuns: 25 },
    );
  });

  it('reads a strided index', async () => {
    const idx = Int32Array.from([0, 2, 1, 1, 2, 0]); // stored [3, 2], used transposed as [2, 3]
    await checkOp({
      inputs: [input([2, 3])],
      gpu: ([x]) => T.gather(x, 1, T.transpose(T.fromArray(idx, [3, 2], 'i32'))),
      cpu: ([x]) => refGather(x, [2, 3], 1, Int32Array.from([0, 1, 2, 2, 1, 0]), [2, 3]),
    });
  });
});

describe('indexSelect', () => {
  it('picks along any axis with repeated indices (tensor or host index), with gradients', async () => {
    const arb = shapeArb(1, 4).chain((s) =>
      fc.record({ shape: fc.constant(s), axis: axisArb(s.length), k: fc.integer({ min: 1, max: 7 }), seed: fc.integer(), host: fc.boolean() }),
    );
    await fc.assert(
      fc.asyncProperty(arb, async ({ shape, axis, k, seed: s, host }) => {
        const a = norm(axis, shape.length);
        const idx = randIndex(k, shape[a], s);
        await checkOp({
          inputs: [input(shape)],
          gpu: ([x]) => T.indexSelect(x, axis, host ? [...idx] : T.fromArray(idx, [k], 'i32')),
          cpu: ([x]) => refIndexSelect(x, shape, a, idx),
        });
      }),
      { numRuns: 25 },
    );
  });

  it('accepts a strided 1-D index (a slice with a step)', async () => {
    await checkOp({
      inputs: [input([4, 3])],
      gpu: ([x]) => T.indexSelect(x, 0, T.slice(T.fromArray([3, 9, 3, 9, 0, 9, 1], [7], 'i32'), 0, 0, undefined, 2)),
      cpu: ([x]) => refIndexSelect(x, [4, 3], 0, [3, 3, 0, 1]),
    });
  });

  it('accepts a broadcast index (stride 0): every entry hits one row', async () => {
    await checkOp({
      inputs: [input([3, 5])],
      gpu: ([x]) => T.indexSelect(x, 1, T.expand(T.fromArray([2], [1], 'i32'), [6])),
      cpu: ([x]) => refIndexSelect(x, [3, 5], 1, [2, 2, 2, 2, 2, 2]),
    });
  });
});

describe('gather with a broadcast index', () => {
  it('an index expanded over the other dims and along the axis', async () => {
    const idx = Int32Array.from([1, 0, 1, 2]); // [1, 4], expanded to [3, 4]
    const full = Int32Array.from({ length: 12 }, (_, o) => idx[o % 4]);
    await checkOp({
      inputs: [input([3, 5])],
      gpu: ([x]) => T.gather(x, 1, T.expand(T.fromArray(idx, [1, 4], 'i32'), [3, 4])),
      cpu: ([x]) => refGather(x, [3, 5], 1, full, [3, 4]),
    });
    await checkOp({
      inputs: [input([4, 2])],
      gpu: ([x]) => T.gather(x, 0, T.expand(T.fromArray([3, 1], [1, 2], 'i32'), [5, 2])),
      cpu: ([x]) => refGather(x, [4, 2], 0, Int32Array.from([3, 1, 3, 1, 3, 1, 3, 1, 3, 1]), [5, 2]),
    });
  });
});

describe('scatterAdd', () => {
  it('matches torch.scatter_add with duplicate targets, with gradients to x and src', async () => {
    await fc.assert(
      fc.asyncProperty(gatherCase, async ({ xs, axis, a, is, ss, seed: s }) => {
        const idx = randIndex(prod(is), xs[a], s);
        await checkOp({
          inputs: [input(xs), input(ss)],
          gpu: ([x, src]) => T.scatterAdd(x, axis, T.fromArray(idx, is, 'i32'), src),
          cpu: ([x, src]) => refScatterAdd(x, xs, a, idx, is, src, ss),
        });
      }),
      { numRuns: 25 },
    );
  });

  it('handles long runs of one target with strided src and index', async () => {
    // 40 entries along the axis, all but a few hitting row 2; src and index are transposed views.
    const J = 40;
    const idx = Int32Array.from({ length: J * 3 }, (_, i) => (i % 7 === 0 ? i % 4 : 2)); // stored [3, J]
    const idxT = Int32Array.from({ length: J * 3 }, (_, o) => idx[(o % 3) * J + Math.floor(o / 3)]); // [J, 3]
    await checkOp({
      inputs: [input([4, 3]), input([3, J])],
      gpu: ([x, src]) => T.scatterAdd(x, 0, T.transpose(T.fromArray(idx, [3, J], 'i32')), T.transpose(src)),
      cpu: ([x, src]) => {
        const srcT = Float64Array.from({ length: J * 3 }, (_, o) => src[(o % 3) * J + Math.floor(o / 3)]);
        return refScatterAdd(x, [4, 3], 0, idxT, [J, 3], srcT, [J, 3]);
      },
    });
  });
});

describe('embedding', () => {
  it('picks rows for ids of any shape; the weight gradient sums repeated ids', async () => {
    const arb = fc.record({
      V: fc.integer({ min: 1, max: 9 }),
      D: fc.integer({ min: 1, max: 7 }),
      ids: shapeArb(1, 3),
      seed: fc.integer(),
      host: fc.boolean(),
    });
    await fc.assert(
      fc.asyncProperty(arb, async ({ V, D, ids: idsShape, seed: s, host }) => {
        const ids = randIndex(prod(idsShape), V, s);
        await checkOp({
          inputs: [input([V, D])],
          gpu: ([w]) => {
            const y = T.embedding(w, host ? ids : T.fromArray(ids, idsShape, 'i32'));
            expect(y.shape).toEqual(host ? [ids.length, D] : [...idsShape, D]);
            return y;
          },
          cpu: ([w]) => refEmbedding(w, D, ids),
        });
      }),
      { numRuns: 25 },
    );
  });

  it('a language-model-sized backward is exact for heavy repeats and bitwise reproducible', async () => {
    const [V, D, B, S] = [50, 33, 4, 97];
    const N = B * S;
    // Zipf-like ids: most positions hold a few ids; id 0 appears very often.
    const r = rng(5);
    const ids = Int32Array.from({ length: N }, () => Math.min(V - 1, Math.floor(1 / (r() + 0.02)) - 1));
    const w = randArray(V * D, 6);
    const g = randArray(N * D, 7);
    const expected = new Float64Array(V * D);
    for (let n = 0; n < N; n++) for (let d = 0; d < D; d++) expected[ids[n] * D + d] += g[n * D + d];
    const run = () =>
      T.tidyAsync(async () => {
        const wt = T.requireGrad(T.fromArray(Float32Array.from(w), [V, D]));
        const y = T.embedding(wt, T.fromArray(ids, [B, S], 'i32'));
        T.backward(y, T.fromArray(Float32Array.from(g), [B, S, D]));
        const out = (await wt.grad!.toArray()) as Float32Array;
        wt.grad!.dispose();
        return out;
      });
    const g1 = await run();
    const g2 = await run();
    expectClose(g1, expected, 1e-5, 1e-5, 'weight grad');
    expect(Buffer.from(g1.buffer).equals(Buffer.from(g2.buffer))).toBe(true);
  });
});

describe('out-of-range indices and errors', () => {
  it('GPU indices out of range gather 0 and scatter nothing', async () => {
    await T.tidyAsync(async () => {
      const x = T.fromArray([1, 2, 3, 4, 5, 6], [2, 3]);
      const bad = T.fromArray([-1, 2, 3, 0, 7, -5], [2, 3], 'i32');
      expectClose(await T.gather(x, 1, bad).toArray(), [0, 3, 0, 4, 0, 0]);
      const src = T.fromArray([10, 20, 30, 40, 50, 60], [2, 3]);
      expectClose(await T.scatterAdd(x, 1, bad, src).toArray(), [1, 2, 23, 44, 5, 6]);
      const w = T.fromArray([1, 2, 3, 4], [2, 2]);
      expectClose(await T.embedding(w, T.fromArray([1, 2, -1], [3], 'i32')).toArray(), [3, 4, 0, 0, 0, 0]);
      expectClose(await T.indexSelect(x, 0, T.fromArray([5, 1], [2], 'i32')).toArray(), [0, 0, 0, 4, 5, 6]);
    });
  });

  it('host indices are checked before upload', () => {
    T.tidy(() => {
      const w = T.fromArray(new Float32Array(8), [4, 2]);
      expect(() => T.embedding(w, [0, 3, 4])).toThrow(/embedding: ids\[2\] = 4 is out of range \[0, 4\)/);
      expect(() => T.indexSelect(w, 1, [-1])).toThrow(/indexSelect: index\[0\] = -1 is out of range \[0, 2\)/);
      expect(() => T.indexSelect(w, 0, [1.5])).toThrow(/out of range/);
    });
  });

  it('errors name the op, the dtype and both shapes', () => {
    T.tidy(() => {
      const x = T.fromArray(new Float32Array(6), [2, 3]);
      const fidx = T.fromArray([0, 1], [1, 2]);
      expect(() => T.gather(x, 1, fidx)).toThrow(/gather: index has dtype f32, expected i32/);
      expect(() => T.scatterAdd(x, 1, fidx, x)).toThrow(/scatterAdd: index has dtype f32, expected i32/);
      expect(() => T.indexSelect(x, 0, fidx)).toThrow(/indexSelect: index has dtype f32, expected i32/);
      expect(() => T.embedding(x, T.fromArray([0], [1], 'u32'))).toThrow(/embedding: ids has dtype u32, expected i32/);
      const big = T.fromArray(new Int32Array(8), [4, 2], 'i32');
      expect(() => T.gather(x, 1, big)).toThrow(/gather: index shape \[4, 2\] .* x's \[2, 3\] outside axis 1/);
      expect(() => T.scatterAdd(x, 0, big, T.fromArray(new Float32Array(4), [2, 2]))).toThrow(/scatterAdd: index shape \[4, 2\] .* x \[2, 3\] and src \[2, 2\]/);
      expect(() => T.scatterAdd(x, 0, T.fromArray([0], [1, 1], 'i32'), T.fromArray([0], [1, 1], 'i32'))).toThrow(/scatterAdd: x has dtype f32 but src has i32/);
      expect(() => T.indexSelect(x, 0, T.fromArray([0, 1], [1, 2], 'i32'))).toThrow(/indexSelect: index must be 1-D, got shape \[1, 2\]/);
      expect(() => T.embedding(T.fromArray([1, 2], [2]), [0])).toThrow(/embedding: weight must be \[vocab, dim\], got shape \[2\]/);
      expect(() => T.gather(x, 2, big)).toThrow(/gather: axis 2 out of range for rank 2/);
    });
  });
});
