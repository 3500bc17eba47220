// The Information Compression Module (PAPER.md): turns a candidate's full token
// embeddings T_c into 2 rows the language model reads in place of them.
//
//   content token       t_con = Attn(Q = e_con, K = V = T_c)
//   relationship token  R     = Attn(Q = T_c,   K = V = T_q)   (candidate reads the query)
//                       t_rel = Attn(Q = e_rel, K = V = R)
//
// (IcmConfig.relation 'compare' replaces the mix R by a comparison; see there.)
// Each Attn is multi-head attention with q/k/v/o projections (no biases, no causal mask).
// Keys (and token queries) pass an RMSNorm first; values are the raw rows, so that with
// identity v/o projections and near-uniform scores t_con starts as the mean of the
// candidate's token embeddings (a good starting point for self-alignment). The cross
// step's q/k start as identities: each candidate token first attends to the query tokens
// most like itself. T_c and T_q are exactly what the LLM would receive for the content
// (text token embeddings, vision-encoder rows between <|vision_start|> / <|vision_end|>).
//
// Checkpoints: the ICM's tensors (named icm.*) live in their own `icm.safetensors` beside
// `model.safetensors`, with `icm.json` for its config, so checkpoints of the stages before
// alignment (which have no ICM) load unchanged and Mllm.load never sees icm.* names.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  type Tensor,
  add,
  attention,
  embedding,
  expand,
  fromArray,
  indexSelect,
  keep,
  linear,
  loadSafetensors,
  matmul,
  mean,
  mul,
  ones,
  permute,
  randn,
  requireGrad,
  reshape,
  rmsNorm,
  saveSafetensors,
  shapeStr,
  slice,
  squeeze,
  stack,
  sub,
  sum,
  tidy,
  concat,
  zeros,
} from '../runtime/index.ts';
import { CheckpointError } from './checkpoint.ts';
import type { CompressFactory } from './inspect.ts';
import type { Mllm } from './mllm.ts';
import { type CandidateInput, type Part, type QueryInput, contentParts } from './sequence.ts';

export interface IcmConfig {
  /** The LLM width D (input and output rows). */
  hidden: number;
  heads: number;
  rmsEps: number;
  /**
   * Subtract from each candidate's two rows their mean over the candidates of its query
   * (compressGroups). Compressed emoji images share a large common component that hides
   * which candidate matches (train/experiments/pointing.ts); centring removes it, at the
   * price of rows that depend on the rest of the list (a list of one centres to zeros).
   * Absent (off) in older configs.
   */
  centre?: boolean;
  /**
   * What the candidate-over-query step passes on. 'mix' (the paper's formula, and the
   * default for configs without the field): R is the query rows each candidate token
   * read, a convex mix of the same few query rows whatever the candidate, so how well the
   * candidate matched is lost in the softmax. 'compare': both sides first lose the mean
   * row of the candidate list, then R is the query mix times the candidate token itself
   * (both in the cross step's value space, RMS-normalised), so a row's sum is D times
   * their cosine and a match is linearly readable; this is what a near copy (task 4:
   * another vendor's image of the same emoji) needs (train/experiments/pointing.ts,
   * vendor mode). Like `centre`, it makes a candidate's rows depend on its list.
   */
  relation?: 'mix' | 'compare';
  /**
   * Add to both rows of candidate i the mean token embedding of its index as the prompt
   * writes it (indexTagRows), so the row that carries the match also carries the token
   * the answer must name. Tried on task 4 at K = 8 and 16: the loss curves matched the
   * untagged runs (README, the table in miniature). Absent (off) in older configs.
   */
  indexTag?: boolean;
}

/** The three attention steps: content, candidate-over-query, relationship. */
const BLOCKS = ['con', 'cross', 'rel'] as const;
type Block = (typeof BLOCKS)[number];

export const ICM_WEIGHTS_FILE = 'icm.safetensors';
export const ICM_CONFIG_FILE = 'icm.json';

/**
 * A new ICM's config for a model: its width, its head count, its norm epsilon, and the
 * 'compare' relation (configs saved without the field keep the paper's 'mix').
 */
