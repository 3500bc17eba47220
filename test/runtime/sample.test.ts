import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import * as T from '../../runtime/index.ts';
import { checkOp, expectClose, prod, randArray, rng } from '../helpers.ts';

const f32 = (a: ArrayLike<number>) => Float32Array.from(a);

/** CPU top-k of each row: stable sort by value descending (ties keep the lower index first). */
function refTopk(x: ArrayLike<number>, V: number, k: number): { values: number[]; indices: number[] } {
  const values: number[] = [];
  const indices: number[] = [];
  for (let r = 0; r < x.length / V; r++) {
    const idx = Array.from({ length: V }, (_, j) => j).sort((a, b) => x[r * V + b] - x[r * V + a] || a - b);
    for (let q = 0; q < k; q++) {
      indices.push(idx[q]);
      values.push(x[r * V + idx[q]]);
    }
  }
  return { values, indices };
}

/** Reads a tensor (tidy-friendly helper). */
const read = async (t: T.Tensor) => Array.from(await t.toArray());

describe('topk', () => {
  it('matches a CPU sort over random shapes, with ties, short and long (chunked) rows', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 0, maxLength: 2 }),
        fc.integer({ min: 1, max: 400 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.boolean(),
        fc.integer({ min: 1, max: 1e6 }),
        async (lead, V, kf, ties, seed) => {
          const k = Math.max(1, Math.min(V, Math.round(kf * kf * V)));
          const shape = [...lead, V];
          let x = randArray(prod(shape), seed, -3, 3);
          if (ties) x = x.map((v) => Math.round(v * 2) / 2); // few distinct values: many ties
          const ref = refTopk(f32(x), V, k);
          await T.tidyAsync(async () => {
            const { values, indices } = T.topk(T.fromArray(f32(x), shape), k);
            expect(values.shape).toEqual([...lead, k]);
            expect(indices.dtype).toBe('i32');
            expect(await read(indices)).toEqual(ref.indices);
            expect(await read(values)).toEqual(ref.values);
          });
        },
      ),
      { numRuns: 40, seed: 99 },
    );
  });

  it('reads a strided view, and exercises the multi-chunk merge on a long row', async () => {
    const V = 3000;
    const data = randArray(2 * V + 5, 5, -1, 1).map((v) => Math.round(v * 50) / 50);
    // Column-major [2, V] viewed as rows, starting at element 5.
    await T.tidyAsync(async () => {
      const base = T.fromArray(f32(data), [data.length]);
      const x = base.view([2, V], [1, 2], 5);
      const dense = new Float32Array(2 * V);
      for (let r = 0; r < 2; r++) for (let j = 0; j < V; j++) dense[r * V + j] = data[5 + j * 2 + r];
      for (const k of [1, 7, 40]) {
        const ref = refTopk(dense, V, k);
        const { values, indices } = T.topk(x, k);
        expect(await read(indices)).toEqual(ref.indices);
        expect(await read(values)).toEqual(ref.values);
      }
    });
  });

  it('sends gradients of the values back to the chosen positions', async () => {
    const shape = [3, 7];
    await checkOp({
      inputs: [{ data: randArray(21, 8), shape }],
      gpu: ([x]) => T.topk(x, 3).values,
      cpu: ([x]) => Float64Array.from(refTopk(x, 7, 3).values),
    });
  });

  it('names the op and sizes in its errors', () => {
    T.tidy(() => {
      expect(() => T.topk(T.zeros([2, 5]), 6)).toThrow(/topk: k = 6 .* 5 \(shape \[2, 5\]\)/);
      expect(() => T.topk(T.zeros([2, 5], 'i32'), 1)).toThrow(/topk: x has dtype i32/);
    });
  });
});

