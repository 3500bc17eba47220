// Details inspection: the tracker's rules (valid, out of range, repeated, malformed, over
// the cap), the spliced context equals a full forward over the same context, and batched
// generation with inspections matches one-by-one generation.
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../../runtime/index.ts';
import { type Preprocessed, preprocess } from '../../model/image.ts';
import { InspectionTracker, formatOk, inspectionInput, parseAnswer, rerankGenerate, rerankGenerateBatch, traceLayout } from '../../model/inspect.ts';
import { Session } from '../../model/generate.ts';
import { Mllm, type MllmConfig } from '../../model/mllm.ts';
import { PRESETS, withVocab } from '../../model/presets.ts';
import { type CandidateInput, rerankParts } from '../../model/sequence.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { expectClose } from '../helpers.ts';

const tok = trainBpe(['a red square, a green circle, a blue triangle', 'candidate matches the query; inspect the details', 'thumbs up: dark skin tone'], { vocabSize: 340 });
const preset = PRESETS.tiny;
const cfg = withVocab(preset, tok.vocabSize);
const config: MllmConfig = { architectures: ['RetrvMllm'], preset: 'tiny', llm: cfg.llm, vision: cfg.vision, imageSize: preset.imageSize };

/** Random weights far from the near-uniform initialisation, so wrong contexts show in the logits. */
function randomModel(seed: number): Mllm {
  const params = new Map<string, T.Tensor>();
  let k = 0;
  for (const [name, shape] of Object.entries(Mllm.parameterShapes(config))) {
    const s = seed * 1000 + k++;
    const t = name.endsWith('norm.weight') ? T.randn(shape, { seed: s, mean: 1, std: 0.1 }) : T.randn(shape, { seed: s, std: name.endsWith('.bias') ? 0.1 : 0.3 });
    t.name = name;
    params.set(name, T.keep(t));
  }
  return new Mllm(config, params, tok);
}

function picture(k: number): Preprocessed {
  const S = 32;
  const rgba = new Uint8Array(S * S * 4).fill(255);
  for (let y = 0; y < S; y++) for (let x = 0; x < S; x++) if ((x + y * k) % 7 < 3) rgba.set([40 * k, 200 - 30 * k, 90, 255], (y * S + x) * 4);
  return preprocess({ width: S, height: S, rgba }, { patchSize: config.vision.patchSize, mergeSize: 2, targetSize: S });
}

const model = randomModel(3);
afterAll(() => {
  for (const t of model.parameterList()) t.dispose();
});

const sp = tok.specialIds;
const enc = (s: string) => tok.encode(s);
const query = { image: picture(1), text: 'the same, darker' };
const candidates: CandidateInput[] = [{ text: 'a red square' }, { image: picture(2) }, { image: picture(3), text: 'a blue triangle' }, { text: 'a green circle' }];

/** Log-softmax of row r of a flat [rows, V] array, in float64. */
function logSoftmaxRow(a: ArrayLike<number>, r: number, V: number): number[] {
  const row = Array.from({ length: V }, (_, v) => a[r * V + v]);
  const m = Math.max(...row);
  const lse = m + Math.log(row.reduce((s, x) => s + Math.exp(x - m), 0));
  return row.map((x) => x - lse);
}

/** Logits [T, V] of a full (uncached) forward over the layout. */
async function fullLogits(layout: Parameters<Mllm['forward']>[0][0]): Promise<Float32Array> {
  return (await T.tidyAsync(async () => T.noGrad(() => model.forward([layout]).logits).toArray())) as Float32Array;
}

