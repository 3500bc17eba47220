// The GRPO objective, term by term, against numbers worked out by hand here; then the GPU
// loss against the host reference on random inputs, and its gradient w.r.t. the log-probs
// against finite differences of the reference (and against the closed form at rho = 1).
import { describe, expect, it } from 'vitest';
import * as T from '../../runtime/index.ts';
import {
  batchAdvantages,
  completionReward,
  curriculumLambda,
  grpoLoss,
  grpoObjective,
  groupAdvantages,
  k3,
  tokenTerms,
  tokenWeights,
} from '../../train/grpo-objective.ts';
import { expectClose, rng } from '../helpers.ts';

describe('curriculum reward', () => {
  it('lambda rises as step / N_iter from 0; a fixed lambda overrides it', () => {
    expect(curriculumLambda(0, 10)).toBe(0);
    expect(curriculumLambda(5, 10)).toBe(0.5);
    expect(curriculumLambda(9, 10)).toBeCloseTo(0.9, 12);
    expect(curriculumLambda(0, 10, 0.5)).toBe(0.5);
    expect(curriculumLambda(9, 10, 0.5)).toBe(0.5);
    expect(() => curriculumLambda(10, 10)).toThrow(/step/);
    expect(() => curriculumLambda(0, 10, -1)).toThrow(/fixed lambda/);
  });

  it('r = r_format + 1[correct] (1 - lambda N_ins / K)', () => {
    const base = { formatOk: true, inspectionsOk: true, correct: true, inspections: 2, K: 16, lambda: 0.5 };
    // 1 + (1 - 0.5 * 2 / 16) = 1 + 0.9375
    expect(completionReward(base).reward).toBeCloseTo(1.9375, 12);
    // Inspection is free at lambda 0.
    expect(completionReward({ ...base, lambda: 0 }).reward).toBe(2);
    // Wrong answer, good format: only the format point.
    expect(completionReward({ ...base, correct: false })).toEqual({ reward: 1, format: 1, answer: 0 });
    // A malformed / out-of-range / repeated / over-cap request costs the format point.
    expect(completionReward({ ...base, inspectionsOk: false }).reward).toBeCloseTo(0.9375, 12);
    expect(completionReward({ ...base, formatOk: false, correct: false }).reward).toBe(0);
    // lambda 1, 4 of 8 candidates inspected: 1 + (1 - 4 / 8) = 1.5
    expect(completionReward({ ...base, inspections: 4, K: 8, lambda: 1 }).reward).toBeCloseTo(1.5, 12);
  });
});

describe('group advantages', () => {
  it('(r - mean) / (population std + 1e-4), by hand for 4 rewards', () => {
    // rewards 2, 1, 0, 1: mean 1; deviations 1, 0, -1, 0; variance (1 + 0 + 1 + 0) / 4 = 0.5
    const std = Math.sqrt(0.5);
    const A = groupAdvantages([2, 1, 0, 1]);
    expectClose(A, [1 / (std + 1e-4), 0, -1 / (std + 1e-4), 0], 1e-12, 1e-12, 'advantages');
    // rewards 1.9375, 1, 1, 0: mean 0.984375; deviations 0.953125, 0.015625, 0.015625, -0.984375
    const dev = [0.953125, 0.015625, 0.015625, -0.984375];
    const s2 = Math.sqrt(dev.reduce((a, d) => a + d * d, 0) / 4);
    expectClose(groupAdvantages([1.9375, 1, 1, 0]), dev.map((d) => d / (s2 + 1e-4)), 1e-12, 1e-12, 'advantages');
  });

  it('a group of equal rewards gets zero advantages; batches split into groups', () => {
    expect(groupAdvantages([1, 1, 1])).toEqual([0, 0, 0]);
    expect(groupAdvantages([0.9375, 0.9375])).toEqual([0, 0]);
    const A = batchAdvantages([0, 0, 2, 0], 2);
    // group 1 equal -> 0; group 2: mean 1, std 1
    expectClose(A, [0, 0, 1 / (1 + 1e-4), -1 / (1 + 1e-4)], 1e-12, 1e-12, 'batch advantages');
    expect(() => batchAdvantages([1, 2, 3], 2)).toThrow(/groups of 2/);
  });
});

