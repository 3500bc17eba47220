// The GRPO objective of Retrv-R1 (PAPER.md "Training", step 3, and "GRPO"), written out
// plainly: host-side reference functions on plain arrays (rewards, advantages, the
// per-token loss, k3 and the clip fraction) and the GPU loss the trainer differentiates.
//
// Reward of one completion (the curriculum reward):
//   r = r_format + 1[answer correct] * (1 - lambda * N_ins / K)
//   r_format = 1 when the assistant's tokens have the `<think>...</think><answer>i</answer>`
//   structure (model/inspect.ts formatOk) AND every inspection request was well formed (no
//   malformed / out_of_range / repeat / over_cap event), else 0.
//   lambda_i = i / N_iter with i the 0-based training step and N_iter the number of steps,
//   so inspecting is free at the first step and costs almost its full weight at the last;
//   a fixed lambda (the ablation) replaces the schedule.
//
// Advantages, per group of G completions of one prompt:
//   A_j = (r_j - mean(r)) / (std(r) + eps), std the POPULATION std (divide by G), eps = 1e-4.
//   A group whose rewards are all equal (to 1e-12) gets A = 0 for every member: nothing to
//   prefer, and no division by eps blowing float noise up.
//
// Loss per sampled token t of completion o (A is o's advantage, shared by its tokens):
//   rho_t = exp(logp_t - logp_old_t)                       (against the sampling policy)
//   l_t   = -min(rho_t A, clip(rho_t, 1 - eps_clip, 1 + eps_clip) A) + beta * k3_t
//   k3_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1     (against the frozen reference)
//   loss  = mean over completions of (mean over the completion's sampled tokens of l_t)
//   Defaults: eps_clip = 0.2, beta = 0.04 (DeepSeekMath's values).
//   Completions without a sampled token are left out of the mean (they carry nothing).
//   Option lengthNorm = M (Dr. GRPO, Liu et al. 2025): each completion's sum of l_t is
//   divided by the constant M instead of its own length. With 1 / L, a token of a short
//   completion weighs more than the same token in a long one, so among completions with
//   the same advantage the shorter gets the larger push: on our verify traces a look makes
//   a completion longer (and a broken one without a look is longer still), which pushes
//   the decision after <think> away from looking even in steps where looks earn more
//   reward (README, "Why GRPO stops looking").
//
// Logged figures, per completion over its own tokens, then over completions (whatever the
// loss's lengthNorm):
//   kl            mean k3
//   clip fraction tokens where the clipped term is the one taken and differs from the
//                 unclipped one: A > 0 and rho > 1 + eps_clip, or A < 0 and rho < 1 - eps_clip
//                 (exactly the tokens whose policy-gradient term is zeroed).
//
// The GPU loss takes the log-probs as one flat tensor [N] (all completions' sampled tokens
// in order) and host arrays for the rest; min ties go to the unclipped term, so at
// rho = 1 (the first update on a fresh sample) the gradient is the plain policy gradient.
import { type Tensor, addScalar, clamp, exp, fromArray, minimum, mul, mulScalar, sub, sum } from '../runtime/index.ts';

export const DEFAULT_CLIP = 0.2;
export const DEFAULT_KL_BETA = 0.04;
export const ADVANTAGE_EPS = 1e-4;

/** lambda_i = step / totalSteps (0-based step), or the fixed value when given. */
export function curriculumLambda(step: number, totalSteps: number, fixed?: number | null): number {
  if (fixed !== undefined && fixed !== null) {
    if (!(fixed >= 0) || !Number.isFinite(fixed)) throw new RangeError(`curriculumLambda: fixed lambda must be a finite number >= 0, got ${fixed}`);
    return fixed;
  }
  if (!Number.isInteger(totalSteps) || totalSteps < 1) throw new RangeError(`curriculumLambda: totalSteps must be a positive integer, got ${totalSteps}`);
  if (!Number.isInteger(step) || step < 0 || step >= totalSteps) throw new RangeError(`curriculumLambda: step must be an integer in [0, ${totalSteps}), got ${step}`);
  return step / totalSteps;
}

export interface RewardInput {
  /** The `<think>...</think><answer>i</answer>` structure holds (inspect.ts formatOk). */
  formatOk: boolean;
  /** Every inspection request was well formed (only `inspect` events). */
  inspectionsOk: boolean;
  /** The answer index points at a positive. */
  correct: boolean;
  /** N_ins: spliced inspections. */
  inspections: number;
  /** Candidates in the prompt. */
  K: number;
  lambda: number;
}

