// Autoregressive generation over a GPU-resident KV cache.
//
// A Session holds a batch of B sequences and their KvCache. Every forward runs over the
// whole batch: prefill and append take per-sequence inputs (token ids or embeddings) of
// any lengths, left-pad them to the chunk length T and mark the padding invalid in the
// cache, so each sequence's newest input sits in the chunk's last slot and its next-token
// logits are that slot's. A sequence may append nothing while others append (its logits
// are kept). This is what details inspection needs: when one sequence emits
// `<inspection-index-start>i<inspection-index-end>`, the candidate's tokens are spliced
// into that sequence alone, while the others of its GRPO group keep decoding in the same
// batch. Padding slots cost cache space and compute for the other sequences (T per
// append), never correctness.
//
// Positions: each sequence has its own next position (max position so far + 1, the
// Qwen2-VL rule, so text after an image continues from the image's largest position).
// Token inputs get text positions (all M-RoPE sections equal); embedding inputs may bring
// their own (e.g. an image's [t, h, w] grid positions).
//
// generate() decodes with GPU sampling: each step samples the batch on the GPU, feeds the
// sampled ids straight into the next forward (no host round trip), and then reads the ids
// back once (one readback per step; log-probs ride in the same readback).
import type { Llm, LlmConfig } from './llm.ts';
import { KvCache } from './kv-cache.ts';
import {
  type Tensor,
  cast,
  concat,
  fromArray,
  keep,
  logProbsOf,
  noGrad,
  reshape,
  sample,
  shapeStr,
  slice,
  stack,
  tidy,
  where,
  zeros,
} from '../runtime/index.ts';

/** Positions of one sequence's new inputs: one row (text: every M-RoPE section alike) or one row per section. */
export type Positions = readonly number[] | readonly (readonly number[])[];

/** One sequence's input: token ids, or embeddings [n, D] with optional positions. */
export type SeqInput = readonly number[] | { embeds: Tensor; positions?: Positions };

/** A batch of left-padded prompt embeddings: embeds [B, T, D]; sequence b is its last lengths[b] rows. */
export interface BatchedEmbeds {
  embeds: Tensor;
  /** Default: all T rows of every sequence. */
  lengths?: readonly number[];
  /** Per sequence, for its lengths[b] rows; default text positions 0.. */
  positions?: readonly Positions[];
}

/** start, start + 1, ..., start + n - 1. */
export function textPositions(start: number, n: number): number[] {
  return Array.from({ length: n }, (_, i) => start + i);
}

/** Number of position rows the model's rotary embedding reads (M-RoPE sections, else 1). */
function positionRows(c: LlmConfig): number {
  return c.ropeSections ? c.ropeSections.length : 1;
}

function isRows(p: Positions): p is readonly (readonly number[])[] {
  return p.length > 0 && Array.isArray(p[0]);
}

/** Rows of a Positions value, expanded to `S` rows (a single row is shared by all sections). */
function expandPositions(p: Positions, S: number, n: number, what: string): number[][] {
  const rows: number[][] = isRows(p) ? p.map((r) => [...r]) : [[...p]];
  const out: number[][] = rows.length === 1 ? Array.from({ length: S }, () => rows[0]) : rows;
  if (out.length !== S || out.some((r) => r.length !== n || r.some((v) => !Number.isInteger(v)))) {
    throw new RangeError(`${what}: positions must be ${n} integers (or ${S} rows of ${n}), got ${JSON.stringify(p)}`);
  }
  return out;
}

/**
 * The i32 positions tensor the model wants ([B, T], or [S, B, T] with M-RoPE) from per-
 * sequence positions (all sequences of the same length T).
 */
