// Matmul autotuner: for each shape class (runtime/ops/matmul.ts, matmulClassKey: dtype,
// layout, vec4 alignment, M bucket 1 / 2-8 / 9-64 / 65+, N and K by power of two, batched)
// it checks every kernel variant that can run the class on this adapter against a float64
// CPU reference, times the ones that pass, and caches the fastest per adapter in a JSON
// file the user may delete (default ~/.cache/retrv/tuning.json; RETRV_TUNING_CACHE moves
// it; RETRV_TUNE=0 turns tuning and the cache off, so `auto` uses the fixed default).
//
// Tuning is async (it needs GPU timings) and matmul() is sync, so they meet through the
// cache: matmul() only looks a class up (tunedKernel, synchronous, no GPU work) and uses
// the fixed default for classes it has no winner for, noting them as pending. A training
// loop either calls `await tuneMatmul(shapes)` before its first step, or runs its first
// step with the defaults and then `await tunePending()`, which tunes the classes that step
// used. Either way tuning submits and waits only between steps: every step after the first
// still records into one submit. RETRV_VERBOSE=1 prints each class's tuning cost once.
import { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { f16ToF32, f32ToF16 } from './dtype.ts';
import { getEngine } from './engine.ts';
import { Tensor, fromArray } from './tensor.ts';
import {
  MATMUL_KERNELS,
  MATMUL_KERNEL_SET_VERSION,
  type MatmulClass,
  type MatmulKernelName,
  matmul,
  matmulCandidates,
  matmulClassKey,
  matmulClassOf,
} from './ops/matmul.ts';

/** A matmul to tune for: A [batch?, M, K] (stored [K, M] when transposeA) times B [batch?, K, N] (stored [N, K] when transposeB). */
export interface MatmulShape {
  M: number;
  N: number;
  K: number;
  /** Batch count of a batched matmul (default 1). */
  batch?: number;
  transposeA?: boolean;
  transposeB?: boolean;
  dtype?: 'f32' | 'f16';
  /** False: operands whose layout the vec4 kernels cannot read (odd offsets). Default true. */
  aligned?: boolean;
}

/** What tuning one class found. */
export interface TuneResult {
  classKey: string;
  /** The winner, or null when no candidate passed (matmul keeps the default). */
  kernel: MatmulKernelName | null;
  /** True when the cache already had a winner and nothing was run. */
  cached: boolean;
  /** Per candidate: ms per run, or why it was not timed ('failed check: ...', 'pruned', ...). */
  candidates: Record<string, number | string>;
  /** Wall time the tuning of this class took, ms (compiles, checks, timing). */
  costMs: number;
}

interface ClassEntry {
  kernel: string;
  ms: number;
  candidates: Record<string, number | string>;
  /** The problem that was timed. */
  timed: { M: number; N: number; K: number; batch: number };
  tunedAt: string;
}

interface CacheFile {
  format: 1;
  note?: string;
  adapters: Record<string, { adapter?: unknown; classes: Record<string, ClassEntry> }>;
}

const FORMAT = 1;
const NOTE = 'retrv matmul autotuning cache: the fastest kernel per adapter and shape class. Safe to delete (it is rebuilt by tuning).';

/** Where the tuning cache lives: RETRV_TUNING_CACHE, else ~/.cache/retrv/tuning.json. */
export function tuningCachePath(): string {
  return process.env.RETRV_TUNING_CACHE || join(homedir(), '.cache', 'retrv', 'tuning.json');
}

/** False when RETRV_TUNE is 0 / false / off / no: no tuning, no cache, fixed defaults. */
export function tuningEnabled(): boolean {
  const v = (process.env.RETRV_TUNE ?? '').trim().toLowerCase();
  return !['0', 'false', 'off', 'no'].includes(v);
}

const verbose = () => !!process.env.RETRV_VERBOSE && process.env.RETRV_VERBOSE !== '0';

/** The cache key of this adapter: description, vendor, architecture, device, kernel set version. */
export function tuningAdapterKey(): string {
  const ctx = getEngine().ctx;
  const i = ctx.info;
  return `${ctx.description} | vendor ${i.vendor || '?'} | arch ${i.architecture || '?'} | device ${i.device || '?'} | ${i.backend} | matmul kernels v${MATMUL_KERNEL_SET_VERSION}`;
}

// ---------------------------------------------------------------- the cache file

/** In-memory winners of this adapter, for one cache path (reloaded when the path changes). */
let mem: { path: string; adapter: string; classes: Map<string, MatmulKernelName> } | null = null;
/** Classes matmul() ran with the default because nothing was cached: key -> the first call's class. */
const pending = new Map<string, MatmulClass>();
/** Classes tuned or tried in this process (path|adapter|class), so a failure is not retried in a loop. */
const attempted = new Set<string>();
/** Corrupt-file warnings already printed (path|mtime|size). */
const warned = new Set<string>();

function emptyCache(): CacheFile {
  return { format: FORMAT, note: NOTE, adapters: {} };
}

/** Reads the cache file; a missing file is empty, an unreadable one is ignored with a warning. */
function readCache(path: string): CacheFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return emptyCache();
    warnOnce(path, `cannot be read (${(e as Error).message})`);
    return emptyCache();
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    warnOnce(path, `is not valid JSON (${(e as Error).message})`);
    return emptyCache();
  }
  const d = data as Partial<CacheFile> | null;
  if (!d || typeof d !== 'object' || d.format !== FORMAT || !d.adapters || typeof d.adapters !== 'object') {
    warnOnce(path, `is not a retrv tuning cache of format ${FORMAT}`);
    return emptyCache();
  }
  for (const a of Object.values(d.adapters)) {
    if (!a || typeof a !== 'object' || !a.classes || typeof a.classes !== 'object') {
      warnOnce(path, 'has an adapter entry without classes');
      return emptyCache();
    }
  }
  return d as CacheFile;
}

