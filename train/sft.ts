// The activation stage (SFT): the reranker learns the retrieval chain of thought.
//
// Each example is a training query, its K candidates (the first-stage top-K in the first
// stage's order when rankings are given, so the model learns how far to trust that order;
// else positive + hard negatives + random pool items of the train split, shuffled so the
// answer takes every position), and a synthetic trace (train/data/cot.ts). The sequence is the
// reranker prompt (candidates compressed by the ICM hook when one is given, else full)
// followed by the trace, with each inspected candidate's full content spliced in after
// its <inspection-index-end> exactly as at inference (model/inspect.ts traceLayout).
// Cross-entropy on the assistant tokens only: the trace tokens and the closing
// <|im_end|>; never the prompt, never the spliced content. With `decisionShare` the
// decision tokens carry that share of the loss and the rest of the trace the remainder,
// each a mean over its own tokens: in a brief trace of ~100 tokens the dozen that decide
// would otherwise get about a tenth of the loss (an answer-only trace: 1 of 6), and the
// answer alone about a hundredth. The decision tokens are every index the trace writes (the
// eliminated ones, the inspected ones, the answer: digit tokens), or with
// `decisionTokens: 'answer'` the answer's index alone (the tokens inside <answer></answer>).
//
// With a compress function whose parameters are given (compressParams), the ICM trains
// jointly with the model (one optimizer). Examples come from the benchmark (`data`: each
// epoch a seeded permutation of the training queries, new candidate lists and wordings at
// every step) or from the caller (`examples(step)`). Batches depend only on (seed, step),
// so a run resumes exactly from its checkpoint: runDir/checkpoint holds the model, the ICM
// parameters (compress.safetensors), the optimizer moments and the step; runDir/final the
// result; runDir/log.jsonl one line per step.
import { appendFileSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { type Tensor, AdamW, crossEntropy, cosineSchedule, fromArray, getEngine, loadSafetensors, reshape, saveSafetensors, shapeStr } from '../runtime/index.ts';
import { loadCheckpointTensors } from '../model/checkpoint.ts';
import { type CompressFactory, type TraceLayout, compressPrompts, maskedTargets, traceLayout } from '../model/inspect.ts';
import { Mllm } from '../model/mllm.ts';
import { type CandidateInput, type QueryInput, rerankParts } from '../model/sequence.ts';
import { type EmojiInfo, type Trace, type TraceStyle, candidateList, emojiIndex, synthesizeTrace } from './data/cot.ts';
import type { EmojiAttributes, EmojiQueryAttributes } from './data/emoji-benchmark.ts';
import { type ImageStore, candidateInput, queryInput } from './data/inputs.ts';
import type { MbeirCandidate, MbeirQuery } from './data/mbeir-types.ts';
import { rngFor } from './data/seeded.ts';
import { loadOptimizerState, saveRunState, savedStep, trainStep } from './run-state.ts';
import { positiveInTopK } from './training-rankings.ts';

export type { CompressFactory };

/** What the examples are drawn from (one split of the benchmark). */
export interface SftData {
  queries: readonly MbeirQuery[];
  queryAttributes: ReadonlyMap<string, EmojiQueryAttributes>;
  attributes: ReadonlyMap<string, EmojiAttributes>;
  byDid: ReadonlyMap<string, MbeirCandidate>;
  /** Each task's pool (dids), for the random fillers. */
  taskPools: ReadonlyMap<number, readonly string[]>;
  images: ImageStore;
  /**
   * First-stage rankings per qid (best first): a query's top K are its candidates, kept in
   * the first stage's order (as at test time), and only queries whose top K (at the full K)
   * holds a positive are trained on (trainingQueries).
   */
  firstStage?: ReadonlyMap<string, readonly string[]>;
}

export interface SftExample {
  qid: string;
  query: QueryInput;
  candidateIds: string[];
  candidates: CandidateInput[];
  trace: Trace;
  /** The assistant's tokens: the trace, then <|im_end|>. */
  traceIds: number[];
  /** The numbers the prompt writes before the candidates (default their positions; model/sequence.ts). */
  labels?: number[];
}

export interface ExampleOptions {
  K: number;
  seed: number;
  /** Mixed into the draws (the training step), so each epoch sees new lists and wordings. */
  draw: number;
  maxInspections: number;
  /** Trace wording (train/data/cot.ts); default full. */
  style?: TraceStyle;
  /** Take the query's hard negatives (default true); false = random pool items only. */
  hardNegatives?: boolean;
}

/** One example for query `q` (host side; images are preprocessed, nothing runs on the GPU). */
export function makeSftExample(model: Mllm, data: SftData, emojis: ReadonlyMap<string, EmojiInfo>, q: MbeirQuery, o: ExampleOptions): SftExample {
  const qa = data.queryAttributes.get(q.qid);
  if (!qa) throw new Error(`sft: query ${q.qid} has no row in query_attributes`);
  const pool = data.taskPools.get(q.task_id) ?? [...data.byDid.keys()];
  if (data.firstStage && !data.firstStage.has(q.qid)) throw new Error(`sft: query ${q.qid} has no first-stage ranking`);
  const ids = candidateList(q, { K: o.K, seed: o.seed, draw: o.draw, firstStage: data.firstStage, shuffle: !data.firstStage, pool, attributes: data.attributes, hardNegatives: o.hardNegatives });
  const trace = synthesizeTrace(q, qa, ids, data.attributes, emojis, { seed: o.seed, draw: o.draw, maxInspections: o.maxInspections, style: o.style });
  const candidates = ids.map((d) => {
    const c = data.byDid.get(d);
    if (!c) throw new Error(`sft: candidate ${d} of query ${q.qid} is not in the pool`);
    return candidateInput(c, data.images);
  });
  const traceIds = [...model.tokenizer.encode(trace.text), model.tokenizer.specialIds.imEnd];
  return { qid: q.qid, query: queryInput(q, data.images), candidateIds: ids, candidates, trace, traceIds };
}

/**
 * The training sequence of an example: prompt (compressed through `compress` when given)
 * + trace with the inspections spliced in, and its next-token targets (trace tokens only).
 * Call inside the loss closure: the compressed rows belong to the autograd graph.
 */
export function sftSequence(model: Mllm, ex: SftExample, maxInspections: number, compress?: CompressFactory, system?: string): TraceLayout & { targets: Int32Array } {
  const prompt = rerankParts(ex.query, ex.candidates, { system, compress: compress?.(ex.query, ex.candidates), labels: ex.labels });
  // Every inspection of a synthetic trace is valid; the cap only guards against a bad trace.
  const t = traceLayout(model, prompt, ex.candidates, ex.traceIds, Math.max(maxInspections, ex.trace.inspections.length));
  if (t.inspections.length !== ex.trace.inspections.length) {
    throw new Error(`sft: trace of ${ex.qid} has inspections [${ex.trace.inspections}] but the replay found [${t.inspections}] (events ${JSON.stringify(t.events)})`);
  }
  return { ...t, targets: maskedTargets(t.layout, t.traceMask) };
}

export interface SftStepInfo {
  step: number;
  steps: number;
  loss: number;
  lr: number;
  ms: number;
  /** All positions of the batch (prompt + trace + spliced). */
  tokens: number;
  /** Positions that carry a target. */
  traceTokens: number;
  promptTokens: number;
  inspections: number;
}

export interface SftOptions {
  /** The model to train (e.g. the pre-trained base); on resume its weights are overwritten in place. */
  model: Mllm;
  /** Where examples are drawn from (queries, candidate lists, synthetic traces). */
  data?: SftData;
  /**
   * Instead of `data`: the examples of a step (must depend only on the step, for exact
   * resume), e.g. a fixed set, or traces from another source.
   */
  examples?: (step: number) => SftExample[];
  runDir: string;
  steps: number;
  batch: number;
  lr: number;
  seed: number;
  /** Candidates per query (default 16). */
  K?: number;
  /**
   * A curriculum over the list length (curriculumK): start with this many candidates and
   * double, in equal shares of the steps, up to K. Default K (no curriculum).
   */
  kStart?: number;
  /**
   * A curriculum over the negatives (randomNegativeSteps): this share of the steps, from the
   * start, fills the lists with random pool items instead of the query's hard negatives.
   * Default 0 (hard negatives throughout).
   */
  easyShare?: number;
  /** Train on the queries of these task ids only (default: every task). */
  tasks?: readonly number[];
  /** Inspections per trace at most (default 3; 0 = traces without inspection). */
  maxInspections?: number;
  /** Trace wording of the synthetic traces (default full). */
  traceStyle?: TraceStyle;
  /** The ICM hook factory; absent = full tokens for every candidate. */
  compress?: CompressFactory;
  /** The reranker's system instruction (default: model/sequence.ts DEFAULT_SYSTEM); use the same at evaluation. */
  system?: string;
  /** The ICM's trainable parameters (trained jointly with the model). */
  compressParams?: Tensor[];
  /** Train the model's own weights (default true; false trains the ICM alone). */
  trainModel?: boolean;
  /**
   * New candidate lists and wordings at every step (default true); false keeps each
   * query's first draw (a fixed example set, e.g. to check that a model can fit it).
   */
  redraw?: boolean;
  saveEvery?: number;
  /** Gradient-norm clip (default 1). */
  clip?: number;
  /** The share of the loss on the decision tokens (decisionWeights; default none: one mean over every target token). */
  decisionShare?: number;
  /** The decision tokens: every index the trace writes (default), or the answer's alone. */
  decisionTokens?: DecisionTokens;
  warmupSteps?: number;
  /** The cosine schedule's floor (default lr / 10; lr = a constant rate after warmup). */
  minLr?: number;
  onStep?: (s: SftStepInfo) => void;
  log?: (line: string) => void;
}

const COMPRESS_FILE = 'compress.safetensors';

/** Copies checkpoint tensors into existing parameters (closures holding them stay valid). */
function copyInto(dst: Tensor, src: Tensor, what: string): void {
  if (src.shape.length !== dst.shape.length || src.shape.some((d, i) => d !== dst.shape[i])) {
    throw new Error(`sft resume: ${what} has shape ${shapeStr(src.shape)} in the checkpoint, ${shapeStr(dst.shape)} in the model`);
  }
  if (!dst.isContiguous() || !src.isContiguous()) throw new Error(`sft resume: ${what} is not contiguous`);
  getEngine().copy(src.buf, src.offset * 4, dst.buf, dst.offset * 4, dst.size * 4);
}

const compressNames = (ps: Tensor[]) => ps.map((p, i) => p.name ?? `compress.${i}`);

async function saveCompress(dir: string, ps: Tensor[]): Promise<void> {
  if (!ps.length) return;
  const names = compressNames(ps);
  await saveSafetensors(join(dir, COMPRESS_FILE), Object.fromEntries(ps.map((p, i) => [names[i], p])));
}

async function loadCompress(dir: string, ps: Tensor[]): Promise<void> {
  if (!ps.length) return;
  const path = join(dir, COMPRESS_FILE);
  if (!existsSync(path)) throw new Error(`sft resume: ${path} is missing (the run was started without the same compress parameters?)`);
  const { tensors } = await loadSafetensors(path, { dtype: 'f32' });
  try {
    compressNames(ps).forEach((name, i) => {
      const t = tensors[name];
      if (!t) throw new Error(`sft resume: ${path} has no tensor ${name}`);
      copyInto(ps[i], t, name);
    });
  } finally {
    for (const t of Object.values(tensors)) t.dispose();
  }
}

/** Saves a model and its ICM parameters into one folder. */
export async function saveSftCheckpoint(dir: string, model: Mllm, compressParams: Tensor[] = []): Promise<void> {
  await model.save(dir);
  await saveCompress(dir, compressParams);
}

/** Loads a checkpoint folder's weights into an existing model (and ICM parameters) in place. */
export async function loadSftCheckpointInto(dir: string, model: Mllm, compressParams: Tensor[] = []): Promise<void> {
  const tensors = await loadCheckpointTensors(dir, Mllm.parameterShapes(model.config));
  try {
    for (const [name, t] of tensors) copyInto(model.params.get(name)!, t, name);
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
  await loadCompress(dir, compressParams);
}

/** The queries an example can be made from (a positive, attributes for the query and every positive). */
export function usableQueries(data: SftData): MbeirQuery[] {
  return data.queries.filter((q) => q.pos_cand_list.length && data.queryAttributes.has(q.qid) && q.pos_cand_list.every((d) => data.attributes.has(d) && data.byDid.has(d)));
}

/** The ids of the tokens that are digits alone (a candidate index is written with them). */
export function digitTokenIds(tok: { vocabSize: number; decode(ids: ArrayLike<number>): string; specialIds: Record<string, number> }): Set<number> {
  const special = new Set(Object.values(tok.specialIds));
  const out = new Set<number>();
  for (let id = 0; id < tok.vocabSize; id++) if (!special.has(id) && /^\s*[0-9]+$/.test(tok.decode([id]))) out.add(id);
  return out;
}

/**
 * Per-token loss weights for next-token targets (-100 = none) under a decision share: the
 * decision tokens (those isDecision(target, position) picks: the digit tokens of every
 * index a trace writes, or the answer's positions from answerTargets) share `share` equally,
 * the other targets share the rest, so crossEntropy's weighted mean is share times the
 * decisions' mean plus (1 - share) times the others'. Throws when either part is empty
 * (every trace has an answer and a closing token).
 */
export function decisionWeights(targets: Int32Array, isDecision: (target: number, at: number) => boolean, share: number): Float32Array {
  let nd = 0;
  let nr = 0;
  targets.forEach((t, i) => {
    if (t !== -100) isDecision(t, i) ? nd++ : nr++;
  });
  if (!nd || !nr) throw new Error(`sft: decisionShare needs both decision and other target tokens; this batch has ${nd} and ${nr}`);
  return Float32Array.from(targets, (t, i) => (t === -100 ? 0 : isDecision(t, i) ? share / nd : (1 - share) / nr));
}

/**
 * Which positions of a sequence predict a token of the answer's index: from the trace
 * position that reads <answer> up to the one that predicts </answer>, that one excluded.
 * Only positions with a target count: the system prompt spells the format, tags included.
 */
export function answerTargets(ids: ArrayLike<number>, targets: Int32Array, special: { answerStart: number; answerEnd: number }): Uint8Array {
  const out = new Uint8Array(targets.length);
  let inside = false;
  for (let p = 0; p < targets.length; p++) {
    if (targets[p] === -100) {
      inside = false;
      continue;
    }
    if (ids[p] === special.answerStart) inside = true;
    if (targets[p] === special.answerEnd) inside = false;
    if (inside) out[p] = 1;
  }
  return out;
}

/** What counts as a decision token under a decision share. */
export type DecisionTokens = 'digits' | 'answer';
export const DECISION_TOKENS: readonly DecisionTokens[] = ['digits', 'answer'];

/**
 * The usable queries of the given tasks (default every task); with first-stage rankings,
 * those whose top K holds a positive (a list without one teaches nothing about choosing).
 * None is an error that names the tasks.
 */
export function trainingQueries(data: SftData, tasks?: readonly number[], K?: number): MbeirQuery[] {
  let queries = usableQueries(data).filter((q) => !tasks || tasks.includes(q.task_id));
  const of = tasks ? ` of tasks ${tasks.join(', ')}` : '';
  if (!queries.length) throw new Error(`sft: no usable training queries${of} (each needs a positive and attribute rows)`);
  const ranked = data.firstStage;
  if (ranked) {
    const unranked = queries.find((q) => !ranked.has(q.qid));
    if (unranked) throw new Error(`sft: query ${unranked.qid} (task ${unranked.task_id}) has no first-stage ranking; rank every training query${of}`);
    queries = queries.filter((q) => positiveInTopK(q, ranked.get(q.qid)!, K ?? 16));
    if (!queries.length) throw new Error(`sft: no training query${of} has a positive in its first-stage top ${K ?? 16}`);
  }
  return queries;
}

/**
 * The queries of a step: consecutive slices of seeded per-epoch permutations, so every
 * query is seen once per epoch and a step's batch depends only on (seed, step).
 */
export function batchQueries<Q>(queries: readonly Q[], batch: number, step: number, seed: number): Q[] {
  const N = queries.length;
  const order = new Map<number, Q[]>();
  const out: Q[] = [];
  for (let k = step * batch; k < (step + 1) * batch; k++) {
    const epoch = Math.floor(k / N);
    let perm = order.get(epoch);
    if (!perm) order.set(epoch, (perm = rngFor(seed, `sft-epoch:${epoch}`).shuffle(queries)));
    out.push(perm[k % N]);
  }
  return out;
}

/**
 * The list length at a step of a K curriculum: kStart, doubled in each of n equal shares of
 * the steps (n = the doublings needed to reach K, plus one), capped at K. Pointing at the
 * match among few candidates is learned much sooner than among many, and in the synthetic
 * check (train/experiments/pointing.ts: 4 candidates then 10) what was learned carried
 * over; on the benchmark's task 4 it did not (README, the table in miniature).
 */
export function curriculumK(step: number, steps: number, K: number, kStart: number): number {
  if (!Number.isInteger(kStart) || kStart < 1 || kStart > K) throw new RangeError(`sft: kStart must be an integer from 1 to K = ${K}, got ${kStart}`);
  let doublings = 0;
  while (kStart * 2 ** doublings < K) doublings++;
  const share = Math.min(Math.floor((step * (doublings + 1)) / steps), doublings);
  return Math.min(K, kStart * 2 ** share);
}

/**
 * How many steps, from the start, take random negatives instead of hard ones: `easyShare`
 * of them, rounded. A match is learned sooner among unrelated candidates than among the
 * same subcategory's (train/experiments/pointing.ts --hard), and the benchmark's hard
 * negatives include other skin tones of the positive's own emoji.
 */
export function randomNegativeSteps(steps: number, easyShare: number): number {
  if (!(easyShare >= 0 && easyShare <= 1)) throw new RangeError(`sft: easyShare must be a number from 0 to 1, got ${easyShare}`);
  return Math.round(easyShare * steps);
}

/**
 * Numbers for a K-candidate list drawn as an ordered part of 0..range-1 (distinct,
 * increasing), from (seed, key). A list of 4 numbered this way makes every index up to
 * range - 1 an answer target, where a list numbered 0-3 leaves the digits 4-15 untrained
 * for a later K = 16 (each K step of the curriculum sent task 4 back to chance). Reading
 * these numbers was not learned on task 4 at K = 4 (README, the table in miniature).
 */
export function spreadLabels(K: number, range: number, seed: number, key: string): number[] {
  if (!Number.isInteger(range) || range < K) throw new RangeError(`sft: labels must be drawn from at least K = ${K} numbers, got ${range}`);
  const all = Array.from({ length: range }, (_, i) => i);
  return rngFor(seed, key).shuffle(all).slice(0, K).sort((a, b) => a - b);
}

/** The curriculum in words, e.g. "4 (steps 1-200), 8 (steps 201-400), 16 (steps 401-600)". */
export function curriculumSchedule(steps: number, K: number, kStart: number): string {
  const parts: string[] = [];
  let from = 0;
  for (let s = 0; s <= steps; s++) {
    if (s === steps || (s > 0 && curriculumK(s, steps, K, kStart) !== curriculumK(s - 1, steps, K, kStart))) {
      parts.push(`${curriculumK(from, steps, K, kStart)} (steps ${from + 1}-${s})`);
      from = s;
    }
  }
  return parts.join(', ');
}

/** Runs (or resumes) the activation stage; the trained weights are in o.model (and runDir/final). */
export async function sftTrain(o: SftOptions): Promise<{ model: Mllm; steps: number; lastLoss: number }> {
  const log = o.log ?? console.log;
  const K = o.K ?? 16;
  const maxIns = o.maxInspections ?? 3;
  const model = o.model;
  const compressParams = o.compressParams ?? [];
  if (compressParams.length && !o.compress) throw new Error('sft: compressParams given without a compress function');
  let source: (step: number) => SftExample[];
  let what: string;
  if (o.examples) {
    source = o.examples;
    what = 'given examples';
  } else {
    const data = o.data;
    if (!data) throw new Error('sft: give data or examples');
    const queries = trainingQueries(data, o.tasks, K);
    const emojis = emojiIndex(data.attributes.values());
    const kStart = o.kStart ?? K;
    const easySteps = randomNegativeSteps(o.steps, o.easyShare ?? 0);
    source = (step) => {
      const draw = o.redraw === false ? 0 : step;
      const k = curriculumK(step, o.steps, K, kStart);
      const hardNegatives = step >= easySteps;
      return batchQueries(queries, o.batch, step, o.seed).map((q) => makeSftExample(model, data, emojis, q, { K: k, seed: o.seed, draw, maxInspections: maxIns, style: o.traceStyle, hardNegatives }));
    };
    const usable = data.firstStage ? trainingQueries({ ...data, firstStage: undefined }, o.tasks).length : 0;
    what = `${queries.length} training queries${o.tasks ? ` of tasks ${o.tasks.join(', ')}` : ''}${data.firstStage ? ` (first-stage lists in order: those of ${usable} with a positive in the top ${K})` : ''}, K ${kStart === K ? K : curriculumSchedule(o.steps, K, kStart)}${easySteps ? `, random negatives for steps 1-${easySteps}` : ''}`;
  }
  const ckptDir = join(o.runDir, 'checkpoint');
  mkdirSync(o.runDir, { recursive: true });

  const params = [...(o.trainModel === false ? [] : model.parameterList()), ...compressParams];
  if (!params.length) throw new Error('sft: nothing to train (trainModel false and no compress parameters)');
  const opt = new AdamW(params, { lr: o.lr, weightDecay: 0.01, betas: [0.9, 0.95] });
  const resumeStep = savedStep(ckptDir);
  const start = resumeStep ?? 0;
  if (resumeStep !== null) {
    await loadSftCheckpointInto(ckptDir, model, compressParams);
    await loadOptimizerState(ckptDir, opt);
    log(`sft: resuming from ${ckptDir} at step ${start}`);
  }
  log(`sft: ${what}, batch ${o.batch}, ${o.steps} steps, ${o.compress ? 'compressed candidates (ICM)' : 'full candidates'}, at most ${maxIns} inspections per trace`);
  const schedule = cosineSchedule({ peakLr: o.lr, warmupSteps: o.warmupSteps ?? Math.min(50, Math.floor(o.steps / 10)), totalSteps: o.steps, minLr: o.minLr ?? o.lr / 10 });
  const save = async (dir: string, step: number) => {
    await saveSftCheckpoint(dir, model, compressParams);
    await saveRunState(dir, opt, step);
  };
  const logPath = join(o.runDir, 'log.jsonl');
  const V = model.tokenizer.vocabSize;
  const share = o.decisionShare;
  if (share !== undefined && !(share > 0 && share < 1)) throw new RangeError(`sft: decisionShare must be a number between 0 and 1 (exclusive), got ${share}`);
  const decisionTokens = o.decisionTokens ?? 'digits';
  if (!DECISION_TOKENS.includes(decisionTokens)) throw new RangeError(`sft: decisionTokens must be one of ${DECISION_TOKENS.join(', ')}, got ${decisionTokens}`);
  const digitIds = share === undefined || decisionTokens !== 'digits' ? new Set<number>() : digitTokenIds(model.tokenizer);
  let lastLoss = NaN;
  try {
    for (let step = start; step < o.steps; step++) {
      const t0 = performance.now();
      const examples = source(step);
      const B = examples.length;
      const lr = schedule(step);
      const counts = { tokens: 0, traceTokens: 0, promptTokens: 0, inspections: 0 };
      const loss = trainStep(params, opt, lr, o.clip ?? 1, () => {
        // Every list of the batch through the ICM in one pass; each example then takes its hook.
        const hooks = compressPrompts(o.compress, examples);
        const seqs = examples.map((ex, b) => sftSequence(model, ex, maxIns, o.compress && (() => hooks[b]), o.system));
        const { logits, T } = model.forward(seqs.map((s) => s.layout));
        const targets = new Int32Array(B * T).fill(-100);
        const answer = share !== undefined && decisionTokens === 'answer' ? new Uint8Array(B * T) : undefined;
        seqs.forEach((s, b) => {
          targets.set(s.targets, b * T);
          answer?.set(answerTargets(s.layout.ids, s.targets, model.tokenizer.specialIds), b * T);
          counts.tokens += s.layout.length;
          counts.promptTokens += s.promptLength;
          counts.traceTokens += s.traceMask.reduce((a, v) => a + v, 0);
          counts.inspections += s.inspections.length;
        });
        const isDecision = answer ? (_t: number, i: number) => answer[i] === 1 : (t: number) => digitIds.has(t);
        const mask = share === undefined ? undefined : fromArray(decisionWeights(targets, isDecision, share), [B * T]);
        return crossEntropy(reshape(logits, [B * T, V]), fromArray(targets, [B * T], 'i32'), { mask });
      });
      const v = await loss.item();
      loss.dispose();
      if (!Number.isFinite(v)) throw new Error(`sft: loss is ${v} at step ${step}; stopping (the last checkpoint is in ${ckptDir})`);
      lastLoss = v;
      const ms = performance.now() - t0;
      const info: SftStepInfo = { step, steps: o.steps, loss: v, lr, ms, ...counts };
      appendFileSync(logPath, JSON.stringify({ stage: 'sft', ...info }) + '\n');
      if (o.onStep) o.onStep(info);
      else if (step % 10 === 0 || step + 1 === o.steps) log(`sft ${step + 1}/${o.steps}  loss ${v.toFixed(4)}  lr ${lr.toExponential(2)}  ${(ms / 1000).toFixed(2)} s/step  ${counts.traceTokens} target tokens`);
      if (o.saveEvery && (step + 1) % o.saveEvery === 0 && step + 1 < o.steps) await save(ckptDir, step + 1);
    }
    await getEngine().sync();
    await save(join(o.runDir, 'final'), o.steps);
    rmSync(ckptDir, { recursive: true, force: true });
  } finally {
    opt.dispose();
  }
  return { model, steps: o.steps, lastLoss };
}
