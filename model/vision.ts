// A Qwen2.5-VL-style vision encoder on the retrv runtime.
//
// Patches (from model/image.ts: [N, 3*p*p] rows, each 2x2 merge group as 4 consecutive
// rows) -> linear patch embedding -> pre-norm ViT blocks (RMSNorm -> bidirectional
// attention with qkv bias and 2D rotary positions -> residual -> RMSNorm -> SwiGLU MLP
// with biases -> residual) -> patch merger (RMSNorm, each 4 consecutive rows joined into
// one of 4*hidden, Linear, GELU, Linear) -> [N/4, outHidden] tokens for the language model.
// Tensor names follow Qwen2.5-VL checkpoints (visual.blocks.0.attn.qkv.weight, ...).
//
// No window attention: Qwen2.5-VL restricts most layers to 112x112-pixel windows to save
// time on large images, but our images are small, so every layer attends over the whole
// image (Qwen's full-attention layers). Attention never crosses images: a batch of
// equal-sized images runs as a batch; mixed sizes run as one sequence with a
// block-diagonal mask. The merger's GELU is the tanh approximation (torch uses erf).
import {
  type Tensor,
  add,
  attention,
  fromArray,
  gelu,
  keep,
  linear,
  ones,
  permute,
  randn,
  requireGrad,
  reshape,
  rmsNorm,
  rope,
  swiglu,
  slice,
  squeeze,
  zeros,
} from '../runtime/index.ts';

export interface VisionConfig {
  /** Patch side in pixels (14 in the real model). */
  patchSize: number;
  hidden: number;
  layers: number;
  heads: number;
  mlp: number;
  /** Width of the language model the merged tokens feed. */
  outHidden: number;
  /** Patches per side of a merge group (2). */
  mergeSize: number;
  rmsEps: number;
  /** Rotary base (default 10000). */
  ropeTheta?: number;
  /** A bias on the patch embedding (Qwen has none; default false). */
  patchBias?: boolean;
}

export function visionHeadDim(c: VisionConfig): number {
  return c.hidden / c.heads;
}

/** Inputs to the merger MLP: mergeSize^2 patches side by side. */
export function mergedWidth(c: VisionConfig): number {
  return c.hidden * c.mergeSize * c.mergeSize;
}

/** Checks the config's arithmetic and names the first problem. */
export function validateVisionConfig(c: VisionConfig): void {
  for (const k of ['patchSize', 'hidden', 'layers', 'heads', 'mlp', 'outHidden', 'mergeSize'] as const) {
    if (!Number.isInteger(c[k]) || c[k] < 1) throw new RangeError(`vision config: ${k} must be a positive integer, got ${c[k]}`);
  }
  if (c.hidden % c.heads !== 0) throw new RangeError(`vision config: hidden ${c.hidden} is not a multiple of heads ${c.heads}`);
  if (visionHeadDim(c) % 4 !== 0) {
    throw new RangeError(`vision config: head dim ${visionHeadDim(c)} must be a multiple of 4 (2D rotary: a quarter of it per axis)`);
  }
}

/** Parameter shapes by Qwen2.5-VL name. */
export function visionParameterShapes(c: VisionConfig): Record<string, number[]> {
  const d = c.hidden;
  const pp = 3 * c.patchSize * c.patchSize;
  const s: Record<string, number[]> = { 'visual.patch_embed.proj.weight': [d, pp] };
  if (c.patchBias) s['visual.patch_embed.proj.bias'] = [d];
  for (let i = 0; i < c.layers; i++) {
    const p = `visual.blocks.${i}`;
    s[`${p}.norm1.weight`] = [d];
    s[`${p}.attn.qkv.weight`] = [3 * d, d];
    s[`${p}.attn.qkv.bias`] = [3 * d];
    s[`${p}.attn.proj.weight`] = [d, d];
    s[`${p}.attn.proj.bias`] = [d];
    s[`${p}.norm2.weight`] = [d];
    s[`${p}.mlp.gate_proj.weight`] = [c.mlp, d];
    s[`${p}.mlp.gate_proj.bias`] = [c.mlp];
    s[`${p}.mlp.up_proj.weight`] = [c.mlp, d];
    s[`${p}.mlp.up_proj.bias`] = [c.mlp];
    s[`${p}.mlp.down_proj.weight`] = [d, c.mlp];
    s[`${p}.mlp.down_proj.bias`] = [d];
  }
  const m = mergedWidth(c);
  s['visual.merger.ln_q.weight'] = [d];
  s['visual.merger.mlp.0.weight'] = [m, m];
  s['visual.merger.mlp.0.bias'] = [m];
  s['visual.merger.mlp.2.weight'] = [c.outHidden, m];
  s['visual.merger.mlp.2.bias'] = [c.outHidden];
  return s;
}

