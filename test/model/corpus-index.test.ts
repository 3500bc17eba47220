// The corpus index: GPU top-K by cosine against a float64 CPU brute force (random pools,
// chunked pools, k larger than the pool, exact ties broken by the lower pool index),
// building from an embedder with progress, save/load, and agreement with LanceDB.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { type Tensor, fromArray } from '../../runtime/index.ts';
import { CorpusIndex, type SearchResult, retrieve } from '../../model/corpus-index.ts';
import { LanceIndex } from '../../model/lance-index.ts';
import type { Embedder } from '../../model/retriever.ts';
import type { QueryInput } from '../../model/sequence.ts';
import { randArray, rng } from '../helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-index-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * Float64 cosine ranking: scores descending, ties by the lower index. Norms carry the
 * index's 1e-12 under the root (model/retriever.ts l2Normalize): it moves the score of a
 * row of norm 5e-4 by 2e-6, enough to fail the comparison below without it.
 */
function bruteForce(pool: ArrayLike<number>, P: number, queries: ArrayLike<number>, Q: number, E: number, k: number): { idx: number[][]; scores: number[][] } {
  const norm = (x: ArrayLike<number>, i: number) => {
    let s = 0;
    for (let j = 0; j < E; j++) s += x[i * E + j] ** 2;
    return Math.sqrt(s + 1e-12);
  };
  const idx: number[][] = [];
  const scores: number[][] = [];
  for (let q = 0; q < Q; q++) {
    const nq = norm(queries, q);
    const s = Array.from({ length: P }, (_, p) => {
      let d = 0;
      for (let j = 0; j < E; j++) d += queries[q * E + j] * pool[p * E + j];
      return d / (nq * norm(pool, p));
    });
    const order = [...s.keys()].sort((a, b) => s[b] - s[a] || a - b).slice(0, Math.min(k, P));
    idx.push(order);
    scores.push(order.map((p) => s[p]));
  }
  return { idx, scores };
}

const ids = (P: number) => Array.from({ length: P }, (_, i) => `doc${i}`);

function makeIndex(pool: Float32Array, P: number, E: number, chunkRows?: number): CorpusIndex {
  const index = new CorpusIndex(E, { chunkRows });
  // Added in uneven pieces, so chunks are cut across add() calls.
  for (let at = 0, n = 1; at < P; at += n, n = n * 2 + 1) {
    const end = Math.min(P, at + n);
    const t = fromArray(pool.subarray(at * E, end * E), [end - at, E]);
    index.add(ids(P).slice(at, end), t);
    t.dispose();
  }
  return index;
}

async function search(index: { search(q: Tensor, k: number): Promise<SearchResult> }, queries: Float32Array, Q: number, E: number, k: number): Promise<SearchResult> {
  const t = fromArray(queries, [Q, E]);
  try {
    return await index.search(t, k);
  } finally {
    t.dispose();
  }
}

