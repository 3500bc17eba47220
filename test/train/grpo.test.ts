// The GRPO trainer on a tiny model first fitted (SFT) to short traces with one inspection:
// teacher-forced log-probs of sampled completions (inspection splices included, with and
// without the ICM, with a forced prefix skipped) equal the generator's; the reward of a
// completion; two seeded runs log identical rewards; a run stopped after step 1 and
// resumed (the ICM trained with the policy) logs the same step-2 line as an uninterrupted
// one and ends with the same weights.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as T from '../../runtime/index.ts';
import { Icm, icmCompress, icmConfigFor } from '../../model/icm.ts';
import { type RerankResult, rerankGenerateBatch, traceLayout } from '../../model/inspect.ts';
import { Mllm } from '../../model/mllm.ts';
import { rerankParts } from '../../model/sequence.ts';
import { candidateList } from '../../train/data/cot.ts';
import { type GrpoPrompt, type GrpoStepInfo, completionLogProbs, grpoTrain, loadGrpoModels, lookProbabilities, lossTokenIndices, makeGrpoPrompt, opensLook, sampleSeed, scoreCompletion } from '../../train/grpo.ts';
import { type SftExample, makeSftExample, sftTrain } from '../../train/sft.ts';
import { expectClose } from '../helpers.ts';
import { K, SYSTEM, attributes, bench, config, data, emojis, tok } from './reranker-fixture.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-grpo-'));
const sftDir = join(dir, 'sft', 'final');
const icmDir = join(dir, 'sft-icm');
const owned: Mllm[] = [];
const ownedIcms: Icm[] = [];
const sp = tok.specialIds;

afterAll(() => {
  for (const m of owned) for (const t of m.parameterList()) t.dispose();
  for (const i of ownedIcms) i.dispose();
  rmSync(dir, { recursive: true, force: true });
});

async function load(from: string) {
  const m = await loadGrpoModels(from);
  owned.push(m.model, m.reference);
  for (const i of [m.icm, m.referenceIcm]) if (i) ownedIcms.push(i);
  return m;
}

beforeAll(async () => {
  // The SFT starting point: short traces in the real format, one inspection each.
  const model = Mllm.create(config, tok, 3);
  owned.push(model);
  const examples: SftExample[] = data.queries.slice(0, 4).map((q) => {
    const ex = makeSftExample(model, data, emojis, q, { K, seed: 1, draw: 0, maxInspections: 3 });
    const a = ex.trace.answer;
    const text = `<think>Look at candidate ${a}. <inspection-index-start>${a}<inspection-index-end> It matches.</think><answer>${a}</answer>`;
    return { ...ex, trace: { ...ex.trace, text, inspections: [a] }, traceIds: [...tok.encode(text), sp.imEnd] };
  });
  await sftTrain({ model, examples: () => examples, runDir: join(dir, 'sft'), steps: 40, batch: 4, lr: 1e-2, seed: 1, system: SYSTEM, warmupSteps: 0, minLr: 1e-2, log: () => {} });
  // The same weights with an ICM beside them (as after alignment).
  await model.save(icmDir);
  const icm = Icm.create(icmConfigFor(model.config), 5);
  await icm.save(icmDir);
  icm.dispose();
});

/** Prompts for the first queries, as a training step draws them. */
const prompts = (n: number, step: number): GrpoPrompt[] => data.queries.slice(0, n).map((q) => makeGrpoPrompt(data, q, { K, seed: 1, draw: step }));

