// Fused SwiGLU (runtime/ops/swiglu.ts) against float64 references: random shapes (rank 0 to
// 4, size-1 and odd dims), both gradients from a reference backward, strided views (the two
// halves of a fused gate_up projection, permutations, expanded operands, offsets) with
// finite-difference gradients (checkOp), saturated inputs, f16 storage, errors.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import * as T from '../../runtime/index.ts';
import { f16BitsToF32, f32ToF16Bits } from '../../runtime/dtype.ts';
import { checkOp, expectClose, prod, randArray } from '../helpers.ts';

const sig = (x: number) => 1 / (1 + Math.exp(-x));
const silu = (x: number) => x * sig(x);
/** y, dgate, dup in float64 for gate, up and the output gradient dy. */
function ref(g: ArrayLike<number>, u: ArrayLike<number>, dy: ArrayLike<number>) {
  const n = g.length;
  const y = new Float64Array(n);
  const dg = new Float64Array(n);
  const du = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const s = sig(g[i]);
    y[i] = g[i] * s * u[i];
    dg[i] = dy[i] * u[i] * s * (1 + g[i] * (1 - s));
    du[i] = dy[i] * g[i] * s;
  }
  return { y, dg, du };
}
const f32 = (n: number, seed: number, lo = -6, hi = 6) => Float64Array.from(randArray(n, seed, lo, hi), Math.fround);

/** Runs swiglu forward and backward (L = sum(y * dy)) on fresh tensors of `shape`; compares with ref. */
async function checkDense(shape: number[], g: Float64Array, u: Float64Array, dy: Float64Array, atol = 1e-6, rtol = 1e-5): Promise<void> {
  const want = ref(g, u, dy);
  await T.tidyAsync(async () => {
    const gate = T.requireGrad(T.fromArray(Float32Array.from(g), shape));
    const up = T.requireGrad(T.fromArray(Float32Array.from(u), shape));
    const y = T.swiglu(gate, up);
    expect(y.shape).toEqual(shape);
    expectClose(await y.toArray(), want.y, atol, rtol, `swiglu ${JSON.stringify(shape)}`);
    T.backward(y, T.fromArray(Float32Array.from(dy), shape));
    expectClose(await gate.grad!.toArray(), want.dg, atol, rtol, 'dgate');
    expectClose(await up.grad!.toArray(), want.du, atol, rtol, 'dup');
    gate.grad!.dispose();
    up.grad!.dispose();
  });
}

const shapeArb = fc.array(fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 9 })), { maxLength: 4 });

