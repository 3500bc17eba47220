// What AdamW and SGD share: parameter bookkeeping, per-parameter state tensors that
// outlive tidy scopes, per-parameter step counts, the gradient scale binding, and the
// state dict used for checkpoints.
//
// A step records one fused dispatch per parameter that has a gradient and never reads
// anything back: step counts and bias corrections live on the host, and a gradient
// scale (from gradNormScale in clip.ts, or a loss-scale inverse) is a GPU tensor the
// kernel reads.
//
// State dict layout (every tensor a new handle the caller owns; disposing it never
// frees the optimizer's state):
//   `<key>.<slot>`  f32, the parameter's shape: one per state slot (e.g. exp_avg), only
//                   for parameters that have state (stepped at least once, or loaded);
//   `step`          i32 []: how many times step() ran (stepCount);
//   `param_steps`   i32 [number of params]: per-parameter step counts (bias correction
//                   and SGD's first momentum step use these, so a parameter that had no
//                   gradient on some steps is corrected like torch does).
// `<key>` is the parameter's name, or `param<i>` (its index) when it has none.
import { noGrad } from '../autograd.ts';
import { getEngine } from '../engine.ts';
import { keep } from '../scope.ts';
import { Tensor, empty, fromArray, shapeStr } from '../tensor.ts';
import { cast, contiguous, full } from '../ops/copy.ts';
import { sameShape } from '../ops/util.ts';
import type { GpuBuf } from '../pool.ts';

/** Parameters sharing a weight decay (e.g. no decay for norms and biases). */
export interface ParamGroup {
  params: Tensor[];
  weightDecay?: number;
}

export interface StepOptions {
  /** Learning rate for this step (from a schedule); the constructor's lr otherwise. */
  lr?: number;
  /** f32 tensor of one element: every gradient is multiplied by it inside the update. */
  gradScale?: Tensor;
}

/** Everything a subclass needs to record one parameter's update. */
export interface UpdateArgs {
  index: number;
  param: Tensor;
  /** Contiguous gradient (read its buffer from grad.offset). */
  grad: Tensor;
  /** This parameter's state tensors, one per slot, contiguous from offset 0. */
  state: Tensor[];
  /** True when the state was just allocated: the kernel must initialise it, not read it. */
  fresh: boolean;
  /** This parameter's step count, including the current step (1 on its first). */
  t: number;
  lr: number;
  weightDecay: number;
  scaleBuf: GpuBuf;
  scaleOffset: number;
}

export function checkHyper(op: string, name: string, v: number, lo: number, hi = Infinity, hiOpen = false): void {
  if (typeof v !== 'number' || !(v >= lo) || (hiOpen ? v >= hi : v > hi)) {
    throw new RangeError(`${op}: ${name} must be in [${lo}, ${hi}${hiOpen ? ')' : ']'}, got ${v}`);
  }
}

export abstract class Optimizer {
  readonly params: Tensor[];
  /** Names used in the state dict, one per parameter. */
  readonly keys: string[];
  /** Number of step() calls so far (what a schedule is usually evaluated at). */
  stepCount = 0;
  /** Default learning rate (step({lr}) overrides it for one step). */
  lr: number;
  private readonly decays: number[];
  private steps: number[];
  private state: (Tensor[] | null)[];
  private one: Tensor | null = null;
  private disposed = false;

