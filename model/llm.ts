// A Qwen2-style decoder-only language model on the retrv runtime.
//
// Pre-norm blocks: RMSNorm -> grouped-query attention (q/k/v with bias, o without,
// rotary positions) -> residual -> RMSNorm -> SwiGLU MLP -> residual; final RMSNorm and
// an output head tied to the token embedding at small sizes. Tensor names follow
// Qwen2's checkpoints (model.layers.0.self_attn.q_proj.weight, ...).
import {
  type Tensor,
  add,
  attention,
  embedding,
  keep,
  linear,
  permute,
  randn,
  requireGrad,
  reshape,
  rmsNorm,
  rope,
  shapeStr,
  swiglu,
  ones,
  zeros,
} from '../runtime/index.ts';
import type { KvCache } from './kv-cache.ts';

export interface LlmConfig {
  vocabSize: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  mlp: number;
  ropeTheta: number;
  /** M-RoPE sections (sum = head_dim / 2); absent for plain RoPE. */
  ropeSections?: number[];
  rmsEps: number;
  tieEmbeddings: boolean;
}

export function headDim(c: LlmConfig): number {
  return c.hidden / c.heads;
}

/** Checks the config's arithmetic and names the first problem. */
export function validateConfig(c: LlmConfig): void {
  if (c.hidden % c.heads !== 0) throw new RangeError(`config: hidden ${c.hidden} is not a multiple of heads ${c.heads}`);
  if (c.heads % c.kvHeads !== 0) throw new RangeError(`config: heads ${c.heads} is not a multiple of kvHeads ${c.kvHeads}`);
  if (headDim(c) % 2 !== 0) throw new RangeError(`config: head dim ${headDim(c)} must be even for rotary embeddings`);
  if (c.ropeSections && c.ropeSections.reduce((a, b) => a + b, 0) !== headDim(c) / 2) {
    throw new RangeError(`config: ropeSections [${c.ropeSections}] must sum to head_dim/2 = ${headDim(c) / 2}`);
  }
}

/** Parameter shapes by Qwen2 name. */
export function parameterShapes(c: LlmConfig): Record<string, number[]> {
  const d = c.hidden;
  const kv = c.kvHeads * headDim(c);
  const s: Record<string, number[]> = { 'model.embed_tokens.weight': [c.vocabSize, d] };
  for (let i = 0; i < c.layers; i++) {
    const p = `model.layers.${i}`;
    s[`${p}.input_layernorm.weight`] = [d];
    s[`${p}.self_attn.q_proj.weight`] = [d, d];
    s[`${p}.self_attn.q_proj.bias`] = [d];
    s[`${p}.self_attn.k_proj.weight`] = [kv, d];
    s[`${p}.self_attn.k_proj.bias`] = [kv];
    s[`${p}.self_attn.v_proj.weight`] = [kv, d];
    s[`${p}.self_attn.v_proj.bias`] = [kv];
    s[`${p}.self_attn.o_proj.weight`] = [d, d];
    s[`${p}.post_attention_layernorm.weight`] = [d];
    s[`${p}.mlp.gate_proj.weight`] = [c.mlp, d];
    s[`${p}.mlp.up_proj.weight`] = [c.mlp, d];
    s[`${p}.mlp.down_proj.weight`] = [d, c.mlp];
  }
  s['model.norm.weight'] = [d];
  if (!c.tieEmbeddings) s['lm_head.weight'] = [c.vocabSize, d];
  return s;
}

/** Fresh parameters: normal(0, 0.02) matrices (output projections scaled by depth), unit norms, zero biases. */
export function initParameters(c: LlmConfig, seed: number): Map<string, Tensor> {
  validateConfig(c);
  const params = new Map<string, Tensor>();
  let k = 0;
  for (const [name, shape] of Object.entries(parameterShapes(c))) {
    let t: Tensor;
    if (name.endsWith('layernorm.weight') || name === 'model.norm.weight') t = ones(shape);
    else if (name.endsWith('.bias')) t = zeros(shape);
    else {
      const residual = name.endsWith('o_proj.weight') || name.endsWith('down_proj.weight');
      t = randn(shape, { seed: seed * 7919 + k, std: residual ? 0.02 / Math.sqrt(2 * c.layers) : 0.02 });
    }
    k++;
    t.name = name;
    params.set(name, keep(requireGrad(t)));
  }
  return params;
}

export class Llm {
  constructor(
    readonly config: LlmConfig,
    readonly params: Map<string, Tensor>,
  ) {
    validateConfig(config);
  }

  p(name: string): Tensor {
    const t = this.params.get(name);
    if (!t) throw new Error(`missing parameter ${name}`);
    return t;
  }

  /** Token embeddings [B, T, D] for ids [B, T]. */
  embed(ids: Tensor): Tensor {
    return embedding(this.p('model.embed_tokens.weight'), ids);
  }

