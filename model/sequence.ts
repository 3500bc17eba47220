// The multimodal sequence builder: turns text, images and precomputed embedding rows
// into one input for the language model: embeddings [T, D], M-RoPE positions [3, T]
// and the token ids (for loss masks and logging).
//
// Positions follow Qwen2-VL's M-RoPE: a text token advances one position and uses it in
// all three rows (temporal, height, width); the tokens of an image (after the 2x2 merge,
// a gh x gw grid) share the temporal position `s` and take heights s + row and widths
// s + col; the next token starts at s + max(gh, gw).
//
// The reranker prompt puts each candidate between <|cand_start|>i and <|cand_end|>. A
// `compress` hook may replace a candidate's full tokens by a few embedding rows: that
// is where the Information Compression Module plugs in (2 rows per candidate).
import { type Tensor, concat, embedding, fromArray, indexSelect, reshape, zeros } from '../runtime/index.ts';
import { type Preprocessed, patchPositions, patchify } from './image.ts';
import { SPECIAL, type Tokenizer } from './tokenizer.ts';
import type { VisionEncoder } from './vision.ts';

/** One piece of a sequence. */
export type Part =
  | { text: string }
  | { ids: readonly number[] }
  | { image: Preprocessed }
  | { embeds: Tensor; label?: string };

export interface Span {
  label: string;
  start: number;
  end: number;
}

/** The host-side layout of a sequence (no GPU work yet). */
export interface SequenceLayout {
  /** Token id per position (image rows hold <|image_pad|>, embedding rows <|pad|>). */
  ids: Int32Array;
  /** M-RoPE positions, rows temporal / height / width, each of length T. */
  positions: Int32Array;
  length: number;
  /** Named ranges (candidates, the query, ...), end exclusive. */
  spans: Span[];
  pieces: Piece[];
}

type Piece =
  | { kind: 'tokens'; start: number; ids: number[] }
  | { kind: 'image'; start: number; image: Preprocessed; rows: number }
  | { kind: 'embeds'; start: number; embeds: Tensor };

/** Lays out parts into ids and positions. `spanOf` names the part that starts a span. */
export function layoutSequence(tok: Tokenizer, parts: readonly Part[], mergeSize = 2, marks: { at: number; label: string; until: number }[] = []): SequenceLayout {
  const ids: number[] = [];
  const pos: [number[], number[], number[]] = [[], [], []];
  const pieces: Piece[] = [];
  const partStart: number[] = [];
  let next = 0; // the next text position
  const pushText = (tokens: readonly number[]) => {
    pieces.push({ kind: 'tokens', start: ids.length, ids: [...tokens] });
    for (const id of tokens) {
      ids.push(id);
      for (const row of pos) row.push(next);
      next++;
    }
  };
  const padId = tok.specialIds.pad;
  for (const part of parts) {
    partStart.push(ids.length);
    if ('text' in part) pushText(tok.encode(part.text));
    else if ('ids' in part) pushText(part.ids);
    else if ('image' in part) {
      const img = part.image;
      if (img.gridH % mergeSize || img.gridW % mergeSize) {
        throw new RangeError(`sequence: image grid ${img.gridH}x${img.gridW} is not a multiple of the merge size ${mergeSize}`);
      }
      pushText([tok.specialIds.visionStart]);
      const gh = img.gridH / mergeSize;
      const gw = img.gridW / mergeSize;
      pieces.push({ kind: 'image', start: ids.length, image: img, rows: gh * gw });
      const imagePad = tok.specialIds.imagePad;
      for (let r = 0; r < gh; r++) {
        for (let c = 0; c < gw; c++) {
          ids.push(imagePad);
          pos[0].push(next);
          pos[1].push(next + r);
          pos[2].push(next + c);
        }
      }
      next += Math.max(gh, gw);
      pushText([tok.specialIds.visionEnd]);
    } else {
      const n = part.embeds.shape[0];
      if (part.embeds.rank !== 2) throw new RangeError(`sequence: embedding rows must have shape [n, D], got [${part.embeds.shape}]`);
      pieces.push({ kind: 'embeds', start: ids.length, embeds: part.embeds });
      for (let i = 0; i < n; i++) {
        ids.push(padId);
        for (const row of pos) row.push(next);
        next++;
      }
    }
  }
  partStart.push(ids.length);
  const spans = marks.map((m) => ({ label: m.label, start: partStart[m.at], end: partStart[m.until] }));
  const T = ids.length;
  const positions = new Int32Array(3 * T);
  for (let r = 0; r < 3; r++) positions.set(pos[r], r * T);
  return { ids: Int32Array.from(ids), positions, length: T, spans, pieces };
}

