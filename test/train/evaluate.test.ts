// Checkpoint evaluation on M-BEIR files and the ablation table. A tiny reranker is taught
// to answer "1" whatever it reads; with a hand-made first-stage ranking the recalls are
// then known by hand, and with a (random) retriever they must agree with computeRecall on
// the same rankings. Bad lines are reported with file and line; the table shows the first
// stage's own row with the reranker columns not applicable, saves JSON + Markdown, and a
// second run reuses the saved rows.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Icm, icmConfigFor } from '../../model/icm.ts';
import { Mllm, type MllmConfig } from '../../model/mllm.ts';
import { PRESETS, withVocab } from '../../model/presets.ts';
import { Retriever } from '../../model/retriever.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { buildEmojiBenchmark, writeEmojiBenchmark } from '../../train/data/emoji-benchmark.ts';
import { ImageStore, candidateInput, queryInput } from '../../train/data/inputs.ts';
import type { MbeirQuery } from '../../train/data/mbeir-types.ts';
import { computeRecall } from '../../train/eval/recall.ts';
import { rerankedOrder } from '../../train/eval/rerank.ts';
import { evaluateCheckpoint, loadEvalData, spreadLimit } from '../../train/eval/evaluate.ts';
import { queriesOfTasks } from '../../train/data/mbeir.ts';
import { firstStageRow, formatMarkdownTable, formatTerminalTable, parseTableSpec, runAblationTable } from '../../train/eval/table.ts';
import { type SftExample, sftTrain } from '../../train/sft.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-evaluate-'));
const dataDir = join(dir, 'data');
const ckpt = join(dir, 'reranker'); // model + (untrained) ICM
const retrieverDir = join(dir, 'retriever');
const queriesFile = join(dir, 'queries.jsonl');
const K = 4;
const ANSWER = 1;
const SYSTEM = 'Rank.'; // short prompts: a faster test
const TRACE = `<think>ok</think><answer>${ANSWER}</answer>`;
let imageRoot = '';
let picked: MbeirQuery[] = [];
const given = new Map<string, string[]>();

