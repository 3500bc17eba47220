// Optimizers, gradient clipping and schedules against float64 CPU references.
// Parameters and gradients are generated as f32 values, so the reference starts from
// exactly what the GPU sees; the remaining differences are f32 rounding in the kernels.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import * as T from '../../runtime/index.ts';
import { expectClose, prod, randArray } from '../helpers.ts';

const f32 = (a: Float64Array) => Float64Array.from(a, Math.fround);

/** A leaf parameter outside every scope, with its float64 copy. */
function param(shape: readonly number[], seed: number, name?: string): { t: T.Tensor; ref: Float64Array } {
  const ref = f32(randArray(prod(shape), seed));
  const t = T.keep(T.requireGrad(T.fromArray(Float32Array.from(ref), shape)));
  if (name) t.name = name;
  return { t, ref };
}

function setGrad(p: T.Tensor, g: Float64Array | null): void {
  p.grad?.dispose();
  p.grad = g ? T.keep(T.fromArray(Float32Array.from(g), p.shape)) : null;
}

function free(...ts: T.Tensor[]): void {
  for (const t of ts) t.dispose();
}

interface AdamRef {
  m: Float64Array;
  v: Float64Array;
  t: number;
}

/** torch.optim.AdamW, one parameter, float64. */
function adamwRef(p: Float64Array, g: Float64Array, s: AdamRef, lr: number, b1: number, b2: number, eps: number, wd: number): void {
  s.t++;
  const bc1 = 1 - b1 ** s.t;
  const bc2 = 1 - b2 ** s.t;
  for (let i = 0; i < p.length; i++) {
    p[i] *= 1 - lr * wd;
    s.m[i] = b1 * s.m[i] + (1 - b1) * g[i];
    s.v[i] = b2 * s.v[i] + (1 - b2) * g[i] * g[i];
    p[i] -= (lr * (s.m[i] / bc1)) / (Math.sqrt(s.v[i] / bc2) + eps);
  }
}

/** torch.optim.SGD, one parameter, float64; buf null before the first step. */
function sgdRef(p: Float64Array, g: Float64Array, buf: { b: Float64Array | null }, lr: number, mom: number, damp: number, nesterov: boolean, wd: number): void {
  const d = Float64Array.from(g, (x, i) => x + wd * p[i]);
  if (mom > 0) {
    if (!buf.b) buf.b = Float64Array.from(d);
    else for (let i = 0; i < d.length; i++) buf.b[i] = mom * buf.b[i] + (1 - damp) * d[i];
    for (let i = 0; i < d.length; i++) d[i] = nesterov ? d[i] + mom * buf.b[i] : buf.b[i];
  }
  for (let i = 0; i < p.length; i++) p[i] -= lr * d[i];
}

// Shapes: size 1, odd sizes, a size-0 tensor, and sizes crossing the 256-wide workgroup.
const shapeArb = fc.constantFrom([1], [37], [5, 7], [300], [2, 131], [0], [3, 1, 4]);

// Every case runs on each random draw of shapes: weight decay on/off, eps that matters, betas.
const ADAM_CASES = [
  { lr: 1e-3, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0 },
  { lr: 3e-2, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.1 },
  { lr: 0.1, b1: 0.5, b2: 0.95, eps: 1e-3, wd: 0.1 },
];

async function adamCase(shapes: (readonly number[])[], h: (typeof ADAM_CASES)[number], seed: number): Promise<void> {
  const ps = shapes.map((s, i) => param(s, seed + i));
  const opt = new T.AdamW(ps.map((p) => p.t), { lr: h.lr, betas: [h.b1, h.b2], eps: h.eps, weightDecay: h.wd });
  const refs: AdamRef[] = ps.map((p) => ({ m: new Float64Array(p.ref.length), v: new Float64Array(p.ref.length), t: 0 }));
  for (let step = 0; step < 4; step++) {
    const lr = h.lr * (1 - 0.2 * step);
    ps.forEach((p, i) => {
      // Parameter 0 has no gradient on step 1: skipped, its own step count lags.
      const g = i === 0 && step === 1 ? null : f32(randArray(p.ref.length, seed * 31 + step * 7 + i, -2, 2));
      setGrad(p.t, g);
      if (g) adamwRef(p.ref, g, refs[i], lr, h.b1, h.b2, h.eps, h.wd);
    });
    opt.step({ lr });
  }
  expect(opt.stepCount).toBe(4);
  expect(opt.paramStep(0)).toBe(3);
  for (const [i, p] of ps.entries()) {
    expectClose(await p.t.toArray(), p.ref, 1e-6, 1e-6, `param ${i} ${T.shapeStr(p.t.shape)}`);
    if (p.ref.length) {
      const sd = opt.stateDict();
      expectClose(await sd[`param${i}.exp_avg`].toArray(), refs[i].m, 1e-6, 1e-5, `exp_avg ${i}`);
      expectClose(await sd[`param${i}.exp_avg_sq`].toArray(), refs[i].v, 1e-7, 1e-5, `exp_avg_sq ${i}`);
      free(...Object.values(sd));
    }
  }
  opt.dispose();
  free(...ps.map((p) => p.t));
}

