// The Information Compression Module: output shape and the rerank hook, padding
// invariance, the mean-of-tokens start, centring over the list, index tags, gradients to every
// parameter and input (both relation kinds) against finite differences of a float64 CPU
// reference, and the checkpoint round trip.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type Tensor, noGrad, tidy } from '../../runtime/index.ts';
import { Icm, type IcmConfig, ICM_WEIGHTS_FILE, compressHook, embedContents, icmConfigFor, icmParameterShapes } from '../../model/icm.ts';
import { type Preprocessed, preprocess } from '../../model/image.ts';
import { Mllm, type MllmConfig } from '../../model/mllm.ts';
import { PRESETS, withVocab } from '../../model/presets.ts';
import { rerankParts } from '../../model/sequence.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { checkOp, expectClose, prod, randArray } from '../helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-icm-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const tok = trainBpe(['a red square, a green circle, a blue triangle', 'which picture shows a shape of this colour?'], { vocabSize: 300 });
const preset = PRESETS.tiny;
const cfg = withVocab(preset, tok.vocabSize);
const config: MllmConfig = { architectures: ['RetrvMllm'], preset: 'tiny', llm: cfg.llm, vision: cfg.vision, imageSize: preset.imageSize };

function picture(seed: number): Preprocessed {
  const S = 32;
  const r = randArray(S * S * 4, seed, 0, 255);
  const rgba = Uint8Array.from(r, (v, i) => (i % 4 === 3 ? 255 : v));
  return preprocess({ width: S, height: S, rgba }, { patchSize: config.vision.patchSize, mergeSize: 2, targetSize: S });
}

const query = { text: 'which picture shows a red square?' };
const candidates = [{ text: 'a red square' }, { image: picture(1) }, { text: 'a blue triangle', image: picture(2) }, { text: 'circle' }];

// ---------------------------------------------------------------- float64 reference

type P = Record<string, Float64Array>;

function rms(x: Float64Array, n: number, D: number, w: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(n * D);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let d = 0; d < D; d++) s += x[i * D + d] ** 2;
    const r = 1 / Math.sqrt(s / D + eps);
    for (let d = 0; d < D; d++) y[i * D + d] = x[i * D + d] * r * w[d];
  }
  return y;
}

function lin(x: Float64Array, n: number, W: Float64Array, D: number): Float64Array {
  const y = new Float64Array(n * D);
  for (let i = 0; i < n; i++) for (let o = 0; o < D; o++) {
    let s = 0;
    for (let d = 0; d < D; d++) s += x[i * D + d] * W[o * D + d];
    y[i * D + o] = s;
  }
  return y;
}

/** Attention of block b: queries qx [Tq, D], keys from kx, values from vx (both [Tk, D]). */
function mha(p: P, b: string, qx: Float64Array, Tq: number, kx: Float64Array, vx: Float64Array, Tk: number, c: IcmConfig): Float64Array {
  const D = c.hidden;
  const dh = D / c.heads;
  const q = lin(qx, Tq, p[`icm.${b}.q_proj.weight`], D);
  const k = lin(kx, Tk, p[`icm.${b}.k_proj.weight`], D);
  const v = lin(vx, Tk, p[`icm.${b}.v_proj.weight`], D);
  const out = new Float64Array(Tq * D);
  for (let h = 0; h < c.heads; h++) for (let i = 0; i < Tq; i++) {
    const s = new Float64Array(Tk);
    for (let j = 0; j < Tk; j++) {
      let dot = 0;
      for (let d = 0; d < dh; d++) dot += q[i * D + h * dh + d] * k[j * D + h * dh + d];
      s[j] = dot / Math.sqrt(dh);
    }
    const m = Math.max(...s);
    let z = 0;
    for (let j = 0; j < Tk; j++) z += (s[j] = Math.exp(s[j] - m));
    for (let j = 0; j < Tk; j++) for (let d = 0; d < dh; d++) out[i * D + h * dh + d] += (s[j] / z) * v[j * D + h * dh + d];
  }
  return lin(out, Tq, p[`icm.${b}.o_proj.weight`], D);
}

