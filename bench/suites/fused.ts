// Each fused kernel against its unfused composition from our own elementwise, reduction,
// shape and matmul ops, in one run on one adapter: RMSNorm, softmax + cross-entropy,
// AdamW (one parameter's step), SwiGLU, rotary embedding, causal attention at several
// sequence lengths. Library 'fused' is the fused op, 'unfused' the composition; the two
// cases of a pair share a name, and the runner prints their time ratio (the fused
// speedup) after the main table. Before timing, each case's output is checked against a
// float64 CPU reference and against the other form's output. The check also measures the
// op's memory: peak bytes held by live tensors (stats().peakBytes) during one call, and
// how far that peak rose above what was live before it (inputs, state).
// Forward passes only (AdamW: one update step). Each run ends in `await getEngine().sync()`.
import * as rt from '../../runtime/index.ts';
import { type Tensor, fromArray, getEngine } from '../../runtime/index.ts';
import { type BenchCase, type CheckReport, CheckFailed, type Suite, type Work, checkClose, cpuAttention, cpuRmsNorm, randF32, rng } from './_lib.ts';

/** A check report that also carries the op's memory (read by bench/run.ts's speedup table). */
export interface FusedCheckReport extends CheckReport {
  /** Peak bytes of live tensors during one call (inputs included). */
  peakBytes: number;
  /** peakBytes minus the bytes live just before the call: output and temporaries. */
  extraBytes: number;
}

type Form = 'fused' | 'unfused';

/** One op in its two forms on shared inputs. `run` records the op and returns its output (or null). */
interface PairSpec<S> {
  name: string;
  params: Record<string, number | string | boolean>;
  work: Work;
  /** Inputs (and state) for one form; what only the composition reads is made for it alone. */
  setup(form: Form): S;
  fused(s: S): Tensor | null;
  unfused(s: S): Tensor | null;
  /** Values to compare, from a fresh state: the output of `form`, or what it updated (AdamW). */
  output(s: S, form: Form): Promise<Float32Array>;
  reference(): Float64Array;
  atol: number;
  rtol: number;
  teardown(s: S): void;
}

const dispose = (...ts: (Tensor | null | undefined)[]) => {
  for (const t of ts) t?.dispose();
};

async function read(t: Tensor | null): Promise<Float32Array> {
  if (!t) throw new CheckFailed('the op returned nothing to read');
  try {
    return Float32Array.from(await t.toArray());
  } finally {
    t.dispose();
  }
}

function pair<S>(spec: PairSpec<S>): BenchCase[] {
  return (['fused', 'unfused'] as const).map((form): BenchCase => {
    let s: S | null = null;
    const op = (st: S) => (form === 'fused' ? spec.fused(st) : spec.unfused(st));
    return {
      name: spec.name,
      library: form,
      params: { ...spec.params, form },
      work: spec.work,
      async setup() {
        s = spec.setup(form);
        await getEngine().sync();
      },
      async check(): Promise<FusedCheckReport> {
        const eng = getEngine();
        // Memory of one call on the timed state (before anything else is allocated).
        await eng.sync();
        rt.resetStats();
        const before = rt.stats().bytesInUse;
        const y = op(s!);
        await eng.sync();
        const peakBytes = rt.stats().peakBytes;
        y?.dispose();
        // Values: this form and the other, each from a fresh state, against each other
        // and against float64.
        const other = form === 'fused' ? 'unfused' : 'fused';
        const s1 = spec.setup(form);
        const s2 = spec.setup(other);
        try {
          const mine = await spec.output(s1, form);
          const theirs = await spec.output(s2, other);
          const want = spec.reference();
          const r = checkClose(`${spec.name} (${form})`, mine, want, spec.atol, spec.rtol);
          checkClose(`${spec.name} (${form} vs ${other})`, mine, theirs, 2 * spec.atol, 2 * spec.rtol);
          return { ...r, peakBytes, extraBytes: peakBytes - before, note: `peak ${mib(peakBytes)} MiB, +${mib(peakBytes - before)} MiB over live inputs` };
        } finally {
          spec.teardown(s1);
          spec.teardown(s2);
        }
      },
      async run() {
        const y = op(s!);
        await getEngine().sync();
        y?.dispose();
      },
      async teardown() {
        if (s) spec.teardown(s);
        s = null;
        await getEngine().sync();
      },
    };
  });
}

const mib = (b: number) => (b / 2 ** 20).toFixed(2);

// ---------------------------------------------------------------- RMSNorm

