import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import * as T from '../../runtime/index.ts';
import { checkOp, expectClose, prod, randArray, rng } from '../helpers.ts';

interface Dims {
  B: number;
  Hq: number;
  Hkv: number;
  Tq: number;
  Tk: number;
  D: number;
  Dv: number;
}

interface RefOpts {
  causal?: boolean;
  /** [B, Tk], nonzero = attend. */
  pad?: ArrayLike<number>;
  /** Additive mask with its own (broadcastable) shape. */
  mask?: { data: ArrayLike<number>; shape: number[] };
  scale?: number;
  qOffset?: number;
}

/** Float64 attention on the CPU: the reference for values and finite differences. */
function refAttention(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, d: Dims, o: RefOpts): Float64Array {
  const { B, Hq, Hkv, Tq, Tk, D, Dv } = d;
  const scale = o.scale ?? 1 / Math.sqrt(D);
  const qOffset = o.qOffset ?? Tk - Tq;
  const group = Hq / Hkv;
  const out = new Float64Array(B * Hq * Tq * Dv);
  const full = [B, Hq, Tq, Tk];
  let maskAt: ((c: number[]) => number) | null = null;
  if (o.mask) {
    const { data, shape } = o.mask;
    const ms = [...new Array(4 - shape.length).fill(1), ...shape];
    maskAt = (c) => {
      let idx = 0;
      for (let a = 0; a < 4; a++) idx = idx * ms[a] + (ms[a] === 1 ? 0 : c[a]);
      return data[idx];
    };
    void full;
  }
  const s = new Float64Array(Tk);
  const vis = new Array<boolean>(Tk);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < Hq; h++) {
      const kvh = Math.floor(h / group);
      for (let i = 0; i < Tq; i++) {
        let m = -Infinity;
        for (let j = 0; j < Tk; j++) {
          let ok = !(o.causal && j > qOffset + i) && (!o.pad || o.pad[b * Tk + j] !== 0);
          let bias = 0;
          if (ok && maskAt) {
            bias = maskAt([b, h, i, j]);
            if (bias === -Infinity) ok = false;
          }
          vis[j] = ok;
          if (!ok) continue;
          let dot = 0;
          for (let x = 0; x < D; x++) dot += q[((b * Hq + h) * Tq + i) * D + x] * k[((b * Hkv + kvh) * Tk + j) * D + x];
          s[j] = scale * dot + bias;
          m = Math.max(m, s[j]);
        }
        let l = 0;
        for (let j = 0; j < Tk; j++) if (vis[j]) l += Math.exp(s[j] - m);
        const ob = ((b * Hq + h) * Tq + i) * Dv;
        if (l === 0) continue; // no visible key: output 0
        for (let j = 0; j < Tk; j++) {
          if (!vis[j]) continue;
          const p = Math.exp(s[j] - m) / l;
          for (let x = 0; x < Dv; x++) out[ob + x] += p * v[((b * Hkv + kvh) * Tk + j) * Dv + x];
        }
      }
    }
  return out;
}

