// Reading, validating and writing M-BEIR JSONL (queries and candidate pools), and the
// directory layout our benchmarks use. Files are streamed line by line (the real M-BEIR
// pool has 5.6M lines). A line that breaks the schema is skipped with a message naming
// file and line; the counts of read and skipped lines come back to the caller, who
// prints them. Lenient where the real release needs it (numeric ids, null or empty
// query_txt, extra fields such as query_src_content), strict where a row is unusable.
import { createReadStream } from 'node:fs';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { decodeImage } from '../../model/image.ts';
import { MODALITIES, type MbeirCandidate, type MbeirQuery, type Modality } from './mbeir-types.ts';
import { SPLITS, type Split } from './seeded.ts';
import { writeHandleAtomic, writeTextAtomic } from '../atomic-write.ts';

// ---------------------------------------------------------------- issues

export interface Issue {
  file: string;
  /** 1-based line number in `file`. */
  line: number;
  level: 'error' | 'warning';
  message: string;
}

/** "queries.jsonl:17: pos_cand_list must be an array of strings". */
export function formatIssue(i: Issue): string {
  return `${i.file}:${i.line}: ${i.level === 'warning' ? 'warning: ' : ''}${i.message}`;
}

/** The rows of one JSONL file that passed validation, with where each came from. */
export interface JsonlLoad<T> {
  file: string;
  rows: T[];
  /** lines[i] is the 1-based line of rows[i] in `file`. */
  lines: number[];
  /** Non-blank lines read. */
  total: number;
  /** Lines (or rows, after cross-checks) dropped. */
  skipped: number;
  issues: Issue[];
  /** Issues counted but not stored (past maxIssues). */
  issuesOmitted: number;
}

/** "queries.jsonl: skipped 3 of 120 lines (5 warnings)". */
export function summarizeLoad(load: JsonlLoad<unknown>): string {
  const warnings = load.issues.filter((i) => i.level === 'warning').length;
  const more = load.issuesOmitted > 0 ? `, ${load.issuesOmitted} more messages not kept` : '';
  return `${load.file}: skipped ${load.skipped} of ${load.total} lines (${load.rows.length} kept, ${warnings} warnings${more})`;
}

function pushIssue(load: JsonlLoad<unknown>, issue: Issue, maxIssues: number): void {
  if (load.issues.length < maxIssues) load.issues.push(issue);
  else load.issuesOmitted++;
}

// ---------------------------------------------------------------- validation

