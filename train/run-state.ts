// What a training stage needs to resume exactly: one optimisation step in the usual
// shape, and the optimizer moments plus the step reached, saved beside the weights.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Tensor, type Optimizer, backward, gradNormScale, loadSafetensors, saveSafetensors, tidy } from '../runtime/index.ts';

/**
 * One step: loss, backward, global-norm clipping, optimizer update, grads cleared. All of
 * it is recorded, nothing submitted; the caller reads the returned loss (one readback).
 * The clip scale goes into the optimizer's kernels (gradNormScale) rather than into the
 * gradients in place: one dispatch fewer per parameter, the same update.
 */
export function trainStep(params: Tensor[], opt: Optimizer, lr: number, clip: number, loss: () => Tensor): Tensor {
  return tidy(() => {
    const l = loss();
    backward(l);
    opt.step({ lr, gradScale: gradNormScale(params, clip).scale });
    opt.zeroGrad();
    return l;
  });
}

/** Writes optimizer.safetensors and state.json into a checkpoint folder (weights are the caller's). */
export async function saveRunState(dir: string, opt: Optimizer, step: number): Promise<void> {
  const sd = opt.stateDict();
  try {
    await saveSafetensors(join(dir, 'optimizer.safetensors'), sd);
  } finally {
    for (const t of Object.values(sd)) t.dispose();
  }
  writeFileSync(join(dir, 'state.json'), JSON.stringify({ step }));
}

/** The step a checkpoint folder reached, or null when it holds no run state. */
export function savedStep(dir: string): number | null {
  const path = join(dir, 'state.json');
  if (!existsSync(path)) return null;
  return (JSON.parse(readFileSync(path, 'utf8')) as { step: number }).step;
}

/** Restores the optimizer moments saved by saveRunState. */
export async function loadOptimizerState(dir: string, opt: Optimizer): Promise<void> {
  const st = await loadSafetensors(join(dir, 'optimizer.safetensors'));
  try {
    await opt.loadStateDict(st.tensors);
  } finally {
    for (const t of Object.values(st.tensors)) t.dispose();
  }
}
