// The vision encoder (model/vision.ts): its forward against a float64 CPU reference of
// Qwen2.5-VL's vision tower, the 2D rotary embedding against Qwen's formula, attention
// kept within each image, gradients to every parameter, and a tiny encoder that learns
// to tell 4 synthetic images apart.
import { describe, expect, it } from 'vitest';
import {
  AdamW,
  type Tensor,
  backward,
  crossEntropy,
  fromArray,
  linear,
  mean,
  mul,
  randn,
  requireGrad,
  reshape,
  sum,
  tidy,
  tidyAsync,
} from '../../runtime/index.ts';
import {
  VisionEncoder,
  type VisionConfig,
  initVisionParameters,
  visionFlopsPerImage,
  visionParamCount,
  visionParameterShapes,
  visionRope,
} from '../../model/vision.ts';
import { patchPositions, patchify, preprocess } from '../../model/image.ts';
import { expectClose, randArray } from '../helpers.ts';

const tiny: VisionConfig = { patchSize: 2, hidden: 16, layers: 2, heads: 2, mlp: 24, outHidden: 12, mergeSize: 2, rmsEps: 1e-6 };

async function hostParams(params: Map<string, Tensor>): Promise<Map<string, Float64Array>> {
  const out = new Map<string, Float64Array>();
  for (const [k, t] of params) out.set(k, Float64Array.from(await t.toArray()));
  return out;
}

/** Replaces the zero / one initial norms and biases with random values so the reference checks them too. */
function randomise(params: Map<string, Tensor>, seed: number): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  let k = 0;
  for (const [name, t] of params) {
    t.dispose();
    const std = name.endsWith('norm1.weight') || name.endsWith('norm2.weight') || name.endsWith('ln_q.weight') ? 0.5 : 0.3;
    const r = randn(t.shape, { seed: seed + k++, std, mean: name.includes('norm') || name.includes('ln_q') ? 1 : 0 });
    r.name = name;
    out.set(name, requireGrad(r));
  }
  return out;
}

// ---------------------------------------------------------------- float64 reference (Qwen2.5-VL's vision tower)

function linearRef(x: Float64Array, rows: number, w: Float64Array, b: Float64Array | undefined, out: number): Float64Array {
  const inF = w.length / out;
  const y = new Float64Array(rows * out);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < out; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inF; i++) s += x[r * inF + i] * w[o * inF + i];
      y[r * out + o] = s;
    }
  }
  return y;
}

function rmsRef(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  const D = w.length;
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / D; r++) {
    let ss = 0;
    for (let j = 0; j < D; j++) ss += x[r * D + j] ** 2;
    const s = 1 / Math.sqrt(ss / D + eps);
    for (let j = 0; j < D; j++) y[r * D + j] = x[r * D + j] * s * w[j];
  }
  return y;
}

/**
 * Qwen2.5-VL's vision rotary for one token's head vector v (length Dh): freqs = Dh/4
 * values theta^(-2j/(Dh/2)); angles = [row * freqs, col * freqs] (Dh/2); out = v * cos(cat(a, a))
 * + rotate_half(v) * sin(cat(a, a)).
 */
function rotaryRef(v: ArrayLike<number>, row: number, col: number, theta = 10000): Float64Array {
  const dh = v.length;
  const dim = dh / 2;
  const freqs = Array.from({ length: dim / 2 }, (_, j) => 1 / theta ** ((2 * j) / dim));
  const angles = [...freqs.map((f) => row * f), ...freqs.map((f) => col * f)];
  const emb = [...angles, ...angles];
  const out = new Float64Array(dh);
  for (let i = 0; i < dh; i++) {
    const rot = i < dh / 2 ? -v[i + dh / 2] : v[i - dh / 2];
    out[i] = v[i] * Math.cos(emb[i]) + rot * Math.sin(emb[i]);
  }
  return out;
}