beforeAll(async () => {
  const bench = buildEmojiBenchmark({ seed: 1, maxPerTask: 12 });
  await writeEmojiBenchmark(dataDir, bench);
  imageRoot = bench.meta.image_root;
  // Two test queries of a text task and two of an image task.
  picked = [...bench.queries.test.filter((q) => q.task_id === 1).slice(0, 2), ...bench.queries.test.filter((q) => q.task_id === 6).slice(0, 2)];
  // The queries file: the 4 queries, then a line that is not JSON and one whose positive is not in the pool.
  const bad = { ...picked[0], qid: 'ghost', pos_cand_list: ['no-such-did'] };
  writeFileSync(queriesFile, [...picked.map((q) => JSON.stringify(q)), '{not json', JSON.stringify(bad)].join('\n') + '\n');
  // A hand-made first stage: the positive at index 1, 1, 0 and 7 of ten.
  const where = [1, 1, 0, 7];
  picked.forEach((q, i) => {
    const negs = bench.taskPools.get(q.task_id)!.filter((d) => !q.pos_cand_list.includes(d)).slice(i, i + 9);
    const list = [...negs];
    list.splice(where[i], 0, q.pos_cand_list[0]);
    given.set(q.qid, list);
  });

  const tok = trainBpe([TRACE, ...bench.attributes.map((a) => a.name)], { vocabSize: 512 });
  const cfg = withVocab(PRESETS.tiny, tok.vocabSize);
  const config: MllmConfig = { architectures: ['RetrvMllm'], preset: 'tiny', llm: cfg.llm, vision: cfg.vision, imageSize: PRESETS.tiny.imageSize };
  const model = Mllm.create(config, tok, 1);
  // Teach it the one answer, over the lists it will read.
  const images = new ImageStore({ root: imageRoot, patchSize: cfg.vision.patchSize, mergeSize: cfg.vision.mergeSize, size: config.imageSize });
  const byDid = new Map(bench.pool.map((c) => [c.did, c]));
  const examples: SftExample[] = picked.map((q) => {
    const ids = given.get(q.qid)!.slice(0, K);
    return {
      qid: q.qid,
      query: queryInput(q, images),
      candidateIds: ids,
      candidates: ids.map((d) => candidateInput(byDid.get(d)!, images)),
      trace: { text: TRACE, answer: ANSWER, inspections: [], hard: [], sentences: [] },
      traceIds: [...tok.encode(TRACE), tok.specialIds.imEnd],
    };
  });
  await sftTrain({ model, examples: () => examples, runDir: join(dir, 'teach'), system: SYSTEM, steps: 20, batch: 4, lr: 1e-2, seed: 1, warmupSteps: 0, minLr: 1e-2, log: () => {} });
  await model.save(ckpt);
  const icm = Icm.create(icmConfigFor(config), 2);
  await icm.save(ckpt);
  icm.dispose();
  const retriever = Retriever.fromMllm(model, 16, 1); // takes the model over
  await retriever.save(retrieverDir);
  retriever.dispose();
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

const base = () => ({ queries: queriesFile, pool: join(dataDir, 'pool.jsonl'), imageRoot, ckpt, K, system: SYSTEM, maxNewTokens: 16, log: () => {} });

describe('evaluateCheckpoint', () => {
  it('given first stage: recalls worked out by hand, the JSON fields, bad lines with file and line', async () => {
    const out = join(dir, 'eval', 'given.json');
    const r = await evaluateCheckpoint({ ...base(), noIcm: true, firstStage: given, out });
    expect(JSON.parse(readFileSync(out, 'utf8'))).toEqual(JSON.parse(JSON.stringify(r)));
    expect(r.queries).toBe(4);
    expect(r.per_query.map((p) => p.answer), r.per_query.map((p) => p.text).join(" / ")).toEqual([ANSWER, ANSWER, ANSWER, ANSWER]);
    // First stage: positive at 1, 1, 0, 7 -> R@1 1/4, R@5 3/4, R@10 4/4. Answer 1 moves
    // the positive to the top for the first two, pushes it to rank 2 for the third.
    expect(r.first_stage).toEqual({ 'R@1': 25, 'R@5': 75, 'R@10': 100 });
    expect(r.reranked).toEqual({ 'R@1': 50, 'R@5': 75, 'R@10': 100 });
    // K = 4: the fourth query's positive (rank 7) is not among its candidates; the reranker
    // is right on 2 of the 3 that hold one.
    expect(r.positive_in_candidates).toBe(75);
    expect(r.reranked_r1_given_positive).toBeCloseTo(200 / 3, 9);
    // Per task: task 1 holds the first two queries, task 6 the other two.
    expect(r.per_task['1']).toMatchObject({ queries: 2, first_stage: { 'R@1': 0, 'R@5': 100 }, reranked: { 'R@1': 100, 'R@5': 100 } });
    expect(r.per_task['6']).toMatchObject({ queries: 2, first_stage: { 'R@1': 50, 'R@5': 50 }, reranked: { 'R@1': 0, 'R@5': 50 } });
    for (const k of ['prompt_tokens_mean', 'inspections_mean', 'rerank_ms_mean', 'peak_gpu_bytes'] as const) expect(typeof r[k]).toBe('number');
    expect(r.prompt_tokens_mean).toBeCloseTo(r.per_query.reduce((a, p) => a + p.prompt_tokens, 0) / 4, 9);
    expect(r.rerank_ms_mean).toBeGreaterThan(0);
    expect(r.peak_gpu_bytes).toBeGreaterThan(0);
    expect(r.adapter.length).toBeGreaterThan(0);
    expect(r.no_icm).toBe(true);
    expect(r.first_stage_pools).toBe('given');
    const p0 = r.per_query[0];
    expect(p0).toMatchObject({ qid: picked[0].qid, answer: ANSWER, answer_id: given.get(picked[0].qid)![ANSWER], correct: true, inspected: [] });
    expect(p0.candidates).toEqual(given.get(picked[0].qid)!.slice(0, K));
    expect(p0.text).toContain(`<answer>${ANSWER}</answer>`);
    expect(r.per_query.map((p) => p.correct)).toEqual([true, true, false, false]);
    // The two bad lines, by file and line.
    expect(r.data_issues.some((m) => m.startsWith(`${queriesFile}:5:`) && /invalid JSON/.test(m))).toBe(true);
    expect(r.data_issues.some((m) => m.startsWith(`${queriesFile}:6:`) && /no-such-did/.test(m))).toBe(true);
  });

  it('retriever first stage on local pools agrees with computeRecall; ICM, limit and the zero-shot prefix', async () => {
    // K = 10 = the ranking depth: each query's candidates are its whole first-stage list.
    const r = await evaluateCheckpoint({ ...base(), K: 10, retriever: retrieverDir, limit: 3, zeroShot: true });
    expect(r.queries).toBe(3);
    expect(r.no_icm).toBe(false);
    expect(r.first_stage_pools).toBe('local pool per task');
    expect(r.first_stage_peak_gpu_bytes).toBeGreaterThan(0);
    const data = await loadEvalData({ queries: queriesFile, pool: join(dataDir, 'pool.jsonl'), imageRoot });
    const queries = spreadLimit(data.queries, 3);
    expect(queries.map((q) => q.task_id).sort()).toEqual([1, 1, 6]); // round robin over the tasks
    // A task filter applies before the limit, and a filter that keeps nothing names the file.
    expect(spreadLimit(queriesOfTasks(data.queries, [6], queriesFile), 3).every((q) => q.task_id === 6)).toBe(true);
    expect(() => queriesOfTasks(data.queries, [5], queriesFile)).toThrow(new RegExp(`${queriesFile}: no query of tasks 5`));
    expect(r.per_query.map((p) => p.qid)).toEqual(queries.map((q) => q.qid));
    const ranked = new Map(r.per_query.map((p) => [p.qid, p.candidates]));
    expect(r.first_stage).toEqual(pct(computeRecall(queries, ranked).micro));
    // K = the ranking depth, so "a positive among the K" is the first stage's R@10.
    expect(r.positive_in_candidates).toBeCloseTo(r.first_stage['R@10'], 9);
    const reranked = new Map(r.per_query.map((p) => [p.qid, rerankedOrder(p.candidates, p.answer_id)]));
    expect(r.reranked).toEqual(pct(computeRecall(queries, reranked).micro));
    const localPool = (t: number) => new Set(readFileSync(join(dataDir, `pool_task${t}.jsonl`), 'utf8').trim().split('\n').map((l) => JSON.parse(l).did));
    const local = new Map([1, 6].map((t) => [t, localPool(t)]));
    for (const p of r.per_query) {
      expect(p.candidates).toHaveLength(10);
      expect(p.candidates.every((d) => local.get(p.task_id)!.has(d))).toBe(true);
      expect(p.text.startsWith('<think>')).toBe(true); // the forced prefix
      expect(p.correct).toBe(p.answer_id !== null && queries.find((q) => q.qid === p.qid)!.pos_cand_list.includes(p.answer_id));
    }
    // Compressed candidates: 2 rows each instead of their full tokens.
    const full = await evaluateCheckpoint({ ...base(), K: 10, noIcm: true, firstStage: ranked, limit: 3, maxNewTokens: 1 });
    expect(full.first_stage).toEqual(r.first_stage);
    expect(r.prompt_tokens_mean).toBeLessThan(full.prompt_tokens_mean);
    expect(r.candidate_tokens_mean).toBe(2 * 10);
    for (const p of r.per_query) expect(p.candidate_tokens).toBe(20);
    // The rest of the prompt is the same with or without the ICM.
    expect(full.candidate_tokens_mean - r.candidate_tokens_mean).toBeCloseTo(full.prompt_tokens_mean - r.prompt_tokens_mean, 9);
    // A forced start: every answer begins with it (one more token sampled after it).
    const forced = await evaluateCheckpoint({ ...base(), K: 10, noIcm: true, firstStage: ranked, limit: 3, maxNewTokens: 1, prefix: '<think><inspection-index-start>' });
    expect(forced.prefix).toBe('<think><inspection-index-start>');
    expect(full.prefix).toBeNull();
    for (const p of forced.per_query) expect(p.text.startsWith('<think><inspection-index-start>')).toBe(true);
  });

  it('wrong inputs give clear errors', async () => {
    await expect(evaluateCheckpoint({ ...base(), ckpt: retrieverDir, retriever: retrieverDir })).rejects.toThrow(/first-stage retriever checkpoint/);
    await expect(evaluateCheckpoint({ ...base(), retriever: ckpt })).rejects.toThrow(/not a first-stage retriever checkpoint/);
    await expect(evaluateCheckpoint({ ...base(), ckpt: join(dir, 'teach'), firstStage: given })).rejects.toThrow(/did you mean .*teach\/final/);
    await expect(evaluateCheckpoint({ ...base(), ckpt: join(dir, 'teach', 'final'), firstStage: given })).rejects.toThrow(/no ICM .*--no-icm/);
    await expect(evaluateCheckpoint({ ...base() })).rejects.toThrow(/give a first stage/);
    await expect(evaluateCheckpoint({ ...base(), noIcm: true, firstStage: given, zeroShot: true, prefix: '<think>' })).rejects.toThrow(/prefix or zeroShot, not both/);
    await expect(evaluateCheckpoint({ ...base(), noIcm: true, firstStage: given, prefix: '' })).rejects.toThrow(/prefix is empty/);
    const empty = join(dir, 'bad.jsonl');
    writeFileSync(empty, '{"qid": 1}\n');
    await expect(evaluateCheckpoint({ ...base(), queries: empty, noIcm: true, firstStage: given })).rejects.toThrow(/bad\.jsonl: no usable query .*bad\.jsonl:1:/);
  });
});

const pct = (m: Record<string, number>) => ({ 'R@1': 100 * m['R@1'], 'R@5': 100 * m['R@5'], 'R@10': 100 * m['R@10'] });

describe('ablation table', () => {
  it('rows from evaluations, first stage n/a, JSON + Markdown saved, finished rows reused', async () => {
    const rowsFile = join(dir, 'rows.json');
    const spec = {
      common: { queries: queriesFile, pool: join(dataDir, 'pool.jsonl'), imageRoot, retriever: retrieverDir, K, limit: 2, maxNewTokens: 12, system: SYSTEM },
      rows: [
        { name: 'SFT | full tokens', ckpt, noIcm: true },
        { name: 'SFT, ICM, no inspection', ckpt, noInspect: true },
      ],
    };
    writeFileSync(rowsFile, JSON.stringify(spec));
    const out = join(dir, 'table');
    const t = await runAblationTable(parseTableSpec(readFileSync(rowsFile, 'utf8'), rowsFile), out, { log: () => {} });
    expect(t.rows.map((r) => r.name)).toEqual(['First stage alone', 'SFT | full tokens', 'SFT, ICM, no inspection']);
    const fsRow = t.rows[0];
    const ev = t.evaluations['SFT | full tokens'];
    expect(fsRow).toEqual(firstStageRow(ev));
    expect([fsRow.r1, fsRow.r5]).toEqual([ev.first_stage['R@1'], ev.first_stage['R@5']]);
    // Every first-stage top-1 hit is a query with a positive among the K.
    if (ev.positive_in_candidates > 0) expect(fsRow.r1GivenPositive).toBeCloseTo((100 * fsRow.r1) / ev.positive_in_candidates, 9);
    else expect(fsRow.r1GivenPositive).toBeNull();
    expect(t.rows[1]).toMatchObject({ r1: ev.reranked['R@1'], r5: ev.reranked['R@5'], promptTokens: ev.prompt_tokens_mean, candidateTokens: ev.candidate_tokens_mean, formatRate: 100 * ev.format_rate, r1GivenPositive: ev.reranked_r1_given_positive, inspections: ev.inspections_mean, rerankMs: ev.rerank_ms_mean, peakGpuBytes: ev.peak_gpu_bytes });
    expect(t.evaluations['SFT, ICM, no inspection'].inspections_mean).toBe(0);
    // Both rows read the same first stage.
    expect(t.evaluations['SFT, ICM, no inspection'].first_stage).toEqual(ev.first_stage);
    const json = JSON.parse(readFileSync(t.files.json, 'utf8'));
    expect(json.rows).toEqual(t.rows);
    const md = readFileSync(t.files.markdown, 'utf8');
    expect(md).toBe(t.markdown);
    const fsLine = md.split('\n').find((l) => l.startsWith('| First stage alone'))!;
    expect(fsLine.split('|').slice(4, 7).map((s) => s.trim())).toEqual(['n/a', 'n/a', 'n/a']);
    expect(md).toContain('SFT \\| full tokens');
    expect(formatMarkdownTable(t.rows).split('\n').filter((l) => l.startsWith('|'))).toHaveLength(2 + 3);
    expect(formatTerminalTable(t.rows)).toMatch(/First stage alone +\d+\.\d +\d+\.\d +n\/a +n\/a +n\/a/);
    // A second run reuses everything it saved.
    const lines: string[] = [];
    const again = await runAblationTable(parseTableSpec(JSON.stringify(spec)), out, { log: (l) => lines.push(l) });
    expect(lines.filter((l) => /reusing/.test(l))).toHaveLength(3);
    expect(again.rows).toEqual(t.rows);
    expect(existsSync(join(out, 'rows', 'sft-full-tokens.json'))).toBe(true);
  });

  it('rows.json errors name the file and the field', () => {
    expect(() => parseTableSpec('{', 'r.json')).toThrow(/r\.json: invalid JSON/);
    expect(() => parseTableSpec('{"common": {"queries": "q"}, "rows": []}', 'r.json')).toThrow(/r\.json: common\.pool must be a path/);
    const common = { queries: 'q', pool: 'p', imageRoot: 'i', retriever: 'r' };
    expect(() => parseTableSpec(JSON.stringify({ common: { ...common, K: 0 }, rows: [{ name: 'a', ckpt: 'c' }] }))).toThrow(/common\.K must be a positive integer/);
    expect(() => parseTableSpec(JSON.stringify({ common, rows: [{ name: 'a', ckpt: 'c' }, { name: 'a', ckpt: 'd' }] }))).toThrow(/"a" is used twice/);
    expect(() => parseTableSpec(JSON.stringify({ common, rows: [{ name: 'a' }] }))).toThrow(/rows\[0\] \("a"\): ckpt/);
    expect(() => parseTableSpec(JSON.stringify({ common, rows: [{ name: 'a', ckpt: 'c', noIcm: 'yes' }] }))).toThrow(/noIcm must be true or false/);
    expect(() => parseTableSpec(JSON.stringify({ common: { ...common, tasks: [] }, rows: [{ name: 'a', ckpt: 'c' }] }))).toThrow(/common\.tasks must be a list of task ids/);
    expect(parseTableSpec(JSON.stringify({ common: { ...common, tasks: [4, 6] }, rows: [{ name: 'a', ckpt: 'c' }] })).common.tasks).toEqual([4, 6]);
  });
});
