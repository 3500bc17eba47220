// Every op of runtime/ops/elementwise.ts and runtime/ops/copy.ts against float64 CPU
// references: random shapes (rank 0 to 4, size-1 and odd dims, broadcasting), gradients by
// finite differences (checkOp), strided and offset views, f16 / i32 dtypes and casts, errors.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import * as T from '../../runtime/index.ts';
import { f16BitsToF32, f32ToF16Bits } from '../../runtime/dtype.ts';
import { checkOp, expectClose, prod, randArray, rng } from '../helpers.ts';
import { contiguousStrides } from '../../runtime/tensor.ts';

// ---------------------------------------------------------------- CPU helpers

const stridesOf = contiguousStrides;

function bshape(...shapes: (readonly number[])[]): number[] {
  const r = Math.max(0, ...shapes.map((s) => s.length));
  return Array.from({ length: r }, (_, i) => Math.max(...shapes.map((s) => s[s.length - r + i] ?? 1)));
}

/** Row-major data of `shape` broadcast to `out`. */
function gather(data: ArrayLike<number>, shape: readonly number[], out: readonly number[]): Float64Array {
  const st = stridesOf(shape);
  const os = stridesOf(out);
  const lead = out.length - shape.length;
  return Float64Array.from({ length: prod(out) }, (_, i) => {
    let off = 0;
    for (let d = 0; d < shape.length; d++) {
      if (shape[d] !== 1) off += (Math.floor(i / os[d + lead]) % out[d + lead]) * st[d];
    }
    return data[off];
  });
}

/** Elements of a strided view over `base` in row-major order. */
function viewValues(base: ArrayLike<number>, shape: readonly number[], strides: readonly number[], offset: number): Float64Array {
  const os = stridesOf(shape);
  return Float64Array.from({ length: prod(shape) }, (_, i) => {
    let off = offset;
    for (let d = 0; d < shape.length; d++) off += (Math.floor(i / os[d]) % shape[d]) * strides[d];
    return base[off];
  });
}

const f16 = (v: number) => f16BitsToF32(f32ToF16Bits(v));
const sig = (x: number) => 1 / (1 + Math.exp(-x));
const geluRef = (x: number) => 0.5 * x * (1 + Math.tanh(0.7978845608 * (x + 0.044715 * x ** 3)));

type Gen = (n: number, seed: number) => Float64Array;
const uniform = (lo: number, hi: number): Gen => (n, seed) => randArray(n, seed, lo, hi);
/** |x| in [lo, hi) with a random sign: keeps inputs off a kink or pole at 0. */
const away = (lo: number, hi: number): Gen => (n, seed) => Float64Array.from(randArray(n, seed), (u) => Math.sign(u || 1) * (lo + (hi - lo) * Math.abs(u)));
/** Values on a grid k/10 + phase: two gens with different phases never tie. */
const grid = (phase: number): Gen => (n, seed) => Float64Array.from(randArray(n, seed), (u) => Math.round(u * 10) / 10 + phase);
/** Uniform values pushed at least 0.02 away from the given points (clamp's corners). */
const avoiding = (lo: number, hi: number, points: number[]): Gen => (n, seed) =>
  Float64Array.from(randArray(n, seed, lo, hi), (v) => {
    for (const p of points) if (Math.abs(v - p) < 0.02) v = p + (v < p ? -0.02 : 0.02);
    return v;
  });

// ---------------------------------------------------------------- arbitraries

const shapeArb = fc.array(fc.integer({ min: 1, max: 5 }), { maxLength: 4 });
/** A shape that broadcasts to `out`: some leading dims dropped, some dims set to 1. */
const operandOf = (out: number[]) =>
  fc
    .tuple(fc.integer({ min: 0, max: out.length }), fc.array(fc.boolean(), { minLength: out.length, maxLength: out.length }))
    .map(([drop, ones]) => out.slice(drop).map((d, i) => (ones[i + drop] ? 1 : d)));
