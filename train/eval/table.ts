// The ablation table of issue 6: one row per system, columns R@1, R@5, mean prompt tokens
// per query, mean N_ins, rerank latency per query, peak GPU memory. Rows come from
// evaluateCheckpoint results; the "first stage alone" row from the first-stage recall of
// the same queries (its prompt tokens, N_ins and latency are not applicable: it has no
// reranker). Printed as a terminal table, saved as JSON + Markdown (atomically).
//
//   npx tsx train/eval/table.ts --rows <rows.json> --out <dir> [--quiet]
//
// rows.json: { "common": { "queries", "pool", "imageRoot", "retriever", "K"?, "limit"?,
//   "maxNewTokens"?, "batch"?, "system"?, "taskPools"?, "tasks"? }, "rows": [ { "name", "ckpt",
//   "noIcm"?, "noInspect"?, "zeroShot"? }, ... ] }. Relative paths are read from the
// current folder (the repository root). "zeroShot": the model reranks with its assistant
// turn forced to start with <think> (a base model that never saw the format). "tasks": [4, 6]
// keeps the queries of those task ids only (before "limit" spreads the rest over the tasks).
//
// The script evaluates whichever split file it is given; it never chooses or tunes
// anything on it. The first stage ranks once (cached in <out>/first-stage.json) and every
// row reads the same top K; each row's full evaluation is saved in <out>/rows/<name>.json
// and reused when the script runs again with the same settings, so an interrupted table
// resumes at the row it stopped in.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { init } from '../../runtime/index.ts';
import { formatIssue, queriesOfTasks } from '../data/mbeir.ts';
import { writeTextAtomic } from '../atomic-write.ts';
import { type EvaluationResult, evaluateCheckpoint, positiveInCandidates, rerankedR1GivenPositive, firstStageRankings, loadEvalData, localTaskPools, spreadLimit } from './evaluate.ts';

export interface AblationRow {
  name: string;
  queries: number;
  /** Percent. */
  r1: number;
  r5: number;
  /** null = not applicable (the first stage alone). */
  promptTokens: number | null;
  /** Prompt positions holding candidate content (null for the first stage, or a row saved before this column). */
  candidateTokens: number | null;
  /** Percent of queries answered as <think>...</think><answer>i</answer>. */
  formatRate: number | null;
  /** R@1 over the queries whose K candidates hold a positive (percent). */
  r1GivenPositive: number | null;
  inspections: number | null;
  rerankMs: number | null;
  peakGpuBytes: number | null;
}

/** A reranker row from an evaluation. */
export function rowFromEvaluation(name: string, e: EvaluationResult): AblationRow {
  return {
    name,
    queries: e.queries,
    r1: e.reranked['R@1'],
    r5: e.reranked['R@5'],
    promptTokens: e.prompt_tokens_mean,
    candidateTokens: e.candidate_tokens_mean ?? null,
    formatRate: e.format_rate * 100,
    r1GivenPositive: rerankedR1GivenPositive(e.per_query),
    inspections: e.inspections_mean,
    rerankMs: e.rerank_ms_mean,
    peakGpuBytes: e.peak_gpu_bytes,
  };
}

/** The first stage's R@1 over the queries whose K candidates hold a positive (its top 1 is candidate 0). */
function firstStageR1GivenPositive(perQuery: EvaluationResult['per_query']): number | null {
  return rerankedR1GivenPositive(perQuery.map((p) => ({ ...p, correct: p.positives.includes(p.candidates[0]) })));
}

/** The first stage's own row, from any evaluation over the same queries and first stage. */
export function firstStageRow(e: EvaluationResult, name = 'First stage alone'): AblationRow {
  return { name, queries: e.queries, r1: e.first_stage['R@1'], r5: e.first_stage['R@5'], promptTokens: null, candidateTokens: null, formatRate: null, r1GivenPositive: firstStageR1GivenPositive(e.per_query), inspections: null, rerankMs: null, peakGpuBytes: e.first_stage_peak_gpu_bytes };
}

export const TABLE_COLUMNS = ['R@1 (%)', 'R@5 (%)', 'prompt tokens / query', 'candidate tokens / query', 'N_ins / query', 'rerank ms / query', 'peak GPU MiB', 'answered in format (%)', 'R@1 when a positive is among the K (%)'] as const;
const NA = 'n/a';

