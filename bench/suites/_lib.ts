// Shared pieces of the benchmark harness: the suite/case contract, seeded data, runtime
// exports that may not exist yet, and float64 CPU references used to check every
// result before it is timed. Files in bench/suites/ starting with '_' are not suites.
import * as rt from '../../runtime/index.ts';

/** What one run of a case computes: floating-point operations and/or bytes moved. */
export interface Work {
  flops?: number;
  bytes?: number;
}

/** Outcome of the correctness check done before timing. */
export interface CheckReport {
  /** How many output values were compared with the reference. */
  compared: number;
  /** Largest |got - expected| seen, and the tolerance it had at that point. */
  maxAbsErr: number;
  note?: string;
}

/**
 * One thing to time: set up, check once against a CPU reference, time `run` with benny,
 * tear down. `run` must include waiting for the GPU (e.g. `await getEngine().sync()`).
 */
export interface BenchCase {
  /** What is computed, e.g. 'matmul 512x512x512'. Cases with the same name are compared. */
  name: string;
  /** Who computes it: 'retrv', 'tfjs-webgpu', 'ort-webgpu', 'ort-cpu'. */
  library: string;
  params: Record<string, number | string | boolean>;
  work: Work;
  /** Allocates and uploads inputs; throws Skip when the library or op is not available. */
  setup(): Promise<void>;
  /** Throws CheckFailed when the output does not match the reference. */
  check(): Promise<CheckReport>;
  run(): Promise<void>;
  teardown(): Promise<void>;
}

export interface SuiteOptions {
  quick: boolean;
  /** Square matmul sizes (--sizes); other suites scale with `quick` only. */
  sizes: number[];
}

/** A module in bench/suites/ default-exports one of these. */
export interface Suite {
  name: string;
  /** One line for the README/table: what is measured and in which unit. */
  describe: string;
  cases(opts: SuiteOptions): BenchCase[];
}

/** A library's matmul on uploaded operands (ours or a peer's). */
export interface MatmulRunner {
  /** One C = A @ B, resolved when the device has finished it. */
  run(): Promise<void>;
  /** One C = A @ B read back to the host (for the check). */
  output(): Promise<Float32Array>;
  dispose(): Promise<void>;
}

/** Thrown by setup when a library/op is missing; the case is reported as skipped with the message. */
export class Skip extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'Skip';
  }
}

/** Thrown by check when the output is wrong; the case is reported as failed and not timed. */
export class CheckFailed extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CheckFailed';
  }
}

/**
 * A runtime export planned but maybe not written yet. Looked up at run time so the
 * bench compiles and runs while other ops are still stubs.
 */
export function runtimeFn<F extends (...args: never[]) => unknown>(name: string): F {
  const f = (rt as Record<string, unknown>)[name];
  if (typeof f !== 'function') throw new Skip(`runtime/index.ts does not export a function '${name}' yet`);
  return f as F;
}

/** Several planned exports at once; the Skip names every one that is missing. */
export function runtimeFns<T extends Record<string, unknown>>(...names: (keyof T & string)[]): T {
  const missing = names.filter((n) => typeof (rt as Record<string, unknown>)[n] !== 'function');
  if (missing.length) throw new Skip(`runtime/index.ts does not export ${missing.map((n) => `'${n}'`).join(', ')} yet`);
  return Object.fromEntries(names.map((n) => [n, (rt as Record<string, unknown>)[n]])) as T;
}

/** mulberry32: small, seeded. */
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

/** n uniform f32 values in [lo, hi). References are computed from these exact f32 values. */
export function randF32(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * r();
  return out;
}

const U32 = 2 ** -24; // unit roundoff of f32

/**
 * Checks C[m,n] = A[m,k] @ B[k,n] (row-major) in float64: every entry when the product is
 * small, else `samples` seeded entries plus the corners. The tolerance per entry is
 * 16·sqrt(k)·u·Σ|a·b| (+1e-6): far above the rounding of any summation order in f32, far
 * below the effect of a dropped or doubled term.
 */
