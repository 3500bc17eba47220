// Cross-fitted training rankings: folds follow the emoji (FNV-1a of its base code, checked on
// the published test vectors), every query about one emoji lands in one fold, and each fold's
// lists come from the retriever given for that fold, not from the other one.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PRESETS, withVocab } from '../../model/presets.ts';
import type { MllmConfig } from '../../model/mllm.ts';
import { DEFAULT_PROMPT, Retriever } from '../../model/retriever.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { buildEmojiBenchmark, readSideTable, writeEmojiBenchmark } from '../../train/data/emoji-benchmark.ts';
import { foldOfBase, foldOfQuery, parseFold, queryFolds } from '../../train/cross-fit.ts';
import { crossFitRankings, trainingRankings } from '../../train/training-rankings.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-crossfit-'));
const data = join(dir, 'data');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

beforeAll(async () => {
  const bench = buildEmojiBenchmark({ seed: 1, maxPerTask: 12 });
  await writeEmojiBenchmark(data, bench);
  const tok = trainBpe([DEFAULT_PROMPT.prefix, DEFAULT_PROMPT.suffix, 'an emoji of a thumbs up with dark skin tone'], { vocabSize: PRESETS.tiny.vocabSize });
  const cfg = withVocab(PRESETS.tiny, tok.vocabSize);
  const config: MllmConfig = { architectures: ['RetrvMllm'], preset: 'tiny', llm: cfg.llm, vision: cfg.vision, imageSize: PRESETS.tiny.imageSize };
  // Two retrievers that rank differently (different random weights), one per fold.
  for (const seed of [1, 2]) {
    const r = Retriever.create(config, tok, 32, seed, DEFAULT_PROMPT, 'mean');
    await r.save(join(dir, `r${seed - 1}`));
    r.dispose();
  }
}, 120_000);

describe('cross-fitting folds', () => {
  it('hashes the base code with 32-bit FNV-1a', () => {
    // FNV-1a test vectors: "" -> 0x811c9dc5, "a" -> 0xe40c292c, "foobar" -> 0xbf9cf968.
    const whole = 2 ** 32 - 1;
    expect(foldOfBase('', whole)).toBe(0x811c9dc5);
    expect(foldOfBase('a', whole)).toBe(0xe40c292c);
    expect(foldOfBase('foobar', whole)).toBe(0xbf9cf968);
    expect(foldOfBase('foobar', 2)).toBe(0xbf9cf968 % 2);
  });

  it('parses i/F and names a bad one', () => {
    expect(parseFold('1/3')).toEqual({ fold: 1, folds: 3 });
    for (const bad of ['2/2', '0/1', 'a/2', '1', '-1/2']) expect(() => parseFold(bad)).toThrow(/is not i\/F with F >= 2 and 0 <= i < F/);
  });

  it('puts every query about one emoji in one fold, and both folds are used', async () => {
    const folds = await queryFolds(data, 2);
    const attrs = await readSideTable<{ qid: string; base: string }>(join(data, 'query_attributes.jsonl'), 'qid');
    const foldOfEmoji = new Map<string, number>();
    for (const [qid, a] of attrs) {
      const f = foldOfQuery(folds, qid);
      expect(foldOfEmoji.get(a.base) ?? f, a.base).toBe(f);
      foldOfEmoji.set(a.base, f);
    }
    expect(new Set(foldOfEmoji.values())).toEqual(new Set([0, 1]));
    expect(() => foldOfQuery(folds, 'nope')).toThrow(/query nope is not in query_attributes\.jsonl/);
  });
});

describe('cross-fitted rankings', () => {
  it("ranks each fold's queries with that fold's retriever", async () => {
    const retrievers = [join(dir, 'r0'), join(dir, 'r1')];
    const folds = await queryFolds(data, 2);
    const x = await crossFitRankings({ retrievers, dataDir: data, tasks: [4, 6], depth: 8 });
    let differs = 0;
    let total = 0;
    for (const i of [0, 1]) {
      const keep = (qid: string) => folds.get(qid) === i;
      const own = await trainingRankings({ retriever: retrievers[i], dataDir: data, tasks: [4, 6], depth: 8, keep });
      const other = await trainingRankings({ retriever: retrievers[1 - i], dataDir: data, tasks: [4, 6], depth: 8, keep });
      expect(own.rankings.size).toBeGreaterThan(0);
      for (const [qid, r] of own.rankings) {
        expect(x.rankings.get(qid), qid).toEqual(r);
        if (JSON.stringify(other.rankings.get(qid)) !== JSON.stringify(r)) differs++;
      }
      total += own.rankings.size;
    }
    expect(x.rankings.size).toBe(total);
    // The two retrievers disagree, so a list taken from the wrong fold's retriever would show.
    expect(differs).toBeGreaterThan(total / 2);
    await expect(crossFitRankings({ retrievers: retrievers.slice(0, 1), dataDir: data })).rejects.toThrow(/need at least 2 retrievers/);
  }, 300_000);
});
