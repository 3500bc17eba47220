// First-stage evaluation on the test (or validation) split of the emoji benchmark: each task's queries rank that
// task's local pool with the trained retriever, beside two baselines (random ranking;
// character n-gram / mean-colour matching), and Recall@1/5/10 per task is written as JSON.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stats } from '../../runtime/index.ts';
import type { Retriever } from '../../model/retriever.ts';
import type { loadBenchmark } from '../data/emoji-benchmark.ts';
import { type ImageStore, baselineCandidate, baselineQuery, candidateInput, queryInput } from '../data/inputs.ts';
import type { MbeirQuery } from '../data/mbeir-types.ts';
import { rankGroupsWithRetriever } from '../retriever.ts';
import { type RecallReport, computeRecall, randomRankings, trivialRankings, writeRecallJson } from './recall.ts';

type Benchmark = Awaited<ReturnType<typeof loadBenchmark>>;

export interface FirstStageEvalOptions {
  bench: Benchmark;
  retriever: Retriever;
  images: ImageStore;
  /** Queries per task (0 = all). */
  perTask?: number;
  /** Default 'test'; 'val' for choosing settings without touching the test split. */
  split?: 'test' | 'val';
  seed?: number;
  /** Writes first-stage-recall.json and adapter.json here. */
  outDir: string;
  adapter: string;
  preset: string;
  onProgress?: (what: string, done: number, total: number) => void;
}

export async function evaluateFirstStage(o: FirstStageEvalOptions): Promise<Record<string, RecallReport>> {
  const { bench, images } = o;
  const seed = o.seed ?? 1;
  const byDid = new Map(bench.pool.map((c) => [c.did, c]));
  const split = bench.queries[o.split ?? 'test'];
  const tasks = [...new Set(split.map((q) => q.task_id))].sort((x, y) => x - y);
  const testQueries: MbeirQuery[] = [];
  for (const t of tasks) {
    const qs = split.filter((q) => q.task_id === t);
    testQueries.push(...(o.perTask ? qs.slice(0, o.perTask) : qs));
  }
  const rankings = { retriever: new Map<string, string[]>(), random: new Map<string, string[]>(), trivial: new Map<string, string[]>() };
  const t0 = performance.now();
  const pools = new Map(tasks.map((t) => [t, (bench.taskPools.get(t) ?? bench.pool.map((c) => c.did)).map((d) => byDid.get(d)!)]));
  const ranked = await rankGroupsWithRetriever(
    o.retriever,
    tasks.map((t) => ({
      pool: pools.get(t)!.map((c) => ({ id: c.did, input: () => candidateInput(c, images) })),
      queries: testQueries.filter((q) => q.task_id === t).map((q) => ({ qid: q.qid, input: queryInput(q, images) })),
      k: 10,
    })),
    { batchSize: 64, onProgress: (done, total) => o.onProgress?.('embedding the pools', done, total) },
  );
  for (const [k, v] of ranked) rankings.retriever.set(k, v);
  for (const t of tasks) {
    const bq = testQueries.filter((q) => q.task_id === t).map((q) => baselineQuery(q, images));
    const bc = pools.get(t)!.map((c) => baselineCandidate(c, images));
    for (const [k, v] of randomRankings(bq, bc, { k: 10, seed })) rankings.random.set(k, v);
    for (const [k, v] of trivialRankings(bq, bc, { k: 10, seed })) rankings.trivial.set(k, v);
  }
  const reports: Record<string, RecallReport> = {
    'first stage': computeRecall(testQueries, rankings.retriever),
    'trivial match': computeRecall(testQueries, rankings.trivial),
    random: computeRecall(testQueries, rankings.random),
  };
  writeRecallJson(join(o.outDir, 'first-stage-recall.json'), reports);
  writeFileSync(
    join(o.outDir, 'adapter.json'),
    JSON.stringify({ adapter: o.adapter, preset: o.preset, split: o.split ?? 'test', queries: testQueries.length, eval_seconds: (performance.now() - t0) / 1000, peak_gpu_bytes: stats().peakBytes }, null, 2),
  );
  return reports;
}
