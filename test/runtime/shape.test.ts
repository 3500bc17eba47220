// Shape ops against float64 CPU references: values over random shapes (size 1, odd
// sizes, negative axes, views of views) and gradients by finite differences (checkOp).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import * as T from '../../runtime/index.ts';
import { checkOp, expectClose, prod, randArray } from '../helpers.ts';

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

/** out[c] = x[f(c)] over outShape, or `fill` where f returns null. */
function mapRef(x: Float64Array, shape: readonly number[], outShape: readonly number[], f: (c: number[]) => number[] | null, fill = 0): Float64Array {
  const out = new Float64Array(prod(outShape));
  for (let o = 0; o < out.length; o++) {
    const src = f(coordsOf(o, outShape));
    out[o] = src ? x[indexOf(src, shape)] : fill;
  }
  return out;
}

const norm = (a: number, r: number) => (a < 0 ? a + r : a);

function refPermute(x: Float64Array, shape: readonly number[], dims: readonly number[]) {
  const p = dims.map((d) => norm(d, shape.length));
  const outShape = p.map((d) => shape[d]);
  const data = mapRef(x, shape, outShape, (c) => {
    const s = new Array<number>(shape.length);
    p.forEach((d, k) => (s[d] = c[k]));
    return s;
  });
  return { data, shape: outShape };
}

/** Python's x[start:end:step] along an axis, via Array.prototype.slice (same clamping rules). */
function sliceIndices(n: number, start: number, end: number | undefined, step: number): number[] {
  return [...Array(n).keys()].slice(start, end).filter((_, i) => i % step === 0);
}

function refSlice(x: Float64Array, shape: readonly number[], axis: number, start: number, end: number | undefined, step: number) {
  const a = norm(axis, shape.length);
  const idx = sliceIndices(shape[a], start, end, step);
  const outShape = shape.map((d, i) => (i === a ? idx.length : d));
  const data = mapRef(x, shape, outShape, (c) => c.map((v, i) => (i === a ? idx[v] : v)));
  return { data, shape: outShape };
}

// ---------------------------------------------------------------- generators

const dimArb = fc.integer({ min: 1, max: 5 });
const shapeArb = (minRank = 1, maxRank = 4) => fc.array(dimArb, { minLength: minRank, maxLength: maxRank });
const permArb = (r: number) => fc.shuffledSubarray([...Array(r).keys()], { minLength: r, maxLength: r });
/** An axis of rank r, negative half the time. */
const axisArb = (r: number) => fc.tuple(fc.integer({ min: 0, max: r - 1 }), fc.boolean()).map(([a, neg]) => (neg ? a - r : a));

let seed = 1;
const input = (shape: number[]) => ({ data: randArray(prod(shape), seed++), shape });

function dispatchesDuring(fn: () => void): number {
  const before = T.stats().dispatches;
  fn();
  return T.stats().dispatches - before;
}

// ---------------------------------------------------------------- tests

describe('permute / transpose', () => {
  it('match the reference, with gradients', async () => {
    await fc.assert(
      fc.asyncProperty(
        shapeArb().chain((s) => fc.tuple(fc.constant(s), permArb(s.length), fc.boolean())),
        async ([shape, perm, negative]) => {
          const dims = negative ? perm.map((d) => d - shape.length) : perm;
          await checkOp({
            inputs: [input(shape)],
            gpu: ([x]) => T.permute(x, dims),
            cpu: ([x]) => refPermute(x, shape, dims).data,
          });
        },
      ),
      { numRuns: 20 },
    );
  });

  it('transpose swaps the last two axes by default, any two when asked', async () => {
    await checkOp({ inputs: [input([2, 3, 4])], gpu: ([x]) => T.transpose(x), cpu: ([x]) => refPermute(x, [2, 3, 4], [0, 2, 1]).data });
    await checkOp({ inputs: [input([2, 3, 4])], gpu: ([x]) => T.transpose(x, -3, 2), cpu: ([x]) => refPermute(x, [2, 3, 4], [2, 1, 0]).data });
  });

  it('are views: shared storage, no dispatch', () => {
    T.tidy(() => {
      const x = T.fromArray(new Float32Array(24), [2, 3, 4]);
      let y!: T.Tensor;
      expect(dispatchesDuring(() => (y = T.transpose(T.permute(x, [2, 0, 1]), 0, 1)))).toBe(0);
      expect(y.storage).toBe(x.storage);
      expect(y.shape).toEqual([2, 4, 3]);
    });
  });

  it('name the problem in errors', () => {
    T.tidy(() => {
      const x = T.fromArray(new Float32Array(6), [2, 3]);
      expect(() => T.permute(x, [0])).toThrow(/permute: 1 axes \[0\] given for shape \[2, 3\] of rank 2/);
      expect(() => T.permute(x, [1, 1])).toThrow(/not a permutation/);
      expect(() => T.permute(x, [0, 2])).toThrow(/axis 2 out of range for rank 2/);
      expect(() => T.transpose(x, 0, 5)).toThrow(/transpose: axis 5 out of range for rank 2/);
    });
  });
});