  protected constructor(
    protected readonly opName: string,
    params: Tensor[] | ParamGroup[],
    lr: number,
    weightDecay: number,
    /** State slot names (e.g. ['exp_avg', 'exp_avg_sq']); empty for stateless updates. */
    protected readonly slots: readonly string[],
  ) {
    checkHyper(opName, 'lr', lr, 0);
    checkHyper(opName, 'weightDecay', weightDecay, 0);
    this.lr = lr;
    const groups: ParamGroup[] = params.length && params[0] instanceof Tensor ? [{ params: params as Tensor[] }] : (params as ParamGroup[]);
    this.params = [];
    this.decays = [];
    for (const g of groups) {
      const wd = g.weightDecay ?? weightDecay;
      checkHyper(opName, 'weightDecay of a param group', wd, 0);
      for (const p of g.params) {
        if (!(p instanceof Tensor)) throw new TypeError(`${opName}: params must be tensors or param groups ({ params: Tensor[] })`);
        this.params.push(p);
        this.decays.push(wd);
      }
    }
    if (new Set(this.params).size !== this.params.length) throw new Error(`${opName}: a parameter appears more than once`);
    this.keys = this.params.map((p, i) => p.name ?? `param${i}`);
    const dup = this.keys.find((k, i) => this.keys.indexOf(k) !== i);
    if (dup !== undefined) throw new Error(`${opName}: two parameters are named '${dup}' (state dict keys must be unique)`);
    for (const [i, p] of this.params.entries()) {
      if (p.disposed) throw new Error(`${opName}: parameter '${this.keys[i]}' is disposed`);
      if (p.dtype !== 'f32') throw new TypeError(`${opName}: parameter '${this.keys[i]}' has dtype ${p.dtype}, expected f32`);
      if (!p.isContiguous()) throw new Error(`${opName}: parameter '${this.keys[i]}' (shape ${shapeStr(p.shape)}) is not contiguous`);
    }
    this.steps = this.params.map(() => 0);
    this.state = this.params.map(() => null);
  }

  /** Records one parameter's fused update. */
  protected abstract update(a: UpdateArgs): void;

  /** One update of every parameter that has a gradient; records one dispatch each, reads nothing back. */
  step(opts: StepOptions = {}): void {
    this.checkAlive();
    const lr = opts.lr ?? this.lr;
    checkHyper(this.opName, 'lr', lr, 0);
    const s = opts.gradScale;
    if (s) {
      if (s.disposed) throw new Error(`${this.opName}.step: gradScale is disposed`);
      if (s.dtype !== 'f32' || s.size !== 1) throw new TypeError(`${this.opName}.step: gradScale must be an f32 tensor of one element, got ${s.dtype} ${shapeStr(s.shape)}`);
    }
    // Check every parameter before recording anything: an error leaves no parameter updated.
    const todo: number[] = [];
    this.params.forEach((p, i) => {
      if (p.disposed) throw new Error(`${this.opName}.step: parameter '${this.keys[i]}' is disposed`);
      const g = p.grad;
      if (!g) return;
      if (g.dtype !== 'f32') throw new TypeError(`${this.opName}.step: gradient of '${this.keys[i]}' has dtype ${g.dtype}, expected f32`);
      if (!sameShape(g.shape, p.shape)) {
        throw new RangeError(`${this.opName}.step: gradient of '${this.keys[i]}' has shape ${shapeStr(g.shape)}, parameter ${shapeStr(p.shape)}`);
      }
      if (g.storage === p.storage) throw new Error(`${this.opName}.step: gradient of '${this.keys[i]}' shares the parameter's storage`);
      todo.push(i);
    });
    const scale = s ?? this.scaleOne();
    noGrad(() => {
      for (const i of todo) {
        const p = this.params[i];
        const g0 = p.grad!;
        const g = g0.isContiguous() ? g0 : contiguous(g0);
        let st = this.state[i];
        const fresh = st === null;
        if (!st) st = this.state[i] = this.slots.map(() => keep(empty(p.shape)));
        this.steps[i]++;
        this.update({
          index: i,
          param: p,
          grad: g,
          state: st,
          fresh,
          t: this.steps[i],
          lr,
          weightDecay: this.decays[i],
          scaleBuf: scale.buf,
          scaleOffset: scale.offset,
        });
        if (g !== g0) g.dispose();
      }
    });
    this.stepCount++;
  }

  /** Drops every parameter's gradient (the next backward starts from nothing). */
  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** This parameter's step count (0 before its first update). */
  paramStep(i: number): number {
    return this.steps[i];
  }

  /** The optimizer state as tensors (see the layout at the top of this file). */
  stateDict(): Record<string, Tensor> {
    this.checkAlive();
    const out: Record<string, Tensor> = {};
    this.state.forEach((st, i) => {
      st?.forEach((t, k) => (out[`${this.keys[i]}.${this.slots[k]}`] = t.view(t.shape)));
    });
    out.step = fromArray([this.stepCount], [], 'i32');
    out.param_steps = fromArray(this.steps, [this.steps.length], 'i32');
    return out;
  }

