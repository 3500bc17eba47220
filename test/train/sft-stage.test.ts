// The SFT stage as a runnable stage: from a base checkpoint folder and an align-style ICM
// folder it trains on a small emoji benchmark written to disk, resumes an interrupted run
// from its checkpoint (same losses as an uninterrupted run), leaves final/ loadable like
// an align final (model + icm.safetensors), skips a finished run, trains the "no ICM, no
// inspection" ablation, and stops with clear errors on wrong folders.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Icm, icmConfigFor } from '../../model/icm.ts';
import { Mllm, type MllmConfig } from '../../model/mllm.ts';
import { PRESETS, withVocab } from '../../model/presets.ts';
import { Retriever } from '../../model/retriever.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { candidateList, emojiIndex, synthesizeTrace } from '../../train/data/cot.ts';
import { buildEmojiBenchmark, writeEmojiBenchmark } from '../../train/data/emoji-benchmark.ts';
import { runSftStage } from '../../train/sft-stage.ts';
import { expectClose } from '../helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-sft-stage-'));
const dataDir = join(dir, 'data');
const baseDir = join(dir, 'base'); // a pre-training final: model only
const alignDir = join(dir, 'align'); // an align final: model + ICM
const K = 4;
const common = { dataDir, steps: 4, batch: 2, lr: 3e-3, K, seed: 3, saveEvery: 2, warmupSteps: 0 };
let icmInit: Float32Array;
const ICM_PARAM = 'icm.con_query';