describe('expand', () => {
  it('broadcasts size-1 and new leading dims; the gradient sums back', async () => {
    const arb = fc
      .tuple(shapeArb(1, 3), fc.array(fc.integer({ min: 1, max: 3 }), { maxLength: 2 }), fc.infiniteStream(fc.integer({ min: 0, max: 4 })))
      .map(([base, lead, r]) => {
        // Some dims of x are 1 and grow (to r+1), the others are kept, written as -1 or their size.
        const xs = base.map((d) => (r.next().value % 2 === 0 ? 1 : d));
        const to = xs.map((d) => {
          const v = r.next().value;
          return d === 1 ? v + 1 : v % 2 === 0 ? -1 : d;
        });
        return { xs, to: [...lead, ...to] };
      });
    await fc.assert(
      fc.asyncProperty(arb, async ({ xs, to }) => {
        const lead = to.length - xs.length;
        const outShape = to.map((d, i) => (d === -1 ? xs[i - lead] : d));
        await checkOp({
          inputs: [input(xs)],
          gpu: ([x]) => T.expand(x, to),
          cpu: ([x]) => mapRef(x, xs, outShape, (c) => c.slice(lead).map((v, i) => (xs[i] === 1 ? 0 : v))),
        });
      }),
      { numRuns: 20 },
    );
  });

  it('is a view with stride 0 on broadcast dims', () => {
    T.tidy(() => {
      const x = T.fromArray(new Float32Array(3), [3, 1]);
      let y!: T.Tensor;
      expect(dispatchesDuring(() => (y = T.expand(x, [2, -1, 4])))).toBe(0);
      expect(y.shape).toEqual([2, 3, 4]);
      expect(y.strides).toEqual([0, 1, 0]);
      expect(() => T.expand(x, [2, 4])).toThrow(/expand: cannot expand \[3, 1\] to \[2, 4\]/);
      expect(() => T.expand(x, [4])).toThrow(/cannot expand \[3, 1\] to \[4\]/);
      expect(() => T.expand(x, [-1, 3, 1])).toThrow(/cannot expand/);
    });
  });
});