describe('inspection tracker', () => {
  const feed = (tr: InspectionTracker, ids: number[]) => ids.map((id) => tr.push(id));

  it('splices valid requests and reports out-of-range, repeated, malformed and over-cap ones', () => {
    const tr = new InspectionTracker(tok, 4, 2);
    const seq = [
      sp.thinkStart, ...enc('look'),
      sp.inspectStart, ...enc('2'), sp.inspectEnd, // valid
      sp.inspectStart, ...enc('2'), sp.inspectEnd, // repeat
      sp.inspectStart, ...enc('17'), sp.inspectEnd, // out of range
      sp.inspectStart, sp.inspectEnd, // no digits
      sp.inspectStart, ...enc('x1'), sp.inspectEnd, // garbage
      sp.inspectEnd, // stray end
      sp.inspectStart, ...enc('0'), sp.inspectEnd, // valid (second, at the cap)
      sp.inspectStart, ...enc('3'), sp.inspectEnd, // over the cap
      sp.inspectStart, sp.inspectStart, ...enc('1'), sp.inspectEnd, // first start left open; the second is over the cap
      sp.thinkEnd, sp.answerStart, ...enc('0'), sp.answerEnd,
    ];
    const out = feed(tr, seq);
    expect(out.filter((x) => x !== null)).toEqual([2, 0]);
    expect(tr.inspections).toEqual([2, 0]);
    expect(tr.events.map((e) => [e.kind, e.index])).toEqual([
      ['inspect', 2], ['repeat', 2], ['out_of_range', 17], ['malformed', undefined], ['malformed', undefined], ['malformed', undefined],
      ['inspect', 0], ['over_cap', 3], ['malformed', undefined], ['over_cap', 1],
    ]);
    // `at` counts the assistant tokens through the one that settled the event.
    const firstEnd = seq.indexOf(sp.inspectEnd) + 1;
    expect(tr.events[0].at).toBe(firstEnd);
    expect(out[firstEnd - 1]).toBe(2);
    tr.finish();
    expect(tr.events).toHaveLength(10);
  });

  it('an open request is malformed when a structural token, a long run or the end closes it', () => {
    const a = new InspectionTracker(tok, 4, 3);
    feed(a, [sp.inspectStart, ...enc('1'), sp.thinkEnd]);
    expect(a.events).toEqual([{ kind: 'malformed', at: 3 }]);
    const b = new InspectionTracker(tok, 4, 3);
    feed(b, [sp.inspectStart, ...Array.from({ length: 12 }, () => enc('7')[0])]);
    expect(b.events.map((e) => e.kind)).toEqual(['malformed']);
    const c = new InspectionTracker(tok, 4, 3);
    feed(c, [sp.inspectStart, ...enc('1')]);
    expect(c.events).toEqual([]);
    c.finish();
    expect(c.events).toEqual([{ kind: 'malformed', at: 2 }]);
    const d = new InspectionTracker(tok, 4, 0); // inspection disabled: every request is over the cap
    feed(d, [sp.inspectStart, ...enc('1'), sp.inspectEnd]);
    expect(d.events.map((e) => e.kind)).toEqual(['over_cap']);
    expect(d.inspections).toEqual([]);
  });

  it('parses the answer and checks the format', () => {
    const ids = [sp.thinkStart, ...enc('ok'), sp.thinkEnd, sp.answerStart, ...enc('3'), sp.answerEnd];
    expect(parseAnswer(tok, ids, 4)).toBe(3);
    expect(formatOk(tok, ids, 4)).toBe(true);
    expect(parseAnswer(tok, ids, 3)).toBe(null);
    expect(formatOk(tok, [...ids, sp.imEnd], 4)).toBe(true);
    expect(formatOk(tok, ids.slice(1), 4)).toBe(false);
    expect(parseAnswer(tok, [sp.answerStart, ...enc('x'), sp.answerEnd], 4)).toBe(null);
    expect(parseAnswer(tok, [sp.answerStart, ...enc('1')], 4)).toBe(null);
  });
});