export function icmConfigFor(model: { llm: { hidden: number; heads: number; rmsEps: number } }, heads = model.llm.heads): IcmConfig {
  return { hidden: model.llm.hidden, heads, rmsEps: model.llm.rmsEps, relation: 'compare' };
}

export function validateIcmConfig(c: IcmConfig): void {
  if (c.centre !== undefined && typeof c.centre !== 'boolean') throw new RangeError(`icm config: centre must be true or false, got ${JSON.stringify(c.centre)}`);
  if (c.indexTag !== undefined && typeof c.indexTag !== 'boolean') throw new RangeError(`icm config: indexTag must be true or false, got ${JSON.stringify(c.indexTag)}`);
  if (c.relation !== undefined && c.relation !== 'mix' && c.relation !== 'compare') {
    throw new RangeError(`icm config: relation must be 'mix' or 'compare', got ${JSON.stringify(c.relation)}`);
  }
  if (!Number.isInteger(c.hidden) || c.hidden < 1 || !Number.isInteger(c.heads) || c.heads < 1) {
    throw new RangeError(`icm config: hidden ${c.hidden} and heads ${c.heads} must be positive integers`);
  }
  if (c.hidden % c.heads !== 0) throw new RangeError(`icm config: hidden ${c.hidden} is not a multiple of heads ${c.heads}`);
}

/** Parameter shapes by name. */
export function icmParameterShapes(c: IcmConfig): Record<string, number[]> {
  const d = c.hidden;
  const s: Record<string, number[]> = { 'icm.con_query': [1, d], 'icm.rel_query': [1, d] };
  for (const b of BLOCKS) for (const p of ['q', 'k', 'v', 'o']) s[`icm.${b}.${p}_proj.weight`] = [d, d];
  s['icm.con.kv_norm.weight'] = [d];
  s['icm.cross.q_norm.weight'] = [d];
  s['icm.cross.kv_norm.weight'] = [d];
  s['icm.rel.kv_norm.weight'] = [d];
  return s;
}

function identity(d: number): Tensor {
  const m = new Float32Array(d * d);
  for (let i = 0; i < d; i++) m[i * d + i] = 1;
  return fromArray(m, [d, d]);
}

/**
 * Fresh parameters: norms 1; v and o projections identity; the cross step's q/k identity
 * (token matching); the learned queries' q/k small random (near-uniform attention, so
 * t_con starts near the candidate's mean token and t_rel near the mean of R).
 */
export function initIcmParameters(c: IcmConfig, seed: number): Map<string, Tensor> {
  validateIcmConfig(c);
  const params = new Map<string, Tensor>();
  let k = 0;
  for (const [name, shape] of Object.entries(icmParameterShapes(c))) {
    let t: Tensor;
    const seedK = seed * 7919 + 200003 + k++; // a stream apart from the LLM's and the vision encoder's
    if (name.endsWith('norm.weight')) t = ones(shape);
    else if (name.endsWith('_query')) t = randn(shape, { seed: seedK, std: 0.5 });
    else if (/\.(v|o)_proj\./.test(name) || /^icm\.cross\.(q|k)_proj\./.test(name)) t = identity(c.hidden);
    else t = randn(shape, { seed: seedK, std: 0.02 });
    t.name = name;
    params.set(name, keep(requireGrad(t)));
  }
  return params;
}

export interface CompressGroup {
  query: QueryInput;
  candidates: readonly CandidateInput[];
}

export class Icm {
  constructor(
    readonly config: IcmConfig,
    readonly params: Map<string, Tensor>,
  ) {
    validateIcmConfig(config);
    const problems = checkNames(params, icmParameterShapes(config));
    if (problems.length) throw new RangeError(`icm parameters do not match the config:\n  ${problems.join('\n  ')}`);
  }

  static create(config: IcmConfig, seed: number): Icm {
    return new Icm(config, initIcmParameters(config, seed));
  }

  p(name: string): Tensor {
    const t = this.params.get(name);
    if (!t) throw new Error(`missing parameter ${name}`);
    return t;
  }

  parameterList(): Tensor[] {
    return [...this.params.values()];
  }

