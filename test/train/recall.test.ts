// Recall@k per task, macro and micro, on hand-made rankings with the expected numbers
// worked out by hand; the printed table and JSON; and the two baselines (seeded random
// ranking, character n-gram TF-IDF / mean-colour matcher).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  type BaselineCandidate,
  type BaselineQuery,
  type RecallQuery,
  computeRecall,
  formatRecallTable,
  meanColour,
  randomRankings,
  rankingsFrom,
  trivialRankings,
  writeRecallJson,
} from '../../train/eval/recall.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-recall-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const filler = (n: number, tag: string) => Array.from({ length: n }, (_, i) => `${tag}${i}`);

// Task 0: q1 hit at rank 1; q2 first positive at rank 5; q3 never.
// Task 1: q4 second positive at rank 2; q5 has no positives (skipped); q6 hit at rank 10.
const queries: RecallQuery[] = [
  { qid: 'q1', task_id: 0, pos_cand_list: ['a'] },
  { qid: 'q2', task_id: 0, pos_cand_list: ['b'] },
  { qid: 'q3', task_id: 0, pos_cand_list: ['z'] },
  { qid: 'q4', task_id: 1, pos_cand_list: ['a', 'b'] },
  { qid: 'q5', task_id: 1, pos_cand_list: [] },
  { qid: 'q6', task_id: 1, pos_cand_list: ['k'] },
];
const rankings = new Map<string, string[]>([
  ['q1', ['a', 'b', 'c']],
  ['q2', [...filler(4, 'x'), 'b', 'a']],
  ['q3', filler(12, 'y')],
  ['q4', ['c', 'b', 'a']],
  ['q5', ['a']],
  ['q6', [...filler(9, 'w'), 'k', 'k2']],
]);

describe('Recall@k', () => {
  it('per task, macro over tasks and micro over queries, on hand-made rankings', () => {
    const r = computeRecall(queries, rankings);
    expect(r.ks).toEqual([1, 5, 10]);
    expect(r.skippedNoPositives).toBe(1);
    expect(r.queries).toBe(5);
    expect(r.tasks.map((t) => [t.taskId, t.task, t.queries])).toEqual([
      [0, 'text -> image', 3],
      [1, 'text -> text', 2],
    ]);
    const t0 = r.tasks[0].recall;
    expect(t0['R@1']).toBeCloseTo(1 / 3, 12);
    expect(t0['R@5']).toBeCloseTo(2 / 3, 12);
    expect(t0['R@10']).toBeCloseTo(2 / 3, 12);
    const t1 = r.tasks[1].recall;
    expect(t1['R@1']).toBe(0);
    expect(t1['R@5']).toBe(0.5);
    expect(t1['R@10']).toBe(1);
    // macro: mean of the two tasks; micro: hits over the 5 scored queries.
    expect(r.macro['R@1']).toBeCloseTo(1 / 6, 12);
    expect(r.macro['R@5']).toBeCloseTo(7 / 12, 12);
    expect(r.macro['R@10']).toBeCloseTo(5 / 6, 12);
    expect(r.micro['R@1']).toBeCloseTo(1 / 5, 12);
    expect(r.micro['R@5']).toBeCloseTo(3 / 5, 12);
    expect(r.micro['R@10']).toBeCloseTo(4 / 5, 12);
    // Other cut-offs: R@2 of task 1 counts q4's second positive at rank 2.
    expect(computeRecall(queries, rankings, [2]).tasks[1].recall['R@2']).toBe(0.5);
  });

  it('rejects a missing ranking, a repeated query and bad ks', () => {
    const partial = new Map(rankings);
    partial.delete('q3');
    expect(() => computeRecall(queries, partial)).toThrow(/no ranking for query q3 \(task 0\)/);
    expect(() => computeRecall([...queries, queries[0]], rankings)).toThrow(/q1 appears twice/);
    expect(() => computeRecall(queries, rankings, [0])).toThrow(/positive integers/);
    expect(rankingsFrom(['q1', 'q2'], [['a'], ['b']]).get('q2')).toEqual(['b']);
    expect(() => rankingsFrom(['q1'], [])).toThrow(/1 qids but 0 rankings/);
  });

  it('prints a table and writes JSON', () => {
    const r = computeRecall(queries, rankings);
    const table = formatRecallTable(r);
    const lines = table.trim().split('\n');
    expect(lines[0]).toMatch(/^Recall@k \(%\)\s+queries\s+R@1\s+R@5\s+R@10$/);
    expect(lines.find((l) => l.startsWith('0 text -> image'))).toMatch(/\s3\s+33\.3\s+66\.7\s+66\.7$/);
    expect(lines.find((l) => l.startsWith('1 text -> text'))).toMatch(/\s2\s+0\.0\s+50\.0\s+100\.0$/);
    expect(lines.find((l) => l.startsWith('macro'))).toMatch(/16\.7\s+58\.3\s+83\.3$/);
    expect(lines.find((l) => l.startsWith('micro'))).toMatch(/\s5\s+20\.0\s+60\.0\s+80\.0$/);
    expect(table).toContain('(1 queries without positives skipped)');
    const both = formatRecallTable({ retriever: r, random: r });
    expect(both).toMatch(/^retriever {2}0 text -> image/m);
    expect(both).toMatch(/^random {2}micro \(all queries\)/m);
    writeRecallJson(join(dir, 'out', 'recall.json'), { retriever: r });
    const back = JSON.parse(readFileSync(join(dir, 'out', 'recall.json'), 'utf8'));
    expect(back.retriever.micro['R@5']).toBeCloseTo(0.6, 12);
    expect(back.retriever.definition).toMatch(/at least one positive/);
  });
});

