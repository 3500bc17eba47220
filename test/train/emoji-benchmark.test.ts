// The emoji benchmark: every task in every split, splits disjoint by emoji (and no
// candidate a query references comes from another split), positives and negatives in
// the pool, hard negatives from the same subcategory, images that exist and decode,
// skin-tone positives that really carry the named modifier, task-1 queries that share
// no word with their answer, determinism for a seed, and the files read back unchanged.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  EMOJI_TASK_IDS,
  SKIN_TONES,
  TASK1_TEMPLATE_WORDS,
  type EmojiAttributes,
  type EmojiBenchmark,
  type EmojiQueryAttributes,
  buildEmojiBenchmark,
  loadBenchmark,
  readSideTable,
  wordStems,
  writeEmojiBenchmark,
} from '../../train/data/emoji-benchmark.ts';
import { checkImages, formatIssue } from '../../train/data/mbeir.ts';
import { SPLITS } from '../../train/data/seeded.ts';

let dir: string;
let small: EmojiBenchmark;
let full: EmojiBenchmark;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'emoji-bench-'));
  small = buildEmojiBenchmark({ seed: 7, maxPerTask: 6 });
  full = buildEmojiBenchmark({ seed: 1 });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const allQueries = (b: EmojiBenchmark) => SPLITS.flatMap((s) => b.queries[s].map((q) => ({ q, split: s })));

/** The invariants every build must satisfy (violations collected, then asserted at once: fast). */
function checkInvariants(b: EmojiBenchmark): void {
  const pool = new Map(b.pool.map((c) => [c.did, c]));
  const attr = new Map(b.attributes.map((a) => [a.did, a]));
  const qattr = new Map(b.queryAttributes.map((a) => [a.qid, a]));
  expect(pool.size).toBe(b.pool.length); // dids unique
  expect(attr.size).toBe(pool.size);

  // Every task present in every split.
  for (const t of EMOJI_TASK_IDS) for (const s of SPLITS) expect(b.queries[s].filter((q) => q.task_id === t).length, `task ${t} ${s}`).toBeGreaterThan(0);

  const bad: string[] = [];
  const localPools = new Map([...b.taskPools].map(([t, dids]) => [t, new Set(dids)]));
  const qids = new Set<string>();
  // Splits disjoint: qids, and emoji bases (of queries and of everything they reference).
  const baseSplit = new Map<string, string>();
  const claim = (base: string, split: string, what: string) => {
    const prev = baseSplit.get(base);
    if (prev !== undefined && prev !== split) bad.push(`${what}: base ${base} in ${prev} and ${split}`);
    baseSplit.set(base, split);
  };
  for (const { q, split } of allQueries(b)) {
    if (qids.has(q.qid)) bad.push(`duplicate qid ${q.qid}`);
    qids.add(q.qid);
    const qa = qattr.get(q.qid)!;
    if (qa.split !== split) bad.push(`${q.qid}: attributes say ${qa.split}, file says ${split}`);
    claim(qa.base, split, q.qid);
    // Positives and negatives exist in the pool, in the task's local pool, and do not overlap.
    const local = localPools.get(q.task_id)!;
    for (const d of [...q.pos_cand_list, ...q.neg_cand_list]) {
      if (!pool.has(d)) bad.push(`${q.qid} -> ${d}: not in the pool`);
      else if (!local.has(d)) bad.push(`${q.qid} -> ${d}: not in task ${q.task_id}'s pool`);
      else claim(attr.get(d)!.base, split, `${q.qid} -> ${d}`);
    }
    if (q.pos_cand_list.length === 0) bad.push(`${q.qid}: no positive`);
    for (const d of q.pos_cand_list) if (q.neg_cand_list.includes(d)) bad.push(`${q.qid}: ${d} both positive and negative`);
    // Hard negatives share the query emoji's subcategory.
    for (const d of q.neg_cand_list) if (attr.get(d)?.subcategory !== qa.subcategory) bad.push(`${q.qid} -> ${d}: subcategory ${attr.get(d)?.subcategory} != ${qa.subcategory}`);
    // The first positive is the query's own emoji.
    if (attr.get(q.pos_cand_list[0])?.unified !== qa.unified) bad.push(`${q.qid}: first positive ${q.pos_cand_list[0]} is not ${qa.unified}`);
  }
  expect(bad.slice(0, 20)).toEqual([]);
}

