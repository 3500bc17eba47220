// Global gradient-norm clipping, entirely on the GPU (no readback).
//
//   norm  = sqrt(sum over all parameters' gradients of g^2)
//   scale = min(1, maxNorm / (norm + 1e-6))
//
// Stage 1 (shaders/grad_norm_partial.wgsl): one dispatch per gradient writes per-workgroup
// sums of squares into its own slots of one small buffer. Stage 2 (grad_norm_final.wgsl):
// one workgroup adds the slots and writes [norm, scale]. Two ways to apply the scale:
//  - clipGradNorm (torch's clip_grad_norm_ semantics): stage 3 (grad_norm_scale.wgsl)
//    multiplies each gradient in place, so any optimizer or later reader sees clipped
//    gradients. Costs one more dispatch per parameter.
//  - gradNormScale: returns the scale without touching the gradients; pass it to
//    AdamW/SGD step({ gradScale }), whose fused kernels multiply by it. Cheaper.
// A non-finite gradient makes the norm inf or NaN and the scale 0 or NaN (as in torch);
// read the returned norm to detect it.
import { noGrad } from '../autograd.ts';
import { Params, getEngine } from '../engine.ts';
import { keep } from '../scope.ts';
import { type Tensor, empty, shapeStr } from '../tensor.ts';
import { contiguous, unaryKernel } from '../ops/copy.ts';
import { grid1d } from '../ops/util.ts';

/** Elements per workgroup before another workgroup is added (each invocation loops). */
const PER_GROUP = 1024;
const MAX_GROUPS = 256;

function checkArgs(op: string, params: Tensor[], maxNorm: number): Tensor[] {
  if (typeof maxNorm !== 'number' || !(maxNorm > 0)) throw new RangeError(`${op}: maxNorm must be a positive number, got ${maxNorm}`);
  const withGrad = params.filter((p) => p.grad);
  for (const p of withGrad) {
    const g = p.grad!;
    if (g.disposed) throw new Error(`${op}: the gradient of ${p} is disposed`);
    if (g.dtype !== 'f32') throw new TypeError(`${op}: the gradient of ${p} has dtype ${g.dtype}, expected f32`);
  }
  return withGrad;
}

/**
 * The global L2 norm of the gradients of `params` (those without a gradient are
 * skipped) and the clip scale min(1, maxNorm / (norm + 1e-6)), as f32 GPU scalars
 * (views of one 2-element buffer). Gradients are not modified.
 */
export function gradNormScale(params: Tensor[], maxNorm: number): { norm: Tensor; scale: Tensor } {
  const withGrad = checkArgs('gradNormScale', params, maxNorm);
  return noGrad(() => {
    const eng = getEngine();
    const grads = withGrad.map((p) => (p.grad!.isContiguous() ? p.grad! : contiguous(p.grad!)));
    const groups = grads.map((g) => (g.size === 0 ? 0 : Math.min(Math.ceil(g.size / PER_GROUP), MAX_GROUPS)));
    const slots = groups.reduce((a, b) => a + b, 0);
    const partial = empty([Math.max(slots, 1)]);
    let base = 0;
    grads.forEach((g, i) => {
      eng.dispatch({
        shader: 'grad_norm_partial',
        params: new Params().u32(g.size, g.offset, base),
        buffers: [g.buf, partial.buf],
        workgroups: [groups[i]],
        label: `gradient norm of ${shapeStr(g.shape)}`,
      });
      base += groups[i];
    });
    const out = empty([2]);
    eng.dispatch({
      shader: 'grad_norm_final',
      params: new Params().u32(slots).f32(Math.min(maxNorm, 3.4e38)),
      buffers: [partial.buf, out.buf],
      workgroups: [1],
      label: `gradient norm of ${grads.length} tensors`,
    });
    grads.forEach((g, i) => g !== withGrad[i].grad && g.dispose());
    partial.dispose();
    const norm = out.view([], [], 0);
    const scale = out.view([], [], 1);
    out.dispose();
    return { norm, scale };
  });
}

/**
 * Clips the gradients of `params` in place so that their global L2 norm is at most
 * maxNorm; returns the norm before clipping as an f32 GPU scalar (read it only if you
 * need it: clipping itself reads nothing back). A gradient that is not contiguous, or
 * that shares its storage with another tensor (autograd may hand two leaves views of
 * one buffer), is first replaced by its own copy so that scaling it cannot change
 * anything else.
 */
export function clipGradNorm(params: Tensor[], maxNorm: number): Tensor {
  const withGrad = checkArgs('clipGradNorm', params, maxNorm);
  return noGrad(() => {
    for (const p of withGrad) {
      const g = p.grad!;
      if (g.isContiguous() && g.storage.refs === 1) continue;
      p.grad = keep(unaryKernel(g, 'x', 'clipGradNorm: own copy of a shared gradient'));
      g.dispose();
    }
    const { norm, scale } = gradNormScale(withGrad, maxNorm);
    const eng = getEngine();
    for (const p of withGrad) {
      const g = p.grad!;
      eng.dispatch({
        shader: 'grad_norm_scale',
        params: new Params().u32(g.size, g.offset, scale.offset),
        buffers: [g.buf, scale.buf],
        workgroups: grid1d(g.size),
        label: `clipGradNorm scale of ${shapeStr(g.shape)}`,
      });
    }
    scale.dispose();
    return norm;
  });
}
