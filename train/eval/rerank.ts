// Rerank evaluation: for each test query, the first-stage top-K candidates (in the
// first-stage order) go to the reasoning reranker (model/inspect.ts rerankGenerate); its
// answer moves to the top and the rest keep the first-stage order (then whatever the
// first stage ranked below K). Reports Recall@1/5/10 beside the first stage's own, and
// the costs: mean prompt tokens, mean N_ins, generated tokens, rerank latency per query,
// peak GPU memory during the evaluation.
//
// Queries are reranked `batch` at a time (default 1: the latency is then the latency of
// one query; with a larger batch it is the batch's wall time divided by its size).
import { noGrad, resetStats, stats, tidyAsync } from '../../runtime/index.ts';
import { type CompressFactory, type InspectEventKind, rerankGenerateBatch } from '../../model/inspect.ts';
import type { Mllm } from '../../model/mllm.ts';
import type { ImageStore } from '../data/inputs.ts';
import { candidateInput, queryInput } from '../data/inputs.ts';
import type { MbeirCandidate, MbeirQuery } from '../data/mbeir-types.ts';
import { DEFAULT_KS, type RecallReport, computeRecall } from './recall.ts';

export interface RerankEvalOptions {
  model: Mllm;
  queries: readonly MbeirQuery[];
  /** First-stage rankings per qid, best first (at least K deep for a full list). */
  firstStage: ReadonlyMap<string, readonly string[]>;
  byDid: ReadonlyMap<string, MbeirCandidate>;
  images: ImageStore;
  /** Candidates per query (default 16). */
  K?: number;
  compress?: CompressFactory;
  /** Default 768. */
  maxNewTokens?: number;
  /** Default 0 (greedy). */
  temperature?: number;
  seed?: number;
  /** Default 3; 0 disables inspection. */
  maxInspections?: number;
  /** Queries per decoding batch (default 1). */
  batch?: number;
  /** The system instruction the reranker was trained with (default DEFAULT_SYSTEM). */
  system?: string;
  /** Forced assistant prefix (e.g. [<think>] for a base model). */
  prefix?: readonly number[];
  ks?: readonly number[];
  onProgress?: (done: number, total: number) => void;
}

export interface RerankQueryResult {
  qid: string;
  task_id: number;
  answer: number | null;
  /** The assistant's text (the reasoning trace; spliced content not included). */
  text: string;
  /** The answer's did, when valid. */
  answerId: string | null;
  correct: boolean;
  inspections: number[];
  promptTokens: number;
  candidateTokens: number;
  generatedTokens: number;
  insertedTokens: number;
  formatOk: boolean;
  ms: number;
  events: Record<string, number>;
}

export interface RerankEvalResult {
  queries: number;
  K: number;
  recall: RecallReport;
  firstStage: RecallReport;
  meanPromptTokens: number;
  /** Prompt positions that hold candidate content (K x 2 with the ICM). */
  meanCandidateTokens: number;
  /** Mean N_ins (spliced inspections) per query. */
  meanInspections: number;
  meanGeneratedTokens: number;
  meanInsertedTokens: number;
  /** Share of queries with a valid answer index. */
  answeredRate: number;
  formatRate: number;
  latencyMsPerQuery: number;
  peakGpuBytes: number;
  /** Inspection events over all queries by kind. */
  events: Record<InspectEventKind, number>;
  perQuery: RerankQueryResult[];
}

/** The reranked order: the answer first, then the first-stage order of the rest. */
export function rerankedOrder(ranked: readonly string[], answerId: string | null): string[] {
  if (answerId === null) return [...ranked];
  return [answerId, ...ranked.filter((d) => d !== answerId)];
}