describe('CorpusIndex search', () => {
  it('equals a CPU brute-force ranking on random embeddings (chunked pools, k clamped)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 9 }),
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 45 }),
        fc.option(fc.integer({ min: 1, max: 17 }), { nil: undefined }),
        fc.integer({ min: 0, max: 1e6 }),
        async (P, E, Q, k, chunkRows, seed) => {
          const pool = Float32Array.from(randArray(P * E, seed));
          const queries = Float32Array.from(randArray(Q * E, seed + 1));
          const index = makeIndex(pool, P, E, chunkRows);
          expect(index.size).toBe(P);
          const got = await search(index, queries, Q, E, k);
          const ref = bruteForce(pool, P, queries, Q, E, k);
          expect(got.ids).toHaveLength(Q);
          for (let q = 0; q < Q; q++) {
            expect(got.ids[q]).toHaveLength(Math.min(k, P));
            expect(new Set(got.ids[q]).size).toBe(got.ids[q].length);
            for (let r = 0; r < got.ids[q].length; r++) {
              // Same score at every rank; a different id only where two scores are within float error.
              expect(Math.abs(got.scores[q][r] - ref.scores[q][r])).toBeLessThan(2e-6);
              if (got.ids[q][r] !== `doc${ref.idx[q][r]}`) {
                const p = Number(got.ids[q][r].slice(3));
                const s = bruteForce(pool, P, queries.subarray(q * E, (q + 1) * E), 1, E, P);
                expect(Math.abs(s.scores[0][s.idx[0].indexOf(p)] - ref.scores[q][r])).toBeLessThan(2e-6);
              }
            }
          }
          index.dispose();
        },
      ),
      // The first example is the case CI found (one row of norm 5e-4 against the eps).
      { numRuns: 25, examples: [[1, 1, 1, 1, undefined, 568826]] },
    );
  });

  it('breaks exact ties by the lower pool index, across chunks too', async () => {
    // Unit vectors with four entries of +-0.5: every cosine is an exact multiple of 1/4,
    // so there are many exact ties and the expected order is exact.
    const E = 8;
    const r = rng(11);
    const unitRow = () => {
      const v = new Float32Array(E);
      const slots = [...Array(E).keys()].sort(() => r() - 0.5).slice(0, 4);
      for (const s of slots) v[s] = r() < 0.5 ? -0.5 : 0.5;
      return v;
    };
    const P = 37;
    const Q = 6;
    const pool = new Float32Array(P * E);
    for (let p = 0; p < P; p++) pool.set(unitRow(), p * E);
    pool.set(pool.subarray(3 * E, 4 * E), 30 * E); // an exact duplicate in another chunk
    const queries = new Float32Array(Q * E);
    for (let q = 0; q < Q; q++) queries.set(unitRow(), q * E);
    queries.set(pool.subarray(3 * E, 4 * E), 0); // query 0 matches rows 3 and 30 exactly
    const ref = bruteForce(pool, P, queries, Q, E, 12);
    expect(ref.idx[0].slice(0, 2)).toEqual([3, 30]);
    for (const chunkRows of [undefined, 5, 16]) {
      const index = makeIndex(pool, P, E, chunkRows);
      const got = await search(index, queries, Q, E, 12);
      expect(got.ids).toEqual(ref.idx.map((row) => row.map((p) => `doc${p}`)));
      index.dispose();
    }
  });

  it('checks its arguments', async () => {
    const index = makeIndex(Float32Array.from(randArray(12, 3)), 4, 3);
    await expect(search(index, new Float32Array(4), 1, 4, 2)).rejects.toThrow(/queries have shape \[1, 4\], expected \[Q, 3\]/);
    await expect(search(index, new Float32Array(3), 1, 3, 0)).rejects.toThrow(/k must be a positive integer/);
    const t = fromArray(new Float32Array(3), [1, 3]);
    expect(() => index.add(['doc1'], t)).toThrow(/duplicate id 'doc1'/);
    expect(() => index.add(['a', 'b'], t)).toThrow(/expected \[2, 3\]/);
    t.dispose();
    index.dispose();
  });
});

/** A stand-in embedder: a fixed vector per text. */
function fakeEmbedder(table: Map<string, Float32Array>, E: number): Embedder & { calls: number[] } {
  const calls: number[] = [];
  return {
    embedDim: E,
    calls,
    embed(inputs: readonly QueryInput[]) {
      calls.push(inputs.length);
      const out = new Float32Array(inputs.length * E);
      inputs.forEach((x, i) => out.set(table.get(x.text!)!, i * E));
      return fromArray(out, [inputs.length, E]);
    },
  };
}

