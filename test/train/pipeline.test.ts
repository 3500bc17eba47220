// The whole pipeline end to end at a micro size (every stage, a few steps each) on a small
// build of the emoji benchmark; a second run skips every finished stage. Plus config
// loading and the command line's error paths.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EmojiAttributes, buildEmojiBenchmark, loadBenchmark, readSideTable, writeEmojiBenchmark } from '../../train/data/emoji-benchmark.ts';
import { readRankings, trainingRankings } from '../../train/training-rankings.ts';
import { foldOfBase, queryFolds } from '../../train/cross-fit.ts';
import { keywordPairNames } from '../../train/retriever.ts';
import { PIPELINE_CONFIGS, type PipelineConfig, STAGES, heldOutRetrieverDir, loadPipelineConfig, runPipeline, stageDirs } from '../../train/pipeline.ts';

let dir: string;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'retrv-pipeline-'));
  await writeEmojiBenchmark(join(dir, 'data'), buildEmojiBenchmark({ seed: 1, maxPerTask: 12 }));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('pipeline config', () => {
  it('loads the named configs and a file that overrides one', () => {
    expect(loadPipelineConfig('tiny')).toEqual(PIPELINE_CONFIGS.tiny);
    const f = join(dir, 'cfg.json');
    writeFileSync(f, JSON.stringify({ base: 'small', sft: { steps: 7 } }));
    const c = loadPipelineConfig(f);
    expect(c.preset).toBe('small');
    expect(c.sft.steps).toBe(7);
    expect(c.sft.batch).toBe(PIPELINE_CONFIGS.small.sft.batch);
    writeFileSync(f, JSON.stringify({ sft: { tasks: [4, 6], answerShare: 0.5 } }));
    expect(loadPipelineConfig(f).sft).toMatchObject({ tasks: [4, 6], answerShare: 0.5 });
  });

  it('names the bad setting', () => {
    const f = join(dir, 'bad.json');
    writeFileSync(f, JSON.stringify({ sft: { stpes: 7 } }));
    expect(() => loadPipelineConfig(f)).toThrow(/sft: unknown setting 'stpes'/);
    writeFileSync(f, JSON.stringify({ grpo: { steps: '3' } }));
    expect(() => loadPipelineConfig(f)).toThrow(/grpo.steps: expected a number/);
    writeFileSync(f, JSON.stringify({ retriever: { batching: 'tasks' } }));
    expect(() => loadPipelineConfig(f)).toThrow(/retriever.batching: 'tasks' is not one of mixed, task/);
    writeFileSync(f, JSON.stringify({ retriever: { pooling: 'max' } }));
    expect(() => loadPipelineConfig(f)).toThrow(/retriever.pooling: 'max' is not one of last, mean, bag-max, mean\+bag-max/);
    writeFileSync(f, JSON.stringify({ retriever: { embedDim: 0 } }));
    expect(() => loadPipelineConfig(f)).toThrow(/retriever.embedDim: 0 must be a positive integer/);
    writeFileSync(f, JSON.stringify({ retriever: { keywordShare: 1 } }));
    expect(() => loadPipelineConfig(f)).toThrow(/retriever.keywordShare: 1 must be a number from 0 \(none\) to below 1/);
    writeFileSync(f, JSON.stringify({ sft: { traceStyle: 'terse' } }));
    expect(() => loadPipelineConfig(f)).toThrow(/sft.traceStyle: 'terse' is not one of full, brief/);
    writeFileSync(f, JSON.stringify({ sft: { answerShare: 1 } }));
    expect(() => loadPipelineConfig(f)).toThrow(/sft.answerShare: 1 must be a number from 0 \(none\) to below 1/);
    writeFileSync(f, JSON.stringify({ sft: { tasks: [] } }));
    expect(() => loadPipelineConfig(f)).toThrow(/sft.tasks: \[\] must be null \(every task\) or a list of task ids/);
    writeFileSync(f, JSON.stringify({ sft: { tasks: [4, 6.5] } }));
    expect(() => loadPipelineConfig(f)).toThrow(/sft.tasks: \[4,6.5\] must be null/);
    writeFileSync(f, JSON.stringify({ pointing: { steps: 3 } }));
    expect(() => loadPipelineConfig(f)).toThrow(/pointing: expected a list/);
    const phase = { steps: 3, batch: 2, lr: 3e-3, K: 8, easyShare: 0.5, tasks: [4] };
    writeFileSync(f, JSON.stringify({ pointing: [phase, { ...phase, K: 17 }] }));
    expect(() => loadPipelineConfig(f)).toThrow(/pointing\[1\].K: 17 must be an integer from 2 to eval.K = 16/);
    writeFileSync(f, JSON.stringify({ pointing: [{ ...phase, step: 3 }] }));
    expect(() => loadPipelineConfig(f)).toThrow(/pointing\[0\]: unknown setting 'step'/);
    const { easyShare: _, ...noShare } = phase;
    writeFileSync(f, JSON.stringify({ pointing: [noShare] }));
    expect(() => loadPipelineConfig(f)).toThrow(/pointing\[0\]: 'easyShare' is missing/);
    writeFileSync(f, JSON.stringify({ pointing: [{ ...phase, tasks: 4 }] }));
    expect(() => loadPipelineConfig(f)).toThrow(/pointing\[0\].tasks: 4 must be null/);
    writeFileSync(f, JSON.stringify({ pointing: [{ ...phase, firstStage: 'yes' }] }));
    expect(() => loadPipelineConfig(f)).toThrow(/pointing\[0\].firstStage: "yes" must be true or false/);
    writeFileSync(f, JSON.stringify({ retriever: { trigramDim: -1 } }));
    expect(() => loadPipelineConfig(f)).toThrow(/retriever.trigramDim: -1 must be a width \(0 = no trigram part\)/);
    writeFileSync(f, JSON.stringify({ retriever: { lexicalWeight: 1 } }));
    expect(() => loadPipelineConfig(f)).toThrow(/retriever.lexicalWeight: 1 must be a number from 0 \(no lexical part\) to below 1/);
    writeFileSync(f, JSON.stringify({ retriever: { lexicalWeight: 0.6, textExpert: { steps: 10, weight: 0.4 } } }));
    expect(() => loadPipelineConfig(f)).toThrow(/retriever.textExpert.weight: 0.4 must be above 0, and with lexicalWeight \(0.6\) below 1/);
    writeFileSync(f, JSON.stringify({ retriever: { taskWeights: '1:2' } }));
    expect(() => loadPipelineConfig(f)).toThrow(/retriever.taskWeights: needs batching 'task'/);
    writeFileSync(f, JSON.stringify({ firstStage: { crossFit: 1 } }));
    expect(() => loadPipelineConfig(f)).toThrow(/firstStage.crossFit: 1 must be 0 \(rank with the retriever itself\) or a number of folds from 2/);
    writeFileSync(f, JSON.stringify({ sft: { decisionTokens: 'index' } }));
    expect(() => loadPipelineConfig(f)).toThrow(/sft.decisionTokens: 'index' is not one of digits, answer/);
    writeFileSync(f, JSON.stringify({ grpo: { lengthNorm: 'batch' } }));
    expect(() => loadPipelineConfig(f)).toThrow(/grpo.lengthNorm: 'batch' is not one of completion, constant/);
    writeFileSync(f, JSON.stringify({ grpo: { lengthNorm: 'constant' } }));
    expect(loadPipelineConfig(f).grpo.lengthNorm).toBe('constant');
    writeFileSync(f, JSON.stringify({ sft: { firstStage: 1 } }));
    expect(() => loadPipelineConfig(f)).toThrow(/sft.firstStage: expected a boolean/);
    writeFileSync(f, JSON.stringify({ eval: { tasks: ['4'] } }));
    expect(() => loadPipelineConfig(f)).toThrow(/eval.tasks: \["4"\] must be null/);
    writeFileSync(f, JSON.stringify({ pointing: [phase], eval: { tasks: [4, 6] } }));
    expect(loadPipelineConfig(f)).toMatchObject({ pointing: [phase], eval: { tasks: [4, 6] } });
    writeFileSync(f, '{ not json');
    expect(() => loadPipelineConfig(f)).toThrow(/invalid JSON/);
    expect(() => loadPipelineConfig('nope')).toThrow(/neither a config name/);
  });
});