describe('AdamW', () => {
  it('matches a float64 AdamW over several steps (weight decay, bias correction, skipped params, lr per step)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(shapeArb, { minLength: 1, maxLength: 3 }),
        fc.integer({ min: 1, max: 1000 }),
        async (shapes, seed) => {
          for (const h of ADAM_CASES) await adamCase(shapes, h, seed);
        },
      ),
      { numRuns: 4 },
    );
  });

  it('multiplies gradients by gradScale inside the fused update, and param groups set their own weight decay', async () => {
    const a = param([50], 3, 'a');
    const b = param([7], 4, 'b');
    const opt = new T.AdamW([{ params: [a.t], weightDecay: 0.2 }, { params: [b.t], weightDecay: 0 }], { lr: 0.05 });
    const sa: AdamRef = { m: new Float64Array(50), v: new Float64Array(50), t: 0 };
    const sb: AdamRef = { m: new Float64Array(7), v: new Float64Array(7), t: 0 };
    const scale = T.fromArray([0.25], [1]);
    for (let step = 0; step < 3; step++) {
      const ga = f32(randArray(50, 10 + step));
      const gb = f32(randArray(7, 20 + step));
      setGrad(a.t, ga);
      setGrad(b.t, gb);
      opt.step({ gradScale: scale });
      adamwRef(a.ref, ga.map((x) => x * 0.25), sa, 0.05, 0.9, 0.999, 1e-8, 0.2);
      adamwRef(b.ref, gb.map((x) => x * 0.25), sb, 0.05, 0.9, 0.999, 1e-8, 0);
    }
    expectClose(await a.t.toArray(), a.ref, 1e-6, 1e-6, 'a');
    expectClose(await b.t.toArray(), b.ref, 1e-6, 1e-6, 'b');
    opt.dispose();
    free(a.t, b.t, scale);
  });

  // RETRV_DEBUG submits after every dispatch, so the submit count only holds without it.
  it.skipIf(T.debugMode)('records one dispatch per parameter with a gradient, and no submit or readback', async () => {
    const ps = [param([40], 1), param([3, 3], 2), param([5], 3)];
    const opt = new T.AdamW(ps.map((p) => p.t));
    setGrad(ps[0].t, f32(randArray(40, 5)));
    setGrad(ps[1].t, f32(randArray(9, 6)));
    await ps[0].t.grad!.toArray(); // settle uploads
    const before = T.stats();
    opt.step();
    opt.step();
    const after = T.stats();
    // The first step without gradScale also fills the kept 1.0 scale (one dispatch, once).
    expect(after.dispatches - before.dispatches).toBe(2 * 2 + 1);
    expect(after.submits).toBe(before.submits);
    expect(after.readbacks).toBe(before.readbacks);
    expect(after.uploads).toBe(before.uploads);
    opt.dispose();
    free(...ps.map((p) => p.t));
  });

  it('state survives a checkpoint round trip: the resumed optimizer takes bit-identical steps', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrv-optim-'));
    try {
      const a = param([33], 7, 'w');
      const b = param([4, 5], 8, 'bias');
      const a2 = param([33], 7, 'w');
      const b2 = param([4, 5], 8, 'bias');
      const opt = new T.AdamW([a.t, b.t], { lr: 0.01, weightDecay: 0.05 });
      const grads = [0, 1, 2, 3].map((s) => [f32(randArray(33, 40 + s)), f32(randArray(20, 50 + s))]);
      // Two steps on the first copy; b has no gradient on the first one.
      setGrad(a.t, grads[0][0]);
      opt.step();
      setGrad(a.t, grads[1][0]);
      setGrad(b.t, grads[1][1]);
      opt.step();
      await T.tidyAsync(() => T.saveSafetensors(join(dir, 'opt.safetensors'), opt.stateDict(), { kind: 'adamw' }));
      // Bring the second copy of the parameters to the same values, then resume.
      await T.tidyAsync(async () => {
        for (const [src, dst] of [[a.t, a2.t], [b.t, b2.t]]) {
          const v = await src.toArray();
          T.getEngine().copy(T.fromArray(v, src.shape).buf, 0, dst.buf, 0, v.byteLength);
        }
      });
      const opt2 = new T.AdamW([a2.t, b2.t], { lr: 0.01, weightDecay: 0.05 });
      await T.tidyAsync(async () => {
        const { tensors, metadata } = await T.loadSafetensors(join(dir, 'opt.safetensors'));
        expect(metadata).toEqual({ kind: 'adamw' });
        expect(Object.keys(tensors).sort()).toEqual(['bias.exp_avg', 'bias.exp_avg_sq', 'param_steps', 'step', 'w.exp_avg', 'w.exp_avg_sq']);
        await opt2.loadStateDict(tensors);
      });
      expect(opt2.stepCount).toBe(2);
      expect(opt2.paramStep(0)).toBe(2);
      expect(opt2.paramStep(1)).toBe(1);
      for (const s of [2, 3]) {
        setGrad(a.t, grads[s][0]);
        setGrad(b.t, grads[s][1]);
        setGrad(a2.t, grads[s][0]);
        setGrad(b2.t, grads[s][1]);
        opt.step({ lr: 0.02 });
        opt2.step({ lr: 0.02 });
      }
      expect(Array.from(await a2.t.toArray())).toEqual(Array.from(await a.t.toArray()));
      expect(Array.from(await b2.t.toArray())).toEqual(Array.from(await b.t.toArray()));
      // A state dict for other shapes is refused, naming the key and both shapes.
      const w3 = param([3], 1, 'w');
      const bias = param([4, 5], 2, 'bias');
      const bad = new T.AdamW([w3.t, bias.t]);
      await T.tidyAsync(async () => {
        const { tensors } = await T.loadSafetensors(join(dir, 'opt.safetensors'));
        await expect(bad.loadStateDict(tensors)).rejects.toThrow(/'w.exp_avg' has shape \[33\], parameter \[3\]/);
        // Without w's slots w simply has no state; bias then lacks one of its two.
        delete tensors['w.exp_avg'];
        delete tensors['w.exp_avg_sq'];
        delete tensors['bias.exp_avg_sq'];
        await expect(bad.loadStateDict(tensors)).rejects.toThrow(/missing 'bias.exp_avg_sq'/);
      });
      free(w3.t, bias.t);
      bad.dispose();
      opt.dispose();
      opt2.dispose();
      free(a.t, b.t, a2.t, b2.t);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects bad hyperparameters and gradients with clear errors', () => {
    const p = param([4], 1, 'w');
    expect(() => new T.AdamW([p.t], { betas: [1, 0.9] })).toThrow(/betas\[0\] must be in \[0, 1\)/);
    expect(() => new T.AdamW([p.t], { lr: -1 })).toThrow(/lr must be/);
    expect(() => new T.AdamW([p.t, p.t])).toThrow(/more than once/);
    const opt = new T.AdamW([p.t]);
    p.t.grad = T.keep(T.fromArray([1, 2], [2]));
    expect(() => opt.step()).toThrow(/gradient of 'w' has shape \[2\], parameter \[4\]/);
    opt.dispose();
    p.t.dispose();
  });
});