/** Fresh parameters: normal(0, 0.02) matrices (residual projections scaled by depth), unit norms, zero biases. */
export function initVisionParameters(c: VisionConfig, seed: number): Map<string, Tensor> {
  validateVisionConfig(c);
  const params = new Map<string, Tensor>();
  let k = 0;
  for (const [name, shape] of Object.entries(visionParameterShapes(c))) {
    let t: Tensor;
    if (name.endsWith('norm1.weight') || name.endsWith('norm2.weight') || name.endsWith('ln_q.weight')) t = ones(shape);
    else if (name.endsWith('.bias')) t = zeros(shape);
    else {
      const residual = name.endsWith('attn.proj.weight') || name.endsWith('down_proj.weight');
      // Different stream from the LM's initParameters at the same seed.
      t = randn(shape, { seed: seed * 7919 + 100003 + k, std: residual ? 0.02 / Math.sqrt(2 * c.layers) : 0.02 });
    }
    k++;
    t.name = name;
    params.set(name, keep(requireGrad(t)));
  }
  return params;
}

/** Total parameter count. */
export function visionParamCount(c: VisionConfig): number {
  return Object.values(visionParameterShapes(c)).reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
}

/**
 * Forward multiply-add FLOPs (2 per MAC) for one image of `numPatches` patches: every
 * matrix once per patch (merger matrices once per merged token) plus attention's
 * q k^T and p v over the whole image in every layer.
 */
export function visionFlopsPerImage(c: VisionConfig, numPatches: number): number {
  let perPatch = 0;
  let perMerged = 0;
  for (const [name, shape] of Object.entries(visionParameterShapes(c))) {
    if (shape.length !== 2) continue;
    if (name.startsWith('visual.merger.')) perMerged += shape[0] * shape[1];
    else perPatch += shape[0] * shape[1];
  }
  const merged = numPatches / (c.mergeSize * c.mergeSize);
  return 2 * perPatch * numPatches + 2 * perMerged * merged + 2 * 2 * c.layers * numPatches * numPatches * c.hidden;
}

/**
 * Qwen2.5-VL's vision rotary frequencies laid out for rope(): Dh/4 frequencies
 * theta^(-4j/Dh) for the row axis, the same Dh/4 again for the column axis. (Plain
 * `{ theta }` would give the column section only the slow half of the spectrum.)
 */
export function visionInvFreq(headDim: number, theta = 10000): Float64Array {
  const q = headDim / 4;
  const inv = new Float64Array(headDim / 2);
  for (let j = 0; j < q; j++) inv[j] = inv[q + j] = 1 / theta ** ((4 * j) / headDim);
  return inv;
}

/**
 * 2D rotary embedding of x [B, H, T, Dh] at positions i32 [2, B, T] (patch row, patch
 * column): the first Dh/4 rotation pairs turn with the row, the next Dh/4 with the column.
 */
export function visionRope(x: Tensor, positions: Tensor, theta = 10000): Tensor {
  const dh = x.shape[x.rank - 1];
  return rope(x, positions, { sections: [dh / 4, dh / 4], invFreq: visionInvFreq(dh, theta) });
}

export class VisionEncoder {
  constructor(
    readonly config: VisionConfig,
    readonly params: Map<string, Tensor>,
  ) {
    validateVisionConfig(config);
  }

  p(name: string): Tensor {
    const t = this.params.get(name);
    if (!t) throw new Error(`missing parameter ${name}`);
    return t;
  }

