import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../../runtime/index.ts';
import { Llm, type LlmConfig, parameterShapes } from '../../model/llm.ts';
import { KvCache } from '../../model/kv-cache.ts';
import { type Positions, Session, generate, positionTensor, textPositions } from '../../model/generate.ts';
import { expectClose, rng } from '../helpers.ts';

const base: LlmConfig = {
  vocabSize: 64,
  hidden: 32,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  mlp: 48,
  ropeTheta: 10000,
  rmsEps: 1e-6,
  tieEmbeddings: true,
};
// M-RoPE: head dim 8, rotary half 4 split into temporal / height / width sections.
const mrope: LlmConfig = { ...base, ropeSections: [2, 1, 1], tieEmbeddings: false };

/** Random weights well away from initParameters' near-uniform logits (so argmaxes are clear). */
function tinyModel(c: LlmConfig, seed: number): Llm {
  const params = new Map<string, T.Tensor>();
  let k = 0;
  for (const [name, shape] of Object.entries(parameterShapes(c))) {
    const s = seed * 1000 + k++;
    let t: T.Tensor;
    if (name.endsWith('norm.weight')) t = T.randn(shape, { seed: s, mean: 1, std: 0.1 });
    else if (name.endsWith('.bias')) t = T.randn(shape, { seed: s, std: 0.1 });
    else t = T.randn(shape, { seed: s, std: name.includes('embed') || name.includes('lm_head') ? 0.3 : 0.25 });
    t.name = name;
    params.set(name, T.keep(t));
  }
  return new Llm(c, params);
}

const model = tinyModel(base, 1);
const mmodel = tinyModel(mrope, 2);
afterAll(() => {
  for (const m of [model, mmodel]) for (const t of m.params.values()) t.dispose();
});

function randTokens(n: number, seed: number, V = base.vocabSize): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => Math.floor(r() * V));
}

/** Full (uncached) forward of one sequence: logits [T, V] as a flat array. */
async function fullLogits(m: Llm, tokens: number[], positions?: Positions): Promise<Float32Array> {
  return T.tidyAsync(async () =>
    T.noGrad(() => {
      const ids = T.fromArray(Int32Array.from(tokens), [1, tokens.length], 'i32');
      return m.forward(ids, positionTensor(m.config, [positions ?? textPositions(0, tokens.length)]));
    }).toArray() as Promise<Float32Array>,
  );
}

/** Row `row` of a flat [rows, V] array. */
const rowOf = (a: ArrayLike<number>, row: number, V: number) => Array.from(a).slice(row * V, (row + 1) * V);

async function sessionRows(s: Session): Promise<number[][]> {
  const V = s.model.config.vocabSize;
  const all = await s.logits().toArray();
  return Array.from({ length: s.batch }, (_, b) => rowOf(all, b, V));
}

function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

function logSoftmax64(row: ArrayLike<number>): number[] {
  let m = -Infinity;
  for (const v of Array.from(row)) m = Math.max(m, v);
  let s = 0;
  for (const v of Array.from(row)) s += Math.exp(v - m);
  const lse = m + Math.log(s);
  return Array.from(row, (v) => v - lse);
}

