// Recall@k for retrieval in the M-BEIR format, and the trivial baselines a retriever must
// beat by a wide margin.
//
// Recall@k, as UniIR reports it on M-BEIR: the share of queries with at least one of
// their positives (pos_cand_list) among the top k ranked candidates. It is reported
//   - per task_id,
//   - "macro": the unweighted mean of the per-task recalls (each task counts the same),
//   - "micro": over all queries pooled (each query counts the same).
// A query without positives has no recall: it is skipped and counted. A query without a
// ranking is an error (the evaluation is broken, not the model).
//
// Baselines:
//   - random: a seeded random ranking of the allowed candidates;
//   - trivial matcher: character trigram TF-IDF cosine between the text sides, and
//     1 - (mean RGB distance / max distance) between the image sides; a pair scores the
//     mean of the sides both have (a text query against an image-only candidate has no
//     common side: score 0, i.e. random order). Ties, common there, are broken by a
//     seeded random order, never by pool order.
import { Rng } from '../../runtime/random.ts';
import { TfIdf } from '../../model/lexical.ts';
import { writeJsonAtomic } from '../atomic-write.ts';
import { TASKS } from '../data/mbeir-types.ts';

export const DEFAULT_KS = [1, 5, 10];

export const RECALL_DEFINITION = 'Recall@k: share of queries with at least one positive among the top k (M-BEIR/UniIR). ' +
  'macro = mean of the per-task recalls; micro = over all queries pooled.';

/** The fields of an M-BEIR query that scoring needs (MbeirQuery fits). */
export interface RecallQuery {
  qid: string;
  task_id: number;
  pos_cand_list: readonly string[];
}

/** Ranked candidate ids per qid, best first. */
export type Rankings = ReadonlyMap<string, readonly string[]>;

export interface TaskRecall {
  taskId: number;
  task: string;
  queries: number;
  /** 'R@1' -> recall in [0, 1]. */
  recall: Record<string, number>;
}

export interface RecallReport {
  definition: string;
  ks: number[];
  tasks: TaskRecall[];
  /** Mean over tasks. */
  macro: Record<string, number>;
  /** Over all queries. */
  micro: Record<string, number>;
  queries: number;
  /** Queries skipped because they have no positives. */
  skippedNoPositives: number;
}

const key = (k: number) => `R@${k}`;

export function taskName(taskId: number): string {
  return TASKS[taskId] ?? `task ${taskId}`;
}

/** Recall@k per task, macro and micro, from rankings and the queries' positives. */
export function computeRecall(queries: readonly RecallQuery[], rankings: Rankings, ks: readonly number[] = DEFAULT_KS): RecallReport {
  if (!ks.length || ks.some((k) => !Number.isInteger(k) || k < 1)) throw new RangeError(`computeRecall: ks must be positive integers, got [${ks}]`);
  const byTask = new Map<number, { n: number; hits: number[] }>();
  let skipped = 0;
  const seen = new Set<string>();
  for (const q of queries) {
    if (seen.has(q.qid)) throw new Error(`computeRecall: query ${q.qid} appears twice`);
    seen.add(q.qid);
    if (!q.pos_cand_list.length) {
      skipped++;
      continue;
    }
    const ranked = rankings.get(q.qid);
    if (!ranked) throw new Error(`computeRecall: no ranking for query ${q.qid} (task ${q.task_id})`);
    const pos = new Set(q.pos_cand_list);
    // First rank (0-based) holding a positive; Infinity when none is ranked.
    let first = Infinity;
    for (let r = 0; r < ranked.length; r++) {
      if (pos.has(ranked[r])) {
        first = r;
        break;
      }
    }
    let t = byTask.get(q.task_id);
    if (!t) byTask.set(q.task_id, (t = { n: 0, hits: ks.map(() => 0) }));
    t.n++;
    ks.forEach((k, i) => {
      if (first < k) t.hits[i]++;
    });
  }
  const tasks: TaskRecall[] = [...byTask.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([taskId, t]) => ({
      taskId,
      task: taskName(taskId),
      queries: t.n,
      recall: Object.fromEntries(ks.map((k, i) => [key(k), t.hits[i] / t.n])),
    }));
  const total = tasks.reduce((a, t) => a + t.queries, 0);
  const macro: Record<string, number> = {};
  const micro: Record<string, number> = {};
  for (const k of ks) {
    macro[key(k)] = tasks.length ? tasks.reduce((a, t) => a + t.recall[key(k)], 0) / tasks.length : 0;
    micro[key(k)] = total ? tasks.reduce((a, t) => a + t.recall[key(k)] * t.queries, 0) / total : 0;
  }
  return { definition: RECALL_DEFINITION, ks: [...ks], tasks, macro, micro, queries: total, skippedNoPositives: skipped };
}