export function checkMatmul(a: Float32Array, b: Float32Array, c: ArrayLike<number>, m: number, k: number, n: number, samples = 1024): CheckReport {
  if (c.length !== m * n) throw new CheckFailed(`output has ${c.length} values, expected ${m}x${n} = ${m * n}`);
  const entries: [number, number][] = [];
  if (m * n * k <= 2 ** 27) {
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) entries.push([i, j]);
  } else {
    const r = rng(12345);
    entries.push([0, 0], [0, n - 1], [m - 1, 0], [m - 1, n - 1]);
    for (let s = 0; s < samples; s++) entries.push([Math.floor(r() * m), Math.floor(r() * n)]);
  }
  let maxAbsErr = 0;
  const scale = 16 * Math.sqrt(k) * U32;
  for (const [i, j] of entries) {
    let ref = 0;
    let absSum = 0;
    for (let p = 0; p < k; p++) {
      const v = a[i * k + p] * b[p * n + j];
      ref += v;
      absSum += Math.abs(v);
    }
    const got = c[i * n + j];
    const err = Math.abs(got - ref);
    if (!(err <= 1e-6 + scale * absSum)) {
      throw new CheckFailed(`C[${i}, ${j}] = ${got}, reference ${ref} (|err| ${err.toExponential(2)} > tol ${(1e-6 + scale * absSum).toExponential(2)})`);
    }
    if (err > maxAbsErr) maxAbsErr = err;
  }
  return { compared: entries.length, maxAbsErr };
}

/** |got - want| <= atol + rtol·|want| everywhere, else CheckFailed naming the first bad index. */
export function checkClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol: number): CheckReport {
  if (got.length !== want.length) throw new CheckFailed(`${what}: ${got.length} values, expected ${want.length}`);
  let maxAbsErr = 0;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    if (!(err <= atol + rtol * Math.abs(want[i]))) {
      throw new CheckFailed(`${what}[${i}] = ${got[i]}, reference ${want[i]} (atol ${atol}, rtol ${rtol})`);
    }
    if (err > maxAbsErr) maxAbsErr = err;
  }
  return { compared: want.length, maxAbsErr };
}

// ---- float64 CPU references (row-major, last axis innermost) ----

/** C[m,n] = A[m,k] @ B[k,n]. */
export function cpuMatmul(a: ArrayLike<number>, b: ArrayLike<number>, m: number, k: number, n: number): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      const av = a[i * k + p];
      for (let j = 0; j < n; j++) c[i * n + j] += av * b[p * n + j];
    }
  }
  return c;
}

/** Softmax over the last axis of a [rows, cols] array. */
export function cpuSoftmax(x: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const y = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let max = -Infinity;
    for (let c = 0; c < cols; c++) max = Math.max(max, x[r * cols + c]);
    let s = 0;
    for (let c = 0; c < cols; c++) s += (y[r * cols + c] = Math.exp(x[r * cols + c] - max));
    for (let c = 0; c < cols; c++) y[r * cols + c] /= s;
  }
  return y;
}

/** y = x / sqrt(mean(x²) + eps) · w over the last axis of [rows, cols]. */
export function cpuRmsNorm(x: ArrayLike<number>, w: ArrayLike<number>, rows: number, cols: number, eps: number): Float64Array {
  const y = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let c = 0; c < cols; c++) ss += x[r * cols + c] ** 2;
    const inv = 1 / Math.sqrt(ss / cols + eps);
    for (let c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c] * inv * w[c];
  }
  return y;
}

/** softmax(q·kᵀ/sqrt(d) [+ causal mask]) · v for [heads, t, d] (heads = batch·heads flattened). */
export function cpuAttention(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, heads: number, t: number, d: number, causal: boolean): Float64Array {
  const out = new Float64Array(heads * t * d);
  const scale = 1 / Math.sqrt(d);
  const s = new Float64Array(t);
  for (let h = 0; h < heads; h++) {
    const base = h * t * d;
    for (let i = 0; i < t; i++) {
      const last = causal ? i : t - 1;
      let max = -Infinity;
      for (let j = 0; j <= last; j++) {
        let dot = 0;
        for (let p = 0; p < d; p++) dot += q[base + i * d + p] * k[base + j * d + p];
        s[j] = dot * scale;
        max = Math.max(max, s[j]);
      }
      let sum = 0;
      for (let j = 0; j <= last; j++) sum += (s[j] = Math.exp(s[j] - max));
      for (let j = 0; j <= last; j++) {
        const pj = s[j] / sum;
        for (let p = 0; p < d; p++) out[base + i * d + p] += pj * v[base + j * d + p];
      }
    }
  }
  return out;
}