export interface Reward {
  reward: number;
  format: number;
  /** The answer part: 1[correct] * (1 - lambda * N_ins / K). */
  answer: number;
}

/** r = r_format + 1[correct] * (1 - lambda * N_ins / K). */
export function completionReward(x: RewardInput): Reward {
  if (!Number.isInteger(x.K) || x.K < 1) throw new RangeError(`completionReward: K must be a positive integer, got ${x.K}`);
  if (!Number.isInteger(x.inspections) || x.inspections < 0) throw new RangeError(`completionReward: inspections must be a non-negative integer, got ${x.inspections}`);
  const format = x.formatOk && x.inspectionsOk ? 1 : 0;
  const answer = x.correct ? 1 - (x.lambda * x.inspections) / x.K : 0;
  return { reward: format + answer, format, answer };
}

/** Group-normalised advantages of one group: (r - mean) / (population std + eps); all equal -> 0. */
export function groupAdvantages(rewards: readonly number[], eps = ADVANTAGE_EPS): number[] {
  const G = rewards.length;
  if (!G) return [];
  if (Math.max(...rewards) - Math.min(...rewards) <= 1e-12) return new Array<number>(G).fill(0);
  const m = rewards.reduce((a, r) => a + r, 0) / G;
  const std = Math.sqrt(rewards.reduce((a, r) => a + (r - m) ** 2, 0) / G);
  return rewards.map((r) => (r - m) / (std + eps));
}

/** Advantages of consecutive groups of `groupSize` (the layout the trainer samples in). */
export function batchAdvantages(rewards: readonly number[], groupSize: number, eps = ADVANTAGE_EPS): number[] {
  if (!Number.isInteger(groupSize) || groupSize < 1 || rewards.length % groupSize !== 0) {
    throw new RangeError(`batchAdvantages: ${rewards.length} rewards do not split into groups of ${groupSize}`);
  }
  const out: number[] = [];
  for (let s = 0; s < rewards.length; s += groupSize) out.push(...groupAdvantages(rewards.slice(s, s + groupSize), eps));
  return out;
}

export interface ObjectiveOptions {
  /** eps_clip (default 0.2). */
  clip?: number;
  /** beta, the k3 weight (default 0.04). */
  beta?: number;
  /** M: divide each completion's token sum by M, not by its length (default: its length). */
  lengthNorm?: number | null;
}

/** The divisor of a completion of L tokens (its length, or the constant M). */
function completionDivisor(L: number, lengthNorm: number | null | undefined): number {
  if (lengthNorm === undefined || lengthNorm === null) return L;
  if (!(lengthNorm > 0) || !Number.isFinite(lengthNorm)) throw new RangeError(`GRPO objective: lengthNorm must be a finite number > 0, got ${lengthNorm}`);
  return lengthNorm;
}

/** k3 = exp(ref - logp) - (ref - logp) - 1 (>= 0, 0 when the two agree). */
export function k3(logp: number, ref: number): number {
  const d = ref - logp;
  return Math.exp(d) - d - 1;
}

export interface TokenTerms {
  rho: number;
  /** -min(rho A, clip(rho) A): the policy part of the loss. */
  policy: number;
  k3: number;
  /** policy + beta * k3 */
  loss: number;
  /** Whether the clipped term was taken and differs (its gradient is zero). */
  clipped: boolean;
}

/** The loss terms of one token. */
export function tokenTerms(logp: number, logpOld: number, ref: number, A: number, o: ObjectiveOptions = {}): TokenTerms {
  const eps = o.clip ?? DEFAULT_CLIP;
  const beta = o.beta ?? DEFAULT_KL_BETA;
  const rho = Math.exp(logp - logpOld);
  const clippedRho = Math.min(Math.max(rho, 1 - eps), 1 + eps);
  const policy = -Math.min(rho * A, clippedRho * A);
  const kl = k3(logp, ref);
  const clipped = (A > 0 && rho > 1 + eps) || (A < 0 && rho < 1 - eps);
  return { rho, policy, k3: kl, loss: policy + beta * kl, clipped };
}

/** One completion's sampled tokens: log-probs under the current, sampling and reference policies. */
export interface CompletionLogProbs {
  logp: readonly number[];
  old: readonly number[];
  ref: readonly number[];
  advantage: number;
}