  /**
   * Replaces the state with a copy of `sd` (from stateDict, perhaps through a
   * checkpoint); the caller keeps ownership of `sd`. Reads the two step tensors back.
   * Everything is checked before anything changes.
   */
  async loadStateDict(sd: Record<string, Tensor>): Promise<void> {
    this.checkAlive();
    const op = `${this.opName}.loadStateDict`;
    const need = (k: string): Tensor => {
      const t = sd[k];
      if (!t) throw new Error(`${op}: missing '${k}'`);
      if (t.disposed) throw new Error(`${op}: '${k}' is disposed`);
      return t;
    };
    const stepT = need('step');
    const psT = need('param_steps');
    if (stepT.size !== 1) throw new RangeError(`${op}: 'step' has shape ${shapeStr(stepT.shape)}, expected []`);
    if (psT.size !== this.params.length) {
      throw new RangeError(`${op}: 'param_steps' has ${psT.size} entries, this optimizer has ${this.params.length} parameters`);
    }
    const used = new Set(['step', 'param_steps']);
    const slotsOf: (Tensor[] | null)[] = [];
    this.params.forEach((p, i) => {
      const present = this.slots.map((s) => sd[`${this.keys[i]}.${s}`]);
      if (present.every((t) => t === undefined)) return void slotsOf.push(null);
      const ts = this.slots.map((s) => {
        const k = `${this.keys[i]}.${s}`;
        const t = need(k);
        used.add(k);
        if (!sameShape(t.shape, p.shape)) throw new RangeError(`${op}: '${k}' has shape ${shapeStr(t.shape)}, parameter ${shapeStr(p.shape)}`);
        if (t.dtype !== 'f32' && t.dtype !== 'f16') throw new TypeError(`${op}: '${k}' has dtype ${t.dtype}, expected f32`);
        return t;
      });
      slotsOf.push(ts);
    });
    const extra = Object.keys(sd).filter((k) => !used.has(k));
    if (extra.length) throw new Error(`${op}: unexpected keys ${extra.slice(0, 5).map((k) => `'${k}'`).join(', ')}${extra.length > 5 ? ', ...' : ''}`);
    const [stepV, psV] = await Promise.all([stepT.toArray(), psT.toArray()]);
    const steps = Array.from(psV, Number);
    steps.forEach((v, i) => {
      if (!Number.isInteger(v) || v < 0) throw new RangeError(`${op}: step count ${v} of '${this.keys[i]}' is not a non-negative integer`);
      if (v === 0 && slotsOf[i] && this.slots.length) throw new Error(`${op}: '${this.keys[i]}' has state but a step count of 0`);
    });
    noGrad(() => {
      const eng = getEngine();
      const copies = slotsOf.map((ts) =>
        ts?.map((t) => {
          const src = t.dtype === 'f32' ? contiguous(t) : cast(t, 'f32');
          const dst = keep(empty(t.shape));
          if (src.size) eng.copy(src.buf, src.offset * 4, dst.buf, 0, src.size * 4);
          src.dispose();
          return dst;
        }) ?? null,
      );
      for (const st of this.state) st?.forEach((t) => t.dispose());
      this.state = copies;
    });
    this.steps = steps;
    this.stepCount = Number(stepV[0]);
  }

  /** Frees the optimizer state (the parameters and their gradients are untouched). */
  dispose(): void {
    for (const st of this.state) st?.forEach((t) => t.dispose());
    this.state = this.params.map(() => null);
    this.one?.dispose();
    this.one = null;
    this.disposed = true;
  }

  private checkAlive(): void {
    if (this.disposed) throw new Error(`${this.opName}: optimizer used after dispose()`);
  }

  /** A kept 1.0, bound as the gradient scale when none is given. */
  private scaleOne(): Tensor {
    if (!this.one) this.one = keep(full([1], 1));
    return this.one;
  }
}