function warnOnce(path: string, why: string): void {
  let id = path;
  try {
    const s = statSync(path);
    id += `|${s.mtimeMs}|${s.size}`;
  } catch {
    // stat failed as well: warn by path only
  }
  if (warned.has(id)) return;
  warned.add(id);
  console.warn(`retrv: ignoring the matmul tuning cache ${path}: it ${why}. Default kernels are used until tuning rewrites it (deleting the file is safe).`);
}

/** This adapter's winners from a cache file (entries naming unknown kernels are skipped). */
function winnersOf(file: CacheFile, adapter: string): Map<string, MatmulKernelName> {
  const out = new Map<string, MatmulKernelName>();
  const classes = file.adapters[adapter]?.classes ?? {};
  for (const [key, e] of Object.entries(classes)) {
    if (e && typeof e.kernel === 'string' && Object.hasOwn(MATMUL_KERNELS, e.kernel)) out.set(key, e.kernel as MatmulKernelName);
  }
  return out;
}

function loadMem(): NonNullable<typeof mem> {
  const path = tuningCachePath();
  const adapter = tuningAdapterKey();
  if (!mem || mem.path !== path || mem.adapter !== adapter) {
    mem = { path, adapter, classes: winnersOf(readCache(path), adapter) };
  }
  return mem;
}