describe('squeeze / unsqueeze', () => {
  it('insert and remove size-1 axes (negative axes too), with gradients', async () => {
    const arb = shapeArb(1, 4).chain((s) =>
      fc.tuple(fc.constant(s.map((d, i) => (i % 2 ? 1 : d))), fc.integer({ min: -s.length - 1, max: s.length })),
    );
    await fc.assert(
      fc.asyncProperty(arb, async ([shape, axis]) => {
        // unsqueeze, then squeeze every size-1 axis, then unsqueeze at the front.
        await checkOp({
          inputs: [input(shape)],
          gpu: ([x]) => {
            const u = T.unsqueeze(x, axis);
            const a = norm(axis, shape.length + 1);
            expect(u.shape).toEqual([...shape.slice(0, a), 1, ...shape.slice(a)]);
            const s = T.squeeze(u);
            expect(s.shape).toEqual(shape.filter((d) => d !== 1));
            return T.unsqueeze(T.squeeze(T.unsqueeze(s, -1), -1), 0);
          },
          cpu: ([x]) => Float64Array.from(x),
        });
      }),
      { numRuns: 15 },
    );
  });

  it('are views; squeezing a non-unit axis is an error', () => {
    T.tidy(() => {
      const x = T.fromArray(new Float32Array(6), [2, 1, 3]);
      let y!: T.Tensor;
      expect(dispatchesDuring(() => (y = T.squeeze(T.unsqueeze(x, 3), 1)))).toBe(0);
      expect(y.shape).toEqual([2, 3, 1]);
      expect(y.storage).toBe(x.storage);
      expect(() => T.squeeze(x, 0)).toThrow(/squeeze: axis 0 of shape \[2, 1, 3\] has size 2, not 1/);
      expect(() => T.unsqueeze(x, 4)).toThrow(/unsqueeze: axis 4 out of range for rank 4/);
    });
  });
});

describe('slice', () => {
  it('matches Python slicing (negative and out-of-range bounds, steps), with gradients', async () => {
    const arb = shapeArb(1, 3).chain((s) =>
      fc.record({
        shape: fc.constant(s),
        axis: axisArb(s.length),
        start: fc.integer({ min: -7, max: 7 }),
        end: fc.option(fc.integer({ min: -7, max: 7 }), { nil: undefined }),
        step: fc.integer({ min: 1, max: 3 }),
      }),
    );
    await fc.assert(
      fc.asyncProperty(arb, async ({ shape, axis, start, end, step }) => {
        await checkOp({
          inputs: [input(shape)],
          gpu: ([x]) => T.slice(x, axis, start, end, step),
          cpu: ([x]) => refSlice(x, shape, axis, start, end, step).data,
        });
      }),
      { numRuns: 30 },
    );
  });

  it('is a view with an element offset', () => {
    T.tidy(() => {
      const x = T.fromArray(new Float32Array(20), [4, 5]);
      let y!: T.Tensor;
      expect(dispatchesDuring(() => (y = T.slice(T.slice(x, 1, 1, -1, 2), 0, -3)))).toBe(0);
      expect(y.shape).toEqual([3, 2]);
      expect(y.strides).toEqual([5, 2]);
      expect(y.offset).toBe(6);
      expect(() => T.slice(x, 1, 0, 2, 0)).toThrow(/slice: step must be a positive integer, got 0/);
      expect(() => T.slice(x, 2, 0, 1)).toThrow(/slice: axis 2 out of range for rank 2/);
    });
  });
});

describe('views of views', () => {
  it('permute -> slice -> expand/unsqueeze -> contiguous and elementwise ops agree with the reference', async () => {
    const arb = shapeArb(2, 4).chain((s) =>
      fc.record({
        shape: fc.constant(s),
        perm: permArb(s.length),
        axis: axisArb(s.length),
        start: fc.integer({ min: -4, max: 2 }),
        step: fc.integer({ min: 1, max: 2 }),
        axis2: axisArb(s.length),
        start2: fc.integer({ min: 0, max: 2 }),
      }),
    );
    await fc.assert(
      fc.asyncProperty(arb, async ({ shape, perm, axis, start, step, axis2, start2 }) => {
        const ref = (x: Float64Array) => {
          const p = refPermute(x, shape, perm);
          const s1 = refSlice(p.data, p.shape, axis, start, undefined, step);
          const s2 = refSlice(s1.data, s1.shape, axis2, start2, undefined, 1);
          return s2;
        };
        const outShape = ref(new Float64Array(prod(shape))).shape;
        await checkOp({
          inputs: [input(shape)],
          gpu: ([x]) => {
            const v = T.slice(T.slice(T.permute(x, perm), axis, start, undefined, step), axis2, start2);
            // A strided view read by a kernel, plus a broadcast view of the same data.
            const c = T.contiguous(v);
            const e = T.expand(T.unsqueeze(v, 0), [2, ...outShape]);
            return T.add(T.mul(c, c), T.sum(e, 0));
          },
          cpu: ([x]) => ref(x).data.map((v) => v * v + 2 * v),
        });
      }),
      { numRuns: 20 },
    );
  });

  it('reshape of a permuted view copies and keeps the gradient', async () => {
    await checkOp({
      inputs: [input([3, 4])],
      gpu: ([x]) => T.reshape(T.transpose(x), [2, 6]),
      cpu: ([x]) => refPermute(x, [3, 4], [1, 0]).data,
    });
  });
});