  /**
   * Merged image tokens [N / mergeSize^2, outHidden] for patches [N, 3*p*p] and their
   * grid positions [2, N] (i32 tensor or host array, as patchPositions gives them).
   * `lengths` splits the rows into images (each a multiple of mergeSize^2; default one
   * image of N); the output keeps the images in order.
   */
  forward(patches: Tensor, positions: Tensor | Int32Array, lengths?: readonly number[]): Tensor {
    const c = this.config;
    const pp = 3 * c.patchSize * c.patchSize;
    if (patches.rank !== 2 || patches.shape[1] !== pp) {
      throw new RangeError(`vision: patches have shape [${patches.shape}], expected [N, ${pp}] (3 * patchSize^2)`);
    }
    const N = patches.shape[0];
    const group = c.mergeSize * c.mergeSize;
    const lens = lengths ? [...lengths] : [N];
    const total = lens.reduce((a, b) => a + b, 0);
    if (total !== N || lens.some((l) => !Number.isInteger(l) || l < group || l % group !== 0)) {
      throw new RangeError(`vision: lengths [${lens}] must be positive multiples of ${group} summing to the ${N} patch rows`);
    }
    const posShape = positions instanceof Int32Array ? [2, positions.length / 2] : positions.shape;
    if (posShape.length !== 2 || posShape[0] !== 2 || posShape[1] !== N || (positions instanceof Int32Array && positions.length % 2 !== 0)) {
      throw new RangeError(`vision: positions have shape [${posShape}], expected [2, ${N}] for patches [${patches.shape}]`);
    }
    const pos = positions instanceof Int32Array ? fromArray(positions, [2, N], 'i32') : positions;

    // Equal images run as a batch [B, T]; otherwise one sequence and a block-diagonal mask.
    const uniform = lens.every((l) => l === lens[0]);
    const B = uniform ? lens.length : 1;
    const T = N / B;
    const pos3 = reshape(pos, [2, B, T]);
    const mask = uniform ? undefined : blockDiagonalMask(lens);

    let x = reshape(linear(patches, this.p('visual.patch_embed.proj.weight'), c.patchBias ? this.p('visual.patch_embed.proj.bias') : null), [B, T, c.hidden]);
    const dh = visionHeadDim(c);
    const theta = c.ropeTheta ?? 10000;
    for (let i = 0; i < c.layers; i++) {
      const pre = `visual.blocks.${i}`;
      const h = rmsNorm(x, this.p(`${pre}.norm1.weight`), c.rmsEps);
      // qkv rows are [q | k | v], each [heads, dh] (Qwen's reshape(T, 3, H, dh)).
      const qkv = reshape(linear(h, this.p(`${pre}.attn.qkv.weight`), this.p(`${pre}.attn.qkv.bias`)), [B, T, 3, c.heads, dh]);
      const part = (j: number) => permute(squeeze(slice(qkv, 2, j, j + 1), 2), [0, 2, 1, 3]); // (B, H, T, dh) view
      const q = visionRope(part(0), pos3, theta);
      const k = visionRope(part(1), pos3, theta);
      const a = attention(q, k, part(2), { mask }); // (B, H, T, dh)
      const merged = reshape(permute(a, [0, 2, 1, 3]), [B, T, c.hidden]);
      x = add(x, linear(merged, this.p(`${pre}.attn.proj.weight`), this.p(`${pre}.attn.proj.bias`)));
      const h2 = rmsNorm(x, this.p(`${pre}.norm2.weight`), c.rmsEps);
      const gate = linear(h2, this.p(`${pre}.mlp.gate_proj.weight`), this.p(`${pre}.mlp.gate_proj.bias`));
      const up = linear(h2, this.p(`${pre}.mlp.up_proj.weight`), this.p(`${pre}.mlp.up_proj.bias`));
      x = add(x, linear(swiglu(gate, up), this.p(`${pre}.mlp.down_proj.weight`), this.p(`${pre}.mlp.down_proj.bias`)));
    }
    return this.merge(x);
  }

  /** The patch merger: hidden states [..., hidden] (merge groups consecutive) -> [N/4, outHidden]. */
  merge(x: Tensor): Tensor {
    const c = this.config;
    const h = reshape(rmsNorm(x, this.p('visual.merger.ln_q.weight'), c.rmsEps), [-1, mergedWidth(c)]);
    const mid = gelu(linear(h, this.p('visual.merger.mlp.0.weight'), this.p('visual.merger.mlp.0.bias')));
    return linear(mid, this.p('visual.merger.mlp.2.weight'), this.p('visual.merger.mlp.2.bias'));
  }

  /** Forward FLOPs for one image of numPatches patches. */
  flopsPerImage(numPatches: number): number {
    return visionFlopsPerImage(this.config, numPatches);
  }
}

/** Additive mask [1, 1, N, N]: 0 inside each image's block, -Infinity across images. */
function blockDiagonalMask(lens: readonly number[]): Tensor {
  const N = lens.reduce((a, b) => a + b, 0);
  const m = new Float32Array(N * N).fill(-Infinity);
  let at = 0;
  for (const l of lens) {
    for (let r = at; r < at + l; r++) m.fill(0, r * N + at, r * N + at + l);
    at += l;
  }
  return fromArray(m, [1, 1, N, N]);
}