/** Float64 gradients of sum(attention(q, k, v) * dO): the reference backward for large heads. */
function refAttentionGrad(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, dO: ArrayLike<number>, d: Dims, o: RefOpts) {
  const { B, Hq, Hkv, Tq, Tk, D, Dv } = d;
  const scale = o.scale ?? 1 / Math.sqrt(D);
  const qOffset = o.qOffset ?? Tk - Tq;
  const group = Hq / Hkv;
  const dq = new Float64Array(q.length);
  const dk = new Float64Array(k.length);
  const dv = new Float64Array(v.length);
  const maskAt = (b: number, h: number, i: number, j: number) => {
    if (!o.mask) return 0;
    const ms = [...new Array(4 - o.mask.shape.length).fill(1), ...o.mask.shape];
    const c = [b, h, i, j];
    let idx = 0;
    for (let a = 0; a < 4; a++) idx = idx * ms[a] + (ms[a] === 1 ? 0 : c[a]);
    return o.mask.data[idx];
  };
  for (let b = 0; b < B; b++)
    for (let h = 0; h < Hq; h++) {
      const kvh = Math.floor(h / group);
      for (let i = 0; i < Tq; i++) {
        const qi = ((b * Hq + h) * Tq + i) * D;
        const oi = ((b * Hq + h) * Tq + i) * Dv;
        const s: number[] = [];
        const js: number[] = [];
        for (let j = 0; j < Tk; j++) {
          if (o.causal && j > qOffset + i) continue;
          if (o.pad && o.pad[b * Tk + j] === 0) continue;
          const bias = maskAt(b, h, i, j);
          if (bias === -Infinity) continue;
          let dot = 0;
          for (let x = 0; x < D; x++) dot += q[qi + x] * k[((b * Hkv + kvh) * Tk + j) * D + x];
          s.push(scale * dot + bias);
          js.push(j);
        }
        if (!js.length) continue;
        const m = Math.max(...s);
        const e = s.map((x) => Math.exp(x - m));
        const l = e.reduce((a, x) => a + x, 0);
        const p = e.map((x) => x / l);
        const dp = js.map((j) => {
          let t = 0;
          for (let x = 0; x < Dv; x++) t += dO[oi + x] * v[((b * Hkv + kvh) * Tk + j) * Dv + x];
          return t;
        });
        const Di = p.reduce((a, x, n) => a + x * dp[n], 0);
        js.forEach((j, n) => {
          const ds = p[n] * (dp[n] - Di);
          const kj = ((b * Hkv + kvh) * Tk + j) * D;
          const vj = ((b * Hkv + kvh) * Tk + j) * Dv;
          for (let x = 0; x < D; x++) {
            dq[qi + x] += scale * ds * k[kj + x];
            dk[kj + x] += scale * ds * q[qi + x];
          }
          for (let x = 0; x < Dv; x++) dv[vj + x] += p[n] * dO[oi + x];
        });
      }
    }
  return { dq, dk, dv };
}

const f32 = (a: ArrayLike<number>) => Float32Array.from(a);

/** Random additive mask: values in [-2, 2], some -Infinity, with a random broadcast shape. */
function randomMask(d: Dims, seed: number): { data: Float64Array; shape: number[] } {
  const r = rng(seed);
  const full = [d.B, d.Hq, d.Tq, d.Tk];
  const rank = 2 + Math.floor(r() * 3); // 2..4
  const shape = full.slice(4 - rank).map((n) => (r() < 0.3 ? 1 : n));
  const n = prod(shape);
  const data = new Float64Array(n);
  for (let x = 0; x < n; x++) data[x] = r() < 0.2 ? -Infinity : 4 * r() - 2;
  return { data, shape };
}

function randomPad(d: Dims, seed: number, pAttend = 0.75): Float64Array {
  const r = rng(seed);
  return Float64Array.from({ length: d.B * d.Tk }, () => (r() < pAttend ? 1 : 0));
}

async function gpuAttention(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  d: Dims,
  o: RefOpts,
  padDType: 'f32' | 'i32' = 'f32',
  kernel: T.AttentionKernel = 'auto',
): Promise<Float32Array> {
  return T.tidyAsync(async () => {
    const out = T.attention(
      T.fromArray(f32(q), [d.B, d.Hq, d.Tq, d.D]),
      T.fromArray(f32(k), [d.B, d.Hkv, d.Tk, d.D]),
      T.fromArray(f32(v), [d.B, d.Hkv, d.Tk, d.Dv]),
      {
        causal: o.causal,
        scale: o.scale,
        qOffset: o.qOffset,
        keyPadding: o.pad ? T.fromArray(Array.from(o.pad), [d.B, d.Tk], padDType) : undefined,
        mask: o.mask ? T.fromArray(f32(o.mask.data), o.mask.shape) : undefined,
        kernel,
      },
    );
    expect(out.shape).toEqual([d.B, d.Hq, d.Tq, d.Dv]);
    return (await out.toArray()) as Float32Array;
  });
}

const dimsArb = fc.record({
  B: fc.integer({ min: 1, max: 2 }),
  Hkv: fc.integer({ min: 1, max: 2 }),
  ratio: fc.constantFrom(1, 2, 3),
  Tq: fc.integer({ min: 1, max: 40 }),
  Tk: fc.integer({ min: 1, max: 40 }),
  D: fc.integer({ min: 1, max: 40 }),
  sameDv: fc.boolean(),
  Dv: fc.integer({ min: 1, max: 40 }),
  // Head sizes that are multiples of 4 take the vec4 kernels.
  vec4: fc.boolean(),
});

/** Every forward kernel variant this adapter can run: each is forced through every case. */
const kernels = (Object.keys(T.ATTENTION_KERNELS) as T.AttentionKernelName[]).filter((n) => !T.attentionKernelBlocker(n));