describe('concat / stack', () => {
  const arb = shapeArb(1, 3).chain((s) =>
    fc.record({
      shape: fc.constant(s),
      axis: axisArb(s.length),
      sizes: fc.array(fc.integer({ min: 0, max: 4 }), { minLength: 1, maxLength: 4 }),
      transposed: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
    }),
  );

  it('concat matches the reference, including strided and empty inputs, with gradients', async () => {
    await fc.assert(
      fc.asyncProperty(arb, async ({ shape, axis, sizes, transposed }) => {
        const a = norm(axis, shape.length);
        const shapes = sizes.map((n) => shape.map((d, i) => (i === a ? n : d)));
        // Some inputs arrive as transposed views (stored with the last two axes swapped).
        const swap = (s: number[]) => [...s.slice(0, -2), s[s.length - 1], s[s.length - 2]];
        const tr = shapes.map((s, i) => transposed[i] && s.length >= 2);
        const stored = shapes.map((s, i) => (tr[i] ? swap(s) : s));
        const outShape = shape.map((d, i) => (i === a ? sizes.reduce((p, q) => p + q, 0) : d));
        await checkOp({
          inputs: stored.map(input),
          gpu: (xs) => T.concat(xs.map((x, i) => (tr[i] ? T.transpose(x) : x)), axis),
          cpu: (xs) => {
            const parts = xs.map((x, i) => (tr[i] ? refPermute(x, stored[i], [...shape.keys()].map((k) => (k < shape.length - 2 ? k : 2 * shape.length - 3 - k))).data : x));
            const starts = sizes.map((_, i) => sizes.slice(0, i).reduce((p, q) => p + q, 0));
            const out = new Float64Array(prod(outShape));
            for (let o = 0; o < out.length; o++) {
              const c = coordsOf(o, outShape);
              let k = 0;
              while (c[a] >= starts[k] + sizes[k]) k++;
              c[a] -= starts[k];
              out[o] = parts[k][indexOf(c, shapes[k])];
            }
            return out;
          },
        });
      }),
      { numRuns: 20 },
    );
  });

  it('stack matches the reference at any new axis, with gradients', async () => {
    await fc.assert(
      fc.asyncProperty(
        shapeArb(1, 3).chain((s) => fc.tuple(fc.constant(s), fc.integer({ min: -s.length - 1, max: s.length }), fc.integer({ min: 1, max: 4 }))),
        async ([shape, axis, k]) => {
          const a = norm(axis, shape.length + 1);
          const outShape = [...shape.slice(0, a), k, ...shape.slice(a)];
          await checkOp({
            inputs: Array.from({ length: k }, () => input(shape)),
            gpu: (xs) => T.stack(xs, axis),
            cpu: (xs) => {
              const out = new Float64Array(prod(outShape));
              for (let o = 0; o < out.length; o++) {
                const c = coordsOf(o, outShape);
                const which = c.splice(a, 1)[0];
                out[o] = xs[which][indexOf(c, shape)];
              }
              return out;
            },
          });
        },
      ),
      { numRuns: 15 },
    );
  });

  it('gradients reach only the inputs that need them', async () => {
    await T.tidyAsync(async () => {
      const a = T.requireGrad(T.fromArray([1, 2, 3, 4], [2, 2]));
      const b = T.fromArray([5, 6], [2, 1]);
      const y = T.concat([a, b, a], 1);
      expectClose(await y.toArray(), [1, 2, 5, 1, 2, 3, 4, 6, 3, 4]);
      T.backward(T.sum(T.mul(y, T.fromArray([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [2, 5]))));
      expectClose(await a.grad!.toArray(), [1 + 4, 2 + 5, 6 + 9, 7 + 10]);
      expect(b.grad).toBeNull();
      a.grad!.dispose();
    });
  });

  it('errors name the shapes', () => {
    T.tidy(() => {
      const a = T.fromArray(new Float32Array(6), [2, 3]);
      const b = T.fromArray(new Float32Array(9), [3, 3]);
      expect(() => T.concat([a, b], 1)).toThrow(/concat: tensor 1 has shape \[3, 3\], which differs from tensor 0's \[2, 3\] outside axis 1/);
      expect(() => T.stack([a, b], 0)).toThrow(/stack: tensor 1 has shape \[3, 3\], which differs from tensor 0's \[2, 3\]/);
      expect(() => T.concat([a, T.fromArray([1, 2, 3], [1, 3], 'i32')], 0)).toThrow(/concat: tensor 1 has dtype i32, tensor 0 has f32/);
      expect(() => T.concat([], 0)).toThrow(/concat: needs at least one tensor/);
      expect(() => T.concat([a, b], 2)).toThrow(/concat: axis 2 out of range for rank 2/);
    });
  });
});

describe('pad', () => {
  it('pads the last axes (pairs listed first-axis-first) with a value, with gradients', async () => {
    const arb = shapeArb(1, 4).chain((s) =>
      fc.record({
        shape: fc.constant(s),
        pads: fc.array(fc.tuple(fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 2 })), { maxLength: s.length }),
        value: fc.constantFrom(0, -1.5, 3),
        permuted: fc.boolean(),
      }),
    );
    await fc.assert(
      fc.asyncProperty(arb, async ({ shape, pads, value, permuted }) => {
        const r = shape.length;
        const before = shape.map((_, i) => (i >= r - pads.length ? pads[i - r + pads.length][0] : 0));
        const after = shape.map((_, i) => (i >= r - pads.length ? pads[i - r + pads.length][1] : 0));
        const outShape = shape.map((d, i) => d + before[i] + after[i]);
        // Optionally feed a reversed-axes view, to pad a strided input.
        const rev = [...shape.keys()].reverse();
        const stored = permuted ? rev.map((d) => shape[d]) : shape;
        await checkOp({
          inputs: [input(stored)],
          gpu: ([x]) => T.pad(permuted ? T.permute(x, rev) : x, pads, value),
          cpu: ([x]) => {
            const src = permuted ? refPermute(x, stored, rev).data : x;
            return mapRef(src, shape, outShape, (c) => {
              const s = c.map((v, i) => v - before[i]);
              return s.every((v, i) => v >= 0 && v < shape[i]) ? s : null;
            }, value);
          },
        });
      }),
      { numRuns: 25 },
    );
  });

  it('works on i32 and reports bad pads', async () => {
    await T.tidyAsync(async () => {
      const x = T.fromArray([1, 2, 3, 4], [2, 2], 'i32');
      expect([...(await T.pad(x, [[1, 0]], -7).toArray())]).toEqual([-7, 1, 2, -7, 3, 4]);
      expect(() => T.pad(x, [[0, 0], [0, 0], [1, 1]])).toThrow(/pad: 3 \[before, after\] pairs given for shape \[2, 2\] of rank 2/);
      expect(() => T.pad(x, [[-1, 0]])).toThrow(/pad: pads\[0\] = \[-1, 0\] must be non-negative integers/);
    });
  });

  it('f16 pad and concat keep the dtype (when the adapter has shader-f16)', async () => {
    if (!T.getEngine().ctx.hasF16) return;
    await T.tidyAsync(async () => {
      const x = T.fromArray([1, 2, 3], [3], 'f16');
      const y = T.concat([T.pad(x, [[1, 1]], 0.5), x], 0);
      expect(y.dtype).toBe('f16');
      expectClose(await y.toArray(), [0.5, 1, 2, 3, 0.5, 1, 2, 3]);
    });
  });
});