  dispose(): void {
    for (const t of this.params.values()) t.dispose();
  }

  /**
   * The core: candidates' embeddings cands[i] [n_i, D] and queries' embeddings
   * queries[j] [m_j, D]; candidate i reads query queryOf[i] (default: query 0 for all).
   * Returns [K, 2, D]: row 0 t_con, row 1 t_rel. Candidates (and queries) are padded to
   * the longest and the padding is masked, so a candidate's rows do not depend on its
   * batch companions.
   */
  compressEmbeds(cands: readonly Tensor[], queries: readonly Tensor[], queryOf?: readonly number[]): Tensor {
    const c = this.config;
    const D = c.hidden;
    const K = cands.length;
    const Q = queries.length;
    if (!K) throw new RangeError('icm: no candidates to compress');
    if (!Q) throw new RangeError('icm: no query embeddings');
    const of = queryOf ?? new Array<number>(K).fill(0);
    if (of.length !== K || of.some((j) => !Number.isInteger(j) || j < 0 || j >= Q)) {
      throw new RangeError(`icm: queryOf [${of}] must give each of the ${K} candidates a query index below ${Q}`);
    }
    for (const [what, list] of [['candidate', cands], ['query', queries]] as const) {
      list.forEach((t, i) => {
        if (t.rank !== 2 || t.shape[1] !== D || t.shape[0] < 1) throw new RangeError(`icm: ${what} ${i} has shape ${shapeStr(t.shape)}, expected [n >= 1, ${D}]`);
      });
    }
    return tidy(() => this.compressPadded(padRows(cands), padRows(queries), of));
  }

  /** compressEmbeds on rows already padded into [K, L, D] and [Q, Lq, D] with their valid marks (inside the caller's tidy). */
  private compressPadded(cands: PaddedRows, queries: PaddedRows, of: readonly number[]): Tensor {
    const c = this.config;
    const K = cands.x.shape[0];
    const Q = queries.x.shape[0];
    const { x: tc, valid: cValid, L } = cands;
    const { x: tq, valid: qValid, L: Lq } = queries;
    const candMask = fromArray(cValid, [K, L], 'i32');
    const qMask = new Int32Array(K * Lq);
    of.forEach((j, i) => qMask.set(qValid.subarray(j * Lq, (j + 1) * Lq), i * Lq));
    const crossMask = fromArray(qMask, [K, Lq], 'i32');

    // t_con: the learned query over the candidate's tokens.
    const tcon = this.attend('con', this.p('icm.con_query'), rmsNorm(tc, this.p('icm.con.kv_norm.weight'), c.rmsEps), tc, K, candMask);
    // R: every candidate token over its query's tokens. With 'compare', both sides first
    // lose their list's mean candidate row, so what is compared is what sets a candidate
    // apart, not the component all emoji images share.
    const compare = c.relation === 'compare';
    const { cands: cx, queries: qx } = compare ? listCentred(tc, cValid, L, tq, Q, of) : { cands: tc, queries: tq };
    const mixed = this.attend('cross', rmsNorm(cx, this.p('icm.cross.q_norm.weight'), c.rmsEps), rmsNorm(qx, this.p('icm.cross.kv_norm.weight'), c.rmsEps), qx, K, crossMask, of);
    const R = compare ? this.compare(mixed, cx) : mixed;
    // t_rel: the learned query over R (padded candidate rows masked again).
    const trel = this.attend('rel', this.p('icm.rel_query'), rmsNorm(R, this.p('icm.rel.kv_norm.weight'), c.rmsEps), R, K, candMask);
    return concat([tcon, trel], 1); // [K, 2, D]
  }

