// Qwen-style chat template and the assistant mask for SFT.
//
// A conversation renders as
//   <|im_start|>system\n{content}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n
//   <|im_start|>assistant\n{content}<|im_end|>\n
// and addGenerationPrompt appends `<|im_start|>assistant\n` for the model to continue.
// Unlike Qwen's template no default system message is inserted: messages are rendered
// as given. Contents may hold special tokens (vision placeholders, candidate markers,
// <think>, ...): they are encoded as single ids.
import { SPECIAL, type Tokenizer } from './tokenizer.ts';

export type Role = 'system' | 'user' | 'assistant';

export interface ChatMessage {
  role: Role;
  content: string;
}

export interface ChatOptions {
  /** Append the header of an assistant turn, for generation (default false). */
  addGenerationPrompt?: boolean;
}

const ROLES: readonly Role[] = ['system', 'user', 'assistant'];

function header(role: Role): string {
  return `${SPECIAL.imStart}${role}\n`;
}

function checkRole(m: ChatMessage, i: number): void {
  if (!ROLES.includes(m.role)) throw new Error(`chat: message ${i} has role ${JSON.stringify(m.role)}, expected one of ${ROLES.join(', ')}`);
}

/** The conversation as text. */
export function renderChat(messages: readonly ChatMessage[], opts: ChatOptions = {}): string {
  let s = '';
  messages.forEach((m, i) => {
    checkRole(m, i);
    s += `${header(m.role)}${m.content}${SPECIAL.imEnd}\n`;
  });
  if (opts.addGenerationPrompt) s += header('assistant');
  return s;
}

export interface EncodedChat {
  ids: number[];
  /**
   * 1 where ids[t] is part of an assistant reply (its content and the closing
   * <|im_end|>, so the model learns to stop), 0 elsewhere (headers, system and user
   * turns, the newline after <|im_end|>). For next-token loss, position t predicts
   * ids[t + 1] and is trained when mask[t + 1] is 1.
   */
  mask: Uint8Array;
}

/**
 * Encodes a conversation, each header, content and separator on its own, with the
 * assistant mask. Encoding the header separately makes a reply's tokens the same ones
 * the model produces after `<|im_start|>assistant\n` at generation time; ids equal
 * tokenizer.encode(renderChat(messages)) except where a content starting with
 * whitespace would merge with the header's newline.
 */
export function encodeChat(tokenizer: Tokenizer, messages: readonly ChatMessage[], opts: ChatOptions = {}): EncodedChat {
  const ids: number[] = [];
  const mask: number[] = [];
  const push = (part: number[], on: number) => {
    for (const id of part) {
      ids.push(id);
      mask.push(on);
    }
  };
  const imEnd = tokenizer.specialIds.imEnd;
  const newline = tokenizer.encode('\n');
  messages.forEach((m, i) => {
    checkRole(m, i);
    const on = m.role === 'assistant' ? 1 : 0;
    push(tokenizer.encode(header(m.role)), 0);
    push(tokenizer.encode(m.content), on);
    push([imEnd], on);
    push(newline, 0);
  });
  if (opts.addGenerationPrompt) push(tokenizer.encode(header('assistant')), 0);
  return { ids, mask: Uint8Array.from(mask) };
}

/** A half-open range [start, end) of token positions. */
export interface Span {
  start: number;
  end: number;
}

/**
 * Finds the assistant replies in any token sequence (for example a generated one): for
 * every `<|im_start|>` whose following tokens spell `assistant\n`, the span runs from
 * the first token after that header through the next `<|im_end|>` inclusive, or to the
 * end of the sequence when the reply is unfinished. If a token straddles the header's
 * end (a merge across the newline), the span starts at that token.
 */
export function assistantSpans(ids: ArrayLike<number>, tokenizer: Tokenizer): Span[] {
  const { imStart, imEnd } = tokenizer.specialIds;
  const want = new TextEncoder().encode('assistant\n');
  const spans: Span[] = [];
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] !== imStart) continue;
    // Read tokens until the header's bytes are all matched (or one differs).
    let got = 0;
    let start = -1;
    for (let j = i + 1; got < want.length; j++) {
      if (j >= ids.length || tokenizer.isSpecial(ids[j])) break;
      const b = tokenizer.tokenBytes(ids[j]);
      const take = Math.min(b.length, want.length - got);
      let same = true;
      for (let k = 0; k < take; k++) if (b[k] !== want[got + k]) same = false;
      if (!same) break;
      got += take;
      if (got === want.length) start = take < b.length ? j : j + 1;
    }
    if (start < 0) continue;
    let end = start;
    while (end < ids.length && ids[end] !== imEnd && ids[end] !== imStart) end++;
    if (end < ids.length && ids[end] === imEnd) end++;
    spans.push({ start, end });
    i = end - 1;
  }
  return spans;
}

/** A 0/1 mask of the given length with 1 inside the spans. */
export function spansToMask(spans: readonly Span[], length: number): Uint8Array {
  const mask = new Uint8Array(length);
  for (const s of spans) mask.fill(1, Math.max(0, s.start), Math.min(length, s.end));
  return mask;
}

/** The placeholder for an image of n merged patches: <|vision_start|> n x <|image_pad|> <|vision_end|>. */
export function imagePlaceholder(n: number): string {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`imagePlaceholder: ${n} image tokens, expected a positive integer`);
  return SPECIAL.visionStart + SPECIAL.imagePad.repeat(n) + SPECIAL.visionEnd;
}

/** Candidate i of a reranking prompt: `<|cand_start|>i body<|cand_end|>`. */
export function renderCandidate(index: number, body: string): string {
  return `${SPECIAL.candStart}${index} ${body}${SPECIAL.candEnd}`;
}