export function positionTensor(config: LlmConfig, positions: readonly Positions[]): Tensor {
  const S = positionRows(config);
  const B = positions.length;
  const first = positions[0];
  const T = !first ? 0 : isRows(first) ? first[0].length : first.length;
  const data = new Int32Array(S * B * T);
  positions.forEach((p, b) => {
    expandPositions(p, S, T, 'positionTensor').forEach((row, s) => data.set(row, (s * B + b) * T));
  });
  return fromArray(data, config.ropeSections ? [S, B, T] : [B, T], 'i32');
}

export interface StepOptions {
  /** 0 = greedy. Default 1. */
  temperature?: number;
  /** Nucleus mass, default 1. */
  topP?: number;
  seed?: number;
  /** Decoding step mixed into the sampler's random stream; default: the session's step counter. */
  step?: number;
}

export class Session {
  readonly cache: KvCache;
  /** Each sequence's next text position. */
  readonly nextPosition: number[];
  /** Whether each sequence has next-token logits (it has appended something). */
  readonly hasLogits: boolean[];
  /** Sampling steps taken (the default `step` of the sampler). */
  steps = 0;
  private last: Tensor | null = null;

  constructor(
    readonly model: Llm,
    readonly batch: number,
    opts: { capacity?: number } = {},
  ) {
    if (!Number.isInteger(batch) || batch < 1) throw new RangeError(`Session: batch must be a positive integer, got ${batch}`);
    this.cache = KvCache.forModel(model.config, batch, Math.max(1, opts.capacity ?? 64));
    this.nextPosition = new Array(batch).fill(0);
    this.hasLogits = new Array(batch).fill(false);
  }

  /** Slots used so far (shared by the batch). */
  get length(): number {
    return this.cache.length;
  }

  /** The prompt of every sequence (the cache must be empty). */
  prefill(inputs: readonly SeqInput[] | BatchedEmbeds): void {
    if (this.cache.length !== 0) throw new Error(`Session.prefill: the session already holds ${this.cache.length} slots; use append`);
    this.append(Array.isArray(inputs) ? inputs : splitBatched(inputs as BatchedEmbeds));
  }

  /**
   * Appends each sequence's input (null / undefined / empty: nothing for that sequence)
   * through the KV cache, without recomputing the prefix. Inputs of different lengths are
   * left-padded to the longest.
   */
  append(inputs: readonly (SeqInput | null | undefined)[]): void {
    const B = this.batch;
    if (inputs.length !== B) throw new RangeError(`Session.append: ${inputs.length} inputs for a batch of ${B}`);
    const c = this.model.config;
    const D = c.hidden;
    const S = positionRows(c);
    const lens = inputs.map((inp, b) => {
      if (!inp) return 0;
      if (isTokens(inp)) {
        inp.forEach((id, i) => {
          if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new RangeError(`Session.append: sequence ${b} token ${i} = ${id} is out of range [0, ${c.vocabSize})`);
        });
        return inp.length;
      }
      const e = inp.embeds;
      const ok = e.dtype === 'f32' && ((e.rank === 2 && e.shape[1] === D) || (e.rank === 3 && e.shape[0] === 1 && e.shape[2] === D));
      if (!ok) throw new RangeError(`Session.append: sequence ${b} embeds ${shapeStr(e.shape)} (${e.dtype}) must be f32 [n, ${D}]`);
      return e.shape[e.rank - 2];
    });
    const T = Math.max(0, ...lens);
    if (T === 0) return;

    // Host-side positions [S, B, T] (padding gets 0; it is never attended to).
    const pos = new Int32Array(S * B * T);
    const newNext = [...this.nextPosition];
    inputs.forEach((inp, b) => {
      const n = lens[b];
      if (n === 0) return;
      const p = !isTokens(inp!) && inp!.positions ? inp!.positions : textPositions(this.nextPosition[b], n);
      const rows = expandPositions(p, S, n, `Session.append (sequence ${b})`);
      let top = -Infinity;
      rows.forEach((row, s) => {
        pos.set(row, (s * B + b) * T + (T - n));
        for (const v of row) top = Math.max(top, v);
      });
      newNext[b] = top + 1;
    });
    const ragged = lens.some((n) => n !== T);
    const keepOld = lens.some((n) => n === 0) && this.last !== null;

    const logits = noGrad(() =>
      tidy(() => {
        const x = this.chunkEmbeds(inputs, lens, T);
        const positions = fromArray(pos, c.ropeSections ? [S, B, T] : [B, T], 'i32');
        let keyPadding: Tensor | undefined;
        if (ragged) {
          const m = new Int32Array(B * T);
          lens.forEach((n, b) => m.fill(1, b * T + (T - n), (b + 1) * T));
          keyPadding = fromArray(m, [B, T], 'i32');
        }
        const h = this.model.forwardEmbeds(x, positions, { cache: this.cache, keyPadding });
        const fresh = reshape(this.model.head(slice(h, 1, T - 1, T)), [B, c.vocabSize]);
        if (!keepOld) return fresh;
        const has = fromArray(Int32Array.from(lens, (n) => (n > 0 ? 1 : 0)), [B, 1], 'i32');
        return where(has, fresh, this.last!);
      }),
    );
    this.setLogits(logits);
    lens.forEach((n, b) => {
      if (n > 0) this.hasLogits[b] = true;
    });
    newNext.forEach((v, b) => (this.nextPosition[b] = v));
  }