function rmsNormPair(rows: number, cols: number): BenchCase[] {
  const eps = 1e-5;
  const hx = randF32(rows * cols, 101, -2, 2);
  const hw = randF32(cols, 102, 0.5, 1.5);
  type S = { x: Tensor; w: Tensor };
  const unfused = ({ x, w }: S) => {
    // x * rsqrt(mean(x^2) + eps) * w from elementwise ops and a mean.
    const sq = rt.powScalar(x, 2);
    const ms = rt.mean(sq, -1, true);
    const r = rt.rsqrt(rt.addScalar(ms, eps));
    const xr = rt.mul(x, r);
    const y = rt.mul(xr, w);
    dispose(sq, ms, r, xr);
    return y;
  };
  return pair<S>({
    name: `rmsNorm ${rows}x${cols}`,
    params: { rows, cols, eps },
    work: { bytes: (2 * rows * cols + cols) * 4 },
    setup: () => ({ x: fromArray(hx, [rows, cols]), w: fromArray(hw, [cols]) }),
    fused: ({ x, w }) => rt.rmsNorm(x, w, eps),
    unfused: (s) => rt.tidy(() => unfused(s)),
    output: (s, f) => read(f === 'fused' ? rt.rmsNorm(s.x, s.w, eps) : rt.tidy(() => unfused(s))),
    reference: () => cpuRmsNorm(hx, hw, rows, cols, eps),
    atol: 1e-5,
    rtol: 1e-4,
    teardown: (s) => dispose(s.x, s.w),
  });
}

// ---------------------------------------------------------------- softmax + cross-entropy

function crossEntropyPair(n: number, v: number): BenchCase[] {
  const hx = randF32(n * v, 111, -8, 8);
  const r = rng(112);
  const ht = Int32Array.from({ length: n }, () => Math.floor(r() * v));
  type S = { x: Tensor; t: Tensor; t2: Tensor };
  const unfused = ({ x, t2 }: S) => {
    const ls = rt.logSoftmax(x, -1);
    const picked = rt.gather(ls, 1, t2);
    const m = rt.mean(picked);
    const y = rt.neg(m);
    dispose(ls, picked, m);
    return y;
  };
  return pair<S>({
    name: `softmax+crossEntropy ${n}x${v}`,
    params: { n, vocab: v },
    work: { bytes: n * v * 4 },
    setup: () => ({ x: fromArray(hx, [n, v]), t: fromArray(ht, [n], 'i32'), t2: fromArray(ht, [n, 1], 'i32') }),
    fused: ({ x, t }) => rt.crossEntropy(x, t),
    unfused: (s) => rt.tidy(() => unfused(s)),
    output: (s, f) => read(f === 'fused' ? rt.crossEntropy(s.x, s.t) : rt.tidy(() => unfused(s))),
    reference: () => {
      let loss = 0;
      for (let i = 0; i < n; i++) {
        let max = -Infinity;
        for (let j = 0; j < v; j++) max = Math.max(max, hx[i * v + j]);
        let s = 0;
        for (let j = 0; j < v; j++) s += Math.exp(hx[i * v + j] - max);
        loss += max + Math.log(s) - hx[i * v + ht[i]];
      }
      return Float64Array.of(loss / n);
    },
    atol: 1e-5,
    rtol: 1e-5,
    teardown: (s) => dispose(s.x, s.t, s.t2),
  });
}

// ---------------------------------------------------------------- AdamW