export async function evaluateRerank(o: RerankEvalOptions): Promise<RerankEvalResult> {
  const K = o.K ?? 16;
  const batch = Math.max(1, o.batch ?? 1);
  const ks = o.ks ?? DEFAULT_KS;
  const queries = o.queries.filter((q) => q.pos_cand_list.length);
  for (const q of queries) if (!o.firstStage.get(q.qid)?.length) throw new Error(`evaluateRerank: no first-stage ranking for query ${q.qid}`);
  const rankings = new Map<string, string[]>();
  const firstRankings = new Map<string, string[]>();
  const perQuery: RerankQueryResult[] = [];
  const events: Record<InspectEventKind, number> = { inspect: 0, out_of_range: 0, repeat: 0, over_cap: 0, malformed: 0 };
  resetStats();
  let totalMs = 0;
  for (let s = 0; s < queries.length; s += batch) {
    const chunk = queries.slice(s, s + batch);
    const lists = chunk.map((q) => o.firstStage.get(q.qid)!.slice(0, K));
    const inputs = chunk.map((q, k) => {
      const query = queryInput(q, o.images);
      const candidates = lists[k].map((d) => {
        const c = o.byDid.get(d);
        if (!c) throw new Error(`evaluateRerank: candidate ${d} of query ${q.qid} is not in the pool`);
        return candidateInput(c, o.images);
      });
      return { query, candidates };
    });
    const t0 = performance.now();
    // The scope frees whatever the compression hooks build for these prompts.
    const results = await tidyAsync(() => {
      const requests = noGrad(() => inputs.map((x) => ({ ...x, compress: o.compress?.(x.query, x.candidates) })));
      return rerankGenerateBatch(o.model, requests, {
        maxNewTokens: o.maxNewTokens ?? 768,
        temperature: o.temperature ?? 0,
        seed: o.seed ?? 1,
        maxInspections: o.maxInspections ?? 3,
        prefix: o.prefix,
        system: o.system,
      });
    });
    const ms = (performance.now() - t0) / chunk.length;
    totalMs += ms * chunk.length;
    chunk.forEach((q, k) => {
      const r = results[k];
      const ranked = o.firstStage.get(q.qid)!;
      const answerId = r.answer === null ? null : lists[k][r.answer];
      rankings.set(q.qid, rerankedOrder(ranked, answerId));
      firstRankings.set(q.qid, [...ranked]);
      const ev: Record<string, number> = {};
      for (const e of r.events) {
        ev[e.kind] = (ev[e.kind] ?? 0) + 1;
        events[e.kind]++;
      }
      perQuery.push({
        qid: q.qid,
        task_id: q.task_id,
        answer: r.answer,
        text: r.text,
        answerId,
        correct: answerId !== null && q.pos_cand_list.includes(answerId),
        inspections: r.inspections,
        promptTokens: r.promptTokens,
        candidateTokens: r.candidateTokens,
        generatedTokens: r.tokens.length,
        insertedTokens: r.insertedTokens,
        formatOk: r.formatOk,
        ms,
        events: ev,
      });
    });
    o.onProgress?.(Math.min(s + batch, queries.length), queries.length);
  }
  const n = Math.max(1, perQuery.length);
  const mean = (f: (r: RerankQueryResult) => number) => perQuery.reduce((a, r) => a + f(r), 0) / n;
  return {
    queries: perQuery.length,
    K,
    recall: computeRecall(queries, rankings, ks),
    firstStage: computeRecall(queries, firstRankings, ks),
    meanPromptTokens: mean((r) => r.promptTokens),
    meanCandidateTokens: mean((r) => r.candidateTokens),
    meanInspections: mean((r) => r.inspections.length),
    meanGeneratedTokens: mean((r) => r.generatedTokens),
    meanInsertedTokens: mean((r) => r.insertedTokens),
    answeredRate: mean((r) => (r.answer === null ? 0 : 1)),
    formatRate: mean((r) => (r.formatOk ? 1 : 0)),
    latencyMsPerQuery: totalMs / n,
    peakGpuBytes: stats().peakBytes,
    events,
    perQuery,
  };
}
