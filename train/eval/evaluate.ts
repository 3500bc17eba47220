// Evaluates a reranker checkpoint on any M-BEIR-format data: the first stage ranks the
// pool (a retriever checkpoint, or a ranking given by the caller), the reranker reads each
// query's top K (train/eval/rerank.ts evaluateRerank), and Recall@1/5/10 of both, per task
// and over all queries, go out as JSON together with the costs (prompt tokens, N_ins,
// latency, peak GPU memory), the adapter, and every query's trace.
//
// Choices:
// - Bad lines of the queries or pool file are skipped and reported with file and line
//   (the M-BEIR reader's messages), printed and kept in the JSON as `data_issues`; images
//   are decoded up front (checkImages) so a missing image is a reported line, not a crash
//   halfway through. No usable query left is an error.
// - First stage, per task: when the pool file sits in a benchmark folder whose meta.json
//   names each task's local pool (ours: pool_task<N>.jsonl), each task's queries rank
//   their own local pool, as M-BEIR and train/first-stage.ts do; otherwise (or with
//   taskPools 'none') every query ranks the whole pool.
// - `limit` keeps that many queries spread over the tasks (round robin over task ids,
//   file order within a task), so a short run still sees every task.
// - Recall numbers are percent over all queries (micro), from computeRecall.
// - The reranker's ICM is read from the checkpoint folder (or `icm`) unless noIcm; a
//   checkpoint without one asks for noIcm instead of silently using full tokens.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { getGpu, resetStats, stats } from '../../runtime/index.ts';
import { Icm } from '../../model/icm.ts';
import { Mllm } from '../../model/mllm.ts';
import { Retriever } from '../../model/retriever.ts';
import { readConfig } from '../../model/checkpoint.ts';
import { ImageStore, candidateInput, queryInput } from '../data/inputs.ts';
import type { MbeirCandidate, MbeirQuery } from '../data/mbeir-types.ts';
import { type BenchmarkMeta, type Issue, checkImages, dropRows, formatIssue, queriesOfTasks, readPool, readQueries, resolveAgainstPool, summarizeLoad } from '../data/mbeir.ts';
import { writeTextAtomic } from '../atomic-write.ts';
import { rankGroupsWithRetriever } from '../retriever.ts';
import { icmCompress } from '../../model/icm.ts';
import { checkMllmFolder, loadIcmFor } from '../sft-stage.ts';
import { taskName } from './recall.ts';
import { type RerankEvalResult, evaluateRerank } from './rerank.ts';

export interface EvaluateOptions {
  /** M-BEIR queries JSONL. */
  queries: string;
  /** M-BEIR candidate pool JSONL. */
  pool: string;
  /** Image paths of both files are relative to this. */
  imageRoot: string;
  /** The reranker checkpoint folder (e.g. runs/sft-tiny/final). */
  ckpt: string;
  /** Where the ICM is (default: ckpt). Ignored with noIcm. */
  icm?: string;
  /** Full candidate tokens (no ICM). */
  noIcm?: boolean;
  /** No inspection at decoding time (maxInspections 0). */
  noInspect?: boolean;
  /** A base model reranking zero-shot: the assistant turn is forced to start with <think>. */
  zeroShot?: boolean;
  /**
   * The assistant turn is forced to start with this text (special tokens written out, e.g.
   * `<think><inspection-index-start>`): to measure one decision path of a trained model.
   */
  prefix?: string;
  /** First stage: a retriever checkpoint folder ... */
  retriever?: string;
  /** ... or rankings per qid, best first (at least K deep). */
  firstStage?: ReadonlyMap<string, readonly string[]>;
  /** Per-task local pools: 'auto' (default: from meta.json beside the pool), 'none', or task id -> pool JSONL. */
  taskPools?: 'auto' | 'none' | Record<string, string>;
  /** Candidates reranked per query (default 16). */
  K?: number;
  /** Evaluate this many queries (spread over the tasks); default all. */
  limit?: number;
  /** Only the queries of these task ids (before the limit); default every task. */
  tasks?: readonly number[];
  /** Inspections per query at most (default 3; noInspect = 0). */
  maxInspections?: number;
  /** Default 768. */
  maxNewTokens?: number;
  /** Queries per decoding batch (default 1: latency is per query). */
  batch?: number;
  /** The system instruction the reranker was trained with (default DEFAULT_SYSTEM). */
  system?: string;
  /** Decode every image up front and skip rows whose image is bad (default true). */
  checkImages?: boolean;
  /** Writes the JSON here (atomically). */
  out?: string;
  onProgress?: (what: 'first stage' | 'rerank', done: number, total: number) => void;
  log?: (line: string) => void;
}

