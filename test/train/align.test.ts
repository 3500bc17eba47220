// ICM self-alignment: the distillation loss falls on a tiny model while every frozen
// parameter stays bit-identical and gathers no gradient; the stage on the emoji
// benchmark logs, checkpoints, resumes at the right step and leaves a final folder that
// loads as model + ICM.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type Tensor, keep, mulScalar, noGrad, requireGrad, zeros } from '../../runtime/index.ts';
import { Icm } from '../../model/icm.ts';
import { type Preprocessed, preprocess } from '../../model/image.ts';
import { initParameters } from '../../model/llm.ts';
import { Mllm, type MllmConfig } from '../../model/mllm.ts';
import { PRESETS, withVocab } from '../../model/presets.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { initVisionParameters } from '../../model/vision.ts';
import { type AlignExample, alignIcm, alignParts, comparedPositions } from '../../train/align.ts';
import { buildEmojiBenchmark, writeEmojiBenchmark } from '../../train/data/emoji-benchmark.ts';
import { randArray } from '../helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-align-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const texts = ['a red square', 'a green circle', 'a blue triangle', 'a yellow cross', 'which one is red?', 'The best match is candidate'];
const tok = trainBpe([texts.join('\n'), 'The candidate shows. It is what the query asks for.'], { vocabSize: 320 });
const preset = PRESETS.tiny;
const cfg = withVocab(preset, tok.vocabSize);
const config: MllmConfig = { architectures: ['RetrvMllm'], preset: 'tiny', llm: cfg.llm, vision: cfg.vision, imageSize: preset.imageSize };

function picture(seed: number): Preprocessed {
  const S = 32;
  const r = randArray(S * S * 4, seed, 0, 255);
  return preprocess({ width: S, height: S, rgba: Uint8Array.from(r, (v, i) => (i % 4 === 3 ? 255 : v)) }, { patchSize: 8, mergeSize: 2, targetSize: S });
}

/**
 * A random model with a decided teacher: larger weights than the training init, so that
 * its next-token distributions are peaked and depend on the candidates it reads.
 */
function decidedModel(seed: number): Mllm {
  const params = new Map<string, Tensor>();
  for (const [name, t] of [...initParameters(config.llm, seed), ...initVisionParameters(config.vision, seed)]) {
    const s = t.rank === 2 ? (name === 'model.embed_tokens.weight' ? 10 : /o_proj|down_proj/.test(name) ? 20 : 5) : 1;
    const u = s === 1 ? t : noGrad(() => mulScalar(t, s));
    if (u !== t) t.dispose();
    u.name = name;
    params.set(name, keep(requireGrad(u)));
  }
  return new Mllm(config, params, tok);
}

async function snapshot(ts: Tensor[]): Promise<Float32Array[]> {
  return Promise.all(ts.map(async (t) => Float32Array.from(await t.toArray())));
}