/** Rankings keyed by qid from search results given in query order. */
export function rankingsFrom(qids: readonly string[], ranked: readonly (readonly string[])[]): Map<string, readonly string[]> {
  if (qids.length !== ranked.length) throw new RangeError(`rankingsFrom: ${qids.length} qids but ${ranked.length} rankings`);
  return new Map(qids.map((q, i) => [q, ranked[i]]));
}

const pct = (x: number) => (100 * x).toFixed(1).padStart(6);

/**
 * A text table of recall in percent: a block of rows per system (tasks, then macro and
 * micro). Accepts one report or several by name.
 */
export function formatRecallTable(reports: RecallReport | Record<string, RecallReport>, title = 'Recall@k (%)'): string {
  const named: [string, RecallReport][] = 'ks' in reports && Array.isArray(reports.ks) ? [['', reports as RecallReport]] : Object.entries(reports as Record<string, RecallReport>);
  if (!named.length) return `${title}\n(no reports)\n`;
  const ks = named[0][1].ks;
  const labelW = Math.max(28, ...named.flatMap(([n, r]) => r.tasks.map((t) => `${n ? `${n}  ` : ''}${t.taskId} ${t.task}`.length + 2)));
  const head = `${title.padEnd(labelW)}${'queries'.padStart(8)}${ks.map((k) => key(k).padStart(7)).join('')}`;
  const lines = [head, '-'.repeat(head.length)];
  for (const [name, r] of named) {
    const p = name ? `${name}  ` : '';
    for (const t of r.tasks) lines.push(`${`${p}${t.taskId} ${t.task}`.padEnd(labelW)}${String(t.queries).padStart(8)}${ks.map((k) => ` ${pct(t.recall[key(k)] ?? NaN)}`).join('')}`);
    lines.push(`${`${p}macro (mean of tasks)`.padEnd(labelW)}${''.padStart(8)}${ks.map((k) => ` ${pct(r.macro[key(k)])}`).join('')}`);
    lines.push(`${`${p}micro (all queries)`.padEnd(labelW)}${String(r.queries).padStart(8)}${ks.map((k) => ` ${pct(r.micro[key(k)])}`).join('')}`);
    if (r.skippedNoPositives) lines.push(`${p}(${r.skippedNoPositives} queries without positives skipped)`);
    if (named.length > 1) lines.push('');
  }
  return lines.join('\n') + '\n';
}

/** Writes reports as JSON (atomically). */
export function writeRecallJson(path: string, value: RecallReport | Record<string, RecallReport>): void {
  writeJsonAtomic(path, value);
}

// ---------------------------------------------------------------- baselines

/** A query or candidate as the trivial matcher sees it. */
export interface MatchItem {
  text?: string | null;
  /** Mean colour (0..255 per channel) of the image, composited on white. */
  rgb?: readonly [number, number, number] | null;
}

export interface BaselineQuery extends MatchItem {
  qid: string;
}

export interface BaselineCandidate extends MatchItem {
  id: string;
}

export interface BaselineOptions {
  /** Ranked list length (default 10). */
  k?: number;
  seed?: number;
  /** Which candidates a query may rank (e.g. its task's target modality); all by default. */
  allowed?: (query: BaselineQuery, candidate: BaselineCandidate, index: number) => boolean;
}

/** Mean colour of RGBA pixels composited on white (0..255 per channel). */
export function meanColour(rgba: Uint8Array | Uint8ClampedArray): [number, number, number] {
  const n = rgba.length / 4;
  if (!Number.isInteger(n) || n === 0) throw new RangeError(`meanColour: ${rgba.length} bytes are not whole RGBA pixels`);
  const s = [0, 0, 0];
  for (let i = 0; i < n; i++) {
    const a = rgba[4 * i + 3] / 255;
    for (let c = 0; c < 3; c++) s[c] += rgba[4 * i + c] * a + 255 * (1 - a);
  }
  return [s[0] / n, s[1] / n, s[2] / n];
}