describe('baselines', () => {
  const cands: BaselineCandidate[] = Array.from({ length: 10 }, (_, i) => ({ id: `c${i}` }));

  it('random ranking: seeded, a permutation of the allowed candidates, uniform', () => {
    const qs: BaselineQuery[] = Array.from({ length: 3000 }, (_, i) => ({ qid: `q${i}` }));
    const a = randomRankings(qs, cands, { k: 10, seed: 5 });
    expect(randomRankings(qs, cands, { k: 10, seed: 5 })).toEqual(a);
    expect(randomRankings(qs, cands, { k: 10, seed: 6 })).not.toEqual(a);
    for (const r of a.values()) expect([...r].sort()).toEqual(cands.map((c) => c.id).sort());
    // One positive among 10: Recall@1 about 0.1, Recall@5 about 0.5.
    const r = computeRecall(qs.map((q) => ({ qid: q.qid, task_id: 0, pos_cand_list: ['c0'] })), a, [1, 5]);
    expect(Math.abs(r.micro['R@1'] - 0.1)).toBeLessThan(0.03);
    expect(Math.abs(r.micro['R@5'] - 0.5)).toBeLessThan(0.04);
    const even = randomRankings(qs.slice(0, 20), cands, { k: 3, allowed: (_q, c) => Number(c.id.slice(1)) % 2 === 0 });
    for (const ids of even.values()) {
      expect(ids).toHaveLength(3);
      expect(ids.every((id) => Number(id.slice(1)) % 2 === 0)).toBe(true);
    }
  });

  it('mean colour (character n-grams: test/model/lexical.test.ts)', () => {
    // A transparent pixel counts as white; an opaque red one as red.
    expect(meanColour(new Uint8Array([0, 0, 0, 0, 255, 0, 0, 255]))).toEqual([255, 127.5, 127.5]);
    expect(meanColour(new Uint8Array([0, 0, 0, 255]))).toEqual([0, 0, 0]);
  });

  it('the trivial matcher ranks by text n-grams, by colour, by both, and falls back to random order', () => {
    const pool: BaselineCandidate[] = [
      { id: 'pie', text: 'red apple pie' },
      { id: 'sky', text: 'blue sky' },
      { id: 'tree', text: 'green tree' },
      { id: 'redimg', rgb: [250, 10, 10] },
      { id: 'blueimg', rgb: [60, 60, 200] },
      { id: 'bluecap', text: 'sky', rgb: [20, 20, 240] },
    ];
    const qs: BaselineQuery[] = [
      { qid: 'text', text: 'a red apple' },
      { qid: 'image', rgb: [240, 20, 20] },
      // Text says sky, the colour says blue: bluecap matches on both sides (the mean of its
      // two similarities beats blueimg's colour alone and 'blue sky''s text alone).
      { qid: 'both', text: 'sky', rgb: [10, 10, 255] },
    ];
    const r = trivialRankings(qs, pool, { k: 6, seed: 1 });
    expect(r.get('text')![0]).toBe('pie');
    expect(r.get('image')!.slice(0, 1)).toEqual(['redimg']);
    expect(r.get('image')!.indexOf('blueimg')).toBeLessThan(r.get('image')!.indexOf('pie')); // any colour beats no common side
    expect(r.get('both')![0]).toBe('bluecap');

    // A text query against image-only candidates has no common side: a seeded random
    // order, not the pool order (the positive sits first in the pool).
    const imgs: BaselineCandidate[] = Array.from({ length: 8 }, (_, i) => ({ id: `i${i}`, rgb: [i * 30, 0, 0] }));
    const tq: BaselineQuery[] = Array.from({ length: 800 }, (_, i) => ({ qid: `t${i}`, text: 'a dog' }));
    const tr = trivialRankings(tq, imgs, { k: 8, seed: 2 });
    expect(trivialRankings(tq, imgs, { k: 8, seed: 2 })).toEqual(tr);
    const rec = computeRecall(tq.map((q) => ({ qid: q.qid, task_id: 0, pos_cand_list: ['i0'] })), tr, [1]);
    expect(Math.abs(rec.micro['R@1'] - 1 / 8)).toBeLessThan(0.04);

    // allowed() restricts the ranked candidates (e.g. a task's target modality).
    const onlyImages = trivialRankings([qs[0]], pool, { k: 6, allowed: (_q, c) => !!c.rgb && !c.text });
    expect([...onlyImages.get('text')!].sort()).toEqual(['blueimg', 'redimg']);
  });
});
