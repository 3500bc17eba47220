// The rankings file of the training queries: written and read back as is, and bad input
// named before any work. (The pipeline test ranks a micro benchmark end to end and checks
// that every training query is ranked against train-split candidates only.)
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readRankings, trainingRankings, writeRankings } from '../../train/training-rankings.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-rankings-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('training rankings', () => {
  it('round-trips a rankings file, order kept', () => {
    const r = new Map([
      ['4:1f600', ['img:google:1f601', 'img:google:1f600']],
      ['6:1f44d-1f3fd', ['img:twitter:1f44d-1f3fd']],
    ]);
    const f = join(dir, 'r.json');
    writeRankings(f, r);
    expect(readRankings(f)).toEqual(r);
  });

  it('names the bad file or setting', async () => {
    const f = join(dir, 'bad.json');
    writeFileSync(f, '["a"]');
    expect(() => readRankings(f)).toThrow(/bad\.json: expected an object/);
    writeFileSync(f, '{"q": [1]}');
    expect(() => readRankings(f)).toThrow(/the ranking of q is not a list of did strings/);
    await expect(trainingRankings({ retriever: dir, dataDir: dir, depth: 0 })).rejects.toThrow(/depth must be a positive integer/);
    await expect(trainingRankings({ retriever: dir, dataDir: dir })).rejects.toThrow(/no config\.json, not a checkpoint folder/);
  });
});