type ImagePiece = Extract<Piece, { kind: 'image' }>;

/** The images' rows from the vision encoder, all in one batch: [sum of rows, D] in order. */
function encodeImages(images: readonly ImagePiece[], vision: VisionEncoder | null): Tensor | null {
  if (!images.length) return null;
  if (!vision) throw new Error('sequence: the input has images but the model has no vision encoder');
  const c = vision.config;
  const patchLen = 3 * c.patchSize * c.patchSize;
  const lengths = images.map((p) => p.image.gridH * p.image.gridW);
  const total = lengths.reduce((a, b) => a + b, 0);
  const patches = new Float32Array(total * patchLen);
  const positions = new Int32Array(2 * total);
  let at = 0;
  for (const p of images) {
    const n = p.image.gridH * p.image.gridW;
    patches.set(patchify(p.image, c.patchSize, c.mergeSize), at * patchLen);
    const pp = patchPositions(p.image.gridH, p.image.gridW, c.mergeSize);
    positions.set(pp.subarray(0, n), at);
    positions.set(pp.subarray(n, 2 * n), total + at);
    at += n;
  }
  return vision.forward(fromArray(patches, [total, patchLen]), positions, lengths);
}

/**
 * Embeds laid-out sequences on the GPU as one right-padded [B, T, D] tensor (T the longest
 * length, padding rows zero): token rows from the embedding table, image rows from the
 * vision encoder, embedding rows as given. The dispatch count does not grow with the
 * batch: every token of every sequence in one lookup, every image in one vision pass, and
 * one gather that puts each row in its place. (A lookup per token run and a vision pass
 * per sequence were a large share of a training step's dispatches, and on a GPU a
 * dispatch costs more host time than its arithmetic: bench/train-step-log.md.)
 */
export function embedLayouts(layouts: readonly SequenceLayout[], tokenEmbedding: Tensor, vision: VisionEncoder | null): Tensor {
  const B = layouts.length;
  if (!B) throw new RangeError('sequence: no layouts to embed');
  const T = Math.max(...layouts.map((l) => l.length));
  const D = tokenEmbedding.shape[1];
  const ids: number[] = [];
  const images: ImagePiece[] = [];
  const given: Tensor[] = [];
  // Row b * T + t of the result is row at[.] of source from[.]: 0 tokens, 1 images, 2 given, 3 padding.
  const from = new Uint8Array(B * T).fill(3);
  const at = new Int32Array(B * T);
  let imageRows = 0;
  let givenRows = 0;
  layouts.forEach((l, b) => {
    for (const p of l.pieces) {
      const n = p.kind === 'tokens' ? p.ids.length : p.kind === 'image' ? p.rows : p.embeds.shape[0];
      for (let r = 0; r < n; r++) {
        const i = b * T + p.start + r;
        if (p.kind === 'tokens') {
          from[i] = 0;
          at[i] = ids.length + r;
        } else if (p.kind === 'image') {
          from[i] = 1;
          at[i] = imageRows + r;
        } else {
          from[i] = 2;
          at[i] = givenRows + r;
        }
      }
      if (p.kind === 'tokens') for (const id of p.ids) ids.push(id);
      else if (p.kind === 'image') {
        images.push(p);
        imageRows += n;
      } else {
        given.push(p.embeds);
        givenRows += n;
      }
    }
  });
  const sources: Tensor[] = [];
  if (ids.length) sources.push(embedding(tokenEmbedding, fromArray(Int32Array.from(ids), [ids.length], 'i32')));
  const imageTable = encodeImages(images, vision);
  if (imageTable) sources.push(imageTable);
  sources.push(...given);
  const padded = from.includes(3);
  if (padded) sources.push(zeros([1, D]));
  const base = [0, ids.length, ids.length + imageRows, ids.length + imageRows + givenRows];
  const src = new Int32Array(B * T);
  for (let i = 0; i < B * T; i++) src[i] = base[from[i]] + at[i];
  const table = sources.length === 1 ? sources[0] : concat(sources, 0);
  return reshape(indexSelect(table, 0, src), [B, T, D]);
}

/** Embeds one layout: [T, D] (see embedLayouts). */
export function embedLayout(layout: SequenceLayout, tokenEmbedding: Tensor, vision: VisionEncoder | null): Tensor {
  return reshape(embedLayouts([layout], tokenEmbedding, vision), [layout.length, tokenEmbedding.shape[1]]);
}

