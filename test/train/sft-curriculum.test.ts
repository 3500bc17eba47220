// The SFT stage's K curriculum: list lengths per step worked out by hand.
import { describe, expect, it } from 'vitest';
import { curriculumK, curriculumSchedule, randomNegativeSteps, spreadLabels } from '../../train/sft.ts';

const lengths = (steps: number, K: number, kStart: number) => Array.from({ length: steps }, (_, s) => curriculumK(s, steps, K, kStart));

describe('K curriculum', () => {
  it('doubles from kStart to K in equal shares of the steps', () => {
    // 4 -> 8 -> 16 is two doublings, so three shares of 600 / 3 = 200 steps.
    const ks = lengths(600, 16, 4);
    expect(ks.slice(0, 200).every((k) => k === 4)).toBe(true);
    expect(ks.slice(200, 400).every((k) => k === 8)).toBe(true);
    expect(ks.slice(400).every((k) => k === 16)).toBe(true);
    expect(curriculumSchedule(600, 16, 4)).toBe('4 (steps 1-200), 8 (steps 201-400), 16 (steps 401-600)');
  });

  it('caps the last share at K when K is not kStart times a power of two', () => {
    // 4 -> 8 -> 16 capped at 10; shares of 10 steps: floor(3s / 10) = 0 for s <= 3, 1 for s <= 6, else 2.
    expect(lengths(10, 10, 4)).toEqual([4, 4, 4, 4, 8, 8, 8, 10, 10, 10]);
  });

  it('is no curriculum when kStart is K, and refuses a kStart outside 1..K', () => {
    expect(lengths(5, 16, 16)).toEqual([16, 16, 16, 16, 16]);
    expect(() => curriculumK(0, 10, 16, 0)).toThrow(/kStart must be an integer from 1 to K = 16, got 0/);
    expect(() => curriculumK(0, 10, 16, 17)).toThrow(/got 17/);
    expect(() => curriculumK(0, 10, 16, 2.5)).toThrow(/got 2.5/);
  });
});

describe('negatives curriculum', () => {
  it('gives random negatives to the first easyShare of the steps', () => {
    // 0.5 of 10 steps: steps 0-4; 0.25 of 10 rounds 2.5 up to 3: steps 0-2.
    expect(randomNegativeSteps(10, 0.5)).toBe(5);
    expect(randomNegativeSteps(10, 0.25)).toBe(3);
    expect(randomNegativeSteps(10, 0)).toBe(0);
    expect(randomNegativeSteps(10, 1)).toBe(10);
  });

  it('refuses a share outside 0..1', () => {
    expect(() => randomNegativeSteps(10, 1.5)).toThrow(/easyShare must be a number from 0 to 1, got 1.5/);
    expect(() => randomNegativeSteps(10, Number.NaN)).toThrow(/got NaN/);
  });
});

describe('spread labels', () => {
  it('draws K distinct increasing numbers below the range, reproducibly per key', () => {
    const seen = new Set<number>();
    for (let k = 0; k < 200; k++) {
      const l = spreadLabels(4, 16, 1, `q${k}`);
      expect(l).toHaveLength(4);
      for (let i = 1; i < 4; i++) expect(l[i]).toBeGreaterThan(l[i - 1]);
      expect(l[0]).toBeGreaterThanOrEqual(0);
      expect(l[3]).toBeLessThan(16);
      l.forEach((x) => seen.add(x));
    }
    // Every index of a 16-list turns up over 200 lists (each is missed with probability (3/4)^200).
    expect(seen.size).toBe(16);
    expect(spreadLabels(4, 16, 1, 'q7')).toEqual(spreadLabels(4, 16, 1, 'q7'));
    expect(spreadLabels(4, 4, 1, 'q7')).toEqual([0, 1, 2, 3]);
  });

  it('refuses a range smaller than the list', () => {
    expect(() => spreadLabels(4, 3, 1, 'q')).toThrow(/at least K = 4 numbers, got 3/);
  });
});
