// Byte-level BPE tokenizer, trained and applied by our own code.
//
// Every string is handled as its UTF-8 bytes, so any string of Unicode scalar values
// round-trips exactly (a lone UTF-16 surrogate has no UTF-8 form; TextEncoder turns it
// into U+FFFD, as everywhere else in JS).
//
// Id layout of a tokenizer trained here (loaded JSON may use any dense layout):
//   0..255                      the 256 single bytes, id = byte value
//   256..256+S-1                special tokens: the SPECIAL set in its fixed order, then
//                               any extra specialTokens given to trainBpe
//   256+S..                     merges, in the order they were learned (id = rank + 256+S)
// Special ids therefore do not move when the vocabulary size changes.
//
// Saved JSON, in the spirit of Hugging Face tokenizer.json:
//   { version: 1, vocab: {token: id}, merges: ["a b", ...], special: {string: id}, pretokenizer }
// where vocab holds the byte and merge tokens written with the GPT-2 byte-to-unicode map
// (so every token is printable and none contains a space), and special holds the special
// tokens literally.
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

/** The special tokens every retrv tokenizer has, by name. */
export const SPECIAL = {
  endOfText: '<|endoftext|>',
  imStart: '<|im_start|>',
  imEnd: '<|im_end|>',
  visionStart: '<|vision_start|>',
  visionEnd: '<|vision_end|>',
  imagePad: '<|image_pad|>',
  thinkStart: '<think>',
  thinkEnd: '</think>',
  answerStart: '<answer>',
  answerEnd: '</answer>',
  inspectStart: '<inspection-index-start>',
  inspectEnd: '<inspection-index-end>',
  candStart: '<|cand_start|>',
  candEnd: '<|cand_end|>',
  pad: '<|pad|>',
} as const;

export type SpecialName = keyof typeof SPECIAL;
const SPECIAL_NAMES = Object.keys(SPECIAL) as SpecialName[];

/**
 * The pre-tokenizer: text is cut into pieces and merges never cross a piece boundary.
 * Alternatives, in order: English contractions; an optional non-letter (a space or a
 * punctuation mark, not a newline) followed by letters (combining marks count as
 * letters so accents stay with their base); 1-3 digits; an optional space followed by
 * a run of other symbols (punctuation, emoji, controls) with any trailing newlines;
 * newline runs with their leading blanks; whitespace runs that leave their last blank
 * to the next word; any other whitespace. The alternatives cover every code point, and
 * pretokenize() still keeps anything a custom regex skips as a piece of its own.
 */
export const PRETOKENIZER =
  String.raw`'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])` +
  String.raw`|[^\r\n\p{L}\p{M}\p{N}]?[\p{L}\p{M}]+` +
  String.raw`|\p{N}{1,3}` +
  String.raw`| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*` +
  String.raw`|\s*[\r\n]+` +
  String.raw`|\s+(?!\S)` +
  String.raw`|\s+`;

const FORMAT_VERSION = 1;
// Pair keys pack two ids into one number: left * 2^26 + right (exact below 2^52).
const PAIR_SHIFT = 2 ** 26;
const MAX_VOCAB = PAIR_SHIFT;
const ENCODE_CACHE_LIMIT = 50_000;

const utf8Encoder = new TextEncoder();
// ignoreBOM: a leading U+FEFF is text like any other and must survive a round trip.
const utf8Decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

function pairKey(a: number, b: number): number {
  return a * PAIR_SHIFT + b;
}

// GPT-2's printable stand-ins for bytes: printable Latin-1 bytes stand for themselves,
// the other 68 bytes (controls, space, soft hyphen, ...) take code points 256, 257, ...
// in byte order.
const BYTE_TO_CHAR: string[] = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = [];
  let next = 256;
  for (let b = 0; b < 256; b++) out.push(String.fromCodePoint(printable(b) ? b : next++));
  return out;
})();
const CHAR_TO_BYTE = new Map<string, number>(BYTE_TO_CHAR.map((c, b) => [c, b]));

