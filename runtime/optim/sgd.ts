// SGD with momentum, as torch.optim.SGD. Per parameter, with g the gradient times gradScale:
//   d = g + wd * w                          (L2 weight decay, coupled to the gradient)
//   b = d on the parameter's first step, else momentum * b + (1 - dampening) * d
//   d = nesterov ? d + momentum * b : b     (only when momentum > 0)
//   w <- w - lr * d
// in one dispatch of shaders/sgd.wgsl per parameter; nothing is read back. State:
// momentum_buffer (f32, shaped like the parameter) when momentum > 0, kept outside tidy
// scopes.
import { Params, getEngine } from '../engine.ts';
import { keep } from '../scope.ts';
import { type Tensor, empty, shapeStr } from '../tensor.ts';
import { grid1d } from '../ops/util.ts';
import { Optimizer, type ParamGroup, type UpdateArgs, checkHyper } from './base.ts';

export interface SGDOptions {
  /** Default 1e-2. */
  lr?: number;
  /** Default 0 (plain SGD, no state). */
  momentum?: number;
  /** Default 0. */
  dampening?: number;
  /** Nesterov momentum; needs momentum > 0 and dampening 0. */
  nesterov?: boolean;
  /** L2 penalty added to the gradient, default 0. */
  weightDecay?: number;
}

export class SGD extends Optimizer {
  readonly momentum: number;
  readonly dampening: number;
  readonly nesterov: boolean;
  /** Bound in place of the momentum buffer when momentum is off (the kernel never touches it). */
  private placeholder: Tensor | null = null;

  constructor(params: Tensor[] | ParamGroup[], opts: SGDOptions = {}) {
    const momentum = opts.momentum ?? 0;
    super('SGD', params, opts.lr ?? 1e-2, opts.weightDecay ?? 0, momentum > 0 ? ['momentum_buffer'] : []);
    this.momentum = momentum;
    this.dampening = opts.dampening ?? 0;
    this.nesterov = opts.nesterov ?? false;
    checkHyper('SGD', 'momentum', this.momentum, 0);
    checkHyper('SGD', 'dampening', this.dampening, 0, 1);
    if (this.nesterov && (this.momentum <= 0 || this.dampening !== 0)) {
      throw new RangeError(`SGD: nesterov needs momentum > 0 and dampening 0 (got momentum ${this.momentum}, dampening ${this.dampening})`);
    }
  }

  protected update(a: UpdateArgs): void {
    const { param: p, grad: g } = a;
    const useMom = this.momentum > 0;
    if (!useMom && !this.placeholder) this.placeholder = keep(empty([1]));
    const b = useMom ? a.state[0] : this.placeholder!;
    const flags = (a.fresh ? 1 : 0) | (useMom ? 2 : 0) | (this.nesterov ? 4 : 0);
    getEngine().dispatch({
      shader: 'sgd',
      params: new Params()
        .u32(p.size, p.offset, g.offset, a.scaleOffset, flags)
        .f32(a.lr, a.weightDecay, this.momentum, 1 - this.dampening),
      buffers: [p.buf, g.buf, b.buf, a.scaleBuf],
      workgroups: grid1d(p.size),
      label: `SGD step of '${this.keys[a.index]}' ${shapeStr(p.shape)}`,
    });
  }

  override dispose(): void {
    this.placeholder?.dispose();
    this.placeholder = null;
    super.dispose();
  }
}