/** Float64 reference of the sampler for one row, given its uniform u. */
function refSample(x: ArrayLike<number>, temperature: number, topP: number, u: number): { token: number; ambiguous: boolean } {
  const V = x.length;
  let m = -Infinity;
  for (let j = 0; j < V; j++) m = Math.max(m, x[j]);
  const w = Array.from({ length: V }, (_, j) => Math.exp((x[j] - m) / temperature));
  const total = w.reduce((a, b) => a + b, 0);
  // Nucleus: the largest threshold t (a weight value) with mass(w >= t) >= topP * total.
  const distinct = [...new Set(w)].sort((a, b) => b - a);
  let t = 0;
  let ambiguous = false;
  if (topP < 1) {
    for (const d of distinct) {
      const mass = w.reduce((a, b) => a + (b >= d ? b : 0), 0);
      if (Math.abs(mass - topP * total) < 1e-4 * total) ambiguous = true; // f32 may decide otherwise
      if (mass >= topP * total) {
        t = d;
        break;
      }
    }
  }
  const kept = w.map((v) => (v >= t ? v : 0));
  const keptTotal = kept.reduce((a, b) => a + b, 0);
  const target = u * keptTotal;
  let acc = 0;
  let token = -1;
  for (let j = 0; j < V; j++) {
    if (kept[j] === 0) continue;
    if (Math.abs(acc - target) < 1e-4 * keptTotal) ambiguous = true; // the draw sits on a CDF edge
    acc += kept[j];
    if (acc > target && token < 0) token = j;
  }
  return { token, ambiguous };
}

async function runSample(logits: Float64Array, N: number, V: number, opts: T.SampleOptions): Promise<number[]> {
  return T.tidyAsync(async () => {
    const out = T.sample(T.fromArray(f32(logits), [N, V]), opts);
    expect(out.dtype).toBe('i32');
    expect(out.shape).toEqual([N]);
    return read(out);
  });
}

describe('sample', () => {
  it('temperature 0 is the argmax (lowest index on ties)', async () => {
    for (const [N, V] of [[5, 1], [7, 13], [3, 1000]] as const) {
      const x = randArray(N * V, N + V, -4, 4).map((v) => Math.round(v));
      const got = await runSample(x, N, V, { temperature: 0, seed: 1 });
      const want = Array.from({ length: N }, (_, r) => {
        let b = 0;
        for (let j = 1; j < V; j++) if (x[r * V + j] > x[r * V + b]) b = j;
        return b;
      });
      expect(got).toEqual(want);
    }
  });

  it('matches a float64 reference that draws the same per-row uniform', async () => {
    const cases = [
      { N: 64, V: 10, temperature: 1, topP: 1 },
      { N: 64, V: 37, temperature: 0.7, topP: 0.9 },
      { N: 32, V: 301, temperature: 1.3, topP: 0.5 },
      { N: 16, V: 2000, temperature: 1, topP: 0.95 },
    ];
    let checked = 0;
    for (const [c, { N, V, temperature, topP }] of cases.entries()) {
      const x = randArray(N * V, 100 + c, -3, 3);
      const seed = 2 ** 33 + 17 * c; // uses both seed words
      const got = await runSample(x, N, V, { temperature, topP, seed, step: c });
      for (let r = 0; r < N; r++) {
        const ref = refSample(x.subarray(r * V, (r + 1) * V), temperature, topP, T.sampleUniform(seed, c, r));
        if (ref.ambiguous) continue;
        checked++;
        expect(got[r], `case ${c} row ${r}`).toBe(ref.token);
      }
    }
    expect(checked).toBeGreaterThan(150);
  });

  it('is deterministic for a seed, and the seed and step change the draws', async () => {
    const N = 200, V = 9;
    const x = randArray(N * V, 3, -1, 1);
    const a = await runSample(x, N, V, { seed: 42, step: 3 });
    const b = await runSample(x, N, V, { seed: 42, step: 3 });
    const c = await runSample(x, N, V, { seed: 43, step: 3 });
    const d = await runSample(x, N, V, { seed: 42, step: 4 });
    expect(a).toEqual(b);
    expect(a.filter((t, i) => t !== c[i]).length).toBeGreaterThan(N / 3);
    expect(a.filter((t, i) => t !== d[i]).length).toBeGreaterThan(N / 3);
    expect(a.every((t) => t >= 0 && t < V)).toBe(true);
  });

  it('with a tiny topP only the argmax can come out', async () => {
    const N = 300, V = 50;
    const x = randArray(N * V, 4, -1, 1);
    const got = await runSample(x, N, V, { temperature: 2, topP: 1e-6, seed: 5 });
    for (let r = 0; r < N; r++) {
      let b = 0;
      for (let j = 1; j < V; j++) if (x[r * V + j] > x[r * V + b]) b = j;
      expect(got[r]).toBe(b);
    }
  });

  it('draws tokens with the softmax frequencies (chi-square), with and without top-p', async () => {
    const logits = [0.3, 1.5, -0.4, 0.9];
    const N = 4000;
    const x = new Float64Array(N * 4);
    for (let r = 0; r < N; r++) x.set(logits, r * 4);
    const chi2 = (counts: number[], probs: number[]) => counts.reduce((s, c, j) => (probs[j] > 0 ? s + (c - N * probs[j]) ** 2 / (N * probs[j]) : s), 0);
    const softmax = (l: number[], t: number) => {
      const e = l.map((v) => Math.exp(v / t));
      const s = e.reduce((a, b) => a + b, 0);
      return e.map((v) => v / s);
    };
    for (const temperature of [1, 0.5]) {
      const probs = softmax(logits, temperature);
      const got = await runSample(x, N, 4, { temperature, seed: 7 });
      const counts = [0, 1, 2, 3].map((j) => got.filter((t) => t === j).length);
      // 3 degrees of freedom: P(chi2 > 16.3) = 0.001. A wrong temperature or an off-by-one
      // in the CDF walk gives values in the hundreds.
      expect(chi2(counts, probs), `counts ${counts} vs ${probs.map((p) => (p * N).toFixed(0))}`).toBeLessThan(16.3);
    }
    // top-p 0.75 at temperature 1: probabilities ~[.15, .50, .07, .27]; the nucleus is {1, 3}
    // (mass .77), renormalised.
    const p = softmax(logits, 1);
    const kept = [0, p[1], 0, p[3]];
    const s = kept[1] + kept[3];
    const got = await runSample(x, N, 4, { topP: 0.75, seed: 8 });
    const counts = [0, 1, 2, 3].map((j) => got.filter((t) => t === j).length);
    expect(counts[0] + counts[2]).toBe(0);
    expect(chi2(counts, kept.map((v) => v / s))).toBeLessThan(10.8); // 1 dof, p = 0.001
  });

  it('checks its options', () => {
    T.tidy(() => {
      const x = T.zeros([2, 3]);
      expect(() => T.sample(x, { seed: 1, temperature: -1 })).toThrow(/temperature must be >= 0/);
      expect(() => T.sample(x, { seed: 1, topP: 0 })).toThrow(/topP must be in/);
      expect(() => T.sample(T.zeros([6]), { seed: 1 })).toThrow(/sample: logits must be \[N, V\], got shape \[6\]/);
    });
  });
});