/** Merges new winners into the file on disk (re-read first: another process may have written). */
function saveEntries(path: string, adapter: string, entries: Record<string, ClassEntry>): void {
  const file = readCache(path);
  const ctx = getEngine().ctx;
  const slot = (file.adapters[adapter] ??= { classes: {} });
  slot.adapter = { ...ctx.info, summary: ctx.description };
  Object.assign(slot.classes, entries);
  file.note = NOTE;
  mkdirSync(dirname(path), { recursive: true });
  // Write then rename: a crash never leaves a half-written cache.
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(file, null, 2)}\n`);
  renameSync(tmp, path);
}

/**
 * The cached winner for a class, or null (then matmul uses its default). Synchronous, no
 * GPU work: matmul() calls it on every `auto` dispatch. A class without a winner is noted
 * for tunePending().
 */
export function tunedKernel(key: string, cls: MatmulClass): MatmulKernelName | null {
  if (!tuningEnabled()) return null;
  const m = loadMem();
  const k = m.classes.get(key);
  if (k) return k;
  if (!pending.has(key) && !attempted.has(`${m.path}|${m.adapter}|${key}`)) pending.set(key, { ...cls });
  return null;
}

/** Forgets what this process loaded, tried and noted (the next lookup re-reads the file). */
export function resetTuning(): void {
  mem = null;
  pending.clear();
  attempted.clear();
}

/** Classes matmul() ran with the default kernel since the last tuning, for tunePending(). */
export function pendingMatmulClasses(): string[] {
  return [...pending.keys()];
}

// ---------------------------------------------------------------- problems and checks

/** A matmul problem in stored layout: A [batch, M, K] or [batch, K, M] (tA), B [batch, K, N] or [batch, N, K] (tB). */
interface Problem {
  dtype: 'f32' | 'f16';
  tA: boolean;
  tB: boolean;
  /** Operand A starts one element into its buffer: the vec4 kernels cannot read it. */
  unaligned: boolean;
  M: number;
  N: number;
  K: number;
  batch: number;
}

// Operand values come from a fixed random block indexed modulo a prime, so a large operand
// needs no large host-side random generation and the reference can recompute any element.
const PERIOD = 65521;
const blocks = new Map<string, Float64Array>();
function block(dtype: 'f32' | 'f16', seed: number): Float64Array {
  const id = `${dtype}|${seed}`;
  let b = blocks.get(id);
  if (!b) {
    let s = seed >>> 0;
    const raw = new Float32Array(PERIOD);
    for (let i = 0; i < PERIOD; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      raw[i] = (s / 4294967296) * 2 - 1;
    }
    // The reference must see exactly the stored values: round through f16 when stored so.
    b = Float64Array.from(dtype === 'f16' ? f16ToF32(f32ToF16(raw)) : raw);
    blocks.set(id, b);
  }
  return b;
}

function upload(p: Problem, shape: number[], seed: number, skip: number): Tensor {
  const n = shape.reduce((x, y) => x * y, 1);
  const vals = block(p.dtype, seed);
  const host = new Float32Array(n + skip);
  for (let i = 0; i < n; i++) host[i + skip] = vals[i % PERIOD];
  const t = fromArray(host, [n + skip], p.dtype);
  if (!skip) {
    const v = t.view(shape);
    t.dispose();
    return v;
  }
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((x, y) => x * y, 1));
  const v = t.view(shape, strides, skip);
  t.dispose();
  return v;
}

const SEED_A = 17;
const SEED_B = 29;

function operands(p: Problem): { a: Tensor; b: Tensor } {
  const bt = p.batch > 1 ? [p.batch] : [];
  const a = upload(p, [...bt, ...(p.tA ? [p.K, p.M] : [p.M, p.K])], SEED_A, p.unaligned ? 1 : 0);
  const b = upload(p, [...bt, ...(p.tB ? [p.N, p.K] : [p.K, p.N])], SEED_B, 0);
  return { a, b };
}

/** Reference C[z, i, j] in float64 and the bound a correct f32-accumulated result stays within. */
function refEntry(p: Problem, z: number, i: number, j: number): { ref: number; tol: number } {
  const va = block(p.dtype, SEED_A);
  const vb = block(p.dtype, SEED_B);
  const aBase = z * p.M * p.K;
  const bBase = z * p.K * p.N;
  let ref = 0;
  let absSum = 0;
  for (let k = 0; k < p.K; k++) {
    const av = va[(aBase + (p.tA ? k * p.M + i : i * p.K + k)) % PERIOD];
    const bv = vb[(bBase + (p.tB ? j * p.K + k : k * p.N + j)) % PERIOD];
    ref += av * bv;
    absSum += Math.abs(av * bv);
  }
  // f32 rounding in any summation order stays far below 16·sqrt(K)·u·Σ|ab|; a dropped or
  // doubled term does not. An f16 output adds its own rounding (2^-11 relative).
  let tol = 1e-6 + 16 * Math.sqrt(p.K) * 2 ** -24 * absSum;
  if (p.dtype === 'f16') tol += 2 ** -10 * Math.abs(ref) + 1e-4;
  return { ref, tol };
}

/** Compares C with the reference at every entry (all: true) or at corners plus sampled entries. */
function compare(p: Problem, c: ArrayLike<number>, all: boolean): string | null {
  const at: [number, number, number][] = [];
  if (all) {
    for (let z = 0; z < p.batch; z++) for (let i = 0; i < p.M; i++) for (let j = 0; j < p.N; j++) at.push([z, i, j]);
  } else {
    const last = p.batch - 1;
    at.push([0, 0, 0], [0, p.M - 1, p.N - 1], [last, p.M - 1, 0], [last, 0, p.N - 1]);
    let s = 12345;
    for (let q = 0; q < 28; q++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      const r = s / 4294967296;
      at.push([Math.floor(r * p.batch), Math.floor(((r * 7919) % 1) * p.M), Math.floor(((r * 104729) % 1) * p.N)]);
    }
  }
  for (const [z, i, j] of at) {
    const got = c[(z * p.M + i) * p.N + j];
    const { ref, tol } = refEntry(p, z, i, j);
    if (!(Math.abs(got - ref) <= tol)) return `C[${p.batch > 1 ? `${z}, ` : ''}${i}, ${j}] = ${got}, reference ${ref.toPrecision(7)}`;
  }
  return null;
}

async function runOnce(p: Problem, a: Tensor, b: Tensor, kernel: MatmulKernelName): Promise<Float32Array | Int32Array | Uint32Array> {
  const y = matmul(a, b, { transposeA: p.tA, transposeB: p.tB, kernel });
  try {
    return await y.toArray();
  } finally {
    y.dispose();
  }
}

/** A problem of the class small enough to check every entry on the CPU, same layout and alignment residues. */
function smallOf(p: Problem): Problem {
  // Keep each size's residue mod 4 (vec4 alignment) and avoid multiples of the tiles.
  const small = (n: number) => (n <= 40 ? n : 36 + (n % 4));
  // M stays in its bucket (1, 2-8, 9-64, 65+).
  const M = p.M <= 64 ? p.M : 68 + (p.M % 4);
  return { ...p, M, N: small(p.N), K: small(p.K), batch: Math.min(p.batch, 2) };
}

/** Shrinks the timed problem to a budget of work, keeping its class (M bucket, batched or not). */
function timedOf(p: Problem): Problem {
  const budget = getEngine().ctx.isSoftware ? 2 ** 31 : 2 ** 38;
  const flops = (q: Problem) => 2 * q.M * q.N * q.K * q.batch;
  const q = { ...p };
  if (flops(q) > budget && q.batch > 2) q.batch = Math.max(2, Math.floor(budget / flops({ ...q, batch: 1 })));
  if (flops(q) > budget && q.M > 128) {
    const target = Math.max(128, Math.floor(budget / flops({ ...q, M: 1 })));
    q.M = target - (target % 4) + (q.M % 4);
  }
  return q;
}

// ---------------------------------------------------------------- timing

/** Test hook: sees (and may alter) each candidate's output on the small check problem. */
export const tuningHooks: { checkedOutput?: (kernel: MatmulKernelName, out: Float32Array | Int32Array | Uint32Array) => void } = {};

const now = () => performance.now();

/** Records `reps` matmuls, submits, waits: ms per run. */
async function timeRuns(p: Problem, a: Tensor, b: Tensor, kernel: MatmulKernelName, reps: number): Promise<number> {
  const eng = getEngine();
  const t0 = now();
  for (let r = 0; r < reps; r++) matmul(a, b, { transposeA: p.tA, transposeB: p.tB, kernel }).dispose();
  await eng.sync();
  return (now() - t0) / reps;
}

/** Tunes one class: check, then time every candidate; returns the result and a cache entry (null when none passed). */
async function tuneProblem(p: Problem, key: string, cls: MatmulClass): Promise<{ result: TuneResult; entry: ClassEntry | null }> {
  const start = now();
  const eng = getEngine();
  await eng.sync(); // whatever the caller recorded runs first, outside the timings
  const candidates: Record<string, number | string> = {};
  const small = smallOf(p);
  const timed = timedOf(p);
  const s = operands(small);
  const t = operands(timed);
  const names = matmulCandidates(cls);
  // Candidates that passed both checks, with their runs per timed batch and best ms per run.
  const live: { name: MatmulKernelName; reps: number; ms: number }[] = [];
  try {
    for (const name of names) {
      try {
        const out = await runOnce(small, s.a, s.b, name);
        tuningHooks.checkedOutput?.(name, out);
        const err = compare(small, out, true);
        if (err) {
          candidates[name] = `failed check: ${err}`;
          continue;
        }
        // The timed problem's first run compiles (if needed) and is checked at sampled entries.
        const err2 = compare(timed, await runOnce(timed, t.a, t.b, name), false);
        if (err2) {
          candidates[name] = `failed check: ${err2}`;
          continue;
        }
        // Batches of runs long enough (~20 ms) that the submit and the wait are small against them.
        const first = await timeRuns(timed, t.a, t.b, name, 1);
        live.push({ name, reps: Math.max(1, Math.min(64, Math.ceil(20 / Math.max(first, 1e-3)))), ms: Infinity });
      } catch (e) {
        candidates[name] = `error: ${(e as Error).message.split('\n')[0]}`;
      }
    }
    // Three rounds, each timing one batch of every candidate still in the race, so a burst
    // of load from elsewhere hits all of them rather than one; the best batch counts. After
    // the first round, candidates over twice the best are dropped.
    for (let round = 0; round < 3 && live.length; round++) {
      for (const c of live) c.ms = Math.min(c.ms, await timeRuns(timed, t.a, t.b, c.name, c.reps));
      if (round === 0) {
        const best = Math.min(...live.map((c) => c.ms));
        for (const c of live.filter((x) => x.ms > 2 * best)) candidates[c.name] = `pruned after one batch (${c.ms.toPrecision(3)} ms per run)`;
        live.splice(0, live.length, ...live.filter((x) => x.ms <= 2 * best));
      }
    }
    for (const c of live) candidates[c.name] = Number(c.ms.toPrecision(4));
  } finally {
    for (const x of [s.a, s.b, t.a, t.b]) x.dispose();
    await eng.sync();
  }
  const best = live.reduce<(typeof live)[number] | null>((b, c) => (!b || c.ms < b.ms ? c : b), null);
  const costMs = now() - start;
  // Report the candidates in the tuner's order (the default first).
  const order = Object.keys(candidates).sort((x, y) => names.indexOf(x as MatmulKernelName) - names.indexOf(y as MatmulKernelName));
  const ordered = Object.fromEntries(order.map((k) => [k, candidates[k]]));
  for (const k of order) delete candidates[k];
  Object.assign(candidates, ordered);
  const result: TuneResult = { classKey: key, kernel: best?.name ?? null, cached: false, candidates, costMs };
  const entry: ClassEntry | null = best
    ? { kernel: best.name, ms: Number(best.ms.toPrecision(4)), candidates, timed: { M: timed.M, N: timed.N, K: timed.K, batch: timed.batch }, tunedAt: new Date().toISOString() }
    : null;
  return { result, entry };
}

function describe(r: TuneResult): string {
  const list = Object.entries(r.candidates)
    .map(([k, v]) => `${k} ${typeof v === 'number' ? `${v} ms` : v}`)
    .join('; ');
  return `retrv: tuned matmul class [${r.classKey}] in ${(r.costMs / 1e3).toFixed(2)} s: ${r.kernel ?? 'no candidate passed, keeping the default'} (${list})`;
}

/** The stored-layout problem of a class (its layout and alignment as the call had them). */
function problemOfClass(c: MatmulClass): Problem {
  return { dtype: c.dtype, tA: c.layout[0] === 't', tB: c.layout[1] === 't', unaligned: !c.vec4 && c.dtype === 'f32', M: c.M, N: c.N, K: c.K, batch: c.batch };
}

function problemOfShape(s: MatmulShape): Problem {
  for (const [k, v] of [['M', s.M], ['N', s.N], ['K', s.K], ['batch', s.batch ?? 1]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`tuneMatmul: ${k} must be a positive integer, got ${v}`);
  }
  const dtype = s.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'f16') throw new TypeError(`tuneMatmul: dtype must be f32 or f16, got ${dtype}`);
  return { dtype, tA: !!s.transposeA, tB: !!s.transposeB, unaligned: s.aligned === false && dtype === 'f32', M: s.M, N: s.N, K: s.K, batch: s.batch ?? 1 };
}

/** The class matmul() will see for a problem (computed on views of a 1-element buffer: no upload). */
function classOfProblem(p: Problem): MatmulClass | null {
  // Only shapes and strides matter: zero-stride views of one element stand in for operands.
  const one = fromArray([0, 0, 0, 0, 0], [5], p.dtype);
  try {
    const bt = p.batch > 1 ? [p.batch] : [];
    const view = (shape: number[], skip: number) => {
      const strides = shape.map((_, i) => shape.slice(i + 1).reduce((x, y) => x * y, 1));
      return one.view(shape, strides, skip);
    };
    const a = view([...bt, ...(p.tA ? [p.K, p.M] : [p.M, p.K])], p.unaligned ? 1 : 0);
    const b = view([...bt, ...(p.tB ? [p.N, p.K] : [p.K, p.N])], 0);
    try {
      return matmulClassOf(a, b, { transposeA: p.tA, transposeB: p.tB });
    } finally {
      a.dispose();
      b.dispose();
    }
  } finally {
    one.dispose();
  }
}

async function tuneProblems(problems: Problem[], force: boolean): Promise<TuneResult[]> {
  if (!tuningEnabled()) return [];
  const path = tuningCachePath();
  const adapter = tuningAdapterKey();
  // Re-read the file: a deleted file re-tunes, another process's winners are reused.
  mem = { path, adapter, classes: winnersOf(readCache(path), adapter) };
  const results: TuneResult[] = [];
  const seen = new Set<string>();
  for (const p of problems) {
    const cls = classOfProblem(p);
    if (!cls) continue;
    const key = matmulClassKey(cls);
    if (seen.has(key)) continue;
    seen.add(key);
    pending.delete(key);
    const cached = mem.classes.get(key);
    if (cached && !force) {
      results.push({ classKey: key, kernel: cached, cached: true, candidates: {}, costMs: 0 });
      continue;
    }
    attempted.add(`${path}|${adapter}|${key}`);
    let tuned: Awaited<ReturnType<typeof tuneProblem>>;
    try {
      tuned = await tuneProblem(p, key, cls);
    } catch (e) {
      // Tuning itself failed (e.g. the operands do not fit): matmul keeps its default.
      console.warn(`retrv: matmul tuning of [${key}] failed (${(e as Error).message.split('\n')[0]}); using the default kernel`);
      results.push({ classKey: key, kernel: null, cached: false, candidates: {}, costMs: 0 });
      continue;
    }
    const { result, entry } = tuned;
    results.push(result);
    if (verbose()) process.stderr.write(`${describe(result)}\n`);
    if (!entry) {
      console.warn(`retrv: matmul tuning found no working candidate for [${key}]; using the default kernel`);
      continue;
    }
    mem.classes.set(key, entry.kernel as MatmulKernelName);
    try {
      saveEntries(path, adapter, { [key]: entry });
    } catch (e) {
      console.warn(`retrv: could not write the matmul tuning cache ${path}: ${(e as Error).message} (the winner is kept for this process)`);
    }
  }
  return results;
}

/**
 * Tunes the shape class of each matmul (A [M, K] or its transpose, B [K, N] or its
 * transpose) that the cache has no winner for, on this adapter, and writes the winners to
 * the cache. Submits and waits on the GPU: call it before a training loop (or between
 * steps), never while a step is being recorded. A no-op with RETRV_TUNE=0.
 * `force` re-tunes classes that are cached.
 */
export async function tuneMatmul(shapes: readonly MatmulShape[], opts: { force?: boolean } = {}): Promise<TuneResult[]> {
  return tuneProblems(shapes.map(problemOfShape), !!opts.force);
}

/**
 * Tunes the classes matmul() ran with the default kernel since the last tuning (for
 * example during a first training step), each timed at the size of the first call seen.
 */
export async function tunePending(): Promise<TuneResult[]> {
  const classes = [...pending.values()];
  pending.clear();
  return tuneProblems(classes.map(problemOfClass), false);
}
