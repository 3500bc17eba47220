// Training loop for the language model on raw text (byte-level tokens for now).
// One step = forward, backward, gradient clipping, AdamW: recorded into one command
// encoder and submitted once, with one small readback (the loss).
import { readFileSync } from 'node:fs';
import {
  AdamW,
  type Tensor,
  cosineSchedule,
  crossEntropy,
  fromArray,
  getEngine,
  reshape,
} from '../runtime/index.ts';
import { Llm, type LlmConfig, initParameters } from '../model/llm.ts';
import { Rng } from '../runtime/random.ts';
import { trainStep } from './run-state.ts';

export interface LmTrainOptions {
  steps: number;
  batch: number;
  seqLen: number;
  lr: number;
  warmup: number;
  seed: number;
  clip: number;
  onStep?: (info: { step: number; loss: number; lr: number; ms: number; tokensPerSec: number }) => void;
}

/** Byte tokens of a text file. */
export function bytesOf(path: string): Uint8Array {
  return new Uint8Array(readFileSync(path));
}

/** Draws a batch of (input, target) windows: ids [B, T] and targets [B*T]. */
export function sampleBatch(data: Uint8Array, batch: number, seqLen: number, rng: Rng): { ids: Int32Array; targets: Int32Array } {
  if (data.length < seqLen + 1) throw new RangeError(`text of ${data.length} bytes is shorter than one window of ${seqLen + 1}`);
  const ids = new Int32Array(batch * seqLen);
  const targets = new Int32Array(batch * seqLen);
  for (let b = 0; b < batch; b++) {
    const start = rng.int(data.length - seqLen);
    for (let t = 0; t < seqLen; t++) {
      ids[b * seqLen + t] = data[start + t];
      targets[b * seqLen + t] = data[start + t + 1];
    }
  }
  return { ids, targets };
}

export function positionsFor(batch: number, seqLen: number): Int32Array {
  const p = new Int32Array(batch * seqLen);
  for (let i = 0; i < p.length; i++) p[i] = i % seqLen;
  return p;
}

/** Loss of one batch; the caller owns disposal (call inside tidy). */
export function lmLoss(model: Llm, ids: Tensor, positions: Tensor, targets: Tensor): Tensor {
  const [B, T] = ids.shape;
  const logits = model.forward(ids, positions);
  return crossEntropy(reshape(logits, [B * T, model.config.vocabSize]), targets);
}

export async function trainLm(config: LlmConfig, data: Uint8Array, o: LmTrainOptions): Promise<{ model: Llm; losses: number[] }> {
  const model = new Llm(config, initParameters(config, o.seed));
  const params = [...model.params.values()];
  const opt = new AdamW(params, { lr: o.lr, weightDecay: 0.01, betas: [0.9, 0.95] });
  const schedule = cosineSchedule({ peakLr: o.lr, warmupSteps: o.warmup, totalSteps: o.steps, minLr: o.lr / 10 });
  const rng = new Rng(o.seed + 1);
  const pos = positionsFor(o.batch, o.seqLen);
  const losses: number[] = [];
  for (let step = 0; step < o.steps; step++) {
    const t0 = performance.now();
    const { ids, targets } = sampleBatch(data, o.batch, o.seqLen, rng);
    const lr = schedule(step);
    const loss = trainStep(params, opt, lr, o.clip, () =>
      lmLoss(model, fromArray(ids, [o.batch, o.seqLen], 'i32'), fromArray(pos, [o.batch, o.seqLen], 'i32'), fromArray(targets, [o.batch * o.seqLen], 'i32')),
    );
    const v = await loss.item();
    loss.dispose();
    losses.push(v);
    const ms = performance.now() - t0;
    o.onStep?.({ step, loss: v, lr, ms, tokensPerSec: (o.batch * o.seqLen * 1000) / ms });
  }
  await getEngine().sync();
  return { model, losses };
}