const pairArb = shapeArb.chain((out) => fc.tuple(operandOf(out), operandOf(out)));
const tripleArb = shapeArb.chain((out) => fc.tuple(operandOf(out), operandOf(out), operandOf(out)));
const seedArb = fc.integer({ min: 1, max: 1e6 });

// ---------------------------------------------------------------- unary ops

interface UnaryCase {
  name: string;
  gpu: (x: T.Tensor) => T.Tensor;
  f: (x: number) => number;
  gen: Gen;
}

const UNARY: UnaryCase[] = [
  { name: 'neg', gpu: T.neg, f: (x) => -x, gen: uniform(-2, 2) },
  { name: 'exp', gpu: T.exp, f: Math.exp, gen: uniform(-3, 3) },
  { name: 'log', gpu: T.log, f: Math.log, gen: uniform(0.2, 3) },
  { name: 'sqrt', gpu: T.sqrt, f: Math.sqrt, gen: uniform(0.2, 3) },
  { name: 'rsqrt', gpu: T.rsqrt, f: (x) => 1 / Math.sqrt(x), gen: uniform(0.2, 3) },
  { name: 'abs', gpu: T.abs, f: Math.abs, gen: away(0.1, 2) },
  { name: 'tanh', gpu: T.tanh, f: Math.tanh, gen: uniform(-3, 3) },
  { name: 'sigmoid', gpu: T.sigmoid, f: sig, gen: uniform(-5, 5) },
  { name: 'silu', gpu: T.silu, f: (x) => x * sig(x), gen: uniform(-5, 5) },
  { name: 'relu', gpu: T.relu, f: (x) => Math.max(x, 0), gen: away(0.1, 2) },
  { name: 'gelu', gpu: T.gelu, f: geluRef, gen: uniform(-4, 4) },
  { name: 'addScalar', gpu: (x) => T.addScalar(x, 0.75), f: (x) => x + 0.75, gen: uniform(-2, 2) },
  { name: 'mulScalar', gpu: (x) => T.mulScalar(x, -1.5), f: (x) => x * -1.5, gen: uniform(-2, 2) },
  { name: 'clamp(-0.5, 0.7)', gpu: (x) => T.clamp(x, -0.5, 0.7), f: (x) => Math.min(Math.max(x, -0.5), 0.7), gen: avoiding(-1, 1, [-0.5, 0.7]) },
  { name: 'clamp(lo only)', gpu: (x) => T.clamp(x, -0.2), f: (x) => Math.max(x, -0.2), gen: avoiding(-1, 1, [-0.2]) },
  { name: 'clamp(hi only)', gpu: (x) => T.clamp(x, undefined, 0.3), f: (x) => Math.min(x, 0.3), gen: avoiding(-1, 1, [0.3]) },
  // Integer exponents on bases of both signs (WGSL pow() alone is NaN for x < 0).
  ...[-3, -2, -1, 0, 1, 2, 3, 5].map((p) => ({ name: `powScalar(${p})`, gpu: (x: T.Tensor) => T.powScalar(x, p), f: (x: number) => x ** p, gen: away(0.3, 1.5) })),
  ...[0.5, 1.5, -0.7].map((p) => ({ name: `powScalar(${p})`, gpu: (x: T.Tensor) => T.powScalar(x, p), f: (x: number) => x ** p, gen: uniform(0.2, 2) })),
];

