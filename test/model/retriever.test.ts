// The first-stage retriever: batched embeddings of mixed inputs (shape, unit norm, batch
// invariance), checkpoints, InfoNCE logits with duplicate masking, and training on a tiny
// synthetic task (coloured shapes vs captions, words vs glosses) until every query finds
// its positive, with a resume that reproduces an uninterrupted run.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { backward, crossEntropy, fromArray, linear, noGrad, reshape, slice, tidy } from '../../runtime/index.ts';
import { type Preprocessed, preprocess } from '../../model/image.ts';
import { Mllm, type MllmConfig } from '../../model/mllm.ts';
import { PRESETS, withVocab } from '../../model/presets.ts';
import { DEFAULT_PROMPT, type EmbedRole, Retriever, l2Normalize } from '../../model/retriever.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { trigramCounts } from '../../model/trigrams.ts';
import { TfIdf } from '../../model/lexical.ts';
import { type Triple, arrayTripleSource, contrastiveLogits, latestCheckpoint, rankGroupsWithRetriever, rankWithRetriever, taskBatchedTripleSource, keywordPairNames, parseTaskWeights, trainRetriever, withKeywordPairs } from '../../train/retriever.ts';
import { KEYWORD_TEMPLATES } from '../../train/data/emoji-benchmark.ts';
import type { ImageStore } from '../../train/data/inputs.ts';
import { computeRecall } from '../../train/eval/recall.ts';
import { expectClose } from '../helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-retriever-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const captions = ['a red square', 'a green circle', 'a blue triangle', 'a yellow cross'];
const words = ['sun', 'moon', 'rain', 'snow'];
const glosses = ['hot and bright', 'pale at night', 'wet drops', 'cold flakes'];
const promptText = DEFAULT_PROMPT.prefix + DEFAULT_PROMPT.suffix;
const tok = trainBpe([...captions, ...words, ...glosses, promptText, promptText], { vocabSize: PRESETS.tiny.vocabSize });
const cfg = withVocab(PRESETS.tiny, tok.vocabSize);
const config: MllmConfig = { architectures: ['RetrvMllm'], preset: 'tiny', llm: cfg.llm, vision: cfg.vision, imageSize: PRESETS.tiny.imageSize };
const E = 32;

/** A 32x32 picture: a coloured shape on white, distinct per class. */
function picture(k: number, size = 32): Preprocessed {
  const S = size;
  const c0 = S / 2;
  const r = (9 * S) / 32;
  const rgba = new Uint8Array(S * S * 4).fill(255);
  const colours = [[220, 30, 30], [30, 200, 30], [30, 30, 220], [230, 220, 20]];
  for (let y = 0; y < S; y++) {
    for (let x = 0; x < S; x++) {
      const dx = x - c0, dy = y - c0;
      const inside = [Math.abs(dx) < r && Math.abs(dy) < r, dx * dx + dy * dy < r * r, dy > -r && Math.abs(dx) < (dy + r) / 2, Math.abs(dx) < r / 3 || Math.abs(dy) < r / 3][k];
      if (inside) rgba.set([...colours[k], 255], (y * S + x) * 4);
    }
  }
  return preprocess({ width: S, height: S, rgba }, { patchSize: config.vision.patchSize, mergeSize: 2, targetSize: S });
}

const embedRows = async (r: Retriever, inputs: Parameters<Retriever['embed']>[0], role?: EmbedRole) => {
  const t = noGrad(() => tidy(() => r.embed(inputs, role)));
  const a = (await t.toArray()) as Float32Array;
  const shape = [...t.shape];
  t.dispose();
  return { a, shape };
};

/** float64 dot product. */
const dot = (x: ArrayLike<number>, y: ArrayLike<number>) => Array.from(x).reduce((acc, v, j) => acc + v * y[j], 0);
/** Row i of a row-major matrix of width n. */
const row = (m: Float32Array, i: number, n: number) => m.subarray(i * n, (i + 1) * n);
/** Two texts' TF-IDF cosine from the sparse weights (the reference for the dense rows). */
function tfidfCosine(tfidf: TfIdf, x: string, y: string): number {
  const a = tfidf.weights(x);
  let s = 0;
  for (const [g, v] of tfidf.weights(y)) s += v * (a.get(g) ?? 0);
  return s;
}

/** One InfoNCE backward pass over two text pairs (gradients left on the retriever's tensors). */
const TEXT_PAIRS: Triple[] = [
  { query: { text: 'sun' }, positive: { text: 'hot and bright' } },
  { query: { text: 'snow' }, positive: { text: 'cold flakes' } },
];
function textInfoNceStep(r: Retriever): void {
  tidy(() => {
    const { logits, targets } = contrastiveLogits(r, TEXT_PAIRS, fromArray([20], [1]));
    backward(crossEntropy(logits, targets));
  });
}