/** [K, 2, D] flat, as Icm.compressEmbeds. */
function reference(p: P, cands: Float64Array[], queries: Float64Array[], queryOf: number[], c: IcmConfig): Float64Array {
  const D = c.hidden;
  const out = new Float64Array(cands.length * 2 * D);
  // compare: the mean row of the candidates that read query j, taken from both sides.
  const listMean = queries.map((_, j) => {
    const m = new Float64Array(D);
    let rows = 0;
    cands.forEach((tc, i) => {
      if (queryOf[i] !== j) return;
      for (let k = 0; k < tc.length; k++) m[k % D] += tc[k];
      rows += tc.length / D;
    });
    return m.map((v) => v / rows);
  });
  const centred = (x: Float64Array, j: number) => x.map((v, k) => v - listMean[j][k % D]);
  cands.forEach((tc, i) => {
    const n = tc.length / D;
    const tq = queries[queryOf[i]];
    const m = tq.length / D;
    const tcon = mha(p, 'con', p['icm.con_query'], 1, rms(tc, n, D, p['icm.con.kv_norm.weight'], c.rmsEps), tc, n, c);
    let R: Float64Array;
    if (c.relation === 'compare') {
      // Each list-centred candidate token's value row times the mix of list-centred query
      // rows it read, both at unit RMS.
      const cc = centred(tc, queryOf[i]);
      const qc = centred(tq, queryOf[i]);
      const mixed = mha(p, 'cross', rms(cc, n, D, p['icm.cross.q_norm.weight'], c.rmsEps), n, rms(qc, m, D, p['icm.cross.kv_norm.weight'], c.rmsEps), qc, m, c);
      const unit = new Float64Array(D).fill(1);
      const a = rms(mixed, n, D, unit, c.rmsEps);
      const b = rms(lin(cc, n, p['icm.cross.v_proj.weight'], D), n, D, unit, c.rmsEps);
      R = a.map((v, j) => v * b[j]);
    } else {
      R = mha(p, 'cross', rms(tc, n, D, p['icm.cross.q_norm.weight'], c.rmsEps), n, rms(tq, m, D, p['icm.cross.kv_norm.weight'], c.rmsEps), tq, m, c);
    }
    const trel = mha(p, 'rel', p['icm.rel_query'], 1, rms(R, n, D, p['icm.rel.kv_norm.weight'], c.rmsEps), R, n, c);
    out.set(tcon, i * 2 * D);
    out.set(trel, i * 2 * D + D);
  });
  return out;
}

const disposeAll = (ts: Iterable<Tensor>) => {
  for (const t of ts) t.dispose();
};