describe('unary ops: values and gradients (float64 reference, finite differences)', () => {
  for (const c of UNARY) {
    it(c.name, async () => {
      await fc.assert(
        fc.asyncProperty(shapeArb, seedArb, async (shape, seed) => {
          await checkOp({
            inputs: [{ data: c.gen(prod(shape), seed), shape }],
            gpu: ([x]) => c.gpu(x),
            cpu: ([x]) => x.map(c.f),
            seed,
          });
        }),
        { numRuns: 6 },
      );
    });
  }

  it('saturating inputs give finite values and gradients', async () => {
    const cases: [string, (x: T.Tensor) => T.Tensor, (x: number) => number, (x: number) => number, number[]][] = [
      ['sigmoid', T.sigmoid, sig, (x) => sig(x) * (1 - sig(x)), [-100, -20, 20, 100]],
      ['silu', T.silu, (x) => x * sig(x), (x) => sig(x) * (1 + x * (1 - sig(x))), [-100, -20, 20, 100]],
      ['tanh', T.tanh, Math.tanh, (x) => 1 - Math.tanh(x) ** 2, [-50, -12, 12, 50]],
      ['gelu', T.gelu, geluRef, (x) => {
        const u = 0.7978845608 * (x + 0.044715 * x ** 3);
        const t = Math.tanh(u);
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * 0.7978845608 * (1 + 3 * 0.044715 * x * x);
      }, [-30, -5, -1.5, 1.5, 5, 30]],
      ['exp', T.exp, Math.exp, Math.exp, [-100, -20, 20]],
    ];
    for (const [name, f, ref, dref, xs] of cases) {
      await T.tidyAsync(async () => {
        const x = T.requireGrad(T.fromArray(xs));
        T.backward(T.sum(f(x)));
        expectClose(await f(x).toArray(), xs.map(ref), 1e-6, 1e-5, `${name} value`);
        expectClose(await x.grad!.toArray(), xs.map(dref), 1e-6, 1e-4, `${name} grad`);
      });
    }
  });

  it('powScalar: exact integer powers, 0 ** 0 = 1, 0 ** -1 = inf, negative bases', async () => {
    await T.tidyAsync(async () => {
      const x = T.fromArray([-2, -1.5, 0, 1, 3]);
      expect(Array.from(await T.powScalar(x, 3).toArray())).toEqual([-8, -3.375, 0, 1, 27]);
      expect(Array.from(await T.powScalar(x, 2).toArray())).toEqual([4, 2.25, 0, 1, 9]);
      expect(Array.from(await T.powScalar(x, 0).toArray())).toEqual([1, 1, 1, 1, 1]);
      expect(Array.from(await T.powScalar(x, -1).toArray())).toEqual([-0.5, Math.fround(-1 / 1.5), Infinity, 1, Math.fround(1 / 3)]);
      // d/dx x^1 = 1 everywhere, 0 included; d/dx x^2 = 2x.
      const g = T.requireGrad(T.fromArray([-2, 0, 3]));
      T.backward(T.sum(T.powScalar(g, 1)));
      expect(Array.from(await g.grad!.toArray())).toEqual([1, 1, 1]);
      g.grad!.dispose();
      g.grad = null;
      T.backward(T.sum(T.powScalar(g, 2)));
      expect(Array.from(await g.grad!.toArray())).toEqual([-4, 0, 6]);
    });
  });
});

// ---------------------------------------------------------------- binary ops

interface BinaryCase {
  name: string;
  gpu: (a: T.Tensor, b: T.Tensor) => T.Tensor;
  f: (a: number, b: number) => number;
  ga: Gen;
  gb: Gen;
}

const BINARY: BinaryCase[] = [
  { name: 'add', gpu: T.add, f: (a, b) => a + b, ga: uniform(-2, 2), gb: uniform(-2, 2) },
  { name: 'sub', gpu: T.sub, f: (a, b) => a - b, ga: uniform(-2, 2), gb: uniform(-2, 2) },
  { name: 'mul', gpu: T.mul, f: (a, b) => a * b, ga: uniform(-2, 2), gb: uniform(-2, 2) },
  { name: 'div', gpu: T.div, f: (a, b) => a / b, ga: uniform(-2, 2), gb: away(0.5, 2) },
  { name: 'maximum', gpu: T.maximum, f: Math.max, ga: grid(0.03), gb: grid(0.07) },
  { name: 'minimum', gpu: T.minimum, f: Math.min, ga: grid(0.03), gb: grid(0.07) },
  { name: 'pow', gpu: T.pow, f: (a, b) => a ** b, ga: uniform(0.5, 2), gb: uniform(-2, 2) },
];