  /**
   * Multi-head attention of block `b`: queries from qx ([T, D] shared by the batch, or
   * [B, T, D]), keys from kx and values from vx ([Bkv, Tk, D]); a kv batch of 1 is shared
   * by all B rows, otherwise kvIndex picks each row's kv entry. Returns [B, T, D].
   */
  private attend(b: Block, qx: Tensor, kx: Tensor, vx: Tensor, B: number, keyPadding: Tensor, kvIndex?: readonly number[]): Tensor {
    const c = this.config;
    const dh = c.hidden / c.heads;
    const w = (p: string) => this.p(`icm.${b}.${p}_proj.weight`);
    const heads = (t: Tensor) => {
      const [n, T] = t.rank === 2 ? [1, t.shape[0]] : [t.shape[0], t.shape[1]];
      return permute(reshape(t, [n, T, c.heads, dh]), [0, 2, 1, 3]); // [n, H, T, dh]
    };
    const toBatch = (t: Tensor, index?: readonly number[]) => {
      if (t.shape[0] === B && (!index || index.every((j, i) => j === i))) return t;
      if (t.shape[0] === 1) return expand(t, [B, ...t.shape.slice(1)]);
      return indexSelect(t, 0, index!);
    };
    const q = toBatch(heads(linear(qx, w('q'))));
    const k = toBatch(heads(linear(kx, w('k'))), kvIndex);
    const v = toBatch(heads(linear(vx, w('v'))), kvIndex);
    const a = attention(q, k, v, { keyPadding });
    const T = q.shape[2];
    return linear(reshape(permute(a, [0, 2, 1, 3]), [B, T, c.hidden]), w('o'));
  }

  /**
   * 'compare' relation: each candidate token's value row times the query mix it read, both
   * RMS-normalised (unit weights: the scale is in the projections), so sum_j R[j] is D times
   * their cosine. Padded candidate rows give zeros, masked later by the rel step anyway.
   */
  private compare(mixed: Tensor, tc: Tensor): Tensor {
    const unit = ones([this.config.hidden]);
    const own = linear(tc, this.p('icm.cross.v_proj.weight'));
    return mul(rmsNorm(mixed, unit, this.config.rmsEps), rmsNorm(own, unit, this.config.rmsEps));
  }

  /** [K, 2, D] for the candidates of one query (one vision batch, one ICM pass). */
  compressMany(model: Mllm, query: QueryInput, candidates: readonly CandidateInput[]): Tensor {
    return this.compressGroups(model, [{ query, candidates }])[0];
  }

  /**
   * Several queries with their candidates in one pass: every content embedded in one
   * layout (one vision batch), all candidates through the ICM together. Returns one
   * [K_g, 2, D] tensor per group.
   */
  compressGroups(model: Mllm, groups: readonly CompressGroup[]): Tensor[] {
    if (model.config.llm.hidden !== this.config.hidden) {
      throw new RangeError(`icm width ${this.config.hidden} does not match the model's ${model.config.llm.hidden}`);
    }
    return tidy(() => {
      const items: QueryInput[] = [];
      const queryOf: number[] = [];
      for (const [g, grp] of groups.entries()) {
        items.push(grp.query);
        if (!grp.candidates.length) throw new RangeError(`icm: group ${g} has no candidates`);
      }
      for (const [g, grp] of groups.entries()) {
        for (const cand of grp.candidates) {
          items.push(cand);
          queryOf.push(g);
        }
      }
      // Padded straight from the one content tensor: a gather each for candidates and queries.
      const { all, spans } = embedContentRows(model, items);
      const out = this.compressPadded(padSpans(all, spans.slice(groups.length)), padSpans(all, spans.slice(0, groups.length)), queryOf);
      const result: Tensor[] = [];
      let at = 0;
      for (const grp of groups) {
        const n = grp.candidates.length;
        const rowsOf = groups.length === 1 ? out : slice(out, 0, at, at + n);
        const centred = this.config.centre ? sub(rowsOf, mean(rowsOf, 0, true)) : rowsOf;
        result.push(this.config.indexTag ? add(centred, indexTagRows(model, n)) : centred);
        at += n;
      }
      return result;
    });
  }

  async save(dir: string): Promise<void> {
    mkdirSync(dir, { recursive: true });
    await saveSafetensors(join(dir, ICM_WEIGHTS_FILE), Object.fromEntries(this.params), { format: 'pt', module: 'retrv-icm' });
    const path = join(dir, ICM_CONFIG_FILE);
    const tmp = `${path}.tmp-${process.pid}`;
    try {
      writeFileSync(tmp, JSON.stringify(this.config, null, 2) + '\n');
      renameSync(tmp, path);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw e;
    }
  }