describe('pipeline end to end', () => {
  it('runs every stage, then skips them all on a second run', async () => {
    const config: PipelineConfig = {
      ...PIPELINE_CONFIGS.tiny,
      data: join(dir, 'data'),
      pretrain: { steps: 3, batch: 4, lr: 3e-3 },
      retriever: { steps: 2, batch: 4, lr: 1e-3, pooling: 'bag-max', batching: 'task', embedDim: 96, keywordShare: 0.25, trigramDim: 16, trigramBuckets: 257, taskWeights: '1:2', lexicalWeight: 0.5, textExpert: { steps: 2, batch: 4, lr: 1e-3, pooling: 'bag-max', embedDim: 16, keywordShare: 0.5, weight: 0.2 }, textImageExpert: { steps: 2, batch: 4, lr: 1e-3, pooling: 'mean', embedDim: 8, keywordShare: 0, weight: 0.5 } },
      firstStage: { perTask: 2, crossFit: 2 },
      align: { steps: 2, batch: 2, lr: 1e-3, centre: true },
      pointing: [
        { steps: 1, batch: 2, lr: 3e-3, K: 2, easyShare: 1, tasks: [4] },
        { steps: 1, batch: 2, lr: 3e-3, K: 4, easyShare: 0, tasks: [4, 6], firstStage: true },
      ],
      sft: { steps: 2, batch: 2, lr: 1e-3, traceStyle: 'pointed', kStart: 2, easyShare: 0.5, tasks: [4, 6], answerShare: 0.5, decisionTokens: 'digits', firstStage: true },
      grpo: { steps: 1, batch: 1, group: 2, lr: 1e-5, maxNewTokens: 12, fixedLambda: 0.5, lengthNorm: 'constant' },
      eval: { K: 4, limit: 2, maxNewTokens: 12, tasks: [4, 6] },
      ablations: false,
    };
    const runDir = join(dir, 'run');
    const lines: string[] = [];
    await runPipeline({ config, runDir, quiet: true, log: (l) => lines.push(l) });
    const s = stageDirs(runDir);
    for (const d of [s.pretrain, s.retriever, s.align, s.sft, s.grpo]) expect(existsSync(join(d, 'final', 'config.json')), d).toBe(true);
    expect(existsSync(join(s.firstStage, 'first-stage-recall.json'))).toBe(true);
    // The config's switches reach the stages: the retriever's pooling and width, the ICM centres, the SFT record keeps its curriculum and answer share.
    expect(JSON.parse(readFileSync(join(s.align, 'final', 'icm.json'), 'utf8')).centre).toBe(true);
    expect(JSON.parse(readFileSync(join(s.retriever, 'final', 'config.json'), 'utf8')).retriever).toMatchObject({ pooling: 'bag-max', embedDim: 96, trigrams: { buckets: 257, dim: 16 }, lexical: { weight: 0.5 } });
    // The lexical part's TF-IDF is fitted on every text of the pool.
    const lexical = JSON.parse(readFileSync(join(s.retriever, 'final', 'lexical.json'), 'utf8')) as { docs: number };
    expect(lexical.docs).toBe((await loadBenchmark(config.data)).pool.filter((c) => c.txt).length);
    // The text expert: trained on the text -> text training queries only, saved inside the retriever, not given to the held-out ones.
    expect(JSON.parse(readFileSync(join(s.retriever, 'final', 'text-expert', 'config.json'), 'utf8')).retriever).toMatchObject({ pooling: 'bag-max', embedDim: 16 });
    expect(JSON.parse(readFileSync(join(s.retriever, 'final', 'config.json'), 'utf8')).retriever.textExpert).toEqual({ weight: 0.2 });
    const task1 = (await loadBenchmark(config.data)).queries.train.filter((q) => q.task_id === 1).length;
    expect(lines.some((l) => l.startsWith(`text expert: ${task1} text -> text training queries, keyword pairs of `))).toBe(true);
    // The text -> image expert: task 0's training queries, no keyword pairs.
    expect(JSON.parse(readFileSync(join(s.retriever, 'final', 'text-image-expert', 'config.json'), 'utf8')).retriever).toMatchObject({ pooling: 'mean', embedDim: 8 });
    expect(JSON.parse(readFileSync(join(s.retriever, 'final', 'config.json'), 'utf8')).retriever.textImageExpert).toEqual({ weight: 0.5 });
    const task0 = (await loadBenchmark(config.data)).queries.train.filter((q) => q.task_id === 0).length;
    expect(lines).toContain(`text -> image expert: ${task0} text -> image training queries, 2 steps`);
    expect(existsSync(join(heldOutRetrieverDir(runDir, 0, 2), 'final', 'text-expert'))).toBe(false);
    const record = (d: string) => JSON.parse(readFileSync(join(d, 'final', 'sft.json'), 'utf8'));
    // The pointing phases are answer-only, each from the one before; SFT starts from the last.
    expect(record(join(s.pointing, 'phase-1'))).toMatchObject({ trace_style: 'answer', K: 2, easy_share: 1, tasks: [4], max_inspections: 0 });
    expect(record(join(s.pointing, 'phase-1'))).toMatchObject({ first_stage: null });
    expect(record(join(s.pointing, 'phase-2'))).toMatchObject({ trace_style: 'answer', K: 4, tasks: [4, 6], base: join(s.pointing, 'phase-1', 'final'), first_stage: resolve(s.trainRankings) });
    // GRPO draws the same kind of lists as SFT, and averages as the config says.
    expect(lines.some((l) => /^grpo: .*first-stage top-K in order/.test(l))).toBe(true);
    expect(lines.some((l) => /^grpo: .*every completion over 12 tokens/.test(l))).toBe(true);
    // The rankings of the training queries: every one of them, ranked against train-split candidates only.
    const trainRankings = readRankings(s.trainRankings);
    const bench = await loadBenchmark(config.data);
    const attributes = await readSideTable<EmojiAttributes>(join(config.data, 'attributes.jsonl'), 'did');
    expect([...trainRankings.keys()].sort()).toEqual(bench.queries.train.map((q) => q.qid).sort());
    for (const ids of trainRankings.values()) {
      expect(ids.length).toBeGreaterThan(4);
      for (const d of ids) expect(attributes.get(d)?.split).toBe('train');
    }
    // Cross-fitted: a retriever per fold, trained without that fold's queries, ranks that fold.
    const folds = await queryFolds(config.data, 2);
    for (const i of [0, 1]) {
      const held = heldOutRetrieverDir(runDir, i, 2);
      expect(existsSync(join(held, 'final', 'config.json')), held).toBe(true);
      const kept = bench.queries.train.filter((q) => folds.get(q.qid) !== i).length;
      expect(lines).toContain(`retriever without fold ${i} of 2: ${kept} training queries, keyword pairs of ${(await keywordPairNames(config.data, (b) => foldOfBase(b, 2) !== i)).length} names`);
      const own = await trainingRankings({ retriever: join(held, 'final'), dataDir: config.data, depth: 32, keep: (qid) => folds.get(qid) === i });
      for (const [qid, r] of own.rankings) expect(trainRankings.get(qid), qid).toEqual(r);
    }
    expect(record(s.sft)).toMatchObject({ k_start: 2, easy_share: 0.5, decision_share: 0.5, decision_tokens: 'digits', trace_style: 'pointed', tasks: [4, 6], base: join(s.pointing, 'phase-2', 'final'), first_stage: resolve(s.trainRankings) });
    const table = JSON.parse(readFileSync(join(s.table, 'table.json'), 'utf8')) as { rows: { name: string; queries: number }[] };
    expect(table.rows.map((r) => r.name)).toEqual(['First stage alone', 'zero-shot reranking', 'pointing warm-up (answer-only SFT)', 'SFT', 'SFT + GRPO (full)']);
    for (const r of table.rows) expect(r.queries).toBe(2);
    // eval.tasks keeps the table to those tasks' test queries.
    const sftRow = JSON.parse(readFileSync(join(s.table, 'rows', 'sft.json'), 'utf8')) as { tasks: number[]; per_query: { task_id: number }[] };
    expect(sftRow.tasks).toEqual([4, 6]);
    expect(sftRow.per_query.map((q) => q.task_id).sort()).toEqual([4, 6]);
    const html = readFileSync(s.report, 'utf8');
    expect(html).toContain('Reranking, test split');
    expect(html).toContain('First stage, test split');

    const again: string[] = [];
    await runPipeline({ config, runDir, quiet: true, log: (l) => again.push(l) });
    for (const stage of ['pretrain', 'retriever', 'retriever without fold 0 of 2', 'retriever without fold 1 of 2', 'first-stage', 'align', 'pointing 1/2', 'pointing 2/2', 'sft', 'grpo']) expect(again.some((l) => l.startsWith(`${stage}: done`)), stage).toBe(true);
    expect(again.filter((l) => / reusing /.test(l)).length).toBeGreaterThanOrEqual(4);
  }, 600_000);
});