describe('binary ops with broadcasting: values and gradients of both inputs', () => {
  for (const c of BINARY) {
    it(c.name, async () => {
      await fc.assert(
        fc.asyncProperty(pairArb, seedArb, async ([sa, sb], seed) => {
          const out = bshape(sa, sb);
          await checkOp({
            inputs: [
              { data: c.ga(prod(sa), seed), shape: sa },
              { data: c.gb(prod(sb), seed + 1), shape: sb },
            ],
            gpu: ([a, b]) => c.gpu(a, b),
            cpu: ([a, b]) => {
              const ab = gather(b, sb, out);
              return gather(a, sa, out).map((v, i) => c.f(v, ab[i]));
            },
            seed,
          });
        }),
        { numRuns: 10 },
      );
    });
  }

  it('the [3, 1, 5] with [4, 5] case, rank 0 with rank 2, and ties in maximum/minimum', async () => {
    const a = randArray(15, 1);
    const b = randArray(20, 2);
    await checkOp({
      inputs: [{ data: a, shape: [3, 1, 5] }, { data: b, shape: [4, 5] }],
      gpu: ([x, y]) => T.mul(T.sub(x, y), T.add(x, y)),
      cpu: ([x, y]) => {
        const X = gather(x, [3, 1, 5], [3, 4, 5]);
        const Y = gather(y, [4, 5], [3, 4, 5]);
        return X.map((v, i) => (v - Y[i]) * (v + Y[i]));
      },
    });
    await checkOp({
      inputs: [{ data: Float64Array.of(0.7), shape: [] }, { data: b, shape: [4, 5] }],
      gpu: ([x, y]) => T.div(y, T.addScalar(x, 1)),
      cpu: ([x, y]) => y.map((v) => v / (x[0] + 1)),
    });
    await T.tidyAsync(async () => {
      // Ties: maximum sends the gradient to a (the first argument), minimum too.
      const x = T.requireGrad(T.fromArray([1, 2, 3]));
      const y = T.requireGrad(T.fromArray([1, 5, 0]));
      T.backward(T.sum(T.add(T.maximum(x, y), T.minimum(x, y))));
      expect(Array.from(await x.grad!.toArray())).toEqual([2, 1, 1]);
      expect(Array.from(await y.grad!.toArray())).toEqual([0, 1, 1]);
    });
  });

  it('integer tensors: add, sub, mul, maximum, minimum are exact', async () => {
    await T.tidyAsync(async () => {
      const a = T.fromArray([7, -3, 100000], [3], 'i32');
      const b = T.fromArray([-2], [1], 'i32');
      expect(Array.from(await T.add(a, b).toArray())).toEqual([5, -5, 99998]);
      expect(Array.from(await T.sub(a, b).toArray())).toEqual([9, -1, 100002]);
      expect(Array.from(await T.mul(a, b).toArray())).toEqual([-14, 6, -200000]);
      expect(Array.from(await T.maximum(a, b).toArray())).toEqual([7, -2, 100000]);
      expect(Array.from(await T.minimum(a, b).toArray())).toEqual([-2, -3, -2]);
      expect(T.add(a, b).dtype).toBe('i32');
    });
  });
});

// ---------------------------------------------------------------- where