export interface ObjectiveValue {
  loss: number;
  /** Mean k3. */
  kl: number;
  clipFraction: number;
  /** Completions that count (at least one sampled token). */
  completions: number;
  tokens: number;
}

/** The batch loss and its logged figures on the host (float64): the reference for the GPU loss. */
export function grpoObjective(cs: readonly CompletionLogProbs[], o: ObjectiveOptions = {}): ObjectiveValue {
  let loss = 0;
  let kl = 0;
  let clip = 0;
  let n = 0;
  let tokens = 0;
  for (const [i, c] of cs.entries()) {
    const L = c.logp.length;
    if (c.old.length !== L || c.ref.length !== L) throw new RangeError(`grpoObjective: completion ${i} has ${L} log-probs, ${c.old.length} old and ${c.ref.length} reference ones`);
    if (!L) continue;
    let l = 0;
    let k = 0;
    let f = 0;
    for (let t = 0; t < L; t++) {
      const x = tokenTerms(c.logp[t], c.old[t], c.ref[t], c.advantage, o);
      l += x.loss;
      k += x.k3;
      f += x.clipped ? 1 : 0;
    }
    loss += l / completionDivisor(L, o.lengthNorm);
    kl += k / L;
    clip += f / L;
    n++;
    tokens += L;
  }
  const d = Math.max(1, n);
  return { loss: loss / d, kl: kl / d, clipFraction: clip / d, completions: n, tokens };
}

/**
 * Per-token host arrays for the GPU loss of a batch: each completion's advantage repeated
 * over its tokens, and the averaging weight 1 / (L_c * C) (C = completions with tokens),
 * or 1 / (M * C) with lengthNorm M.
 */
export function tokenWeights(lengths: readonly number[], advantages: readonly number[], lengthNorm?: number | null): { advantage: Float32Array; weight: Float32Array } {
  if (lengths.length !== advantages.length) throw new RangeError(`tokenWeights: ${lengths.length} lengths but ${advantages.length} advantages`);
  const N = lengths.reduce((a, n) => a + n, 0);
  const C = lengths.filter((n) => n > 0).length;
  const advantage = new Float32Array(N);
  const weight = new Float32Array(N);
  let at = 0;
  lengths.forEach((L, i) => {
    advantage.fill(advantages[i], at, at + L);
    weight.fill(1 / (completionDivisor(L, lengthNorm) * C), at, at + L);
    at += L;
  });
  return { advantage, weight };
}

/**
 * The GPU loss (a scalar tensor, differentiable in `logp`): logp [N] are the current
 * policy's log-probs of every completion's sampled tokens in order, old and ref the
 * sampling and reference policies' (constants), lengths the tokens per completion.
 */
export function grpoLoss(
  logp: Tensor,
  old: ArrayLike<number> | Tensor,
  ref: ArrayLike<number> | Tensor,
  lengths: readonly number[],
  advantages: readonly number[],
  o: ObjectiveOptions = {},
): Tensor {
  const eps = o.clip ?? DEFAULT_CLIP;
  const beta = o.beta ?? DEFAULT_KL_BETA;
  const N = lengths.reduce((a, n) => a + n, 0);
  if (logp.rank !== 1 || logp.shape[0] !== N) throw new RangeError(`grpoLoss: logp has shape [${logp.shape}], expected [${N}] (the sum of the completion lengths)`);
  const asTensor = (x: ArrayLike<number> | Tensor, what: string): Tensor => {
    if (!('shape' in x)) {
      if (x.length !== N) throw new RangeError(`grpoLoss: ${what} has ${x.length} values, expected ${N}`);
      return fromArray(Float32Array.from(x), [N]);
    }
    if (x.rank !== 1 || x.shape[0] !== N) throw new RangeError(`grpoLoss: ${what} has shape [${x.shape}], expected [${N}]`);
    return x;
  };
  const oldT = asTensor(old, 'old');
  const refT = asTensor(ref, 'ref');
  const { advantage, weight } = tokenWeights(lengths, advantages, o.lengthNorm);
  const A = fromArray(advantage, [N]);
  const rho = exp(sub(logp, oldT));
  const surrogate = minimum(mul(rho, A), mul(clamp(rho, 1 - eps, 1 + eps), A));
  const d = sub(refT, logp);
  const kl = addScalar(sub(exp(d), d), -1);
  const perToken = sub(mulScalar(kl, beta), surrogate);
  return sum(mul(perToken, fromArray(weight, [N])));
}