export interface QueryInput {
  text?: string;
  image?: Preprocessed;
}

export type CandidateInput = QueryInput;

export interface RerankPromptOptions {
  /** Instruction in the system turn. */
  system?: string;
  /**
   * Replaces a candidate's full content by embedding rows (the ICM hook). Return null to
   * keep the full tokens for that candidate.
   */
  compress?: (candidate: CandidateInput, index: number) => Tensor | null;
  /**
   * The number written before each candidate (default: its position). Training may number
   * a short list as part of a longer one, so that every index of the long list is a target.
   * Inspections still name positions (model/inspect.ts); the caller maps an answer.
   */
  labels?: readonly number[];
}

export const DEFAULT_SYSTEM =
  'You rank candidates for a retrieval query. Think step by step inside <think></think>, ' +
  'inspect candidates when details matter, then give the index of the best candidate inside <answer></answer>.';

/** The full content of a query or candidate as parts (text and/or image). */
export function contentParts(x: QueryInput): Part[] {
  const parts: Part[] = [];
  if (x.image) parts.push({ image: x.image });
  if (x.text !== undefined) parts.push({ text: x.text });
  if (!parts.length) throw new RangeError('sequence: a query or candidate needs text, an image, or both');
  return parts;
}

/**
 * The reranker's prompt in the Qwen chat format: system turn, then a user turn with the
 * query and the numbered candidates, then the assistant prefix. Spans name the query
 * ("query") and each candidate ("cand:i", covering its content only).
 */
export function rerankParts(query: QueryInput, candidates: readonly CandidateInput[], opts: RerankPromptOptions = {}): { parts: Part[]; marks: { at: number; label: string; until: number }[] } {
  if (opts.labels && opts.labels.length !== candidates.length) {
    throw new RangeError(`sequence: ${opts.labels.length} labels for ${candidates.length} candidates`);
  }
  const parts: Part[] = [];
  const marks: { at: number; label: string; until: number }[] = [];
  parts.push({ text: `${SPECIAL.imStart}system\n${opts.system ?? DEFAULT_SYSTEM}${SPECIAL.imEnd}\n${SPECIAL.imStart}user\nQuery: ` });
  const q = contentParts(query);
  marks.push({ at: parts.length, label: 'query', until: parts.length + q.length });
  parts.push(...q);
  parts.push({ text: '\nCandidates:\n' });
  candidates.forEach((c, i) => {
    parts.push({ text: `${SPECIAL.candStart}${opts.labels?.[i] ?? i} ` });
    const compressed = opts.compress?.(c, i) ?? null;
    const body: Part[] = compressed ? [{ embeds: compressed, label: `cand:${i}` }] : contentParts(c);
    marks.push({ at: parts.length, label: `cand:${i}`, until: parts.length + body.length });
    parts.push(...body);
    parts.push({ text: `${SPECIAL.candEnd}\n` });
  });
  parts.push({ text: `${SPECIAL.imEnd}\n${SPECIAL.imStart}assistant\n` });
  return { parts, marks };
}

/**
 * A batch of laid-out sequences for the language model: the embeddings [B, T, D]
 * right-padded (embedLayouts), M-RoPE positions [3, B, T] (padding continues each
 * sequence's positions), token ids (padding `padId`) and lengths.
 */
export function batchLayouts(
  layouts: SequenceLayout[],
  tokenEmbedding: Tensor,
  vision: VisionEncoder | null,
  padId: number,
): { embeds: Tensor; positions: Tensor; ids: Int32Array; lengths: number[] } {
  const embeds = embedLayouts(layouts, tokenEmbedding, vision);
  const B = layouts.length;
  const T = embeds.shape[1];
  const pos = new Int32Array(3 * B * T);
  const ids = new Int32Array(B * T).fill(padId);
  layouts.forEach((l, b) => {
    for (let r = 0; r < 3; r++) {
      const row = l.positions.subarray(r * l.length, (r + 1) * l.length);
      pos.set(row, r * B * T + b * T);
      // Padding continues the positions so they stay increasing (never attended anyway).
      const last = row.length ? row[row.length - 1] : -1;
      for (let t = l.length; t < T; t++) pos[r * B * T + b * T + t] = last + 1 + (t - l.length);
    }
    ids.set(l.ids, b * T);
  });
  return { embeds, positions: fromArray(pos, [3, B, T], 'i32'), ids, lengths: layouts.map((l) => l.length) };
}