describe('where', () => {
  it('broadcasts cond (i32, u32, f32, f16), a and b; gradients reach a and b only', async () => {
    const dtypes: T.DType[] = T.getEngine().ctx.hasF16 ? ['i32', 'u32', 'f32', 'f16'] : ['i32', 'u32', 'f32'];
    await fc.assert(
      fc.asyncProperty(tripleArb, fc.constantFrom(...dtypes), seedArb, async ([sc, sa, sb], dtype, seed) => {
        const out = bshape(sc, sa, sb);
        const r = rng(seed);
        // Nonzero values of several kinds (negative, > 1) all count as true.
        const choices = dtype === 'u32' ? [0, 1, 7] : [0, 1, -3, 2];
        const cond = Array.from({ length: prod(sc) }, () => choices[Math.floor(r() * choices.length)]);
        const C = gather(cond, sc, out);
        await checkOp({
          inputs: [
            { data: randArray(prod(sa), seed + 1), shape: sa },
            { data: randArray(prod(sb), seed + 2), shape: sb },
          ],
          gpu: ([a, b]) => T.where(T.fromArray(cond, sc, dtype), a, b),
          cpu: ([a, b]) => {
            const A = gather(a, sa, out);
            const B = gather(b, sb, out);
            return A.map((v, i) => (C[i] !== 0 ? v : B[i]));
          },
          seed,
        });
      }),
      { numRuns: 16 },
    );
  });

  it('[3, 1] i32 cond with [4] and [1]; i32 and f16 branches; strided operands', async () => {
    await T.tidyAsync(async () => {
      const c = T.fromArray([1, 0, -3], [3, 1], 'i32');
      const y = T.where(c, T.fromArray([1, 2, 3, 4]), T.fromArray([-1], [1]));
      expect(y.shape).toEqual([3, 4]);
      expect(Array.from(await y.toArray())).toEqual([1, 2, 3, 4, -1, -1, -1, -1, 1, 2, 3, 4]);
      const yi = T.where(T.fromArray([0, 1], [2], 'i32'), T.fromArray([5, 6], [2], 'i32'), T.fromArray([-7], [], 'i32'));
      expect(yi.dtype).toBe('i32');
      expect(Array.from(await yi.toArray())).toEqual([-7, 6]);
      // A transposed a and an offset b.
      const base = T.fromArray([0, 1, 2, 3, 4, 5, 6]);
      const at = base.view([3, 2], [1, 3], 0); // [[0,3],[1,4],[2,5]]
      const bo = base.view([2], [1], 5); // [5, 6]
      const m = T.fromArray([1, 0, 0, 1, 1, 1], [3, 2], 'f32');
      expect(Array.from(await T.where(m, at, bo).toArray())).toEqual([0, 6, 5, 4, 2, 5]);
      if (T.getEngine().ctx.hasF16) {
        const h = T.where(T.fromArray([1, 0, 1], [3], 'i32'), T.fromArray([1.5, 2.5, 3.5], [3], 'f16'), T.fromArray([-1], [1], 'f16'));
        expect(h.dtype).toBe('f16');
        expect(Array.from(await h.toArray())).toEqual([1.5, -1, 3.5]);
      }
    });
  });
});

// ---------------------------------------------------------------- views, contiguous, dtypes

/** A random strided view: permuted dims, stride steps of 1 or 2, some broadcast (stride 0) dims, an offset. */
const viewArb = fc
  .array(fc.integer({ min: 1, max: 5 }), { maxLength: 5 })
  .chain((shape) =>
    fc.record({
      shape: fc.constant(shape),
      perm: fc.shuffledSubarray(shape.map((_, i) => i), { minLength: shape.length, maxLength: shape.length }),
      step: fc.constantFrom(1, 2),
      zero: fc.array(fc.boolean(), { minLength: shape.length, maxLength: shape.length }),
      offset: fc.integer({ min: 0, max: 3 }),
      seed: seedArb,
    }),
  )
  .map(({ shape, perm, step, zero, offset, seed }) => {
    // Lay the dims out in `perm` order, then read them back in natural order.
    const laid = stridesOf(perm.map((i) => shape[i])).map((s) => s * step);
    const strides = shape.map((_, d) => (zero[d] ? 0 : laid[perm.indexOf(d)]));
    const span = offset + shape.reduce((a, d, i) => a + (d - 1) * strides[i], 0) + 1;
    return { shape, strides, offset, baseLen: span + (seed % 3), seed };
  });