describe('ICM self-alignment', () => {
  it('the distillation loss falls while the frozen model stays bit-identical', async () => {
    const model = decidedModel(3);
    const frozen = model.parameterList();
    const before = await snapshot(frozen);
    const imgs = [picture(1), picture(2), picture(3)];
    const fixed: AlignExample[] = [
      { kind: 'describe', query: { text: texts[4] }, candidates: [{ text: texts[0] }], continuation: 'The candidate shows a red square. It is what the query asks for.' },
      { kind: 'describe', query: { image: imgs[0] }, candidates: [{ image: imgs[1] }], continuation: 'The candidate shows a green circle.' },
      { kind: 'rerank', query: { text: texts[4] }, candidates: [{ text: texts[1] }, { image: imgs[2] }, { text: texts[0], image: imgs[0] }], continuation: 'The best match is candidate 2.' },
    ];
    const losses: number[] = [];
    const run = join(dir, 'fixed');
    const { icm } = await alignIcm({
      base: model,
      runDir: run,
      steps: 20,
      batch: fixed.length,
      lr: 3e-2,
      seed: 1,
      saveEvery: 1000,
      examples: () => fixed,
      log: () => {},
      onStep: (s) => {
        losses.push(s.loss);
        expect(s.compressedTokens).toBeLessThan(s.fullTokens);
      },
    });
    const first = losses.slice(0, 3).reduce((a, b) => a + b) / 3;
    const last = losses.slice(-3).reduce((a, b) => a + b) / 3;
    console.log(`align: KL ${first.toFixed(4)} -> ${last.toFixed(4)}`);
    expect(first).toBeGreaterThan(0.1); // the teacher is decided: compression costs something at first
    expect(last).toBeLessThan(0.65 * first); // measured: 0.166 -> 0.088
    // Frozen: bit-identical, no gradient kept, and requiresGrad restored after the stage.
    const after = await snapshot(frozen);
    after.forEach((a, i) => expect(a, frozen[i].name).toEqual(before[i]));
    for (const t of frozen) {
      expect(t.grad).toBeNull();
      expect(t.requiresGrad).toBe(true);
    }
    const log = readFileSync(join(run, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(log.length).toBe(20);
    expect(log[0]).toMatchObject({ stage: 'align', step: 0 });
    expect(log[19].kl).toBeCloseTo(losses[19], 6);
    icm.dispose();
    for (const t of frozen) t.dispose();
  });

  it('lays out teacher and student so the compared positions match token for token', () => {
    const model = Mllm.create(config, tok, 1);
    const ex: AlignExample = { kind: 'rerank', query: { text: texts[4] }, candidates: [{ text: texts[0] }, { text: texts[1] }], continuation: 'The best match is candidate 0.' };
    const full = alignParts(ex);
    const lt = model.layout(full.parts, full.marks);
    const two = zeros([2, config.llm.hidden]);
    const comp = alignParts(ex, () => two);
    const ls = model.layout(comp.parts, comp.marks);
    const pt = comparedPositions(lt);
    const ps = comparedPositions(ls);
    expect(pt.length).toBe(ps.length);
    expect(pt.map((p) => lt.ids[p])).toEqual(ps.map((p) => ls.ids[p]));
    expect(tok.decode(pt.map((p) => lt.ids[p]))).toContain('The best match is candidate 0.');
    two.dispose();
    for (const t of model.parameterList()) t.dispose();
  });

  it('runs on the emoji benchmark, checkpoints, resumes at the right step and saves model + ICM', async () => {
    const bench = buildEmojiBenchmark({ seed: 1, maxPerTask: 12 });
    const data = join(dir, 'data');
    await writeEmojiBenchmark(data, bench);
    const base = join(dir, 'base');
    const model = Mllm.create(config, tok, 5);
    await model.save(base);
    for (const t of model.parameterList()) t.dispose();
    const opts = { base, dataDir: data, runDir: join(dir, 'emoji'), steps: 6, batch: 2, k: 3, lr: 3e-3, seed: 2, saveEvery: 2, ceWeight: 0.5, log: () => {} };
    const seen: number[] = [];
    await expect(
      alignIcm({
        ...opts,
        onStep: (s) => {
          seen.push(s.step);
          expect(Number.isFinite(s.loss)).toBe(true);
          if (s.step === 2) throw new Error('interrupted');
        },
      }),
    ).rejects.toThrow('interrupted');
    expect(JSON.parse(readFileSync(join(opts.runDir, 'checkpoint', 'state.json'), 'utf8'))).toEqual({ step: 2 });
    const resumed: number[] = [];
    const { model: m, icm } = await alignIcm({ ...opts, onStep: (s) => resumed.push(s.step) });
    expect(resumed).toEqual([2, 3, 4, 5]);
    const log = readFileSync(join(opts.runDir, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(log.map((r) => r.step)).toEqual([0, 1, 2, 2, 3, 4, 5]); // step 2 ran twice: before the interruption and after
    for (const r of log) {
      expect(r.ce).toBeGreaterThan(0);
      expect(r.loss).toBeCloseTo(r.kl + 0.5 * r.ce, 4);
    }
    expect(existsSync(join(opts.runDir, 'checkpoint'))).toBe(false);
    const final = join(opts.runDir, 'final');
    const again = (await Icm.load(final))!;
    for (const [name, t] of icm.params) expect(await again.p(name).toArray(), name).toEqual(await t.toArray());
    const m2 = await Mllm.load(final);
    expect(m2.tokenizer.vocabSize).toBe(tok.vocabSize);
    for (const x of [icm, again]) x.dispose();
    for (const t of [...m.parameterList(), ...m2.parameterList()]) t.dispose();
  });
});