/** The k best of `n` scores (higher first, ties by lower tiebreak), skipping disallowed ones. */
function selectTop(n: number, k: number, score: (i: number) => number, tiebreak: Float64Array, allowed: (i: number) => boolean): number[] {
  const top: number[] = [];
  const s: number[] = [];
  for (let i = 0; i < n; i++) {
    if (!allowed(i)) continue;
    const v = score(i);
    const better = (j: number) => v > s[j] || (v === s[j] && tiebreak[i] < tiebreak[top[j]]);
    if (top.length === k && !better(k - 1)) continue;
    let at = top.length === k ? k - 1 : top.length;
    while (at > 0 && better(at - 1)) at--;
    top.splice(at, 0, i);
    s.splice(at, 0, v);
    if (top.length > k) (top.pop(), s.pop());
  }
  return top;
}

function randomKeys(rng: Rng, n: number): Float64Array {
  const r = new Float64Array(n);
  for (let i = 0; i < n; i++) r[i] = rng.next();
  return r;
}

/** Random rankings (seeded): each query's allowed candidates in a random order, top k. */
export function randomRankings(queries: readonly BaselineQuery[], candidates: readonly BaselineCandidate[], opts: BaselineOptions = {}): Map<string, string[]> {
  const k = opts.k ?? 10;
  const rng = new Rng(opts.seed ?? 0);
  const out = new Map<string, string[]>();
  for (const q of queries) {
    const keys = randomKeys(rng, candidates.length);
    const allowed = opts.allowed ? (i: number) => opts.allowed!(q, candidates[i], i) : () => true;
    out.set(q.qid, selectTop(candidates.length, k, () => 0, keys, allowed).map((i) => candidates[i].id));
  }
  return out;
}

/** Candidate postings of a TF-IDF (model/lexical.ts): per gram, the candidates holding it and their weights. */
function postings(tfidf: TfIdf, texts: readonly (string | null | undefined)[]): Map<string, { idx: number[]; w: number[] }> {
  const out = new Map<string, { idx: number[]; w: number[] }>();
  texts.forEach((t, i) => {
    if (!t) return;
    for (const [x, w] of tfidf.weights(t)) {
      let p = out.get(x);
      if (!p) out.set(x, (p = { idx: [], w: [] }));
      p.idx.push(i);
      p.w.push(w);
    }
  });
  return out;
}

const MAX_RGB_DIST = Math.sqrt(3) * 255;

/**
 * The trivial matcher's rankings: text sides by character trigram TF-IDF cosine, image
 * sides by mean-colour similarity, the mean of the sides both items have; ties in a
 * seeded random order.
 */
export function trivialRankings(queries: readonly BaselineQuery[], candidates: readonly BaselineCandidate[], opts: BaselineOptions = {}): Map<string, string[]> {
  const k = opts.k ?? 10;
  const rng = new Rng(opts.seed ?? 0);
  const tfidf = TfIdf.fit(candidates.map((c) => c.text));
  const posts = postings(tfidf, candidates.map((c) => c.text));
  const P = candidates.length;
  const textScore = new Float64Array(P);
  const out = new Map<string, string[]>();
  for (const q of queries) {
    const hasText = !!q.text;
    const hasImg = !!q.rgb;
    textScore.fill(0);
    if (hasText) {
      for (const [x, w] of tfidf.weights(q.text!)) {
        const p = posts.get(x);
        if (p) for (let j = 0; j < p.idx.length; j++) textScore[p.idx[j]] += w * p.w[j];
      }
    }
    const score = (i: number) => {
      const c = candidates[i];
      let s = 0;
      let sides = 0;
      if (hasText && c.text) {
        s += textScore[i];
        sides++;
      }
      if (hasImg && c.rgb) {
        const [a, b, d] = [q.rgb![0] - c.rgb[0], q.rgb![1] - c.rgb[1], q.rgb![2] - c.rgb[2]];
        s += 1 - Math.sqrt(a * a + b * b + d * d) / MAX_RGB_DIST;
        sides++;
      }
      return sides ? s / sides : 0;
    };
    const keys = randomKeys(rng, P);
    const allowed = opts.allowed ? (i: number) => opts.allowed!(q, candidates[i], i) : () => true;
    out.set(q.qid, selectTop(P, k, score, keys, allowed).map((i) => candidates[i].id));
  }
  return out;
}
