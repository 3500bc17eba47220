// The retrv tensor runtime: import everything from here.
import { gradHooks } from './autograd.ts';
import { getGpu, type GpuContext } from './device.ts';
import { getEngine } from './engine.ts';
import { add } from './ops/elementwise.ts';
import { onesLike } from './ops/copy.ts';

export * from './device.ts';
export { Params, getEngine, type Engine } from './engine.ts';
export * from './dtype.ts';
export { Tensor, empty, fromArray, scalar, numel, shapeStr } from './tensor.ts';
export { tidy, tidyAsync, keep } from './scope.ts';
export * from './random.ts';
export { backward, noGrad, detach, requireGrad, isGradEnabled } from './autograd.ts';
export * from './ops/copy.ts';
export * from './ops/elementwise.ts';
export * from './ops/reduce.ts';
export * from './ops/shape.ts';
export { broadcastShapes } from './ops/util.ts';

gradHooks.add = add;
gradHooks.onesLike = onesLike;

/** Initialises the GPU and the engine; call once before creating tensors. */
export async function init(): Promise<GpuContext> {
  const ctx = await getGpu();
  getEngine();
  return ctx;
}

/** Counters since start (or the last resetStats): dispatches, submits, readbacks, memory. */
export function stats() {
  const e = getEngine();
  return { ...e.stats, ...e.pool.stats };
}

export function resetStats(): void {
  const e = getEngine();
  e.stats.dispatches = 0;
  e.stats.submits = 0;
  e.stats.readbacks = 0;
  e.stats.uploads = 0;
  e.pool.resetPeak();
}

// Op families and training pieces (one file each).
export * from './ops/index-ops.ts';
export * from './ops/matmul.ts';
export * from './tune.ts';
export * from './ops/swiglu.ts';
export * from './ops/nn.ts';
export * from './ops/attention.ts';
export * from './ops/sample.ts';
export * from './optim/adamw.ts';
export * from './optim/sgd.ts';
export * from './optim/clip.ts';
export * from './optim/schedule.ts';
export * from './safetensors.ts';
