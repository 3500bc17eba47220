// Letter trigrams as DSSM hashes words: lowercased, each word marked at both ends, repeats
// counted, and the bucket of a trigram is its FNV-1a hash modulo the bucket count.
import { describe, expect, it } from 'vitest';
import { fnv1a32, letterTrigrams, trigramCounts } from '../../model/trigrams.ts';

describe('letter trigrams', () => {
  it('marks word ends, lowercases, splits on anything but letters and digits', () => {
    expect(letterTrigrams('Smiling face!')).toEqual(['#sm', 'smi', 'mil', 'ili', 'lin', 'ing', 'ng#', '#fa', 'fac', 'ace', 'ce#']);
    expect(letterTrigrams('a 1st-place')).toEqual(['#a#', '#1s', '1st', 'st#', '#pl', 'pla', 'lac', 'ace', 'ce#']);
    expect(letterTrigrams('  ,;  ')).toEqual([]);
    expect(letterTrigrams('Café')).toEqual(['#ca', 'caf', 'afé', 'fé#']);
  });

  it('counts each text\'s trigrams in their buckets', () => {
    const B = 97;
    const c = trigramCounts(['ace ace', 'face', ''], B);
    expect(c.length).toBe(3 * B);
    const row = (i: number) => c.subarray(i * B, (i + 1) * B);
    // 'ace ace' twice over: #ac, ace, ce#.
    expect(row(0).reduce((a, v) => a + v, 0)).toBe(6);
    expect(row(0)[fnv1a32('ace') % B]).toBeGreaterThanOrEqual(2);
    expect(row(1).reduce((a, v) => a + v, 0)).toBe(4);
    expect(row(1)[fnv1a32('#fa') % B]).toBeGreaterThanOrEqual(1);
    expect(row(2).every((v) => v === 0)).toBe(true);
    expect(() => trigramCounts(['x'], 0)).toThrow(/trigram buckets must be a positive integer, got 0/);
  });
});