/** The printable form of a byte string (GPT-2 byte-to-unicode). */
export function bytesToPrintable(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += BYTE_TO_CHAR[b];
  return s;
}

/** Inverse of bytesToPrintable; undefined when a character is not a byte stand-in. */
export function printableToBytes(s: string): Uint8Array | undefined {
  const out: number[] = [];
  for (const ch of s) {
    const b = CHAR_TO_BYTE.get(ch);
    if (b === undefined) return undefined;
    out.push(b);
  }
  return new Uint8Array(out);
}

function escapeRegex(s: string): string {
  // Only syntax characters and '/' may be escaped in a 'u' regex.
  return s.replace(/[\^$\\.*+?()[\]{}|\/]/g, '\\$&');
}

function compilePretokenizer(source: string): RegExp {
  return new RegExp(source, 'gu');
}

const DEFAULT_PRETOKENIZER_RE = compilePretokenizer(PRETOKENIZER);

/** Cuts text into pre-tokens (re must have the 'g' flag). The pieces always concatenate back to the text. */
export function pretokenize(text: string, re: RegExp = DEFAULT_PRETOKENIZER_RE): string[] {
  if (!re.global) throw new Error(`pretokenize: regex /${re.source}/ needs the 'g' flag`);
  const out: string[] = [];
  let end = 0;
  re.lastIndex = 0;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    if (m[0].length === 0) {
      re.lastIndex++; // an empty match would loop forever; whatever it skipped is kept below
      continue;
    }
    if (m.index > end) out.push(text.slice(end, m.index));
    out.push(m[0]);
    end = m.index + m[0].length;
  }
  if (end < text.length) out.push(text.slice(end));
  return out;
}

/** A regex matching any of the given strings, longest first (so no special hides a longer one). */
function specialMatcher(specials: string[]): RegExp | null {
  if (specials.length === 0) return null;
  const sorted = [...specials].sort((a, b) => b.length - a.length || (a < b ? -1 : a > b ? 1 : 0));
  return new RegExp(sorted.map(escapeRegex).join('|'), 'gu');
}

/** Splits text around special tokens: alternating plain segments and matched specials. */
function splitSpecial(text: string, re: RegExp | null): { text: string; special: boolean }[] {
  if (re === null) return [{ text, special: false }];
  const out: { text: string; special: boolean }[] = [];
  let end = 0;
  re.lastIndex = 0;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    if (m.index > end) out.push({ text: text.slice(end, m.index), special: false });
    out.push({ text: m[0], special: true });
    end = m.index + m[0].length;
  }
  if (end < text.length) out.push({ text: text.slice(end), special: false });
  return out;
}

/** A merge: ids left and right become id result. Its rank is its index in the merge list. */
export interface Merge {
  left: number;
  right: number;
  result: number;
}

export interface TokenizerJSON {
  version: number;
  vocab: Record<string, number>;
  merges: string[];
  special: Record<string, number>;
  pretokenizer: string;
}

export interface EncodeOptions {
  /** Match special tokens in the text as single ids (default true); false encodes them as plain text. */
  allowSpecial?: boolean;
}

export interface DecodeOptions {
  /** Leave special tokens out of the text (default false). */
  skipSpecial?: boolean;
}

export class Tokenizer {
  /** Number of ids (embedding rows): every id in 0..vocabSize-1 is a token. */
  readonly vocabSize: number;
  /** Merges in rank order. */
  readonly merges: readonly Merge[];
  /** Special token string -> id, for every special this tokenizer has. */
  readonly specialTokens: ReadonlyMap<string, number>;
  /** Id of each SPECIAL by name. */
  readonly specialIds: Readonly<Record<SpecialName, number>>;
  readonly pretokenizerSource: string;

  private readonly bytesOf: Uint8Array[]; // id -> UTF-8 bytes
  private readonly tokenOf: string[]; // id -> printable token (specials literally)
  private readonly idOf = new Map<string, number>();
  private readonly specialIdSet = new Set<number>();
  private readonly rankOf = new Map<number, number>(); // pair key -> rank
  private readonly pretokenRe: RegExp;
  private readonly specialRe: RegExp | null;
  private readonly cache = new Map<string, number[]>();
  private readonly byteIds = new Int32Array(256);

