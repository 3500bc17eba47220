// Cross-fitting for the reranker's training lists. A retriever ranks the queries it was
// trained on better than new ones (session 13: training-side R@1 20.8 / 40.5 on tasks 4 / 6
// against 8.9 / 27.2 on test), so a reranker trained on those lists learns to trust the first
// stage more than it should at test time. Cross-fitting splits the training queries into F
// folds by emoji (every query about one emoji, whatever its task, tone or vendor, falls in
// one fold) and ranks fold i with a retriever trained without fold i: each training list is
// then as hard as a test list would be for a retriever trained on (F-1)/F of the data.
import { join } from 'node:path';
import { fnv1a32 } from '../model/trigrams.ts';
import { readSideTable } from './data/emoji-benchmark.ts';

/** A held-out fold as "i/F" (0 <= i < F, F >= 2). */
export interface Fold {
  fold: number;
  folds: number;
}

export function parseFold(text: string, what = '--holdout-fold'): Fold {
  const m = /^(\d+)\/(\d+)$/.exec(text.trim());
  const fold = m ? Number(m[1]) : NaN;
  const folds = m ? Number(m[2]) : NaN;
  if (!m || folds < 2 || fold >= folds) throw new Error(`${what}: '${text}' is not i/F with F >= 2 and 0 <= i < F (e.g. 0/2)`);
  return { fold, folds };
}

/** The fold of an emoji's tone-free base code: FNV-1a of the code, modulo F (stable across runs and machines). */
export function foldOfBase(base: string, folds: number): number {
  return fnv1a32(base) % folds;
}

/** Each query's fold, from the benchmark's query_attributes.jsonl (its emoji's base code). */
export async function queryFolds(dataDir: string, folds: number): Promise<Map<string, number>> {
  const attrs = await readSideTable<{ qid: string; base: string }>(join(dataDir, 'query_attributes.jsonl'), 'qid');
  const out = new Map<string, number>();
  for (const [qid, a] of attrs) {
    if (typeof a.base !== 'string' || !a.base) throw new Error(`${dataDir}/query_attributes.jsonl: query ${qid} has no base code to assign a fold by`);
    out.set(qid, foldOfBase(a.base, folds));
  }
  return out;
}

/** The fold of one query, or an error naming the query when the attributes lack it. */
export function foldOfQuery(folds: ReadonlyMap<string, number>, qid: string): number {
  const f = folds.get(qid);
  if (f === undefined) throw new Error(`query ${qid} is not in query_attributes.jsonl, so it has no cross-fitting fold`);
  return f;
}
