// Base pre-training on a small emoji benchmark: the loss falls, an interrupted run
// resumes from its checkpoint at the right step, and the final checkpoint loads.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Mllm } from '../../model/mllm.ts';
import { buildEmojiBenchmark, writeEmojiBenchmark } from '../../train/data/emoji-benchmark.ts';
import { pretrain } from '../../train/pretrain.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-pretrain-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('pretrain', () => {
  it('learns, resumes after an interruption, and saves a loadable model', async () => {
    const bench = buildEmojiBenchmark({ seed: 1, maxPerTask: 40 });
    const data = join(dir, 'data');
    await writeEmojiBenchmark(data, bench);
    const base = { dataDir: data, imageRoot: bench.meta.image_root, attributes: bench.attributes, preset: 'tiny', steps: 40, batch: 8, lr: 3e-3, seed: 1, saveEvery: 10, log: () => {} };
    const run = join(dir, 'run');
    const losses: number[] = [];
    // Interrupt after step 24: the checkpoint of step 20 must survive.
    await expect(
      pretrain({
        ...base,
        runDir: run,
        onStep: (s) => {
          losses[s.step] = s.loss;
          if (s.step === 24) throw new Error('interrupted');
        },
      }),
    ).rejects.toThrow('interrupted');
    expect(JSON.parse(readFileSync(join(run, 'checkpoint', 'state.json'), 'utf8'))).toEqual({ step: 20 });
    const resumedAt: number[] = [];
    const model = await pretrain({
      ...base,
      runDir: run,
      onStep: (s) => {
        resumedAt.push(s.step);
        losses[s.step] = s.loss;
      },
    });
    expect(resumedAt[0]).toBe(20);
    expect(resumedAt.at(-1)).toBe(39);
    expect(existsSync(join(run, 'checkpoint'))).toBe(false);
    const first = losses.slice(0, 3).reduce((a, b) => a + b) / 3;
    const last = losses.slice(-3).reduce((a, b) => a + b) / 3;
    expect(last).toBeLessThan(first - 1);
    const again = await Mllm.load(join(run, 'final'));
    expect(again.tokenizer.vocabSize).toBe(model.tokenizer.vocabSize);
    for (const t of [...model.parameterList(), ...again.parameterList()]) t.dispose();
  });
});
