// Character-trigram TF-IDF: trigrams as the baseline cuts them, document frequencies and the
// smoothed IDF worked out by hand, unit-norm weights whose norm counts grams the corpus
// lacks, dense rows that give the same cosines as the sparse weights, and a JSON round trip
// with its checks.
import { describe, expect, it } from 'vitest';
import { TfIdf, charNgrams } from '../../model/lexical.ts';

describe('character-trigram TF-IDF', () => {
  const corpus = ['red apple', 'green apple', 'red car', '', null];

  it('cuts trigrams with a space at both ends, lower-cased', () => {
    expect(charNgrams('Ab')).toEqual([' ab', 'ab ']);
    expect(charNgrams('a  b')).toEqual([' a ', 'a b', ' b ']);
    expect(charNgrams('  ')).toEqual([]);
  });

  it('counts each gram once per document, and only documents with text', () => {
    const t = TfIdf.fit(corpus);
    expect(t.docs).toBe(3);
    const df = new Map(t.grams.map((g, i) => [g, t.df[i]]));
    expect(df.get(' re')).toBe(2);
    expect(df.get('ppl')).toBe(2);
    expect(df.get(' ca')).toBe(1);
    expect(t.size).toBe(new Set(corpus.flatMap((c) => (c ? charNgrams(c) : []))).size);
    // Smoothed IDF: ln((1 + N) / (1 + df)) + 1.
    expect(t.idf(' re')).toBeCloseTo(Math.log(4 / 3) + 1, 12);
    expect(t.idf('zzz')).toBeCloseTo(Math.log(4) + 1, 12);
  });

  it('weights are count x IDF over the norm of every gram, unknown ones included', () => {
    const t = TfIdf.fit(corpus);
    const w = t.weights('red zz');
    const grams = charNgrams('red zz');
    const raw = new Map<string, number>();
    for (const g of grams) raw.set(g, (raw.get(g) ?? 0) + t.idf(g));
    const norm = Math.hypot(...raw.values());
    for (const [g, v] of raw) expect(w.get(g)).toBeCloseTo(v / norm, 12);
    // The dense row drops the unknown grams, so it is shorter than 1.
    const d = t.dense(['red zz', 'red car', '']);
    const V = t.size;
    const row = (i: number) => d.subarray(i * V, (i + 1) * V);
    expect(Math.hypot(...row(0))).toBeLessThan(1);
    expect(Math.hypot(...row(1))).toBeCloseTo(1, 6);
    expect(row(2).every((v) => v === 0)).toBe(true);
    // Dense dot products equal the sparse weights' cosine.
    const c = t.weights('red car');
    let sparse = 0;
    for (const [g, v] of w) sparse += v * (c.get(g) ?? 0);
    let dense = 0;
    for (let j = 0; j < V; j++) dense += row(0)[j] * row(1)[j];
    expect(dense).toBeCloseTo(sparse, 6);
    expect(sparse).toBeGreaterThan(0);
  });

  it('round-trips through JSON and refuses a broken file', () => {
    const t = TfIdf.fit(corpus);
    const back = TfIdf.fromJSON(JSON.parse(JSON.stringify(t.toJSON())));
    expect(back.dense(['green car'])).toEqual(t.dense(['green car']));
    expect(() => TfIdf.fromJSON({ docs: 3, grams: ['abc', 'abc'], df: [1, 1] })).toThrow(/repeats a gram/);
    expect(() => TfIdf.fromJSON({ docs: 3, grams: ['abc'], df: [4] })).toThrow(/'abc' has document frequency 4, outside 1..3/);
    expect(() => TfIdf.fromJSON({ docs: 3, grams: ['abc'], df: [] })).toThrow(/1 grams but 0 document frequencies/);
    expect(() => TfIdf.fromJSON({} as never)).toThrow(/needs docs, grams and df/);
  });
});
