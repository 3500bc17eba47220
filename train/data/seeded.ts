// Seeded, host-only randomness for the data builders. Kept apart from runtime/random.ts
// so that building data never loads the GPU runtime; every choice a builder makes goes
// through these, so a seed fixes the output byte for byte.

/** 32-bit FNV-1a of a string, mixed with a seed (stable across runs and machines). */
export function hash32(text: string, seed = 0): number {
  let h = (0x811c9dc5 ^ Math.imul(seed >>> 0, 0x9e3779b1)) >>> 0;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  // Final avalanche (murmur3 fmix32): FNV alone leaves the low bits weak for short keys.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

/** A small seeded generator (mulberry32): uniform floats, integers, picks, shuffles. */
export class SeededRng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Integer in [lo, hi] inclusive. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('SeededRng.pick: empty list');
    return items[this.int(items.length)];
  }
  /** A shuffled copy (Fisher-Yates). */
  shuffle<T>(items: readonly T[]): T[] {
    const out = items.slice();
    for (let i = out.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }
}

/** A generator whose stream depends only on (seed, key): order-independent choices. */
export function rngFor(seed: number, key: string): SeededRng {
  return new SeededRng(hash32(key, seed));
}

export type Split = 'train' | 'val' | 'test';
export const SPLITS: readonly Split[] = ['train', 'val', 'test'];

/** Assigns a key to a split by a seeded hash: about fractions[0] / [1] / [2] of keys each. */
export function splitOf(key: string, seed: number, fractions: readonly [number, number, number] = [0.8, 0.1, 0.1]): Split {
  const total = fractions[0] + fractions[1] + fractions[2];
  const u = hash32(key, seed ^ 0x5eed5) / 4294967296;
  if (u < fractions[0] / total) return 'train';
  if (u < (fractions[0] + fractions[1]) / total) return 'val';
  return 'test';
}