export type RecallAtK = { 'R@1': number; 'R@5': number; 'R@10': number };

export interface QueryTrace {
  qid: string;
  task_id: number;
  positives: string[];
  /** The K candidates the reranker read, in first-stage order. */
  candidates: string[];
  /** The answered index into candidates, or null. */
  answer: number | null;
  answer_id: string | null;
  /** Inspected candidate indices, in order. */
  inspected: number[];
  correct: boolean;
  /** The reasoning trace as generated. */
  text: string;
  prompt_tokens: number;
  /** Prompt positions holding candidate content (2 per candidate with the ICM). */
  candidate_tokens: number;
  generated_tokens: number;
  ms: number;
  format_ok: boolean;
  events: Record<string, number>;
}

export interface EvaluationResult {
  queries_file: string;
  pool_file: string;
  image_root: string;
  ckpt: string;
  icm: string | null;
  retriever: string | null;
  K: number;
  no_icm: boolean;
  no_inspect: boolean;
  zero_shot: boolean;
  /** The forced start of every answer (evaluate option prefix), or null. */
  prefix: string | null;
  limit: number | null;
  /** The task ids kept (null: every task). */
  tasks: number[] | null;
  queries: number;
  /** How the first stage ranked: 'local pool per task' or 'whole pool' or 'given'. */
  first_stage_pools: string;
  first_stage: RecallAtK;
  reranked: RecallAtK;
  per_task: Record<string, { task: string; queries: number; first_stage: RecallAtK; reranked: RecallAtK }>;
  /** Percent of queries whose K candidates hold a positive: the most R@1 reranking can reach. */
  positive_in_candidates: number;
  /** R@1 (percent) over those queries only; null when there are none. */
  reranked_r1_given_positive: number | null;
  prompt_tokens_mean: number;
  candidate_tokens_mean: number;
  inspections_mean: number;
  rerank_ms_mean: number;
  peak_gpu_bytes: number;
  /** Peak GPU bytes while the first stage ranked (null when the ranking was given). */
  first_stage_peak_gpu_bytes: number | null;
  generated_tokens_mean: number;
  answered_rate: number;
  format_rate: number;
  events: Record<string, number>;
  adapter: string;
  data_issues: string[];
  per_query: QueryTrace[];
}

const pct = (r: Record<string, number>): RecallAtK => ({ 'R@1': 100 * r['R@1'], 'R@5': 100 * r['R@5'], 'R@10': 100 * r['R@10'] });

/** At most `limit` queries, round robin over task ids (ascending), file order within a task. */
export function spreadLimit<Q extends { task_id: number }>(queries: readonly Q[], limit?: number): Q[] {
  if (limit === undefined || limit >= queries.length) return [...queries];
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`evaluate: limit must be a positive integer, got ${limit}`);
  const byTask = new Map<number, Q[]>();
  for (const q of queries) {
    let l = byTask.get(q.task_id);
    if (!l) byTask.set(q.task_id, (l = []));
    l.push(q);
  }
  const lists = [...byTask.entries()].sort((a, b) => a[0] - b[0]).map(([, l]) => l);
  const picked = new Set<Q>();
  for (let i = 0; picked.size < limit; i++) for (const l of lists) if (i < l.length && picked.size < limit) picked.add(l[i]);
  return queries.filter((q) => picked.has(q)); // file order
}

/** The local pool file of each task named by meta.json beside the pool file, or null. */
export function localTaskPools(poolFile: string): Record<string, string> | null {
  const metaPath = join(dirname(poolFile), 'meta.json');
  if (!existsSync(metaPath)) return null;
  let meta: BenchmarkMeta;
  try {
    meta = JSON.parse(readFileSync(metaPath, 'utf8')) as BenchmarkMeta;
  } catch {
    return null;
  }
  const out: Record<string, string> = {};
  for (const [t, m] of Object.entries(meta.tasks ?? {})) if (m.pool_file) out[t] = join(dirname(poolFile), m.pool_file);
  return Object.keys(out).length ? out : null;
}

