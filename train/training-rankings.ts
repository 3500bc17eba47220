// First-stage rankings of the training queries, so the reranker can be trained on the
// lists it meets at test time: the retriever's top K, in the retriever's order. Without
// them training lists are the positive, its hard negatives and random fillers, shuffled,
// and the reranker cannot learn how far to trust the order it is given (on task 6 the
// first stage tells skin tones apart better than the ICM's two tokens do).
//
// Each training query ranks its task's local pool restricted to the train split, so a
// training list never shows a validation or test candidate. The retriever was trained on
// these queries, so its recall here is above its test recall; the command prints the
// training side's recall so the gap can be seen beside the test side's
// (train/eval/first-stage-eval.ts). Cross-fitted rankings (train/cross-fit.ts) close that
// gap: --cross-fit takes F retrievers, the i-th trained without fold i of F, and ranks each
// fold's queries with the retriever that never saw them.
//
//   npx tsx train/training-rankings.ts (--retriever runs/<run>/retriever/final
//       | --cross-fit <retriever without fold 0>,<... without fold 1>[,...])
//     --out runs/<run>/first-stage/train-rankings.json [--data data/emoji-mbeir]
//     [--tasks 4,6] [--depth 32]
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { init } from '../runtime/index.ts';
import { Retriever } from '../model/retriever.ts';
import { type EmojiAttributes, loadBenchmark, readSideTable } from './data/emoji-benchmark.ts';
import { ImageStore, candidateInput, queryInput } from './data/inputs.ts';
import { parseTaskIds } from './data/mbeir.ts';
import { writeJsonAtomic } from './atomic-write.ts';
import { type RecallReport, computeRecall, formatRecallTable } from './eval/recall.ts';
import { rankGroupsWithRetriever } from './retriever.ts';
import { foldOfQuery, queryFolds } from './cross-fit.ts';

export interface TrainingRankingsOptions {
  /** The retriever checkpoint folder (retriever/final). */
  retriever: string;
  /** The emoji benchmark folder (needs attributes.jsonl for each candidate's split). */
  dataDir: string;
  /** Rank the training queries of these tasks only (default every task). */
  tasks?: readonly number[];
  /** Ids kept per query (default 32). */
  depth?: number;
  /** Rank only the training queries this keeps (default all). */
  keep?: (qid: string) => boolean;
  onProgress?: (done: number, total: number) => void;
}

export async function trainingRankings(o: TrainingRankingsOptions): Promise<{ rankings: Map<string, string[]>; recall: RecallReport }> {
  const depth = o.depth ?? 32;
  if (!Number.isInteger(depth) || depth < 1) throw new RangeError(`training rankings: depth must be a positive integer, got ${depth}`);
  if (!existsSync(join(o.retriever, 'config.json'))) throw new Error(`retriever ${o.retriever}: no config.json, not a checkpoint folder`);
  const attrPath = join(o.dataDir, 'attributes.jsonl');
  if (!existsSync(attrPath)) throw new Error(`${attrPath} is missing: the split of each candidate comes from the emoji benchmark's attributes`);
  const bench = await loadBenchmark(o.dataDir);
  const attributes = await readSideTable<EmojiAttributes>(attrPath, 'did');
  const byDid = new Map(bench.pool.map((c) => [c.did, c]));
  const queries = bench.queries.train.filter((q) => (!o.tasks || o.tasks.includes(q.task_id)) && (!o.keep || o.keep(q.qid)));
  if (!queries.length) throw new Error(`${o.dataDir}: no training query${o.tasks ? ` of tasks ${o.tasks.join(', ')}` : ''}${o.keep ? ' in the chosen fold' : ''}`);
  const tasks = [...new Set(queries.map((q) => q.task_id))].sort((a, b) => a - b);
  const retriever = await Retriever.load(o.retriever);
  try {
    const v = retriever.config.vision;
    const images = new ImageStore({ root: bench.imageRoot, patchSize: v.patchSize, mergeSize: v.mergeSize, size: retriever.config.imageSize });
    const groups = tasks.map((t) => {
      const pool = (bench.taskPools.get(t) ?? [...byDid.keys()]).filter((d) => attributes.get(d)?.split === 'train');
      if (!pool.length) throw new Error(`${o.dataDir}: task ${t} has no train-split candidate`);
      return {
        pool: pool.map((d) => ({ id: d, input: () => candidateInput(byDid.get(d)!, images) })),
        queries: queries.filter((q) => q.task_id === t).map((q) => ({ qid: q.qid, input: queryInput(q, images) })),
        k: depth,
      };
    });
    const rankings = await rankGroupsWithRetriever(retriever, groups, { batchSize: 64, onProgress: o.onProgress });
    return { rankings, recall: computeRecall(queries, rankings, [1, 5, 10, 16]) };
  } finally {
    retriever.dispose();
  }
}