/**
 * (D, Dv) pairs up to 256: the sg kernels hold rows as 1..8 register chunks and take 4, 2 or
 * 1 rows per lane by head size (64: forward 4, backward 2; 128: 2 and 1; 256: 1 and 1).
 * sg-kb4 always runs one row per lane: one pair keeps its compile time down.
 */
const largeHeads = (kernel: T.AttentionKernelName): [number, number][] =>
  kernel === 'sg-kb4' ? [[20, 256]] : [[64, 40], [128, 128], [256, 64], [20, 256]];

describe('attention kernel choice', () => {
  it('runs the subgroup kernel by default on CPU adapters with subgroups, tiled on GPUs, and names unknown kernels', () => {
    const ctx = T.getEngine().ctx;
    expect(T.pickAttentionKernel()).toBe(ctx.isSoftware ? (kernels.includes('sg') ? 'sg' : 'rows') : 'tiled');
    expect(kernels).toContain('tiled');
    T.tidy(() => {
      const x = T.zeros([1, 1, 2, 4]);
      expect(() => T.attention(x, x, x, { kernel: 'nope' as T.AttentionKernel })).toThrow(/unknown kernel 'nope'.*rows/);
    });
  });
});

for (const kernel of kernels) describe(`attention forward (${kernel})`, () => {
  it('matches the float64 reference over random shapes, GQA, causal, padding, masks and offsets', async () => {
    await fc.assert(
      fc.asyncProperty(
        dimsArb,
        fc.record({
          causal: fc.boolean(),
          pad: fc.constantFrom('none', 'f32', 'i32'),
          mask: fc.boolean(),
          offset: fc.option(fc.integer({ min: -3, max: 45 }), { nil: undefined }),
          scale: fc.option(fc.double({ min: 0.05, max: 1.5, noNaN: true }), { nil: undefined }),
          seed: fc.integer({ min: 1, max: 1e6 }),
        }),
        async (s, o) => {
          const r4 = (n: number) => (s.vec4 ? 4 * Math.ceil(n / 4) : n);
          const d: Dims = { B: s.B, Hq: s.Hkv * s.ratio, Hkv: s.Hkv, Tq: s.Tq, Tk: s.Tk, D: r4(s.D), Dv: r4(s.sameDv ? s.D : s.Dv) };
          const q = randArray(d.B * d.Hq * d.Tq * d.D, o.seed, -2, 2);
          const k = randArray(d.B * d.Hkv * d.Tk * d.D, o.seed + 1, -2, 2);
          const v = randArray(d.B * d.Hkv * d.Tk * d.Dv, o.seed + 2);
          const ro: RefOpts = {
            causal: o.causal,
            qOffset: o.offset,
            scale: o.scale,
            pad: o.pad === 'none' ? undefined : randomPad(d, o.seed + 3),
            mask: o.mask ? randomMask(d, o.seed + 4) : undefined,
          };
          const got = await gpuAttention(q, k, v, d, ro, o.pad === 'i32' ? 'i32' : 'f32', kernel);
          expectClose(got, refAttention(q, k, v, d, ro), 2e-5, 1e-4, `attention ${JSON.stringify(d)} ${JSON.stringify(o)}`);
        },
      ),
      { numRuns: 30, seed: 1234 },
    );
  });

  it('decode (Tq = 1 with a KV cache) equals the last row of full causal attention', async () => {
    const d: Dims = { B: 2, Hq: 4, Hkv: 2, Tq: 9, Tk: 9, D: 13, Dv: 13 };
    const q = randArray(d.B * d.Hq * d.Tq * d.D, 11);
    const k = randArray(d.B * d.Hkv * d.Tk * d.D, 12);
    const v = randArray(d.B * d.Hkv * d.Tk * d.Dv, 13);
    const full = await gpuAttention(q, k, v, d, { causal: true }, 'f32', kernel);
    for (const t of [0, 4, 8]) {
      // The query at position t against the cache of keys 0..t (plus later, not yet visible, keys).
      const dq: Dims = { ...d, Tq: 1 };
      const qt = new Float64Array(d.B * d.Hq * d.D);
      for (let bh = 0; bh < d.B * d.Hq; bh++) for (let x = 0; x < d.D; x++) qt[bh * d.D + x] = q[(bh * d.Tq + t) * d.D + x];
      const got = await gpuAttention(qt, k, v, dq, { causal: true, qOffset: t }, 'f32', kernel);
      const want = new Float64Array(d.B * d.Hq * d.Dv);
      for (let bh = 0; bh < d.B * d.Hq; bh++) for (let x = 0; x < d.Dv; x++) want[bh * d.Dv + x] = full[(bh * d.Tq + t) * d.Dv + x];
      expectClose(got, want, 1e-6, 1e-5, `decode at ${t}`);
      expectClose(got, refAttention(qt, k, v, dq, { causal: true, qOffset: t }), 2e-5, 1e-4, `decode ref at ${t}`);
    }
    // Default qOffset = Tk - Tq: a single query sees the whole cache.
    const d1: Dims = { ...d, Tq: 1 };
    const q1 = randArray(d.B * d.Hq * d.D, 14);
    const got = await gpuAttention(q1, k, v, d1, { causal: true }, 'f32', kernel);
    expectClose(got, refAttention(q1, k, v, d1, {}), 2e-5, 1e-4, 'decode default offset');
  });

  it('rows with no visible key give 0 (not NaN)', async () => {
    const d: Dims = { B: 2, Hq: 2, Hkv: 1, Tq: 3, Tk: 5, D: 4, Dv: 3 };
    const q = randArray(d.B * d.Hq * d.Tq * d.D, 21);
    const k = randArray(d.B * d.Hkv * d.Tk * d.D, 22);
    const v = randArray(d.B * d.Hkv * d.Tk * d.Dv, 23);
    // Batch 1 fully padded.
    const pad = [1, 0, 1, 1, 0, 0, 0, 0, 0, 0];
    let got = await gpuAttention(q, k, v, d, { pad }, 'f32', kernel);
    const half = d.Hq * d.Tq * d.Dv;
    expect(Array.from(got.slice(half))).toEqual(new Array(half).fill(0));
    expect(got.slice(0, half).some((x) => x !== 0)).toBe(true);
    expectClose(got, refAttention(q, k, v, d, { pad }), 2e-5, 1e-4, 'padded');
    // A -Infinity mask on query row 1 only.
    const mask = new Float64Array(d.Tq * d.Tk);
    for (let j = 0; j < d.Tk; j++) mask[d.Tk + j] = -Infinity;
    got = await gpuAttention(q, k, v, d, { mask: { data: mask, shape: [d.Tq, d.Tk] } }, 'f32', kernel);
    for (let bh = 0; bh < d.B * d.Hq; bh++) for (let x = 0; x < d.Dv; x++) expect(got[(bh * d.Tq + 1) * d.Dv + x]).toBe(0);
    expect(got.every((x) => Number.isFinite(x))).toBe(true);
    // Causal with a negative offset: query 0 sits before every key.
    got = await gpuAttention(q, k, v, d, { causal: true, qOffset: -1 }, 'f32', kernel);
    for (let bh = 0; bh < d.B * d.Hq; bh++) for (let x = 0; x < d.Dv; x++) expect(got[bh * d.Tq * d.Dv + x]).toBe(0);
    expectClose(got, refAttention(q, k, v, d, { causal: true, qOffset: -1 }), 2e-5, 1e-4, 'negative offset');
  });

  it('accepts permuted and offset views for q, k and v', async () => {
    const d: Dims = { B: 2, Hq: 3, Hkv: 3, Tq: 5, Tk: 7, D: 6, Dv: 6 };
    // q stored as [B, Tq, Hq, D] after 4 leading junk elements, viewed as [B, Hq, Tq, D].
    const qData = randArray(4 + d.B * d.Tq * d.Hq * d.D, 31);
    const k = randArray(d.B * d.Hkv * d.Tk * d.D, 32);
    const v = randArray(d.B * d.Hkv * d.Tk * d.Dv, 33);
    const qDense = new Float64Array(d.B * d.Hq * d.Tq * d.D);
    for (let b = 0; b < d.B; b++)
      for (let h = 0; h < d.Hq; h++)
        for (let i = 0; i < d.Tq; i++)
          for (let x = 0; x < d.D; x++) qDense[((b * d.Hq + h) * d.Tq + i) * d.D + x] = qData[4 + ((b * d.Tq + i) * d.Hq + h) * d.D + x];
    const got = await T.tidyAsync(async () => {
      const base = T.fromArray(f32(qData), [qData.length]);
      const qv = base.view([d.B, d.Hq, d.Tq, d.D], [d.Tq * d.Hq * d.D, d.D, d.Hq * d.D, 1], 4);
      const out = T.attention(qv, T.fromArray(f32(k), [d.B, d.Hkv, d.Tk, d.D]), T.fromArray(f32(v), [d.B, d.Hkv, d.Tk, d.Dv]), { causal: true, kernel });
      return (await out.toArray()) as Float32Array;
    });
    expectClose(got, refAttention(qDense, k, v, d, { causal: true }), 2e-5, 1e-4, 'views');
  });

  it('reads k and v in place from strided views (a preallocated KV cache, permuted projections)', async () => {
    // Scalar path (D = 5) and vec4 path (D = 8, strides and offsets multiples of 4).
    for (const [D, maxLen, off] of [[5, 11, 3], [8, 12, 4]]) {
      const d: Dims = { B: 2, Hq: 4, Hkv: 2, Tq: 3, Tk: 7, D, Dv: D };
      const q = randArray(d.B * d.Hq * d.Tq * d.D, 61 + D);
      const k = randArray(d.B * d.Hkv * d.Tk * d.D, 62 + D);
      const v = randArray(d.B * d.Hkv * d.Tk * d.Dv, 63 + D);
      // k lives in a cache [B, Hkv, maxLen, D] after `off` junk elements; v is stored [B, Tk, Hkv, D].
      const kBuf = randArray(off + d.B * d.Hkv * maxLen * D, 64 + D, 50, 60);
      const vBuf = randArray(off + d.B * d.Tk * d.Hkv * D, 65 + D, 50, 60);
      for (let b = 0; b < d.B; b++)
        for (let h = 0; h < d.Hkv; h++)
          for (let j = 0; j < d.Tk; j++)
            for (let x = 0; x < D; x++) {
              const src = ((b * d.Hkv + h) * d.Tk + j) * D + x;
              kBuf[off + ((b * d.Hkv + h) * maxLen + j) * D + x] = k[src];
              vBuf[off + ((b * d.Tk + j) * d.Hkv + h) * D + x] = v[src];
            }
      const pad = randomPad(d, 66 + D);
      const o: RefOpts = { causal: true, qOffset: 4, pad };
      const got = await T.tidyAsync(async () => {
        const kv = T.fromArray(f32(kBuf)).view([d.B, d.Hkv, d.Tk, D], [d.Hkv * maxLen * D, maxLen * D, D, 1], off);
        const vv = T.fromArray(f32(vBuf)).view([d.B, d.Hkv, d.Tk, D], [d.Tk * d.Hkv * D, D, d.Hkv * D, 1], off);
        const out = T.attention(T.fromArray(f32(q), [d.B, d.Hq, d.Tq, D]), kv, vv, {
          causal: true,
          qOffset: 4,
          keyPadding: T.fromArray(Array.from(pad), [d.B, d.Tk], 'i32'),
          kernel,
        });
        return (await out.toArray()) as Float32Array;
      });
      expectClose(got, refAttention(q, k, v, d, o), 2e-5, 1e-4, `strided k/v, D = ${D}`);
    }
  });

  it('large head sizes (register chunks) with GQA, causal, padding and a mask', async () => {
    for (const [D, Dv] of largeHeads(kernel)) {
      const d: Dims = { B: 1, Hq: 2, Hkv: 1, Tq: 11, Tk: 13, D, Dv };
      const q = randArray(d.B * d.Hq * d.Tq * d.D, 81 + D, -0.5, 0.5);
      const k = randArray(d.B * d.Hkv * d.Tk * d.D, 82 + D, -0.5, 0.5);
      const v = randArray(d.B * d.Hkv * d.Tk * d.Dv, 83 + D);
      const o: RefOpts = { causal: true, qOffset: 3, pad: randomPad(d, 84 + D), mask: randomMask(d, 85 + D) };
      const got = await gpuAttention(q, k, v, d, o, 'f32', kernel);
      expectClose(got, refAttention(q, k, v, d, o), 2e-5, 1e-4, `D ${D}, Dv ${Dv}`);
    }
  });
});