  /**
   * Builds a tokenizer from id -> bytes for the regular tokens, the merges, and the
   * special tokens. Prefer trainBpe or Tokenizer.fromJSON; this checks consistency and
   * throws on any problem.
   */
  constructor(regular: Map<number, Uint8Array>, merges: Merge[], special: Map<string, number>, pretokenizer: string = PRETOKENIZER) {
    const ids: Record<string, number> = {};
    for (const name of SPECIAL_NAMES) {
      const id = special.get(SPECIAL[name]);
      if (id === undefined) throw new Error(`tokenizer: missing required special token '${SPECIAL[name]}'`);
      ids[name] = id;
    }
    this.specialIds = ids as Record<SpecialName, number>;
    let size = 0;
    const checkId = (id: number, what: string) => {
      if (!Number.isInteger(id) || id < 0 || id >= MAX_VOCAB) throw new RangeError(`tokenizer: ${what} has id ${id}, outside 0..${MAX_VOCAB - 1}`);
      if (this.tokenOf[id] !== undefined) throw new Error(`tokenizer: duplicate id ${id}, used by '${this.tokenOf[id]}' and ${what}`);
      size = Math.max(size, id + 1);
    };
    this.bytesOf = [];
    this.tokenOf = [];
    for (const [id, bytes] of regular) {
      const tok = bytesToPrintable(bytes);
      checkId(id, `token '${tok}'`);
      if (bytes.length === 0) throw new Error(`tokenizer: token id ${id} is empty`);
      if (this.idOf.has(tok)) throw new Error(`tokenizer: token '${tok}' appears twice (ids ${this.idOf.get(tok)} and ${id})`);
      this.bytesOf[id] = bytes;
      this.tokenOf[id] = tok;
      this.idOf.set(tok, id);
    }
    for (const [str, id] of special) {
      checkId(id, `special token '${str}'`);
      if (str.length === 0) throw new Error('tokenizer: empty special token');
      if (this.idOf.has(str)) throw new Error(`tokenizer: special token '${str}' collides with a regular token of the same text`);
      this.bytesOf[id] = utf8Encoder.encode(str);
      this.tokenOf[id] = str;
      this.idOf.set(str, id);
      this.specialIdSet.add(id);
    }
    for (let b = 0; b < 256; b++) {
      const id = this.idOf.get(BYTE_TO_CHAR[b]);
      if (id === undefined || this.specialIdSet.has(id)) {
        throw new Error(`tokenizer: vocabulary lacks the byte token '${BYTE_TO_CHAR[b]}' (byte 0x${b.toString(16).padStart(2, '0')})`);
      }
      this.byteIds[b] = id;
    }
    // Every id up to the largest must be a token: the id range is the embedding table.
    for (let id = 0; id < size; id++) {
      if (this.tokenOf[id] === undefined) throw new Error(`tokenizer: id ${id} is unused (ids must be dense 0..${size - 1})`);
    }
    this.vocabSize = size;
    this.specialTokens = new Map(special);
    merges.forEach((m, rank) => {
      for (const id of [m.left, m.right, m.result]) {
        if (!Number.isInteger(id) || id < 0 || id >= size || this.specialIdSet.has(id)) {
          throw new Error(`tokenizer: merge ${rank} refers to id ${id}, which is not a regular token`);
        }
      }
      const joined = concatBytes(this.bytesOf[m.left], this.bytesOf[m.right]);
      if (!bytesEqual(joined, this.bytesOf[m.result])) {
        throw new Error(`tokenizer: merge ${rank} '${this.tokenOf[m.left]} ${this.tokenOf[m.right]}' gives id ${m.result} = '${this.tokenOf[m.result]}', not '${bytesToPrintable(joined)}'`);
      }
      const key = pairKey(m.left, m.right);
      if (this.rankOf.has(key)) throw new Error(`tokenizer: merge '${this.tokenOf[m.left]} ${this.tokenOf[m.right]}' appears twice (ranks ${this.rankOf.get(key)} and ${rank})`);
      this.rankOf.set(key, rank);
    });
    this.merges = merges.map((m) => ({ ...m }));
    this.pretokenizerSource = pretokenizer;
    try {
      this.pretokenRe = compilePretokenizer(pretokenizer);
    } catch (e) {
      throw new Error(`tokenizer: pretokenizer regex does not compile: ${(e as Error).message}`);
    }
    this.specialRe = specialMatcher([...special.keys()]);
  }