/** The cells of a row, as text, in TABLE_COLUMNS order. */
export function rowCells(r: AblationRow): string[] {
  const f = (v: number | null, digits: number) => (v === null || !Number.isFinite(v) ? NA : v.toFixed(digits));
  const mib = r.peakGpuBytes === null ? NA : (r.peakGpuBytes / 2 ** 20).toFixed(0);
  return [f(r.r1, 1), f(r.r5, 1), f(r.promptTokens, 0), f(r.candidateTokens ?? null, 0), f(r.inspections, 2), f(r.rerankMs, 0), mib, f(r.formatRate ?? null, 0), f(r.r1GivenPositive ?? null, 1)];
}

/** A Markdown table (rows in the given order); `caption` goes above it. */
export function formatMarkdownTable(rows: readonly AblationRow[], caption?: string): string {
  const lines: string[] = [];
  if (caption) lines.push(caption, '');
  lines.push(`| system | ${TABLE_COLUMNS.join(' | ')} |`, `|---|${TABLE_COLUMNS.map(() => '---:').join('|')}|`);
  for (const r of rows) lines.push(`| ${r.name.replace(/\|/g, '\\|')} | ${rowCells(r).join(' | ')} |`);
  return lines.join('\n') + '\n';
}

/** A fixed-width table for the terminal. */
export function formatTerminalTable(rows: readonly AblationRow[], caption?: string): string {
  const head = ['system', ...TABLE_COLUMNS];
  const body = rows.map((r) => [r.name, ...rowCells(r)]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  const lines = caption ? [caption] : [];
  lines.push(fmt(head), w.map((n) => '-'.repeat(n)).join('  '), ...body.map(fmt));
  return lines.join('\n') + '\n';
}

/** Writes <dir>/table.json and <dir>/table.md atomically; returns their paths. */
export async function saveAblationTable(dir: string, rows: readonly AblationRow[], meta: Record<string, unknown> = {}, caption?: string): Promise<{ json: string; markdown: string }> {
  const json = join(dir, 'table.json');
  const markdown = join(dir, 'table.md');
  await writeTextAtomic(json, JSON.stringify({ ...meta, columns: TABLE_COLUMNS, rows }, null, 2) + '\n');
  await writeTextAtomic(markdown, formatMarkdownTable(rows, caption));
  return { json, markdown };
}

// ---------------------------------------------------------------- rows.json

export interface TableRowSpec {
  name: string;
  ckpt: string;
  noIcm?: boolean;
  noInspect?: boolean;
  zeroShot?: boolean;
}

export interface TableCommon {
  queries: string;
  pool: string;
  imageRoot: string;
  retriever: string;
  K?: number;
  limit?: number;
  maxNewTokens?: number;
  batch?: number;
  system?: string;
  taskPools?: 'auto' | 'none' | Record<string, string>;
  /** Only the queries of these task ids (default: every task). */
  tasks?: number[];
}

export interface TableSpec {
  common: TableCommon;
  rows: TableRowSpec[];
}

/** Parses and checks a rows.json, with errors naming the file and the field. */
export function parseTableSpec(text: string, file = 'rows.json'): TableSpec {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: invalid JSON (${(e as Error).message})`);
  }
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (!isObj(raw)) throw new Error(`${file}: expected an object with "common" and "rows"`);
  const c = raw.common;
  if (!isObj(c)) throw new Error(`${file}: "common" must be an object with queries, pool, imageRoot, retriever`);
  for (const k of ['queries', 'pool', 'imageRoot', 'retriever']) if (typeof c[k] !== 'string' || !c[k]) throw new Error(`${file}: common.${k} must be a path (string)`);
  for (const k of ['K', 'limit', 'maxNewTokens', 'batch']) {
    if (c[k] !== undefined && (typeof c[k] !== 'number' || !Number.isInteger(c[k]) || (c[k] as number) < 1)) throw new Error(`${file}: common.${k} must be a positive integer, got ${JSON.stringify(c[k])}`);
  }
  if (c.tasks !== undefined && !(Array.isArray(c.tasks) && c.tasks.length && c.tasks.every((t) => Number.isInteger(t) && t >= 0))) {
    throw new Error(`${file}: common.tasks must be a list of task ids such as [4, 6], got ${JSON.stringify(c.tasks)}`);
  }
  if (!Array.isArray(raw.rows) || !raw.rows.length) throw new Error(`${file}: "rows" must be a non-empty array`);
  const names = new Set<string>();
  const rows = raw.rows.map((r, i) => {
    if (!isObj(r)) throw new Error(`${file}: rows[${i}] must be an object`);
    if (typeof r.name !== 'string' || !r.name) throw new Error(`${file}: rows[${i}].name must be a non-empty string`);
    if (names.has(r.name)) throw new Error(`${file}: rows[${i}]: the name "${r.name}" is used twice`);
    names.add(r.name);
    if (typeof r.ckpt !== 'string' || !r.ckpt) throw new Error(`${file}: rows[${i}] ("${r.name}"): ckpt must be a checkpoint folder path`);
    for (const k of ['noIcm', 'noInspect', 'zeroShot']) if (r[k] !== undefined && typeof r[k] !== 'boolean') throw new Error(`${file}: rows[${i}] ("${r.name}"): ${k} must be true or false`);
    return r as unknown as TableRowSpec;
  });
  return { common: c as unknown as TableCommon, rows };
}

/** A file-name-safe form of a row name. */
export function slug(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '') || 'row';
}

/** What decides a row's result; a saved row is reused only when these match. */
function rowSettings(spec: TableSpec, r: TableRowSpec) {
  const c = spec.common;
  return {
    queries: resolve(c.queries),
    pool: resolve(c.pool),
    retriever: resolve(c.retriever),
    K: c.K ?? 16,
    limit: c.limit ?? null,
    tasks: c.tasks ?? null,
    maxNewTokens: c.maxNewTokens ?? null,
    batch: c.batch ?? null,
    system: c.system ?? null,
    ckpt: resolve(r.ckpt),
    noIcm: !!r.noIcm,
    noInspect: !!r.noInspect,
    zeroShot: !!r.zeroShot,
  };
}

export interface TableRunResult {
  rows: AblationRow[];
  evaluations: Record<string, EvaluationResult>;
  files: { json: string; markdown: string };
  markdown: string;
}

/** Evaluates every row of a spec (resuming finished rows), saves and returns the table. */
export async function runAblationTable(
  spec: TableSpec,
  outDir: string,
  o: { log?: (line: string) => void; onProgress?: (row: string, what: string, done: number, total: number) => void } = {},
): Promise<TableRunResult> {
  const log = o.log ?? console.log;
  const c = spec.common;
  const K = c.K ?? 16;

  // The first stage, once for all rows (cached: the pool embedding is the slow part).
  const data = await loadEvalData({ queries: c.queries, pool: c.pool, imageRoot: c.imageRoot });
  const queries = spreadLimit(queriesOfTasks(data.queries, c.tasks, c.queries), c.limit);
  const fsPath = join(outDir, 'first-stage.json');
  const fsKey = { queries: resolve(c.queries), pool: resolve(c.pool), retriever: resolve(c.retriever), depth: Math.max(K, 10), limit: c.limit ?? null, tasks: c.tasks ?? null, taskPools: c.taskPools ?? 'auto' };
  type FsCache = { key: typeof fsKey; pools: string; peak_gpu_bytes: number; rankings: Record<string, string[]> };
  let fs: FsCache | null = null;
  if (existsSync(fsPath)) {
    const saved = JSON.parse(readFileSync(fsPath, 'utf8')) as FsCache;
    if (JSON.stringify(saved.key) === JSON.stringify(fsKey)) fs = saved;
  }
  if (fs) log(`first stage: reusing ${fsPath}`);
  else {
    log(`first stage: ranking ${queries.length} queries with ${c.retriever}`);
    const tp = c.taskPools === 'none' ? null : typeof c.taskPools === 'object' ? c.taskPools : localTaskPools(c.pool);
    const r = await firstStageRankings({
      retriever: c.retriever,
      data: { ...data, queries },
      imageRoot: c.imageRoot,
      depth: fsKey.depth,
      taskPools: tp,
      onProgress: (d, t) => o.onProgress?.('first stage', 'embedding the pool', d, t),
      log,
    });
    fs = { key: fsKey, pools: r.pools, peak_gpu_bytes: r.peakGpuBytes, rankings: Object.fromEntries(r.rankings) };
    await writeTextAtomic(fsPath, JSON.stringify(fs) + '\n');
  }
  const firstStage = new Map(Object.entries(fs.rankings));

  const evaluations: Record<string, EvaluationResult> = {};
  const rows: AblationRow[] = [];
  for (const r of spec.rows) {
    const settings = rowSettings(spec, r);
    const path = join(outDir, 'rows', `${slug(r.name)}.json`);
    let ev: EvaluationResult | null = null;
    if (existsSync(path)) {
      const saved = JSON.parse(readFileSync(path, 'utf8')) as EvaluationResult & { settings?: unknown };
      if (JSON.stringify(saved.settings) === JSON.stringify(settings)) {
        ev = saved;
        log(`${r.name}: reusing ${path}`);
      }
    }
    if (!ev) {
      log(`${r.name}: evaluating ${r.ckpt}`);
      const t0 = performance.now();
      ev = await evaluateCheckpoint({
        queries: c.queries,
        pool: c.pool,
        imageRoot: c.imageRoot,
        ckpt: r.ckpt,
        noIcm: r.noIcm,
        noInspect: r.noInspect,
        zeroShot: r.zeroShot,
        firstStage,
        K,
        limit: c.limit,
        tasks: c.tasks,
        maxNewTokens: c.maxNewTokens,
        batch: c.batch,
        system: c.system,
        checkImages: false, // checked once above
        onProgress: (what, d, t) => o.onProgress?.(r.name, what, d, t),
        log: () => {},
      });
      // The shared first stage is this row's first stage.
      ev = { ...ev, retriever: resolve(c.retriever), first_stage_pools: fs.pools, first_stage_peak_gpu_bytes: fs.peak_gpu_bytes, data_issues: data.issues.map(formatIssue) };
      await writeTextAtomic(path, JSON.stringify({ settings, ...ev }, null, 2) + '\n');
      log(`${r.name}: R@1 ${ev.reranked['R@1'].toFixed(1)}  R@5 ${ev.reranked['R@5'].toFixed(1)}  (${((performance.now() - t0) / 1000).toFixed(0)} s) -> ${path}`);
    }
    evaluations[r.name] = ev;
    if (!rows.length) rows.push(firstStageRow(ev));
    rows.push(rowFromEvaluation(r.name, ev));
  }
  const any = Object.values(evaluations)[0];
  const ceiling = `, a positive among the K for ${positiveInCandidates(any.per_query).toFixed(1)}% of them (the most R@1 can reach)`;
  const caption = `${any.queries} queries of ${c.queries}, K = ${K}${ceiling}, first stage ${c.retriever} (${fs.pools}); adapter: ${any.adapter}`;
  const files = await saveAblationTable(outDir, rows, { caption, queries_file: resolve(c.queries), K, queries: any.queries, adapter: any.adapter, row_files: Object.fromEntries(spec.rows.map((r) => [r.name, join(outDir, 'rows', `${slug(r.name)}.json`)])) }, caption);
  return { rows, evaluations, files, markdown: formatMarkdownTable(rows, caption) };
}

// ---------------------------------------------------------------- command line

async function main(): Promise<void> {
  const { values: a } = parseArgs({ options: { rows: { type: 'string' }, out: { type: 'string' }, quiet: { type: 'boolean', default: false } } });
  if (!a.rows) throw new Error('--rows <rows.json> is required (see the top of train/eval/table.ts for its format)');
  if (!a.out) throw new Error('--out <folder> is required');
  if (!existsSync(a.rows)) throw new Error(`--rows ${a.rows}: no such file`);
  const spec = parseTableSpec(readFileSync(a.rows, 'utf8'), a.rows);
  const ctx = await init();
  console.log(`adapter: ${ctx.description}`);
  const tty = !a.quiet && !process.env.CI && process.stdout.isTTY;
  const say = (line: string) => {
    if (tty) process.stdout.write('\r\x1b[K');
    console.log(line);
  };
  const r = await runAblationTable(spec, a.out, {
    log: say,
    onProgress: (row, what, done, total) => {
      if (tty) process.stdout.write(`\r\x1b[K${row}: ${what} ${done}/${total}`);
    },
  });
  say('');
  console.log(formatTerminalTable(r.rows));
  console.log(`saved ${r.files.json} and ${r.files.markdown}`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: Error) => {
    console.error(`table: ${e.message}`);
    process.exit(1);
  });
}
