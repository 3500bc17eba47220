// Byte-level BPE tokenizer and chat template: exact round trips of any Unicode text,
// special tokens that are never split, deterministic training that compresses held-out
// text, JSON save/load, clear errors for corrupt files, and the SFT assistant mask.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  SPECIAL,
  Tokenizer,
  type TokenizerJSON,
  loadTokenizer,
  pretokenize,
  saveTokenizer,
  trainBpe,
} from '../../model/tokenizer.ts';
import { assistantSpans, encodeChat, renderChat, spansToMask, type ChatMessage } from '../../model/chat-template.ts';

const corpus = readFileSync(fileURLToPath(new URL('../../train/data/cc0-legal-code.txt', import.meta.url)), 'utf8');
// Train on everything before section 3, hold out the rest (same kind of text, unseen).
const cut = corpus.indexOf('3. Public License Fallback.');
const trainText = corpus.slice(0, cut);
const heldOut = corpus.slice(cut);
const trainLines = trainText.split('\n').map((l) => l + '\n');
const VOCAB = 700;
const tok = trainBpe(trainLines, { vocabSize: VOCAB });

const specials = Object.values(SPECIAL);

const unicodeCases = [
  '',
  ' ',
  'a',
  'Hello, world!',
  '👨‍👩‍👧‍👦 family, 👍🏽 thumbs, 🏳️‍🌈 flag, ❤️ heart',
  'e\u0301 n\u0303 Z\u0351\u0352\u0353a\u0308lgo', // combining marks
  '日本語のテキスト、中文文本，한국어 텍스트',
  'مرحبا بالعالم שלום עולם',
  'नमस्ते दुनिया',
  '\x00\x01\x02\x1f\x7f\u0080\u0085\u009f', // C0/C1 controls
  '\uFEFFbyte order mark at the start',
  'tabs\tand\r\nCRLF\n\n\nand    runs   of \u00a0\u3000 spaces   ',
  '\u{10FFFF}\u{E000}\u{1D400}\u{1F600}\uFFFD\uFFFF',
  'x'.repeat(3000),
  '1234567890 3.14159 -42 1e10 ١٢٣',
  "don't won't it's we've they're I'll I'd DON'T",
];