describe('grpo sampling and teacher forcing', () => {
  it('teacher-forced log-probs of sampled completions equal the generator\'s, splices included', async () => {
    const { model, icm } = await load(icmDir);
    expect(icm).not.toBeNull();
    const ps = prompts(2, 0);
    const G = 4;
    for (const [what, compress, prefix] of [
      ['full candidates', undefined, []],
      ['ICM', icmCompress(model, icm!), []],
      ['ICM, forced prefix', icmCompress(model, icm!), [sp.thinkStart]],
    ] as const) {
      const results = await T.tidyAsync(() => {
        const requests = T.noGrad(() => ps.flatMap((p) => Array.from({ length: G }, () => ({ query: p.query, candidates: p.candidates, compress: compress?.(p.query, p.candidates) }))));
        return rerankGenerateBatch(model, requests, { maxNewTokens: 32, temperature: 1, seed: sampleSeed(1, 0), maxInspections: 3, system: SYSTEM, prefix, returnLogProbs: true });
      });
      const completions = results.map((result, i) => ({ prompt: Math.floor(i / G), result }));
      // At least one sampled token comes after an inspection splice (the point of the test).
      const spliced = completions.filter((c) => c.result.splices.some((s) => s.at < c.result.tokens.length));
      expect(spliced.length, `${what}: completions with a splice before a sampled token`).toBeGreaterThan(0);
      const { logp, lengths } = await T.tidyAsync(async () => {
        const tf = T.noGrad(() => completionLogProbs(model, ps, completions, { system: SYSTEM, compress, maxInspections: 3, prefixLength: prefix.length }));
        return { logp: Array.from(await tf.logp.toArray()), lengths: tf.lengths };
      });
      expect(lengths).toEqual(results.map((r) => r.tokens.length - prefix.length));
      let at = 0;
      completions.forEach((c, i) => {
        expectClose(logp.slice(at, at + lengths[i]), c.result.logProbs!, 1e-4, 1e-4, `${what}: completion ${i}`);
        at += lengths[i];
      });
      if (what !== 'full candidates') continue;
      // The test can fail: without the splices, the tokens after them get other log-probs.
      const c = spliced[0];
      const p = ps[c.prompt];
      const bare = traceLayout(model, rerankParts(p.query, p.candidates, { system: SYSTEM }), p.candidates, c.result.tokens, 0);
      const logits = (await T.tidyAsync(async () => T.noGrad(() => T.logSoftmax(model.forward([bare.layout]).logits)).toArray())) as Float32Array;
      const V = tok.vocabSize;
      const pos: number[] = [];
      bare.traceMask.forEach((m, t) => m && pos.push(t));
      const after = c.result.splices[0].at;
      const diff = Math.max(...pos.slice(after).map((t, k) => Math.abs(logits[(t - 1) * V + bare.layout.ids[t]] - c.result.logProbs![after + k])));
      expect(diff).toBeGreaterThan(1e-3);
    }
  });

  it('the loss can see the token after <think> alone or all but it; P(look) is the probability the sampler draws from', async () => {
    const th = sp.thinkStart;
    expect(lossTokenIndices([th, 7, 8], 0, th, 'decision')).toEqual([1]);
    expect(lossTokenIndices([th, 7, 8], 0, th, 'rest')).toEqual([0, 2]);
    expect(lossTokenIndices([5, th, 7], 0, th, 'decision')).toEqual([2]);
    expect(lossTokenIndices([7, 8], 0, th, 'decision')).toEqual([]);
    expect(lossTokenIndices([7, 8], 0, th, 'rest')).toEqual([0, 1]);
    expect(lossTokenIndices([th], 0, th, 'decision')).toEqual([]);
    expect(lossTokenIndices([th, 7], 0, th, 'all')).toEqual([0, 1]);
    // A forced <think> (skip 1): the decision is the first sampled token.
    expect(lossTokenIndices([th, 7, 8], 1, th, 'decision')).toEqual([0]);
    expect(lossTokenIndices([th, 7, 8], 1, th, 'rest')).toEqual([1]);
    expect(lossTokenIndices([th, 7, 8], 1, th, 'all')).toEqual([0, 1]);
    expect(opensLook([sp.thinkStart, sp.inspectStart, 7], sp)).toBe(true);
    expect(opensLook([sp.thinkStart, 7, sp.inspectStart], sp)).toBe(false);
    expect(opensLook([7, sp.thinkStart, sp.inspectStart], sp)).toBe(true);
    expect(opensLook([sp.inspectStart], sp)).toBe(false);

    const { model } = await load(sftDir);
    const ps = prompts(2, 0);
    const G = 3;
    const results = await T.tidyAsync(() => rerankGenerateBatch(model, ps.flatMap((p) => Array.from({ length: G }, () => ({ query: p.query, candidates: p.candidates }))), { maxNewTokens: 24, temperature: 1, seed: sampleSeed(1, 0), maxInspections: 3, system: SYSTEM, returnLogProbs: true }));
    const completions = results.map((result, i) => ({ prompt: Math.floor(i / G), result }));
    const forced = async (lossOn: 'all' | 'decision' | 'rest') =>
      T.tidyAsync(async () => {
        const tf = T.noGrad(() => completionLogProbs(model, ps, completions, { system: SYSTEM, maxInspections: 3, lossOn }));
        return { logp: Array.from(await tf.logp.toArray()), lengths: tf.lengths, kept: tf.kept };
      });
    const all = await forced('all');
    for (const on of ['decision', 'rest'] as const) {
      const part = await forced(on);
      let at = 0;
      let from = 0;
      completions.forEach((c, i) => {
        expect(part.kept[i]).toEqual(lossTokenIndices(c.result.tokens, 0, sp.thinkStart, on));
        expect(part.lengths[i]).toBe(part.kept[i].length);
        const whole = all.logp.slice(from, from + all.lengths[i]);
        expectClose(part.logp.slice(at, at + part.lengths[i]), part.kept[i].map((k) => whole[k]), 1e-5, 1e-5, `${on}: completion ${i}`);
        at += part.lengths[i];
        from += all.lengths[i];
      });
    }
    expect(completions.every((c) => c.result.tokens[0] === sp.thinkStart)).toBe(true);

    // P(look) against the log-softmax of a plain forward of the prompt and <think>.
    const probe = Array.from(await T.tidyAsync(() => T.noGrad(() => lookProbabilities(model, ps, { system: SYSTEM, maxInspections: 3 })).toArray()));
    const V = tok.vocabSize;
    for (const [i, p] of ps.entries()) {
      const lay = traceLayout(model, rerankParts(p.query, p.candidates, { system: SYSTEM }), p.candidates, [sp.thinkStart], 3).layout;
      const ls = (await T.tidyAsync(async () => T.noGrad(() => T.logSoftmax(model.forward([lay]).logits)).toArray())) as Float32Array;
      expect(Math.log(probe[i])).toBeCloseTo(ls[(lay.length - 1) * V + sp.inspectStart], 4);
    }
  });

  it('scores a completion with the curriculum reward', () => {
    const p: GrpoPrompt = { ...prompts(1, 0)[0], correct: [2] };
    const enc = (s: string) => tok.encode(s);
    const result = (ids: number[], inspections: number[], events: RerankResult['events'], answer: number | null, formatOk: boolean): RerankResult =>
      ({ tokens: ids, inspections, events, answer, formatOk, text: '', promptTokens: 0, candidateTokens: 0, insertedTokens: 0, splices: [], finishReason: 'stop' }) as RerankResult;
    const ok = result([], [1], [{ kind: 'inspect', index: 1, at: 3 }], 2, true);
    // 1 + (1 - 0.5 * 1 / 4) = 1.875
    expect(scoreCompletion(p, ok, 0.5)).toEqual({ reward: 1.875, format: 1, correct: true, inspections: 1 });
    // A repeated request costs the format point only.
    const rep = result([], [1], [{ kind: 'inspect', index: 1, at: 3 }, { kind: 'repeat', index: 1, at: 6 }], 2, true);
    expect(scoreCompletion(p, rep, 0.5).reward).toBe(0.875);
    // Wrong answer: the format point only.
    expect(scoreCompletion(p, result([], [], [], 0, true), 0.5).reward).toBe(1);
    expect(scoreCompletion(p, result(enc('x'), [], [], null, false), 0.5).reward).toBe(0);
  });

  it('candidates: the first-stage top-K in its order when a ranking is given, else positive + negatives + fillers', () => {
    const q = data.queries[0];
    const pool = bench.taskPools.get(q.task_id)!.filter((d) => !q.pos_cand_list.includes(d));
    const ranked = [pool[3], q.pos_cand_list[0], pool[5], pool[7], pool[9], pool[11]];
    const withRanking = makeGrpoPrompt({ ...data, firstStage: new Map([[q.qid, ranked]]) }, q, { K, seed: 1, draw: 0 });
    expect(withRanking.candidateIds).toEqual(ranked.slice(0, K));
    expect(withRanking.correct).toEqual([withRanking.candidateIds.indexOf(q.pos_cand_list[0])]);
    const sftWay = makeGrpoPrompt(data, q, { K, seed: 1, draw: 0 });
    expect(sftWay.candidateIds).toEqual(candidateList(q, { K, seed: 1, draw: 0, pool: bench.taskPools.get(q.task_id)!, attributes }));
    expect(sftWay.correct.map((i) => sftWay.candidateIds[i]).every((d) => q.pos_cand_list.includes(d))).toBe(true);
    expect(sftWay.correct.length).toBeGreaterThan(0);
  });
});