describe('attention errors', () => {
  it('names the shapes in its errors', () => {
    T.tidy(() => {
      const q = T.zeros([1, 3, 2, 4]);
      const k = T.zeros([1, 2, 5, 4]);
      const v = T.zeros([1, 2, 5, 4]);
      expect(() => T.attention(q, k, v)).toThrow(/multiple of kv heads.*\[1, 3, 2, 4\].*\[1, 2, 5, 4\]/);
      const q2 = T.zeros([1, 2, 2, 3]);
      expect(() => T.attention(q2, k, v)).toThrow(/head sizes differ.*\[1, 2, 2, 3\]/);
      expect(() => T.attention(T.zeros([1, 2, 2, 4]), k, T.zeros([1, 2, 6, 4]))).toThrow(/sequence lengths differ.*\[1, 2, 6, 4\]/);
      expect(() => T.attention(T.zeros([1, 2, 2, 4]), k, v, { mask: T.zeros([3, 5]) })).toThrow(/mask of shape \[3, 5\].*\[1, 2, 2, 5\]/);
      expect(() => T.attention(T.zeros([1, 2, 2, 4]), k, v, { keyPadding: T.zeros([1, 4]) })).toThrow(/keyPadding has shape \[1, 4\].*\[1, 5\]/);
      expect(() => T.attention(T.zeros([2, 4]), k, v)).toThrow(/q must be \[B, H, T, D\].*\[2, 4\]/);
      expect(() => T.attention(T.zeros([1, 2, 2, 4], 'i32'), k, v)).toThrow(/attention: q has dtype i32/);
    });
  });
});