  /** The chunk's input embeddings [B, T, D], each sequence left-padded with zeros. */
  private chunkEmbeds(inputs: readonly (SeqInput | null | undefined)[], lens: number[], T: number): Tensor {
    const B = this.batch;
    const D = this.model.config.hidden;
    if (inputs.every((inp) => !inp || isTokens(inp))) {
      // All tokens: one embedding lookup (padding ids 0, masked out later).
      const ids = new Int32Array(B * T);
      inputs.forEach((inp, b) => inp && ids.set(inp as readonly number[], b * T + (T - lens[b])));
      return this.model.embed(fromArray(ids, [B, T], 'i32'));
    }
    const rows = inputs.map((inp, b) => {
      const n = lens[b];
      const parts: Tensor[] = [];
      if (n < T) parts.push(zeros([T - n, D]));
      if (n > 0) {
        if (isTokens(inp!)) parts.push(reshape(this.model.embed(fromArray(Int32Array.from(inp), [n], 'i32')), [n, D]));
        else parts.push(reshape(inp!.embeds, [n, D]));
      }
      return parts.length === 1 ? parts[0] : concat(parts, 0);
    });
    return stack(rows, 0);
  }

  private setLogits(t: Tensor): void {
    const old = this.last;
    this.last = keep(t);
    if (old && old !== t) old.dispose();
  }

  /** Next-token logits [B, V] of every sequence (owned by the session: do not dispose). */
  logits(): Tensor {
    if (!this.last) throw new Error('Session.logits: nothing has been appended yet');
    return this.last;
  }

  /** Samples one token per sequence from the current logits, on the GPU: i32 [B] (not read back). */
  sampleNext(opts: StepOptions = {}): Tensor {
    const step = opts.step ?? this.steps;
    this.steps = step + 1;
    return sample(this.logits(), { temperature: opts.temperature ?? 1, topP: opts.topP, seed: opts.seed ?? 0, step });
  }

  /** Appends one GPU-resident token per sequence (ids i32 [B]) at each sequence's next text position. */
  appendIds(ids: Tensor): void {
    const B = this.batch;
    const c = this.model.config;
    if (ids.dtype !== 'i32' || ids.rank !== 1 || ids.shape[0] !== B) {
      throw new RangeError(`Session.appendIds: ids must be i32 [${B}], got ${ids.dtype} ${shapeStr(ids.shape)}`);
    }
    const logits = noGrad(() =>
      tidy(() => {
        const positions = positionTensor(c, this.nextPosition.map((p) => [p]));
        const h = this.model.forwardEmbeds(this.model.embed(reshape(ids, [B, 1])), positions, { cache: this.cache });
        return reshape(this.model.head(h), [B, c.vocabSize]);
      }),
    );
    this.setLogits(logits);
    for (let b = 0; b < B; b++) {
      this.nextPosition[b]++;
      this.hasLogits[b] = true;
    }
  }

