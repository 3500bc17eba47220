// The multimodal model: sequence layout and M-RoPE positions, the compression hook,
// a tiny model overfitting one batch of image+text examples, and checkpoint round trip.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AdamW, backward, crossEntropy, fromArray, mul, noGrad, requireGrad, reshape, sum, tidy, zeros } from '../../runtime/index.ts';
import { type Preprocessed, preprocess } from '../../model/image.ts';
import { Mllm, type MllmConfig } from '../../model/mllm.ts';
import { PRESETS, withVocab } from '../../model/presets.ts';
import { rerankParts } from '../../model/sequence.ts';
import { SPECIAL, trainBpe } from '../../model/tokenizer.ts';
import { expectClose } from '../helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-mllm-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const captions = ['a red square', 'a green circle', 'a blue triangle', 'a yellow cross'];
const tok = trainBpe([captions.join('\n'), 'shapes and colours of simple pictures'], { vocabSize: 320 });
const preset = PRESETS.tiny;
const cfg = withVocab(preset, tok.vocabSize);
const config: MllmConfig = { architectures: ['RetrvMllm'], preset: 'tiny', llm: cfg.llm, vision: cfg.vision, imageSize: preset.imageSize };

/** A 32x32 picture: a coloured shape on white, distinct per class. */
function picture(k: number): Preprocessed {
  const S = 32;
  const rgba = new Uint8Array(S * S * 4).fill(255);
  const colours = [[220, 30, 30], [30, 200, 30], [30, 30, 220], [230, 220, 20]];
  for (let y = 0; y < S; y++) {
    for (let x = 0; x < S; x++) {
      const dx = x - 16, dy = y - 16;
      const inside = [Math.abs(dx) < 9 && Math.abs(dy) < 9, dx * dx + dy * dy < 81, dy > -9 && Math.abs(dx) < (dy + 9) / 2, Math.abs(dx) < 3 || Math.abs(dy) < 3][k];
      if (!inside) continue;
      rgba.set([...colours[k], 255], (y * S + x) * 4);
    }
  }
  return preprocess({ width: S, height: S, rgba }, { patchSize: config.vision.patchSize, mergeSize: 2, targetSize: S });
}

