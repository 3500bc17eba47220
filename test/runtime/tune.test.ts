// The matmul autotuner (runtime/tune.ts): the cache file is written, read back and honoured
// by matmul (a cached choice changes the kernel a call runs), a corrupt file is ignored with
// a warning, RETRV_TUNE=0 turns tuning and the cache off, deleting the file re-tunes, a
// candidate that fails its check is never chosen, pending classes from a first step are
// tuned by tunePending, and a tuned step still records without submitting.
// Every test uses a temporary cache path (RETRV_TUNING_CACHE).
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import * as T from '../../runtime/index.ts';
import { expectClose, randArray } from '../helpers.ts';

const saved = { cache: process.env.RETRV_TUNING_CACHE, tune: process.env.RETRV_TUNE, verbose: process.env.RETRV_VERBOSE };
let dir = '';
let path = '';

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'retrv-tune-'));
});
afterAll(() => {
  for (const [k, v] of [['RETRV_TUNING_CACHE', saved.cache], ['RETRV_TUNE', saved.tune], ['RETRV_VERBOSE', saved.verbose]] as const) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  T.resetTuning();
  T.tuningHooks.checkedOutput = undefined;
  rmSync(dir, { recursive: true, force: true });
});
let n = 0;
beforeEach(() => {
  // A fresh cache file per test; nothing remembered from the previous one.
  path = join(dir, `t${n++}`, 'tuning.json');
  process.env.RETRV_TUNING_CACHE = path;
  delete process.env.RETRV_TUNE;
  delete process.env.RETRV_VERBOSE;
  T.resetTuning();
});
afterEach(() => {
  vi.restoreAllMocks();
  T.tuningHooks.checkedOutput = undefined;
});

// A small class: A [M, K] @ B [K, N], vec4-aligned (K and N multiples of 4), M in 9-64.
const SHAPE = { M: 20, N: 36, K: 24 };

interface Cache {
  format: number;
  adapters: Record<string, { classes: Record<string, { kernel: string; candidates: Record<string, number | string> }> }>;
}
const readCache = () => JSON.parse(readFileSync(path, 'utf8')) as Cache;

/** Runs matmul on the class of SHAPE, checks the values, returns the kernel choice. */
async function runShape(shape = SHAPE): Promise<T.MatmulChoice> {
  const a = randArray(shape.M * shape.K, 1).map(Math.fround);
  const b = randArray(shape.K * shape.N, 2).map(Math.fround);
  const ref = new Float64Array(shape.M * shape.N);
  for (let i = 0; i < shape.M; i++) for (let k = 0; k < shape.K; k++) for (let j = 0; j < shape.N; j++) ref[i * shape.N + j] += a[i * shape.K + k] * b[k * shape.N + j];
  return T.tidyAsync(async () => {
    const y = T.matmul(T.fromArray(Float32Array.from(a), [shape.M, shape.K]), T.fromArray(Float32Array.from(b), [shape.K, shape.N]));
    const choice = T.lastMatmulChoice()!;
    expectClose(await y.toArray(), ref, 1e-5, 1e-5, `matmul with ${choice.kernel}`);
    return choice;
  });
}

/** The class key matmul computes for SHAPE. */
function keyOf(shape = SHAPE): string {
  return T.tidy(() => T.matmulClassKey(T.matmulClassOf(T.zeros([shape.M, shape.K]), T.zeros([shape.K, shape.N]))!));
}

/** Writes a cache file naming `kernel` for the class of SHAPE on this adapter. */
function writeChoice(kernel: string, key = keyOf()): void {
  const file = { format: 1, adapters: { [T.tuningAdapterKey()]: { classes: { [key]: { kernel, ms: 1, candidates: {}, timed: {}, tunedAt: '' } } } } };
  rmSync(path, { force: true });
  T.resetTuning();
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(file));
}

const sgOk = T.getEngine().ctx.hasSubgroups && ((T.getEngine().ctx.adapter.info as unknown as { subgroupMinSize?: number }).subgroupMinSize ?? 0) >= 8;
const defaultKernel = T.pickKernel(SHAPE.M, true);
// Two vec4-capable kernels that are never the default for this class, for forcing.
const otherA: T.MatmulKernelName = 'vec4-8x8';
const otherB: T.MatmulKernelName = sgOk ? 'sg-16x4' : 'vec4-4x4-r64';