// Every case runs on each random draw of shapes.
const SGD_CASES = [
  { mom: 0, damp: 0, nesterov: false, wd: 0 },
  { mom: 0, damp: 0, nesterov: false, wd: 0.1 },
  { mom: 0.9, damp: 0, nesterov: false, wd: 0 },
  { mom: 0.9, damp: 0.3, nesterov: false, wd: 0.05 },
  { mom: 0.8, damp: 0, nesterov: true, wd: 0.01 },
];

async function sgdCase(shapes: (readonly number[])[], h: (typeof SGD_CASES)[number], seed: number): Promise<void> {
  const lr = 0.1;
  const ps = shapes.map((s, i) => param(s, seed + i));
  const opt = new T.SGD(ps.map((p) => p.t), { lr, momentum: h.mom, dampening: h.damp, nesterov: h.nesterov, weightDecay: h.wd });
  const bufs = ps.map(() => ({ b: null as Float64Array | null }));
  for (let step = 0; step < 4; step++) {
    ps.forEach((p, i) => {
      // Parameter 0 has no gradient on step 0: its momentum buffer starts one step later.
      const g = i === 0 && step === 0 ? null : f32(randArray(p.ref.length, seed * 17 + step * 5 + i));
      setGrad(p.t, g);
      if (g) sgdRef(p.ref, g, bufs[i], lr, h.mom, h.damp, h.nesterov, h.wd);
    });
    opt.step();
  }
  for (const [i, p] of ps.entries()) expectClose(await p.t.toArray(), p.ref, 1e-6, 1e-6, `param ${i} (${JSON.stringify(h)})`);
  opt.dispose();
  free(...ps.map((p) => p.t));
}