  /** Token ids of text. Special tokens (when allowed) are matched first as whole strings. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const allowSpecial = opts.allowSpecial ?? true;
    const out: number[] = [];
    for (const seg of splitSpecial(text, allowSpecial ? this.specialRe : null)) {
      if (seg.special) out.push(this.specialTokens.get(seg.text)!);
      else for (const piece of pretokenize(seg.text, this.pretokenRe)) for (const id of this.encodePiece(piece)) out.push(id);
    }
    return out;
  }

  /** Bytes of the ids, concatenated (specials as their UTF-8 text unless skipped). */
  decodeBytes(ids: ArrayLike<number>, opts: DecodeOptions = {}): Uint8Array {
    let n = 0;
    const parts: Uint8Array[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      const b = this.bytesOf[id];
      if (b === undefined) throw new RangeError(`decode: id ${id} at position ${i} is outside the vocabulary 0..${this.vocabSize - 1}`);
      if (opts.skipSpecial && this.specialIdSet.has(id)) continue;
      parts.push(b);
      n += b.length;
    }
    const out = new Uint8Array(n);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  /** Text of the ids; byte sequences that are not valid UTF-8 become U+FFFD. */
  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    return utf8Decoder.decode(this.decodeBytes(ids, opts));
  }

  /** Id of a token in printable form (or a special token's text); undefined if unknown. */
  tokenToId(token: string): number | undefined {
    return this.idOf.get(token);
  }

  /** Printable form of a token (special tokens literally). */
  idToToken(id: number): string {
    const t = this.tokenOf[id];
    if (t === undefined) throw new RangeError(`idToToken: id ${id} is outside the vocabulary 0..${this.vocabSize - 1}`);
    return t;
  }

  /** The raw bytes of one token. */
  tokenBytes(id: number): Uint8Array {
    const b = this.bytesOf[id];
    if (b === undefined) throw new RangeError(`tokenBytes: id ${id} is outside the vocabulary 0..${this.vocabSize - 1}`);
    return b;
  }

  isSpecial(id: number): boolean {
    return this.specialIdSet.has(id);
  }

  toJSON(): TokenizerJSON {
    const vocab: Record<string, number> = {};
    const special: Record<string, number> = {};
    for (let id = 0; id < this.vocabSize; id++) {
      if (this.specialIdSet.has(id)) special[this.tokenOf[id]] = id;
      else vocab[this.tokenOf[id]] = id;
    }
    return {
      version: FORMAT_VERSION,
      vocab,
      merges: this.merges.map((m) => `${this.tokenOf[m.left]} ${this.tokenOf[m.right]}`),
      special,
      pretokenizer: this.pretokenizerSource,
    };
  }

