// Reductions (sum, mean, max, min, logsumexp, argmax, argmin, sumTo, broadcastTo) against a
// float64 CPU reference over random shapes and axis sets, values and gradients, both kernel
// variants (serial per output, and workgroup per row), strided inputs, dtypes and errors.
import { afterEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import * as T from '../../runtime/index.ts';
import { reduceTuning } from '../../runtime/ops/reduce.ts';
import { checkOp, expectClose, prod, randArray, rng } from '../helpers.ts';
import { contiguousStrides } from '../../runtime/tensor.ts';

type Op = 'sum' | 'mean' | 'max' | 'min' | 'lse' | 'argmax' | 'argmin';

/** Float64 reference: reduces `axes` (normalised) of row-major data; output in kept-dim order. */
function cpuReduce(data: ArrayLike<number>, shape: readonly number[], axes: readonly number[], op: Op): Float64Array {
  const red = new Set(axes);
  const kept = shape.map((d, i) => (red.has(i) ? 1 : d));
  const keptStrides = strides(kept);
  const buckets: number[][] = Array.from({ length: prod(kept) }, () => []);
  const st = strides(shape);
  for (let idx = 0; idx < data.length; idx++) {
    let o = 0;
    for (let d = 0; d < shape.length; d++) {
      const c = Math.floor(idx / st[d]) % shape[d];
      if (!red.has(d)) o += c * keptStrides[d];
    }
    buckets[o].push(data[idx]); // row-major order: bucket position = flat index over the reduced dims
  }
  return Float64Array.from(buckets, (b) => {
    switch (op) {
      case 'sum':
        return b.reduce((a, v) => a + v, 0);
      case 'mean':
        return b.length ? b.reduce((a, v) => a + v, 0) / b.length : 0;
      case 'max':
        return Math.max(...b);
      case 'min':
        return Math.min(...b);
      case 'lse': {
        const m = Math.max(...b);
        return m + Math.log(b.reduce((a, v) => a + Math.exp(v - m), 0));
      }
      case 'argmax':
        return b.indexOf(Math.max(...b));
      case 'argmin':
        return b.indexOf(Math.min(...b));
    }
  });
}

const strides = contiguousStrides;

function outShape(shape: readonly number[], axes: readonly number[], keepdim: boolean): number[] {
  return keepdim ? shape.map((d, i) => (axes.includes(i) ? 1 : d)) : shape.filter((_, i) => !axes.includes(i));
}

/** Distinct values (a shuffled grid, spacing 0.05 plus a little noise) so max/min have no ties. */
function distinct(n: number, seed: number): Float64Array {
  const r = rng(seed);
  const idx = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return Float64Array.from(idx, (k) => (k - n / 2) * 0.05 + 0.01 * r());
}

/**
 * A random case: shape (rank 0..4, dims 1..5 with 1s and odd sizes), the axes argument as
 * the caller passes it (undefined, a number or a list, negatives allowed), its normalised
 * form, keepdim, and a data seed.
 */
const caseArb = fc
  .array(fc.integer({ min: 1, max: 5 }), { maxLength: 4 })
  .chain((shape) =>
    fc.record({
      shape: fc.constant(shape),
      pick: fc.subarray(shape.map((_, i) => i)),
      form: fc.constantFrom('list', 'number', 'all', 'negative'),
      keepdim: fc.boolean(),
      seed: fc.integer({ min: 1, max: 1e6 }),
    }),
  )
  .map(({ shape, pick, form, keepdim, seed }) => {
    let arg: number | number[] | undefined;
    let axes: number[];
    if (form === 'all' || shape.length === 0) {
      arg = undefined;
      axes = shape.map((_, i) => i);
    } else if (form === 'number' && pick.length > 0) {
      arg = pick[0] - (seed % 2 ? shape.length : 0);
      axes = [pick[0]];
    } else {
      // A list in random order, some entries negative.
      arg = pick.map((a, k) => ((seed >> k) & 1 ? a - shape.length : a)).reverse();
      axes = [...pick];
    }
    return { shape, arg, axes: axes.sort((a, b) => a - b), keepdim, seed };
  });

const GPU: Record<Exclude<Op, 'argmax' | 'argmin'>, (x: T.Tensor, a: number | number[] | undefined, k: boolean) => T.Tensor> = {
  sum: T.sum,
  mean: T.mean,
  max: T.max,
  min: T.min,
  lse: T.logsumexp,
};

/** The gradient of x as an array; clears it for the next backward. */
async function takeGrad(x: T.Tensor): Promise<number[]> {
  const g = Array.from(await x.grad!.toArray());
  x.grad!.dispose();
  x.grad = null;
  return g;
}

afterEach(() => {
  reduceTuning.rowsMinR = undefined;
});

describe('reductions: values and gradients over random shapes and axes', () => {
  for (const op of ['sum', 'mean', 'max', 'min', 'lse'] as const) {
    it(`${op}`, async () => {
      await fc.assert(
        fc.asyncProperty(caseArb, async ({ shape, arg, axes, keepdim, seed }) => {
          const n = prod(shape);
          const data = op === 'max' || op === 'min' ? distinct(n, seed) : randArray(n, seed, -2, 2);
          let outS: readonly number[] = [];
          await checkOp({
            inputs: [{ data, shape }],
            gpu: ([x]) => {
              const y = GPU[op](x, arg, keepdim);
              outS = y.shape;
              return y;
            },
            cpu: ([x]) => cpuReduce(x, shape, axes, op),
            seed,
          });
          expect(outS).toEqual(outShape(shape, axes, keepdim));
        }),
        { numRuns: 25 },
      );
    });
  }

  it('argmax and argmin return i32 indices along one axis, first index on ties', async () => {
    await fc.assert(
      fc.asyncProperty(caseArb, fc.integer({ min: 0, max: 3 }), async ({ shape, keepdim, seed }, k) => {
        const rank = shape.length;
        const axis = rank ? (k % rank) - (seed % 2 ? rank : 0) : -1;
        const ax = rank ? (axis + rank) % rank : -1;
        const axes = rank ? [ax] : [];
        // Few distinct values, so ties are common.
        const data = Float64Array.from(randArray(prod(shape), seed), (v) => Math.round(v * 2));
        await T.tidyAsync(async () => {
          const x = T.fromArray(Float32Array.from(data), shape);
          for (const [name, f] of [['argmax', T.argmax], ['argmin', T.argmin]] as const) {
            const i = f(x, axis, keepdim);
            expect(i.dtype).toBe('i32');
            expect(i.shape).toEqual(outShape(shape, axes, keepdim));
            expect(Array.from(await i.toArray())).toEqual(Array.from(cpuReduce(data, shape, axes, name)));
          }
        });
      }),
      { numRuns: 25 },
    );
  });
});

describe('workgroup-per-row kernels (forced on, as on hardware GPUs)', () => {
  it('sum, mean, max, min, logsumexp, argmax over last axes and permuted axis sets', async () => {
    reduceTuning.rowsMinR = 1;
    // R values around the 256-wide workgroup: fewer, equal, more, several strides' worth.
    const rowsArb = fc.record({
      outer: fc.integer({ min: 1, max: 4 }),
      R: fc.constantFrom(1, 3, 255, 256, 257, 700),
      perm: fc.boolean(),
      keepdim: fc.boolean(),
      seed: fc.integer({ min: 1, max: 1e6 }),
    });
    await fc.assert(
      fc.asyncProperty(rowsArb, async ({ outer, R, perm, keepdim, seed }) => {
        // perm: reduce axes 0 and 2 of [a, outer, b] (not one run: the input is permuted first).
        const a = R === 1 ? 1 : R % 7 === 0 ? 7 : R % 5 === 0 ? 5 : R;
        const shape = perm ? [a, outer, R / a] : [outer, R];
        const axes = perm ? [0, 2] : [1];
        const data = distinct(prod(shape), seed);
        await T.tidyAsync(async () => {
          const x = T.fromArray(Float32Array.from(data), shape);
          for (const op of ['sum', 'mean', 'max', 'min', 'lse'] as const) {
            const y = GPU[op](x, axes, keepdim);
            expect(y.shape).toEqual(outShape(shape, axes, keepdim));
            // Values reach +-70 and rows 700 terms: f32 rounding of a sum is up to ~1e-3.
            expectClose(await y.toArray(), cpuReduce(data, shape, axes, op), 1e-3, 1e-5, `${op} ${shapeStr(shape)}`);
          }
          if (!perm) {
            expect(Array.from(await T.argmax(x, 1).toArray())).toEqual(Array.from(cpuReduce(data, shape, [1], 'argmax')));
          }
        });
      }),
      { numRuns: 12 },
    );
  });

  it('max ties pick the first index in the tree too; gradients flow', async () => {
    reduceTuning.rowsMinR = 1;
    const R = 600;
    const data = new Float64Array(2 * R).fill(0);
    // Row 0: the maximum 5 at 599, 300 and 17 (handled by different invocations); row 1: all equal.
    data[599] = data[300] = data[17] = 5;
    await T.tidyAsync(async () => {
      const x = T.requireGrad(T.fromArray(Float32Array.from(data), [2, R]));
      expect(Array.from(await T.argmax(x).toArray())).toEqual([17, 0]);
      T.backward(T.sum(T.max(x, -1)));
      const g = await x.grad!.toArray();
      const want = new Float64Array(2 * R);
      want[17] = 1;
      want[R] = 1;
      expectClose(g, want, 0, 0, 'max grad');
      x.grad!.dispose();
    });
    await checkOp({
      inputs: [{ data: randArray(2 * 260, 5, -3, 3), shape: [2, 260] }],
      gpu: ([x]) => T.logsumexp(x, 1),
      cpu: ([x]) => cpuReduce(x, [2, 260], [1], 'lse'),
    });
    await checkOp({
      inputs: [{ data: randArray(2 * 300, 6), shape: [2, 300] }],
      gpu: ([x]) => T.mean(x, -1, true),
      cpu: ([x]) => cpuReduce(x, [2, 300], [1], 'mean'),
    });
  });

  it('a 4096-long row gives the same sum both ways', async () => {
    const data = randArray(3 * 4096, 9);
    const want = cpuReduce(data, [3, 4096], [1], 'sum');
    for (const rows of [undefined, 1]) {
      reduceTuning.rowsMinR = rows;
      await T.tidyAsync(async () => {
        const y = T.sum(T.fromArray(Float32Array.from(data), [3, 4096]), -1);
        expectClose(await y.toArray(), want, 2e-4, 1e-5, `sum rowsMinR=${rows}`);
      });
    }
  });
});

const shapeStr = (s: readonly number[]) => `[${s.join(', ')}]`;

describe('reductions: details', () => {
  it('ties: max/min send the whole gradient to the first occurrence only', async () => {
    await T.tidyAsync(async () => {
      const x = T.requireGrad(T.fromArray([1, 3, 3, 0, 2, 0], [2, 3]));
      T.backward(T.sum(T.max(x, 1)));
      expect(await takeGrad(x)).toEqual([0, 1, 0, 0, 1, 0]);
      T.backward(T.sum(T.min(x, 1)));
      expect(await takeGrad(x)).toEqual([1, 0, 0, 1, 0, 0]);
      // Over both axes (flattened row-major order): the first 3 is at [0, 1].
      T.backward(T.max(x));
      expect(await takeGrad(x)).toEqual([0, 1, 0, 0, 0, 0]);
      // Over axis 0 ([outer 1, R 2, inner 3]).
      T.backward(T.sum(T.min(x, 0)));
      expect(await takeGrad(x)).toEqual([0, 0, 0, 1, 1, 1]);
      // Axes 0 and 2 of [2, 3, 2] are not one run: the input is permuted, the gradient un-permuted.
      const z = T.requireGrad(T.zeros([2, 3, 2]));
      T.backward(T.sum(T.max(z, [0, 2])));
      expect(await takeGrad(z)).toEqual([1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    });
  });

  it('over all axes gives shape []; keepdim gives all ones; rank-0 inputs and size-1 axes', async () => {
    await T.tidyAsync(async () => {
      const x = T.fromArray([1, 2, 3, 4, 5, 6], [2, 1, 3]);
      expect(T.sum(x).shape).toEqual([]);
      expect(await T.sum(x).item()).toBe(21);
      expect(T.mean(x, undefined, true).shape).toEqual([1, 1, 1]);
      expect(Array.from(await T.sum(x, 1).toArray())).toEqual([1, 2, 3, 4, 5, 6]);
      expect(T.max(x, [1, -1]).shape).toEqual([2]);
      expect(T.sum(x, []).shape).toEqual([2, 1, 3]); // an empty list reduces nothing
      const s = T.scalar(2.5);
      for (const f of [T.sum, T.mean, T.max, T.min, T.logsumexp]) {
        expect(f(s).shape).toEqual([]);
        expect(await f(s, 0).item()).toBeCloseTo(2.5, 6);
        expect(f(s, -1, true).shape).toEqual([]);
      }
      expect(await T.argmax(s).item()).toBe(0);
      expect(T.argmax(x, 1).shape).toEqual([2, 3]);
      expect(Array.from(await T.argmax(x, 1).toArray())).toEqual([0, 0, 0, 0, 0, 0]);
    });
  });

  it('strided and offset inputs (permuted, sliced, broadcast views)', async () => {
    await fc.assert(
      fc.asyncProperty(caseArb, async ({ shape, arg, axes, keepdim, seed }) => {
        // A base buffer of 2n + 3 values viewed with doubled strides and an offset of 3,
        // then with its dims reversed.
        const n = prod(shape);
        const base = randArray(2 * n + 3, seed);
        const st = strides(shape).map((s) => 2 * s);
        const rev = [...shape].reverse();
        const revSt = [...st].reverse();
        const logical = new Float64Array(n);
        const rs = strides(rev);
        for (let i = 0; i < n; i++) {
          let off = 3;
          for (let d = 0; d < rev.length; d++) off += (Math.floor(i / rs[d]) % rev[d]) * revSt[d];
          logical[i] = base[off];
        }
        const rAxes = axes.map((a) => rev.length - 1 - a).sort((a, b) => a - b);
        const rArg = arg === undefined ? undefined : rAxes;
        await T.tidyAsync(async () => {
          const b = T.fromArray(Float32Array.from(base), [base.length]);
          const v = b.view(rev, revSt, 3);
          for (const op of ['sum', 'max', 'lse'] as const) {
            const y = GPU[op](v, rArg, keepdim);
            // Up to 625 f32 terms of |v| < 1: rounding stays well below 1e-4.
            expectClose(await y.toArray(), cpuReduce(logical, rev, rAxes, op), 1e-4, 1e-4, op);
          }
          if (rev.length) {
            const i = T.argmin(v, 0);
            expect(Array.from(await i.toArray())).toEqual(Array.from(cpuReduce(logical, rev, [0], 'argmin')));
          }
        });
      }),
      { numRuns: 15 },
    );
  });

  it('integer max/min/argmax; f16 sum/mean/max/logsumexp accumulate in f32 (both kernel variants)', async () => {
    for (const rows of [undefined, 1]) {
      reduceTuning.rowsMinR = rows;
      await T.tidyAsync(async () => {
        const xi = T.fromArray([3, -7, 12, 12, 0, -1], [2, 3], 'i32');
        const mx = T.max(xi, 1);
        expect(mx.dtype).toBe('i32');
        expect(Array.from(await mx.toArray())).toEqual([12, 12]);
        expect(Array.from(await T.min(xi, 0).toArray())).toEqual([3, -7, -1]);
        expect(Array.from(await T.argmax(xi, 1).toArray())).toEqual([2, 0]);
        expect(Array.from(await T.argmin(xi, -1).toArray())).toEqual([1, 2]);
        const xu = T.fromArray([5, 4000000000, 7], [3], 'u32');
        expect(Array.from(await T.max(xu).toArray())).toEqual([4000000000]);
        if (!T.getEngine().ctx.hasF16) return;
        // Rows of ~3000 values near 1: an f16 accumulator would stall near 2048.
        const data = randArray(2 * 3001, 4, 0.5, 1.5);
        const h = T.fromArray(Float32Array.from(data), [2, 3001], 'f16');
        const hv = await h.toArray(); // the f16-rounded inputs
        for (const [op, f] of [['sum', T.sum], ['mean', T.mean], ['max', T.max], ['lse', T.logsumexp]] as const) {
          const y = f(h, 1);
          expect(y.dtype).toBe('f16');
          expectClose(await y.toArray(), cpuReduce(hv, [2, 3001], [1], op), 0, 1e-3, `f16 ${op} rowsMinR=${rows}`);
        }
        expect(Array.from(await T.argmin(h, 1).toArray())).toEqual(Array.from(cpuReduce(hv, [2, 3001], [1], 'argmin')));
        expect(await T.sum(T.ones([3000], 'f16')).item()).toBe(3000);
      });
    }
  });

  it('logsumexp is stable for large and very negative inputs', async () => {
    await T.tidyAsync(async () => {
      const x = T.fromArray([1000, 1000, -1000, 80, 90, 100, -1e30, 0, -1e30], [3, 3]);
      expectClose(await T.logsumexp(x, 1).toArray(), [1000 + Math.log(2), cpuReduce([80, 90, 100], [3], [0], 'lse')[0], 0], 1e-4, 1e-6);
      const g = T.requireGrad(T.fromArray([1000, 1000, -1000]));
      T.backward(T.logsumexp(g));
      // exp(x - y) with y = 1000.69 in f32 (ulp 6e-5): that is the attainable accuracy.
      expectClose(await g.grad!.toArray(), [0.5, 0.5, 0], 1e-4, 0);
      g.grad!.dispose();
    });
  });

  it('sumTo and broadcastTo are inverse in shape; broadcastTo carries gradients', async () => {
    await checkOp({
      inputs: [{ data: randArray(15, 1), shape: [3, 1, 5] }],
      gpu: ([x]) => T.broadcastTo(x, [2, 3, 4, 5]),
      cpu: ([x]) => Float64Array.from({ length: 120 }, (_, i) => x[Math.floor(i / 20) % 3 * 5 + (i % 5)]),
    });
    await checkOp({
      inputs: [{ data: randArray(120, 2), shape: [2, 3, 4, 5] }],
      gpu: ([g]) => T.sumTo(g, [3, 1, 5]),
      cpu: ([g]) => cpuReduce(g, [2, 3, 4, 5], [0, 2], 'sum'),
    });
    await T.tidyAsync(async () => {
      const g = T.fromArray([1, 2, 3, 4, 5, 6], [2, 3]);
      expect(Array.from(await T.sumTo(g, [3]).toArray())).toEqual([5, 7, 9]);
      expect(Array.from(await T.sumTo(g, [2, 1]).toArray())).toEqual([6, 15]);
      expect(Array.from(await T.sumTo(g, []).toArray())).toEqual([21]);
      expect(() => T.sumTo(g, [2])).toThrow(/sumTo: cannot sum \[2, 3\] down to \[2\]/);
      expect(() => T.broadcastTo(g, [3, 3])).toThrow(/cannot broadcast \[2, 3\] to \[3, 3\]/);
    });
  });

  it('does not leak buffers through forward and backward', async () => {
    const x = T.requireGrad(T.fromArray(Float32Array.from(randArray(60, 3)), [3, 4, 5]));
    const run = () =>
      T.tidy(() => {
        const parts = [T.sum(x, [0, 2]), T.mean(x, 1, true), T.max(x, [0, 2]), T.min(x, -1), T.logsumexp(x, [2, 0])];
        T.backward(T.sum(T.add(T.add(T.sum(parts[0]), T.sum(parts[1])), T.add(T.add(T.sum(parts[2]), T.sum(parts[3])), T.sum(parts[4])))));
        T.argmax(x, 1);
      });
    run();
    x.grad!.dispose();
    x.grad = null;
    await T.getEngine().flush();
    const before = T.stats().bytesInUse;
    run();
    x.grad!.dispose();
    x.grad = null;
    await T.getEngine().flush();
    expect(T.stats().bytesInUse).toBe(before);
    x.dispose();
  });

  it('errors name the op, axis and rank, or the dtype', () => {
    T.tidy(() => {
      const x = T.fromArray([1, 2, 3, 4, 5, 6], [2, 3]);
      expect(() => T.sum(x, 2)).toThrow('sum: axis 2 out of range for rank 2');
      expect(() => T.mean(x, [-3])).toThrow('mean: axis -3 out of range for rank 2');
      expect(() => T.max(x, [0, -2])).toThrow(/max: axis repeated in \[0, -2\] for rank 2/);
      expect(() => T.argmax(x, 5)).toThrow('argmax: axis 5 out of range for rank 2');
      expect(() => T.logsumexp(x, 1.5)).toThrow(/logsumexp: axis 1.5 out of range/);
      const xi = T.fromArray([1, 2, 3], [3], 'i32');
      expect(() => T.sum(xi)).toThrow(TypeError);
      expect(() => T.sum(xi)).toThrow('sum: x has dtype i32, expected f32 or f16');
      expect(() => T.logsumexp(xi)).toThrow('logsumexp: x has dtype i32');
      const e = T.zeros([2, 0]);
      expect(() => T.max(e, 1)).toThrow(/max: cannot reduce an empty axis \(shape \[2, 0\]/);
      expect(Array.from(T.sum(e, 1).shape)).toEqual([2]);
    });
  });
});
