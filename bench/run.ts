// Benchmark runner: `npm run bench [-- flags]` (see bench/README.md).
//
// Loads every suite in bench/suites/ (files not starting with '_'), and for each case:
// setup → check against a float64 CPU reference → one warm-up run → timing with benny →
// teardown. A case whose library/op is missing is skipped with the reason; one whose
// output is wrong is reported as failed and not timed. Results go to
// bench/results/<timestamp>.json; a table is printed last.
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, platform, release } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import b from 'benny';
import { init, lastMatmulChoice, tunePending } from '../runtime/index.ts';
import { ortVersion, ortWebgpuPlacement } from './peers/ort.ts';
import { type BenchCase, type CheckReport, CheckFailed, Skip, type Suite, type SuiteOptions, type Work } from './suites/_lib.ts';

const here = dirname(fileURLToPath(import.meta.url));
const SUITE_ORDER = ['matmul', 'softmax', 'rmsnorm', 'attention', 'fused', 'train', 'train-presets', 'model'];

const HELP = `usage: npm run bench -- [flags]
  --quick              small shapes (matmul 256,512), shorter timing (max-time 1 s, min-samples 3)
  --sizes 256,512,...  square matmul sizes (default 256,512,1024,2048)
  --suite a,b          suites to run (default all: ${SUITE_ORDER.join(', ')})
  --lib a,b            libraries to run (retrv, retrv+io, tfjs-webgpu, ort-webgpu, ort-cpu; suite fused: fused, unfused)
  --max-time S         benny: seconds of sampling per case (default 5)
  --min-samples N      benny: at least N samples per case (default 5)
  --tune               tune retrv's matmul classes each case uses (after its check, before timing;
                       the winner is cached per adapter, see runtime/tune.ts)
  --timeout S          give up when one setup/check/run/teardown call takes longer (default 300)
  --out FILE           JSON path (default bench/results/<timestamp>.json)`;

/** A mistake in the command line: printed without a stack. */
class UsageError extends Error {}

interface Flags extends SuiteOptions {
  suites: string[] | null;
  libs: string[] | null;
  tune: boolean;
  maxTime: number;
  minSamples: number;
  timeout: number;
  out: string | null;
}

function parseFlags(argv: string[]): Flags {
  const f: Flags = { quick: false, sizes: [256, 512, 1024, 2048], suites: null, libs: null, tune: false, maxTime: 5, minSamples: 5, timeout: 300, out: null };
  let sizesGiven = false;
  let maxTimeGiven = false;
  let minSamplesGiven = false;
  const list = (v: string | undefined, flag: string) => {
    if (!v || v.startsWith('--')) throw new UsageError(`${flag} needs a value\n${HELP}`);
    return v.split(',').map((s) => s.trim()).filter(Boolean);
  };
  const num = (v: string | undefined, flag: string, int: boolean) => {
    const x = Number(v);
    if (!Number.isFinite(x) || x <= 0 || (int && !Number.isInteger(x))) throw new UsageError(`${flag} needs a positive ${int ? 'integer' : 'number'}, got '${v}'`);
    return x;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case '--quick':
        f.quick = true;
        break;
      case '--tune':
        f.tune = true;
        break;
      case '--sizes':
        f.sizes = list(value(), flag).map((s) => num(s, flag, true));
        sizesGiven = true;
        break;
      case '--suite':
      case '--suites':
        f.suites = list(value(), flag);
        break;
      case '--lib':
      case '--libs':
        f.libs = list(value(), flag);
        break;
      case '--max-time':
        f.maxTime = num(value(), flag, false);
        maxTimeGiven = true;
        break;
      case '--min-samples':
        f.minSamples = num(value(), flag, true);
        minSamplesGiven = true;
        break;
      case '--timeout':
        f.timeout = num(value(), flag, false);
        break;
      case '--out': {
        const v = value();
        if (!v || v.startsWith('--')) throw new UsageError(`--out needs a file path\n${HELP}`);
        f.out = v;
        break;
      }
      case '-h':
      case '--help':
        console.log(HELP);
        process.exit(0);
        break;
      default:
        throw new UsageError(`unknown flag '${a}'\n${HELP}`);
    }
  }
  if (f.quick) {
    if (!sizesGiven) f.sizes = [256, 512];
    if (!maxTimeGiven) f.maxTime = 1;
    if (!minSamplesGiven) f.minSamples = 3;
  }
  return f;
}