describe('byte-level BPE tokenizer', () => {
  it('has the documented layout: bytes, then specials at fixed ids, then merges', () => {
    expect(tok.vocabSize).toBe(VOCAB);
    for (let b = 0; b < 256; b++) expect(Array.from(tok.decodeBytes([b]))).toEqual([b]);
    specials.forEach((s, i) => {
      expect(tok.tokenToId(s)).toBe(256 + i);
      expect(tok.idToToken(256 + i)).toBe(s);
      expect(tok.isSpecial(256 + i)).toBe(true);
    });
    expect(tok.specialIds.thinkStart).toBe(tok.tokenToId('<think>'));
    tok.merges.forEach((m, rank) => expect(m.result).toBe(256 + specials.length + rank));
    expect(tok.tokenToId('Ġthe')).toBeDefined(); // printable form: Ġ is the space byte
  });

  it('pretokenize covers the text exactly and keeps words with their leading space', () => {
    expect(pretokenize("The Work's 12345 items,  ok.\n\nNext")).toEqual([
      'The', ' Work', "'s", ' ', '123', '45', ' items', ',', ' ', ' ok', '.\n\n', 'Next',
    ]);
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 60 }), (s) => pretokenize(s).join('') === s),
      { numRuns: 300 },
    );
  });

  it('round-trips arbitrary Unicode text exactly', () => {
    for (const s of unicodeCases) {
      expect(tok.decode(tok.encode(s))).toBe(s);
      expect(new TextDecoder('utf-8', { ignoreBOM: true }).decode(tok.decodeBytes(tok.encode(s)))).toBe(s);
    }
    expect(tok.encode('')).toEqual([]);
    const text = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 80 }),
      fc.string({ unit: 'grapheme', maxLength: 40 }),
      fc.string({ unit: 'binary-ascii', maxLength: 80 }),
    );
    fc.assert(
      fc.property(text, (s) => {
        expect(tok.decode(tok.encode(s))).toBe(s);
        expect(tok.decode(tok.encode(s, { allowSpecial: false }))).toBe(s);
      }),
      { numRuns: 400 },
    );
  });

  it('applies merges by rank, as replaying the merge list in order does', () => {
    // Reference: BPE by definition: each merge in rank order, over the whole pre-token.
    const reference = (piece: string): number[] => {
      let sym = Array.from(new TextEncoder().encode(piece));
      for (const m of tok.merges) {
        const next: number[] = [];
        for (let i = 0; i < sym.length; ) {
          if (i + 1 < sym.length && sym[i] === m.left && sym[i + 1] === m.right) {
            next.push(m.result);
            i += 2;
          } else next.push(sym[i++]);
        }
        sym = next;
      }
      return sym;
    };
    const check = (text: string) => {
      expect(tok.encode(text, { allowSpecial: false })).toEqual(pretokenize(text).flatMap(reference));
    };
    check(heldOut.slice(0, 1500));
    check(trainText.slice(0, 1500));
    const words = heldOut.split(/\s+/).filter((w) => w.length > 0);
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...words), { minLength: 1, maxLength: 6 }), fc.string({ maxLength: 10 }), (ws, noise) => {
        check(ws.join('') + noise + ws.join(' '));
      }),
      { numRuns: 100 },
    );
  });

  it('keeps text that a custom pretokenizer regex skips', () => {
    const custom = Tokenizer.fromJSON({ ...tok.toJSON(), pretokenizer: '[a-z]+' });
    expect(pretokenize('Hello, World 123', new RegExp('[a-z]+', 'gu'))).toEqual(['H', 'ello', ', W', 'orld', ' 123']);
    for (const s of ['Hello, World 123', ...unicodeCases]) expect(custom.decode(custom.encode(s))).toBe(s);
  });

  it('decodes partial UTF-8 with replacement characters, full sequences exactly', () => {
    const ids = tok.encode('€'); // 3 bytes, no merge for it in an English corpus
    expect(ids.length).toBe(3);
    expect(tok.decode(ids.slice(0, 2))).toBe('\uFFFD');
    expect(tok.decode([...ids.slice(0, 1), ...tok.encode('a')])).toBe('\uFFFDa');
    expect(tok.decode(ids)).toBe('€');
    expect(() => tok.decode([VOCAB])).toThrow(/id 700 at position 0 is outside the vocabulary 0\.\.699/);
  });

  it('matches special tokens as single ids and never splits them', () => {
    const s = SPECIAL;
    // Text that shares prefixes and suffixes with specials.
    const tricky = `<think<think>>${s.imStart}${s.imEnd}</think</think><|im_start|<answer>7</answer> <inspection-index-start>3<inspection-index-end>`;
    const ids = tok.encode(tricky);
    const specialSeq = ids.filter((i) => tok.isSpecial(i)).map((i) => tok.idToToken(i));
    expect(specialSeq).toEqual(['<think>', s.imStart, s.imEnd, '</think>', '<answer>', '</answer>', s.inspectStart, s.inspectEnd]);
    expect(tok.decode(ids)).toBe(tricky);
    expect(tok.encode('<|cand_start|>12 a red car<|cand_end|>')[0]).toBe(tok.specialIds.candStart);

    // Random interleavings of specials, near-misses and random text. Reference: scan
    // left to right, taking the longest special starting at each position.
    const nearMiss = fc.constantFrom('<think', 'think>', '<', '>', '|>', '<|', '</', '<|im_', '_end|>', '<answer', 'inspection-index-', '<|cand_start', 'Ġ');
    const piece = fc.oneof(fc.constantFrom(...specials), nearMiss, fc.string({ unit: 'binary', maxLength: 12 }), fc.string({ maxLength: 12 }));
    const bySize = [...specials].sort((a, b) => b.length - a.length);
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 12 }), (pieces) => {
        const text = pieces.join('');
        const expected: number[] = [];
        let plain = '';
        for (let i = 0; i < text.length; ) {
          const hit = bySize.find((sp) => text.startsWith(sp, i));
          if (hit) {
            expected.push(...tok.encode(plain, { allowSpecial: false }), tok.tokenToId(hit)!);
            plain = '';
            i += hit.length;
          } else plain += text[i++];
        }
        expected.push(...tok.encode(plain, { allowSpecial: false }));
        const got = tok.encode(text);
        expect(got).toEqual(expected);
        expect(tok.decode(got)).toBe(text);
      }),
      { numRuns: 300 },
    );
  });

  it('with allowSpecial false encodes special tokens as plain text', () => {
    for (const sp of specials) {
      const ids = tok.encode(sp, { allowSpecial: false });
      expect(ids.length).toBeGreaterThan(1);
      expect(ids.some((i) => tok.isSpecial(i))).toBe(false);
      expect(tok.decode(ids)).toBe(sp);
    }
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.constantFrom(...specials), fc.string({ maxLength: 10 })), { maxLength: 8 }), (pieces) => {
        const text = pieces.join('');
        const ids = tok.encode(text, { allowSpecial: false });
        expect(ids.some((i) => tok.isSpecial(i))).toBe(false);
        expect(tok.decode(ids)).toBe(text);
      }),
      { numRuns: 100 },
    );
    const chat = tok.encode(`${SPECIAL.imStart}user\nhi${SPECIAL.imEnd}`);
    expect(tok.decode(chat, { skipSpecial: true })).toBe('user\nhi');
  });

  it('trains deterministically and breaks ties by the smaller pair ids', () => {
    const again = trainBpe(trainLines, { vocabSize: VOCAB });
    expect(again.toJSON()).toEqual(tok.toJSON());
    // Any iterable, read once: a generator gives the same result.
    function* lines() {
      yield* trainLines;
    }
    expect(trainBpe(lines(), { vocabSize: VOCAB }).toJSON().merges).toEqual(tok.toJSON().merges);
    // Pre-tokens 'ab', ' cd': pairs (a,b), (' ',c), (c,d) all occur once; the smallest
    // pair (0x20, 0x63) wins, then (0x61, 0x62).
    const tie = trainBpe(['ab cd'], { vocabSize: 256 + specials.length + 2, minFrequency: 1 });
    expect(tie.toJSON().merges).toEqual(['Ġ c', 'a b']);
    // minFrequency stops training when no pair is frequent enough.
    expect(trainBpe(['ab cd'], { vocabSize: 1000 }).merges.length).toBe(0);
    // Specials in training text do not feed merges.
    const withSpecials = trainBpe([`${SPECIAL.thinkStart}${SPECIAL.thinkStart}x`], { vocabSize: 400, minFrequency: 1 });
    expect(withSpecials.merges.length).toBe(0);
    expect(() => trainBpe(['x'], { vocabSize: 100 })).toThrow(/vocabSize 100 must be an integer in 271\.\./);
  });

  it('incremental training learns the same merges as a full recount per merge', () => {
    // Reference trainer: recount every pair of every word (weighted by word count) before
    // each merge; the most frequent pair wins, ties to the smaller (left, right) ids.
    const naive = (texts: string[], merges: number, minFrequency: number): string[] => {
      const counts = new Map<string, number>();
      for (const t of texts) for (const w of pretokenize(t)) counts.set(w, (counts.get(w) ?? 0) + 1);
      const words = [...counts].map(([w, c]) => ({ sym: Array.from(new TextEncoder().encode(w)), c }));
      const out: string[] = [];
      let next = 256 + specials.length;
      const bytesOf = new Map<number, number[]>();
      for (let b = 0; b < 256; b++) bytesOf.set(b, [b]);
      for (let step = 0; step < merges; step++) {
        const pc = new Map<string, { a: number; b: number; n: number }>();
        for (const { sym, c } of words) {
          for (let i = 0; i + 1 < sym.length; i++) {
            const k = `${sym[i]},${sym[i + 1]}`;
            const e = pc.get(k) ?? { a: sym[i], b: sym[i + 1], n: 0 };
            e.n += c;
            pc.set(k, e);
          }
        }
        let best: { a: number; b: number; n: number } | undefined;
        for (const e of pc.values()) {
          if (!best || e.n > best.n || (e.n === best.n && (e.a < best.a || (e.a === best.a && e.b < best.b)))) best = e;
        }
        if (!best || best.n < minFrequency) break;
        const id = next++;
        bytesOf.set(id, [...bytesOf.get(best.a)!, ...bytesOf.get(best.b)!]);
        out.push(`${best.a} ${best.b}`);
        for (const w of words) {
          const s: number[] = [];
          for (let i = 0; i < w.sym.length; ) {
            if (i + 1 < w.sym.length && w.sym[i] === best.a && w.sym[i + 1] === best.b) {
              s.push(id);
              i += 2;
            } else s.push(w.sym[i++]);
          }
          w.sym = s;
        }
      }
      return out;
    };
    const cases: [string[], number, number][] = [
      [trainLines.slice(0, 30), 120, 2],
      [['aaaaaa bbb aaa ab ab aab aaaa aaaaaaa', 'zzzz zz zzz'], 20, 1],
      [['ééé 日本日本 👍🏽👍🏽 12341234 1234'], 15, 1],
    ];
    for (const [texts, merges, minFrequency] of cases) {
      const t = trainBpe(texts, { vocabSize: 256 + specials.length + merges, minFrequency });
      expect(t.merges.map((m) => `${m.left} ${m.right}`)).toEqual(naive(texts, merges, minFrequency));
      expect(t.merges.length).toBeGreaterThan(0);
    }
  });

  it('extra special tokens get ids after the fixed set and are never produced by merges', () => {
    const t = trainBpe(['<tool> <tool> <tool> ab ab'], { vocabSize: 300, specialTokens: ['<tool>', SPECIAL.pad], minFrequency: 1 });
    expect(t.tokenToId('<tool>')).toBe(256 + specials.length);
    expect(t.encode('x<tool>y')).toEqual([...t.encode('x'), 256 + specials.length, ...t.encode('y')]);
    const fromText = t.encode('<tool>', { allowSpecial: false });
    expect(fromText.some((i) => t.isSpecial(i))).toBe(false);
    // A pre-token '<tool' exists, but the merge spelling exactly '<tool>' cannot: '>' is a separate piece.
    const bad = trainBpe(['xq xq xq'], { vocabSize: 300, specialTokens: ['xq'], minFrequency: 1 });
    expect(bad.merges.map((m) => bad.idToToken(m.result))).not.toContain('xq');
    expect(bad.decode(bad.encode('xq', { allowSpecial: false }))).toBe('xq');
  });

  it('compresses held-out text of the same kind', () => {
    const bytes = new TextEncoder().encode(heldOut).length;
    const perByte = tok.encode(heldOut).length / bytes;
    expect(perByte).toBeLessThan(0.5); // bytes alone would be 1.0
    expect(tok.decode(tok.encode(heldOut))).toBe(heldOut);
    // More merges compress better.
    const small = trainBpe(trainLines, { vocabSize: 256 + specials.length + 50 });
    expect(small.encode(heldOut).length).toBeGreaterThan(tok.encode(heldOut).length);
  });

  it('saves and loads JSON with identical encodings', () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrv-tok-'));
    const path = join(dir, 'sub', 'tokenizer.json');
    saveTokenizer(tok, path);
    expect(readdirSync(join(dir, 'sub'))).toEqual(['tokenizer.json']); // no temp file left
    const raw = JSON.parse(readFileSync(path, 'utf8')) as TokenizerJSON;
    expect(Object.keys(raw)).toEqual(['version', 'vocab', 'merges', 'special', 'pretokenizer']);
    for (const tokStr of [...Object.keys(raw.vocab), ...raw.merges]) expect(tokStr).toMatch(/^[^\s\x00-\x1f]+( [^\s\x00-\x1f]+)?$/u);
    const loaded = loadTokenizer(path);
    const viaObj = Tokenizer.fromJSON(JSON.parse(JSON.stringify(tok.toJSON())));
    expect(loaded.toJSON()).toEqual(tok.toJSON());
    const samples = [heldOut, ...unicodeCases, specials.join('a b ')];
    for (const s of samples) {
      expect(loaded.encode(s)).toEqual(tok.encode(s));
      expect(viaObj.encode(s)).toEqual(tok.encode(s));
    }
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 50 }), (s) => {
        expect(loaded.encode(s)).toEqual(tok.encode(s));
      }),
      { numRuns: 100 },
    );
    // Saving over an existing file replaces it.
    saveTokenizer(trainBpe(['ab ab'], { vocabSize: 300 }), path);
    expect(loadTokenizer(path).merges.length).toBe(1);
    rmSync(dir, { recursive: true, force: true });
  });

  it('gives clear errors for missing and corrupt files', () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrv-tok-bad-'));
    const good = tok.toJSON();
    const write = (name: string, content: string) => {
      const p = join(dir, name);
      writeFileSync(p, content);
      return p;
    };
    const esc = (p: string) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const missing = join(dir, 'nope.json');
    expect(() => loadTokenizer(missing)).toThrow(new RegExp(`tokenizer file ${esc(missing)} does not exist`));
    const notJson = write('trunc.json', JSON.stringify(good).slice(0, 100));
    expect(() => loadTokenizer(notJson)).toThrow(new RegExp(`tokenizer file ${esc(notJson)} is not valid JSON`));

    const unknownMerge = write('merge.json', JSON.stringify({ ...good, merges: [...good.merges, 'Ġthe zzzq'] }));
    expect(() => loadTokenizer(unknownMerge)).toThrow(new RegExp(`${esc(unknownMerge)}: .*merge ${good.merges.length} "Ġthe zzzq" references unknown token 'zzzq'`));

    const dupVocab = { ...good.vocab, '!': good.vocab['"'] };
    const dup = write('dup.json', JSON.stringify({ ...good, vocab: dupVocab }));
    expect(() => loadTokenizer(dup)).toThrow(new RegExp(`${esc(dup)}: .*duplicate id ${good.vocab['"']}`));
    const dupSpecial = write('dup2.json', JSON.stringify({ ...good, special: { ...good.special, '<think>': 0 } }));
    expect(() => loadTokenizer(dupSpecial)).toThrow(/duplicate id 0, used by token 'Ā' and special token '<think>'/);

    const { '<|im_end|>': _drop, ...fewer } = good.special;
    const noSpecial = write('nospecial.json', JSON.stringify({ ...good, special: fewer }));
    expect(() => loadTokenizer(noSpecial)).toThrow(new RegExp(`${esc(noSpecial)}: tokenizer: missing required special token '<\\|im_end\\|>'`));

    const { a: _a, ...noByte } = good.vocab;
    expect(() => Tokenizer.fromJSON({ ...good, vocab: noByte, merges: [] })).toThrow(/lacks the byte token 'a' \(byte 0x61\)/);
    const { [tok.idToToken(VOCAB - 1)]: _last, ...gap } = good.vocab;
    expect(() => Tokenizer.fromJSON({ ...good, vocab: { ...gap, [tok.idToToken(VOCAB - 1)]: VOCAB } , merges: [] })).toThrow(/id 699 is unused \(ids must be dense 0\.\.700\)/);
    expect(() => Tokenizer.fromJSON({ ...good, version: 2 })).toThrow(/version 2, expected 1/);
    expect(() => Tokenizer.fromJSON({ ...good, pretokenizer: '(' })).toThrow(/pretokenizer regex does not compile/);
    expect(() => Tokenizer.fromJSON({ ...good, merges: ['Ġthe'] })).toThrow(/merge 0 "Ġthe" is not "left right"/);
    expect(() => Tokenizer.fromJSON([])).toThrow(/must be an object/);
    expect(existsSync(join(dir, 'nope.json'))).toBe(false);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('chat template', () => {
  const conversation: ChatMessage[] = [
    { role: 'system', content: 'You rank candidates.' },
    { role: 'user', content: 'Query: a red car\n<|cand_start|>0 a blue bus<|cand_end|><|cand_start|>1 a red car<|cand_end|>' },
    { role: 'assistant', content: '<think>Candidate 1 is red.</think><answer>1</answer>' },
    { role: 'user', content: 'Why?' },
    { role: 'assistant', content: 'It matches the colour.' },
  ];

  it('renders the Qwen-style template', () => {
    expect(renderChat(conversation)).toBe(
      '<|im_start|>system\nYou rank candidates.<|im_end|>\n' +
        '<|im_start|>user\nQuery: a red car\n<|cand_start|>0 a blue bus<|cand_end|><|cand_start|>1 a red car<|cand_end|><|im_end|>\n' +
        '<|im_start|>assistant\n<think>Candidate 1 is red.</think><answer>1</answer><|im_end|>\n' +
        '<|im_start|>user\nWhy?<|im_end|>\n' +
        '<|im_start|>assistant\nIt matches the colour.<|im_end|>\n',
    );
    expect(renderChat(conversation.slice(0, 2), { addGenerationPrompt: true })).toMatch(/<\|im_end\|>\n<\|im_start\|>assistant\n$/);
    expect(() => renderChat([{ role: 'tool' as 'user', content: '' }])).toThrow(/message 0 has role "tool"/);
  });

  it('masks exactly the assistant replies and their closing <|im_end|>', () => {
    const { ids, mask } = encodeChat(tok, conversation);
    expect(ids).toEqual(tok.encode(renderChat(conversation)));
    expect(mask.length).toBe(ids.length);
    // The masked tokens, grouped into runs, are the two replies with their <|im_end|>.
    const runs: string[] = [];
    let cur: number[] = [];
    ids.forEach((id, t) => {
      if (mask[t]) cur.push(id);
      else if (cur.length) {
        runs.push(tok.decode(cur));
        cur = [];
      }
    });
    if (cur.length) runs.push(tok.decode(cur));
    expect(runs).toEqual([
      '<think>Candidate 1 is red.</think><answer>1</answer><|im_end|>',
      'It matches the colour.<|im_end|>',
    ]);
    // Finding the spans in the bare token ids gives the same mask.
    expect(Array.from(spansToMask(assistantSpans(ids, tok), ids.length))).toEqual(Array.from(mask));
    // Generation prompt: no masked tokens after it; an unfinished reply runs to the end.
    const gen = encodeChat(tok, conversation.slice(0, 2), { addGenerationPrompt: true });
    expect(gen.mask.every((m) => m === 0)).toBe(true);
    const partial = [...gen.ids, ...tok.encode('<think>Cand')];
    expect(assistantSpans(partial, tok)).toEqual([{ start: gen.ids.length, end: partial.length }]);
  });

  it('finds assistant spans when a merge crosses the header newline', () => {
    const text = renderChat([{ role: 'assistant', content: '\n\nOk' }]);
    const ids = tok.encode(text);
    const spans = assistantSpans(ids, tok);
    expect(spans.length).toBe(1);
    const inSpan = tok.decode(ids.slice(spans[0].start, spans[0].end));
    expect(inSpan.endsWith('\n\nOk<|im_end|>')).toBe(true);
    expect(assistantSpans(tok.encode(renderChat([{ role: 'user', content: 'assistant\nno' }])), tok)).toEqual([]);
  });
});