describe('SGD', () => {
  it('matches float64 SGD with momentum, dampening, Nesterov and weight decay', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(shapeArb, { minLength: 1, maxLength: 3 }),
        fc.integer({ min: 1, max: 1000 }),
        async (shapes, seed) => {
          for (const h of SGD_CASES) await sgdCase(shapes, h, seed);
        },
      ),
      { numRuns: 4 },
    );
  });

  it('refuses Nesterov without momentum', () => {
    const p = param([2], 1);
    expect(() => new T.SGD([p.t], { nesterov: true })).toThrow(/nesterov needs momentum > 0/);
    p.t.dispose();
  });
});

describe('gradient clipping', () => {
  function cpuNorm(gs: Float64Array[]): number {
    let s = 0;
    for (const g of gs) for (const x of g) s += x * x;
    return Math.sqrt(s);
  }

  it('computes the global norm and clips in place only when it exceeds maxNorm', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.constantFrom([1], [37], [2500], [0], [3, 90]), { minLength: 1, maxLength: 3 }),
        fc.integer({ min: 1, max: 1000 }),
        fc.constantFrom(0.3, 2),
        async (shapes, seed, ratio) => {
          const ps = shapes.map((s, i) => param(s, seed + i));
          const gs = ps.map((p, i) => f32(randArray(p.ref.length, seed * 13 + i)));
          ps.forEach((p, i) => setGrad(p.t, gs[i]));
          // A parameter without a gradient is ignored.
          const idle = param([3], 99);
          const norm = cpuNorm(gs);
          const maxNorm = Math.max(norm * ratio, 1e-3);
          const n = T.clipGradNorm([...ps.map((p) => p.t), idle.t], maxNorm);
          expectClose([await n.item()], [norm], 1e-6, 1e-5, 'norm');
          const scale = Math.min(1, maxNorm / (norm + 1e-6));
          for (const [i, p] of ps.entries()) {
            const got = await p.t.grad!.toArray();
            if (scale === 1) expect(Array.from(got)).toEqual(Array.from(gs[i]));
            else expectClose(got, gs[i].map((x) => x * scale), 1e-7, 1e-5, `clipped grad ${i}`);
          }
          expect(idle.t.grad).toBeNull();
          free(n, idle.t, ...ps.map((p) => p.t));
        },
      ),
      { numRuns: 8 },
    );
  });

  it('gradNormScale leaves gradients alone and its scale feeds AdamW.step', async () => {
    const a = param([300], 5);
    const ga = f32(randArray(300, 6, -3, 3));
    setGrad(a.t, ga);
    const norm = cpuNorm([ga]);
    const { norm: n, scale } = T.gradNormScale([a.t], 1);
    expectClose([await n.item(), await scale.item()], [norm, 1 / (norm + 1e-6)], 1e-6, 1e-5, 'norm, scale');
    expect(Array.from(await a.t.grad!.toArray())).toEqual(Array.from(ga));
    const opt = new T.AdamW([a.t], { lr: 0.01, weightDecay: 0.1 });
    opt.step({ gradScale: scale });
    const s: AdamRef = { m: new Float64Array(300), v: new Float64Array(300), t: 0 };
    adamwRef(a.ref, ga.map((x) => x / (norm + 1e-6)), s, 0.01, 0.9, 0.999, 1e-8, 0.1);
    expectClose(await a.t.toArray(), a.ref, 1e-6, 1e-6, 'param');
    opt.dispose();
    free(n, scale, a.t);
  });

  it('scales gradients that autograd made views of one buffer exactly once', async () => {
    // add's backward hands both leaves a view of the same gradient buffer.
    const x = param([5], 1);
    const y = param([5], 2);
    const c = f32(randArray(5, 3));
    T.tidy(() => T.backward(T.sum(T.mul(T.add(x.t, y.t), T.fromArray(Float32Array.from(c), [5])))));
    expect(x.t.grad!.storage).toBe(y.t.grad!.storage);
    const norm = Math.sqrt(2 * c.reduce((s, v) => s + v * v, 0));
    const n = T.clipGradNorm([x.t, y.t], norm / 4);
    expectClose([await n.item()], [norm], 1e-6, 1e-5, 'norm');
    const scale = norm / 4 / (norm + 1e-6);
    expectClose(await x.t.grad!.toArray(), c.map((v) => v * scale), 1e-7, 1e-5, 'x.grad');
    expectClose(await y.t.grad!.toArray(), c.map((v) => v * scale), 1e-7, 1e-5, 'y.grad');
    free(n, x.t, y.t);
  });

  // RETRV_DEBUG submits after every dispatch, so the submit count only holds without it.
  it.skipIf(T.debugMode)('clipping plus an optimizer step adds no submit and no readback', async () => {
    const ps = [param([40], 1), param([2600], 2), param([7], 3)];
    ps.forEach((p, i) => setGrad(p.t, f32(randArray(p.ref.length, 10 + i))));
    const opt = new T.AdamW(ps.map((p) => p.t));
    const sgd = new T.SGD(ps.map((p) => p.t), { momentum: 0.9 });
    await ps[0].t.grad!.toArray();
    const before = T.stats();
    const n1 = T.clipGradNorm(ps.map((p) => p.t), 0.5);
    opt.step({ lr: 1e-3 });
    const { norm: n2, scale } = T.gradNormScale(ps.map((p) => p.t), 0.5);
    sgd.step({ gradScale: scale });
    const after = T.stats();
    // clip: 3 partial sums + 1 final + 3 scales; AdamW: 3 (+1: its first step without
    // gradScale fills the kept 1.0); gradNormScale: 3 + 1; SGD: 3.
    expect(after.dispatches - before.dispatches).toBe(7 + 3 + 1 + 4 + 3);
    expect(after.submits).toBe(before.submits);
    expect(after.readbacks).toBe(before.readbacks);
    expect(after.uploads).toBe(before.uploads);
    // After clipping to 0.5 the second norm is 0.5.
    expectClose([await n2.item()], [0.5], 1e-6, 1e-5, 'norm after clipping');
    opt.dispose();
    sgd.dispose();
    free(n1, n2, scale, ...ps.map((p) => p.t));
  });

  it('rejects a non-positive maxNorm', () => {
    expect(() => T.clipGradNorm([], 0)).toThrow(/maxNorm must be a positive number, got 0/);
  });
});