describe('logProbsOf', () => {
  const refLogProbs = (x: ArrayLike<number>, tokens: number[], V: number) =>
    Float64Array.from(tokens, (t, r) => {
      if (t < 0 || t >= V) return 0;
      let m = -Infinity;
      for (let j = 0; j < V; j++) m = Math.max(m, x[r * V + j]);
      let s = 0;
      for (let j = 0; j < V; j++) s += Math.exp(x[r * V + j] - m);
      return x[r * V + t] - m - Math.log(s);
    });

  it('values and gradient match the float64 reference (padding token -1 gives 0)', async () => {
    for (const [N, V] of [[1, 1], [4, 7], [3, 130]] as const) {
      const r = rng(N * 31 + V);
      const tokens = Array.from({ length: N }, (_, i) => (i === 1 ? -1 : Math.floor(r() * V)));
      await checkOp({
        inputs: [{ data: randArray(N * V, N + V, -3, 3), shape: [N, V] }],
        gpu: ([x]) => T.logProbsOf(x, T.fromArray(tokens, [N], 'i32')),
        cpu: ([x]) => refLogProbs(x, tokens, V),
      });
    }
  });

  it('is stable for large logits and reads views', async () => {
    const N = 3, V = 5;
    const x = randArray(N * V, 77, -1, 1).map((v) => v * 50 + 1000);
    const tokens = [4, 0, 2];
    const got = await T.tidyAsync(async () => {
      // A transposed [V, N] buffer viewed as [N, V].
      const tr = new Float32Array(N * V);
      for (let i = 0; i < N; i++) for (let j = 0; j < V; j++) tr[j * N + i] = x[i * V + j];
      const xv = T.fromArray(tr, [V, N]).view([N, V], [1, N]);
      return read(T.logProbsOf(xv, T.fromArray(tokens, [N], 'i32')));
    });
    expectClose(got, refLogProbs(f32(x), tokens, V), 1e-4, 1e-4, 'large logits');
  });

  it('names the shapes in its errors', () => {
    T.tidy(() => {
      expect(() => T.logProbsOf(T.zeros([2, 3]), T.zeros([3], 'i32'))).toThrow(/tokens have shape \[3\], expected \[N\] = \[2\] for logits \[2, 3\]/);
      expect(() => T.logProbsOf(T.zeros([2, 3]), T.zeros([2]))).toThrow(/logProbsOf: tokens has dtype f32/);
    });
  });
});