describe('information compression module', () => {
  it('gives [K, 2, D] rows that the rerank prompt takes in place of each candidate', async () => {
    const model = Mllm.create(config, tok, 3);
    const icm = Icm.create(icmConfigFor(config), 5);
    await tidy(() => {
      const rows = noGrad(() => icm.compressMany(model, query, candidates));
      expect(rows.shape).toEqual([candidates.length, 2, config.llm.hidden]);
      const { parts, marks } = rerankParts(query, candidates, { compress: compressHook(rows) });
      const layout = model.layout(parts, marks);
      for (let i = 0; i < candidates.length; i++) {
        const s = layout.spans.find((x) => x.label === `cand:${i}`)!;
        expect(s.end - s.start).toBe(2);
      }
      const { logits } = noGrad(() => model.forward([layout]));
      expect(logits.shape).toEqual([1, layout.length, tok.vocabSize]);
      return null;
    });
    icm.dispose();
    disposeAll(model.parameterList());
  });

  it('with relation mix, compresses a candidate alike alone and in a padded batch, and starts t_con at its mean token', async () => {
    const model = Mllm.create(config, tok, 4);
    const icm = Icm.create({ ...icmConfigFor(config), relation: 'mix' }, 6);
    const D = config.llm.hidden;
    const batch = await noGrad(() => tidy(() => icm.compressMany(model, query, candidates))).toArray();
    for (let i = 0; i < candidates.length; i++) {
      const alone = noGrad(() => tidy(() => icm.compressMany(model, query, [candidates[i]])));
      expectClose(await alone.toArray(), batch.subarray(i * 2 * D, (i + 1) * 2 * D), 1e-6, 1e-4, `candidate ${i} alone vs batched`);
      alone.dispose();
    }
    // Several queries at once give each group what it gets alone.
    const q2 = { text: 'a circle' };
    const groups = noGrad(() => icm.compressGroups(model, [{ query, candidates }, { query: q2, candidates: candidates.slice(1, 3) }]));
    expectClose(await groups[0].toArray(), batch, 1e-6, 1e-4, 'group 0');
    const second = noGrad(() => tidy(() => icm.compressMany(model, q2, candidates.slice(1, 3))));
    expectClose(await groups[1].toArray(), await second.toArray(), 1e-6, 1e-4, 'group 1');
    disposeAll([...groups, second]);
    // compressGroups pads from the one content tensor, compressEmbeds from its lists: the same rows.
    const embeds = noGrad(() => embedContents(model, candidates));
    const qEmbeds = noGrad(() => embedContents(model, [query]));
    const viaLists = noGrad(() => tidy(() => icm.compressEmbeds(embeds, qEmbeds)));
    expectClose(await viaLists.toArray(), batch, 1e-6, 1e-4, 'compressEmbeds of the same rows');
    disposeAll([viaLists, ...qEmbeds]);
    // At initialisation the scores are near uniform and v / o are identities.
    for (let i = 0; i < candidates.length; i++) {
      const e = await embeds[i].toArray();
      const n = embeds[i].shape[0];
      const mean = new Float64Array(D);
      for (let t = 0; t < n; t++) for (let d = 0; d < D; d++) mean[d] += e[t * D + d] / n;
      const scale = Math.max(...mean.map(Math.abs));
      expectClose(batch.subarray(i * 2 * D, i * 2 * D + D), mean, 0.03 * scale, 0, `t_con of candidate ${i} vs its mean token`);
    }
    disposeAll(embeds);
    icm.dispose();
    disposeAll(model.parameterList());
  });

  it('with relation compare, a list gets the same rows alone and beside another list of other lengths', async () => {
    const model = Mllm.create(config, tok, 12);
    const icm = Icm.create(icmConfigFor(config), 13);
    expect(icm.config.relation).toBe('compare');
    const q2 = { text: 'a circle' };
    const lists = [{ query, candidates }, { query: q2, candidates: candidates.slice(1, 3) }];
    const together = noGrad(() => icm.compressGroups(model, lists));
    for (let g = 0; g < lists.length; g++) {
      const alone = noGrad(() => tidy(() => icm.compressMany(model, lists[g].query, lists[g].candidates)));
      expectClose(await together[g].toArray(), await alone.toArray(), 1e-6, 1e-4, `list ${g}`);
      alone.dispose();
    }
    // The relationship token depends on the list (its mean is taken out), the content token does not.
    const shorter = noGrad(() => tidy(() => icm.compressMany(model, query, candidates.slice(0, 2))));
    const D = config.llm.hidden;
    const full = await together[0].toArray();
    const part = await shorter.toArray();
    expectClose(part.subarray(0, D), full.subarray(0, D), 1e-6, 1e-4, 't_con of candidate 0');
    const relDiff = Math.max(...part.subarray(D, 2 * D).map((v, d) => Math.abs(v - full[D + d])));
    expect(relDiff).toBeGreaterThan(1e-3);
    disposeAll([...together, shorter]);
    icm.dispose();
    disposeAll(model.parameterList());
  });

  it('with centre on, subtracts the mean over each group of candidates, and keeps the setting through a checkpoint', async () => {
    const model = Mllm.create(config, tok, 9);
    const plain = Icm.create(icmConfigFor(config), 10);
    const centred = new Icm({ ...plain.config, centre: true }, plain.params);
    const D = config.llm.hidden;
    const q2 = { text: 'a circle' };
    const groups = [{ query, candidates }, { query: q2, candidates: candidates.slice(1, 3) }];
    const before = noGrad(() => plain.compressGroups(model, groups));
    const after = noGrad(() => centred.compressGroups(model, groups));
    for (let g = 0; g < groups.length; g++) {
      const x = await before[g].toArray();
      const K = groups[g].candidates.length;
      // The expected rows, worked out here: row r of candidate i minus the mean of row r over the group.
      const want = new Float64Array(K * 2 * D);
      for (let r = 0; r < 2; r++) for (let d = 0; d < D; d++) {
        let m = 0;
        for (let i = 0; i < K; i++) m += x[(i * 2 + r) * D + d] / K;
        for (let i = 0; i < K; i++) want[(i * 2 + r) * D + d] = x[(i * 2 + r) * D + d] - m;
      }
      expectClose(await after[g].toArray(), want, 1e-6, 1e-5, `group ${g}`);
    }
    disposeAll([...before, ...after]);
    const ck = join(dir, 'centred');
    await centred.save(ck);
    const reloaded = (await Icm.load(ck))!;
    expect(reloaded.config.centre).toBe(true);
    reloaded.dispose();
    expect(() => new Icm({ ...plain.config, centre: 'yes' as unknown as boolean }, plain.params)).toThrow(/centre must be true or false/);
    expect(() => new Icm({ ...plain.config, relation: 'dot' as unknown as 'mix' }, plain.params)).toThrow(/relation must be 'mix' or 'compare'/);
    plain.dispose();
    disposeAll(model.parameterList());
  });

  it.each(['mix', 'compare'] as const)('with relation %s, gradients reach every parameter and both inputs (finite differences of a float64 reference)', async (relation) => {
    const c: IcmConfig = { hidden: 8, heads: 2, rmsEps: 1e-6, relation };
    const shapes = icmParameterShapes(c);
    const names = Object.keys(shapes);
    const lens = { cands: [3, 1, 2], queries: [2, 3] };
    const queryOf = [0, 1, 1];
    let seed = 11;
    const inputs = [
      ...names.map((n) => {
        const shape = shapes[n];
        const data = randArray(prod(shape), seed++, -0.6, 0.6);
        if (n.endsWith('norm.weight')) for (let i = 0; i < data.length; i++) data[i] += 1;
        return { data, shape };
      }),
      ...[...lens.cands, ...lens.queries].map((n) => ({ data: randArray(n * c.hidden, seed++, -1.5, 1.5), shape: [n, c.hidden] })),
    ];
    const P = names.length;
    const K = lens.cands.length;
    await checkOp({
      inputs,
      gpu: (xs) => {
        const icm = new Icm(c, new Map(names.map((n, i) => [n, xs[i]])));
        return icm.compressEmbeds(xs.slice(P, P + K), xs.slice(P + K), queryOf);
      },
      cpu: (xs) => {
        const p: P = Object.fromEntries(names.map((n, i) => [n, xs[i]]));
        return reference(p, xs.slice(P, P + K), xs.slice(P + K), queryOf, c);
      },
      eps: 1e-4,
    });
  });

  it('with indexTag on, adds to both rows of candidate i the mean embedding of the tokens of its index', async () => {
    const model = Mllm.create(config, tok, 11);
    const plain = Icm.create(icmConfigFor(config), 12);
    const tagged = new Icm({ ...plain.config, indexTag: true }, plain.params);
    const D = config.llm.hidden;
    // 12 candidates, so that indices 10 and 11 are written with two tokens each.
    const many = [...candidates, ...candidates, ...candidates];
    const before = noGrad(() => plain.compressMany(model, query, many));
    const after = noGrad(() => tagged.compressMany(model, query, many));
    const x = await before.toArray();
    const table = await model.llm.p('model.embed_tokens.weight').toArray();
    const want = new Float64Array(many.length * 2 * D);
    for (let i = 0; i < many.length; i++) {
      const ids = tok.encode(`${i}`);
      if (i >= 10) expect(ids.length).toBe(2);
      for (let r = 0; r < 2; r++) for (let d = 0; d < D; d++) {
        let tag = 0;
        for (const id of ids) tag += table[id * D + d] / ids.length;
        want[(i * 2 + r) * D + d] = x[(i * 2 + r) * D + d] + tag;
      }
    }
    expectClose(await after.toArray(), want, 1e-6, 1e-5, 'tagged rows');
    disposeAll([before, after]);
    const ck = join(dir, 'tagged');
    await tagged.save(ck);
    const reloaded = (await Icm.load(ck))!;
    expect(reloaded.config.indexTag).toBe(true);
    reloaded.dispose();
    expect(() => new Icm({ ...plain.config, indexTag: 1 as unknown as boolean }, plain.params)).toThrow(/indexTag must be true or false/);
    plain.dispose();
    disposeAll(model.parameterList());
  });

  it('saves and loads its weights beside the model; a checkpoint without them still loads', async () => {
    const model = Mllm.create(config, tok, 7);
    const icm = Icm.create(icmConfigFor(config), 8);
    const ck = join(dir, 'ck');
    await model.save(ck);
    expect(await Icm.load(ck)).toBeNull(); // a checkpoint from before alignment
    await icm.save(ck);
    expect(existsSync(join(ck, ICM_WEIGHTS_FILE))).toBe(true);
    const again = (await Icm.load(ck))!;
    expect(again.config).toEqual(icm.config);
    for (const [name, t] of icm.params) {
      const u = again.p(name);
      expect(u.requiresGrad).toBe(true);
      expect(await u.toArray()).toEqual(await t.toArray());
    }
    const m2 = await Mllm.load(ck); // icm.* never enter the model's own tensor file
    const a = noGrad(() => tidy(() => icm.compressMany(model, query, candidates)));
    const b = noGrad(() => tidy(() => again.compressMany(m2, query, candidates)));
    expect(await b.toArray()).toEqual(await a.toArray());
    disposeAll([a, b]);
    const fresh = await Icm.loadOrCreate(join(dir, 'nothing-here'), model, 1);
    expect(fresh.parameterList().length).toBe(icm.parameterList().length);
    for (const x of [icm, again, fresh]) x.dispose();
    disposeAll([...model.parameterList(), ...m2.parameterList()]);
  });
});