export interface EvalData {
  queries: MbeirQuery[];
  byDid: Map<string, MbeirCandidate>;
  issues: Issue[];
  summary: string[];
}

/** Reads and checks queries and pool; bad lines are skipped and come back as issues. */
export async function loadEvalData(o: { queries: string; pool: string; imageRoot: string; checkImages?: boolean }): Promise<EvalData> {
  const issues: Issue[] = [];
  const summary: string[] = [];
  let pool = await readPool(o.pool);
  if (o.checkImages ?? true) {
    const chk = await checkImages(pool, o.imageRoot);
    pool = dropRows(pool, chk.badRows);
    pool.issues.push(...chk.issues);
  }
  summary.push(summarizeLoad(pool));
  issues.push(...pool.issues);
  const byDid = new Map(pool.rows.map((c) => [c.did, c]));
  let qs = resolveAgainstPool(await readQueries(o.queries), byDid, { poolLabel: o.pool });
  if (o.checkImages ?? true) {
    const chk = await checkImages(qs, o.imageRoot);
    qs = dropRows(qs, chk.badRows);
    qs.issues.push(...chk.issues);
  }
  summary.push(summarizeLoad(qs));
  issues.push(...qs.issues);
  if (!qs.rows.length) throw new Error(`${o.queries}: no usable query${issues.length ? ` (first problem: ${formatIssue(issues[0])})` : ''}`);
  return { queries: qs.rows, byDid, issues, summary };
}

/**
 * First-stage rankings with a retriever checkpoint: each task's queries rank the task's
 * pool (local pools) or the whole pool; `depth` ids per query.
 */
export async function firstStageRankings(o: {
  retriever: string;
  data: EvalData;
  imageRoot: string;
  depth: number;
  taskPools?: Record<string, string> | null;
  onProgress?: (done: number, total: number) => void;
  log?: (line: string) => void;
}): Promise<{ rankings: Map<string, string[]>; pools: string; peakGpuBytes: number }> {
  const cfgPath = join(o.retriever, 'config.json');
  if (!existsSync(cfgPath)) throw new Error(`retriever ${o.retriever}: no config.json, not a checkpoint folder${existsSync(join(o.retriever, 'final', 'config.json')) ? ` (did you mean ${join(o.retriever, 'final')}?)` : ''}`);
  const arch = readConfig<{ architectures?: string[] }>(o.retriever).architectures ?? [];
  if (!arch.includes('RetrvRetriever')) throw new Error(`retriever ${o.retriever}: not a first-stage retriever checkpoint (architectures [${arch.join(', ')}]); give e.g. runs/first-stage-tiny/retriever/final`);
  resetStats();
  const retriever = await Retriever.load(o.retriever);
  try {
    const mc = retriever.config;
    const images = new ImageStore({ root: o.imageRoot, patchSize: mc.vision.patchSize, mergeSize: mc.vision.mergeSize, size: mc.imageSize });
    const groups = new Map<string, { pool: MbeirCandidate[]; queries: MbeirQuery[] }>();
    const tasks = [...new Set(o.data.queries.map((q) => q.task_id))].sort((a, b) => a - b);
    const localIds = new Map<number, MbeirCandidate[]>();
    if (o.taskPools) {
      for (const t of tasks) {
        const file = o.taskPools[String(t)];
        if (!file) continue;
        const load = await readPool(file);
        for (const i of load.issues) o.log?.(formatIssue(i));
        localIds.set(t, load.rows.map((c) => o.data.byDid.get(c.did)).filter((c): c is MbeirCandidate => !!c));
      }
    }
    const whole = [...o.data.byDid.values()];
    for (const t of tasks) {
      const key = localIds.has(t) ? `task ${t}` : 'whole pool';
      let g = groups.get(key);
      if (!g) groups.set(key, (g = { pool: localIds.get(t) ?? whole, queries: [] }));
      g.queries.push(...o.data.queries.filter((q) => q.task_id === t));
    }
    const rankings = await rankGroupsWithRetriever(
      retriever,
      [...groups.values()].map((g) => ({
        pool: g.pool.map((c) => ({ id: c.did, input: () => candidateInput(c, images) })),
        queries: g.queries.map((q) => ({ qid: q.qid, input: queryInput(q, images) })),
        k: o.depth,
      })),
      { batchSize: 64, onProgress: o.onProgress },
    );
    const pools = [...groups.keys()].every((k) => k !== 'whole pool') ? 'local pool per task' : groups.size === 1 ? 'whole pool' : 'local pools where given, else the whole pool';
    return { rankings, pools, peakGpuBytes: stats().peakBytes };
  } finally {
    retriever.dispose();
  }
}