describe('swiglu', () => {
  it('matches silu(gate) * up and its gradients for random shapes', async () => {
    await fc.assert(
      fc.asyncProperty(shapeArb, fc.integer({ min: 1, max: 1e6 }), async (shape, seed) => {
        const n = prod(shape);
        await checkDense(shape, f32(n, seed), f32(n, seed + 1, -2, 2), f32(n, seed + 2, -1, 1));
      }),
      { numRuns: 20 },
    );
  });

  it('runs odd sizes over several workgroups', async () => {
    const shape = [3, 1001];
    const n = prod(shape);
    await checkDense(shape, f32(n, 5), f32(n, 6, -2, 2), f32(n, 7, -1, 1));
  });

  it('stays finite and exact where the sigmoid saturates', async () => {
    const g = Float64Array.from([-1e4, -200, -100, -89, -88, -30, -1e-3, 0, 1e-3, 30, 88, 89, 100, 1e4]);
    const u = Float64Array.from(g, (_, i) => (i % 2 ? 1.5 : -0.75));
    const dy = Float64Array.from(g, (_, i) => 1 + i / 10);
    await checkDense([g.length], g, u, dy, 1e-6, 1e-5);
  });

  it('reads strided views in place: gate_up halves, permutations, offsets, expanded up (checkOp)', async () => {
    // gate and up as the two halves of one [R, 2F] projection output.
    const R = 3;
    const F = 5;
    await checkOp({
      inputs: [{ data: f32(R * 2 * F, 11, -3, 3), shape: [R, 2 * F] }],
      gpu: ([x]) => T.swiglu(T.slice(x, 1, 0, F), T.slice(x, 1, F, 2 * F)),
      cpu: ([x]) => {
        const out = new Float64Array(R * F);
        for (let r = 0; r < R; r++) for (let f = 0; f < F; f++) out[r * F + f] = silu(x[r * 2 * F + f]) * x[r * 2 * F + F + f];
        return out;
      },
    });
    // gate permuted [A, B] -> [B, A]; up with a broadcast (expanded) leading dim.
    const A = 4;
    const B = 3;
    await checkOp({
      inputs: [
        { data: f32(A * B, 12, -3, 3), shape: [A, B] },
        { data: f32(A, 13, -2, 2), shape: [1, A] },
      ],
      gpu: ([g, u]) => T.swiglu(T.permute(g, [1, 0]), T.expand(u, [B, A])),
      cpu: ([g, u]) => Float64Array.from({ length: B * A }, (_, i) => silu(g[(i % A) * B + Math.floor(i / A)]) * u[i % A]),
    });
    // Every other element (step 2) from an offset, both operands, rank 3.
    await checkOp({
      inputs: [{ data: f32(2 * 3 * 9, 14, -3, 3), shape: [2, 3, 9] }],
      gpu: ([x]) => T.swiglu(T.slice(x, 2, 1, 9, 2), T.slice(x, 2, 0, 8, 2)),
      cpu: ([x]) => Float64Array.from({ length: 2 * 3 * 4 }, (_, i) => {
        const row = Math.floor(i / 4);
        const j = i % 4;
        return silu(x[row * 9 + 1 + 2 * j]) * x[row * 9 + 2 * j];
      }),
    });
  });

  it('gives a gradient to only the input that requires it; empty tensors work', async () => {
    await T.tidyAsync(async () => {
      const g = T.requireGrad(T.fromArray([0.5, -1, 2], [3]));
      const u = T.fromArray([1, 2, 3], [3]);
      T.backward(T.sum(T.swiglu(g, u)));
      const want = ref([0.5, -1, 2], [1, 2, 3], [1, 1, 1]);
      expectClose(await g.grad!.toArray(), want.dg, 1e-6, 1e-5, 'dgate');
      expect(u.grad).toBeNull();
      g.grad!.dispose();
      const e = T.requireGrad(T.zeros([0, 3]));
      const y = T.swiglu(e, T.zeros([0, 3]));
      expect(y.shape).toEqual([0, 3]);
      T.backward(y, T.zeros([0, 3]));
      expect(e.grad!.shape).toEqual([0, 3]);
      e.grad!.dispose();
    });
  });

  it.runIf(T.getEngine().ctx.hasF16)('stores f16 and computes in f32', async () => {
    const h = (v: number) => f16BitsToF32(f32ToF16Bits(v));
    const n = 257;
    const g = Float64Array.from(f32(n, 21), h);
    const u = Float64Array.from(f32(n, 22, -2, 2), h);
    const dy = Float64Array.from(f32(n, 23, -1, 1), h);
    const want = ref(g, u, dy);
    await T.tidyAsync(async () => {
      const gate = T.requireGrad(T.fromArray(Float32Array.from(g), [n], 'f16'));
      const up = T.requireGrad(T.fromArray(Float32Array.from(u), [n], 'f16'));
      const y = T.swiglu(gate, up);
      expect(y.dtype).toBe('f16');
      // One f16 rounding of the result: 2^-11 relative.
      expectClose(await y.toArray(), want.y, 1e-4, 2 ** -10, 'f16 forward');
      T.backward(y, T.fromArray(Float32Array.from(dy), [n], 'f16'));
      expectClose(await gate.grad!.toArray(), want.dg, 1e-4, 2 ** -10, 'f16 dgate');
      expectClose(await up.grad!.toArray(), want.du, 1e-4, 2 ** -10, 'f16 dup');
      gate.grad!.dispose();
      up.grad!.dispose();
    });
  });

  it('names both shapes and the dtype in its errors', () => {
    T.tidy(() => {
      expect(() => T.swiglu(T.zeros([2, 3]), T.zeros([3, 2]))).toThrow('swiglu: gate [2, 3] and up [3, 2] must have the same shape');
      expect(() => T.swiglu(T.zeros([2, 3]), T.zeros([1, 3]))).toThrow(/same shape/);
      expect(() => T.swiglu(T.zeros([2], 'i32'), T.zeros([2], 'i32'))).toThrow(/swiglu.*i32/);
      if (T.getEngine().ctx.hasF16) expect(() => T.swiglu(T.zeros([2]), T.zeros([2], 'f16'))).toThrow(/swiglu: dtypes differ/);
    });
  });
});