async function loadSuites(only: string[] | null): Promise<Suite[]> {
  const dir = join(here, 'suites');
  const files = readdirSync(dir).filter((n) => n.endsWith('.ts') && !n.startsWith('_'));
  const suites: Suite[] = [];
  for (const file of files) {
    const mod = (await import(pathToFileURL(join(dir, file)).href)) as { default?: Suite };
    const s = mod.default;
    if (!s || typeof s.cases !== 'function') throw new Error(`bench/suites/${file} does not default-export a suite { name, describe, cases }`);
    suites.push(s);
  }
  if (only) {
    const unknown = only.filter((n) => !suites.some((s) => s.name === n));
    if (unknown.length) throw new UsageError(`unknown suite(s) ${unknown.join(', ')}; have ${suites.map((s) => s.name).join(', ')}`);
  }
  const rank = (n: string) => (SUITE_ORDER.includes(n) ? SUITE_ORDER.indexOf(n) : SUITE_ORDER.length);
  return suites.filter((s) => !only || only.includes(s.name)).sort((x, y) => rank(x.name) - rank(y.name) || x.name.localeCompare(y.name));
}

type Status = 'ok' | 'skipped' | 'failed' | 'error';

interface Timing {
  samples: number;
  meanMs: number;
  medianMs: number;
  minMs: number;
  maxMs: number;
  /** Relative margin of error of the mean (95%), in percent. */
  rmePct: number;
  opsPerSec: number;
}

interface CaseResult {
  suite: string;
  case: string;
  library: string;
  params: Record<string, number | string | boolean>;
  work: Work;
  status: Status;
  message?: string;
  /** A call exceeded --timeout; nothing ran after this case. */
  hung?: boolean;
  check?: CheckReport;
  timing?: Timing;
  /** work.flops / mean time, in 1e9 per second. */
  gflops?: number;
  /** work.bytes / mean time, in 1e9 per second. */
  gbps?: number;
  /** With --tune: the matmul classes tuned for this case and their winners. */
  tuned?: { classKey: string; kernel: string | null; candidates: Record<string, number | string> }[];
  /** retrv matmul cases: the kernel the timed runs used and why (tuned or default). */
  kernel?: { kernel: string; source: string; classKey: string };
  /** Model FLOPs utilisation: gflops over the GFLOP/s of the case named by params.mfuReference. */
  mfu?: number;
}

/**
 * A call that did not settle within --timeout. The device may still be busy with it (a
 * runaway shader cannot be cancelled), so the runner stops after reporting it.
 */
class Hung extends Error {}

function watch<T>(p: Promise<T>, what: string, seconds: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Hung(`${what} did not finish within ${seconds} s (--timeout); stopped the run here`)), seconds * 1e3);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

/** Times c.run() with benny. Samples never overlap, and a rejected run is reported, not hung on. */
async function time(c: BenchCase, flags: Flags): Promise<Timing> {
  let failure: unknown = null;
  let chain: Promise<void> = Promise.resolve();
  // benny calls the test once while preparing without awaiting it; the chain keeps that run
  // and every sample strictly one after another.
  const sample = () =>
    (chain = chain
      .then(() => (failure ? undefined : watch(c.run(), 'run()', flags.timeout)))
      .catch((e) => {
        failure ??= e;
      }));
  const summary = await b.suite(
    `${c.name} [${c.library}]`,
    b.add(c.library, sample, { minSamples: flags.minSamples, maxTime: flags.maxTime, initCount: 1 }),
  );
  await chain;
  if (failure) throw failure;
  const d = summary.results[0].details;
  return {
    samples: summary.results[0].samples,
    meanMs: d.mean * 1e3,
    medianMs: d.median * 1e3,
    minMs: d.min * 1e3,
    maxMs: d.max * 1e3,
    rmePct: d.relativeMarginOfError,
    opsPerSec: 1 / d.mean,
  };
}

async function runCase(suite: Suite, c: BenchCase, flags: Flags): Promise<CaseResult> {
  const r: CaseResult = { suite: suite.name, case: c.name, library: c.library, params: c.params, work: c.work, status: 'ok' };
  try {
    await watch(c.setup(), 'setup()', flags.timeout);
    try {
      r.check = await watch(c.check(), 'check()', flags.timeout);
    } catch (e) {
      if (e instanceof CheckFailed || e instanceof Skip || e instanceof Hung) throw e;
      throw new CheckFailed(`check threw: ${(e as Error).message}`);
    }
    if (flags.tune && c.library.startsWith('retrv')) {
      // Classes the check ran with the default kernel; re-check with the winners.
      const tuned = await watch(tunePending(), 'tuning', flags.timeout);
      if (tuned.length) {
        r.tuned = tuned.map((t) => ({ classKey: t.classKey, kernel: t.kernel, candidates: t.candidates }));
        r.check = await watch(c.check(), 'check() after tuning', flags.timeout);
      }
    }
    await watch(c.run(), 'warm-up run()', flags.timeout);
    // Which kernel a plain matmul case runs (tuned winner or default).
    if (/^matmul \d/.test(c.name) && c.library === 'retrv') r.kernel = lastMatmulChoice() ?? undefined;
    r.timing = await time(c, flags);
    const sec = r.timing.meanMs / 1e3;
    if (c.work.flops) r.gflops = c.work.flops / sec / 1e9;
    if (c.work.bytes) r.gbps = c.work.bytes / sec / 1e9;
  } catch (e) {
    r.status = e instanceof Skip ? 'skipped' : e instanceof CheckFailed ? 'failed' : 'error';
    r.message = (e as Error).message ?? String(e);
    if (e instanceof Hung) r.hung = true;
  } finally {
    try {
      // After a hang the device is still busy: freeing would wait on it too.
      if (!r.hung) await watch(c.teardown(), 'teardown()', flags.timeout);
    } catch (e) {
      if (r.status === 'ok') {
        r.status = 'error';
        r.message = `teardown: ${(e as Error).message}`;
      }
    }
  }
  return r;
}