type Reachable = Pick<QueryTrace, 'candidates' | 'positives'>;
const reachable = (p: Reachable) => p.candidates.some((d) => p.positives.includes(d));

/** Percent of queries whose candidate list holds a positive. */
export function positiveInCandidates(perQuery: readonly Reachable[]): number {
  return (100 * perQuery.filter(reachable).length) / Math.max(1, perQuery.length);
}

/**
 * The reranker's R@1 over the queries whose list holds a positive (percent; null when
 * none does): how well it picks when it can, apart from the first stage's misses.
 */
export function rerankedR1GivenPositive(perQuery: readonly (Reachable & Pick<QueryTrace, 'correct'>)[]): number | null {
  const can = perQuery.filter(reachable);
  return can.length ? (100 * can.filter((p) => p.correct).length) / can.length : null;
}

/** The JSON fields of an evaluation from evaluateRerank's result. */
export function evaluationFields(r: RerankEvalResult, firstStage: ReadonlyMap<string, readonly string[]>, queries: readonly MbeirQuery[], K: number) {
  const byQid = new Map(queries.map((q) => [q.qid, q]));
  const perTask: EvaluationResult['per_task'] = {};
  const fsByTask = new Map(r.firstStage.tasks.map((t) => [t.taskId, t]));
  for (const t of r.recall.tasks) {
    const f = fsByTask.get(t.taskId)!;
    perTask[String(t.taskId)] = { task: taskName(t.taskId), queries: t.queries, first_stage: pct(f.recall), reranked: pct(t.recall) };
  }
  const per_query: QueryTrace[] = r.perQuery.map((p) => ({
    qid: p.qid,
    task_id: p.task_id,
    positives: [...(byQid.get(p.qid)?.pos_cand_list ?? [])],
    candidates: firstStage.get(p.qid)!.slice(0, K),
    answer: p.answer,
    answer_id: p.answerId,
    inspected: p.inspections,
    correct: p.correct,
    text: p.text,
    prompt_tokens: p.promptTokens,
    candidate_tokens: p.candidateTokens,
    generated_tokens: p.generatedTokens,
    ms: p.ms,
    format_ok: p.formatOk,
    events: p.events,
  }));
  return {
    queries: r.queries,
    first_stage: pct(r.firstStage.micro),
    reranked: pct(r.recall.micro),
    per_task: perTask,
    positive_in_candidates: positiveInCandidates(per_query),
    reranked_r1_given_positive: rerankedR1GivenPositive(per_query),
    prompt_tokens_mean: r.meanPromptTokens,
    candidate_tokens_mean: r.meanCandidateTokens,
    inspections_mean: r.meanInspections,
    rerank_ms_mean: r.latencyMsPerQuery,
    peak_gpu_bytes: r.peakGpuBytes,
    generated_tokens_mean: r.meanGeneratedTokens,
    answered_rate: r.answeredRate,
    format_rate: r.formatRate,
    events: { ...r.events } as Record<string, number>,
    per_query,
  };
}