describe('attention backward', () => {
  const cases: { name: string; d: Dims; o: RefOpts }[] = [
    { name: 'plain MHA', d: { B: 1, Hq: 2, Hkv: 2, Tq: 3, Tk: 4, D: 3, Dv: 2 }, o: {} },
    { name: 'GQA 2, causal, padding', d: { B: 2, Hq: 4, Hkv: 2, Tq: 3, Tk: 3, D: 2, Dv: 3 }, o: { causal: true, pad: [1, 1, 0, 0, 1, 1] } },
    {
      name: 'GQA 3, mask with -inf, scale',
      d: { B: 1, Hq: 3, Hkv: 1, Tq: 2, Tk: 5, D: 3, Dv: 3 },
      o: { mask: { data: [0, -Infinity, 0.5, -1, 0, 1, 0, -Infinity, 0.25, -0.5], shape: [1, 1, 2, 5] }, scale: 0.7 },
    },
    { name: 'decode with KV cache', d: { B: 2, Hq: 2, Hkv: 1, Tq: 1, Tk: 5, D: 4, Dv: 3 }, o: { causal: true, qOffset: 2 } },
    // Head sizes divisible by 4: the vec4 kernels.
    { name: 'vec4, GQA 2, causal, mask', d: { B: 1, Hq: 4, Hkv: 2, Tq: 3, Tk: 4, D: 4, Dv: 8 }, o: { causal: true, mask: { data: [0, -1, 0.5, -Infinity], shape: [4] } } },
    { name: 'vec4, GQA 3, padding, offset', d: { B: 2, Hq: 3, Hkv: 1, Tq: 2, Tk: 3, D: 8, Dv: 4 }, o: { causal: true, qOffset: 0, pad: [1, 0, 1, 1, 1, 0] } },
    // Batch 1 has every key padded and query 0 of batch 0 sees none (offset -1): zero gradients there.
    { name: 'fully masked rows', d: { B: 2, Hq: 2, Hkv: 2, Tq: 2, Tk: 3, D: 2, Dv: 2 }, o: { causal: true, qOffset: -1, pad: [1, 1, 1, 0, 0, 0] } },
  ];
  // Every forward kernel: the backward reuses the forward's logsumexp.
  for (const { name, d, o } of cases) for (const kernel of kernels) {
    it(`gradients for q, k, v: ${name} (forward ${kernel})`, async () => {
      await checkOp({
        inputs: [
          { data: randArray(d.B * d.Hq * d.Tq * d.D, 41), shape: [d.B, d.Hq, d.Tq, d.D] },
          { data: randArray(d.B * d.Hkv * d.Tk * d.D, 42), shape: [d.B, d.Hkv, d.Tk, d.D] },
          { data: randArray(d.B * d.Hkv * d.Tk * d.Dv, 43), shape: [d.B, d.Hkv, d.Tk, d.Dv] },
        ],
        gpu: ([q, k, v]) =>
          T.attention(q, k, v, {
            causal: o.causal,
            scale: o.scale,
            qOffset: o.qOffset,
            keyPadding: o.pad ? T.fromArray(Array.from(o.pad), [d.B, d.Tk], 'i32') : undefined,
            mask: o.mask ? T.fromArray(f32(o.mask.data), o.mask.shape) : undefined,
            kernel,
          }),
        cpu: ([q, k, v]) => refAttention(q, k, v, d, o),
      });
    });
  }

  for (const D of [3, 4]) for (const kernel of kernels) {
    it(`gradients through strided k / v views (slices of a longer buffer), D = ${D} (forward ${kernel})`, async () => {
      const d: Dims = { B: 2, Hq: 2, Hkv: 1, Tq: 2, Tk: 4, D, Dv: D };
      await checkOp({
        inputs: [
          { data: randArray(d.B * d.Hq * d.Tq * d.D, 71), shape: [d.B, d.Hq, d.Tq, d.D] },
          { data: randArray(d.B * d.Hkv * d.Tk * d.D, 72), shape: [d.B, d.Hkv, d.Tk, d.D] },
          { data: randArray(d.B * d.Hkv * d.Tk * d.Dv, 73), shape: [d.B, d.Hkv, d.Tk, d.Dv] },
        ],
        // pad + slice: k and v reach the kernel as views with a t-stride run longer than Tk.
        gpu: ([q, k, v]) =>
          T.attention(q, T.slice(T.pad(k, [[0, 4], [0, 0]]), 2, 0, d.Tk), T.slice(T.pad(v, [[2, 2], [0, 0]]), 2, 2, 2 + d.Tk), {
            causal: true,
            qOffset: 1,
            kernel,
          }),
        cpu: ([q, k, v]) => refAttention(q, k, v, d, { causal: true, qOffset: 1 }),
      });
    });
  }

  for (const kernel of kernels) it(`fully masked rows get exactly zero gradients (forward ${kernel})`, async () => {
    const d: Dims = { B: 1, Hq: 2, Hkv: 1, Tq: 2, Tk: 3, D: 3, Dv: 2 };
    await T.tidyAsync(async () => {
      const qc = T.requireGrad(T.fromArray(f32(randArray(d.B * d.Hq * d.Tq * d.D, 51)), [d.B, d.Hq, d.Tq, d.D]));
      const k = T.requireGrad(T.fromArray(f32(randArray(d.Hkv * d.Tk * d.D, 52)), [d.B, d.Hkv, d.Tk, d.D]));
      const v = T.requireGrad(T.fromArray(f32(randArray(d.Hkv * d.Tk * d.Dv, 53)), [d.B, d.Hkv, d.Tk, d.Dv]));
      // Query row 0 sees nothing (-inf everywhere); row 1 sees key 2 only.
      const mask = T.fromArray([-Infinity, -Infinity, -Infinity, -Infinity, -Infinity, 0], [2, 3]);
      const y = T.attention(qc, k, v, { mask, kernel });
      T.backward(T.sum(T.mul(y, y)));
      const gq = await qc.grad!.toArray();
      const gk = await k.grad!.toArray();
      const gv = await v.grad!.toArray();
      for (const g of [gq, gk, gv]) expect(Array.from(g).every((x) => Number.isFinite(x))).toBe(true);
      // Row 0 of each head: zero dq. Keys 0, 1 are never seen: zero dk and dv. A single visible
      // key gets softmax weight 1 whatever its score, so dq and dk vanish everywhere.
      expect(Array.from(gq).every((x) => x === 0)).toBe(true);
      expect(Array.from(gk).every((x) => x === 0)).toBe(true);
      const vv = await v.toArray();
      // y rows that see key 2 equal v[2]; dL/dv[2] = sum over the 2 heads of 2 * v[2].
      expectClose(gv, [0, 0, 0, 0, 4 * vv[4], 4 * vv[5]], 1e-6, 1e-5, 'dv');
      for (const t of [k, v, qc]) t.grad?.dispose();
    });
  });

  // Lengths spanning several query blocks and key tiles of the tiled kernels (16 / 32 rows),
  // none a multiple of them: causal tile skipping in all three kernels, Tq != Tk.
  for (const kernel of kernels) {
    it(`values and gradients over lengths of several tiles, small heads (forward ${kernel})`, async () => {
      const cases: [Dims, RefOpts][] = [
        [{ B: 1, Hq: 2, Hkv: 1, Tq: 37, Tk: 70, D: 8, Dv: 8 }, { causal: true }],
        [{ B: 1, Hq: 2, Hkv: 2, Tq: 45, Tk: 45, D: 16, Dv: 16 }, { causal: true, qOffset: 0 }],
        [{ B: 2, Hq: 3, Hkv: 1, Tq: 19, Tk: 53, D: 6, Dv: 5 }, { causal: true, qOffset: 20 }],
        [{ B: 1, Hq: 2, Hkv: 1, Tq: 33, Tk: 41, D: 32, Dv: 32 }, { pad: undefined, mask: undefined }],
      ];
      cases[3][1].pad = randomPad(cases[3][0], 107, 0.8);
      cases[3][1].mask = randomMask(cases[3][0], 108);
      for (const [d, o] of cases) {
        const q = randArray(d.B * d.Hq * d.Tq * d.D, 101 + d.D, -1, 1);
        const k = randArray(d.B * d.Hkv * d.Tk * d.D, 102 + d.D, -1, 1);
        const v = randArray(d.B * d.Hkv * d.Tk * d.Dv, 103 + d.D);
        const w = randArray(d.B * d.Hq * d.Tq * d.Dv, 104 + d.D);
        const want = refAttentionGrad(q, k, v, w, d, o);
        const tag = JSON.stringify(d);
        await T.tidyAsync(async () => {
          const [tq, tk, tv] = [[q, d.D, d.Hq, d.Tq], [k, d.D, d.Hkv, d.Tk], [v, d.Dv, d.Hkv, d.Tk]].map(([x, n, h, t]) =>
            T.requireGrad(T.fromArray(f32(x as Float64Array), [d.B, h as number, t as number, n as number])),
          );
          const y = T.attention(tq, tk, tv, {
            causal: o.causal,
            qOffset: o.qOffset,
            keyPadding: o.pad ? T.fromArray(Array.from(o.pad), [d.B, d.Tk], 'f32') : undefined,
            mask: o.mask ? T.fromArray(f32(o.mask.data), o.mask.shape) : undefined,
            kernel,
          });
          expectClose(await y.toArray(), refAttention(q, k, v, d, o), 2e-5, 1e-4, `forward ${tag}`);
          T.backward(T.sum(T.mul(y, T.fromArray(f32(w), y.shape))));
          expectClose(await tq.grad!.toArray(), want.dq, 1e-5, 1e-4, `dq ${tag}`);
          expectClose(await tk.grad!.toArray(), want.dk, 1e-5, 1e-4, `dk ${tag}`);
          expectClose(await tv.grad!.toArray(), want.dv, 1e-5, 1e-4, `dv ${tag}`);
          for (const t of [tq, tk, tv]) t.grad?.dispose();
        });
      }
    });
  }

  for (const kernel of kernels) {
    it(`gradients for large head sizes against a float64 backward (forward ${kernel})`, async () => {
      for (const [D, Dv] of largeHeads(kernel)) {
        const d: Dims = { B: 1, Hq: 2, Hkv: 1, Tq: 7, Tk: 9, D, Dv };
        const q = randArray(d.B * d.Hq * d.Tq * d.D, 91 + D, -0.5, 0.5);
        const k = randArray(d.B * d.Hkv * d.Tk * d.D, 92 + D, -0.5, 0.5);
        const v = randArray(d.B * d.Hkv * d.Tk * d.Dv, 93 + D);
        const w = randArray(d.B * d.Hq * d.Tq * d.Dv, 94 + D);
        const o: RefOpts = { causal: true, qOffset: 2, pad: randomPad(d, 95 + D), mask: randomMask(d, 96 + D) };
        const want = refAttentionGrad(q, k, v, w, d, o);
        await T.tidyAsync(async () => {
          const [tq, tk, tv] = [[q, d.D, d.Hq, d.Tq], [k, d.D, d.Hkv, d.Tk], [v, d.Dv, d.Hkv, d.Tk]].map(([x, n, h, t]) =>
            T.requireGrad(T.fromArray(f32(x as Float64Array), [d.B, h as number, t as number, n as number])),
          );
          const y = T.attention(tq, tk, tv, {
            causal: true,
            qOffset: o.qOffset,
            keyPadding: T.fromArray(Array.from(o.pad!), [d.B, d.Tk], 'f32'),
            mask: T.fromArray(f32(o.mask!.data), o.mask!.shape),
            kernel,
          });
          T.backward(T.sum(T.mul(y, T.fromArray(f32(w), y.shape))));
          expectClose(await tq.grad!.toArray(), want.dq, 1e-5, 1e-4, `dq, D ${D}, Dv ${Dv}`);
          expectClose(await tk.grad!.toArray(), want.dk, 1e-5, 1e-4, `dk, D ${D}, Dv ${Dv}`);
          expectClose(await tv.grad!.toArray(), want.dv, 1e-5, 1e-4, `dv, D ${D}, Dv ${Dv}`);
          for (const t of [tq, tk, tv]) t.grad?.dispose();
        });
      }
    });
  }
});