  /**
   * One decoding step: sample every sequence on the GPU, append the samples, read them
   * back (one readback). With logProbs, also returns their log-probabilities under the
   * untempered logits (f32 [B], on the GPU; the caller owns it).
   */
  async step(opts: StepOptions & { logProbs?: boolean } = {}): Promise<{ tokens: number[]; logProbs?: Tensor }> {
    const ids = this.sampleNext(opts);
    const lp = opts.logProbs ? keep(noGrad(() => logProbsOf(this.logits(), ids))) : undefined;
    this.appendIds(ids);
    const tokens = Array.from(await ids.toArray());
    ids.dispose();
    return { tokens, logProbs: lp };
  }

  /** Frees the cache and the logits. */
  dispose(): void {
    this.cache.dispose();
    this.last?.dispose();
    this.last = null;
  }
}

function isTokens(x: SeqInput): x is readonly number[] {
  return Array.isArray(x);
}

/** Per-sequence views of a left-padded batch of embeddings. */
function splitBatched(p: BatchedEmbeds): SeqInput[] {
  const e = p.embeds;
  if (e.rank !== 3) throw new RangeError(`prompt embeds must be [B, T, D], got ${shapeStr(e.shape)}`);
  const [B, T, D] = e.shape;
  const lens = p.lengths ?? new Array(B).fill(T);
  if (lens.length !== B || lens.some((n) => !Number.isInteger(n) || n < 0 || n > T)) {
    throw new RangeError(`prompt lengths [${lens}] must be ${B} integers in [0, ${T}] for embeds ${shapeStr(e.shape)}`);
  }
  return lens.map((n, b) => ({
    embeds: e.view([n, D], [e.strides[1], e.strides[2]], e.offset + b * e.strides[0] + (T - n) * e.strides[1]),
    positions: p.positions?.[b],
  }));
}

export type FinishReason = 'stop' | 'length';

/** Inputs spliced into a sequence during decoding (returned by onToken). */
export interface Insertion {
  /** Number of sampled tokens of the sequence before the insertion. */
  at: number;
  /** Token ids, or the number of embedding rows inserted. */
  tokens?: number[];
  embeds?: number;
}

export interface TokenEvent {
  /** Decoding step (0-based). */
  step: number;
  /** Each sequence's token from this step; null for sequences that had already finished. */
  tokens: (number | null)[];
  /** Whether each sequence is still decoding after this token. */
  active: boolean[];
  session: Session;
}

export interface GenerateOptions extends StepOptions {
  maxNewTokens: number;
  /** A sequence ends after sampling one of these (the stop token is included in its output). */
  stopTokens?: readonly number[];
  /** Also return each sampled token's log-probability under the untempered logits. */
  returnLogProbs?: boolean;
  /**
   * Called after every step. It may return per-sequence inputs (tokens or embeddings) to
   * splice into the running sequences right after this step's token, e.g. a candidate's
   * tokens when the model asked to inspect it; finished sequences' entries are ignored.
   */
  onToken?: (e: TokenEvent) => readonly (SeqInput | null | undefined)[] | void;
  /** Extra cache slots to preallocate for spliced inputs (the cache grows anyway). */
  extraCapacity?: number;
}

export interface GenerateResult {
  /** Sampled tokens per sequence (without the prompt and without spliced inputs). */
  tokens: number[][];
  /** Log-probabilities of the sampled tokens (with returnLogProbs). */
  logProbs?: number[][];
  finishReason: FinishReason[];
  /** Inputs spliced in by onToken, per sequence. */
  insertions: Insertion[][];
}