/** Evaluates a reranker checkpoint; see the file comment. Writes `out` when given. */
export async function evaluateCheckpoint(o: EvaluateOptions): Promise<EvaluationResult> {
  const log = o.log ?? console.log;
  const K = o.K ?? 16;
  if (!Number.isInteger(K) || K < 1) throw new RangeError(`evaluate: K must be a positive integer, got ${K}`);
  if (!o.retriever && !o.firstStage) throw new Error('evaluate: give a first stage: a retriever checkpoint folder or a ranking per query');
  if (o.zeroShot && o.prefix !== undefined) throw new Error('evaluate: zeroShot forces <think> already; give a prefix or zeroShot, not both');
  if (o.prefix === '') throw new Error('evaluate: the prefix is empty');
  checkMllmFolder(o.ckpt, 'ckpt');
  const icmDir = o.noIcm ? null : (o.icm ?? o.ckpt);
  if (icmDir !== null && !Icm.exists(icmDir)) {
    throw new Error(`ckpt ${o.ckpt}: no ICM (icm.safetensors + icm.json) in ${icmDir}; give the folder that holds it, or evaluate with no ICM (--no-icm) if the model was trained on full tokens`);
  }

  const data = await loadEvalData(o);
  for (const line of data.summary) log(line);
  const shown = data.issues.slice(0, 20);
  for (const i of shown) log(formatIssue(i));
  if (data.issues.length > shown.length) log(`... and ${data.issues.length - shown.length} more data issues (all in the JSON)`);
  const queries = spreadLimit(queriesOfTasks(data.queries, o.tasks, o.queries), o.limit);

  // First stage.
  let firstStage: ReadonlyMap<string, readonly string[]>;
  let pools = 'given';
  let fsPeak: number | null = null;
  if (o.firstStage) {
    firstStage = o.firstStage;
    const missing = queries.filter((q) => !firstStage.get(q.qid)?.length);
    if (missing.length) throw new Error(`evaluate: the given first-stage ranking has no list for ${missing.length} queries (first ${missing[0].qid})`);
  } else {
    const tp = o.taskPools === 'none' ? null : typeof o.taskPools === 'object' ? o.taskPools : localTaskPools(o.pool);
    const fs = await firstStageRankings({
      retriever: o.retriever!,
      data: { ...data, queries },
      imageRoot: o.imageRoot,
      depth: Math.max(K, 10),
      taskPools: tp,
      onProgress: (d, t) => o.onProgress?.('first stage', d, t),
      log,
    });
    firstStage = fs.rankings;
    pools = fs.pools;
    fsPeak = fs.peakGpuBytes;
  }

  // The reranker.
  const model = await Mllm.load(o.ckpt);
  let icm: Icm | null = null;
  try {
    if (icmDir !== null) icm = await loadIcmFor(icmDir, model, 'icm');
    const v = model.config.vision;
    const images = new ImageStore({ root: o.imageRoot, patchSize: v.patchSize, mergeSize: v.mergeSize, size: model.config.imageSize });
    const prefix = o.zeroShot ? [model.tokenizer.specialIds.thinkStart] : o.prefix !== undefined ? model.tokenizer.encode(o.prefix) : undefined;
    log(`evaluate: ${queries.length} queries, K ${K}, ${icm ? 'ICM' : 'full candidate tokens'}, ${o.noInspect ? 'no inspection' : 'inspection on'}${o.zeroShot ? ', zero-shot (<think> forced)' : ''}${o.prefix !== undefined ? `, forced start ${JSON.stringify(o.prefix)}` : ''}`);
    const r = await evaluateRerank({
      model,
      queries,
      firstStage,
      byDid: data.byDid,
      images,
      K,
      compress: icm ? icmCompress(model, icm) : undefined,
      maxInspections: o.noInspect ? 0 : (o.maxInspections ?? 3),
      maxNewTokens: o.maxNewTokens,
      batch: o.batch,
      system: o.system,
      prefix,
      onProgress: (d, t) => o.onProgress?.('rerank', d, t),
    });
    const result: EvaluationResult = {
      queries_file: resolve(o.queries),
      pool_file: resolve(o.pool),
      image_root: resolve(o.imageRoot),
      ckpt: resolve(o.ckpt),
      icm: icmDir === null ? null : resolve(icmDir),
      retriever: o.firstStage ? null : resolve(o.retriever!),
      K,
      no_icm: !icm,
      no_inspect: !!o.noInspect,
      zero_shot: !!o.zeroShot,
      prefix: o.prefix ?? null,
      limit: o.limit ?? null,
      tasks: o.tasks ? [...o.tasks] : null,
      first_stage_pools: pools,
      first_stage_peak_gpu_bytes: fsPeak,
      adapter: (await getGpu()).description,
      data_issues: data.issues.map(formatIssue),
      ...evaluationFields(r, firstStage, queries, K),
    };
    if (o.out) await writeTextAtomic(o.out, JSON.stringify(result, null, 2) + '\n');
    return result;
  } finally {
    icm?.dispose();
    for (const t of model.parameterList()) t.dispose();
  }
}