  /** Whether a checkpoint folder holds ICM weights. */
  static exists(dir: string): boolean {
    return existsSync(join(dir, ICM_WEIGHTS_FILE)) && existsSync(join(dir, ICM_CONFIG_FILE));
  }

  /** Loads the ICM of a checkpoint folder; null when the folder has none (stages before alignment). */
  static async load(dir: string): Promise<Icm | null> {
    if (!Icm.exists(dir)) return null;
    let config: IcmConfig;
    try {
      config = JSON.parse(readFileSync(join(dir, ICM_CONFIG_FILE), 'utf8')) as IcmConfig;
    } catch (e) {
      throw new CheckpointError(`checkpoint ${dir}: invalid ${ICM_CONFIG_FILE} (${(e as Error).message})`);
    }
    validateIcmConfig(config);
    const { tensors } = await loadSafetensors(join(dir, ICM_WEIGHTS_FILE), { dtype: 'f32' });
    const params = new Map(Object.entries(tensors));
    const problems = checkNames(params, icmParameterShapes(config));
    if (problems.length) {
      for (const t of params.values()) t.dispose();
      throw new CheckpointError(`checkpoint ${join(dir, ICM_WEIGHTS_FILE)} does not match the ICM config:\n  ${problems.join('\n  ')}`);
    }
    for (const [name, t] of params) {
      t.name = name;
      keep(requireGrad(t));
    }
    return new Icm(config, params);
  }

  /** The checkpoint's ICM, or a fresh one for the model when the checkpoint has none. */
  static async loadOrCreate(dir: string, model: Mllm, seed: number): Promise<Icm> {
    return (await Icm.load(dir)) ?? Icm.create(icmConfigFor(model.config), seed);
  }
}

/** Missing, unexpected and mis-shaped names. */
function checkNames(params: Map<string, Tensor>, expected: Record<string, number[]>): string[] {
  const problems: string[] = [];
  for (const [name, shape] of Object.entries(expected)) {
    const t = params.get(name);
    if (!t) problems.push(`missing ${name} ${shapeStr(shape)}`);
    else if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) problems.push(`${name} has shape ${shapeStr(t.shape)}, expected ${shapeStr(shape)}`);
  }
  for (const name of params.keys()) if (!(name in expected)) problems.push(`unexpected ${name}`);
  return problems;
}

/**
 * Candidate rows tc [K, L, D] (valid marks cValid) and query rows tq [Q, Lq, D], each minus
 * the mean valid row of the candidates that read that query (its list); a query no candidate
 * reads is left as is. Padding rows change too, but stay masked wherever they are read.
 */
function listCentred(tc: Tensor, cValid: Int32Array, L: number, tq: Tensor, Q: number, of: readonly number[]): { cands: Tensor; queries: Tensor } {
  const K = of.length;
  const D = tc.shape[2];
  const rows = new Float64Array(Q);
  of.forEach((j, i) => {
    for (let t = 0; t < L; t++) rows[j] += cValid[i * L + t];
  });
  // averaging[j, i] = 1 / (rows of list j) when candidate i is in list j.
  const averaging = new Float32Array(Q * K);
  of.forEach((j, i) => (averaging[j * K + i] = 1 / rows[j]));
  const listMean = matmul(fromArray(averaging, [Q, K]), sum(tc, 1)); // padding rows are zeros
  return {
    cands: sub(tc, reshape(indexSelect(listMean, 0, of), [K, 1, D])),
    queries: sub(tq, reshape(listMean, [Q, 1, D])),
  };
}

interface PaddedRows {
  /** [N, L, D], zero where not valid. */
  x: Tensor;
  /** [N * L]: 1 for a real row. */
  valid: Int32Array;
  L: number;
}

/** Rows [n_i, D] padded with zeros into [N, L, D], and the valid-row marks [N * L] (padSpans of their concatenation). */
function padRows(xs: readonly Tensor[]): PaddedRows {
  let at = 0;
  const spans = xs.map((t) => ({ start: at, end: (at += t.shape[0]) }));
  return padSpans(xs.length === 1 ? xs[0] : concat(xs, 0), spans);
}

