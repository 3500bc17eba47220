// Seeded random tensors. Values are generated on the host (a counter-free xoshiro128**
// stream) and uploaded once: initialisation is rare, and this keeps runs reproducible
// across adapters bit for bit.
import { type DType } from './dtype.ts';
import { Tensor, fromArray, numel } from './tensor.ts';

/** A seeded generator of uniform floats in [0, 1). */
export class Rng {
  private s: Uint32Array;
  constructor(seed: number) {
    // splitmix32 expands the seed into the four state words.
    this.s = new Uint32Array(4);
    let z = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      z = (z + 0x9e3779b9) >>> 0;
      let t = z;
      t = Math.imul(t ^ (t >>> 16), 0x85ebca6b);
      t = Math.imul(t ^ (t >>> 13), 0xc2b2ae35);
      this.s[i] = (t ^ (t >>> 16)) >>> 0;
    }
    if (!this.s.some((v) => v !== 0)) this.s[0] = 1;
  }
  /** Next 32 random bits. */
  nextU32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }
  /** Uniform in [0, 1). */
  next(): number {
    return this.nextU32() / 4294967296;
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Uniform values in [lo, hi). */
export function rand(shape: readonly number[], opts: { seed: number; lo?: number; hi?: number; dtype?: DType }): Tensor {
  const r = new Rng(opts.seed);
  const lo = opts.lo ?? 0;
  const hi = opts.hi ?? 1;
  const data = new Float32Array(numel(shape));
  for (let i = 0; i < data.length; i++) data[i] = lo + (hi - lo) * r.next();
  return fromArray(data, shape, opts.dtype ?? 'f32');
}

/** Normal values with the given mean and standard deviation. */
export function randn(shape: readonly number[], opts: { seed: number; mean?: number; std?: number; dtype?: DType }): Tensor {
  const r = new Rng(opts.seed);
  const mean = opts.mean ?? 0;
  const std = opts.std ?? 1;
  const data = new Float32Array(numel(shape));
  for (let i = 0; i < data.length; i++) data[i] = mean + std * r.normal();
  return fromArray(data, shape, opts.dtype ?? 'f32');
}
