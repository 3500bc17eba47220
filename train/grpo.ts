// The RL stage of Retrv-R1: GRPO with the curriculum reward (PAPER.md "Training", step 3).
// The math (reward, advantages, clipped ratio, k3) is in train/grpo-objective.ts; this
// file samples, scores, re-lays the samples for teacher forcing and runs the updates.
//
// One step:
//  1. Prompts: `batch` training queries (seeded per-epoch permutations, as in SFT), each
//     with K candidates: the first-stage top-K when a ranking map is given, else the SFT
//     way (train/data/cot.ts candidateList: positive + hard negatives + random pool items,
//     shuffled), new draws every step.
//  2. Sampling: each prompt repeated G times in one rerankGenerateBatch call (rows sample
//     independently from (seed, step, row)), temperature from the options, inspection on,
//     log-probs returned. With an ICM, the candidates are compressed once per prompt and
//     the G completions share the rows.
//  3. Rewards (grpo-objective.ts completionReward) and group-normalised advantages.
//  4. Teacher forcing: each completion re-laid with traceLayout after the same prompt parts
//     the generator used (same system text, same compress hook), so the spliced inspection
//     content sits where it sat during decoding; one forward; the head and log-softmax run
//     only on the rows that predict sampled tokens (not the prompt, not spliced content,
//     not a forced prefix). The frozen reference (the starting checkpoint loaded a second
//     time, or a copy of the given model, with its own frozen copy of the ICM) gives
//     ref log-probs the same way, without a graph.
//  5. `updates` optimisation steps (default 1) on the same sample. logp_old is the policy's
//     own teacher-forced log-probs before the first update (so rho = 1 exactly at update 0:
//     the plain policy gradient plus k3; the clip only acts from the second update on). The
//     log-probs the generator returned agree with those to float tolerance (logged as
//     `logpGap`, the largest difference, as a running check).
//  Temperature: the log-probs are untempered (the policy itself); sampling at another
//  temperature makes the sample slightly off-policy, which the ratio does not correct.
//  Averaging: each completion over its own tokens (the paper's GRPO, the default) or over
//  maxNewTokens (`lengthNorm: 'constant'`, Dr. GRPO); `lossOn` restricts the loss to the
//  decision after <think> or to the rest (a diagnostic; see grpo-objective.ts and README,
//  "Why GRPO stops looking").
//  Optimizer: AdamW, betas (0.9, 0.95), no weight decay (the KL term is the regulariser),
//  global gradient-norm clip 1, constant lr after an optional warmup.
//
// Runs: runDir/log.jsonl gets one line per step (reward mean and std, accuracy, N_ins,
// completion length, KL, clip fraction, lambda, loss, lr, seconds; each completion's
// reward, N_ins, r_format, loss length and whether it opened a look right after <think>;
// and each prompt's exact P(look) there before and after the step); every saveEvery steps
// runDir/checkpoint holds the policy, the ICM, the optimizer moments, the step and the
// run's settings (written to a temp folder, then swapped in). All randomness derives from
// (seed, step), so resuming from the checkpoint replays the remaining steps exactly; the
// log's lines past the checkpoint are dropped on resume. runDir/final holds the trained
// policy (and ICM).
import { appendFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import {
  type Tensor,
  AdamW,
  addScalar,
  constantSchedule,
  exp,
  fromArray,
  getEngine,
  indexSelect,
  init,
  keep,
  logProbsOf,
  noGrad,
  reshape,
  shapeStr,
  tidy,
  tidyAsync,
} from '../runtime/index.ts';
import { Icm, icmCompress } from '../model/icm.ts';
import { type CompressFactory, type RerankResult, compressPrompts, rerankGenerateBatch, traceLayout } from '../model/inspect.ts';
import { Mllm } from '../model/mllm.ts';
import { type CandidateInput, type QueryInput, type SequenceLayout, rerankParts } from '../model/sequence.ts';
import { writeFileAtomic } from './atomic-write.ts';
import { candidateList } from './data/cot.ts';
import type { EmojiAttributes } from './data/emoji-benchmark.ts';
import { ImageStore, candidateInput, queryInput } from './data/inputs.ts';
import type { MbeirCandidate, MbeirQuery } from './data/mbeir-types.ts';
import { parseTaskIds, queriesOfTasks } from './data/mbeir.ts';
import { hash32 } from './data/seeded.ts';
import { DEFAULT_CLIP, DEFAULT_KL_BETA, batchAdvantages, completionReward, curriculumLambda, grpoLoss, grpoObjective } from './grpo-objective.ts';
import { loadOptimizerState, saveRunState, savedStep, trainStep } from './run-state.ts';
import { batchQueries, loadSftCheckpointInto } from './sft.ts';
import { loadSftData } from './sft-stage.ts';
import { positiveInTopK, readRankings } from './training-rankings.ts';

/** What the prompts are drawn from (the train split). An SftData fits. */
export interface GrpoData {
  queries: readonly MbeirQuery[];
  byDid: ReadonlyMap<string, MbeirCandidate>;
  /** Each task's pool (dids), for the random fillers. */
  taskPools: ReadonlyMap<number, readonly string[]>;
  images: ImageStore;
  /** Candidate attributes (their split keeps fillers in the query's split); optional. */
  attributes?: ReadonlyMap<string, EmojiAttributes>;
  /** First-stage rankings per qid (best first): a query's top K are its candidates. */
  firstStage?: ReadonlyMap<string, readonly string[]>;
}

/** One training prompt. */
export interface GrpoPrompt {
  qid: string;
  query: QueryInput;
  candidateIds: string[];
  candidates: CandidateInput[];
  /** Indices of the candidates that are correct answers. */
  correct: number[];
}

export interface GrpoStepInfo {
  step: number;
  steps: number;
  /** Every completion's reward, prompt by prompt (G per prompt). */
  rewards: number[];
  /** Every completion's N_ins and r_format, in the order of rewards (to tell what a look does to the reward). */
  looks: number[];
  formats: number[];
  /**
   * Every completion's decision: 1 when the token after `<think>` opened a look, whether or
   * not the look was then closed and spliced (N_ins counts only those that were).
   */
  opened: number[];
  rewardMean: number;
  /** Population std over the batch's completions. */
  rewardStd: number;
  /** Share of completions whose answer is correct. */
  accuracy: number;
  /** Share of completions with r_format = 1. */
  formatRate: number;
  /** Mean N_ins. */
  inspections: number;
  /** Mean over the prompts of P(the first token after <think> opens a look), at the sampling policy. */
  lookProb: number;
  /** The same per prompt, before the step's updates and after them (what one step does to looking). */
  lookProbs: number[];
  lookProbsAfter: number[];
  /** Every completion's tokens in the loss (its weight there is 1 / length). */
  lengths: number[];
  /** Mean assistant tokens per completion (forced prefix included). */
  completionLength: number;
  /** Mean k3 against the reference, at the sampling policy. */
  kl: number;
  /** Mean over the updates of the share of clipped tokens. */
  clipFraction: number;
  lambda: number;
  /** Mean over the updates of the GPU loss. */
  loss: number;
  lr: number;
  seconds: number;
  /** Groups whose rewards differ (the others have zero advantage). */
  groupsWithSignal: number;
  /** Largest |generator log-prob - teacher-forced log-prob| (a consistency check). */
  logpGap: number;
}

export interface GrpoOptions {
  /** The policy (the SFT model); trained in place; on resume its weights are overwritten. */
  model: Mllm;
  /** The frozen reference; default: a frozen copy of `model` as given (before any resume). */
  reference?: Mllm;
  /** The ICM, trained with the policy; absent = full candidate tokens. */
  icm?: Icm | null;
  /** The reference's ICM; default: a frozen copy of `icm` as given. */
  referenceIcm?: Icm | null;
  /** Where the prompts come from; or give `prompts`. */
  data?: GrpoData;
  /** Instead of `data`: the prompts of a step (must depend only on the step, for exact resume). */
  prompts?: (step: number) => GrpoPrompt[];
  runDir: string;
  steps: number;
  /** G: completions per prompt. */
  group: number;
  /** Prompts per step. */
  batch: number;
  lr: number;
  seed: number;
  /** Candidates per prompt (default 16). */
  K?: number;
  /** beta, the k3 weight (default 0.04). */
  kl?: number;
  /** eps_clip (default 0.2). */
  clip?: number;
  /** Sampling temperature (default 1). */
  temperature?: number;
  topP?: number;
  /** A fixed lambda (the ablation) instead of the curriculum i / N_iter. */
  fixedLambda?: number | null;
  /** Cap on spliced inspections per completion (default 3). */
  maxInspections?: number;
  /** Default 256. */
  maxNewTokens?: number;
  /** Optimisation steps per sampled batch (default 1). */
  updates?: number;
  /** Which sampled tokens the loss sees (default all; see LossTokens). */
  lossOn?: LossTokens;
  /**
   * How a completion's token terms are averaged: over its own length (`completion`, the
   * default, as the paper's GRPO) or over maxNewTokens for every completion (`constant`,
   * Dr. GRPO; see grpo-objective.ts).
   */
  lengthNorm?: LengthNorm;
  /** Checkpoint every this many steps (default 0: only the final weights). */
  saveEvery?: number;
  /** Global gradient-norm clip (default 1). */
  gradClip?: number;
  warmupSteps?: number;
  /** The reranker's system instruction (default: model/sequence.ts DEFAULT_SYSTEM, as in SFT). */
  system?: string;
  /** Forced assistant tokens before sampling (e.g. [<think>]); they never count in the loss. */
  prefix?: readonly number[];
  onStep?: (s: GrpoStepInfo) => void;
  log?: (line: string) => void;
}

/** The settings a resumed run must share with the run that wrote the checkpoint. */
const RUN_FILE = 'grpo.json';

/** The sampling seed of a step (the generator draws rows from (seed, token step, row)). */
export function sampleSeed(seed: number, step: number): number {
  return hash32(`grpo-sample:${step}`, seed);
}

/**
 * The queries a prompt can be made from: a positive that is in the pool, and, for a query
 * with a first-stage ranking, a positive in its top K (a list without one has no reward).
 */
export function grpoQueries(data: GrpoData, K = 16): MbeirQuery[] {
  const ranked = (q: MbeirQuery) => {
    const r = data.firstStage?.get(q.qid);
    return !r || positiveInTopK(q, r, K);
  };
  return data.queries.filter((q) => q.pos_cand_list.length && q.pos_cand_list.some((d) => data.byDid.has(d)) && data.byDid.has(q.pos_cand_list[0]) && ranked(q));
}

/** One prompt for query q at a step (host side). */
export function makeGrpoPrompt(data: GrpoData, q: MbeirQuery, o: { K: number; seed: number; draw: number }): GrpoPrompt {
  const pool = data.taskPools.get(q.task_id) ?? [...data.byDid.keys()];
  // First-stage lists keep the first stage's order, as at test time (train/sft.ts does the same).
  const ids = candidateList(q, { K: o.K, seed: o.seed, draw: o.draw, firstStage: data.firstStage, shuffle: !data.firstStage, pool, attributes: data.attributes ?? new Map() });
  const candidates = ids.map((d) => {
    const c = data.byDid.get(d);
    if (!c) throw new Error(`grpo: candidate ${d} of query ${q.qid} is not in the pool`);
    return candidateInput(c, data.images);
  });
  const pos = new Set(q.pos_cand_list);
  const correct = ids.flatMap((d, i) => (pos.has(d) ? [i] : []));
  return { qid: q.qid, query: queryInput(q, data.images), candidateIds: ids, candidates, correct };
}

export interface ScoredCompletion {
  reward: number;
  format: number;
  correct: boolean;
  inspections: number;
}

/** The reward of one sampled completion (grpo-objective.ts completionReward). */
export function scoreCompletion(p: GrpoPrompt, r: RerankResult, lambda: number): ScoredCompletion {
  const correct = r.answer !== null && p.correct.includes(r.answer);
  const inspectionsOk = r.events.every((e) => e.kind === 'inspect');
  const { reward, format } = completionReward({ formatOk: r.formatOk, inspectionsOk, correct, inspections: r.inspections.length, K: p.candidates.length, lambda });
  return { reward, format, correct, inspections: r.inspections.length };
}

/** One completion to teacher-force: its prompt index and the generator's result. */
export interface Completion {
  prompt: number;
  result: RerankResult;
}

/**
 * Teacher-forced log-probs of the sampled tokens of every completion, in order, as one
 * tensor [N] (differentiable in the model, and in the ICM through `compress`). Each
 * completion is re-laid with traceLayout after rerankParts(query, candidates, {system,
 * compress}) -- the prompt rerankGenerateBatch built -- and the first `prefixLength`
 * assistant tokens (forced, not sampled) are skipped. Returns the tokens per completion.
 */
export function completionLogProbs(
  model: Mllm,
  prompts: readonly GrpoPrompt[],
  completions: readonly { prompt: number; result: { tokens: readonly number[] } }[],
  o: { system?: string; compress?: CompressFactory; maxInspections: number; prefixLength?: number; lossOn?: LossTokens },
): { logp: Tensor; lengths: number[]; kept: number[][] } {
  const skip = o.prefixLength ?? 0;
  const think = model.tokenizer.specialIds.thinkStart;
  const hooks = compressPrompts(o.compress, prompts);
  const layouts: SequenceLayout[] = [];
  const rows: { seq: number; at: number }[] = [];
  const targets: number[] = [];
  const lengths: number[] = [];
  const kept: number[][] = [];
  completions.forEach((c, b) => {
    const p = prompts[c.prompt];
    const prompt = rerankParts(p.query, p.candidates, { system: o.system, compress: hooks[c.prompt] });
    const tl = traceLayout(model, prompt, p.candidates, c.result.tokens, o.maxInspections);
    const at: number[] = [];
    tl.traceMask.forEach((m, t) => m && at.push(t));
    if (at.length !== c.result.tokens.length) throw new Error(`grpo: completion ${b} has ${c.result.tokens.length} tokens but its replay holds ${at.length}`);
    const keep = lossTokenIndices(c.result.tokens, skip, think, o.lossOn ?? 'all');
    for (const k of keep) {
      const t = at[skip + k];
      rows.push({ seq: b, at: t - 1 }); // position t - 1 predicts the token at t
      targets.push(tl.layout.ids[t]);
    }
    lengths.push(keep.length);
    kept.push(keep);
    layouts.push(tl.layout);
  });
  const batch = model.batch(layouts);
  const T = batch.embeds.shape[1];
  const D = model.config.llm.hidden;
  const h = model.llm.forwardEmbeds(batch.embeds, batch.positions);
  const picked = indexSelect(reshape(h, [layouts.length * T, D]), 0, rows.map((r) => r.seq * T + r.at));
  const logp = logProbsOf(model.llm.head(picked), fromArray(Int32Array.from(targets), [targets.length], 'i32'));
  return { logp, lengths, kept };
}

/**
 * Which of a completion's sampled tokens the loss sees. `decision`: the token right after
 * the first `<think>` (where a verify trace either opens a look or starts its sentence);
 * `rest`: every other one. A diagnostic: it tells whether the update on the decision itself
 * or the updates on the tokens around it move the decision.
 */
export type LossTokens = 'all' | 'decision' | 'rest';
export const LOSS_TOKENS: readonly LossTokens[] = ['all', 'decision', 'rest'];

/** How each completion's token terms are averaged (GrpoOptions.lengthNorm). */
export type LengthNorm = 'completion' | 'constant';
export const LENGTH_NORMS: readonly LengthNorm[] = ['completion', 'constant'];

/**
 * Indices into a completion's sampled tokens (`tokens` less its `skip` forced ones) that
 * the loss keeps (see LossTokens); the `<think>` may be forced or sampled.
 */
export function lossTokenIndices(tokens: readonly number[], skip: number, think: number, on: LossTokens): number[] {
  const all = tokens.slice(skip).map((_, i) => i);
  if (on === 'all') return all;
  const t = tokens.indexOf(think);
  const decision = t >= 0 && t + 1 < tokens.length && t + 1 >= skip ? t + 1 - skip : -1;
  return on === 'decision' ? (decision < 0 ? [] : [decision]) : all.filter((i) => i !== decision);
}

/** Whether the token after a completion's first `<think>` opens a look. */
export function opensLook(tokens: readonly number[], sp: { thinkStart: number; inspectStart: number }): boolean {
  const t = tokens.indexOf(sp.thinkStart);
  return t >= 0 && tokens[t + 1] === sp.inspectStart;
}

/**
 * P(the first token after `<think>` opens a look) for each prompt, under `model`: the
 * exact probability the sampler draws from, not a sampled rate.
 */
export function lookProbabilities(
  model: Mllm,
  prompts: readonly GrpoPrompt[],
  o: { system?: string; compress?: CompressFactory; maxInspections: number },
): Tensor {
  const sp = model.tokenizer.specialIds;
  const probes = prompts.map((_, i) => ({ prompt: i, result: { tokens: [sp.thinkStart, sp.inspectStart] } }));
  return exp(completionLogProbs(model, prompts, probes, { ...o, prefixLength: 1 }).logp);
}

/** A frozen copy of parameters (no gradient, new buffers). */
function frozenCopy(params: Map<string, Tensor>): Map<string, Tensor> {
  return noGrad(() => {
    const out = new Map<string, Tensor>();
    for (const [name, t] of params) {
      const c = keep(addScalar(t, 0));
      c.name = name;
      out.set(name, c);
    }
    return out;
  });
}

/** Copies tensors into existing parameters (closures holding them stay valid). */
function copyInto(dst: Tensor, src: Tensor, what: string): void {
  if (src.shape.length !== dst.shape.length || src.shape.some((d, i) => d !== dst.shape[i])) {
    throw new Error(`grpo resume: ${what} has shape ${shapeStr(src.shape)} in the checkpoint, ${shapeStr(dst.shape)} in the model`);
  }
  if (!dst.isContiguous() || !src.isContiguous()) throw new Error(`grpo resume: ${what} is not contiguous`);
  getEngine().copy(src.buf, src.offset * 4, dst.buf, dst.offset * 4, dst.size * 4);
}

/** Keeps the log lines of steps before `start` (a resumed run rewrites the rest). */
function truncateLog(path: string, start: number): void {
  if (!existsSync(path)) return;
  const lines = readFileSync(path, 'utf8').split('\n').filter((l) => l.trim());
  const kept = lines.filter((l) => {
    try {
      return (JSON.parse(l) as { step: number }).step < start;
    } catch {
      return false;
    }
  });
  if (kept.length !== lines.length) writeFileAtomic(path, kept.map((l) => l + '\n').join(''));
}

const mean = (xs: readonly number[]) => (xs.length ? xs.reduce((a, x) => a + x, 0) / xs.length : 0);

/** Runs (or resumes) GRPO; the trained weights are in o.model / o.icm and runDir/final. */
export async function grpoTrain(o: GrpoOptions): Promise<{ model: Mllm; icm: Icm | null; steps: number; last: GrpoStepInfo | null }> {
  const log = o.log ?? console.log;
  const K = o.K ?? 16;
  const G = o.group;
  const maxIns = o.maxInspections ?? 3;
  const updates = o.updates ?? 1;
  const lossOn = o.lossOn ?? 'all';
  if (!LOSS_TOKENS.includes(lossOn)) throw new RangeError(`grpo: lossOn must be one of ${LOSS_TOKENS.join(', ')}, got ${lossOn}`);
  const lengthNorm = o.lengthNorm ?? 'completion';
  if (!LENGTH_NORMS.includes(lengthNorm)) throw new RangeError(`grpo: lengthNorm must be one of ${LENGTH_NORMS.join(', ')}, got ${lengthNorm}`);
  const objective = { clip: o.clip ?? DEFAULT_CLIP, beta: o.kl ?? DEFAULT_KL_BETA, lengthNorm: lengthNorm === 'constant' ? (o.maxNewTokens ?? 256) : null };
  const prefix = o.prefix ?? [];
  for (const [name, v, min] of [['steps', o.steps, 1], ['group', G, 2], ['batch', o.batch, 1], ['updates', updates, 1]] as const) {
    if (!Number.isInteger(v) || v < min) throw new RangeError(`grpo: ${name} must be an integer >= ${min}, got ${v}`);
  }
  const model = o.model;
  const icm = o.icm ?? null;

  let source: (step: number) => GrpoPrompt[];
  let what: string;
  if (o.prompts) {
    source = o.prompts;
    what = 'given prompts';
  } else {
    const data = o.data;
    if (!data) throw new Error('grpo: give data or prompts');
    const queries = grpoQueries(data, K);
    if (!queries.length) throw new Error(`grpo: no usable training queries (each needs a positive in the pool${data.firstStage ? `, and in its first-stage top ${K}` : ''})`);
    source = (step) => batchQueries(queries, o.batch, step, o.seed).map((q) => makeGrpoPrompt(data, q, { K, seed: o.seed, draw: step }));
    what = `${queries.length} training queries, K ${K}${data.firstStage ? ' (first-stage top-K in order; queries without a positive there left out)' : ''}`;
  }

  // The reference is the model as given (the SFT weights), copied before any resume.
  const ownReference = !o.reference;
  const reference = o.reference ?? new Mllm(model.config, frozenCopy(model.params), model.tokenizer);
  const ownRefIcm = icm !== null && !o.referenceIcm;
  const referenceIcm = o.referenceIcm ?? (icm ? new Icm(icm.config, frozenCopy(icm.params)) : null);
  const policyCompress = icm ? icmCompress(model, icm) : undefined;
  const referenceCompress = referenceIcm ? icmCompress(reference, referenceIcm) : undefined;

  const ckptDir = join(o.runDir, 'checkpoint');
  const logPath = join(o.runDir, 'log.jsonl');
  mkdirSync(o.runDir, { recursive: true });
  const settings = { seed: o.seed, steps: o.steps, group: G, batch: o.batch, K, kl: objective.beta, clip: objective.clip, temperature: o.temperature ?? 1, fixedLambda: o.fixedLambda ?? null, maxInspections: maxIns, maxNewTokens: o.maxNewTokens ?? 256, updates, lr: o.lr, icm: icm !== null, lossOn, lengthNorm };
  const params = [...model.parameterList(), ...(icm ? icm.parameterList() : [])];
  const opt = new AdamW(params, { lr: o.lr, weightDecay: 0, betas: [0.9, 0.95] });
  let last: GrpoStepInfo | null = null;
  try {
    const resumeStep = savedStep(ckptDir);
    const start = resumeStep ?? 0;
    if (resumeStep !== null) {
      const savedSettings = JSON.parse(readFileSync(join(ckptDir, RUN_FILE), 'utf8')) as Record<string, unknown>;
      // Checkpoints written before these options existed ran with their defaults.
      const before: Record<string, string> = { lossOn: 'all', lengthNorm: 'completion' };
      for (const [k, v] of Object.entries(settings)) {
        if (JSON.stringify(savedSettings[k] ?? before[k]) !== JSON.stringify(v)) throw new Error(`grpo resume: ${join(ckptDir, RUN_FILE)} has ${k} = ${JSON.stringify(savedSettings[k])}, this run ${JSON.stringify(v)} (use the same settings, or another run folder)`);
      }
      await loadSftCheckpointInto(ckptDir, model);
      if (icm) {
        const saved = await Icm.load(ckptDir);
        if (!saved) throw new Error(`grpo resume: ${ckptDir} has no ICM but the run trains one`);
        try {
          for (const [name, t] of saved.params) copyInto(icm.p(name), t, name);
        } finally {
          saved.dispose();
        }
      }
      await loadOptimizerState(ckptDir, opt);
      truncateLog(logPath, start);
      log(`grpo: resuming from ${ckptDir} at step ${start}`);
    } else truncateLog(logPath, 0);
    log(`grpo: ${what}, ${o.batch} prompts x ${G} completions per step, ${o.steps} steps, ${icm ? 'compressed candidates (ICM)' : 'full candidates'}, lambda ${o.fixedLambda ?? 'i / N_iter'}, beta ${objective.beta}, clip ${objective.clip}, ${objective.lengthNorm === null ? 'each completion over its length' : `every completion over ${objective.lengthNorm} tokens`}${lossOn === 'all' ? '' : `, loss on ${lossOn} tokens only`}`);

    const schedule = constantSchedule(o.lr, o.warmupSteps ?? 0);
    const save = async (step: number) => {
      const tmp = `${ckptDir}.tmp-${process.pid}`;
      rmSync(tmp, { recursive: true, force: true });
      await model.save(tmp);
      if (icm) await icm.save(tmp);
      await saveRunState(tmp, opt, step);
      writeFileSync(join(tmp, RUN_FILE), JSON.stringify(settings, null, 2) + '\n');
      rmSync(ckptDir, { recursive: true, force: true });
      renameSync(tmp, ckptDir);
    };

    for (let step = start; step < o.steps; step++) {
      const t0 = performance.now();
      const prompts = source(step);
      const lambda = curriculumLambda(step, o.steps, o.fixedLambda);
      const lr = schedule(step);

      // 2. G completions per prompt in one decoding batch.
      const results = await tidyAsync(() => {
        const requests = noGrad(() => {
          const hooks = compressPrompts(policyCompress, prompts);
          return prompts.flatMap((p, i) => Array.from({ length: G }, () => ({ query: p.query, candidates: p.candidates, compress: hooks[i] })));
        });
        return rerankGenerateBatch(model, requests, {
          maxNewTokens: o.maxNewTokens ?? 256,
          temperature: o.temperature ?? 1,
          topP: o.topP,
          seed: sampleSeed(o.seed, step),
          maxInspections: maxIns,
          system: o.system,
          prefix,
          returnLogProbs: true,
        });
      });
      const completions: Completion[] = results.map((result, i) => ({ prompt: Math.floor(i / G), result }));

      // 3. Rewards and advantages.
      const scored = completions.map((c) => scoreCompletion(prompts[c.prompt], c.result, lambda));
      const rewards = scored.map((s) => s.reward);
      const advantages = batchAdvantages(rewards, G);

      // 4. Reference log-probs (no graph), then the updates.
      const forcing = { system: o.system, maxInspections: maxIns, prefixLength: prefix.length, lossOn };
      const probeLooks = async () => Array.from(await tidyAsync(() => noGrad(() => lookProbabilities(model, prompts, { system: o.system, compress: policyCompress, maxInspections: maxIns })).toArray()));
      const lookProbs = await probeLooks();
      const ref = keep(noGrad(() => tidy(() => completionLogProbs(reference, prompts, completions, { ...forcing, compress: referenceCompress }).logp)));
      let old: Tensor | null = null;
      const losses: number[] = [];
      const clipFractions: number[] = [];
      let kl = 0;
      let logpGap = 0;
      let lengths: number[] = [];
      let kept: number[][] = [];
      try {
        const refHost = Array.from(await ref.toArray());
        let oldHost: number[] = [];
        for (let u = 0; u < updates; u++) {
          let current: Tensor | null = null;
          const loss = trainStep(params, opt, lr, o.gradClip ?? 1, () => {
            const tf = completionLogProbs(model, prompts, completions, { ...forcing, compress: policyCompress });
            lengths = tf.lengths;
            kept = tf.kept;
            current = keep(noGrad(() => addScalar(tf.logp, 0)));
            if (!old) old = keep(noGrad(() => addScalar(tf.logp, 0)));
            return grpoLoss(tf.logp, old, ref, tf.lengths, advantages, objective);
          });
          const [lv, cur] = [await loss.item(), Array.from(await current!.toArray())];
          loss.dispose();
          current!.dispose();
          if (!Number.isFinite(lv)) throw new Error(`grpo: loss is ${lv} at step ${step}; stopping (the last checkpoint is in ${ckptDir})`);
          if (u === 0) oldHost = cur;
          losses.push(lv);
          // The logged figures from the host reference on the same numbers.
          const perCompletion = splitByLengths(lengths, advantages, cur, oldHost, refHost);
          const stats = grpoObjective(perCompletion, objective);
          clipFractions.push(stats.clipFraction);
          if (u === 0) {
            kl = stats.kl;
            let at = 0;
            completions.forEach((c, i) => {
              const gen = c.result.logProbs ?? [];
              kept[i].forEach((k, t) => (logpGap = Math.max(logpGap, Math.abs(gen[k] - cur[at + t]))));
              at += lengths[i];
            });
          }
        }
      } finally {
        ref.dispose();
        (old as Tensor | null)?.dispose();
      }

      const lookProbsAfter = await probeLooks();
      const info: GrpoStepInfo = {
        step,
        steps: o.steps,
        rewards,
        looks: scored.map((s) => s.inspections),
        formats: scored.map((s) => s.format),
        opened: completions.map((c) => (opensLook(c.result.tokens, model.tokenizer.specialIds) ? 1 : 0)),
        rewardMean: mean(rewards),
        rewardStd: Math.sqrt(mean(rewards.map((r) => (r - mean(rewards)) ** 2))),
        accuracy: mean(scored.map((s) => (s.correct ? 1 : 0))),
        formatRate: mean(scored.map((s) => s.format)),
        inspections: mean(scored.map((s) => s.inspections)),
        lookProb: mean(lookProbs),
        lookProbs,
        lookProbsAfter,
        lengths,
        completionLength: mean(completions.map((c) => c.result.tokens.length)),
        kl,
        clipFraction: mean(clipFractions),
        lambda,
        loss: mean(losses),
        lr,
        seconds: (performance.now() - t0) / 1000,
        groupsWithSignal: prompts.filter((_, p) => advantages.slice(p * G, (p + 1) * G).some((a) => a !== 0)).length,
        logpGap,
      };
      last = info;
      appendFileSync(logPath, JSON.stringify({ stage: 'grpo', ...info }) + '\n');
      if (o.onStep) o.onStep(info);
      else log(formatStep(info));
      if (o.saveEvery && (step + 1) % o.saveEvery === 0 && step + 1 < o.steps) await save(step + 1);
    }
    await getEngine().sync();
    const finalDir = join(o.runDir, 'final');
    await model.save(finalDir);
    if (icm) await icm.save(finalDir);
    rmSync(ckptDir, { recursive: true, force: true });
  } finally {
    opt.dispose();
    if (ownReference) for (const t of reference.parameterList()) t.dispose();
    if (ownRefIcm) referenceIcm?.dispose();
  }
  return { model, icm, steps: o.steps, last };
}

/** The host-side view of a batch's log-probs, completion by completion. */
function splitByLengths(lengths: readonly number[], advantages: readonly number[], logp: readonly number[], old: readonly number[], ref: readonly number[]) {
  let at = 0;
  return lengths.map((L, i) => {
    const s = { advantage: advantages[i], logp: logp.slice(at, at + L), old: old.slice(at, at + L), ref: ref.slice(at, at + L) };
    at += L;
    return s;
  });
}

/** One progress line. */
export function formatStep(s: GrpoStepInfo): string {
  return (
    `grpo ${s.step + 1}/${s.steps}  reward ${s.rewardMean.toFixed(3)} ± ${s.rewardStd.toFixed(3)}  acc ${s.accuracy.toFixed(2)}  format ${s.formatRate.toFixed(2)}` +
    `  N_ins ${s.inspections.toFixed(2)}  P(look) ${s.lookProb.toFixed(3)}  len ${s.completionLength.toFixed(0)}  kl ${s.kl.toExponential(2)}  clip ${s.clipFraction.toFixed(3)}` +
    `  lambda ${s.lambda.toFixed(3)}  loss ${s.loss.toFixed(4)}  lr ${s.lr.toExponential(1)}  ${s.seconds.toFixed(1)} s`
  );
}

// ---------------------------------------------------------------- loading

/**
 * The starting point of a run from a checkpoint folder (SFT's final): the policy and,
 * loaded a second time, the frozen reference; with the ICM beside it when the folder has
 * one (icm.safetensors), likewise twice.
 */
export async function loadGrpoModels(dir: string): Promise<{ model: Mllm; reference: Mllm; icm: Icm | null; referenceIcm: Icm | null }> {
  const model = await Mllm.load(dir);
  const reference = await Mllm.load(dir);
  for (const t of reference.parameterList()) t.requiresGrad = false;
  const icm = await Icm.load(dir);
  const referenceIcm = icm ? await Icm.load(dir) : null;
  if (referenceIcm) for (const t of referenceIcm.parameterList()) t.requiresGrad = false;
  return { model, reference, icm, referenceIcm };
}

/** The train split of a benchmark folder as GRPO data (first-stage rankings optional). */
export async function loadGrpoData(dataDir: string, model: Mllm, firstStage?: ReadonlyMap<string, readonly string[]>): Promise<GrpoData> {
  const { queries, byDid, taskPools, images, attributes } = await loadSftData(dataDir, model);
  return { queries, byDid, taskPools, images, attributes, firstStage };
}

// ---------------------------------------------------------------- command line
//
//   npx tsx train/grpo.ts --ckpt <sft final dir> --out runs/<name> [--data data/emoji-mbeir]
//     [--first-stage rankings.json] [--steps 200] [--group 4] [--batch 4] [--K 16] [--lr 1e-5]
//     [--kl 0.04] [--clip 0.2] [--temperature 1] [--fixed-lambda 0.5] [--max-inspections 3]
//     [--max-new-tokens 256] [--updates 1] [--save-every 20] [--seed 1] [--tasks 4,6]
//     [--length-norm completion|constant] [--loss-on all|decision|rest] [--quiet]
//   --tasks: train on those task ids' queries only (as the SFT stage's --tasks).
//   --length-norm constant: Dr. GRPO's averaging (every completion over --max-new-tokens).
//   --loss-on: a diagnostic; the loss on the token after <think> alone, or on all but it.

function lengthNormArg(v: string | undefined): LengthNorm {
  const t = LENGTH_NORMS.find((x) => x === v);
  if (!t) throw new Error(`--length-norm must be one of ${LENGTH_NORMS.join(', ')}, got ${v}`);
  return t;
}

function lossTokensArg(v: string | undefined): LossTokens {
  const t = LOSS_TOKENS.find((x) => x === v);
  if (!t) throw new Error(`--loss-on must be one of ${LOSS_TOKENS.join(', ')}, got ${v}`);
  return t;
}

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      ckpt: { type: 'string' },
      out: { type: 'string' },
      data: { type: 'string', default: 'data/emoji-mbeir' },
      'first-stage': { type: 'string' },
      steps: { type: 'string', default: '200' },
      group: { type: 'string', default: '4' },
      batch: { type: 'string', default: '4' },
      K: { type: 'string', default: '16' },
      lr: { type: 'string', default: '1e-5' },
      kl: { type: 'string', default: String(DEFAULT_KL_BETA) },
      clip: { type: 'string', default: String(DEFAULT_CLIP) },
      temperature: { type: 'string', default: '1' },
      'fixed-lambda': { type: 'string' },
      'max-inspections': { type: 'string', default: '3' },
      'max-new-tokens': { type: 'string', default: '256' },
      updates: { type: 'string', default: '1' },
      'loss-on': { type: 'string', default: 'all' },
      'length-norm': { type: 'string', default: 'completion' },
      'save-every': { type: 'string', default: '20' },
      seed: { type: 'string', default: '1' },
      tasks: { type: 'string' },
      quiet: { type: 'boolean', default: false },
    },
  });
  const tasks = a.tasks === undefined ? undefined : parseTaskIds(a.tasks);
  const num = (name: string, v: string | undefined, min: number, integer = true): number => {
    const n = Number(v);
    if (v === undefined || v.trim() === '' || !Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) throw new Error(`--${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}, got ${v}`);
    return n;
  };
  if (!a.ckpt) throw new Error('--ckpt <checkpoint folder> is required (the SFT stage\'s final folder)');
  if (!existsSync(join(a.ckpt, 'config.json'))) throw new Error(`--ckpt ${a.ckpt}: no config.json there`);
  if (!a.out) throw new Error('--out <run folder> is required (e.g. runs/grpo-tiny)');
  if (!existsSync(join(a.data, 'meta.json'))) throw new Error(`--data ${a.data}: no meta.json there (build it with npm run build-data)`);
  const quiet = a.quiet || !!process.env.CI;
  const tty = !quiet && process.stdout.isTTY;
  const say = (line: string) => {
    if (tty) process.stdout.write('\n');
    console.log(line);
  };
  const opts = {
    steps: num('steps', a.steps, 1),
    group: num('group', a.group, 2),
    batch: num('batch', a.batch, 1),
    K: num('K', a.K, 1),
    lr: num('lr', a.lr, 0, false),
    kl: num('kl', a.kl, 0, false),
    clip: num('clip', a.clip, 0, false),
    temperature: num('temperature', a.temperature, 0, false),
    fixedLambda: a['fixed-lambda'] === undefined ? null : num('fixed-lambda', a['fixed-lambda'], 0, false),
    maxInspections: num('max-inspections', a['max-inspections'], 0),
    maxNewTokens: num('max-new-tokens', a['max-new-tokens'], 1),
    updates: num('updates', a.updates, 1),
    lossOn: lossTokensArg(a['loss-on']),
    lengthNorm: lengthNormArg(a['length-norm']),
    saveEvery: num('save-every', a['save-every'], 0),
    seed: num('seed', a.seed, 0),
  };
  const firstStage = a['first-stage'] ? readRankings(a['first-stage']) : undefined;
  const ctx = await init();
  say(`adapter: ${ctx.description}`);
  const models = await loadGrpoModels(a.ckpt);
  const all = await loadGrpoData(a.data, models.model, firstStage);
  const data = tasks ? { ...all, queries: queriesOfTasks(all.queries, tasks, `${a.data} train split`) } : all;
  const t0 = performance.now();
  await grpoTrain({
    ...models,
    ...opts,
    data,
    runDir: a.out,
    log: say,
    onStep: (s) => {
      const line = formatStep(s);
      if (tty) process.stdout.write(`\r${line}    `);
      else if (!quiet || s.step % 10 === 0 || s.step + 1 === s.steps) console.log(line);
    },
  });
  say(`grpo done in ${((performance.now() - t0) / 1000).toFixed(0)} s -> ${join(a.out, 'final')} (log: ${join(a.out, 'log.jsonl')})`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