describe('strided views, contiguous, casts and fills', () => {
  it('contiguous gathers any strided view (f32, f16, i32)', async () => {
    const dtypes: T.DType[] = T.getEngine().ctx.hasF16 ? ['f32', 'f16', 'i32'] : ['f32', 'i32'];
    await fc.assert(
      fc.asyncProperty(viewArb, fc.constantFrom(...dtypes), async ({ shape, strides, offset, baseLen, seed }, dtype) => {
        // Values exact in every dtype: small integers and halves (f16 and f32), integers (i32).
        const base = Float64Array.from(randArray(baseLen, seed, -60, 60), (v) => (dtype === 'i32' ? Math.round(v) : Math.round(v * 2) / 2) + 0); // + 0: no -0
        await T.tidyAsync(async () => {
          const b = T.fromArray(base, [baseLen], dtype);
          const v = b.view(shape, strides, offset);
          const c = T.contiguous(v);
          expect(c.isContiguous()).toBe(true);
          expect(c.shape).toEqual(shape);
          expect(c.dtype).toBe(dtype);
          expect(Array.from(await c.toArray())).toEqual(Array.from(viewValues(base, shape, strides, offset)));
          // toArray of the view itself goes through the same path.
          expect(Array.from(await v.toArray())).toEqual(Array.from(viewValues(base, shape, strides, offset)));
        });
      }),
      { numRuns: 30 },
    );
  });

  it('unary and binary ops read strided views directly', async () => {
    await fc.assert(
      fc.asyncProperty(viewArb, async ({ shape, strides, offset, baseLen, seed }) => {
        const base = randArray(baseLen, seed);
        const vals = viewValues(base, shape, strides, offset);
        const other = randArray(prod(shape), seed + 1);
        await T.tidyAsync(async () => {
          const v = T.fromArray(base, [baseLen]).view(shape, strides, offset);
          expectClose(await T.exp(v).toArray(), vals.map(Math.exp), 1e-6, 1e-5, 'exp of a view');
          expectClose(await T.sub(v, T.fromArray(other, shape)).toArray(), vals.map((x, i) => x - other[i]), 1e-6, 1e-5, 'view - dense');
          expectClose(await T.mul(T.fromArray(other, shape), v).toArray(), vals.map((x, i) => x * other[i]), 1e-6, 1e-5, 'dense * view');
        });
      }),
      { numRuns: 20 },
    );
  });

  it('contiguous keeps the graph (contiguous input returns a view, gradient still flows)', async () => {
    await checkOp({
      inputs: [{ data: randArray(12, 3), shape: [3, 4] }],
      gpu: ([x]) => T.mul(T.contiguous(x), x),
      cpu: ([x]) => x.map((v) => v * v),
    });
  });

  it('casts: f32 <-> f16 <-> i32, odd lengths and offsets', async () => {
    await T.tidyAsync(async () => {
      const vals = [-2.7, -0.5, 0.5, 2.7, 100.9, -65504, 1e-3, 3.14159];
      const x = T.fromArray(vals);
      expect(Array.from(await T.cast(x, 'i32').toArray())).toEqual([-2, 0, 0, 2, 100, -65504, 0, 3]);
      expect(T.cast(x, 'i32').dtype).toBe('i32');
      expect(Array.from(await T.cast(T.fromArray([-3, 0, 7, 2049], [4], 'i32'), 'f32').toArray())).toEqual([-3, 0, 7, 2049]);
      if (!T.getEngine().ctx.hasF16) return;
      // f32 -> f16: WGSL allows either neighbour of an inexact value; within one f16 ulp of the input.
      const h = T.cast(x, 'f16');
      expect(h.dtype).toBe('f16');
      const hv = await h.toArray();
      vals.forEach((v, i) => expect(Math.abs(hv[i] - v)).toBeLessThanOrEqual(2 ** -10 * Math.abs(v)));
      // Values exact in f16 round-trip exactly, in every odd length, from odd offsets.
      for (const n of [1, 3, 5, 7]) {
        const data = Array.from({ length: n }, (_, i) => (i - 2) * 0.75);
        const h16 = T.cast(T.fromArray(data), 'f16');
        expect(Array.from(await h16.toArray())).toEqual(data);
        expect(Array.from(await T.cast(h16, 'f32').toArray())).toEqual(data);
        expect(Array.from(await T.cast(h16, 'i32').toArray())).toEqual(data.map((v) => Math.trunc(v) + 0)); // + 0: i32 has no -0
        for (let off = 1; off < n; off += 2) {
          const v = h16.view([n - off], [1], off);
          expect(Array.from(await v.toArray())).toEqual(data.slice(off));
          expect(Array.from(await T.cast(v, 'f32').toArray())).toEqual(data.slice(off));
          const f = T.fromArray(data).view([n - off], [1], off);
          expect(Array.from(await T.cast(f, 'f16').toArray())).toEqual(data.slice(off));
          expect(Array.from(await T.contiguous(v).toArray())).toEqual(data.slice(off));
        }
        // Every other element of an f16 tensor (stride 2 from an odd offset).
        if (n >= 3) expect(Array.from(await h16.view([(n - 1) >> 1], [2], 1).toArray())).toEqual(data.filter((_, i) => i % 2 === 1));
      }
      const fromI = T.cast(T.fromArray([-3, 0, 7], [3], 'i32'), 'f16');
      expect(fromI.dtype).toBe('f16');
      expect(Array.from(await fromI.toArray())).toEqual([-3, 0, 7]);
      // Rank 0.
      expect(await T.cast(T.scalar(1.25), 'f16').item()).toBe(1.25);
    });
  });

  it('cast between float dtypes carries gradients; integer casts do not', async () => {
    if (!T.getEngine().ctx.hasF16) return;
    await T.tidyAsync(async () => {
      const R = [0.3, -1.7, 2.5];
      const x = T.requireGrad(T.fromArray([1, 2, 3]));
      const y = T.cast(T.mul(T.cast(x, 'f16'), T.fromArray(R, [3], 'f16')), 'f32');
      T.backward(T.sum(y));
      expectClose(await x.grad!.toArray(), R.map(f16), 0, 0, 'grad through f16');
      expect(T.cast(x, 'i32').requiresGrad).toBe(false);
    });
  });

  it('full, zeros, ones, zerosLike, onesLike in every dtype and shape', async () => {
    const dtypes: T.DType[] = T.getEngine().ctx.hasF16 ? ['f32', 'f16', 'i32', 'u32'] : ['f32', 'i32', 'u32'];
    await fc.assert(
      fc.asyncProperty(shapeArb, fc.constantFrom(...dtypes), fc.constantFrom(-2.7, 0.1, 7, 1e-3), async (shape, dtype, value) => {
        const expected = dtype === 'f32' ? Math.fround(value) : dtype === 'f16' ? f16(value) : dtype === 'i32' ? Math.trunc(value) : Math.trunc(value) >>> 0;
        await T.tidyAsync(async () => {
          const t = T.full(shape, value, dtype);
          expect(t.shape).toEqual(shape);
          expect(t.dtype).toBe(dtype);
          const got = Array.from(await t.toArray());
          // f16 from f32 bits may round to either neighbour: allow one f16 ulp.
          if (dtype === 'f16') got.forEach((g) => expect(Math.abs(g - value)).toBeLessThanOrEqual(2 ** -10 * Math.abs(value)));
          else expect(got).toEqual(new Array(prod(shape)).fill(expected));
          for (const [f, v] of [[T.zeros, 0], [T.ones, 1]] as const) {
            expect(Array.from(await f(shape, dtype).toArray())).toEqual(new Array(prod(shape)).fill(v));
          }
          expect(Array.from(await T.zerosLike(t).toArray())).toEqual(new Array(prod(shape)).fill(0));
          const o = T.onesLike(t);
          expect(o.dtype).toBe(dtype);
          expect(Array.from(await o.toArray())).toEqual(new Array(prod(shape)).fill(1));
        });
      }),
      { numRuns: 20 },
    );
    T.tidy(() => {
      expect(T.zeros([0, 3]).size).toBe(0);
      expect(T.full([], 2).shape).toEqual([]);
    });
  });
});