function adamwPair(size: number): BenchCase[] {
  const [lr, b1, b2, eps, wd] = [1e-2, 0.9, 0.999, 1e-8, 0.1];
  const hp = randF32(size, 121);
  const hg = randF32(size, 122);
  // m and v: the composition's moments, made at its first step (as AdamW makes its state).
  type S = { p: Tensor; g: Tensor; m: Tensor | null; v: Tensor | null; t: number; opt: rt.AdamW | null };
  // One step of the composition; p, m and v are replaced by new tensors.
  const unfused = (s: S) => {
    s.m ??= rt.zeros([size]);
    s.v ??= rt.zeros([size]);
    s.t++;
    const bc1 = 1 - b1 ** s.t;
    const bc2 = 1 - b2 ** s.t;
    const [p, m, v] = rt.tidy(() => {
      const m1 = rt.add(rt.mulScalar(s.m!, b1), rt.mulScalar(s.g, 1 - b1));
      const v1 = rt.add(rt.mulScalar(s.v!, b2), rt.mulScalar(rt.mul(s.g, s.g), 1 - b2));
      const denom = rt.addScalar(rt.sqrt(rt.mulScalar(v1, 1 / bc2)), eps);
      const p1 = rt.sub(rt.mulScalar(s.p, 1 - lr * wd), rt.div(rt.mulScalar(m1, lr / bc1), denom));
      return [p1, m1, v1];
    });
    dispose(s.p, s.m, s.v);
    Object.assign(s, { p, m, v });
  };
  const fused = (s: S) => {
    if (!s.opt) {
      s.opt = new rt.AdamW([s.p], { lr, betas: [b1, b2], eps, weightDecay: wd });
      s.p.grad = rt.keep(s.g.view(s.g.shape));
    }
    s.opt.step();
  };
  return pair<S>({
    name: `AdamW step ${size}`,
    params: { size, lr, weightDecay: wd },
    // Reads p, g, m, v and writes p, m, v.
    work: { bytes: 7 * size * 4 },
    setup: () => ({ p: fromArray(hp, [size]), g: fromArray(hg, [size]), m: null, v: null, t: 0, opt: null }),
    fused: (s) => (fused(s), null),
    unfused: (s) => (unfused(s), null),
    output: async (s, f) => {
      if (f === 'fused') fused(s);
      else unfused(s);
      return Float32Array.from(await s.p.toArray());
    },
    reference: () => {
      // First step from zero moments.
      const out = new Float64Array(size);
      for (let i = 0; i < size; i++) {
        const g = hg[i];
        const m = (1 - b1) * g;
        const v = (1 - b2) * g * g;
        out[i] = hp[i] * (1 - lr * wd) - (lr * (m / (1 - b1))) / (Math.sqrt(v / (1 - b2)) + eps);
      }
      return out;
    },
    atol: 1e-6,
    rtol: 1e-5,
    teardown: (s) => {
      s.opt?.dispose();
      s.p.grad?.dispose();
      s.p.grad = null;
      dispose(s.p, s.g, s.m, s.v);
    },
  });
}

// ---------------------------------------------------------------- SwiGLU

function swigluPair(rows: number, cols: number): BenchCase[] {
  const hg = randF32(rows * cols, 131, -6, 6);
  const hu = randF32(rows * cols, 132, -2, 2);
  type S = { g: Tensor; u: Tensor };
  const unfused = ({ g, u }: S) => {
    const s = rt.silu(g);
    const y = rt.mul(s, u);
    s.dispose();
    return y;
  };
  return pair<S>({
    name: `swiglu ${rows}x${cols}`,
    params: { rows, cols },
    work: { bytes: 3 * rows * cols * 4 },
    setup: () => ({ g: fromArray(hg, [rows, cols]), u: fromArray(hu, [rows, cols]) }),
    fused: ({ g, u }) => rt.swiglu(g, u),
    unfused,
    output: (s, f) => read(f === 'fused' ? rt.swiglu(s.g, s.u) : unfused(s)),
    reference: () => Float64Array.from(hg, (g, i) => (g / (1 + Math.exp(-g))) * hu[i]),
    atol: 1e-6,
    rtol: 1e-5,
    teardown: (s) => dispose(s.g, s.u),
  });
}

// ---------------------------------------------------------------- rotary embedding