describe('inspection during generation', () => {
  it('the logits after an inspection equal a full forward over prompt + tokens + spliced content', async () => {
    const prompt = rerankParts(query, candidates);
    const pl = model.layout(prompt.parts, prompt.marks);
    const forced = [sp.thinkStart, ...enc('look'), sp.inspectStart, ...enc('2'), sp.inspectEnd];
    const s = new Session(model.llm, 1, { capacity: 16 });
    try {
      const e = T.noGrad(() => T.tidy(() => model.embed(pl)));
      s.prefill([{ embeds: e, positions: [0, 1, 2].map((r) => Array.from(pl.positions.subarray(r * pl.length, (r + 1) * pl.length))) }]);
      e.dispose();
      s.append([forced]);
      const splice = inspectionInput(model, candidates[2], 2, s.nextPosition[0]);
      s.append([{ embeds: splice.embeds, positions: splice.positions }]);
      splice.embeds.dispose();
      const got = Array.from(await s.logits().toArray());

      const full = traceLayout(model, prompt, candidates, forced, 3);
      expect(full.inspections).toEqual([2]);
      expect(full.layout.length).toBe(pl.length + forced.length + splice.length);
      const V = tok.vocabSize;
      const want = await fullLogits(full.layout);
      expectClose(got, want.subarray((full.layout.length - 1) * V), 1e-4, 1e-4, 'logits after the splice');
      // The test can fail: without the splice the logits are far off.
      const bare = traceLayout(model, prompt, candidates, forced, 0);
      const other = await fullLogits(bare.layout);
      const diff = Math.max(...got.map((v, i) => Math.abs(v - other[(bare.layout.length - 1) * V + i])));
      expect(diff).toBeGreaterThan(1e-2);
    } finally {
      s.dispose();
    }
  });

  it('rerankGenerate survives bad requests, reports them, and its log-probs match a full forward', async () => {
    const prefix = [
      sp.thinkStart,
      sp.inspectStart, ...enc('1'), sp.inspectEnd, // image candidate: spliced
      sp.inspectStart, ...enc('9'), sp.inspectEnd, // out of range
      sp.inspectStart, ...enc('1'), sp.inspectEnd, // repeat
      sp.inspectStart, ...enc('a'), sp.inspectEnd, // malformed
      sp.inspectStart, ...enc('0'), sp.inspectEnd, // text candidate: spliced
    ];
    const r = await rerankGenerate(model, query, candidates, { maxNewTokens: 6, temperature: 1, seed: 5, maxInspections: 3, prefix, returnLogProbs: true, stopTokens: [] });
    expect(r.inspections).toEqual([1, 0]);
    expect(r.events.map((e) => e.kind)).toEqual(['inspect', 'out_of_range', 'repeat', 'malformed', 'inspect']);
    expect(r.splices.map((x) => x.index)).toEqual([1, 0]);
    expect(r.tokens.slice(0, prefix.length)).toEqual(prefix);
    expect(r.tokens.length).toBe(prefix.length + 6);
    expect(r.logProbs).toHaveLength(6);
    // Every sampled token's log-prob equals the full forward's over the replayed context.
    const full = traceLayout(model, rerankParts(query, candidates), candidates, r.tokens, 3);
    expect(full.inspections).toEqual([1, 0]);
    expect(r.promptTokens).toBe(full.promptLength);
    expect(r.insertedTokens).toBe(full.splices.reduce((a, x) => a + x.end - x.start, 0));
    const logits = await fullLogits(full.layout);
    const tracePos: number[] = [];
    full.traceMask.forEach((m, t) => m && tracePos.push(t));
    const V = tok.vocabSize;
    for (let k = 0; k < 6; k++) {
      const t = tracePos[prefix.length + k];
      const lp = logSoftmaxRow(logits, t - 1, V)[r.tokens[prefix.length + k]];
      expectClose([r.logProbs![k]], [lp], 1e-4, 1e-4, `log-prob of sampled token ${k}`);
    }
  });

  it('a batch with a compressed prompt and ragged inspections matches one-by-one generation', async () => {
    const D = config.llm.hidden;
    const rows = T.keep(T.randn([2, D], { seed: 9, std: 0.5 }));
    try {
      const compress = (_c: CandidateInput, i: number) => (i === 3 ? rows : null);
      const reqs = [
        { query, candidates, compress },
        { query: { text: 'a green one' }, candidates: candidates.slice(0, 3) },
      ];
      const prefixOpts = { maxNewTokens: 5, temperature: 0, seed: 1, maxInspections: 2, stopTokens: [] as number[], returnLogProbs: true };
      const prefix = [sp.thinkStart, sp.inspectStart, ...enc('2'), sp.inspectEnd];
      const batched = await rerankGenerateBatch(model, reqs, { ...prefixOpts, prefix });
      const full = rerankParts(query, candidates);
      expect(batched[0].promptTokens).toBe(model.layout(full.parts).length - tok.encode('a green circle').length + 2);
      for (let b = 0; b < 2; b++) {
        const one = await rerankGenerate(model, reqs[b].query, reqs[b].candidates, { ...prefixOpts, prefix, compress: reqs[b].compress });
        expect(batched[b].tokens).toEqual(one.tokens);
        expect(batched[b].inspections).toEqual([2]);
        expectClose(batched[b].logProbs!, one.logProbs!, 1e-4, 1e-4, `log-probs of sequence ${b}`);
      }
    } finally {
      rows.dispose();
    }
  });
});