describe('multimodal model', () => {
  it('lays out text and images with Qwen2-VL M-RoPE positions', () => {
    const model = Mllm.create(config, tok, 1);
    const img = picture(0); // 32 px, patch 8: a 4x4 patch grid, 2x2 after the merge
    const l = model.layout([{ ids: [5, 6] }, { image: img }, { ids: [7] }]);
    // ids: 5 6 <vs> [4 image tokens] <ve> 7
    expect(l.length).toBe(2 + 1 + 4 + 1 + 1);
    const T = l.length;
    const row = (r: number) => [...l.positions.subarray(r * T, (r + 1) * T)];
    expect(row(0)).toEqual([0, 1, 2, 3, 3, 3, 3, 5, 6]);
    expect(row(1)).toEqual([0, 1, 2, 3, 3, 4, 4, 5, 6]);
    expect(row(2)).toEqual([0, 1, 2, 3, 4, 3, 4, 5, 6]);
    expect(l.ids[3]).toBe(tok.specialIds.imagePad);
    for (const t of model.params.values()) t.dispose();
  });

  it('the compression hook replaces a candidate by its rows and spans name every part', () => {
    const model = Mllm.create(config, tok, 1);
    const cands = captions.map((text) => ({ text }));
    const full = rerankParts({ text: 'red' }, cands);
    const lf = model.layout(full.parts, full.marks);
    const two = zeros([2, config.llm.hidden]);
    const comp = rerankParts({ text: 'red' }, cands, { compress: (_c, i) => (i === 1 ? two : null) });
    const lc = model.layout(comp.parts, comp.marks);
    const span = (l: typeof lf, label: string) => l.spans.find((s) => s.label === label)!;
    expect(span(lc, 'cand:1').end - span(lc, 'cand:1').start).toBe(2);
    expect(span(lf, 'cand:1').end - span(lf, 'cand:1').start).toBe(tok.encode('a green circle').length);
    expect(lf.length - lc.length).toBe(tok.encode('a green circle').length - 2);
    expect(tok.decode(lf.ids.slice(span(lf, 'cand:3').start, span(lf, 'cand:3').end))).toBe('a yellow cross');
    two.dispose();
    for (const t of model.params.values()) t.dispose();
  });

  it('a batch is embedded in one pass: every row from its source, zero padding, gradients to the given rows', async () => {
    const model = Mllm.create(config, tok, 4);
    const D = config.llm.hidden;
    const given = requireGrad(fromArray(Float32Array.from({ length: 2 * D }, (_, i) => Math.sin(i)), [2, D]));
    const layouts = [
      model.layout([{ ids: [5, 6] }, { image: picture(0) }, { embeds: given }, { ids: [7] }]),
      model.layout([{ ids: [8] }]),
      model.layout([{ image: picture(1) }, { ids: [9, 10] }]),
    ];
    const batch = model.batch(layouts);
    const T = Math.max(...layouts.map((l) => l.length));
    expect(batch.embeds.shape).toEqual([3, T, D]);
    const got = await batch.embeds.toArray();
    const table = await model.llm.p('model.embed_tokens.weight').toArray();
    // An image's rows from a sequence of its own: batching must not mix images.
    const imageRows = async (k: number) => {
      const l = model.layout([{ image: picture(k) }]);
      const e = await noGrad(() => model.embed(l)).toArray();
      return { e, at: l.pieces.find((p) => p.kind === 'image')!.start };
    };
    const images = [await imageRows(0), await imageRows(1)];
    const givenRows = await given.toArray();
    let imageCount = 0;
    layouts.forEach((l, b) => {
      for (const p of l.pieces) {
        const n = p.kind === 'tokens' ? p.ids.length : p.kind === 'image' ? p.rows : p.embeds.shape[0];
        const img = p.kind === 'image' ? images[imageCount++] : null;
        for (let r = 0; r < n; r++) {
          const want = p.kind === 'tokens' ? table.subarray(p.ids[r] * D, (p.ids[r] + 1) * D) : p.kind === 'image' ? img!.e.subarray((img!.at + r) * D, (img!.at + r + 1) * D) : givenRows.subarray(r * D, (r + 1) * D);
          const i = (b * T + p.start + r) * D;
          expectClose(got.subarray(i, i + D), want, 1e-5, 1e-4, `sequence ${b} row ${p.start + r} (${p.kind})`);
        }
      }
      for (let t = l.length; t < T; t++) expect(got.subarray((b * T + t) * D, (b * T + t + 1) * D).every((v) => v === 0)).toBe(true);
    });
    // The given rows get exactly the gradient of their two positions.
    const R = Float32Array.from({ length: 3 * T * D }, (_, i) => Math.cos(i));
    backward(sum(mul(batch.embeds, fromArray(R, [3, T, D]))));
    const at = layouts[0].pieces.find((p) => p.kind === 'embeds')!.start;
    expectClose(await given.grad!.toArray(), R.subarray(at * D, (at + 2) * D), 1e-6, 1e-6, 'gradient of the given rows');
    given.dispose();
    for (const t of model.params.values()) t.dispose();
  });

  it('labels replace the numbers written before the candidates, and must match their count', () => {
    const cands = captions.slice(0, 3).map((text) => ({ text }));
    const text = (p: ReturnType<typeof rerankParts>) => p.parts.map((x) => ('text' in x ? x.text : '')).join('');
    expect(text(rerankParts({ text: 'red' }, cands))).toContain(`${SPECIAL.candStart}0 a red square`);
    const labelled = text(rerankParts({ text: 'red' }, cands, { labels: [2, 9, 14] }));
    expect(labelled).toContain(`${SPECIAL.candStart}2 ${captions[0]}${SPECIAL.candEnd}`);
    expect(labelled).toContain(`${SPECIAL.candStart}9 ${captions[1]}${SPECIAL.candEnd}`);
    expect(labelled).toContain(`${SPECIAL.candStart}14 ${captions[2]}${SPECIAL.candEnd}`);
    expect(labelled).not.toContain(`${SPECIAL.candStart}0 `);
    expect(() => rerankParts({ text: 'red' }, cands, { labels: [1, 2] })).toThrow(/2 labels for 3 candidates/);
  });

  it('a tiny model overfits one batch of image+caption examples, and a checkpoint reloads it', async () => {
    const model = Mllm.create(config, tok, 2);
    const layouts = captions.map((c, k) => model.layout([{ image: picture(k) }, { text: c }, { ids: [tok.specialIds.endOfText] }], [{ at: 1, label: 'caption', until: 3 }]));
    // Next-token targets; only caption tokens (and the end token) count.
    const T = Math.max(...layouts.map((l) => l.length));
    const B = layouts.length;
    const targets = new Int32Array(B * T).fill(-100);
    layouts.forEach((l, b) => {
      const s = l.spans[0];
      for (let t = s.start; t < s.end; t++) targets[b * T + t - 1] = l.ids[t];
    });
    const params = model.parameterList();
    const opt = new AdamW(params, { lr: 1e-2, weightDecay: 0 });
    const losses: number[] = [];
    for (let step = 0; step < 100; step++) {
      const loss = tidy(() => {
        const { logits } = model.forward(layouts);
        const l = crossEntropy(reshape(logits, [B * T, tok.vocabSize]), fromArray(targets, [B * T], 'i32'));
        backward(l);
        opt.step();
        opt.zeroGrad();
        return l;
      });
      losses.push(await loss.item());
      loss.dispose();
    }
    expect(losses.at(-1)!).toBeLessThan(losses[0] / 5);
    // The colour and shape words can only be predicted from the image: without it the loss
    // could not fall below ln(4) per ambiguous token, about 0.3 averaged over the captions.
    expect(losses.at(-1)!).toBeLessThan(0.05);
    const before = await noGrad(() => tidy(() => model.forward(layouts).logits)).toArray();
    await model.save(join(dir, 'ck'));
    const again = await Mllm.load(join(dir, 'ck'));
    const after = await noGrad(() => tidy(() => again.forward(layouts).logits)).toArray();
    expectClose(after, before, 0, 0, 'logits after reload');
    opt.dispose();
    for (const t of [...params, ...again.parameterList()]) t.dispose();
  });
});