describe('matmul autotuner', () => {
  it('writes the winner to the cache file, reads it back, and matmul uses it', async () => {
    expect(existsSync(path)).toBe(false);
    const [r] = await T.tuneMatmul([SHAPE]);
    expect(r.classKey).toBe(keyOf());
    expect(r.cached).toBe(false);
    expect(r.kernel).not.toBeNull();
    // Every runnable candidate was considered; the winner was timed.
    expect(Object.keys(r.candidates).sort()).toEqual(T.matmulCandidates(T.tidy(() => T.matmulClassOf(T.zeros([20, 24]), T.zeros([24, 36]))!)).sort());
    expect(typeof r.candidates[r.kernel!]).toBe('number');

    const file = readCache();
    expect(file.format).toBe(1);
    const entry = file.adapters[T.tuningAdapterKey()].classes[r.classKey];
    expect(entry.kernel).toBe(r.kernel);

    // Read back by a fresh process state: no tuning, the same winner.
    T.resetTuning();
    const [again] = await T.tuneMatmul([{ ...SHAPE, M: 33 }]); // same class (M 9-64)
    expect(again).toMatchObject({ classKey: r.classKey, kernel: r.kernel, cached: true, costMs: 0 });
    const choice = await runShape();
    expect(choice).toMatchObject({ kernel: r.kernel, source: 'tuned', classKey: r.classKey });
  });

  it('honours a cached choice: changing the file changes the kernel a call runs', async () => {
    expect((await runShape()).kernel).toBe(defaultKernel);
    expect(T.lastMatmulChoice()!.source).toBe('default');
    writeChoice(otherA);
    expect(await runShape()).toMatchObject({ kernel: otherA, source: 'tuned' });
    writeChoice(otherB);
    expect(await runShape()).toMatchObject({ kernel: otherB, source: 'tuned' });
    // A forced kernel wins over the cache.
    T.tidy(() => T.matmul(T.zeros([20, 24]), T.zeros([24, 36]), { kernel: 'scalar-4x4' }));
    expect(T.lastMatmulChoice()).toMatchObject({ kernel: 'scalar-4x4', source: 'forced' });
  });

  it('ignores cached kernels that are unknown or cannot run the call', async () => {
    writeChoice('no-such-kernel');
    expect(await runShape()).toMatchObject({ kernel: defaultKernel, source: 'default' });
    // A vec4 kernel recorded for a class whose layout it cannot read (odd K: 'any' class).
    const odd = { M: 20, N: 36, K: 23 };
    writeChoice('vec4-8x8', keyOf(odd));
    const c = await runShape(odd);
    expect(c.source).toBe('default');
    expect(c.kernel).toBe(T.pickKernel(20, false));
  });

  it('ignores a corrupt cache file with a warning, then replaces it when tuning', async () => {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, '{"format": 1, "adapters": {"x": '); // truncated JSON
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
    expect(await runShape()).toMatchObject({ kernel: defaultKernel, source: 'default' });
    expect(warn).toHaveBeenCalledTimes(1);
    expect(String(warn.mock.calls[0][0])).toContain(path);
    expect(String(warn.mock.calls[0][0])).toContain('not valid JSON');
    await runShape(); // warned once, not per call
    expect(warn).toHaveBeenCalledTimes(1);

    // Valid JSON of the wrong shape is ignored too.
    writeFileSync(path, JSON.stringify({ format: 1, adapters: { a: 3 } }));
    T.resetTuning();
    expect((await runShape()).source).toBe('default');
    expect(warn).toHaveBeenCalledTimes(2);

    const [r] = await T.tuneMatmul([SHAPE]);
    expect(r.cached).toBe(false);
    expect(readCache().adapters[T.tuningAdapterKey()].classes[r.classKey].kernel).toBe(r.kernel);
  });

  it('RETRV_TUNE=0 disables tuning and the cache', async () => {
    writeChoice(otherA);
    process.env.RETRV_TUNE = '0';
    expect(await runShape()).toMatchObject({ kernel: defaultKernel, source: 'default' });
    rmSync(path);
    expect(await T.tuneMatmul([SHAPE])).toEqual([]);
    expect(T.pendingMatmulClasses()).toEqual([]);
    expect(await T.tunePending()).toEqual([]);
    expect(existsSync(path)).toBe(false);
  });

  it('re-tunes after the file is deleted', async () => {
    const [r1] = await T.tuneMatmul([SHAPE]);
    expect(r1.cached).toBe(false);
    expect((await T.tuneMatmul([SHAPE]))[0].cached).toBe(true);
    rmSync(path);
    const [r2] = await T.tuneMatmul([SHAPE]);
    expect(r2.cached).toBe(false);
    expect(existsSync(path)).toBe(true);
  });

  it('never chooses a candidate whose result fails the check', async () => {
    // Corrupt one entry of the default kernel's output (which would otherwise often win).
    T.tuningHooks.checkedOutput = (kernel, out) => {
      if (kernel === defaultKernel) out[out.length - 1] += 0.5;
    };
    const [r] = await T.tuneMatmul([SHAPE]);
    expect(String(r.candidates[defaultKernel])).toMatch(/^failed check: C\[/);
    expect(r.kernel).not.toBeNull();
    expect(r.kernel).not.toBe(defaultKernel);
    // Every candidate failing: nothing is cached and matmul keeps the default.
    T.tuningHooks.checkedOutput = (_k, out) => {
      out[0] = NaN;
    };
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
    const odd = { M: 5, N: 7, K: 9 };
    const [none] = await T.tuneMatmul([odd]);
    expect(none.kernel).toBeNull();
    expect(warn).toHaveBeenCalled();
    expect(readCache().adapters[T.tuningAdapterKey()].classes[none.classKey]).toBeUndefined();
    T.tuningHooks.checkedOutput = undefined;
    expect((await runShape(odd)).source).toBe('default');
  });

  it('tunes the classes a first step used (tunePending); later steps record without submitting', async () => {
    process.env.RETRV_VERBOSE = '1';
    const lines: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (lines.push(String(s)), true));
    // The layout of SHAPE (nn, vec4): the pipelines are compiled already (cold compiles on
    // lavapipe cost seconds each).
    const x = T.fromArray(Float32Array.from(randArray(12 * 16, 3)), [12, 16]);
    const w = T.fromArray(Float32Array.from(randArray(16 * 20, 4)), [16, 20]);
    const step = () => T.tidy(() => T.matmul(x, w).dispose());
    step(); // first step: default kernel, class noted
    const key = T.lastMatmulChoice()!.classKey;
    expect(T.lastMatmulChoice()!.source).toBe('default');
    expect(T.pendingMatmulClasses()).toContain(key);
    const results = await T.tunePending();
    expect(results.map((r) => r.classKey)).toContain(key);
    expect(T.pendingMatmulClasses()).toEqual([]);
    // The cost is printed once per class.
    expect(lines.filter((l) => l.includes('tuned matmul class') && l.includes(key))).toHaveLength(1);
    await T.tunePending();
    await T.tuneMatmul([{ M: 12, N: 20, K: 16 }]);
    expect(lines.filter((l) => l.includes('tuned matmul class'))).toHaveLength(1);

    await T.getEngine().sync();
    const before = T.stats().submits;
    for (let i = 0; i < 3; i++) step();
    expect(T.lastMatmulChoice()!.source).toBe('tuned');
    expect(T.stats().submits).toBe(before);
    x.dispose();
    w.dispose();
  });

  it('checks and times the split-K variants on a skinny class; matmul runs a cached split-K winner', async () => {
    // dW-like: few rows, long K (vec4-aligned, nn).
    const skinny = { M: 16, N: 64, K: 1024 };
    const cls = T.tidy(() => T.matmulClassOf(T.zeros([skinny.M, skinny.K]), T.zeros([skinny.K, skinny.N]))!);
    const split = T.matmulCandidates(cls).filter((k) => k.startsWith('splitk'));
    expect(split.length).toBeGreaterThanOrEqual(4);
    // Every split-K candidate's output is checked; a corrupted one fails and is never chosen.
    const checked = new Set<string>();
    T.tuningHooks.checkedOutput = (kernel, out) => {
      checked.add(kernel);
      if (kernel === split[0]) out[5] += 0.25;
    };
    const [r] = await T.tuneMatmul([skinny]);
    expect(r.classKey).toBe(keyOf(skinny));
    for (const k of split) expect(checked.has(k)).toBe(true);
    expect(String(r.candidates[split[0]])).toMatch(/^failed check: C\[/);
    expect(r.kernel).not.toBe(split[0]);
    for (const k of split.slice(1)) expect(String(r.candidates[k])).toMatch(/^(\d|pruned)/);
    T.tuningHooks.checkedOutput = undefined;
    // A split-K winner in the cache is what matmul runs for the class, with correct values.
    writeChoice(split[1], keyOf(skinny));
    expect(await runShape(skinny)).toMatchObject({ kernel: split[1], source: 'tuned' });
    // A cached split-K choice for a class it is not offered for (SHAPE: K 24) still runs
    // correctly: it is only left out of tuning there, not refused.
    writeChoice(split[1], keyOf());
    expect(await runShape()).toMatchObject({ kernel: split[1], source: 'tuned' });
  });

  it('rejects bad shapes', async () => {
    await expect(T.tuneMatmul([{ M: 0, N: 4, K: 4 }])).rejects.toThrow(/M must be a positive integer, got 0/);
    await expect(T.tuneMatmul([{ M: 4, N: 4, K: 4, dtype: 'i32' as 'f32' }])).rejects.toThrow(/dtype must be f32 or f16/);
  });
});