/**
 * Generates from a batch of prompts (token ids, per-sequence embeddings, or a left-padded
 * embeddings batch). Temperature 0 = greedy. Sampling uses (seed, step, row), so the same
 * seed gives the same samples, and the rows of a batch draw independently.
 */
export async function generate(model: Llm, prompts: readonly SeqInput[] | BatchedEmbeds, opts: GenerateOptions): Promise<GenerateResult> {
  const list = Array.isArray(prompts) ? (prompts as readonly SeqInput[]) : splitBatched(prompts as BatchedEmbeds);
  const lens = list.map((p) => (isTokens(p) ? p.length : p.embeds.shape[p.embeds.rank - 2]));
  lens.forEach((n, b) => {
    if (n === 0) throw new RangeError(`generate: prompt ${b} is empty`);
  });
  const session = new Session(model, list.length, { capacity: Math.max(...lens) + opts.maxNewTokens + (opts.extraCapacity ?? 0) });
  try {
    session.prefill(list);
    return await decode(session, opts);
  } finally {
    session.dispose();
  }
}

/**
 * The decoding loop of generate() on a session that already holds the prompts (e.g. built
 * from several appends). The session is left holding the generated context.
 */
export async function decode(session: Session, opts: GenerateOptions): Promise<GenerateResult> {
  const B = session.batch;
  if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 0) throw new RangeError(`generate: maxNewTokens must be a non-negative integer, got ${opts.maxNewTokens}`);
  session.hasLogits.forEach((h, b) => {
    if (!h) throw new Error(`generate: sequence ${b} has no prompt`);
  });
  const stop = new Set(opts.stopTokens ?? []);
  const tokens: number[][] = Array.from({ length: B }, () => []);
  const logProbs: number[][] = Array.from({ length: B }, () => []);
  const insertions: Insertion[][] = Array.from({ length: B }, () => []);
  const finish: (FinishReason | null)[] = new Array(B).fill(null);
  const active = () => finish.map((f) => f === null);

  for (let t = 0; t < opts.maxNewTokens && finish.some((f) => f === null); t++) {
    const ids = session.sampleNext({ ...opts, step: opts.step !== undefined ? opts.step + t : undefined });
    // Tokens (exact as f32 below 2^24) and log-probs travel in one readback.
    const out = opts.returnLogProbs ? keep(noGrad(() => tidy(() => stack([cast(ids, 'f32'), logProbsOf(session.logits(), ids)], 0)))) : ids;
    // Feed the samples straight back unless this was the last step.
    if (t + 1 < opts.maxNewTokens) session.appendIds(ids);
    const host = await out.toArray();
    if (out !== ids) out.dispose();
    ids.dispose();

    const stepTokens: (number | null)[] = new Array(B).fill(null);
    for (let b = 0; b < B; b++) {
      if (finish[b] !== null) continue;
      const tok = host[b];
      stepTokens[b] = tok;
      tokens[b].push(tok);
      if (opts.returnLogProbs) logProbs[b].push(host[B + b]);
      if (stop.has(tok)) finish[b] = 'stop';
      else if (tokens[b].length >= opts.maxNewTokens) finish[b] = 'length';
    }
    const extra = opts.onToken?.({ step: t, tokens: stepTokens, active: active(), session });
    if (extra && finish.some((f) => f === null)) {
      const inputs = extra.map((inp, b) => (finish[b] === null && inp && (isTokens(inp) ? inp.length : 1) ? inp : null));
      if (inputs.some((x) => x)) {
        session.append(inputs);
        inputs.forEach((inp, b) => {
          if (!inp) return;
          const at = tokens[b].length;
          insertions[b].push(isTokens(inp) ? { at, tokens: [...inp] } : { at, embeds: inp.embeds.shape[inp.embeds.rank - 2] });
        });
      }
    }
  }
  return {
    tokens,
    logProbs: opts.returnLogProbs ? logProbs : undefined,
    finishReason: finish.map((f) => f ?? 'length'),
    insertions,
  };
}