export interface Validated<T> {
  value?: T;
  errors: string[];
  warnings: string[];
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v)}`;
  return `${typeof v === 'object' ? 'an object' : `the ${typeof v} ${String(v)}`}`;
}

/** An id: a non-empty string, or a finite number read as its decimal string (warned). */
function idField(obj: Record<string, unknown>, key: string, out: Validated<unknown>): string | undefined {
  const v = obj[key];
  if (typeof v === 'string' && v.length > 0) return v;
  if (typeof v === 'number' && Number.isFinite(v)) {
    out.warnings.push(`${key} is the number ${v}; read as the string "${v}"`);
    return String(v);
  }
  out.errors.push(v === undefined ? `${key} is missing` : `${key} must be a non-empty string, got ${describe(v)}`);
  return undefined;
}

/** An optional text: string or null; a missing key reads as null. */
function nullableString(obj: Record<string, unknown>, key: string, out: Validated<unknown>): string | null | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  out.errors.push(`${key} must be a string or null, got ${describe(v)}`);
  return undefined;
}

function idList(obj: Record<string, unknown>, key: string, out: Validated<unknown>, required: boolean): string[] | undefined {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (required) {
      out.errors.push(`${key} is missing`);
      return undefined;
    }
    return [];
  }
  if (!Array.isArray(v)) {
    out.errors.push(`${key} must be an array of strings, got ${describe(v)}`);
    return undefined;
  }
  const ids: string[] = [];
  let coerced = 0;
  for (const x of v) {
    if (typeof x === 'string' && x.length > 0) ids.push(x);
    else if (typeof x === 'number' && Number.isFinite(x)) {
      ids.push(String(x));
      coerced++;
    } else {
      out.errors.push(`${key} must be an array of strings, element ${ids.length} is ${describe(x)}`);
      return undefined;
    }
  }
  if (coerced > 0) out.warnings.push(`${key} has ${coerced} numeric ids; read as strings`);
  return ids;
}

function modalityField(obj: Record<string, unknown>, key: string, out: Validated<unknown>): Modality | undefined {
  const v = obj[key];
  if (typeof v === 'string') {
    // Tolerate "text,image" and spaces; the canonical spelling is "image,text".
    const parts = v.split(',').map((s) => s.trim()).filter((s) => s.length > 0).sort();
    const canon = parts.join(',');
    if ((MODALITIES as readonly string[]).includes(canon)) {
      if (canon !== v) out.warnings.push(`${key} "${v}" read as "${canon}"`);
      return canon as Modality;
    }
  }
  out.errors.push(
    v === undefined ? `${key} is missing` : `${key} must be one of ${MODALITIES.map((m) => `"${m}"`).join(', ')}, got ${describe(v)}`,
  );
  return undefined;
}

/** src_content fields: any JSON is kept, as a string (M-BEIR stores JSON text or null). */
function srcContent(obj: Record<string, unknown>, key: string): string | null | undefined {
  if (!(key in obj)) return undefined;
  const v = obj[key];
  if (v === null || typeof v === 'string') return v;
  return JSON.stringify(v);
}

/** Checks that the content the modality promises is there. */
function checkContent(
  modality: Modality,
  txt: string | null,
  img: string | null,
  names: { txt: string; img: string; modality: string },
  out: Validated<unknown>,
): void {
  const wantsImg = modality !== 'text';
  const wantsTxt = modality !== 'image';
  if (wantsImg && (img === null || img.trim() === '')) {
    out.errors.push(`${names.modality} is "${modality}" but ${names.img} is ${img === null ? 'null' : 'empty'}`);
  }
  if (wantsTxt && (txt === null || txt.trim() === '')) {
    const msg = `${names.modality} is "${modality}" but ${names.txt} is ${txt === null ? 'null' : 'empty'}`;
    // Text alone is the whole query: without it the row is empty. Beside an image it is only thin.
    if (modality === 'text') out.errors.push(msg);
    else out.warnings.push(msg);
  }
}

/** Validates one parsed query line against the M-BEIR schema. */
export function validateQuery(raw: unknown): Validated<MbeirQuery> {
  const out: Validated<MbeirQuery> = { errors: [], warnings: [] };
  if (!isObject(raw)) {
    out.errors.push(`a query must be a JSON object, got ${describe(raw)}`);
    return out;
  }
  const qid = idField(raw, 'qid', out);
  const query_txt = nullableString(raw, 'query_txt', out);
  const query_img_path = nullableString(raw, 'query_img_path', out);
  const query_modality = modalityField(raw, 'query_modality', out);
  const pos_cand_list = idList(raw, 'pos_cand_list', out, true);
  const neg_cand_list = idList(raw, 'neg_cand_list', out, false);
  let task_id: number | undefined;
  const t = raw.task_id;
  if (typeof t === 'number' && Number.isInteger(t) && t >= 0) task_id = t;
  else if (typeof t === 'string' && /^\d+$/.test(t)) {
    task_id = Number(t);
    out.warnings.push(`task_id is the string "${t}"; read as the number ${task_id}`);
  } else out.errors.push(t === undefined ? 'task_id is missing' : `task_id must be a non-negative integer, got ${describe(t)}`);
  if (pos_cand_list !== undefined && pos_cand_list.length === 0) out.errors.push('pos_cand_list is empty (a query needs a relevant candidate)');
  if (query_modality !== undefined && query_txt !== undefined && query_img_path !== undefined) {
    checkContent(query_modality, query_txt, query_img_path, { txt: 'query_txt', img: 'query_img_path', modality: 'query_modality' }, out);
  }
  if (out.errors.length > 0) return out;
  const q: MbeirQuery = {
    qid: qid!,
    query_txt: query_txt!,
    query_img_path: query_img_path!,
    query_modality: query_modality!,
    pos_cand_list: pos_cand_list!,
    neg_cand_list: neg_cand_list!,
    task_id: task_id!,
  };
  const src = srcContent(raw, 'query_src_content');
  if (src !== undefined) q.query_src_content = src;
  out.value = q;
  return out;
}

/** Validates one parsed candidate line against the M-BEIR schema. */
export function validateCandidate(raw: unknown): Validated<MbeirCandidate> {
  const out: Validated<MbeirCandidate> = { errors: [], warnings: [] };
  if (!isObject(raw)) {
    out.errors.push(`a candidate must be a JSON object, got ${describe(raw)}`);
    return out;
  }
  const did = idField(raw, 'did', out);
  const txt = nullableString(raw, 'txt', out);
  const img_path = nullableString(raw, 'img_path', out);
  const modality = modalityField(raw, 'modality', out);
  if (modality !== undefined && txt !== undefined && img_path !== undefined) {
    checkContent(modality, txt, img_path, { txt: 'txt', img: 'img_path', modality: 'modality' }, out);
  }
  if (out.errors.length > 0) return out;
  const c: MbeirCandidate = { did: did!, txt: txt!, img_path: img_path!, modality: modality! };
  const src = srcContent(raw, 'src_content');
  if (src !== undefined) c.src_content = src;
  out.value = c;
  return out;
}

/** Task ids written as "4,6" (a command-line flag); anything else is an error naming the flag. */
export function parseTaskIds(text: string, flag = '--tasks'): number[] {
  const parts = text.split(',').map((t) => t.trim());
  if (parts.some((t) => !/^\d+$/.test(t))) throw new Error(`${flag} must be task ids separated by commas (e.g. 4,6), got '${text}'`);
  return parts.map(Number);
}

/** The queries of the given task ids (all when none are given); an empty result is an error naming the file. */
export function queriesOfTasks<Q extends { task_id: number }>(queries: readonly Q[], tasks: readonly number[] | undefined, file: string): Q[] {
  if (!tasks) return [...queries];
  const keep = new Set(tasks);
  const out = queries.filter((q) => keep.has(q.task_id));
  if (!out.length) throw new Error(`${file}: no query of tasks ${tasks.join(', ')}`);
  return out;
}

// ---------------------------------------------------------------- streaming reader

export interface JsonlLine {
  line: number;
  /** The parsed value, absent when the line is not JSON. */
  value?: unknown;
  /** Why the line could not be parsed. */
  error?: string;
}

/** Streams a JSONL file: one parsed value per non-blank line, with its 1-based line number. */
export async function* iterateJsonl(path: string): AsyncGenerator<JsonlLine> {
  const input = createReadStream(path, { encoding: 'utf8' });
  const rl = createInterface({ input, crlfDelay: Infinity });
  let line = 0;
  try {
    for await (let text of rl) {
      line++;
      if (line === 1 && text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      if (text.trim() === '') continue;
      try {
        yield { line, value: JSON.parse(text) };
      } catch (e) {
        yield { line, error: `invalid JSON (${(e as Error).message})` };
      }
    }
  } finally {
    rl.close();
    input.destroy();
  }
}

export interface ReadOptions {
  /** Issues stored per file (the rest are only counted); default 1000. */
  maxIssues?: number;
  /** Name used in messages instead of the path (default: the path). */
  label?: string;
}

async function readValidated<T>(
  path: string,
  validate: (raw: unknown) => Validated<T>,
  idOf: (row: T) => string,
  idKey: string,
  opts: ReadOptions,
): Promise<JsonlLoad<T>> {
  const file = opts.label ?? path;
  const maxIssues = opts.maxIssues ?? 1000;
  const load: JsonlLoad<T> = { file, rows: [], lines: [], total: 0, skipped: 0, issues: [], issuesOmitted: 0 };
  try {
    await stat(path);
  } catch (e) {
    throw new Error(`${file}: cannot read (${(e as Error).message})`);
  }
  const seen = new Map<string, number>();
  for await (const { line, value, error } of iterateJsonl(path)) {
    load.total++;
    if (error !== undefined) {
      load.skipped++;
      pushIssue(load, { file, line, level: 'error', message: `${error}; line skipped` }, maxIssues);
      continue;
    }
    const v = validate(value);
    for (const w of v.warnings) pushIssue(load, { file, line, level: 'warning', message: w }, maxIssues);
    if (v.value === undefined) {
      load.skipped++;
      for (const m of v.errors) pushIssue(load, { file, line, level: 'error', message: `${m}; line skipped` }, maxIssues);
      continue;
    }
    const id = idOf(v.value);
    const first = seen.get(id);
    if (first !== undefined) {
      load.skipped++;
      pushIssue(load, { file, line, level: 'error', message: `duplicate ${idKey} "${id}" (first on line ${first}); line skipped` }, maxIssues);
      continue;
    }
    seen.set(id, line);
    load.rows.push(v.value);
    load.lines.push(line);
  }
  return load;
}

/** Reads and validates an M-BEIR query file, line by line. */
export function readQueries(path: string, opts: ReadOptions = {}): Promise<JsonlLoad<MbeirQuery>> {
  return readValidated(path, validateQuery, (q) => q.qid, 'qid', opts);
}

/** Reads and validates an M-BEIR candidate pool file, line by line. */
export function readPool(path: string, opts: ReadOptions = {}): Promise<JsonlLoad<MbeirCandidate>> {
  return readValidated(path, validateCandidate, (c) => c.did, 'did', opts);
}

/** Keeps the rows whose index is not in `drop` (lines follow the rows). */
export function dropRows<T>(load: JsonlLoad<T>, drop: ReadonlySet<number>): JsonlLoad<T> {
  if (drop.size === 0) return load;
  const rows: T[] = [];
  const lines: number[] = [];
  load.rows.forEach((r, i) => {
    if (!drop.has(i)) {
      rows.push(r);
      lines.push(load.lines[i]);
    }
  });
  return { ...load, rows, lines, skipped: load.skipped + (load.rows.length - rows.length) };
}

/**
 * Cross-checks queries against a pool: a query with a positive id absent from the pool
 * is reported (file:line) and skipped; absent negatives are dropped from the list with
 * a warning. Returns a new load; the input is not changed.
 */
export function resolveAgainstPool(
  queries: JsonlLoad<MbeirQuery>,
  poolIds: ReadonlySet<string> | ReadonlyMap<string, unknown>,
  opts: { maxIssues?: number; poolLabel?: string } = {},
): JsonlLoad<MbeirQuery> {
  const maxIssues = opts.maxIssues ?? 1000;
  const poolName = opts.poolLabel ?? 'the pool';
  const out: JsonlLoad<MbeirQuery> = { ...queries, rows: [], lines: [], issues: queries.issues.slice() };
  queries.rows.forEach((q, i) => {
    const line = queries.lines[i];
    const missing = q.pos_cand_list.filter((d) => !poolIds.has(d));
    if (missing.length > 0) {
      out.skipped++;
      const list = missing.slice(0, 5).map((d) => `"${d}"`).join(', ') + (missing.length > 5 ? ', ...' : '');
      pushIssue(out, { file: queries.file, line, level: 'error', message: `qid "${q.qid}": positive id ${list} not in ${poolName}; query skipped` }, maxIssues);
      return;
    }
    let row = q;
    const badNeg = q.neg_cand_list.filter((d) => !poolIds.has(d));
    if (badNeg.length > 0) {
      pushIssue(
        out,
        { file: queries.file, line, level: 'warning', message: `qid "${q.qid}": ${badNeg.length} negative id(s) not in ${poolName} (first "${badNeg[0]}"); dropped from neg_cand_list` },
        maxIssues,
      );
      row = { ...q, neg_cand_list: q.neg_cand_list.filter((d) => poolIds.has(d)) };
    }
    out.rows.push(row);
    out.lines.push(line);
  });
  return out;
}

// ---------------------------------------------------------------- images

export interface ImageCheck {
  /** Distinct image files decoded. */
  checked: number;
  /** Rows whose image is missing or corrupt. */
  bad: number;
  /** Indices (into the rows given) of the bad rows. */
  badRows: Set<number>;
  issues: Issue[];
}

function imagePathOf(row: MbeirQuery | MbeirCandidate): string | null {
  return 'qid' in row ? row.query_img_path : row.img_path;
}

/**
 * Decodes every image the rows name (paths relative to imageRoot) and reports the
 * missing or corrupt ones with file:line. Each distinct file is read once. Costs a
 * decode per image, so callers make it optional.
 */
export async function checkImages(
  source: JsonlLoad<MbeirQuery | MbeirCandidate> | JsonlLoad<MbeirQuery> | JsonlLoad<MbeirCandidate> | (MbeirQuery | MbeirCandidate)[],
  imageRoot: string,
  opts: { file?: string; concurrency?: number; maxIssues?: number } = {},
): Promise<ImageCheck> {
  const rows: (MbeirQuery | MbeirCandidate)[] = Array.isArray(source) ? source : source.rows;
  const lines = Array.isArray(source) ? rows.map((_, i) => i + 1) : source.lines;
  const file = Array.isArray(source) ? (opts.file ?? '<rows>') : source.file;
  const maxIssues = opts.maxIssues ?? 1000;
  const verdict = new Map<string, Promise<string | null>>();
  const probe = async (rel: string): Promise<string | null> => {
    const full = isAbsolute(rel) ? rel : join(imageRoot, rel);
    let bytes: Uint8Array;
    try {
      bytes = await readFile(full);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      return `image ${rel} ${code === 'ENOENT' ? 'does not exist' : 'cannot be read'} (looked for ${full})`;
    }
    try {
      decodeImage(bytes, rel);
      return null;
    } catch (e) {
      return (e as Error).message;
    }
  };
  const result: ImageCheck = { checked: 0, bad: 0, badRows: new Set(), issues: [] };
  const concurrency = Math.max(1, opts.concurrency ?? 16);
  let next = 0;
  const worker = async () => {
    while (next < rows.length) {
      const i = next++;
      const rel = imagePathOf(rows[i]);
      if (rel === null || rel === '') continue;
      let p = verdict.get(rel);
      if (p === undefined) {
        p = probe(rel);
        verdict.set(rel, p);
      }
      const err = await p;
      if (err !== null) {
        result.bad++;
        result.badRows.add(i);
        const id = 'qid' in rows[i] ? `qid "${(rows[i] as MbeirQuery).qid}"` : `did "${(rows[i] as MbeirCandidate).did}"`;
        if (result.issues.length < maxIssues) result.issues.push({ file, line: lines[i], level: 'error', message: `${id}: ${err}` });
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  result.checked = verdict.size;
  result.issues.sort((a, b) => a.line - b.line);
  return result;
}

// ---------------------------------------------------------------- atomic writers

/**
 * Writes rows as JSONL to a temporary file beside `path`, then renames it into place, so
 * a reader never sees a half-written file. Rows are serialised in chunks, never as one
 * string.
 */
export async function writeJsonl(path: string, rows: Iterable<unknown> | AsyncIterable<unknown>): Promise<number> {
  let n = 0;
  await writeHandleAtomic(path, async (fh) => {
    let chunk = '';
    for await (const row of rows as AsyncIterable<unknown>) {
      chunk += JSON.stringify(row) + '\n';
      n++;
      if (chunk.length >= 1 << 20) {
        await fh.write(chunk);
        chunk = '';
      }
    }
    if (chunk.length > 0) await fh.write(chunk);
  });
  return n;
}

// ---------------------------------------------------------------- any M-BEIR files

export interface MbeirFiles {
  queries: MbeirQuery[];
  pool: MbeirCandidate[];
  summary: string[];
  issues: Issue[];
  skipped: number;
}

/**
 * Loads M-BEIR files laid out any way (the real release: query/test/mbeir_*_test.jsonl
 * with cand_pool/local/mbeir_*_cand_pool.jsonl): pools are merged (a did seen in an
 * earlier pool file is kept once), queries are checked against the merged pool, and,
 * when asked, every image is decoded. Nothing stops at a bad line.
 */
export async function loadMbeirFiles(opts: {
  queryFiles: string[];
  poolFiles: string[];
  imageRoot?: string;
  checkImages?: boolean;
  maxIssues?: number;
}): Promise<MbeirFiles> {
  const out: MbeirFiles = { queries: [], pool: [], summary: [], issues: [], skipped: 0 };
  const note = (load: JsonlLoad<unknown>) => {
    out.summary.push(summarizeLoad(load));
    out.issues.push(...load.issues);
    out.skipped += load.skipped;
  };
  const ids = new Set<string>();
  for (const path of opts.poolFiles) {
    let load = await readPool(path, { maxIssues: opts.maxIssues });
    if (opts.checkImages && opts.imageRoot !== undefined) {
      const chk = await checkImages(load, opts.imageRoot);
      load = dropRows(load, chk.badRows);
      load.issues.push(...chk.issues);
    }
    note(load);
    for (const c of load.rows) {
      if (ids.has(c.did)) continue; // the same candidate listed by several pool files
      ids.add(c.did);
      out.pool.push(c);
    }
  }
  for (const path of opts.queryFiles) {
    let load = resolveAgainstPool(await readQueries(path, { maxIssues: opts.maxIssues }), ids, { maxIssues: opts.maxIssues, poolLabel: 'the pool files' });
    if (opts.checkImages && opts.imageRoot !== undefined) {
      const chk = await checkImages(load, opts.imageRoot);
      load = dropRows(load, chk.badRows);
      load.issues.push(...chk.issues);
    }
    note(load);
    out.queries.push(...load.rows);
  }
  return out;
}

// ---------------------------------------------------------------- benchmark directories

/** Per-task description in meta.json. */
export interface TaskMeta {
  name: string;
  query: string;
  candidates: string;
  /** The task's local pool file (M-BEIR's per-task pool), relative to the dataset dir. */
  pool_file: string;
  pool_size: number;
}

/** meta.json of a benchmark directory written by our builders. */
export interface BenchmarkMeta {
  name: string;
  version: number;
  seed: number;
  /** Image paths are relative to this; an absolute path, or relative to the dataset dir. */
  image_root: string;
  /** Queries per task id (as a string key) and split. */
  counts: Record<string, Record<Split, number>>;
  pool_size: number;
  tasks: Record<string, TaskMeta>;
  [key: string]: unknown;
}

/** A benchmark in memory: queries per split, one shared pool, and the local pool of each task. */
export interface Benchmark {
  queries: Record<Split, MbeirQuery[]>;
  pool: MbeirCandidate[];
  /** dids of each task's local pool (task id -> dids), a subset of `pool`. */
  taskPools: Map<number, string[]>;
  meta: BenchmarkMeta;
}

export const queriesFile = (split: Split) => `queries_${split}.jsonl`;
export const POOL_FILE = 'pool.jsonl';
export const taskPoolFile = (task: number) => `pool_task${task}.jsonl`;

/**
 * Writes a benchmark directory: queries_{train,val,test}.jsonl, pool.jsonl (every
 * candidate), pool_task{N}.jsonl (each task's local pool), meta.json, and any extra
 * JSONL side tables and text files given.
 */
export async function writeBenchmarkDir(
  dir: string,
  bench: Benchmark,
  extras: { jsonl?: Record<string, unknown[]>; text?: Record<string, string> } = {},
): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const split of SPLITS) await writeJsonl(join(dir, queriesFile(split)), bench.queries[split]);
  await writeJsonl(join(dir, POOL_FILE), bench.pool);
  const byId = new Map(bench.pool.map((c) => [c.did, c]));
  for (const [task, dids] of bench.taskPools) {
    await writeJsonl(join(dir, taskPoolFile(task)), dids.map((d) => byId.get(d)!));
  }
  for (const [name, rows] of Object.entries(extras.jsonl ?? {})) await writeJsonl(join(dir, name), rows);
  for (const [name, text] of Object.entries(extras.text ?? {})) await writeTextAtomic(join(dir, name), text);
  // meta.json last: its presence marks a complete directory.
  await writeTextAtomic(join(dir, 'meta.json'), JSON.stringify(bench.meta, null, 2) + '\n');
}

export interface LoadedBenchmark extends Benchmark {
  /** The image root, resolved to an absolute path. */
  imageRoot: string;
  /** One line per file: "queries_train.jsonl: skipped 0 of 1520 lines ...". */
  summary: string[];
  issues: Issue[];
  /** Lines or rows skipped over all files. */
  skipped: number;
}

export interface LoadBenchmarkOptions {
  /** Decode every image (slow on big pools); bad rows are skipped. Default false. */
  checkImages?: boolean;
  /** Overrides meta.image_root. */
  imageRoot?: string;
  maxIssues?: number;
}

/**
 * Loads a benchmark directory with full validation: bad lines skipped, queries whose
 * positives are not in the pool skipped, optionally rows with bad images skipped.
 */
export async function loadBenchmarkDir(dir: string, opts: LoadBenchmarkOptions = {}): Promise<LoadedBenchmark> {
  const metaPath = join(dir, 'meta.json');
  let meta: BenchmarkMeta;
  try {
    meta = JSON.parse(await readFile(metaPath, 'utf8')) as BenchmarkMeta;
  } catch (e) {
    throw new Error(`${metaPath}: cannot read benchmark metadata (${(e as Error).message}); was the builder run to the end?`);
  }
  const imageRoot = resolve(dir, opts.imageRoot ?? meta.image_root);
  const ro: ReadOptions = { maxIssues: opts.maxIssues };
  const summary: string[] = [];
  const issues: Issue[] = [];
  let skipped = 0;
  const note = (load: JsonlLoad<unknown>) => {
    summary.push(summarizeLoad(load));
    issues.push(...load.issues);
    skipped += load.skipped;
  };

  let pool = await readPool(join(dir, POOL_FILE), { ...ro, label: join(dir, POOL_FILE) });
  if (opts.checkImages) {
    const chk = await checkImages(pool, imageRoot);
    pool = dropRows(pool, chk.badRows);
    pool.issues.push(...chk.issues);
  }
  note(pool);
  const poolIds = new Set(pool.rows.map((c) => c.did));

  const queries = {} as Record<Split, MbeirQuery[]>;
  for (const split of SPLITS) {
    const path = join(dir, queriesFile(split));
    let q = await readQueries(path, { ...ro, label: path });
    q = resolveAgainstPool(q, poolIds, { maxIssues: opts.maxIssues, poolLabel: POOL_FILE });
    if (opts.checkImages) {
      const chk = await checkImages(q, imageRoot);
      q = dropRows(q, chk.badRows);
      q.issues.push(...chk.issues);
    }
    note(q);
    queries[split] = q.rows;
  }

  const taskPools = new Map<number, string[]>();
  for (const task of Object.keys(meta.tasks ?? {}).map(Number)) {
    const path = join(dir, meta.tasks[String(task)].pool_file ?? taskPoolFile(task));
    const tp = await readPool(path, { ...ro, label: path });
    const kept: string[] = [];
    tp.rows.forEach((c, i) => {
      if (poolIds.has(c.did)) kept.push(c.did);
      else pushIssue(tp, { file: path, line: tp.lines[i], level: 'warning', message: `did "${c.did}" is not in ${POOL_FILE} (or was skipped there); left out of task ${task}'s pool` }, opts.maxIssues ?? 1000);
    });
    note(tp);
    taskPools.set(task, kept);
  }
  return { queries, pool: pool.rows, taskPools, meta, imageRoot, summary, issues, skipped };
}