describe('schedules', () => {
  it('cosine: linear warmup from 0, then cosine down to minLr, flat afterwards', () => {
    const s = T.cosineSchedule({ peakLr: 1, warmupSteps: 4, totalSteps: 12, minLr: 0.1 });
    // Warmup: step / 4. Then 0.1 + 0.9 * (1 + cos(pi * (step - 4) / 8)) / 2.
    const expected: [number, number][] = [
      [0, 0],
      [1, 0.25],
      [2, 0.5],
      [4, 1],
      [6, 0.1 + 0.9 * 0.8535533905932737], // (1 + cos(pi/4)) / 2
      [8, 0.55],
      [10, 0.1 + 0.9 * 0.14644660940672627], // (1 + cos(3pi/4)) / 2
      [12, 0.1],
      [50, 0.1],
    ];
    for (const [step, lr] of expected) expect(s(step), `step ${step}`).toBeCloseTo(lr, 12);
    const noWarm = T.cosineSchedule({ peakLr: 3e-4, warmupSteps: 0, totalSteps: 2 });
    expect(noWarm(0)).toBeCloseTo(3e-4, 15);
    expect(noWarm(1)).toBeCloseTo(1.5e-4, 15);
    expect(noWarm(2)).toBe(0);
  });

  it('constant, with and without warmup', () => {
    const c = T.constantSchedule(3e-4);
    expect([0, 1, 1000].map(c)).toEqual([3e-4, 3e-4, 3e-4]);
    const w = T.constantSchedule(3e-4, 2);
    expect([0, 1, 2, 9].map(w)).toEqual([0, 1.5e-4, 3e-4, 3e-4]);
  });

  it('rejects bad options and steps', () => {
    expect(() => T.cosineSchedule({ peakLr: 1, warmupSteps: 10, totalSteps: 5 })).toThrow(/totalSteps must be an integer >= warmupSteps \(10\), got 5/);
    expect(() => T.cosineSchedule({ peakLr: 1, warmupSteps: 0, totalSteps: 5, minLr: 2 })).toThrow(/minLr must be in \[0, peakLr = 1\], got 2/);
    expect(() => T.constantSchedule(1)(-1)).toThrow(/step must be a non-negative integer, got -1/);
  });
});