describe('KV-cache decoding', () => {
  it('matches a full forward at every step, with ragged prompts, ragged appends and cache growth', async () => {
    const V = base.vocabSize;
    const histories = [randTokens(5, 11), randTokens(2, 12), randTokens(7, 13)];
    // A small capacity forces the cache to grow (GPU copy) twice on the way.
    const s = new Session(model, 3, { capacity: 8 });
    try {
      s.prefill(histories);
      const check = async (what: string) => {
        const got = await sessionRows(s);
        for (let b = 0; b < 3; b++) {
          const want = await fullLogits(model, histories[b]);
          expectClose(got[b], rowOf(want, histories[b].length - 1, V), 1e-4, 1e-4, `${what}, sequence ${b}`);
        }
      };
      await check('prefill');
      for (let t = 0; t < 4; t++) {
        const next = [0, 1, 2].map((b) => randTokens(1, 100 * t + b)[0]);
        s.append(next.map((x) => [x]));
        next.forEach((x, b) => histories[b].push(x));
        await check(`decode step ${t}`);
      }
      // Mid-decode appends of different lengths; sequence 1 appends nothing (keeps its logits).
      const extra = [randTokens(6, 21), null, randTokens(3, 23)];
      s.append(extra);
      extra.forEach((x, b) => x && histories[b].push(...x));
      await check('ragged append');
      // GPU-resident ids (the sampler's path).
      s.appendIds(T.keep(T.fromArray([5, 6, 7], [3], 'i32')));
      [5, 6, 7].forEach((x, b) => histories[b].push(x));
      await check('appendIds');
      expect(s.cache.capacity).toBeGreaterThanOrEqual(s.length);
      expect(s.cache.capacity).toBeGreaterThan(8);
      expect(s.nextPosition).toEqual(histories.map((h) => h.length));
    } finally {
      s.dispose();
    }
  });

  it('appending embeddings (M-RoPE positions) mid-decode matches a full forward over the whole context', async () => {
    const c = mrope;
    const D = c.hidden;
    const r = rng(5);
    // Per sequence: a text prompt, an "image" of n rows with grid positions, then text.
    const prompts = [randTokens(3, 31), randTokens(5, 32)];
    const imgRows = [4, 2];
    const imgData = imgRows.map((n) => Float32Array.from({ length: n * D }, () => r() * 2 - 1));
    const tail = [randTokens(2, 33), randTokens(4, 34)];
    const s = new Session(mmodel, 2, { capacity: 32 });
    const imgs = imgData.map((d, b) => T.keep(T.fromArray(d, [imgRows[b], D])));
    try {
      s.prefill(prompts);
      // Image positions: temporal = start, height / width = a 2-wide grid from start.
      const imgPos = imgRows.map((n, b) => {
        const st = prompts[b].length;
        return [new Array(n).fill(st), textPositions(0, n).map((i) => st + Math.floor(i / 2)), textPositions(0, n).map((i) => st + (i % 2))];
      });
      s.append(imgs.map((e, b) => ({ embeds: e, positions: imgPos[b] })));
      // Text after the image continues from the largest position + 1 (Qwen2-VL).
      expect(s.nextPosition).toEqual(imgPos.map((p) => Math.max(...p.flat()) + 1));
      s.append(tail);
      // Mixed chunk: sequence 0 gets embeddings, sequence 1 a token.
      const more = T.keep(T.fromArray(Float32Array.from({ length: 2 * D }, () => r() * 2 - 1), [2, D]));
      s.append([{ embeds: more }, [9]]);

      const got = await sessionRows(s);
      for (let b = 0; b < 2; b++) {
        const want = await T.tidyAsync(async () =>
          T.noGrad(() => {
            const parts = [mmodel.embed(T.fromArray(Int32Array.from(prompts[b]), [1, prompts[b].length], 'i32')), T.reshape(imgs[b], [1, imgRows[b], D])];
            parts.push(mmodel.embed(T.fromArray(Int32Array.from(tail[b]), [1, tail[b].length], 'i32')));
            parts.push(b === 0 ? T.reshape(more, [1, 2, D]) : mmodel.embed(T.fromArray([9], [1, 1], 'i32')));
            const x = T.concat(parts, 1);
            const n = x.shape[1];
            const p0 = textPositions(0, prompts[b].length);
            const after = Math.max(...imgPos[b].flat()) + 1;
            const rest = textPositions(after, n - prompts[b].length - imgRows[b]);
            const rows = [0, 1, 2].map((sIdx) => [...p0, ...imgPos[b][sIdx], ...rest]);
            const h = mmodel.forwardEmbeds(x, positionTensor(c, [rows]));
            return mmodel.head(T.slice(h, 1, n - 1, n));
          }).toArray(),
        );
        expectClose(got[b], Array.from(want), 1e-4, 1e-4, `embeds, sequence ${b}`);
      }
      more.dispose();
    } finally {
      for (const e of imgs) e.dispose();
      s.dispose();
    }
  });

  it('KvCache checks shapes and capacity, and grows on reserve', () => {
    const cache = new KvCache({ batch: 2, layers: 1, kvHeads: 2, headDim: 4, capacity: 3 });
    try {
      T.tidy(() => {
        expect(() => cache.write(0, T.zeros([2, 1, 2, 4]), T.zeros([2, 1, 2, 4]))).toThrow(/\[2, 1, 2, 4\].*\[2, 2, 2, 4\]/);
        expect(() => cache.write(0, T.zeros([2, 2, 5, 4]), T.zeros([2, 2, 5, 4]))).toThrow(/exceed the capacity 3/);
        cache.reserve(5);
        expect(cache.capacity).toBe(6);
        cache.write(0, T.zeros([2, 2, 5, 4]), T.zeros([2, 2, 5, 4]));
        cache.advance(5);
        expect(cache.keys(0).shape).toEqual([2, 2, 5, 4]);
        expect(cache.keyPadding()).toBeUndefined();
      });
    } finally {
      cache.dispose();
    }
    expect(() => cache.keys(0)).toThrow(/after dispose/);
  });
});