describe('retriever embeddings', () => {
  it('embeds a mixed batch with shape [N, E], unit rows, and the same rows as one at a time', async () => {
    const r = Retriever.create(config, tok, E, 1);
    // Images of two sizes (a 2x2 and a 4x4 merged grid) exercise the vision encoder's mixed batch.
    const inputs = [{ text: 'a red square' }, { image: picture(0) }, { image: picture(2), text: 'blue' }, { text: 'moon' }, { image: picture(1, 64) }];
    const { a, shape } = await embedRows(r, inputs);
    expect(shape).toEqual([inputs.length, E]);
    for (let i = 0; i < inputs.length; i++) {
      let n = 0;
      for (let j = 0; j < E; j++) n += a[i * E + j] ** 2;
      expect(Math.sqrt(n)).toBeCloseTo(1, 5);
    }
    for (let i = 0; i < inputs.length; i++) {
      const one = await embedRows(r, [inputs[i]]);
      expectClose(one.a, a.subarray(i * E, (i + 1) * E), 2e-5, 1e-4, `input ${i} alone vs in the batch`);
    }
    // The same as the backbone's own single-sequence path (sequence.ts embedLayout), so the
    // batched assembly of token and image rows puts every image row where it belongs.
    for (const i of [2, 4]) {
      const l = r.layout(inputs[i]);
      const ref = noGrad(() =>
        tidy(() => {
          const h = r.mllm.llm.forwardEmbeds(reshape(r.mllm.embed(l), [1, l.length, config.llm.hidden]), fromArray(l.positions, [3, 1, l.length], 'i32'));
          return l2Normalize(linear(slice(reshape(h, [l.length, config.llm.hidden]), 0, l.length - 1, l.length), r.proj));
        }),
      );
      expectClose(await ref.toArray(), a.subarray(i * E, (i + 1) * E), 2e-5, 1e-4, `input ${i} vs the single-sequence path`);
      ref.dispose();
    }
    // Different contents give different embeddings.
    const d = (i: number, j: number) => Math.max(...Array.from({ length: E }, (_, c) => Math.abs(a[i * E + c] - a[j * E + c])));
    expect(d(0, 3)).toBeGreaterThan(1e-3);
    expect(d(1, 2)).toBeGreaterThan(1e-3);
    expect(() => r.embed([])).toThrow(/at least one input/);
    expect(() => r.embed([{}])).toThrow(/text, an image, or both/);
    r.dispose();
  });

  /** Final hidden states [L, D] of one input through the backbone's single-sequence path. */
  const hiddenRows = async (r: Retriever, x: Parameters<Retriever['embed']>[0][number]) => {
    const D = config.llm.hidden;
    const l = r.layout(x);
    const h = noGrad(() => tidy(() => reshape(r.mllm.llm.forwardEmbeds(reshape(r.mllm.embed(l), [1, l.length, D]), fromArray(l.positions, [3, 1, l.length], 'i32')), [l.length, D])));
    const rows = (await h.toArray()) as Float32Array;
    h.dispose();
    return { rows, from: tok.encode(DEFAULT_PROMPT.prefix).length, to: l.length - tok.encode(DEFAULT_PROMPT.suffix).length };
  };
  const unit = (y: ArrayLike<number>) => {
    const n = Math.hypot(...Array.from(y));
    return Array.from(y, (v) => v / n);
  };

  it('mean pooling averages the content positions of the single-sequence path, batched or not, and survives a checkpoint', async () => {
    const r = Retriever.create(config, tok, E, 3, DEFAULT_PROMPT, 'mean');
    const inputs = [{ text: 'a red square' }, { image: picture(2), text: 'blue' }, { text: 'moon' }, { image: picture(1, 64) }];
    const { a } = await embedRows(r, inputs);
    const D = config.llm.hidden;
    for (let i = 0; i < inputs.length; i++) {
      const { rows, from, to } = await hiddenRows(r, inputs[i]);
      // Host mean over the content span, then the projection and normalisation on the host.
      const mean = new Float64Array(D);
      for (let t = from; t < to; t++) for (let c = 0; c < D; c++) mean[c] += rows[t * D + c] / (to - from);
      const w = (await r.proj.toArray()) as Float32Array;
      const y = Array.from({ length: E }, (_, e) => mean.reduce((acc, m, c) => acc + m * w[e * D + c], 0));
      expectClose(unit(y), a.subarray(i * E, (i + 1) * E), 2e-5, 1e-4, `mean-pooled input ${i}`);
      const one = await embedRows(r, [inputs[i]]);
      expectClose(one.a, a.subarray(i * E, (i + 1) * E), 2e-5, 1e-4, `mean-pooled input ${i} alone vs in the batch`);
    }
    await r.save(join(dir, 'mean'));
    const back = await Retriever.load(join(dir, 'mean'));
    expect(back.pooling).toBe('mean');
    expectClose((await embedRows(back, inputs)).a, a, 1e-6, 1e-6, 'reloaded');
    back.dispose();
    r.dispose();
    expect(() => Retriever.create(config, tok, E, 3, DEFAULT_PROMPT, 'max' as 'mean')).toThrow(/pooling must be one of last, mean, bag-max, mean\+bag-max, got 'max'/);
  });

  it('bag-max pooling keeps each ReLU feature\'s maximum over the content positions, wider than the hidden size, batched or not', async () => {
    const W = 3 * config.llm.hidden;
    const D = config.llm.hidden;
    const r = Retriever.create(config, tok, W, 4, DEFAULT_PROMPT, 'bag-max');
    const inputs = [{ text: 'a red square' }, { image: picture(2), text: 'blue' }, { text: 'moon' }, { image: picture(1, 64) }];
    const { a, shape } = await embedRows(r, inputs);
    expect(shape).toEqual([inputs.length, W]);
    const w = (await r.proj.toArray()) as Float32Array;
    let zeros = 0;
    for (let i = 0; i < inputs.length; i++) {
      const { rows, from, to } = await hiddenRows(r, inputs[i]);
      // Host reference in float64: project each content row, ReLU, maximum per feature.
      const y = new Float64Array(W);
      for (let t = from; t < to; t++) {
        for (let e = 0; e < W; e++) {
          let v = 0;
          for (let c = 0; c < D; c++) v += rows[t * D + c] * w[e * D + c];
          y[e] = Math.max(y[e], v);
        }
      }
      zeros += y.filter((v) => v === 0).length;
      expectClose(unit(y), a.subarray(i * W, (i + 1) * W), 2e-5, 1e-4, `bag-max input ${i}`);
      const one = await embedRows(r, [inputs[i]]);
      expectClose(one.a, a.subarray(i * W, (i + 1) * W), 2e-5, 1e-4, `bag-max input ${i} alone vs in the batch`);
    }
    // Some features are off for some inputs (the ReLU matters) but not most of them.
    expect(zeros).toBeGreaterThan(0);
    expect(zeros).toBeLessThan((inputs.length * W) / 2);
    await r.save(join(dir, 'bag'));
    const back = await Retriever.load(join(dir, 'bag'));
    expect(back.pooling).toBe('bag-max');
    expect(back.embedDim).toBe(W);
    expectClose((await embedRows(back, inputs)).a, a, 1e-6, 1e-6, 'reloaded');
    back.dispose();
    r.dispose();
  });

  it('mean+bag-max pooling: the mean half and the bag half each unit-norm over sqrt 2, and the gradient reaches both halves of the projection', async () => {
    const W = 2 * config.llm.hidden;
    const D = config.llm.hidden;
    const half = W / 2;
    const r = Retriever.create(config, tok, W, 6, DEFAULT_PROMPT, 'mean+bag-max');
    const inputs = [{ text: 'a green circle' }, { image: picture(3), text: 'cross' }];
    const { a } = await embedRows(r, inputs);
    const w = (await r.proj.toArray()) as Float32Array;
    for (let i = 0; i < inputs.length; i++) {
      const { rows, from, to } = await hiddenRows(r, inputs[i]);
      const mean = new Float64Array(D);
      for (let t = from; t < to; t++) for (let c = 0; c < D; c++) mean[c] += rows[t * D + c] / (to - from);
      const m = Array.from({ length: half }, (_, e) => mean.reduce((acc, v, c) => acc + v * w[e * D + c], 0));
      const bag = new Float64Array(half);
      for (let t = from; t < to; t++) {
        for (let e = 0; e < half; e++) {
          let v = 0;
          for (let c = 0; c < D; c++) v += rows[t * D + c] * w[(half + e) * D + c];
          bag[e] = Math.max(bag[e], v);
        }
      }
      const ref = [...unit(m), ...unit(bag)].map((v) => v * Math.SQRT1_2);
      expectClose(ref, a.subarray(i * W, (i + 1) * W), 2e-5, 1e-4, `mean+bag-max input ${i}`);
    }
    // One InfoNCE step's gradient on the projection is non-zero in both halves.
    textInfoNceStep(r);
    const gv = (await r.proj.grad!.toArray()) as Float32Array;
    const norm = (from: number, to: number) => Math.hypot(...gv.subarray(from * D, to * D));
    expect(norm(0, half)).toBeGreaterThan(1e-6);
    expect(norm(half, W)).toBeGreaterThan(1e-6);
    r.dispose();
    expect(() => Retriever.create(config, tok, 33, 6, DEFAULT_PROMPT, 'mean+bag-max')).toThrow(/embedDim must be even, got 33/);
  });

  it('trigram part: the counts of the text\'s letter trigrams through the table, unit-norm over sqrt 2 beside the pooled part, zero without text; its gradient reaches only the buckets used', async () => {
    const trigrams = { buckets: 61, dim: 12 };
    const r = Retriever.create(config, tok, E, 7, DEFAULT_PROMPT, 'mean', trigrams);
    expect(r.embedDim).toBe(E + trigrams.dim);
    expect(r.projDim).toBe(E);
    // The same backbone and projection without the trigram part (shared tensors, disposed once).
    const plain = new Retriever(r.mllm, r.proj, { embedDim: E, pooling: 'mean' });
    const inputs = [{ text: 'a red square' }, { image: picture(2), text: 'blue moon' }, { image: picture(1) }];
    const { a, shape } = await embedRows(r, inputs);
    expect(shape).toEqual([3, E + trigrams.dim]);
    const pooled = (await embedRows(plain, inputs)).a;
    const table = (await r.trigramTable!.toArray()) as Float32Array;
    const texts = ['a red square', 'blue moon', ''];
    const counts = trigramCounts(texts, trigrams.buckets);
    const W = E + trigrams.dim;
    for (let i = 0; i < inputs.length; i++) {
      expectClose(pooled.subarray(i * E, (i + 1) * E).map((v) => v * Math.SQRT1_2), a.subarray(i * W, i * W + E), 1e-6, 1e-6, `pooled part of input ${i}`);
      const lex = new Float64Array(trigrams.dim);
      for (let b = 0; b < trigrams.buckets; b++) for (let d = 0; d < trigrams.dim; d++) lex[d] += counts[i * trigrams.buckets + b] * table[b * trigrams.dim + d];
      const n = Math.hypot(...lex);
      const ref = [...lex].map((v) => (n ? v / n : 0) * Math.SQRT1_2);
      expectClose(ref, a.subarray(i * W + E, (i + 1) * W), 2e-6, 1e-5, `trigram part of input ${i}`);
    }
    expect(a.subarray(2 * W + E, 3 * W).every((v) => v === 0)).toBe(true);
    // InfoNCE between texts: the table's gradient is zero on every bucket none of the texts uses.
    textInfoNceStep(r);
    const g = (await r.trigramTable!.grad!.toArray()) as Float32Array;
    const used = trigramCounts([TEXT_PAIRS.map((p) => `${p.query.text} ${p.positive.text}`).join(' ')], trigrams.buckets);
    for (let b = 0; b < trigrams.buckets; b++) {
      const norm = Math.hypot(...g.subarray(b * trigrams.dim, (b + 1) * trigrams.dim));
      if (used[b]) expect(norm, `bucket ${b}`).toBeGreaterThan(0);
      else expect(norm, `bucket ${b}`).toBe(0);
    }
    await r.save(join(dir, 'tri'));
    const back = await Retriever.load(join(dir, 'tri'));
    expect(back.config.retriever.trigrams).toEqual(trigrams);
    expect(back.embedDim).toBe(W);
    expectClose((await embedRows(back, inputs)).a, a, 0, 0, 'reloaded');
    back.dispose();
    r.dispose();
    expect(() => Retriever.create(config, tok, E, 7, DEFAULT_PROMPT, 'mean', { buckets: 0, dim: 4 })).toThrow(/trigram buckets and dim must be positive integers, got 0 and 4/);
  });

  it('lexical part: a text\'s dense part times sqrt(1 - w) beside its TF-IDF row times sqrt(w), a text-free input\'s dense part whole; reloads exact; bad settings refused', async () => {
    const r = Retriever.create(config, tok, E, 7, DEFAULT_PROMPT, 'mean');
    const tfidf = TfIdf.fit([...captions, ...glosses]);
    const w = 0.3;
    const hybrid = r.withLexical({ tfidf, weight: w });
    expect(hybrid.embedDim).toBe(E + tfidf.size);
    expect(hybrid.config.retriever.lexical).toEqual({ weight: w, grams: tfidf.size });
    const inputs = [{ text: 'a red square' }, { text: 'a red circle qqq' }, { image: picture(2), text: 'blue moon' }, { image: picture(1) }];
    const texts = ['a red square', 'a red circle qqq', 'blue moon', ''];
    const { a, shape } = await embedRows(hybrid, inputs);
    const W = E + tfidf.size;
    expect(shape).toEqual([4, W]);
    const dense = (await embedRows(r, inputs)).a;
    const lex = tfidf.dense(texts);
    for (let i = 0; i < inputs.length; i++) {
      const s = texts[i] ? Math.sqrt(1 - w) : 1;
      expectClose(dense.subarray(i * E, (i + 1) * E).map((v) => v * s), a.subarray(i * W, i * W + E), 1e-6, 1e-6, `dense part of input ${i}`);
      expectClose(lex.subarray(i * tfidf.size, (i + 1) * tfidf.size).map((v) => v * Math.sqrt(w)), a.subarray(i * W + E, (i + 1) * W), 1e-6, 1e-6, `lexical part of input ${i}`);
    }
    // Between two texts the score is (1 - w) dense cosine + w TF-IDF cosine (float64 reference from the sparse weights).
    const sparse = tfidfCosine(tfidf, texts[0], texts[1]);
    expect(sparse).toBeGreaterThan(0.1);
    expect(dot(row(a, 0, W), row(a, 1, W))).toBeCloseTo((1 - w) * dot(row(dense, 0, E), row(dense, 1, E)) + w * sparse, 5);
    // An image query against texts: the dense cosine times the same sqrt(1 - w) for each, so the order is the dense part's.
    expect(dot(row(a, 3, W), row(a, 0, W))).toBeCloseTo(Math.sqrt(1 - w) * dot(row(dense, 3, E), row(dense, 0, E)), 5);
    await hybrid.save(join(dir, 'lex'));
    const back = await Retriever.load(join(dir, 'lex'));
    expect(back.config.retriever.lexical).toEqual({ weight: w, grams: tfidf.size });
    expectClose((await embedRows(back, inputs)).a, a, 0, 0, 'reloaded');
    back.dispose();
    rmSync(join(dir, 'lex', 'lexical.json'));
    await expect(Retriever.load(join(dir, 'lex'))).rejects.toThrow(/has a lexical part but lexical.json is missing/);
    expect(() => r.withLexical({ tfidf, weight: 1 })).toThrow(/lexical weight must be between 0 and 1 \(exclusive\), got 1/);
    expect(() => r.withLexical({ tfidf: TfIdf.fit(['']), weight: 0.5 })).toThrow(/empty vocabulary/);
    r.dispose();
  });

  it('text expert: a text\'s expert embedding of its text times sqrt(we) between the dense and lexical parts, zero without text; scores and reload as the shares say', async () => {
    const r = Retriever.create(config, tok, E, 7, DEFAULT_PROMPT, 'mean');
    const expertModel = Retriever.create(config, tok, 24, 9, DEFAULT_PROMPT, 'bag-max');
    const tfidf = TfIdf.fit([...captions, ...glosses]);
    const [we, wl] = [0.3, 0.5];
    const hybrid = r.withLexical({ tfidf, weight: wl }).withTextExpert({ model: expertModel, weight: we });
    expect(hybrid.textWeights()).toEqual({ dense: 1 - we - wl, expert: we, lexical: wl });
    const V = tfidf.size;
    const W = E + 24 + V;
    expect(hybrid.embedDim).toBe(W);
    const inputs = [{ text: 'a red square' }, { text: 'a green circle' }, { image: picture(2), text: 'blue moon' }, { image: picture(1) }];
    const texts = ['a red square', 'a green circle', 'blue moon', ''];
    const { a } = await embedRows(hybrid, inputs);
    const dense = (await embedRows(r, inputs)).a;
    const ex = (await embedRows(expertModel, texts.slice(0, 3).map((text) => ({ text })))).a;
    for (let i = 0; i < inputs.length; i++) {
      const s = texts[i] ? Math.sqrt(1 - we - wl) : 1;
      expectClose(dense.subarray(i * E, (i + 1) * E).map((v) => v * s), a.subarray(i * W, i * W + E), 1e-6, 1e-6, `dense part of input ${i}`);
      const ref = texts[i] ? ex.subarray(i * 24, (i + 1) * 24).map((v) => v * Math.sqrt(we)) : new Float32Array(24);
      expectClose(ref, a.subarray(i * W + E, i * W + E + 24), 1e-5, 1e-5, `expert part of input ${i}`);
    }
    // Between two texts: the three cosines by their shares (float64 reference).
    const sparse = tfidfCosine(tfidf, texts[0], texts[1]);
    const want = (1 - we - wl) * dot(row(dense, 0, E), row(dense, 1, E)) + we * dot(row(ex, 0, 24), row(ex, 1, 24)) + wl * sparse;
    expect(dot(row(a, 0, W), row(a, 1, W))).toBeCloseTo(want, 5);
    await hybrid.save(join(dir, 'expert'));
    expect(existsSync(join(dir, 'expert', 'text-expert', 'config.json'))).toBe(true);
    const back = await Retriever.load(join(dir, 'expert'));
    expect(back.config.retriever).toMatchObject({ textExpert: { weight: we }, lexical: { weight: wl } });
    expectClose((await embedRows(back, inputs)).a, a, 0, 0, 'reloaded');
    back.dispose();
    expect(() => r.withLexical({ tfidf, weight: 0.6 }).withTextExpert({ model: expertModel, weight: 0.4 })).toThrow(/must leave the dense part a share/);
    expect(() => r.withTextExpert({ model: hybrid, weight: 0.2 })).toThrow(/must be a plain dense retriever/);
    rmSync(join(dir, 'expert', 'text-expert'), { recursive: true });
    await expect(Retriever.load(join(dir, 'expert'))).rejects.toThrow(/has a text expert but text-expert\/config.json is missing/);
    hybrid.dispose();
  });

  it('text -> image expert: a text-only query carries it whole, an image candidate times sqrt(w) beside its other parts times sqrt(1 - w), every other input a zero part; the index embeds by role', async () => {
    const r = Retriever.create(config, tok, E, 7, DEFAULT_PROMPT, 'mean');
    const model = Retriever.create(config, tok, 20, 11, DEFAULT_PROMPT, 'mean');
    const w = 0.8;
    const hybrid = r.withTextImageExpert({ model, weight: w });
    const W = E + 20;
    expect(hybrid.embedDim).toBe(W);
    const inputs = [{ text: 'a red square' }, { image: picture(0) }, { image: picture(1), text: 'blue moon' }];
    const dense = (await embedRows(r, inputs)).a;
    const ex = (await embedRows(model, inputs)).a;
    const q = (await embedRows(hybrid, inputs, 'query')).a;
    const c = (await embedRows(hybrid, inputs, 'candidate')).a;
    const none = (await embedRows(hybrid, inputs)).a;
    const zeros = new Float32Array(20);
    // Queries: the text-only one carries the expert whole; the others a zero part; dense parts as they were.
    expectClose([...row(dense, 0, E), ...row(ex, 0, 20)], row(q, 0, W), 1e-5, 1e-5, 'text query');
    expectClose([...row(dense, 1, E), ...zeros], row(q, 1, W), 1e-6, 1e-6, 'image query');
    expectClose([...row(dense, 2, E), ...zeros], row(q, 2, W), 1e-6, 1e-6, 'image + text query');
    // Candidates: the image-only one is [sqrt(1 - w) dense, sqrt(w) expert]; texts keep a zero part.
    expectClose([...row(dense, 1, E).map((v) => v * Math.sqrt(1 - w)), ...row(ex, 1, 20).map((v) => v * Math.sqrt(w))], row(c, 1, W), 1e-5, 1e-5, 'image candidate');
    expectClose([...row(dense, 0, E), ...zeros], row(c, 0, W), 1e-6, 1e-6, 'text candidate');
    expectClose([...row(dense, 2, E), ...zeros], row(c, 2, W), 1e-6, 1e-6, 'image + text candidate');
    // Without a role nobody carries it.
    for (let i = 0; i < 3; i++) expectClose([...row(dense, i, E), ...zeros], row(none, i, W), 1e-6, 1e-6, `no role, input ${i}`);
    // The index embeds its pool as candidates and the queries as queries: text -> image ranks by the mix.
    const pool = [0, 1, 2, 3].map((k) => ({ id: `img${k}`, input: { image: picture(k) } }));
    const ranked = await rankWithRetriever(hybrid, pool, [{ qid: 'q', input: { text: 'a blue triangle' } }], 4);
    const qd = (await embedRows(r, [{ text: 'a blue triangle' }])).a;
    const qe = (await embedRows(model, [{ text: 'a blue triangle' }])).a;
    const pd = (await embedRows(r, pool.map((p) => p.input))).a;
    const pe = (await embedRows(model, pool.map((p) => p.input))).a;
    const score = (k: number) => Math.sqrt(1 - w) * dot(qd, row(pd, k, E)) + Math.sqrt(w) * dot(qe, row(pe, k, 20));
    expect(ranked.get('q')).toEqual([0, 1, 2, 3].sort((x, y) => score(y) - score(x)).map((k) => `img${k}`));
    await hybrid.save(join(dir, 't2i'));
    const back = await Retriever.load(join(dir, 't2i'));
    expect(back.config.retriever.textImageExpert).toEqual({ weight: w });
    expectClose((await embedRows(back, inputs, 'candidate')).a, c, 0, 0, 'reloaded');
    back.dispose();
    expect(() => contrastiveLogits(hybrid, TEXT_PAIRS, fromArray([20], [1]))).toThrow(/train the dense model, then attach the expert/);
    expect(() => r.withTextImageExpert({ model, weight: 1 })).toThrow(/text -> image expert's weight must be between 0 and 1/);
    hybrid.dispose();
  });

  it('saves and loads a checkpoint, and starts from a base model checkpoint', async () => {
    const r = Retriever.create(config, tok, E, 2);
    const inputs = [{ text: 'a blue triangle' }, { image: picture(3) }];
    const before = await embedRows(r, inputs);
    await r.save(join(dir, 'ck'));
    const again = await Retriever.load(join(dir, 'ck'));
    expect(again.embedDim).toBe(E);
    expect(again.config.retriever.prompt).toEqual(DEFAULT_PROMPT);
    expectClose((await embedRows(again, inputs)).a, before.a, 0, 0, 'embeddings after reload');
    await expect(Mllm.load(join(dir, 'ck'))).rejects.toThrow(/unexpected retriever\.proj\.weight/);

    // A retriever from a base MLLM checkpoint has the base's backbone weights.
    const base = Mllm.create(config, tok, 5);
    await base.save(join(dir, 'base'));
    const fromBase = await Retriever.fromBase(join(dir, 'base'), 16, 3);
    const name = 'model.layers.1.mlp.up_proj.weight';
    expectClose(await fromBase.mllm.params.get(name)!.toArray(), await base.params.get(name)!.toArray(), 0, 0, name);
    expect((await embedRows(fromBase, inputs)).shape).toEqual([2, 16]);
    await expect(Retriever.load(join(dir, 'base'))).rejects.toThrow(/not a retrv retriever config/);
    for (const m of [r, again, fromBase]) m.dispose();
    for (const t of base.parameterList()) t.dispose();
  });
});

describe('retriever training', () => {
  // 4 image -> caption triples (M-BEIR task 3) and 4 word -> gloss triples (task 1). Two
  // image triples carry a hard negative that is another triple's positive: the row of
  // that triple masks it (a duplicate of its own positive is not a negative).
  const triples: Triple[] = [
    ...captions.map((c, k) => ({
      query: { image: picture(k) },
      positive: { text: c },
      positiveId: `cap${k}`,
      ...(k < 2 ? { negative: { text: captions[k + 1] }, negativeId: `cap${k + 1}` } : {}),
    })),
    ...words.map((w, k) => ({ query: { text: w }, positive: { text: glosses[k] }, positiveId: `gloss${k}` })),
  ];

  it('masks a column that repeats a row\'s positive', async () => {
    const r = Retriever.create(config, tok, E, 4);
    const batch = [triples[0], triples[1], triples[2]];
    const { logits, targets } = noGrad(() => tidy(() => contrastiveLogits(r, batch, fromArray([20], [1]))));
    // Columns: positives cap0 cap1 cap2, negatives cap1 (of row 0) cap2 (of row 1).
    expect(logits.shape).toEqual([3, 5]);
    const l = await logits.toArray();
    const masked = [[1, 3], [2, 4]]; // row 1: column 3 (cap1 again); row 2: column 4 (cap2 again)
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 5; j++) {
        const isMasked = masked.some(([a, b]) => a === i && b === j);
        if (isMasked) expect(l[i * 5 + j]).toBeLessThan(-9000);
        else expect(Math.abs(l[i * 5 + j])).toBeLessThanOrEqual(20 + 1e-4);
      }
    }
    expect(Array.from(await targets.toArray())).toEqual([0, 1, 2]);
    logits.dispose();
    targets.dispose();
    r.dispose();
  });

  it('a hybrid retriever\'s logits: (1 - w) dense + w TF-IDF cosine between texts, the dense cosine alone for every other pair', async () => {
    const r = Retriever.create(config, tok, E, 4);
    const tfidf = TfIdf.fit([...captions, ...words, ...glosses]);
    const w = 0.6;
    const hybrid = r.withLexical({ tfidf, weight: w });
    // Image -> text with a text negative, text -> text, and an image -> image pair.
    const batch: Triple[] = [triples[0], triples[5], { query: { image: picture(2) }, positive: { image: picture(3) }, positiveId: 'img3' }];
    const { logits } = noGrad(() => tidy(() => contrastiveLogits(hybrid, batch, fromArray([20], [1]))));
    const l = (await logits.toArray()) as Float32Array;
    logits.dispose();
    const queries = batch.map((t) => t.query);
    const cols = [...batch.map((t) => t.positive), batch[0].negative!];
    const dq = (await embedRows(r, queries)).a;
    const dc = (await embedRows(r, cols)).a;
    const textOf = (x: { text?: string }) => x.text ?? '';
    expect(logits.shape).toEqual([3, 4]);
    let textPairs = 0;
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 4; j++) {
        const d = dot(row(dq, i, E), row(dc, j, E));
        const both = !!textOf(queries[i]) && !!textOf(cols[j]);
        if (both) textPairs++;
        const ref = 20 * (both ? (1 - w) * d + w * tfidfCosine(tfidf, textOf(queries[i]), textOf(cols[j])) : d);
        expect(l[i * 4 + j], `row ${i}, column ${j}`).toBeCloseTo(ref, 3);
      }
    }
    expect(textPairs).toBe(3); // the text query against the three text columns
    r.dispose();
  });

  it('task-batched triples: one task per batch, tasks in turn, each task in its own seeded order, deterministic', () => {
    // 10 triples of task 3, 6 of task 1, 2 of task 6 (too few for a batch of 3).
    const tasks = [...Array(10).fill(3), ...Array(6).fill(1), 6, 6];
    const ts: Triple[] = tasks.map((t, i) => ({ query: { text: `q${i}` }, positive: { text: `p${i}` }, positiveId: `t${t}:${i}` }));
    const src = taskBatchedTripleSource(ts, tasks, 5);
    const taskOfBatch = (b: Triple[]) => [...new Set(b.map((t) => t.positiveId!.split(':')[0]))];
    const batches = Array.from({ length: 8 }, (_, s) => src.batch(s, 3) as Triple[]);
    expect(batches.map(taskOfBatch)).toEqual([['t1'], ['t3'], ['t1'], ['t3'], ['t1'], ['t3'], ['t1'], ['t3']]);
    // Task 1 has 6 triples: its first two batches (steps 0 and 2) are one epoch, each triple once.
    expect(new Set([...batches[0], ...batches[2]].map((t) => t.positiveId)).size).toBe(6);
    // Task 3: three batches per epoch (steps 1, 3, 5) without repeats.
    expect(new Set([...batches[1], ...batches[3], ...batches[5]].map((t) => t.positiveId)).size).toBe(9);
    expect(taskBatchedTripleSource(ts, tasks, 5).batch(5, 3)).toEqual(batches[5]);
    expect(() => taskBatchedTripleSource(ts, tasks.slice(1))).toThrow(/18 triples but 17 task ids/);
    expect(() => src.batch(0, 11)).toThrow(/no task has 11 triples/);
  });

  it('task weights: a task with w turns gets w of each cycle\'s batches, still one epoch without repeats, and unweighted batches stay as they were', () => {
    const tasks = [...Array(10).fill(3), ...Array(6).fill(1), 6, 6];
    const ts: Triple[] = tasks.map((t, i) => ({ query: { text: `q${i}` }, positive: { text: `p${i}` }, positiveId: `t${t}:${i}` }));
    const taskOfBatch = (b: Triple[]) => b[0].positiveId!.split(':')[0];
    const src = taskBatchedTripleSource(ts, tasks, 5, { 3: 2 });
    const batches = Array.from({ length: 9 }, (_, s) => src.batch(s, 3) as Triple[]);
    expect(batches.map(taskOfBatch)).toEqual(['t1', 't3', 't3', 't1', 't3', 't3', 't1', 't3', 't3']);
    // Task 3's first three batches (steps 1, 2, 4) are one epoch of 9 distinct triples, in the unweighted source's order.
    expect(new Set([...batches[1], ...batches[2], ...batches[4]].map((t) => t.positiveId)).size).toBe(9);
    const plain = taskBatchedTripleSource(ts, tasks, 5);
    expect([batches[1], batches[2], batches[4], batches[5]]).toEqual([plain.batch(1, 3), plain.batch(3, 3), plain.batch(5, 3), plain.batch(7, 3)]);
    expect([batches[0], batches[3]]).toEqual([plain.batch(0, 3), plain.batch(2, 3)]);
    expect(parseTaskWeights('1:3, 4:2', '--w')).toEqual({ 1: 3, 4: 2 });
    expect(parseTaskWeights('', '--w')).toEqual({});
    expect(() => parseTaskWeights('1:0', '--w')).toThrow(/--w: '1:0' is not <task id>:<turns>/);
    expect(() => parseTaskWeights('1:2,1:3', '--w')).toThrow(/task 1 is given twice/);
    expect(() => taskBatchedTripleSource(ts, tasks, 5, { 3: 1.5 })).toThrow(/task 3's weight must be a whole number/);
  });

  it('keyword pairs: their share of each batch, 1 to 3 of the name\'s keywords -> the name, a same-subcategory negative, the same batch for the same step', async () => {
    const names = [
      { did: 'n:sun', keywords: ['hot', 'bright', 'day'], subcategory: 'sky' },
      { did: 'n:moon', keywords: ['night', 'pale'], subcategory: 'sky' },
      { did: 'n:rain', keywords: ['wet', 'drops', 'cloud', 'grey'], subcategory: 'weather' },
      { did: 'n:snow', keywords: ['cold', 'flakes'], subcategory: 'weather' },
      { did: 'n:fog', keywords: ['grey'], subcategory: 'mist' },
      { did: 'n:none', keywords: [], subcategory: 'sky' },
    ];
    const byDid = new Map(['sun', 'moon', 'rain', 'snow', 'fog', 'none'].map((w) => [`n:${w}`, { did: `n:${w}`, txt: w, img_path: null, modality: 'text' as const }]));
    const images = {} as ImageStore; // text candidates never reach it
    const base = arrayTripleSource(Array.from({ length: 12 }, (_, i) => ({ query: { text: `q${i}` }, positive: { text: `p${i}` }, positiveId: `t:${i}` })), 1);
    const src = withKeywordPairs(base, names, byDid, images, 0.5, 3);
    const seen = new Set<string>();
    for (let step = 0; step < 6; step++) {
      const b = await src.batch(step, 6);
      expect(b).toHaveLength(6);
      // The first half is the base source's own batch; the rest are keyword pairs.
      expect(b.slice(0, 3)).toEqual((await base.batch(step, 6)).slice(0, 3));
      for (const t of b.slice(3)) {
        const n = names.find((x) => x.did === t.positiveId)!;
        expect(n.keywords.length).toBeGreaterThan(0);
        expect(t.positive).toEqual({ text: byDid.get(n.did)!.txt });
        // The phrase is a task-1 template over 1 to 3 of the name's keywords, in the order written.
        const used = n.keywords.filter((k) => t.query.text!.includes(k)).sort((x, y) => t.query.text!.indexOf(x) - t.query.text!.indexOf(y));
        expect(used.length, t.query.text).toBeGreaterThanOrEqual(1);
        expect(used.length, t.query.text).toBeLessThanOrEqual(3);
        expect(KEYWORD_TEMPLATES.some((f) => f(used) === t.query.text), t.query.text).toBe(true);
        if (t.negativeId) {
          expect(t.negativeId).not.toBe(n.did);
          expect(names.find((x) => x.did === t.negativeId)!.subcategory).toBe(n.subcategory);
        } else expect(n.did).toBe('n:fog'); // alone in its subcategory
        seen.add(t.query.text!);
      }
      expect(new Set(b.slice(3).map((t) => t.positiveId)).size).toBe(3);
      expect(await src.batch(step, 6)).toEqual(b);
    }
    expect(seen.size).toBeGreaterThan(6); // fresh phrasings across steps
    // Two names for three pair slots: both are drawn once, and the source fills the rest.
    const two = await withKeywordPairs(base, names.slice(0, 2), byDid, images, 0.5, 3).batch(0, 6);
    expect(two).toHaveLength(6);
    expect(new Set(two.filter((t) => t.positiveId!.startsWith('n:')).map((t) => t.positiveId))).toEqual(new Set(['n:sun', 'n:moon']));
    expect(two.filter((t) => t.positiveId!.startsWith('t:'))).toEqual((await base.batch(0, 6)).slice(0, 4));
    expect(() => withKeywordPairs(base, names, byDid, images, 1)).toThrow(/share must be between 0 and 1/);
    await expect(keywordPairNames(dir)).rejects.toThrow(/keyword pairs need the names' keywords in .*attributes\.jsonl, which this benchmark lacks/);
    expect(() => withKeywordPairs(base, names.slice(4), byDid, images, 0.5)).toThrow(/1 names with keywords in the pool \(need at least 2\)/);
  });

  it('InfoNCE on a tiny synthetic task reaches in-batch accuracy 1 and Recall@1 far above random', async () => {
    const lines: string[] = [];
    const t0 = performance.now();
    const { retriever, history } = await trainRetriever(() => Retriever.create(config, tok, E, 3), arrayTripleSource(triples, 1), {
      steps: 40,
      batchSize: 8,
      lr: 3e-3,
      warmup: 3,
      logEvery: 10,
      log: (l) => lines.push(l),
    });
    console.log(`${lines.join('\n')}\ntrained in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    expect(lines).toHaveLength(4);
    expect(lines[0]).toMatch(/^retriever step 10\/40 {2}loss \d+\.\d{4} {2}in-batch acc \d\.\d{3} {2}tau 0\.0500/);
    expect(history).toHaveLength(40);
    expect(history.at(-1)!.loss).toBeLessThan(history[0].loss / 10);
    expect(history.slice(-3).every((h) => h.accuracy === 1)).toBe(true);

    // Retrieval over the pool of all 8 positives: random Recall@1 would be 1/8.
    const pool = [...captions.map((c, k) => ({ id: `cap${k}`, input: { text: c } })), ...glosses.map((g, k) => ({ id: `gloss${k}`, input: { text: g } }))];
    const queries = triples.map((t, i) => ({ qid: `q${i}`, input: t.query }));
    const progress: number[] = [];
    const ranked = await rankWithRetriever(retriever, pool, queries, 5, { batchSize: 3, onProgress: (done) => progress.push(done) });
    expect(progress).toEqual([3, 6, 8]);
    const report = computeRecall(triples.map((t, i) => ({ qid: `q${i}`, task_id: i < 4 ? 3 : 1, pos_cand_list: [t.positiveId!] })), ranked, [1, 5]);
    expect(report.micro['R@1']).toBeGreaterThanOrEqual(0.75);
    for (const t of report.tasks) expect(t.recall['R@1']).toBeGreaterThanOrEqual(0.5);

    // Two groups whose pools overlap: each candidate is embedded once (progress counts the
    // 8 distinct ones), and each group's ranking is the whole pool's ranking kept to its own pool.
    const whole = await rankWithRetriever(retriever, pool, queries, pool.length);
    const groupA = pool.filter((_, i) => i < 4 || i % 2 === 0);
    const groupB = pool.slice(2);
    const totals = new Set<number>();
    const grouped = await rankGroupsWithRetriever(
      retriever,
      [
        { pool: groupA, queries: queries.slice(0, 4), k: 3 },
        { pool: groupB, queries: queries.slice(4), k: 3 },
      ],
      { batchSize: 3, onProgress: (_done, total) => totals.add(total) },
    );
    expect([...totals]).toEqual([pool.length]);
    queries.forEach((q, i) => {
      const own = new Set((i < 4 ? groupA : groupB).map((c) => c.id));
      expect(grouped.get(q.qid)).toEqual(whole.get(q.qid)!.filter((id) => own.has(id)).slice(0, 3));
    });
    retriever.dispose();
  });

  it('a resumed run repeats the uninterrupted one (learned temperature, checkpoints pruned)', async () => {
    // A flat schedule (minLr = lr): the interrupted run is a shorter run, so a cosine over
    // its own length would differ from the uninterrupted one's.
    const opts = { batchSize: 4, lr: 2e-3, minLr: 2e-3, learnTemperature: true, temperature: 0.1, logEvery: 0 } as const;
    const init = () => Retriever.create(config, tok, E, 7);
    const straight = await trainRetriever(init, arrayTripleSource(triples, 2), { ...opts, steps: 4 });
    const out = join(dir, 'run');
    const first = await trainRetriever(init, arrayTripleSource(triples, 2), { ...opts, steps: 2, outDir: out, checkpointEvery: 1, keep: 2 });
    expect(first.history.map((h) => h.loss)).toEqual(straight.history.slice(0, 2).map((h) => h.loss));
    expect(latestCheckpoint(out)?.step).toBe(2);
    expect(readdirSync(out).filter((d) => d.startsWith('step-')).sort()).toEqual(['step-000001', 'step-000002']);
    const lines: string[] = [];
    const second = await trainRetriever(() => {
      throw new Error('init must not run when resuming');
    }, arrayTripleSource(triples, 2), { ...opts, steps: 4, outDir: out, resume: true, checkpointEvery: 1, keep: 2, log: (l) => lines.push(l) });
    expect(lines[0]).toMatch(/resumed from .*step-000002 at step 2/);
    expect(second.startStep).toBe(2);
    expect(second.history.map((h) => h.step)).toEqual([3, 4]);
    // The learned temperature moved, and the resumed steps match the uninterrupted ones.
    expect(straight.history.at(-1)!.temperature).not.toBe(0.1);
    expectClose(second.history.map((h) => h.loss), straight.history.slice(2).map((h) => h.loss), 1e-5, 1e-4, 'losses after resume');
    expectClose(second.history.map((h) => h.temperature), straight.history.slice(2).map((h) => h.temperature), 1e-6, 1e-5, 'temperature after resume');
    expect(readdirSync(out).filter((d) => d.startsWith('step-')).sort()).toEqual(['step-000003', 'step-000004']);
    expect(existsSync(join(out, 'step-000004', 'optimizer.safetensors'))).toBe(true);
    for (const m of [straight.retriever, first.retriever, second.retriever]) m.dispose();
  });
});