describe('grpo runs', () => {
  // The queries the starting model was fitted on (new candidate lists every step).
  const base = { data: { ...data, queries: data.queries.slice(0, 4) }, group: 4, batch: 2, K, lr: 3e-3, system: SYSTEM, maxNewTokens: 32, maxInspections: 3, log: () => {} };
  const strip = (s: GrpoStepInfo) => ({ ...s, seconds: 0 });
  const logLines = (run: string) => readFileSync(join(run, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));

  it('two runs with the same seed log identical rewards; the policy learns from the groups that differ', async () => {
    const runs: GrpoStepInfo[][] = [];
    for (const k of [0, 1]) {
      const m = await load(sftDir);
      const steps: GrpoStepInfo[] = [];
      await grpoTrain({ ...base, model: m.model, reference: m.reference, runDir: join(dir, `seeded-${k}`), steps: 2, seed: 7, onStep: (s) => steps.push(s) });
      runs.push(steps);
      if (k === 0) {
        // The policy moved away from the reference (the second step sees a KL).
        const w = 'model.layers.0.mlp.up_proj.weight';
        const [a, b] = await Promise.all([m.model.params.get(w)!.toArray(), m.reference.params.get(w)!.toArray()]);
        expect(Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i])))).toBeGreaterThan(1e-5);
      }
    }
    const [a, b] = runs;
    expect(a.map((s) => s.step)).toEqual([0, 1]);
    expect(b.map((s) => s.rewards)).toEqual(a.map((s) => s.rewards));
    expectClose(b.map((s) => s.loss), a.map((s) => s.loss), 1e-6, 1e-5, 'losses');
    expect(a[0].rewards).toHaveLength(8);
    expect(a[0].groupsWithSignal).toBeGreaterThan(0);
    expect(a[0].kl).toBe(0); // the policy starts as the reference
    expect(a[1].kl).toBeGreaterThan(0);
    expect(a[0].lambda).toBe(0);
    expect(a[1].lambda).toBe(0.5);
    expect(a[0].logpGap).toBeLessThan(1e-3);
    // The logged figures agree with the rewards.
    const r = a[0].rewards;
    const m = r.reduce((x, y) => x + y, 0) / r.length;
    expect(a[0].rewardMean).toBeCloseTo(m, 10);
    expect(a[0].rewardStd).toBeCloseTo(Math.sqrt(r.reduce((x, y) => x + (y - m) ** 2, 0) / r.length), 10);
    // Per completion: N_ins and r_format average to the step's figures, and each reward is
    // r_format plus 0 or the correct-answer term for that completion's looks.
    for (const st of a) {
      const { looks, formats } = st;
      expect([looks.length, formats.length]).toEqual([8, 8]);
      expect(st.inspections).toBeCloseTo(looks.reduce((x, y) => x + y, 0) / 8, 10);
      expect(st.formatRate).toBeCloseTo(formats.reduce((x, y) => x + y, 0) / 8, 10);
      st.rewards.forEach((x, j) => expect(Math.min(Math.abs(x - formats[j]), Math.abs(x - (formats[j] + 1 - (st.lambda * looks[j]) / K)))).toBeLessThan(1e-12));
      // No forced prefix: every sampled token is in the loss.
      expect(st.lengths).toHaveLength(8);
      expect(st.completionLength).toBeCloseTo(st.lengths.reduce((x, y) => x + y, 0) / 8, 10);
      // P(look) per prompt before and after the update: probabilities, and the update moves them.
      for (const ps of [st.lookProbs, st.lookProbsAfter]) {
        expect(ps).toHaveLength(2);
        for (const q of ps) expect(q > 0 && q < 1).toBe(true);
      }
      expect(st.opened).toHaveLength(8);
      for (const o of st.opened) expect([0, 1]).toContain(o);
      expect(st.lookProb).toBeCloseTo((st.lookProbs[0] + st.lookProbs[1]) / 2, 10);
      expect(Math.max(...st.lookProbs.map((q, j) => Math.abs(q - st.lookProbsAfter[j])))).toBeGreaterThan(1e-7);
    }
    const lines = logLines(join(dir, 'seeded-0'));
    expect(lines.map((l) => l.step)).toEqual([0, 1]);
    for (const key of ['rewardMean', 'rewardStd', 'accuracy', 'inspections', 'completionLength', 'kl', 'clipFraction', 'lambda', 'loss', 'lr', 'seconds']) {
      expect(typeof lines[1][key], key).toBe('number');
    }
    expect(existsSync(join(dir, 'seeded-0', 'final', 'model.safetensors'))).toBe(true);
  });

  it('names a wrong lossOn or lengthNorm before any work', async () => {
    const m = await load(sftDir);
    const bad = { ...base, model: m.model, reference: m.reference, steps: 1, seed: 1, runDir: join(dir, 'bad') };
    await expect(grpoTrain({ ...bad, lossOn: 'first' as never })).rejects.toThrow(/lossOn must be one of all, decision, rest, got first/);
    await expect(grpoTrain({ ...bad, lengthNorm: 'batch' as never })).rejects.toThrow(/lengthNorm must be one of completion, constant, got batch/);
    expect(existsSync(join(dir, 'bad'))).toBe(false);
  });

  it('a run stopped after step 1 and resumed logs the same step-2 line; the ICM trains with the policy', async () => {
    const opts = { ...base, steps: 2, seed: 3, saveEvery: 1, updates: 2, fixedLambda: 0.5 };
    const ref = await load(icmDir);
    const refSteps: GrpoStepInfo[] = [];
    await grpoTrain({ ...opts, ...ref, runDir: join(dir, 'ref'), onStep: (s) => refSteps.push(s) });

    const run = join(dir, 'run');
    const a = await load(icmDir);
    await expect(grpoTrain({ ...opts, ...a, runDir: run, onStep: (s) => { if (s.step === 1) throw new Error('interrupted'); } })).rejects.toThrow('interrupted');
    expect(JSON.parse(readFileSync(join(run, 'checkpoint', 'state.json'), 'utf8'))).toEqual({ step: 1 });
    expect(existsSync(join(run, 'checkpoint', 'icm.safetensors'))).toBe(true);
    // Another setting is refused, naming it.
    const c = await load(icmDir);
    await expect(grpoTrain({ ...opts, ...c, group: 2, runDir: run })).rejects.toThrow(/group/);

    const b = await load(icmDir);
    const resumed: GrpoStepInfo[] = [];
    await grpoTrain({ ...opts, ...b, runDir: run, onStep: (s) => resumed.push(s) });
    expect(resumed.map((s) => s.step)).toEqual([1]);
    expect(strip(resumed[0])).toEqual({ ...strip(refSteps[1]), loss: resumed[0].loss, kl: resumed[0].kl, clipFraction: resumed[0].clipFraction, logpGap: resumed[0].logpGap });
    expectClose([resumed[0].loss, resumed[0].kl, resumed[0].clipFraction], [refSteps[1].loss, refSteps[1].kl, refSteps[1].clipFraction], 1e-6, 1e-5, 'step 2 figures');
    expect(refSteps[1].kl).toBeGreaterThan(0);
    // The log holds each step once.
    expect(logLines(run).map((l) => l.step)).toEqual([0, 1]);
    // Same final weights, the ICM's included; the ICM moved from its start.
    const wIcm = 'icm.con.q_proj.weight';
    const start = await Icm.load(icmDir);
    ownedIcms.push(start!);
    const [got, want, init] = await Promise.all([b.icm!.p(wIcm).toArray(), ref.icm!.p(wIcm).toArray(), start!.p(wIcm).toArray()]);
    expectClose(got, want, 1e-6, 1e-5, wIcm);
    expect(Math.max(...Array.from(got, (v, i) => Math.abs(v - init[i])))).toBeGreaterThan(1e-6);
    const w = 'model.layers.1.self_attn.o_proj.weight';
    expectClose(await b.model.params.get(w)!.toArray(), await ref.model.params.get(w)!.toArray(), 1e-6, 1e-5, w);
    expect(Icm.exists(join(run, 'final'))).toBe(true);
    expect(existsSync(join(run, 'checkpoint'))).toBe(false);
  });
});