function ropePair(b: number, h: number, t: number, d: number): BenchCase[] {
  const theta = 10000;
  const half = d / 2;
  const hx = randF32(b * h * t * d, 141);
  const inv = Array.from({ length: half }, (_, j) => 1 / theta ** ((2 * j) / d));
  // Tables for the composition (as a model would precompute them): cos/sin of pos * invFreq,
  // repeated over both halves, [t, d].
  const cosT = new Float32Array(t * d);
  const sinT = new Float32Array(t * d);
  for (let p = 0; p < t; p++) {
    for (let j = 0; j < d; j++) {
      const a = p * inv[j % half];
      cosT[p * d + j] = Math.cos(a);
      sinT[p * d + j] = Math.sin(a);
    }
  }
  type S = { x: Tensor; pos: Tensor; cos: Tensor | null; sin: Tensor | null };
  const unfused = ({ x, cos, sin }: S) =>
    rt.tidy(() => {
      // x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x2, x1).
      const x1 = rt.slice(x, 3, 0, half);
      const x2 = rt.slice(x, 3, half, d);
      const rot = rt.concat([rt.neg(x2), x1], 3);
      return rt.add(rt.mul(x, cos!), rt.mul(rot, sin!));
    });
  return pair<S>({
    name: `rope ${b}x${h}x${t}x${d}`,
    params: { batch: b, heads: h, t, d, theta },
    work: { bytes: 2 * b * h * t * d * 4 },
    setup: (form) => ({
      x: fromArray(hx, [b, h, t, d]),
      pos: fromArray(Int32Array.from({ length: b * t }, (_, i) => i % t), [b, t], 'i32'),
      cos: form === 'unfused' ? fromArray(cosT, [t, d]) : null,
      sin: form === 'unfused' ? fromArray(sinT, [t, d]) : null,
    }),
    fused: ({ x, pos }) => rt.rope(x, pos, { theta }),
    unfused,
    output: (s, f) => read(f === 'fused' ? rt.rope(s.x, s.pos, { theta }) : unfused(s)),
    reference: () => {
      const out = new Float64Array(hx.length);
      for (let r = 0; r < b * h * t; r++) {
        const p = r % t;
        for (let j = 0; j < half; j++) {
          const a = p * inv[j];
          const [c, s] = [Math.cos(a), Math.sin(a)];
          const x1 = hx[r * d + j];
          const x2 = hx[r * d + half + j];
          out[r * d + j] = x1 * c - x2 * s;
          out[r * d + half + j] = x2 * c + x1 * s;
        }
      }
      return out;
    },
    // Angles up to t radians: f32 cos/sin of the angle differ by ~t·2^-24.
    atol: 1e-4,
    rtol: 1e-4,
    teardown: (s) => dispose(s.x, s.pos, s.cos, s.sin),
  });
}

// ---------------------------------------------------------------- attention

function attentionPair(b: number, h: number, t: number, d: number): BenchCase[] {
  const n = b * h * t * d;
  const host = [randF32(n, 151), randF32(n, 152), randF32(n, 153)];
  const scale = 1 / Math.sqrt(d);
  const hm = new Float32Array(t * t);
  for (let i = 0; i < t; i++) for (let j = i + 1; j < t; j++) hm[i * t + j] = -Infinity;
  type S = { q: Tensor; k: Tensor; v: Tensor; mask: Tensor | null };
  const unfused = ({ q, k, v, mask }: S) => {
    // softmax(q kᵀ · scale + causal mask) v, freeing each [b, h, t, t] temporary as soon as
    // it is used: the composition at its leanest.
    const sc = rt.matmul(q, k, { transposeB: true });
    const scaled = rt.mulScalar(sc, scale);
    sc.dispose();
    const masked = rt.add(scaled, mask!);
    scaled.dispose();
    const p = rt.softmax(masked, -1);
    masked.dispose();
    const y = rt.matmul(p, v);
    p.dispose();
    return y;
  };
  return pair<S>({
    name: `attention causal b${b} h${h} t${t} d${d}`,
    params: { batch: b, heads: h, t, d, causal: true },
    work: { flops: 2 * b * h * t * t * d },
    setup: (form) => {
      const [q, k, v] = host.map((x) => fromArray(x, [b, h, t, d]));
      return { q, k, v, mask: form === 'unfused' ? fromArray(hm, [t, t]) : null };
    },
    fused: ({ q, k, v }) => rt.attention(q, k, v, { causal: true }),
    unfused,
    output: (s, f) => read(f === 'fused' ? rt.attention(s.q, s.k, s.v, { causal: true }) : unfused(s)),
    reference: () => cpuAttention(host[0], host[1], host[2], b * h, t, d, true),
    atol: 1e-5,
    rtol: 1e-3,
    teardown: (s) => dispose(s.q, s.k, s.v, s.mask),
  });
}

const suite: Suite = {
  name: 'fused',
  describe: 'fused kernels vs their unfused compositions (same adapter, same inputs); speedup = unfused / fused mean time; peak = stats().peakBytes during one call',
  cases: ({ quick }) => [
    ...(quick ? rmsNormPair(512, 1024) : rmsNormPair(4096, 1024)),
    ...(quick ? crossEntropyPair(256, 8192) : crossEntropyPair(1024, 32768)),
    ...adamwPair(quick ? 1 << 20 : 1 << 22),
    ...(quick ? swigluPair(512, 2048) : swigluPair(2048, 4096)),
    ...(quick ? ropePair(1, 8, 256, 64) : ropePair(4, 16, 512, 64)),
    ...[128, 256, 512, ...(quick ? [] : [1024])].flatMap((t) => attentionPair(1, 4, t, 64)),
  ],
};
export default suite;