describe('generate', () => {
  const prompts = [randTokens(4, 41), randTokens(1, 42), randTokens(6, 43)];

  it('batched greedy generation equals one-by-one generation (prompts of different lengths) and the full-forward argmax', async () => {
    const batched = await generate(model, prompts, { maxNewTokens: 6, temperature: 0 });
    for (let b = 0; b < prompts.length; b++) {
      const single = await generate(model, [prompts[b]], { maxNewTokens: 6, temperature: 0 });
      expect(batched.tokens[b]).toEqual(single.tokens[0]);
      expect(batched.finishReason[b]).toBe('length');
      // Each greedy token is the argmax of a full forward over the context so far.
      const ctx = [...prompts[b], ...batched.tokens[b]];
      const logits = await fullLogits(model, ctx);
      batched.tokens[b].forEach((tok, t) => expect(tok).toBe(argmax(rowOf(logits, prompts[b].length - 1 + t, base.vocabSize))));
    }
    expect(batched.tokens.every((t) => t.length === 6)).toBe(true);
  });

  it('stop tokens end a sequence (others continue); maxNewTokens is respected', async () => {
    const free = await generate(model, prompts, { maxNewTokens: 7, temperature: 0 });
    // Stop on sequence 0's third token.
    const stopTok = free.tokens[0][2];
    const res = await generate(model, prompts, { maxNewTokens: 7, temperature: 0, stopTokens: [stopTok] });
    for (let b = 0; b < prompts.length; b++) {
      const first = free.tokens[b].indexOf(stopTok);
      if (first >= 0) {
        expect(res.tokens[b]).toEqual(free.tokens[b].slice(0, first + 1));
        expect(res.finishReason[b]).toBe('stop');
      } else {
        expect(res.tokens[b]).toEqual(free.tokens[b]);
        expect(res.finishReason[b]).toBe('length');
      }
    }
    expect(res.tokens[0].length).toBeLessThanOrEqual(3);
    const short = await generate(model, prompts, { maxNewTokens: 2, temperature: 0.8, seed: 3 });
    expect(short.tokens.map((t) => t.length)).toEqual([2, 2, 2]);
    const none = await generate(model, prompts, { maxNewTokens: 0 });
    expect(none.tokens).toEqual([[], [], []]);
  });

  it('sampling: the same seed gives the same samples, another seed others; log-probs equal a full forward log-softmax', async () => {
    const opts = { maxNewTokens: 8, temperature: 1, topP: 0.95, seed: 7, returnLogProbs: true };
    const a = await generate(model, prompts, opts);
    const b = await generate(model, prompts, opts);
    expect(b.tokens).toEqual(a.tokens);
    const c = await generate(model, prompts, { ...opts, seed: 8 });
    expect(c.tokens).not.toEqual(a.tokens);
    for (let s = 0; s < prompts.length; s++) {
      const ctx = [...prompts[s], ...a.tokens[s]];
      const logits = await fullLogits(model, ctx);
      const want = a.tokens[s].map((tok, t) => logSoftmax64(rowOf(logits, prompts[s].length - 1 + t, base.vocabSize))[tok]);
      expectClose(a.logProbs![s], want, 1e-4, 1e-4, `log-probs of sequence ${s}`);
    }
  });

  it('onToken can splice tokens into one running sequence (details inspection); decoding continues over them', async () => {
    const inserted = randTokens(5, 51);
    const res = await generate(model, prompts, {
      maxNewTokens: 5,
      temperature: 0,
      onToken: (e) => (e.step === 1 ? [null, inserted, null] : undefined),
    });
    expect(res.insertions).toEqual([[], [{ at: 2, tokens: inserted }], []]);
    // Sequence 1's context: prompt, 2 sampled, the insertion, 3 sampled; each sampled token is the full-forward argmax.
    const toks = res.tokens[1];
    const ctx = [...prompts[1], ...toks.slice(0, 2), ...inserted, ...toks.slice(2)];
    const logits = await fullLogits(model, ctx);
    const V = base.vocabSize;
    const at = (i: number) => argmax(rowOf(logits, i, V));
    const p = prompts[1].length;
    expect(toks[0]).toBe(at(p - 1));
    expect(toks[1]).toBe(at(p));
    for (let t = 2; t < 5; t++) expect(toks[t]).toBe(at(p + inserted.length + t - 1));
    // The other sequences are untouched by the splice.
    const plain = await generate(model, prompts, { maxNewTokens: 5, temperature: 0 });
    expect(res.tokens[0]).toEqual(plain.tokens[0]);
    expect(res.tokens[2]).toEqual(plain.tokens[2]);
  });

  it('accepts a left-padded batch of prompt embeddings', async () => {
    const lens = [2, 4];
    const res = await T.tidyAsync(async () => {
      // Row 0's first 2 rows are padding (junk that must be ignored).
      const ids = [0, 0, ...prompts[0].slice(0, 2), ...prompts[2].slice(0, 4)];
      const e = T.noGrad(() => model.embed(T.fromArray(Int32Array.from(ids), [2, 4], 'i32')));
      const junk = T.noGrad(() => T.concat([T.mulScalar(T.slice(e, 1, 0, 2), 30), T.slice(e, 1, 2, 4)], 1));
      return generate(model, { embeds: T.concat([T.slice(junk, 0, 0, 1), T.slice(e, 0, 1, 2)], 0), lengths: lens }, { maxNewTokens: 4, temperature: 0 });
    });
    const want = await generate(model, [prompts[0].slice(0, 2), prompts[2].slice(0, 4)], { maxNewTokens: 4, temperature: 0 });
    expect(res.tokens).toEqual(want.tokens);
  });

  it('reads back at most once per decode step', async () => {
    for (const returnLogProbs of [false, true]) {
      const before = T.stats().readbacks;
      const res = await generate(model, prompts, { maxNewTokens: 6, temperature: 1, seed: 1, returnLogProbs });
      const steps = Math.max(...res.tokens.map((t) => t.length));
      expect(steps).toBe(6);
      expect(T.stats().readbacks - before).toBeLessThanOrEqual(steps);
    }
  });

  it('frees what it allocates', async () => {
    await generate(model, prompts, { maxNewTokens: 2, temperature: 0 }); // warm the pool
    const before = T.stats().bytesInUse;
    await generate(model, prompts, { maxNewTokens: 5, temperature: 0.7, seed: 2, returnLogProbs: true, onToken: (e) => (e.step === 0 ? [[1, 2], null, null] : undefined) });
    expect(T.stats().bytesInUse).toBe(before);
  });
});
