// End to end on the runtime: a tiny Qwen2-style language model learns a real text
// (the CC0 legal code) on whatever adapter runs the tests (lavapipe in CI), and each
// training step costs exactly one submit and one readback.
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { resetStats, stats } from '../../runtime/index.ts';
import { bytesOf, trainLm } from '../../train/lm-train.ts';

const text = bytesOf(fileURLToPath(new URL('../../train/data/cc0-legal-code.txt', import.meta.url)));

describe('tiny language model', () => {
  it('loss falls well below its start, one submit and one readback per step', async () => {
    const perStep: { submits: number; readbacks: number }[] = [];
    const { losses, model } = await trainLm(
      { vocabSize: 256, hidden: 64, layers: 2, heads: 4, kvHeads: 2, mlp: 128, ropeTheta: 10000, rmsEps: 1e-6, tieEmbeddings: true },
      text,
      {
        steps: 60,
        batch: 8,
        seqLen: 48,
        lr: 4e-3,
        warmup: 5,
        seed: 3,
        clip: 1,
        onStep: () => {
          const s = stats();
          perStep.push({ submits: s.submits, readbacks: s.readbacks });
          resetStats();
        },
      },
    );
    // The first step includes the setup uploads; every later step is one submit, one readback.
    for (const s of perStep.slice(1)) expect(s).toEqual({ submits: 1, readbacks: 1 });
    const first = losses[0];
    const last = losses.slice(-5).reduce((a, b) => a + b, 0) / 5;
    expect(first).toBeGreaterThan(5.3); // about ln(256) at initialisation
    expect(last).toBeLessThan(0.6 * first);
    for (const p of model.params.values()) p.dispose();
  });
});