describe('per-token terms', () => {
  const ln = Math.log;
  it('the ratio is clipped on the side that would gain, for positive and negative A', () => {
    // rho = 1.5 (above 1 + 0.2)
    const up = (A: number) => tokenTerms(ln(1.5) - 1, -1, -1 + ln(1.5), A);
    // A = 2: min(1.5 * 2, 1.2 * 2) = 2.4 -> loss -2.4, clipped (no gradient)
    expect(up(2).rho).toBeCloseTo(1.5, 12);
    expect(up(2).policy).toBeCloseTo(-2.4, 12);
    expect(up(2).clipped).toBe(true);
    // A = -2: min(-3, -2.4) = -3 -> loss 3, not clipped
    expect(up(-2).policy).toBeCloseTo(3, 12);
    expect(up(-2).clipped).toBe(false);
    // rho = 0.5 (below 1 - 0.2)
    const down = (A: number) => tokenTerms(ln(0.5), 0, ln(0.5), A);
    // A = 2: min(1, 0.8 * 2 = 1.6) = 1 -> loss -1, not clipped
    expect(down(2).policy).toBeCloseTo(-1, 12);
    expect(down(2).clipped).toBe(false);
    // A = -2: min(-1, -1.6) = -1.6 -> loss 1.6, clipped
    expect(down(-2).policy).toBeCloseTo(1.6, 12);
    expect(down(-2).clipped).toBe(true);
    // Another clip range: eps 0.6 keeps rho = 1.5 inside: min(3, 3) = 3
    expect(tokenTerms(ln(1.5), 0, ln(1.5), 2, { clip: 0.6 }).policy).toBeCloseTo(-3, 12);
  });

  it('k3 of given log-probs', () => {
    // logp = ln 0.25, ref = ln 0.5: d = ln 2 -> 2 - ln 2 - 1
    expect(k3(ln(0.25), ln(0.5))).toBeCloseTo(1 - Math.LN2, 12);
    // logp = ln 0.5, ref = ln 0.25: d = -ln 2 -> 0.5 + ln 2 - 1
    expect(k3(ln(0.5), ln(0.25))).toBeCloseTo(Math.LN2 - 0.5, 12);
    expect(k3(-1.3, -1.3)).toBe(0);
    // beta weights it: rho 1, A 0 -> loss = 0.04 k3 (default), 0.1 k3 when asked
    expect(tokenTerms(ln(0.25), ln(0.25), ln(0.5), 0).loss).toBeCloseTo(0.04 * (1 - Math.LN2), 12);
    expect(tokenTerms(ln(0.25), ln(0.25), ln(0.5), 0, { beta: 0.1 }).loss).toBeCloseTo(0.1 * (1 - Math.LN2), 12);
  });

  it('the batch loss averages over each completion\'s tokens, then over completions', () => {
    const ln15 = Math.log(1.5);
    const cs = [
      // A = 2: token a rho 1.5 (clipped: -2.4, k3 0); token b rho 1, ref/logp = 2 (-2, k3 1 - ln 2)
      { advantage: 2, logp: [ln15 - 1, ln(0.25)], old: [-1, ln(0.25)], ref: [ln15 - 1, ln(0.5)] },
      // A = -1: rho 0.5: min(-0.5, -0.8) = -0.8 -> 0.8, clipped, k3 0
      { advantage: -1, logp: [ln(0.5) - 2], old: [-2], ref: [ln(0.5) - 2] },
      // no sampled tokens: left out
      { advantage: 5, logp: [], old: [], ref: [] },
    ];
    const c1 = (-2.4 + -2 + 0.04 * (1 - Math.LN2)) / 2;
    const c2 = 0.8;
    const v = grpoObjective(cs);
    expect(v.loss).toBeCloseTo((c1 + c2) / 2, 12);
    expect(v.kl).toBeCloseTo((1 - Math.LN2) / 2 / 2, 12);
    expect(v.clipFraction).toBeCloseTo((1 / 2 + 1) / 2, 12);
    expect(v.completions).toBe(2);
    expect(v.tokens).toBe(3);
    // Token weights: 1 / (L * C) with C = 2 completions that have tokens.
    const w = tokenWeights([2, 1, 0], [2, -1, 5]);
    expect(Array.from(w.weight)).toEqual([0.25, 0.25, 0.5]);
    expect(Array.from(w.advantage)).toEqual([2, 2, -1]);
    // lengthNorm M = 4 (Dr. GRPO): every completion's token sum over 4; kl and clip keep their means.
    const d = grpoObjective(cs, { lengthNorm: 4 });
    expect(d.loss).toBeCloseTo(((-2.4 + -2 + 0.04 * (1 - Math.LN2)) / 4 + 0.8 / 4) / 2, 12);
    expect(d.kl).toBeCloseTo(v.kl, 12);
    expect(d.clipFraction).toBeCloseTo(v.clipFraction, 12);
    expect(Array.from(tokenWeights([2, 1, 0], [2, -1, 5], 4).weight)).toEqual([0.125, 0.125, 0.125]);
    expect(() => tokenWeights([1], [1], 0)).toThrow(/lengthNorm must be/);
  });
});