describe('building, saving and LanceDB', () => {
  const E = 16;
  const P = 50;
  const pool = Float32Array.from(randArray(P * E, 21));
  const table = new Map(ids(P).map((id, p) => [id, pool.subarray(p * E, (p + 1) * E)]));
  const Q = 7;
  const queries = Float32Array.from(randArray(Q * E, 22));

  it('builds from an embedder in batches with progress, and survives a save/load round trip', async () => {
    const model = fakeEmbedder(table, E);
    const progress: [number, number][] = [];
    let loaded = 0;
    const items = ids(P).map((id) => ({ id, input: () => (loaded++, { text: id }) }));
    const index = await CorpusIndex.build(model, items, { batchSize: 16, chunkRows: 20, onProgress: (d, t) => progress.push([d, t]) });
    expect(model.calls).toEqual([16, 16, 16, 2]);
    expect(loaded).toBe(P);
    expect(progress).toEqual([[16, P], [32, P], [48, P], [50, P]]);
    const before = await search(index, queries, Q, E, 10);
    const ref = bruteForce(pool, P, queries, Q, E, 10);
    expect(before.ids).toEqual(ref.idx.map((row) => row.map((p) => `doc${p}`)));

    await index.save(join(dir, 'idx'));
    const again = await CorpusIndex.load(join(dir, 'idx'));
    expect(again.ids).toEqual(index.ids);
    expect(Array.from(await again.embeddings())).toEqual(Array.from(await index.embeddings()));
    expect(await search(again, queries, Q, E, 10)).toEqual(before);
    // A different chunking on load gives the same answers.
    const rechunked = await CorpusIndex.load(join(dir, 'idx'), { chunkRows: 7 });
    expect((await search(rechunked, queries, Q, E, 10)).ids).toEqual(before.ids);
    await expect(CorpusIndex.load(join(dir, 'nothing'))).rejects.toThrow(/needs ids\.json and embeddings\.safetensors/);

    // retrieve() embeds query inputs and searches.
    const qModel = fakeEmbedder(new Map([...table, ['probe', queries.subarray(0, E)]]), E);
    const r = await retrieve(qModel, index, [{ text: 'probe' }, { text: 'doc7' }], 3, { batchSize: 1 });
    expect(r.ids[0]).toEqual(before.ids[0].slice(0, 3));
    expect(r.ids[1][0]).toBe('doc7');
    expect(r.scores[1][0]).toBeCloseTo(1, 5);
    for (const x of [index, again, rechunked]) x.dispose();
  });

  it('LanceDB (exact search) returns the same top-K as the GPU index', async () => {
    const index = makeIndex(pool, P, E, 13);
    const lance = await LanceIndex.create(join(dir, 'lance'), ids(P), pool, E);
    expect(lance.ann).toBe(false);
    expect(lance.size).toBe(P);
    for (const k of [1, 10, 60]) {
      const a = await search(index, queries, Q, E, k);
      const b = await search(lance, queries, Q, E, k);
      expect(b.ids).toEqual(a.ids);
      for (let q = 0; q < Q; q++) for (let r = 0; r < a.scores[q].length; r++) expect(Math.abs(b.scores[q][r] - a.scores[q][r])).toBeLessThan(1e-5);
    }
    lance.dispose();
    // Reopened from its folder, same answers.
    const reopened = await LanceIndex.open(join(dir, 'lance'));
    expect((await search(reopened, queries, Q, E, 5)).ids).toEqual((await search(index, queries, Q, E, 5)).ids);
    reopened.dispose();

    // Built from an embedder, block by block.
    const built = await LanceIndex.build(fakeEmbedder(table, E), ids(P).map((id) => ({ id, input: { text: id } })), join(dir, 'lance-built'), { batchSize: 9 });
    expect((await search(built, queries, Q, E, 10)).ids).toEqual((await search(index, queries, Q, E, 10)).ids);
    built.dispose();
    index.dispose();
  });

  it('LanceDB builds an IVF-PQ index above its threshold and still finds exact matches', async () => {
    const N = 600;
    const big = Float32Array.from(randArray(N * E, 31));
    const lance = await LanceIndex.create(join(dir, 'lance-ann'), ids(N), big, E, { annThreshold: 500, numPartitions: 4, numSubVectors: 2 });
    expect(lance.ann).toBe(true);
    // Query with pool rows: the refine step re-ranks by exact distance, so each finds itself.
    const rows = [0, 17, 299, 599];
    const qs = new Float32Array(rows.length * E);
    rows.forEach((p, i) => qs.set(big.subarray(p * E, (p + 1) * E), i * E));
    const approx = await lance.searchHost(qs, rows.length, 5);
    expect(approx.ids.map((r) => r[0])).toEqual(rows.map((p) => `doc${p}`));
    const exact = await lance.searchHost(qs, rows.length, 5, { exact: true });
    const ref = bruteForce(big, N, qs, rows.length, E, 5);
    expect(exact.ids).toEqual(ref.idx.map((row) => row.map((p) => `doc${p}`)));
    lance.dispose();
  });
});