const geluTanh = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
const siluRef = (x: number) => x / (1 + Math.exp(-x));

/** One image's patches [N, 3p^2] with positions [2, N] -> merged tokens [N/4, outHidden]. */
function visionRef(c: VisionConfig, P: Map<string, Float64Array>, patches: Float64Array, pos: ArrayLike<number>): Float64Array {
  const d = c.hidden;
  const H = c.heads;
  const dh = d / H;
  const N = patches.length / (3 * c.patchSize ** 2);
  const get = (n: string) => P.get(n)!;
  let x = linearRef(patches, N, get('visual.patch_embed.proj.weight'), undefined, d);
  for (let l = 0; l < c.layers; l++) {
    const pre = `visual.blocks.${l}`;
    const h = rmsRef(x, get(`${pre}.norm1.weight`), c.rmsEps);
    const qkv = linearRef(h, N, get(`${pre}.attn.qkv.weight`), get(`${pre}.attn.qkv.bias`), 3 * d); // [N, 3, H, dh]
    const attnOut = new Float64Array(N * d);
    for (let hd = 0; hd < H; hd++) {
      const vecOf = (t: number, which: number) => qkv.subarray(t * 3 * d + which * d + hd * dh, t * 3 * d + which * d + (hd + 1) * dh);
      const qs = Array.from({ length: N }, (_, t) => rotaryRef(vecOf(t, 0), pos[t], pos[N + t]));
      const ks = Array.from({ length: N }, (_, t) => rotaryRef(vecOf(t, 1), pos[t], pos[N + t]));
      for (let t = 0; t < N; t++) {
        const s = ks.map((k) => k.reduce((acc, kv, i) => acc + kv * qs[t][i], 0) / Math.sqrt(dh));
        const m = Math.max(...s);
        const e = s.map((v) => Math.exp(v - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j < N; j++) {
          const v = vecOf(j, 2);
          for (let i = 0; i < dh; i++) attnOut[t * d + hd * dh + i] += (e[j] / z) * v[i];
        }
      }
    }
    const proj = linearRef(attnOut, N, get(`${pre}.attn.proj.weight`), get(`${pre}.attn.proj.bias`), d);
    x = x.map((v, i) => v + proj[i]);
    const h2 = rmsRef(x, get(`${pre}.norm2.weight`), c.rmsEps);
    const gate = linearRef(h2, N, get(`${pre}.mlp.gate_proj.weight`), get(`${pre}.mlp.gate_proj.bias`), c.mlp);
    const up = linearRef(h2, N, get(`${pre}.mlp.up_proj.weight`), get(`${pre}.mlp.up_proj.bias`), c.mlp);
    const down = linearRef(gate.map((g, i) => siluRef(g) * up[i]), N, get(`${pre}.mlp.down_proj.weight`), get(`${pre}.mlp.down_proj.bias`), d);
    x = x.map((v, i) => v + down[i]);
  }
  const m = 4 * d;
  const q = rmsRef(x, get('visual.merger.ln_q.weight'), c.rmsEps); // rows of 4 consecutive patches = one merged row
  const mid = linearRef(q, N / 4, get('visual.merger.mlp.0.weight'), get('visual.merger.mlp.0.bias'), m).map(geluTanh);
  return linearRef(mid, N / 4, get('visual.merger.mlp.2.weight'), get('visual.merger.mlp.2.bias'), c.outHidden);
}

// ---------------------------------------------------------------- tests

describe('vision encoder', () => {
  it('has the Qwen2.5-VL parameter names and shapes, counts and FLOPs', () => {
    const s = visionParameterShapes(tiny);
    expect(s['visual.patch_embed.proj.weight']).toEqual([16, 12]);
    expect(s['visual.blocks.1.attn.qkv.weight']).toEqual([48, 16]);
    expect(s['visual.blocks.1.mlp.down_proj.bias']).toEqual([16]);
    expect(s['visual.merger.mlp.0.weight']).toEqual([64, 64]);
    expect(s['visual.merger.mlp.2.weight']).toEqual([12, 64]);
    expect(s['visual.patch_embed.proj.bias']).toBeUndefined();
    expect(visionParameterShapes({ ...tiny, patchBias: true })['visual.patch_embed.proj.bias']).toEqual([16]);
    const perBlock = 16 + 48 * 16 + 48 + 16 * 16 + 16 + 16 + 2 * (24 * 16 + 24) + 16 * 24 + 16;
    const merger = 16 + 64 * 64 + 64 + 12 * 64 + 12;
    expect(visionParamCount(tiny)).toBe(16 * 12 + 2 * perBlock + merger);
    // N patches: 2 * (matrix MACs per patch * N + merger MACs * N/4) + attention 4 * layers * N^2 * hidden.
    const perPatch = 16 * 12 + 2 * (48 * 16 + 16 * 16 + 3 * 24 * 16);
    expect(visionFlopsPerImage(tiny, 16)).toBe(2 * perPatch * 16 + 2 * (64 * 64 + 12 * 64) * 4 + 4 * 2 * 256 * 16);
    expect(() => initVisionParameters({ ...tiny, heads: 8 }, 1)).toThrow(/head dim 2 must be a multiple of 4/);
  });

  it('2D rotary matches Qwen2.5-VL vision rotary on the patch grid', async () => {
    const [H, dh] = [3, 16];
    const pos = patchPositions(4, 6, 2);
    const T = 24;
    const x = randArray(H * T * dh, 11, -2, 2);
    const got = await tidyAsync(async () => visionRope(fromArray(Float32Array.from(x), [1, H, T, dh]), fromArray(pos, [2, 1, T], 'i32')).toArray());
    const want = new Float64Array(x.length);
    for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) {
      const at = (h * T + t) * dh;
      want.set(rotaryRef(x.subarray(at, at + dh), pos[t], pos[T + t]), at);
    }
    expectClose(got, want, 2e-5, 1e-4, 'vision rope');
  });

  it('forward matches a float64 reference, and images in a batch do not see each other', async () => {
    await tidyAsync(async () => {
      const enc = new VisionEncoder(tiny, randomise(initVisionParameters(tiny, 5), 40));
      const P = await hostParams(enc.params);
      // Three images: 4x4, 4x4 and 2x4 patch grids (16, 16, 8 patches).
      const grids: [number, number][] = [[4, 4], [4, 4], [2, 4]];
      const imgs = grids.map(([gh, gw], i) => ({ patches: randArray(gh * gw * 12, 100 + i), pos: patchPositions(gh, gw, 2) }));
      const refs = imgs.map((im) => visionRef(tiny, P, im.patches, im.pos));
      const run = async (ids: number[]) => {
        const patches = Float32Array.from(ids.flatMap((i) => Array.from(imgs[i].patches)));
        const rows = ids.map((i) => imgs[i].pos);
        const n = rows.reduce((a, r) => a + r.length / 2, 0);
        const pos = new Int32Array(2 * n);
        let at = 0;
        for (const r of rows) {
          const len = r.length / 2;
          pos.set(r.subarray(0, len), at);
          pos.set(r.subarray(len), n + at);
          at += len;
        }
        const out = enc.forward(fromArray(patches, [n, 12]), pos, ids.map((i) => imgs[i].pos.length / 2));
        expect(out.shape).toEqual([n / 4, 12]);
        return out.toArray();
      };
      const tol = [2e-4, 2e-3] as const;
      expectClose(await run([0]), refs[0], ...tol, 'one image');
      expectClose(await run([0, 1]), [...refs[0], ...refs[1]], ...tol, 'equal-size batch');
      expectClose(await run([2, 0, 1]), [...refs[2], ...refs[0], ...refs[1]], ...tol, 'mixed-size batch');
      // Positions given as a tensor work the same.
      const t = enc.forward(fromArray(Float32Array.from(imgs[2].patches), [8, 12]), fromArray(imgs[2].pos, [2, 8], 'i32'));
      expectClose(await t.toArray(), refs[2], ...tol, 'tensor positions');
      for (const p of enc.params.values()) p.dispose();
    });
  });

  it('sees where patches are only through their positions', async () => {
    await tidyAsync(async () => {
      const enc = new VisionEncoder(tiny, randomise(initVisionParameters(tiny, 6), 90));
      // B is A with its four 2x2 merge groups moved around the 4x4 grid (group g of B = group g+1 of A).
      const a = randArray(16 * 12, 31);
      const b = new Float64Array(a.length);
      for (let g = 0; g < 4; g++) b.set(a.subarray(((g + 1) % 4) * 48, ((g + 1) % 4 + 1) * 48), g * 48);
      const run = async (x: Float64Array, pos: Int32Array) => enc.forward(fromArray(Float32Array.from(x), [16, 12]), pos).toArray();
      const zero = new Int32Array(32);
      const [oa, ob] = [await run(a, zero), await run(b, zero)];
      const permuted = Array.from({ length: 4 }, (_, g) => Array.from(oa.subarray(((g + 1) % 4) * 12, ((g + 1) % 4 + 1) * 12))).flat();
      expectClose(ob, permuted, 1e-5, 1e-4, 'no positions: the same tokens, permuted');
      const grid = patchPositions(4, 4, 2);
      const [pa, pb] = [await run(a, grid), await run(b, grid)];
      const moved = Array.from({ length: 4 }, (_, g) => Array.from(pa.subarray(((g + 1) % 4) * 12, ((g + 1) % 4 + 1) * 12))).flat();
      const diff = Math.max(...moved.map((v, i) => Math.abs(v - pb[i])));
      expect(diff).toBeGreaterThan(0.05 * Math.max(...Array.from(pb, Math.abs))); // far beyond float error
      for (const p of enc.params.values()) p.dispose();
    });
  });

  it('sends a non-zero gradient to every parameter', async () => {
    const c = { ...tiny, patchBias: true };
    const enc = new VisionEncoder(c, randomise(initVisionParameters(c, 9), 70));
    await tidyAsync(async () => {
      const n = 16 + 8;
      const pos = new Int32Array(2 * n);
      const a = patchPositions(4, 4, 2);
      const b = patchPositions(2, 4, 2);
      pos.set(a.subarray(0, 16), 0);
      pos.set(b.subarray(0, 8), 16);
      pos.set(a.subarray(16), n);
      pos.set(b.subarray(8), n + 16);
      const out = enc.forward(fromArray(Float32Array.from(randArray(n * 12, 3)), [n, 12]), pos, [16, 8]);
      backward(sum(mul(out, fromArray(Float32Array.from(randArray(out.size, 4)), out.shape))));
      for (const [name, p] of enc.params) {
        expect(p.grad, name).not.toBeNull();
        const g = await p.grad!.toArray();
        expect(g.length, name).toBe(p.size);
        expect(g.every(Number.isFinite), `${name} finite`).toBe(true);
        expect(g.some((v) => v !== 0), `${name} non-zero`).toBe(true);
      }
    });
    for (const p of enc.params.values()) p.dispose();
  });

  it('rejects inconsistent inputs with clear errors', () => {
    const enc = new VisionEncoder(tiny, initVisionParameters(tiny, 1));
    tidy(() => {
      const x = fromArray(new Float32Array(16 * 12), [16, 12]);
      const pos = patchPositions(4, 4, 2);
      expect(() => enc.forward(fromArray(new Float32Array(16 * 10), [16, 10]), pos)).toThrow(/patches have shape \[16,10\], expected \[N, 12\]/);
      expect(() => enc.forward(x, pos, [10, 6])).toThrow(/lengths \[10,6\] must be positive multiples of 4 summing to the 16/);
      expect(() => enc.forward(x, pos, [8, 4])).toThrow(/summing to the 16/);
      expect(() => enc.forward(x, pos.subarray(0, 16))).toThrow(/positions have shape \[2,8\], expected \[2, 16\]/);
    });
    for (const p of enc.params.values()) p.dispose();
  });

  it('a tiny encoder + linear head overfits 4 synthetic images (loss falls > 5x in 60 AdamW steps)', async () => {
    const c: VisionConfig = { patchSize: 4, hidden: 32, layers: 2, heads: 2, mlp: 64, outHidden: 32, mergeSize: 2, rmsEps: 1e-6 };
    // 32x32 RGBA pictures: horizontal stripes, vertical stripes, a checkerboard, a red disc on white (alpha edge).
    const draw = (f: (x: number, y: number) => [number, number, number, number]) => {
      const rgba = new Uint8Array(32 * 32 * 4);
      for (let y = 0; y < 32; y++) for (let x = 0; x < 32; x++) rgba.set(f(x, y), (y * 32 + x) * 4);
      return { width: 32, height: 32, rgba };
    };
    const grey = (v: number): [number, number, number, number] => [v, v, v, 255];
    const images = [
      draw((_, y) => grey(y % 8 < 4 ? 30 : 220)),
      draw((x) => grey(x % 8 < 4 ? 30 : 220)),
      draw((x, y) => grey((Math.floor(x / 8) + Math.floor(y / 8)) % 2 ? 30 : 220)),
      draw((x, y) => ((x - 16) ** 2 + (y - 16) ** 2 < 100 ? [220, 20, 20, 255] : [0, 0, 0, 0])),
    ];
    const pre = images.map((im) => preprocess(im, { patchSize: 4, mergeSize: 2, minPixels: 1, maxPixels: 32 * 32 }));
    const n = pre[0].gridH * pre[0].gridW; // 64 patches, 16 merged tokens per image
    const patches = new Float32Array(4 * n * 48);
    pre.forEach((p, i) => patches.set(patchify(p, 4, 2), i * n * 48));
    const one = patchPositions(pre[0].gridH, pre[0].gridW, 2);
    const pos = new Int32Array(2 * 4 * n);
    for (let i = 0; i < 4; i++) {
      pos.set(one.subarray(0, n), i * n);
      pos.set(one.subarray(n), 4 * n + i * n);
    }
    const enc = new VisionEncoder(c, initVisionParameters(c, 21));
    const head = requireGrad(randn([4, 32], { seed: 5, std: 0.1 }));
    const opt = new AdamW([...enc.params.values(), head], { lr: 3e-3, weightDecay: 0 });
    const x = fromArray(patches, [4 * n, 48]);
    const p = fromArray(pos, [2, 4 * n], 'i32');
    const targets = fromArray(Int32Array.from([0, 1, 2, 3]), [4], 'i32');
    const losses: number[] = [];
    for (let step = 0; step < 60; step++) {
      const loss = tidy(() => {
        const tokens = reshape(enc.forward(x, p, [n, n, n, n]), [4, n / 4, 32]);
        const logits = linear(mean(tokens, 1), head); // mean-pool the merged tokens
        const l = crossEntropy(logits, targets);
        backward(l);
        opt.step();
        opt.zeroGrad();
        return l;
      });
      losses.push(await loss.item());
      loss.dispose();
    }
    const last = losses.slice(-5).reduce((a, b) => a + b, 0) / 5;
    expect(losses[0]).toBeGreaterThan(1.2); // about ln 4 at the start
    expect(last, `losses ${losses.map((v) => v.toFixed(3)).join(' ')}`).toBeLessThan(losses[0] / 5);
    opt.dispose();
    for (const t of [x, p, targets, head, ...enc.params.values()]) t.dispose();
  });
});