  /** Rebuilds a tokenizer from toJSON()'s form; throws a message naming the first problem. */
  static fromJSON(obj: unknown): Tokenizer {
    if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new Error('tokenizer JSON must be an object');
    const o = obj as Partial<TokenizerJSON>;
    if (o.version !== FORMAT_VERSION) throw new Error(`tokenizer JSON has version ${JSON.stringify(o.version)}, expected ${FORMAT_VERSION}`);
    if (typeof o.vocab !== 'object' || o.vocab === null || Array.isArray(o.vocab)) throw new Error("tokenizer JSON: 'vocab' must be an object {token: id}");
    if (!Array.isArray(o.merges)) throw new Error("tokenizer JSON: 'merges' must be an array of \"left right\" strings");
    if (typeof o.special !== 'object' || o.special === null || Array.isArray(o.special)) throw new Error("tokenizer JSON: 'special' must be an object {token: id}");
    if (typeof o.pretokenizer !== 'string') throw new Error("tokenizer JSON: 'pretokenizer' must be a regex source string");

    const seen = new Map<number, string>();
    const claim = (id: unknown, what: string): number => {
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw new Error(`tokenizer JSON: ${what} has id ${JSON.stringify(id)}, not a non-negative integer`);
      const other = seen.get(id);
      if (other !== undefined) throw new Error(`tokenizer JSON: duplicate id ${id}, used by ${other} and ${what}`);
      seen.set(id, what);
      return id;
    };
    const regular = new Map<number, Uint8Array>();
    const idOf = new Map<string, number>();
    for (const [tok, rawId] of Object.entries(o.vocab)) {
      const id = claim(rawId, `token '${tok}'`);
      const bytes = printableToBytes(tok);
      if (bytes === undefined || bytes.length === 0) throw new Error(`tokenizer JSON: vocab token '${tok}' is not in the byte-level printable form`);
      regular.set(id, bytes);
      idOf.set(tok, id);
    }
    const special = new Map<string, number>();
    for (const [tok, rawId] of Object.entries(o.special)) special.set(tok, claim(rawId, `special token '${tok}'`));
    const merges: Merge[] = o.merges.map((line, rank) => {
      const parts = typeof line === 'string' ? line.split(' ') : [];
      if (parts.length !== 2) throw new Error(`tokenizer JSON: merge ${rank} ${JSON.stringify(line)} is not "left right"`);
      const [a, b] = parts;
      const left = idOf.get(a);
      const right = idOf.get(b);
      if (left === undefined) throw new Error(`tokenizer JSON: merge ${rank} "${line}" references unknown token '${a}'`);
      if (right === undefined) throw new Error(`tokenizer JSON: merge ${rank} "${line}" references unknown token '${b}'`);
      const result = idOf.get(a + b);
      if (result === undefined) throw new Error(`tokenizer JSON: merge ${rank} "${line}" produces '${a + b}', which is not in the vocab`);
      return { left, right, result };
    });
    return new Tokenizer(regular, merges, special, o.pretokenizer);
  }

  // Merges within one pre-token: repeatedly apply the lowest-rank pair present, every
  // occurrence left to right (non-overlapping), until no pair has a merge.
  private encodePiece(piece: string): number[] {
    const hit = this.cache.get(piece);
    if (hit !== undefined) return hit;
    const bytes = utf8Encoder.encode(piece);
    let sym: number[] = Array.from(bytes, (b) => this.byteIds[b]);
    while (sym.length > 1) {
      let best = Infinity;
      for (let i = 0; i + 1 < sym.length; i++) {
        const r = this.rankOf.get(pairKey(sym[i], sym[i + 1]));
        if (r !== undefined && r < best) best = r;
      }
      if (best === Infinity) break;
      const m = this.merges[best];
      const next: number[] = [];
      for (let i = 0; i < sym.length; ) {
        if (i + 1 < sym.length && sym[i] === m.left && sym[i + 1] === m.right) {
          next.push(m.result);
          i += 2;
        } else next.push(sym[i++]);
      }
      sym = next;
    }
    if (this.cache.size >= ENCODE_CACHE_LIMIT) this.cache.clear();
    this.cache.set(piece, sym);
    return sym;
  }
}

function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export interface TrainBpeOptions {
  /**
   * Upper bound on the total number of ids (256 bytes + specials + merges). Training
   * stops earlier when no pair reaches minFrequency.
   */
  vocabSize: number;
  /** Extra special tokens, after the SPECIAL set (duplicates of it are ignored). */
  specialTokens?: string[];
  /** A pair must occur at least this often to be merged (default 2). */
  minFrequency?: number;
}

