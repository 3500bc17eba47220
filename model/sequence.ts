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
import { type Tensor, concat, embedding, fromArray, reshape, slice } from '../runtime/index.ts';
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

/**
 * Embeds a layout on the GPU: token rows from the embedding table, image rows from the
 * vision encoder (all images of the sequence in one batch), embedding rows as given.
 * Returns [T, D].
 */
export function embedLayout(layout: SequenceLayout, tokenEmbedding: Tensor, vision: VisionEncoder | null): Tensor {
  const images = layout.pieces.filter((p): p is Extract<Piece, { kind: 'image' }> => p.kind === 'image');
  let imageRows: Tensor | null = null;
  if (images.length) {
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
    imageRows = vision.forward(fromArray(patches, [total, patchLen]), positions, lengths);
  }
  const rows: Tensor[] = [];
  let imageAt = 0;
  for (const p of layout.pieces) {
    if (p.kind === 'tokens') {
      if (p.ids.length) rows.push(embedding(tokenEmbedding, fromArray(Int32Array.from(p.ids), [p.ids.length], 'i32')));
    } else if (p.kind === 'image') {
      rows.push(slice(imageRows!, 0, imageAt, imageAt + p.rows));
      imageAt += p.rows;
    } else rows.push(p.embeds);
  }
  return rows.length === 1 ? rows[0] : concat(rows, 0);
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

/** Pads sequences (each [T_i, D]) on the right into [B, T, D]; causal attention never sees the padding. */
export function collate(embeds: Tensor[], layouts: SequenceLayout[], padId: number): { embeds: Tensor; positions: Tensor; ids: Int32Array; lengths: number[] } {
  const B = embeds.length;
  const T = Math.max(...layouts.map((l) => l.length));
  const D = embeds[0].shape[1];
  const padded = embeds.map((e, b) => {
    const n = layouts[b].length;
    return n === T ? e : concat([e, fromArray(new Float32Array((T - n) * D), [T - n, D])], 0);
  });
  const x = reshape(B === 1 ? padded[0] : concat(padded, 0), [B, T, D]);
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
  return { embeds: x, positions: fromArray(pos, [3, B, T], 'i32'), ids, lengths: layouts.map((l) => l.length) };
}
