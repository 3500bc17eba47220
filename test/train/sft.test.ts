// The activation stage: the loss mask covers exactly the trace tokens (not the prompt,
// not the spliced candidate content), a tiny model fits 4 examples and then writes a
// trace whose inspection goes through the generator, the rerank evaluation over it, and
// an interrupted run (with a toy compression module trained jointly) resumes exactly.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../../runtime/index.ts';
import { type CompressFactory, type CompressPrompt, inspectionParts, rerankGenerate, traceLayout } from '../../model/inspect.ts';
import { Icm, icmCompress, icmConfigFor } from '../../model/icm.ts';
import { Mllm } from '../../model/mllm.ts';
import { type CandidateInput, DEFAULT_SYSTEM, type QueryInput, rerankParts } from '../../model/sequence.ts';
import { type SftExample, answerTargets, decisionWeights, digitTokenIds, makeSftExample, sftSequence, sftTrain, trainingQueries, usableQueries } from '../../train/sft.ts';
import { evaluateRerank, rerankedOrder } from '../../train/eval/rerank.ts';
import { expectClose } from '../helpers.ts';
import { K, SYSTEM, config, data, emojis, images, tok } from './reranker-fixture.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-sft-'));
const models: Mllm[] = [];
let fitted: { model: Mllm; examples: SftExample[] } | null = null;
const newModel = (seed: number) => {
  const m = Mllm.create(config, tok, seed);
  models.push(m);
  return m;
};
afterAll(() => {
  for (const m of models) for (const t of m.parameterList()) t.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/** A toy compression module: one learned [2, D] block stands for every even candidate. */
function toyIcm(seed: number): { compress: CompressFactory; params: T.Tensor[] } {
  const p = T.keep(T.requireGrad(T.randn([2, config.llm.hidden], { seed, std: 0.1 })));
  p.name = 'icm.rows';
  return { compress: () => (_c, i) => (i % 2 === 0 ? p : null), params: [p] };
}

describe('sft', () => {
  it('trains on the queries of the given tasks only, and names tasks that have none', () => {
    const all = usableQueries(data);
    const tasks = [...new Set(all.map((q) => q.task_id))];
    expect(tasks.length).toBeGreaterThan(1);
    expect(trainingQueries(data)).toEqual(all);
    const picked = trainingQueries(data, [tasks[0]]);
    expect(picked.map((q) => q.qid)).toEqual(all.filter((q) => q.task_id === tasks[0]).map((q) => q.qid));
    expect(picked.length).toBeGreaterThan(0);
    expect(picked.length).toBeLessThan(all.length);
    expect(() => trainingQueries(data, [99])).toThrow(/no usable training queries of tasks 99/);
  });

  it('with first-stage rankings, lists are the top K in the first stage order, and queries without a positive there are left out', () => {
    const all = usableQueries(data);
    const model = newModel(4);
    // Rankings built by hand: even queries have their positive at rank 2, odd ones below the top K.
    const pool = [...data.byDid.keys()];
    const ranking = (q: (typeof all)[number], i: number) => {
      const negatives = pool.filter((d) => !q.pos_cand_list.includes(d)).slice(i, i + K + 2);
      return i % 2 === 0 ? [...negatives.slice(0, 2), q.pos_cand_list[0], ...negatives.slice(2)] : [...negatives, q.pos_cand_list[0]];
    };
    const firstStage = new Map(all.map((q, i) => [q.qid, ranking(q, i)]));
    const ranked = { ...data, firstStage };
    const kept = trainingQueries(ranked, undefined, K);
    expect(kept.length).toBeGreaterThan(1);
    expect(kept.map((q) => q.qid)).toEqual(all.filter((_, i) => i % 2 === 0).map((q) => q.qid));
    for (const q of kept) {
      for (const draw of [0, 1]) {
        const ex = makeSftExample(model, ranked, emojis, q, { K, seed: 1, draw, maxInspections: 0, style: 'answer' });
        expect(ex.candidateIds).toEqual(firstStage.get(q.qid)!.slice(0, K));
        expect(ex.trace.answer).toBe(2);
      }
    }
    expect(() => trainingQueries({ ...data, firstStage: new Map([[all[0].qid, firstStage.get(all[0].qid)!]]) })).toThrow(/has no first-stage ranking/);
    const none = new Map(all.map((q, i) => [q.qid, ranking(q, 2 * i + 1)]));
    expect(() => trainingQueries({ ...data, firstStage: none }, undefined, K)).toThrow(/no training query has a positive in its first-stage top/);
  });

  it('the decision share weights exactly the digit tokens of the trace (the indices it writes), or the answer alone', async () => {
    const model = newModel(3);
    const digits = digitTokenIds(tok);
    // A trace with an inspection and no digit inside a word (each number is whole tokens).
    const ex = usableQueries(data)
      .map((q) => makeSftExample(model, data, emojis, q, { K, seed: 1, draw: 0, maxInspections: 2, style: 'brief' }))
      .find((e) => e.trace.inspections.length >= 1 && !/[0-9]/.test(e.trace.text.replace(/\b[0-9]+\b/g, '')))!;
    expect(ex).toBeDefined();
    const s = T.noGrad(() => sftSequence(model, ex, 2, undefined, SYSTEM));
    const share = 0.5;
    const w = decisionWeights(s.targets, (t) => digits.has(t), share);
    const isDecision = (t: number) => t !== -100 && digits.has(t);
    const nd = [...s.targets].filter(isDecision).length;
    const nr = [...s.targets].filter((t) => t !== -100 && !digits.has(t)).length;
    s.targets.forEach((t, i) => {
      // Every target weighted, by its part; nothing else.
      expect(w[i]).toBeCloseTo(t === -100 ? 0 : isDecision(t) ? share / nd : (1 - share) / nr, 7);
    });
    // The decision tokens spell the trace's numbers in order: eliminated, inspected, answer.
    const written = tok.decode([...s.targets].filter(isDecision));
    expect(written).toBe((ex.trace.text.match(/[0-9]+/g) ?? []).join(''));
    expect(written.endsWith(String(ex.trace.answer))).toBe(true);
    // crossEntropy's weighted mean is the mix of the two parts' own means.
    const N = s.targets.length;
    const logits = T.randn([N, tok.vocabSize], { seed: 5 });
    const tg = T.fromArray(s.targets, [N], 'i32');
    const mixed = await T.crossEntropy(logits, tg, { mask: T.fromArray(w, [N]) }).item();
    const part = (keep: (t: number) => boolean) => T.crossEntropy(logits, T.fromArray(s.targets.map((t) => (keep(t) ? t : -100)), [N], 'i32')).item();
    expectClose([mixed], [share * (await part(isDecision)) + (1 - share) * (await part((t) => !isDecision(t)))], 1e-5);
    expect(() => decisionWeights(new Int32Array([5, -100]), (t) => digits.has(t), share)).toThrow(/needs both decision/);
    // The answer alone: its positions spell the answer's index, and only they are decisions.
    const at = answerTargets(s.layout.ids, s.targets, tok.specialIds);
    expect(tok.decode([...s.targets].filter((_, i) => at[i]))).toBe(String(ex.trace.answer));
    // Also under the default system prompt, which spells the <answer></answer> tags itself.
    expect(DEFAULT_SYSTEM).toContain('<answer></answer>');
    const d = T.noGrad(() => sftSequence(model, ex, 2));
    const atD = answerTargets(d.layout.ids, d.targets, tok.specialIds);
    expect(d.layout.ids.filter((id) => id === tok.specialIds.answerStart).length).toBe(2);
    expect(tok.decode([...d.targets].filter((_, i) => atD[i]))).toBe(String(ex.trace.answer));
    const wa = decisionWeights(s.targets, (_t, i) => at[i] === 1, share);
    const na = at.reduce((a, v) => a + v, 0);
    s.targets.forEach((t, i) => expect(wa[i]).toBeCloseTo(t === -100 ? 0 : at[i] ? share / na : (1 - share) / (nd + nr - na), 7));
  });

  it('the loss mask covers exactly the trace tokens; spliced content and prompt get none', () => {
    const model = newModel(1);
    const ex = data.queries
      .filter((q) => q.task_id === 6)
      .map((q) => makeSftExample(model, data, emojis, q, { K, seed: 1, draw: 0, maxInspections: 3 }))
      .find((e) => e.trace.inspections.length >= 2)!;
    expect(ex).toBeDefined();
    const icm = toyIcm(2);
    for (const compress of [undefined, icm.compress]) {
      const s = T.noGrad(() => sftSequence(model, ex, 3, compress, SYSTEM));
      const l = s.layout;
      const masked: number[] = [];
      s.traceMask.forEach((m, t) => m && masked.push(l.ids[t]));
      expect(masked).toEqual(ex.traceIds);
      // Targets: exactly the trace tokens, each predicted from the position before it.
      const targeted: number[] = [];
      s.targets.forEach((v, t) => {
        if (v === -100) return;
        expect(s.traceMask[t + 1]).toBe(1);
        expect(v).toBe(l.ids[t + 1]);
        targeted.push(v);
      });
      expect(targeted).toEqual(ex.traceIds);
      expect(s.traceMask.subarray(0, s.promptLength).every((m) => m === 0)).toBe(true);
      // Each splice holds the candidate's full content, untargeted, right after its end marker.
      expect(s.splices.map((x) => x.index)).toEqual(ex.trace.inspections);
      for (const sp of s.splices) {
        expect(l.ids[sp.start - 1]).toBe(tok.specialIds.inspectEnd);
        const body = model.layout(inspectionParts(ex.candidates[sp.index], sp.index));
        expect(Array.from(l.ids.subarray(sp.start, sp.end))).toEqual(Array.from(body.ids));
        expect(s.traceMask.subarray(sp.start, sp.end).every((m) => m === 0)).toBe(true);
        expect(s.targets.subarray(sp.start - 1, sp.end - 1).every((v) => v === -100)).toBe(true);
      }
      const full = model.layout(rerankParts(ex.query, ex.candidates, { system: SYSTEM }).parts);
      if (compress) expect(s.promptLength).toBeLessThan(full.length);
      else expect(s.promptLength).toBe(full.length);
    }
    icm.params[0].dispose();
  });

  it('a tiny model fits 4 examples and then generates a trace with its inspection', async () => {
    const model = newModel(3);
    // Short traces in the real format (one inspection each), so 40 steps fit in the time budget.
    const examples: SftExample[] = data.queries.slice(0, 4).map((q) => {
      const ex = makeSftExample(model, data, emojis, q, { K, seed: 1, draw: 0, maxInspections: 3 });
      const a = ex.trace.answer;
      const text = `<think>Look at candidate ${a}. <inspection-index-start>${a}<inspection-index-end> It matches.</think><answer>${a}</answer>`;
      return { ...ex, trace: { ...ex.trace, text, inspections: [a] }, traceIds: [...tok.encode(text), tok.specialIds.imEnd] };
    });
    const losses: number[] = [];
    await sftTrain({ model, examples: () => examples, runDir: join(dir, 'fit'), steps: 40, batch: 4, lr: 1e-2, seed: 1, system: SYSTEM, warmupSteps: 0, minLr: 1e-2, onStep: (s) => losses.push(s.loss), log: () => {} });
    expect(losses).toHaveLength(40);
    expect(losses.at(-1)!).toBeLessThan(losses[0] / 5);
    const log = readFileSync(join(dir, 'fit', 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(log.map((r) => r.step)).toEqual([...Array(40).keys()]);

    // Greedy generation writes the learned inspection, which goes through the decoder's
    // splice (which index 40 steps teach it to pick is not the point here).
    const ex = examples[0];
    const r = await rerankGenerate(model, ex.query, ex.candidates, { system: SYSTEM, maxNewTokens: ex.traceIds.length + 4, temperature: 0, seed: 1, maxInspections: 3, returnLogProbs: true });
    expect(r.text).toMatch(/^<think>Look at candidate \d\. <inspection-index-start>\d<inspection-index-end> It matches/);
    expect(r.events[0].kind).toBe('inspect');
    expect(r.splices).toHaveLength(1);
    expect(r.splices[0].at).toBeLessThan(r.tokens.length);
    // Its log-probs equal a full forward over the same context (splice included).
    const full = traceLayout(model, rerankParts(ex.query, ex.candidates, { system: SYSTEM }), ex.candidates, r.tokens, 3);
    const logits = (await T.tidyAsync(async () => T.noGrad(() => T.logSoftmax(model.forward([full.layout]).logits)).toArray())) as Float32Array;
    const V = tok.vocabSize;
    const want: number[] = [];
    full.traceMask.forEach((m, t) => m && want.push(logits[(t - 1) * V + full.layout.ids[t]]));
    expectClose(r.logProbs!, want, 1e-4, 1e-4, 'log-probs of the generated trace');
    fitted = { model, examples };
  });

  it('rerank evaluation: answer first, then the first-stage order; costs reported', async () => {
    expect(rerankedOrder(['a', 'b', 'c'], 'c')).toEqual(['c', 'a', 'b']);
    expect(rerankedOrder(['a', 'b', 'c'], null)).toEqual(['a', 'b', 'c']);
    const { model, examples } = fitted!;
    const queries = data.queries.slice(0, 4);
    const firstStage = new Map(examples.map((e) => [e.qid, e.candidateIds]));
    const res = await evaluateRerank({ model, queries, firstStage, byDid: data.byDid, images, K, system: SYSTEM, maxNewTokens: 24, batch: 2 });
    expect(res.queries).toBe(4);
    const byQid = new Map(queries.map((q) => [q.qid, q]));
    let correct = 0;
    let firstCorrect = 0;
    res.perQuery.forEach((r, k) => {
      const ex = examples[k];
      expect(r.qid).toBe(ex.qid);
      expect(r.answerId).toBe(r.answer === null ? null : ex.candidateIds[r.answer]);
      expect(r.correct).toBe(r.answerId !== null && byQid.get(r.qid)!.pos_cand_list.includes(r.answerId));
      correct += r.correct ? 1 : 0;
      firstCorrect += byQid.get(r.qid)!.pos_cand_list.includes(ex.candidateIds[0]) ? 1 : 0;
      expect(r.promptTokens).toBe(model.layout(rerankParts(ex.query, ex.candidates, { system: SYSTEM }).parts).length);
    });
    expect(res.recall.micro['R@1']).toBeCloseTo(correct / 4, 10);
    expect(res.firstStage.micro['R@1']).toBeCloseTo(firstCorrect / 4, 10);
    expect(res.recall.micro['R@5']).toBe(1); // every list holds its positive
    expect(res.meanInspections).toBeCloseTo(res.perQuery.reduce((a, r) => a + r.inspections.length, 0) / 4, 10);
    expect(res.meanInspections).toBeGreaterThan(0);
    expect(res.events.inspect).toBe(res.perQuery.reduce((a, r) => a + r.inspections.length, 0));
    expect(res.latencyMsPerQuery).toBeGreaterThan(0);
    expect(res.peakGpuBytes).toBeGreaterThan(0);
    expect(() => JSON.stringify(res)).not.toThrow();
  });

  it('an interrupted run resumes exactly, the compression module included', async () => {
    const base = { data, batch: 2, lr: 3e-3, seed: 5, K, system: SYSTEM, steps: 4, saveEvery: 2, log: () => {} };
    // Reference: 4 uninterrupted steps.
    const refModel = newModel(7);
    const refIcm = toyIcm(8);
    const refLoss: number[] = [];
    await sftTrain({ ...base, model: refModel, compress: refIcm.compress, compressParams: refIcm.params, runDir: join(dir, 'ref'), onStep: (s) => refLoss.push(s.loss) });
    // Interrupted after step 2 (checkpoint at 2), then resumed in a fresh process's state.
    const run = join(dir, 'run');
    const a = newModel(7);
    const aIcm = toyIcm(8);
    await expect(sftTrain({ ...base, model: a, compress: aIcm.compress, compressParams: aIcm.params, runDir: run, onStep: (s) => { if (s.step === 2) throw new Error('interrupted'); } })).rejects.toThrow('interrupted');
    expect(JSON.parse(readFileSync(join(run, 'checkpoint', 'state.json'), 'utf8'))).toEqual({ step: 2 });
    const b = newModel(11); // other weights: the checkpoint must overwrite them
    const bIcm = toyIcm(12);
    const resumed: { step: number; loss: number }[] = [];
    await sftTrain({ ...base, model: b, compress: bIcm.compress, compressParams: bIcm.params, runDir: run, onStep: (s) => resumed.push(s) });
    expect(resumed.map((s) => s.step)).toEqual([2, 3]);
    expectClose(resumed.map((s) => s.loss), refLoss.slice(2), 1e-5, 1e-5, 'losses after resume');
    const [got, want, init] = await Promise.all([bIcm.params[0].toArray(), refIcm.params[0].toArray(), T.randn([2, config.llm.hidden], { seed: 8, std: 0.1 }).toArray()]);
    expectClose(got, want, 1e-6, 1e-5, 'compression parameters');
    expect(Math.max(...Array.from(got, (v, i) => Math.abs(v - init[i])))).toBeGreaterThan(1e-4); // trained jointly
    const w = 'model.layers.0.mlp.up_proj.weight';
    expectClose(await b.params.get(w)!.toArray(), await refModel.params.get(w)!.toArray(), 1e-6, 1e-5, w);
    const again = await Mllm.load(join(run, 'final'));
    models.push(again);
    expectClose(await again.params.get(w)!.toArray(), await refModel.params.get(w)!.toArray(), 0, 0, 'final checkpoint');
    for (const p of [...refIcm.params, ...aIcm.params, ...bIcm.params]) p.dispose();
  });

  it('with the real ICM a step compresses the whole batch in one pass, with the loss of one pass per example', async () => {
    const model = newModel(21);
    const icm = Icm.create(icmConfigFor(config), 22);
    const factory = icmCompress(model, icm);
    const examples = data.queries.slice(0, 3).map((q, i) => makeSftExample(model, data, emojis, q, { K, seed: 2, draw: i, maxInspections: 3 }));
    // Reference: each example compressed on its own, the loss formed as sftTrain forms it.
    const want = await T.tidyAsync(async () =>
      T.noGrad(() => {
        const seqs = examples.map((ex) => sftSequence(model, ex, 3, factory, SYSTEM));
        const { logits, T: len } = model.forward(seqs.map((q) => q.layout));
        const targets = new Int32Array(seqs.length * len).fill(-100);
        seqs.forEach((q, b) => targets.set(q.targets, b * len));
        return T.crossEntropy(T.reshape(logits, [seqs.length * len, tok.vocabSize]), T.fromArray(targets, [seqs.length * len], 'i32'));
      }).item(),
    );
    let many = 0;
    const counted: CompressFactory = Object.assign((q: QueryInput, c: readonly CandidateInput[]) => factory(q, c), {
      many: (p: readonly CompressPrompt[]) => (many++, factory.many!(p)),
    });
    const losses: number[] = [];
    await sftTrain({ model, examples: () => examples, runDir: join(dir, 'icm-batched'), steps: 2, batch: 3, lr: 3e-3, seed: 2, K, system: SYSTEM, compress: counted, compressParams: icm.parameterList(), log: () => {}, onStep: (s) => losses.push(s.loss) });
    expect(many).toBe(2); // once per step
    // Step 0 runs before any update. The two paths agree to the bit here; giving every
    // example the first one's rows moves the loss by 1.4e-5.
    expectClose([losses[0]], [want], 1e-6, 0, 'loss of step 0');
    icm.dispose();
  });
});