  /**
   * Hidden states after the final norm, [B, T, D].
   * positions: i32 [B, T] (plain RoPE) or [S, B, T] for M-RoPE sections.
   * keyPadding: [B, T], nonzero = a real token, 0 = padding (never attended to).
   *
   * With `cache`, x holds the T new tokens: their keys and values are written into the
   * cache's slots [L, L + T) (L = cache.length), attention runs over the cached prefix
   * plus the new tokens (causal, query i at slot L + i), and the cache advances by T.
   * keyPadding then marks the new tokens only (earlier slots keep their marks). Positions
   * are the caller's business (they continue each sequence's own positions). The cache
   * path is for inference: no gradient flows into cached keys and values.
   */
  forwardEmbeds(x: Tensor, positions: Tensor, opts: { keyPadding?: Tensor; cache?: KvCache } = {}): Tensor {
    const c = this.config;
    const [B, T] = x.shape;
    const cache = opts.cache;
    const L = cache ? cache.length : 0;
    if (cache) {
      if (cache.batch !== B || cache.layers !== c.layers || cache.kvHeads !== c.kvHeads || cache.headDim !== headDim(c)) {
        throw new RangeError(
          `forwardEmbeds: cache (batch ${cache.batch}, layers ${cache.layers}, kvHeads ${cache.kvHeads}, headDim ${cache.headDim}) ` +
            `does not fit x ${shapeStr(x.shape)} and the model (layers ${c.layers}, kvHeads ${c.kvHeads}, headDim ${headDim(c)})`,
        );
      }
      cache.reserve(T);
      if (opts.keyPadding) cache.markValid(opts.keyPadding);
    }
    const keyPadding = cache ? cache.keyPadding(L + T) : opts.keyPadding;
    const dh = headDim(c);
    const ropeOpts = { theta: c.ropeTheta, sections: c.ropeSections };
    for (let i = 0; i < c.layers; i++) {
      const pre = `model.layers.${i}`;
      const h = rmsNorm(x, this.p(`${pre}.input_layernorm.weight`), c.rmsEps);
      const heads = (t: Tensor, n: number) => permute(reshape(t, [B, T, n, dh]), [0, 2, 1, 3]); // (B, n, T, dh)
      const q = rope(heads(linear(h, this.p(`${pre}.self_attn.q_proj.weight`), this.p(`${pre}.self_attn.q_proj.bias`)), c.heads), positions, ropeOpts);
      const k = rope(heads(linear(h, this.p(`${pre}.self_attn.k_proj.weight`), this.p(`${pre}.self_attn.k_proj.bias`)), c.kvHeads), positions, ropeOpts);
      const v = heads(linear(h, this.p(`${pre}.self_attn.v_proj.weight`), this.p(`${pre}.self_attn.v_proj.bias`)), c.kvHeads);
      let a: Tensor; // (B, H, T, dh)
      if (cache) {
        cache.write(i, k, v);
        const ck = cache.keys(i, L + T);
        const cv = cache.values(i, L + T);
        a = attention(q, ck, cv, { causal: true, keyPadding, qOffset: L });
        ck.dispose();
        cv.dispose();
      } else a = attention(q, k, v, { causal: true, keyPadding });
      const merged = reshape(permute(a, [0, 2, 1, 3]), [B, T, c.hidden]);
      x = add(x, linear(merged, this.p(`${pre}.self_attn.o_proj.weight`)));
      const h2 = rmsNorm(x, this.p(`${pre}.post_attention_layernorm.weight`), c.rmsEps);
      const gate = linear(h2, this.p(`${pre}.mlp.gate_proj.weight`));
      const up = linear(h2, this.p(`${pre}.mlp.up_proj.weight`));
      x = add(x, linear(swiglu(gate, up), this.p(`${pre}.mlp.down_proj.weight`)));
    }
    if (cache) {
      keyPadding?.dispose();
      cache.advance(T);
    }
    return rmsNorm(x, this.p('model.norm.weight'), c.rmsEps);
  }

  /** Logits [B, T, V] from final hidden states. */
  head(h: Tensor): Tensor {
    return linear(h, this.p(this.config.tieEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight'));
  }

  forward(ids: Tensor, positions: Tensor): Tensor {
    return this.head(this.forwardEmbeds(this.embed(ids), positions));
  }

  /** Multiply-adds per token (forward), for FLOP and MFU estimates: 2 * params plus attention. */
  flopsPerToken(seqLen: number): number {
    const c = this.config;
    let n = 0;
    for (const [name, shape] of Object.entries(parameterShapes(c))) {
      if (shape.length === 2 && name !== 'model.embed_tokens.weight') n += shape[0] * shape[1];
    }
    n += c.vocabSize * c.hidden; // the output head
    return 2 * n + 2 * 2 * c.layers * seqLen * c.hidden;
  }
}