/**
 * Cross-fitted rankings: retrievers[i] was trained without fold i of F = retrievers.length
 * (train/cross-fit.ts) and ranks that fold's queries; the recall is over all of them.
 */
export async function crossFitRankings(o: Omit<TrainingRankingsOptions, 'retriever' | 'keep'> & { retrievers: readonly string[] }): Promise<{ rankings: Map<string, string[]>; recall: RecallReport }> {
  const F = o.retrievers.length;
  if (F < 2) throw new RangeError(`cross-fitted rankings need at least 2 retrievers (one per held-out fold), got ${F}`);
  const folds = await queryFolds(o.dataDir, F);
  const rankings = new Map<string, string[]>();
  for (let i = 0; i < F; i++) {
    const part = await trainingRankings({ ...o, retriever: o.retrievers[i], keep: (qid) => foldOfQuery(folds, qid) === i });
    for (const [qid, r] of part.rankings) rankings.set(qid, r);
  }
  const bench = await loadBenchmark(o.dataDir);
  const queries = bench.queries.train.filter((q) => rankings.has(q.qid));
  return { rankings, recall: computeRecall(queries, rankings, [1, 5, 10, 16]) };
}

/** Whether a query's first-stage top K holds one of its positives (else its list has nothing to choose). */
export function positiveInTopK(q: { pos_cand_list: readonly string[] }, ranking: readonly string[], K: number): boolean {
  return ranking.slice(0, K).some((d) => q.pos_cand_list.includes(d));
}

/** Rankings as a JSON object { "<qid>": ["<did>", ...] } (best first), written atomically. */
export function writeRankings(path: string, rankings: ReadonlyMap<string, readonly string[]>): void {
  writeJsonAtomic(path, Object.fromEntries(rankings));
}

/** First-stage rankings from a JSON file: { "<qid>": ["<did>", ...], ... } (best first). */
export function readRankings(path: string): Map<string, string[]> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new Error(`${path}: not readable JSON (${(e as Error).message})`);
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${path}: expected an object { qid: [did, ...] }`);
  const out = new Map<string, string[]>();
  for (const [qid, v] of Object.entries(raw as Record<string, unknown>)) {
    if (!Array.isArray(v) || v.some((d) => typeof d !== 'string')) throw new Error(`${path}: the ranking of ${qid} is not a list of did strings`);
    out.set(qid, v as string[]);
  }
  return out;
}

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      retriever: { type: 'string' },
      'cross-fit': { type: 'string' },
      out: { type: 'string' },
      data: { type: 'string', default: 'data/emoji-mbeir' },
      tasks: { type: 'string' },
      depth: { type: 'string', default: '32' },
    },
  });
  if (!(a.retriever || a['cross-fit']) || (a.retriever && a['cross-fit']) || !a.out) {
    throw new Error('usage: npx tsx train/training-rankings.ts (--retriever <retriever final> | --cross-fit <without fold 0>,<without fold 1>[,...]) --out <rankings.json> [--data DIR] [--tasks 4,6] [--depth 32]');
  }
  await init();
  const t0 = performance.now();
  let last = 0;
  const common = {
    dataDir: a.data!,
    tasks: a.tasks ? parseTaskIds(a.tasks, '--tasks') : undefined,
    depth: Number(a.depth),
    onProgress: (done: number, total: number) => {
      if (done === total || performance.now() - last > 5000) {
        last = performance.now();
        console.log(`embedding the train-split pools: ${done}/${total}`);
      }
    },
  };
  const r = a.retriever ? await trainingRankings({ ...common, retriever: a.retriever }) : await crossFitRankings({ ...common, retrievers: a['cross-fit']!.split(',') });
  writeRankings(a.out, r.rankings);
  console.log(formatRecallTable({ [`first stage (training queries, train-split pools${a.retriever ? '' : ', cross-fitted'})`]: r.recall }));
  console.log(`${r.rankings.size} rankings -> ${a.out} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