beforeAll(async () => {
  const bench = buildEmojiBenchmark({ seed: 1, maxPerTask: 12 });
  await writeEmojiBenchmark(dataDir, bench);
  const attributes = new Map(bench.attributes.map((a) => [a.did, a]));
  const qa = new Map(bench.queryAttributes.map((a) => [a.qid, a]));
  const emojis = emojiIndex(bench.attributes);
  const sample = bench.queries.train.slice(0, 40).map((q) => {
    const c = candidateList(q, { K, seed: 1, pool: bench.taskPools.get(q.task_id)!, attributes });
    return synthesizeTrace(q, qa.get(q.qid)!, c, attributes, emojis, { seed: 1 }).text;
  });
  const tok = trainBpe([...sample, ...bench.attributes.map((a) => a.name)], { vocabSize: 768 });
  const cfg = withVocab(PRESETS.tiny, tok.vocabSize);
  const config: MllmConfig = { architectures: ['RetrvMllm'], preset: 'tiny', llm: cfg.llm, vision: cfg.vision, imageSize: PRESETS.tiny.imageSize };
  const model = Mllm.create(config, tok, 1);
  await model.save(baseDir);
  await model.save(alignDir);
  const icm = Icm.create(icmConfigFor(config), 2);
  await icm.save(alignDir);
  icmInit = (await icm.params.get(ICM_PARAM)!.toArray()) as Float32Array;
  icm.dispose();
  const retriever = Retriever.fromMllm(model, 16, 1);
  await retriever.save(join(dir, 'retriever'));
  retriever.dispose(); // owns the model's weights
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

const loadIcmParam = async (d: string) => {
  const icm = (await Icm.load(d))!;
  const v = (await icm.params.get(ICM_PARAM)!.toArray()) as Float32Array;
  icm.dispose();
  return v;
};

describe('sft stage', () => {
  it('an interrupted run resumes from its checkpoint; final holds model + ICM like an align final', async () => {
    const ref: number[] = [];
    const refRun = join(dir, 'ref');
    const r0 = await runSftStage({ ...common, base: alignDir, out: refRun, log: () => {}, onStep: (s) => ref.push(s.loss) });
    expect(r0.skipped).toBe(false);
    expect(ref).toHaveLength(4);

    const run = join(dir, 'run');
    await expect(
      runSftStage({ ...common, base: alignDir, out: run, log: () => {}, onStep: (s) => { if (s.step === 2) throw new Error('interrupted'); } }),
    ).rejects.toThrow('interrupted');
    expect(existsSync(join(run, 'checkpoint', 'state.json'))).toBe(true);
    expect(existsSync(join(run, 'final'))).toBe(false);

    const lines: string[] = [];
    const steps: { step: number; loss: number; etaSeconds: number; tokensPerSecond: number }[] = [];
    const r1 = await runSftStage({ ...common, base: alignDir, out: run, log: (l) => lines.push(l), onStep: (s) => steps.push(s) });
    expect(lines.some((l) => /resuming .* at step 2/.test(l))).toBe(true);
    expect(steps.map((s) => s.step)).toEqual([2, 3]);
    expectClose(steps.map((s) => s.loss), ref.slice(2), 1e-5, 1e-5, 'losses after resume');
    expect(steps[0].tokensPerSecond).toBeGreaterThan(0);
    expect(steps[1].etaSeconds).toBe(0); // the last step leaves nothing

    // final/: loadable as model and ICM, the ICM trained (jointly) and equal to the reference run's.
    expect(r1.finalDir).toBe(join(run, 'final'));
    expect(r1.icm).toBe(true);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'icm.safetensors', 'icm.json', 'sft.json']) expect(existsSync(join(r1.finalDir, f)), f).toBe(true);
    expect(existsSync(join(r1.finalDir, 'compress.safetensors'))).toBe(false);
    expect(existsSync(join(run, 'checkpoint'))).toBe(false);
    const got = await loadIcmParam(r1.finalDir);
    expectClose(got, await loadIcmParam(join(refRun, 'final')), 1e-6, 1e-5, 'ICM after resume');
    expect(Math.max(...Array.from(got, (v, i) => Math.abs(v - icmInit[i])))).toBeGreaterThan(1e-5);
    const m = await Mllm.load(r1.finalDir);
    for (const t of m.parameterList()) t.dispose();
    const rec = JSON.parse(readFileSync(join(r1.finalDir, 'sft.json'), 'utf8'));
    expect(rec).toMatchObject({ stage: 'sft', no_icm: false, no_inspect: false, K, steps: 4 });

    // A finished run is not trained again.
    const again = await runSftStage({ ...common, base: alignDir, out: run, log: () => {}, onStep: () => expect.fail('trained again') });
    expect(again.skipped).toBe(true);
  });

  it('--no-icm --no-inspect: full tokens, traces without inspection, no ICM in final', async () => {
    const run = join(dir, 'ablation');
    const seen: { inspections: number; promptTokens: number }[] = [];
    const r = await runSftStage({ ...common, steps: 2, base: baseDir, noIcm: true, noInspect: true, out: run, log: () => {}, onStep: (s) => seen.push(s) });
    expect(r.icm).toBe(false);
    expect(seen.map((s) => s.inspections)).toEqual([0, 0]);
    expect(Icm.exists(r.finalDir)).toBe(false);
    const log = readFileSync(join(run, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(log.map((x) => x.inspections)).toEqual([0, 0]);
    // Full candidates: each prompt is far longer than 2 rows per candidate would make it.
    expect(seen[0].promptTokens / common.batch).toBeGreaterThan(K * 4);
    expect(JSON.parse(readFileSync(join(r.finalDir, 'sft.json'), 'utf8'))).toMatchObject({ no_icm: true, no_inspect: true, max_inspections: 0 });
  });

  it('wrong folders give one clear error each', async () => {
    const o = { ...common, out: join(dir, 'never'), log: () => {} };
    await expect(runSftStage({ ...o, base: join(dir, 'nope') })).rejects.toThrow(/base .*nope: no such folder/);
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    await expect(runSftStage({ ...o, base: empty })).rejects.toThrow(/no config\.json, not a checkpoint folder/);
    await expect(runSftStage({ ...o, base: dir })).rejects.toThrow(/no config\.json/);
    await expect(runSftStage({ ...o, base: join(dir, 'retriever') })).rejects.toThrow(/first-stage retriever checkpoint/);
    await expect(runSftStage({ ...o, base: baseDir })).rejects.toThrow(/no ICM: .* --icm <align final>/);
    await expect(runSftStage({ ...o, base: baseDir, icm: baseDir })).rejects.toThrow(/no icm\.safetensors and icm\.json there/);
    await expect(runSftStage({ ...o, base: alignDir, dataDir: join(dir, 'no-data') })).rejects.toThrow(/no meta\.json/);
    await expect(runSftStage({ ...o, base: alignDir, steps: 0 })).rejects.toThrow(/steps must be a positive integer/);
    await expect(runSftStage({ ...o, base: alignDir, firstStage: join(dir, 'no-rankings.json') })).rejects.toThrow(/no-rankings\.json: not readable JSON/);
    const notRankings = join(dir, 'not-rankings.json');
    writeFileSync(notRankings, '{"4:1f600": "img:google:1f600"}');
    await expect(runSftStage({ ...o, base: alignDir, firstStage: notRankings })).rejects.toThrow(/the ranking of 4:1f600 is not a list of did strings/);
    expect(existsSync(join(dir, 'never'))).toBe(false);
  });
});