describe('retrv command line', () => {
  const retrv = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'bin/retrv.ts', ...args], { encoding: 'utf8', env: { ...process.env, CI: '1' } });

  it('reports bad input in one line with a hint and a non-zero exit', () => {
    const r = retrv('eval', '--queries', 'nope.jsonl', '--pool', 'p', '--image-root', '.', '--ckpt', '.', '--out', 'x.json');
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')[0]).toBe('retrv: --queries nope.jsonl: no such file or folder');
    const c = retrv('search', 'a thumb', '--ckpt', dir);
    expect(c.status).toBe(2);
    expect(c.stderr).toMatch(/--ckpt .*: no config.json there\nhint: /);
    const t = retrv('train', '--stage', 'sft', '--config', 'nope');
    expect(t.status).toBe(1);
    expect(t.stderr).toMatch(/^retrv: config 'nope': neither a config name/);
    // Every pipeline stage is a --stage choice.
    const help = retrv('train', '--help').stdout;
    for (const stage of STAGES) expect(help, stage).toContain(`"${stage}"`);
    const s = retrv('train', '--stage', 'bogus');
    expect(s.status).not.toBe(0);
    expect(s.stderr).toMatch(/argument 'bogus' is invalid/);
    const k = retrv('eval', '--queries', 'q', '--pool', 'p', '--image-root', '.', '--ckpt', '.', '--out', 'x.json', '--tasks', '4,six');
    expect(k.status).not.toBe(0);
    expect(k.stderr).toMatch(/--tasks must be task ids separated by commas \(e\.g\. 4,6\), got '4,six'/);
  }, 60_000);

  it('has help on every command', () => {
    for (const cmd of ['demo', 'train', 'eval', 'search']) {
      const r = retrv(cmd, '--help');
      expect(r.status, cmd).toBe(0);
      expect(r.stdout).toMatch(/Usage: retrv/);
    }
  }, 60_000);
});