// ---------------------------------------------------------------- f16 compute

describe('f16 storage computes in f32', () => {
  it('add, mul, exp, gelu, sigmoid, where on f16 tensors', async () => {
    if (!T.getEngine().ctx.hasF16) return;
    await fc.assert(
      fc.asyncProperty(pairArb, seedArb, async ([sa, sb], seed) => {
        const out = bshape(sa, sb);
        const a = Float64Array.from(randArray(prod(sa), seed, -3, 3), f16);
        const b = Float64Array.from(randArray(prod(sb), seed + 1, -3, 3), f16);
        const A = gather(a, sa, out);
        const B = gather(b, sb, out);
        await T.tidyAsync(async () => {
          const ha = T.fromArray(a, sa, 'f16');
          const hb = T.fromArray(b, sb, 'f16');
          const check = async (t: T.Tensor, want: Float64Array, what: string) => {
            expect(t.dtype).toBe('f16');
            // One f16 rounding of the result (2^-11 relative) on top of f32 compute.
            expectClose(await t.toArray(), want, 1e-3, 1.5e-3, what);
          };
          await check(T.add(ha, hb), A.map((v, i) => v + B[i]), 'add');
          await check(T.mul(ha, hb), A.map((v, i) => v * B[i]), 'mul');
          await check(T.exp(ha), a.map(Math.exp), 'exp');
          await check(T.gelu(ha), a.map(geluRef), 'gelu');
          await check(T.sigmoid(hb), b.map(sig), 'sigmoid');
          await check(T.where(T.fromArray(A.map((v) => (v > 0 ? 1 : 0)), out, 'i32'), T.fromArray(A, out, 'f16'), hb), A.map((v, i) => (v > 0 ? v : B[i])), 'where');
        });
      }),
      { numRuns: 10 },
    );
  });

  it('gradients flow through f16 ops (broadcast add, exp, mul)', async () => {
    if (!T.getEngine().ctx.hasF16) return;
    await T.tidyAsync(async () => {
      const xv = [0.5, -1, 1.5];
      const wv = [1, 2, -1, 0.5, 0.25, 3];
      const x = T.requireGrad(T.fromArray(xv, [3], 'f16'));
      const w = T.fromArray(wv, [2, 3], 'f16');
      T.backward(T.sum(T.mul(T.exp(T.add(x, w)), w)));
      expect(x.grad!.dtype).toBe('f16');
      const want = xv.map((v, j) => [0, 1].reduce((s, i) => s + Math.exp(v + wv[i * 3 + j]) * wv[i * 3 + j], 0));
      expectClose(await x.grad!.toArray(), want, 1e-2, 3e-3, 'f16 grad');
    });
  });
});

// ---------------------------------------------------------------- errors

describe('errors', () => {
  it('name the op and both shapes, or the dtype', () => {
    T.tidy(() => {
      const a = T.fromArray([1, 2, 3, 4, 5, 6], [2, 3]);
      expect(() => T.add(a, T.fromArray([1, 2, 3, 4]))).toThrow('add: shapes [2, 3] and [4] cannot be broadcast together');
      expect(() => T.maximum(a, T.zeros([3, 3]))).toThrow('maximum: shapes [2, 3] and [3, 3] cannot be broadcast together');
      expect(() => T.where(T.zeros([4]), a, a)).toThrow(/where: shapes \[4\] and \[2, 3\] cannot be broadcast together/);
      expect(() => T.mul(a, T.zeros([3], 'i32'))).toThrow('mul: dtypes differ (f32 and i32)');
      const i = T.zeros([3], 'i32');
      expect(() => T.exp(i)).toThrow('exp: x has dtype i32, expected f32 or f16');
      expect(() => T.powScalar(i, 2)).toThrow('powScalar: x has dtype i32');
      expect(() => T.requireGrad(i)).toThrow(/only float tensors/);
    });
  });
});
