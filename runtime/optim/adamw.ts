// AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, as torch.optim.AdamW.
// Per parameter and step t (its own step count), with g the gradient times gradScale:
//   w <- w * (1 - lr * wd)
//   m <- b1 * m + (1 - b1) * g;   v <- b2 * v + (1 - b2) * g^2
//   w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// all in one dispatch of shaders/adamw.wgsl per parameter. The bias corrections are
// computed on the host in float64; nothing is read back. State: exp_avg (m) and
// exp_avg_sq (v), f32 tensors shaped like the parameter, allocated at the parameter's
// first step (the kernel starts them at zero) and kept outside tidy scopes.
import { Params, getEngine } from '../engine.ts';
import type { Tensor } from '../tensor.ts';
import { shapeStr } from '../tensor.ts';
import { grid1d } from '../ops/util.ts';
import { Optimizer, type ParamGroup, type UpdateArgs, checkHyper } from './base.ts';

export { Optimizer, type ParamGroup, type StepOptions } from './base.ts';

export interface AdamWOptions {
  /** Default 1e-3. */
  lr?: number;
  /** Default [0.9, 0.999]. */
  betas?: [number, number];
  /** Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay, default 0.01 (a param group may set its own). */
  weightDecay?: number;
}

export class AdamW extends Optimizer {
  readonly betas: [number, number];
  readonly eps: number;

  constructor(params: Tensor[] | ParamGroup[], opts: AdamWOptions = {}) {
    super('AdamW', params, opts.lr ?? 1e-3, opts.weightDecay ?? 0.01, ['exp_avg', 'exp_avg_sq']);
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    checkHyper('AdamW', 'betas[0]', this.betas[0], 0, 1, true);
    checkHyper('AdamW', 'betas[1]', this.betas[1], 0, 1, true);
    checkHyper('AdamW', 'eps', this.eps, 0);
  }

  protected update(a: UpdateArgs): void {
    const [b1, b2] = this.betas;
    const { param: p, grad: g, state: [m, v] } = a;
    const bc1 = 1 - b1 ** a.t;
    const bc2 = 1 - b2 ** a.t;
    getEngine().dispatch({
      shader: 'adamw',
      params: new Params()
        .u32(p.size, p.offset, g.offset, a.scaleOffset, a.fresh ? 1 : 0)
        .f32(b1, 1 - b1, b2, 1 - b2, 1 - a.lr * a.weightDecay, a.lr / bc1, 1 / Math.sqrt(bc2), this.eps),
      buffers: [p.buf, g.buf, m.buf, v.buf, a.scaleBuf],
      workgroups: grid1d(p.size),
      label: `AdamW step of '${this.keys[a.index]}' ${shapeStr(p.shape)}`,
    });
  }
}