// Max-heap of (count, pair key) with lazy deletion: an entry is live only while its
// count equals the pair's current count. Order: higher count first, then the smaller
// key, i.e. the smaller left id, then the smaller right id.
class PairHeap {
  private counts: number[] = [];
  private keys: number[] = [];

  get size(): number {
    return this.keys.length;
  }

  private above(i: number, j: number): boolean {
    return this.counts[i] > this.counts[j] || (this.counts[i] === this.counts[j] && this.keys[i] < this.keys[j]);
  }

  private swap(i: number, j: number): void {
    [this.counts[i], this.counts[j]] = [this.counts[j], this.counts[i]];
    [this.keys[i], this.keys[j]] = [this.keys[j], this.keys[i]];
  }

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    for (let i = this.keys.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (!this.above(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  pop(): { count: number; key: number } {
    const top = { count: this.counts[0], key: this.keys[0] };
    const lastC = this.counts.pop()!;
    const lastK = this.keys.pop()!;
    if (this.keys.length > 0) {
      this.counts[0] = lastC;
      this.keys[0] = lastK;
      const n = this.keys.length;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < n && this.above(l, m)) m = l;
        if (r < n && this.above(r, m)) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }
}

/**
 * Learns byte-level BPE merges from texts.
 *
 * Texts are cut at special tokens (which never take part in merges), pre-tokenized, and
 * counted as unique words. Each step merges the most frequent adjacent pair, counted
 * over words weighted by their frequency; ties go to the pair with the smaller left id,
 * then the smaller right id (ids are assigned in merge order, so this is deterministic
 * for a given input). After a merge only the words holding the pair are rewritten and
 * the pair counts are updated by difference, so a step costs time proportional to the
 * words it touches, not to the corpus.
 */
export function trainBpe(texts: Iterable<string>, opts: TrainBpeOptions): Tokenizer {
  const minFrequency = opts.minFrequency ?? 2;
  if (!Number.isInteger(minFrequency) || minFrequency < 1) throw new RangeError(`trainBpe: minFrequency ${minFrequency} must be an integer >= 1`);
  const specials: string[] = [...Object.values(SPECIAL)];
  for (const s of opts.specialTokens ?? []) {
    if (s.length === 0) throw new RangeError('trainBpe: empty special token');
    if (!specials.includes(s)) specials.push(s);
  }
  const firstMerge = 256 + specials.length;
  if (!Number.isInteger(opts.vocabSize) || opts.vocabSize < firstMerge || opts.vocabSize > MAX_VOCAB) {
    throw new RangeError(`trainBpe: vocabSize ${opts.vocabSize} must be an integer in ${firstMerge}..${MAX_VOCAB} (256 bytes + ${specials.length} special tokens + merges)`);
  }

  // Unique words with their counts.
  const specialRe = specialMatcher(specials);
  const pretokenRe = compilePretokenizer(PRETOKENIZER);
  const wordCount = new Map<string, number>();
  for (const text of texts) {
    for (const seg of splitSpecial(text, specialRe)) {
      if (seg.special) continue;
      for (const piece of pretokenize(seg.text, pretokenRe)) wordCount.set(piece, (wordCount.get(piece) ?? 0) + 1);
    }
  }
  const words: Int32Array[] = [];
  const lens: number[] = [];
  const counts: number[] = [];
  for (const [w, c] of wordCount) {
    const bytes = utf8Encoder.encode(w);
    if (bytes.length < 2) continue; // a single byte has no pair
    words.push(Int32Array.from(bytes));
    lens.push(bytes.length);
    counts.push(c);
  }

  // Pair counts and, for each pair, the words that may hold it (a superset: stale entries
  // are skipped when a merge finds the pair missing).
  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  for (let w = 0; w < words.length; w++) {
    const s = words[w];
    for (let i = 0; i + 1 < lens[w]; i++) {
      const k = pairKey(s[i], s[i + 1]);
      pairCount.set(k, (pairCount.get(k) ?? 0) + counts[w]);
      let set = pairWords.get(k);
      if (set === undefined) pairWords.set(k, (set = new Set()));
      set.add(w);
    }
  }
  const heap = new PairHeap();
  for (const [k, c] of pairCount) heap.push(c, k);

  const tokenBytes: Uint8Array[] = [];
  for (let b = 0; b < 256; b++) tokenBytes[b] = Uint8Array.of(b);
  const specialTexts = new Set(specials);
  const merges: Merge[] = [];
  const banned = new Set<number>();
  let nextId = firstMerge;

  while (nextId < opts.vocabSize && heap.size > 0) {
    const { count, key } = heap.pop();
    if (pairCount.get(key) !== count) continue; // stale entry
    if (count < minFrequency) break;
    const a = Math.floor(key / PAIR_SHIFT);
    const b = key - a * PAIR_SHIFT;
    const bytes = concatBytes(tokenBytes[a], tokenBytes[b]);
    // A regular token spelled like a special would make the vocabulary ambiguous.
    if (banned.has(key)) continue;
    if (specialTexts.has(utf8Decoder.decode(bytes))) {
      banned.add(key);
      continue;
    }
    const c = nextId++;
    tokenBytes[c] = bytes;
    merges.push({ left: a, right: b, result: c });

    const delta = new Map<number, number>();
    const add = (k: number, d: number) => delta.set(k, (delta.get(k) ?? 0) + d);
    const holders = pairWords.get(key)!;
    pairWords.delete(key);
    for (const w of holders) {
      const s = words[w];
      const n = lens[w];
      let has = false;
      for (let i = 0; i + 1 < n; i++) {
        if (s[i] === a && s[i + 1] === b) {
          has = true;
          break;
        }
      }
      if (!has) continue;
      const wc = counts[w];
      for (let i = 0; i + 1 < n; i++) add(pairKey(s[i], s[i + 1]), -wc);
      let r = 0;
      for (let i = 0; i < n; ) {
        if (i + 1 < n && s[i] === a && s[i + 1] === b) {
          s[r++] = c;
          i += 2;
        } else s[r++] = s[i++];
      }
      lens[w] = r;
      for (let i = 0; i + 1 < r; i++) {
        const k = pairKey(s[i], s[i + 1]);
        add(k, wc);
        if (s[i] === c || s[i + 1] === c) {
          let set = pairWords.get(k);
          if (set === undefined) pairWords.set(k, (set = new Set()));
          set.add(w);
        }
      }
    }
    for (const [k, d] of delta) {
      if (d === 0) continue;
      const now = (pairCount.get(k) ?? 0) + d;
      if (now > 0) {
        pairCount.set(k, now);
        heap.push(now, k);
      } else {
        pairCount.delete(k);
        pairWords.delete(k);
      }
    }
  }

  const regular = new Map<number, Uint8Array>();
  for (let b = 0; b < 256; b++) regular.set(b, tokenBytes[b]);
  for (const m of merges) regular.set(m.result, tokenBytes[m.result]);
  const special = new Map<string, number>(specials.map((s, i) => [s, 256 + i]));
  return new Tokenizer(regular, merges, special, PRETOKENIZER);
}

/** Writes the tokenizer as JSON, atomically (temporary file in the same folder, then rename). */
export function saveTokenizer(tok: Tokenizer, path: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    writeFileSync(tmp, JSON.stringify(tok.toJSON()));
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new Error(`saveTokenizer: cannot write ${path}: ${(e as Error).message}`);
  }
}

/** Reads a tokenizer saved by saveTokenizer; every error names the file. */
export function loadTokenizer(path: string): Tokenizer {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') throw new Error(`tokenizer file ${path} does not exist`);
    throw new Error(`tokenizer file ${path} cannot be read: ${err.message}`);
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw new Error(`tokenizer file ${path} is not valid JSON: ${(e as Error).message}`);
  }
  try {
    return Tokenizer.fromJSON(obj);
  } catch (e) {
    throw new Error(`tokenizer file ${path}: ${(e as Error).message}`);
  }
}
