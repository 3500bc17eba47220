// Test helpers: seeded random data, closeness checks, and a gradient check that
// compares autograd against central finite differences of a float64 CPU reference.
import { expect } from 'vitest';
import { type Tensor, backward, fromArray, mul, requireGrad, sum, tidyAsync } from '../runtime/index.ts';

/** mulberry32: small, seeded, good enough for test data. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n uniform values in [lo, hi). */
export function randArray(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  const r = rng(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * r();
  return out;
}

export const prod = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** Asserts |a - e| <= atol + rtol * |e| elementwise, naming the first bad index. */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol = 1e-5, rtol = 1e-4, what = 'value'): void {
  expect(actual.length, `${what}: length`).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(e) && Number.isNaN(a)) continue;
    if (a === e) continue;
    const ok = Math.abs(a - e) <= atol + rtol * Math.abs(e);
    if (!ok) expect.fail(`${what}[${i}]: got ${a}, expected ${e} (atol ${atol}, rtol ${rtol})`);
  }
}

export interface GradCase {
  /** Input values (float64) and shapes. */
  inputs: { data: Float64Array; shape: number[] }[];
  /** The op on the GPU. */
  gpu: (xs: Tensor[]) => Tensor;
  /** The same op on the CPU in float64: returns the flat output (row-major). */
  cpu: (xs: Float64Array[]) => Float64Array;
  /** Which inputs get gradients checked (default all). */
  wrt?: number[];
  atol?: number;
  rtol?: number;
  /** Finite-difference step. */
  eps?: number;
  seed?: number;
}

/**
 * Checks forward values against the float64 reference, then the gradient of
 * L = sum(out * R) (R random) against central differences of the reference.
 */
export async function checkOp(c: GradCase): Promise<void> {
  const atol = c.atol ?? 1e-4;
  const rtol = c.rtol ?? 1e-3;
  const eps = c.eps ?? 1e-5;
  const wrt = c.wrt ?? c.inputs.map((_, i) => i);
  const ref = c.cpu(c.inputs.map((x) => x.data));
  const R = randArray(ref.length, c.seed ?? 7);
  await tidyAsync(async () => {
    const xs = c.inputs.map((x, i) => {
      const t = fromArray(Float32Array.from(x.data), x.shape);
      return wrt.includes(i) ? requireGrad(t) : t;
    });
    const y = c.gpu(xs);
    expectClose(await y.toArray(), ref, atol, rtol, 'forward');
    if (!wrt.length) return;
    const loss = sum(mul(y, fromArray(Float32Array.from(R), y.shape)));
    backward(loss);
    for (const i of wrt) {
      const g = await xs[i].grad!.toArray();
      const data = c.inputs[i].data;
      const fd = new Float64Array(data.length);
      for (let k = 0; k < data.length; k++) {
        const keep = data[k];
        const at = (v: number) => {
          const inputs = c.inputs.map((x) => x.data);
          const copy = Float64Array.from(inputs[i]);
          copy[k] = v;
          inputs[i] = copy;
          const out = c.cpu(inputs);
          let s = 0;
          for (let q = 0; q < out.length; q++) s += out[q] * R[q];
          return s;
        };
        fd[k] = (at(keep + eps) - at(keep - eps)) / (2 * eps);
      }
      expectClose(g, fd, atol * 10, rtol * 10, `grad of input ${i}`);
    }
    for (const x of xs) x.grad?.dispose();
  });
}