describe('GPU loss', () => {
  /** Random completions whose ratios stay clear of the clip edges (finite differences stay smooth). */
  function randomBatch(seed: number) {
    const r = rng(seed);
    const lengths = [3, 1, 5, 0, 2, 4];
    const advantages = lengths.map(() => (r() - 0.5) * 3);
    const N = lengths.reduce((a, n) => a + n, 0);
    const logRatios = [-0.5, -0.1, 0.05, 0.4]; // rho 0.61, 0.90, 1.05, 1.49
    const logp = Array.from({ length: N }, () => -0.1 - 3 * r());
    const old = logp.map((x) => x - (logRatios[Math.floor(r() * 4)] + 0.02 * (r() - 0.5)));
    const ref = logp.map((x) => x + (r() - 0.5));
    return { lengths, advantages, logp, old, ref, N };
  }
  const split = (b: ReturnType<typeof randomBatch>, logp: readonly number[]) => {
    let at = 0;
    return b.lengths.map((L, i) => {
      const s = { advantage: b.advantages[i], logp: logp.slice(at, at + L), old: b.old.slice(at, at + L), ref: b.ref.slice(at, at + L) };
      at += L;
      return s;
    });
  };

  it('equals the host reference on random inputs, and its gradient matches finite differences', async () => {
    for (const [seed, o] of [[1, {}], [2, { clip: 0.3, beta: 0.1 }], [3, { lengthNorm: 6 }]] as const) {
      const b = randomBatch(seed);
      const x = T.requireGrad(T.fromArray(Float32Array.from(b.logp), [b.N]));
      const loss = grpoLoss(x, b.old, b.ref, b.lengths, b.advantages, o);
      T.backward(loss);
      const got = await loss.item();
      const grad = Array.from(await x.grad!.toArray());
      const want = grpoObjective(split(b, b.logp), o).loss;
      expectClose([got], [want], 1e-5, 1e-5, `loss (seed ${seed})`);
      // The batch holds clipped tokens (zero policy gradient) and unclipped ones.
      const terms = split(b, b.logp).flatMap((c) => c.logp.map((lp, t) => tokenTerms(lp, c.old[t], c.ref[t], c.advantage, o)));
      expect(terms.some((t) => t.clipped)).toBe(true);
      expect(terms.some((t) => !t.clipped && t.rho !== 1)).toBe(true);
      const h = 1e-5;
      const fd = b.logp.map((_, i) => {
        const at = (d: number) => grpoObjective(split(b, b.logp.map((v, j) => (j === i ? v + d : v))), o).loss;
        return (at(h) - at(-h)) / (2 * h);
      });
      expectClose(grad, fd, 2e-5, 1e-3, `d loss / d logp (seed ${seed})`);
      for (const t of [x, loss]) t.dispose();
    }
  });

  it('at rho = 1 the gradient is the plain policy gradient plus the k3 term', async () => {
    // Two completions: A = 1.5 over 2 tokens, A = -0.5 over 1 token; old = logp.
    const logp = [-0.7, -2.0, -1.1];
    const ref = [-0.9, -1.5, -1.1];
    const x = T.requireGrad(T.fromArray(Float32Array.from(logp), [3]));
    const loss = grpoLoss(x, logp, ref, [2, 1], [1.5, -0.5]);
    T.backward(loss);
    const g = Array.from(await x.grad!.toArray());
    // d l_t / d logp_t = -A + beta (1 - exp(ref - logp)), times the weight 1 / (L C)
    const d = (t: number, A: number) => -A + 0.04 * (1 - Math.exp(ref[t] - logp[t]));
    expectClose(g, [d(0, 1.5) / 4, d(1, 1.5) / 4, d(2, -0.5) / 2], 1e-6, 1e-5, 'gradient at rho = 1');
    // Loss value: -A (the surrogate at rho 1) plus 0.04 k3, averaged the same way.
    const want = ((-1.5 + 0.04 * k3(logp[0], ref[0]) - 1.5 + 0.04 * k3(logp[1], ref[1])) / 2 + 0.5) / 2;
    expectClose([await loss.item()], [want], 1e-6, 1e-5, 'loss at rho = 1');
    // With lengthNorm 8 every token weighs 1 / (8 C): the one-token completion no longer counts double.
    const y = T.requireGrad(T.fromArray(Float32Array.from(logp), [3]));
    const flat = grpoLoss(y, logp, ref, [2, 1], [1.5, -0.5], { lengthNorm: 8 });
    T.backward(flat);
    expectClose(Array.from(await y.grad!.toArray()), [d(0, 1.5) / 16, d(1, 1.5) / 16, d(2, -0.5) / 16], 1e-6, 1e-5, 'gradient at rho = 1, lengthNorm 8');
    for (const t of [x, loss, y, flat]) t.dispose();
  });

  it('names the problem on mismatched inputs', () => {
    const x = T.fromArray(new Float32Array(3), [3]);
    expect(() => grpoLoss(x, [0, 0, 0], [0, 0, 0], [2, 2], [1, 1])).toThrow(/expected \[4\]/);
    expect(() => grpoLoss(x, [0, 0], [0, 0, 0], [2, 1], [1, 1])).toThrow(/old has 2 values/);
    x.dispose();
  });
});