describe('emoji benchmark', () => {
  it('full build: invariants hold and sizes are all usable emojis', () => {
    checkInvariants(full);
    const c = full.meta.counts;
    for (const t of EMOJI_TASK_IDS) expect(c[t].train + c[t].val + c[t].test, `task ${t}`).toBeGreaterThan(1000);
    const bases = full.meta.emojis as { bases: number; bases_per_split: Record<string, number> };
    expect(bases.bases).toBeGreaterThan(1800);
    // Roughly 80/10/10.
    expect(bases.bases_per_split.train / bases.bases).toBeGreaterThan(0.7);
    expect(bases.bases_per_split.test / bases.bases).toBeGreaterThan(0.05);
  });

  it('small build: invariants hold, at most maxPerTask per task and split, pool pruned', () => {
    checkInvariants(small);
    for (const t of EMOJI_TASK_IDS) for (const s of SPLITS) expect(small.meta.counts[t][s]).toBeLessThanOrEqual(6);
    const used = new Set(allQueries(small).flatMap(({ q }) => [...q.pos_cand_list, ...q.neg_cand_list]));
    expect(new Set(small.pool.map((c) => c.did))).toEqual(used);
  });

  it('task shapes: modalities, vendors, and the image->image task crosses vendors', () => {
    const attr = new Map(full.attributes.map((a) => [a.did, a]));
    const byDid = new Map(full.pool.map((c) => [c.did, c]));
    for (const { q } of allQueries(full)) {
      const pos = byDid.get(q.pos_cand_list[0])!;
      switch (q.task_id) {
        case 0:
          expect([q.query_modality, pos.modality]).toEqual(['text', 'image']);
          expect(attr.get(pos.did)!.skin_tone).toBeNull();
          break;
        case 1:
        case 3:
          expect(pos.modality).toBe('text');
          expect(q.query_modality).toBe(q.task_id === 1 ? 'text' : 'image');
          break;
        case 4: {
          expect([q.query_modality, pos.modality]).toEqual(['image', 'image']);
          expect(q.query_img_path).toMatch(/^emoji-datasource-twitter\/img\/twitter\/64\//);
          expect(pos.img_path).toMatch(/^emoji-datasource-google\/img\/google\/64\//);
          expect(q.query_img_path!.split('/').pop()).toBe(pos.img_path!.split('/').pop());
          break;
        }
        case 6:
          expect([q.query_modality, pos.modality]).toEqual(['image,text', 'image']);
          break;
        default:
          throw new Error(`unexpected task ${q.task_id}`);
      }
    }
  });

  it('skin-tone task: the positive carries exactly the modifier the text names, on the query emoji', () => {
    const attr = new Map(full.attributes.map((a) => [a.did, a]));
    const byImage = new Map(full.pool.filter((c) => c.img_path !== null).map((c) => [c.img_path!, attr.get(c.did)!]));
    const tone6 = allQueries(full).filter(({ q }) => q.task_id === 6);
    expect(tone6.length).toBeGreaterThan(1000);
    for (const { q } of tone6) {
      // Which modifiers the text names: the longest tone names first ("medium-dark" before "dark").
      let text = q.query_txt!;
      const named = new Set<string>();
      for (const [code, name] of Object.entries(SKIN_TONES).sort((a, b) => b[1].length - a[1].length)) {
        if (text.includes(name)) {
          named.add(code);
          text = text.split(name).join('#');
        }
      }
      expect(named.size, q.query_txt!).toBeGreaterThan(0);
      const queryEmoji = byImage.get(q.query_img_path!)!;
      const mods = (u: string) => u.split('-').filter((p) => p in SKIN_TONES);
      expect(mods(queryEmoji.unified), 'query image has no skin tone').toEqual([]);
      for (const d of q.pos_cand_list) {
        const p = attr.get(d)!;
        expect(new Set(mods(p.unified)), `${q.qid}: ${q.query_txt} -> ${p.unified}`).toEqual(named);
        expect(p.base, `${q.qid}: same emoji as the query image`).toBe(queryEmoji.unified);
      }
    }
  });

  it('text->text is not string identity: the query shares no word with its answers', () => {
    const stop = new Set(TASK1_TEMPLATE_WORDS);
    const byDid = new Map(full.pool.map((c) => [c.did, c]));
    let n = 0;
    for (const { q } of allQueries(full).filter(({ q }) => q.task_id === 1)) {
      const words = [...wordStems(q.query_txt!)].filter((w) => !stop.has(w));
      expect(words.length).toBeGreaterThan(0);
      for (const d of q.pos_cand_list) {
        const name = wordStems(byDid.get(d)!.txt!);
        expect(words.filter((w) => name.has(w)), `${q.query_txt} -> ${byDid.get(d)!.txt}`).toEqual([]);
        n++;
      }
    }
    expect(n).toBeGreaterThan(1000);
  });

  it('image files exist and decode (every image of the small build)', async () => {
    const root = small.meta.image_root;
    const qs = SPLITS.flatMap((s) => small.queries[s]);
    const a = await checkImages(small.pool, root, { file: 'pool' });
    const b = await checkImages(qs, root, { file: 'queries' });
    expect(a.issues.map(formatIssue)).toEqual([]);
    expect(b.issues.map(formatIssue)).toEqual([]);
    expect(a.checked + b.checked).toBeGreaterThan(100);
  });

  it('deterministic for a seed, different for another; files write and read back unchanged', async () => {
    const again = buildEmojiBenchmark({ seed: 7, maxPerTask: 6 });
    expect(JSON.stringify(again)).toBe(JSON.stringify(small));
    const other = buildEmojiBenchmark({ seed: 8, maxPerTask: 6 });
    expect(JSON.stringify(other.queries)).not.toBe(JSON.stringify(small.queries));

    const d1 = join(dir, 'a');
    const d2 = join(dir, 'b');
    await writeEmojiBenchmark(d1, small);
    await writeEmojiBenchmark(d2, again);
    const files = readdirSync(d1).sort();
    expect(files).toEqual([...(small.meta.files as string[])].sort());
    for (const f of files) expect(readFileSync(join(d2, f), 'utf8'), f).toBe(readFileSync(join(d1, f), 'utf8'));

    const loaded = await loadBenchmark(d1, { checkImages: true });
    expect(loaded.skipped).toBe(0);
    expect(loaded.issues.map(formatIssue)).toEqual([]);
    expect(loaded.queries).toEqual(small.queries);
    expect(loaded.pool).toEqual(small.pool);
    expect(loaded.taskPools).toEqual(small.taskPools);
    expect(loaded.imageRoot).toBe(small.meta.image_root);
    const attrs = await readSideTable<EmojiAttributes>(join(d1, 'attributes.jsonl'), 'did');
    expect(attrs.size).toBe(small.pool.length);
    const qattrs = await readSideTable<EmojiQueryAttributes>(join(d1, 'query_attributes.jsonl'), 'qid');
    expect(qattrs.size).toBe(SPLITS.reduce((n, s) => n + small.queries[s].length, 0));
    const card = readFileSync(join(d1, 'DATASET.md'), 'utf8');
    for (const t of EMOJI_TASK_IDS) expect(card).toContain(`| ${t} | `);
    expect(card).toContain('CC-BY 4.0');
    expect(card).toContain('Apache License 2.0');
  });
});