function packageVersion(name: string): string | null {
  try {
    const req = createRequire(import.meta.url);
    return (req(`${name}/package.json`) as { version: string }).version;
  } catch {
    return null;
  }
}

function fmt(x: number | undefined, digits = 2): string {
  if (x === undefined || !Number.isFinite(x)) return '';
  if (x >= 1000) return x.toFixed(0);
  if (x >= 100) return x.toFixed(1);
  return x.toFixed(digits);
}

function table(results: CaseResult[]): string {
  // Speed relative to the fastest ok library on the same case.
  const best = new Map<string, number>();
  for (const r of results) if (r.timing) best.set(r.case, Math.min(best.get(r.case) ?? Infinity, r.timing.meanMs));
  const head = ['suite', 'case', 'library', 'status', 'mean ms', '±%', 'median ms', 'n', 'GFLOP/s', 'GB/s', 'vs best', 'note'];
  const rows = results.map((r) => [
    r.suite,
    r.case,
    r.library,
    r.status,
    fmt(r.timing?.meanMs, 3),
    r.timing ? r.timing.rmePct.toFixed(1) : '',
    fmt(r.timing?.medianMs, 3),
    r.timing ? String(r.timing.samples) : '',
    fmt(r.gflops),
    fmt(r.gbps),
    r.timing ? `${(best.get(r.case)! / r.timing.meanMs).toFixed(2)}x` : '',
    (r.message ?? r.check?.note ?? '').replace(/\s+/g, ' ').slice(0, 90),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const numeric = new Set([4, 5, 6, 7, 8, 9, 10]);
  const line = (cells: string[]) => cells.map((c, i) => (numeric.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** One fused kernel against its unfused composition (suite 'fused'): time ratio and memory. */
interface Speedup {
  case: string;
  fusedMs: number;
  unfusedMs: number;
  /** unfused mean time / fused mean time. */
  speedup: number;
  fusedPeakBytes?: number;
  unfusedPeakBytes?: number;
  /** Peak minus the bytes live before the call (output and temporaries). */
  fusedExtraBytes?: number;
  unfusedExtraBytes?: number;
}

/** Pairs the 'fused' and 'unfused' results of each case (bench/suites/fused.ts). */
function speedups(results: CaseResult[]): Speedup[] {
  const out: Speedup[] = [];
  const mem = (r: CaseResult, k: 'peakBytes' | 'extraBytes') => (r.check as (CheckReport & Partial<Record<typeof k, number>>) | undefined)?.[k];
  for (const f of results) {
    if (f.library !== 'fused' || !f.timing) continue;
    const u = results.find((r) => r.suite === f.suite && r.case === f.case && r.library === 'unfused');
    if (!u?.timing) continue;
    out.push({
      case: f.case,
      fusedMs: f.timing.meanMs,
      unfusedMs: u.timing.meanMs,
      speedup: u.timing.meanMs / f.timing.meanMs,
      fusedPeakBytes: mem(f, 'peakBytes'),
      unfusedPeakBytes: mem(u, 'peakBytes'),
      fusedExtraBytes: mem(f, 'extraBytes'),
      unfusedExtraBytes: mem(u, 'extraBytes'),
    });
  }
  return out;
}

function speedupTable(rows: Speedup[]): string {
  const mib = (b: number | undefined) => (b === undefined ? '' : (b / 2 ** 20).toFixed(2));
  const head = ['case', 'fused ms', 'unfused ms', 'speedup', 'fused peak MiB', 'unfused peak MiB', 'fused +MiB', 'unfused +MiB'];
  const cells = rows.map((r) => [r.case, fmt(r.fusedMs, 3), fmt(r.unfusedMs, 3), `${r.speedup.toFixed(2)}x`, mib(r.fusedPeakBytes), mib(r.unfusedPeakBytes), mib(r.fusedExtraBytes), mib(r.unfusedExtraBytes)]);
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) => c.map((x, i) => (i === 0 ? x.padEnd(widths[i]) : x.padStart(widths[i]))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line)].join('\n');
}

async function main(): Promise<void> {
  const flags = parseFlags(process.argv.slice(2));
  const ctx = await init();
  console.log(`adapter: ${ctx.description}`);
  const suites = await loadSuites(flags.suites);
  const planned = suites.map((s) => ({ suite: s, cases: s.cases(flags) }));
  if (flags.libs) {
    const known = new Set(planned.flatMap((p) => p.cases.map((c) => c.library)));
    const unknown = flags.libs.filter((l) => !known.has(l));
    if (unknown.length) throw new UsageError(`unknown librar${unknown.length > 1 ? 'ies' : 'y'} ${unknown.join(', ')}; the chosen suites have ${[...known].join(', ')}`);
  }
  const results: CaseResult[] = [];
  const started = new Date();
  let hung = false;
  outer: for (const { suite, cases: all } of planned) {
    const cases = all.filter((c) => !flags.libs || flags.libs.includes(c.library));
    for (const c of cases) {
      const r = await runCase(suite, c, flags);
      results.push(r);
      const what = `${r.case} [${r.library}]`;
      if (r.timing) {
        const rate = r.gflops !== undefined ? `${fmt(r.gflops)} GFLOP/s` : r.gbps !== undefined ? `${fmt(r.gbps)} GB/s` : '';
        console.log(`  ${what}: ${fmt(r.timing.meanMs, 3)} ms ±${r.timing.rmePct.toFixed(1)}% (${r.timing.samples} samples) ${rate}`);
      } else console.log(`  ${what}: ${r.status}: ${r.message}`);
      if (r.hung) {
        hung = true;
        break outer;
      }
    }
  }

  for (const r of results) {
    const ref = r.params.mfuReference;
    const base = typeof ref === 'string' ? results.find((x) => x.suite === r.suite && x.case === ref && x.gflops) : undefined;
    if (base?.gflops && r.gflops) r.mfu = r.gflops / base.gflops;
  }

  // Whether onnxruntime's WebGPU EP exists in this build and takes MatMul (probed once).
  const ortWebgpu = suites.some((s) => s.name === 'matmul') ? await ortWebgpuPlacement() : 'not probed';
  const report = {
    date: started.toISOString(),
    durationS: (Date.now() - started.getTime()) / 1e3,
    /** True when a call hung and the cases after it were not run. */
    partial: hung,
    argv: process.argv.slice(2),
    options: flags,
    adapter: {
      description: ctx.description,
      info: ctx.info,
      features: [...ctx.features].sort(),
      isSoftware: ctx.isSoftware,
    },
    host: { node: process.version, platform: `${platform()} ${release()}`, cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length },
    libraries: {
      retrv: packageVersion('webgpu') ? `working tree (webgpu ${packageVersion('webgpu')})` : 'working tree',
      'tfjs-webgpu': { core: packageVersion('@tensorflow/tfjs-core'), backend: packageVersion('@tensorflow/tfjs-backend-webgpu') },
      'onnxruntime-node': { version: ortVersion, webgpuEpPlacement: ortWebgpu },
    },
    suites: suites.map((s) => ({ name: s.name, describe: s.describe })),
    results,
    /** Suite 'fused': unfused / fused time per case, with each form's peak memory. */
    speedups: speedups(results),
  };
  const out = flags.out ? resolve(flags.out) : join(here, 'results', `${started.toISOString().replace(/[:.]/g, '-')}.json`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`\nresults: ${out}`);
  console.log(`adapter: ${ctx.description}\n`);
  console.log(table(results));
  if (report.speedups.length) {
    console.log('\nfused kernels vs their unfused compositions (speedup = unfused / fused mean time; +MiB = peak over the live inputs):\n');
    console.log(speedupTable(report.speedups));
  }
  const mfuRows = results.filter((r) => r.mfu !== undefined);
  if (mfuRows.length) {
    console.log('\nmodel FLOPs utilisation (model GFLOP/s over the measured matmul rate in this run):\n');
    for (const r of mfuRows) {
      const tokS = typeof r.params.tokens === 'number' && r.timing ? (r.params.tokens * 1e3) / r.timing.meanMs : NaN;
      console.log(`  ${r.case}: ${fmt(tokS, 0)} tokens/s, ${fmt(r.gflops)} GFLOP/s, MFU ${(100 * r.mfu!).toFixed(1)}% of ${r.params.mfuReference}`);
    }
  }
  if (hung) process.exitCode = 1;
}

main().then(
  () => process.exit(process.exitCode ?? 0),
  (e) => {
    console.error(e instanceof UsageError ? e.message : e instanceof Error ? (e.stack ?? e.message) : e);
    process.exit(1);
  },
);