/** Spans [start, end) of the rows of `all` [n, D], padded into [N, L, D] by one gather. */
function padSpans(all: Tensor, spans: readonly { start: number; end: number }[]): PaddedRows {
  const D = all.shape[1];
  const L = Math.max(...spans.map((s) => s.end - s.start));
  const zero = all.shape[0]; // the row appended below
  const index = new Int32Array(spans.length * L).fill(zero);
  const valid = new Int32Array(spans.length * L);
  spans.forEach((s, i) => {
    for (let r = 0; r < s.end - s.start; r++) index[i * L + r] = s.start + r;
    valid.fill(1, i * L, i * L + s.end - s.start);
  });
  const x = indexSelect(concat([all, zeros([1, D])], 0), 0, index);
  return { x: reshape(x, [spans.length, L, D]), valid, L };
}

/**
 * The LLM's input embeddings of each item's content (text and/or image, as contentParts
 * lays it out), all in one layout so every image goes through one vision batch.
 */
export function embedContents(model: Mllm, items: readonly QueryInput[]): Tensor[] {
  const { all, spans } = embedContentRows(model, items);
  return spans.map((s) => slice(all, 0, s.start, s.end));
}

/** embedContents as one tensor [rows, D] and each item's span of it. */
function embedContentRows(model: Mllm, items: readonly QueryInput[]): { all: Tensor; spans: { start: number; end: number }[] } {
  const parts: Part[] = [];
  const marks: { at: number; label: string; until: number }[] = [];
  items.forEach((x, i) => {
    const p = contentParts(x);
    marks.push({ at: parts.length, label: `item:${i}`, until: parts.length + p.length });
    parts.push(...p);
  });
  const layout = model.layout(parts, marks);
  return { all: model.embed(layout), spans: layout.spans };
}

/** The rerankParts `compress` hook for rows [K, 2, D]: candidate i becomes rows[i] ([2, D]). */
export function compressHook(rows: Tensor): (candidate: CandidateInput, index: number) => Tensor {
  if (rows.rank !== 3 || rows.shape[1] !== 2) throw new RangeError(`compressHook: rows have shape ${shapeStr(rows.shape)}, expected [K, 2, D]`);
  return (_c, i) => {
    if (!Number.isInteger(i) || i < 0 || i >= rows.shape[0]) throw new RangeError(`compressHook: candidate ${i} is outside the ${rows.shape[0]} compressed candidates`);
    return squeeze(slice(rows, 0, i, i + 1), 0);
  };
}

/**
 * [K, 2, D]: row pair i holds, twice, the mean token embedding of `${i}` (the index the
 * prompt writes before candidate i and the answer names), through the model's own
 * embedding table so that training moves it with the tied head.
 */
export function indexTagRows(model: Mllm, K: number): Tensor {
  const ids: number[] = [];
  const spans = Array.from({ length: K }, (_, i) => {
    const t = model.tokenizer.encode(`${i}`);
    ids.push(...t);
    return t.length;
  });
  const avg = new Float32Array(K * ids.length);
  let at = 0;
  spans.forEach((n, i) => {
    for (let j = 0; j < n; j++) avg[i * ids.length + at + j] = 1 / n;
    at += n;
  });
  const rows = embedding(model.llm.p('model.embed_tokens.weight'), fromArray(Int32Array.from(ids), [ids.length], 'i32'));
  const tags = matmul(fromArray(avg, [K, ids.length]), rows);
  return stack([tags, tags], 1);
}

/** The reranker's ICM hook factory: each prompt's candidates compressed in one batch, or several prompts' together (`many`). */
export function icmCompress(model: Mllm, icm: Icm): CompressFactory {
  return Object.assign((query: QueryInput, candidates: readonly CandidateInput[]) => compressHook(icm.compressMany(model, query, candidates)), {
    many: (prompts: readonly CompressGroup[]) => icm.compressGroups(model, prompts).map(compressHook),
  });
}
