// Fused neural-network kernels, each forward beside its backward:
// softmax / logSoftmax, rmsNorm, layerNorm, rope (with M-RoPE sections), crossEntropy.
// Row kernels run one workgroup per row (shaders/softmax.wgsl, rmsnorm.wgsl, layernorm.wgsl,
// cross_entropy.wgsl); weight gradients are per-chunk column partials summed by a second
// kernel, so no atomics are needed.
import { assertDType } from '../dtype.ts';
import { Params, getEngine, grid } from '../engine.ts';
import { Tensor, empty, shapeStr } from '../tensor.ts';
import { noGrad, record } from '../autograd.ts';
import { cast, contiguous } from './copy.ts';
import { sum } from './reduce.ts';
import { reshape } from './shape.ts';
import { assertFloat, checkF16, enableFor, grid1d, normAxis } from './util.ts';

// ---------------------------------------------------------------- shared helpers

/**
 * Invocations per row. GPUs: enough to cover short rows without idle lanes, 256 for long
 * ones. Software adapters (lavapipe): 8, one SIMD-wide subgroup, because each workgroup
 * barrier there is costly; measured on 2 cores, rows of 16 to 8192 ran 2-10x faster at 8
 * than at 64-256.
 */
function rowWG(d: number): number {
  if (wgOverride !== null) return wgOverride;
  if (getEngine().ctx.isSoftware) return 8;
  return d <= 32 ? 32 : d <= 128 ? 64 : 256;
}

let wgOverride: number | null = null;

/**
 * Forces the invocations per row of the row kernels (a power of two, 1 to 256), or restores
 * the per-adapter choice with null. For benchmarks, and for tests that run the GPU
 * variants on a software adapter.
 */
export function setRowWorkgroupSize(n: number | null): void {
  if (n !== null && (!Number.isInteger(n) || n < 1 || n > 256 || (n & (n - 1)) !== 0)) {
    throw new RangeError(`setRowWorkgroupSize: ${n} is not a power of two from 1 to 256`);
  }
  wgOverride = n;
}

/** A 2D grid of one workgroup per row. */
function rowGrid(rows: number): [number, number] {
  return grid(rows, getEngine().ctx.limits.maxComputeWorkgroupsPerDimension);
}

/** contiguous() without a graph node: ops here record their own node on the original input. */
function dense(x: Tensor): Tensor {
  return noGrad(() => contiguous(x));
}

/** Float dtype defines shared by the kernels (storage T, compute f32). */
function floatDefines(op: string, ...ts: Tensor[]): { ENABLE: string; T: string } {
  checkF16(op, ...ts);
  return { ENABLE: enableFor(...ts.map((t) => t.dtype)), T: ts[0].dtype };
}

function assertWeight(op: string, name: string, w: Tensor, x: Tensor): void {
  const d = x.shape[x.rank - 1];
  if (w.rank !== 1 || w.shape[0] !== d) {
    throw new RangeError(`${op}: ${name} has shape ${shapeStr(w.shape)}, expected [${d}] (the last dim of x ${shapeStr(x.shape)})`);
  }
  if (w.dtype !== x.dtype) throw new TypeError(`${op}: ${name} has dtype ${w.dtype} but x has dtype ${x.dtype}`);
}

// Rows per chunk of the weight-gradient partials: at most ~1024 chunks, at least 32 rows each.
function chunkRows(rows: number): number {
  return Math.max(32, Math.ceil(rows / 1024));
}

/** Sums f32 partials [chunks, D] over chunks and returns them in `dtype`. */
function finishColumnSum(part: Tensor, dtype: Tensor['dtype']): Tensor {
  const s = part.shape[0] === 1 ? reshape(part, [part.shape[1]]) : sum(part, 0);
  if (dtype === 'f32') return s;
  const c = cast(s, dtype);
  s.dispose();
  return c;
}

// ---------------------------------------------------------------- softmax / logSoftmax

/** Runs softmax.wgsl forward over `axis`: mode 0 softmax, 1 log-softmax. */
function softmaxForward(x: Tensor, axis: number, mode: 0 | 1, label: string): Tensor {
  const xc = dense(x);
  const D = x.shape[axis];
  const inner = x.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const rows = D === 0 ? 0 : x.size / D;
  const y = empty(x.shape, x.dtype);
  const wg = rowWG(D);
  getEngine().dispatch({
    shader: 'softmax',
    entry: 'forward',
    defines: { ...floatDefines(label, x), WG: wg },
    params: new Params().u32(rows, D, inner, xc.offset, mode, 0),
    buffers: [xc.buf, y.buf],
    workgroups: rowGrid(rows),
    label: `${label} axis ${axis} of ${shapeStr(x.shape)}`,
  });
  xc.dispose();
  return y;
}

/** softmax.wgsl backward: the gradient of the input from the saved output y. */
function softmaxBackward(y: Tensor, g: Tensor, axis: number, mode: 0 | 1, label: string): Tensor {
  const gc = dense(g);
  const D = y.shape[axis];
  const inner = y.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const rows = D === 0 ? 0 : y.size / D;
  const dx = empty(y.shape, y.dtype);
  getEngine().dispatch({
    shader: 'softmax',
    entry: 'backward',
    defines: { ...floatDefines(label, y), WG: rowWG(D) },
    params: new Params().u32(rows, D, inner, y.offset, mode, gc.offset),
    buffers: [y.buf, gc.buf, dx.buf],
    workgroups: rowGrid(rows),
    label: `${label} backward axis ${axis} of ${shapeStr(y.shape)}`,
  });
  gc.dispose();
  return dx;
}

function softmaxLike(x: Tensor, axis: number, mode: 0 | 1, op: string): Tensor {
  assertFloat(op, 'x', x);
  if (x.rank === 0) throw new RangeError(`${op}: x must have at least one dim, got shape ${shapeStr(x.shape)}`);
  const a = normAxis(op, axis, x.rank);
  const y = softmaxForward(x, a, mode, op);
  return record(y, op, [x], (g, [ys]) => [softmaxBackward(ys, g, a, mode, op)], [y]);
}

/** Numerically stable softmax over `axis` (default the last). */
export function softmax(x: Tensor, axis = -1): Tensor {
  return softmaxLike(x, axis, 0, 'softmax');
}

/** log(softmax(x)) over `axis`, computed as x - max - log(sum(exp(x - max))). */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  return softmaxLike(x, axis, 1, 'logSoftmax');
}

// ---------------------------------------------------------------- rmsNorm

/**
 * RMSNorm over the last dim (Qwen2): y = x * rsqrt(mean(x^2) + eps) * weight.
 * x [..., D], weight [D]. Backward gives x and weight gradients.
 */
export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-6): Tensor {
  const op = 'rmsNorm';
  assertFloat(op, 'x', x);
  if (x.rank === 0) throw new RangeError(`${op}: x must have at least one dim, got shape ${shapeStr(x.shape)}`);
  assertWeight(op, 'weight', weight, x);
  const D = x.shape[x.rank - 1];
  const rows = D === 0 ? 0 : x.size / D;
  const xc = dense(x);
  const wc = dense(weight);
  const y = empty(x.shape, x.dtype);
  const rstd = empty([rows], 'f32');
  const wg = rowWG(D);
  const defines = { ...floatDefines(op, x), WG: wg };
  getEngine().dispatch({
    shader: 'rmsnorm',
    entry: 'forward',
    defines,
    params: new Params().u32(rows, D, xc.offset, wc.offset).f32(eps).u32(0, 0),
    buffers: [xc.buf, wc.buf, y.buf, rstd.buf],
    workgroups: rowGrid(rows),
    label: `${op} ${shapeStr(x.shape)}`,
  });
  const out = record(
    y,
    op,
    [x, weight],
    (g, [xs, ws, rs]) => {
      const gc = dense(g);
      let dx: Tensor | null = null;
      let dw: Tensor | null = null;
      if (x.requiresGrad) {
        dx = empty(xs.shape, xs.dtype);
        getEngine().dispatch({
          shader: 'rmsnorm',
          entry: 'backward',
          defines,
          params: new Params().u32(rows, D, xs.offset, ws.offset).f32(eps).u32(gc.offset, 0),
          buffers: [xs.buf, ws.buf, rs.buf, gc.buf, dx.buf],
          workgroups: rowGrid(rows),
          label: `${op} backward ${shapeStr(xs.shape)}`,
        });
      }
      if (weight.requiresGrad) {
        const per = chunkRows(rows);
        const chunks = Math.max(1, Math.ceil(rows / per));
        const part = empty([chunks, D], 'f32');
        getEngine().dispatch({
          shader: 'rmsnorm',
          entry: 'weight_grad',
          defines,
          params: new Params().u32(rows, D, xs.offset, 0).f32(eps).u32(gc.offset, per),
          buffers: [xs.buf, rs.buf, gc.buf, part.buf],
          workgroups: [Math.ceil(D / wg), chunks],
          label: `${op} weight grad ${shapeStr(xs.shape)}`,
        });
        dw = finishColumnSum(part, ws.dtype);
        part.dispose();
      }
      gc.dispose();
      return [dx, dw];
    },
    [xc, wc, rstd],
  );
  xc.dispose();
  wc.dispose();
  rstd.dispose();
  return out;
}

// ---------------------------------------------------------------- layerNorm

/**
 * LayerNorm over the last dim: y = (x - mean) / sqrt(var + eps) * weight + bias, with the
 * biased variance. x [..., D], weight [D], bias [D]; gradients for all three.
 */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-5): Tensor {
  const op = 'layerNorm';
  assertFloat(op, 'x', x);
  if (x.rank === 0) throw new RangeError(`${op}: x must have at least one dim, got shape ${shapeStr(x.shape)}`);
  assertWeight(op, 'weight', weight, x);
  assertWeight(op, 'bias', bias, x);
  const D = x.shape[x.rank - 1];
  const rows = D === 0 ? 0 : x.size / D;
  const xc = dense(x);
  const wc = dense(weight);
  const bc = dense(bias);
  const y = empty(x.shape, x.dtype);
  const stats = empty([rows, 2], 'f32');
  const wg = rowWG(D);
  const defines = { ...floatDefines(op, x), WG: wg };
  getEngine().dispatch({
    shader: 'layernorm',
    entry: 'forward',
    defines,
    params: new Params().u32(rows, D, xc.offset, wc.offset, bc.offset, 0).f32(eps).u32(0),
    buffers: [xc.buf, wc.buf, bc.buf, y.buf, stats.buf],
    workgroups: rowGrid(rows),
    label: `${op} ${shapeStr(x.shape)}`,
  });
  bc.dispose();
  const out = record(
    y,
    op,
    [x, weight, bias],
    (g, [xs, ws, st]) => {
      const gc = dense(g);
      let dx: Tensor | null = null;
      let dw: Tensor | null = null;
      let db: Tensor | null = null;
      if (x.requiresGrad) {
        dx = empty(xs.shape, xs.dtype);
        getEngine().dispatch({
          shader: 'layernorm',
          entry: 'backward',
          defines,
          params: new Params().u32(rows, D, xs.offset, ws.offset, 0, gc.offset).f32(eps).u32(0),
          buffers: [xs.buf, ws.buf, st.buf, gc.buf, dx.buf],
          workgroups: rowGrid(rows),
          label: `${op} backward ${shapeStr(xs.shape)}`,
        });
      }
      if (weight.requiresGrad || bias.requiresGrad) {
        const per = chunkRows(rows);
        const chunks = Math.max(1, Math.ceil(rows / per));
        const pw = empty([chunks, D], 'f32');
        const pb = empty([chunks, D], 'f32');
        getEngine().dispatch({
          shader: 'layernorm',
          entry: 'param_grad',
          defines,
          params: new Params().u32(rows, D, xs.offset, 0, 0, gc.offset).f32(eps).u32(per),
          buffers: [xs.buf, st.buf, gc.buf, pw.buf, pb.buf],
          workgroups: [Math.ceil(D / wg), chunks],
          label: `${op} param grad ${shapeStr(xs.shape)}`,
        });
        if (weight.requiresGrad) dw = finishColumnSum(pw, ws.dtype);
        if (bias.requiresGrad) db = finishColumnSum(pb, ws.dtype);
        pw.dispose();
        pb.dispose();
      }
      gc.dispose();
      return [dx, dw, db];
    },
    [xc, wc, stats],
  );
  xc.dispose();
  wc.dispose();
  stats.dispose();
  return out;
}

// ---------------------------------------------------------------- rope

export interface RopeOptions {
  /** Base of the frequencies: invFreq[j] = theta^(-2j/Dh). Default 1e6 (Qwen2). */
  theta?: number;
  /**
   * M-RoPE: how many frequency indices (summing to Dh/2) take their position from each
   * row of positions [S, B, T], in order (Qwen2-VL text: [16, 24, 24] for Dh = 128;
   * a 2D vision grid: [Dh/4, Dh/4] with rows = patch row, patch column). At most 4.
   */
  sections?: number[];
  /** Explicit frequencies (Dh/2 values) instead of theta^(-2j/Dh). */
  invFreq?: ArrayLike<number>;
}

const ROPE_MAX_HALF = 256;
const ROPE_MAX_SECTIONS = 4;

/**
 * Rotary embedding of x [B, H, T, Dh] (any strided view) in the rotate_half convention:
 * element i pairs with i + Dh/2 and turns by positions * invFreq[i]. positions is i32
 * [B, T] (plain RoPE) or [S, B, T] with S = sections.length (M-RoPE). The backward pass
 * turns the gradient by the negative angle; positions get no gradient.
 */
export function rope(x: Tensor, positions: Tensor, opts: RopeOptions = {}): Tensor {
  const op = 'rope';
  assertFloat(op, 'x', x);
  assertDType(op, 'positions', positions.dtype, ['i32']);
  if (x.rank !== 4) throw new RangeError(`${op}: x must be [B, H, T, Dh], got shape ${shapeStr(x.shape)}`);
  const [B, H, T, Dh] = x.shape;
  if (Dh % 2 !== 0) throw new RangeError(`${op}: head dim ${Dh} of x ${shapeStr(x.shape)} must be even`);
  const half = Dh / 2;
  if (half > ROPE_MAX_HALF) throw new RangeError(`${op}: head dim ${Dh} of x ${shapeStr(x.shape)} exceeds ${2 * ROPE_MAX_HALF}`);
  const sections = opts.sections ?? [half];
  const S = sections.length;
  if (S < 1 || S > ROPE_MAX_SECTIONS || sections.some((s) => !Number.isInteger(s) || s < 0)) {
    throw new RangeError(`${op}: sections [${sections.join(', ')}] must be 1 to ${ROPE_MAX_SECTIONS} non-negative integers`);
  }
  const total = sections.reduce((a, b) => a + b, 0);
  if (total !== half) {
    throw new RangeError(`${op}: sections [${sections.join(', ')}] sum to ${total}, expected Dh/2 = ${half} (x ${shapeStr(x.shape)})`);
  }
  const want = opts.sections ? [S, B, T] : [B, T];
  const posOk =
    (positions.rank === want.length && positions.shape.every((d, i) => d === want[i])) ||
    // one section may also come as [1, B, T]
    (!opts.sections && positions.rank === 3 && positions.shape[0] === 1 && positions.shape[1] === B && positions.shape[2] === T);
  if (!posOk) {
    throw new RangeError(`${op}: positions has shape ${shapeStr(positions.shape)}, expected ${shapeStr(want)} for x ${shapeStr(x.shape)}${opts.sections ? ` and ${S} sections` : ''}`);
  }
  let inv: number[];
  if (opts.invFreq) {
    if (opts.invFreq.length !== half) throw new RangeError(`${op}: invFreq has ${opts.invFreq.length} values, expected Dh/2 = ${half}`);
    inv = Array.from(opts.invFreq);
  } else {
    const theta = opts.theta ?? 1e6;
    inv = Array.from({ length: half }, (_, j) => 1 / theta ** ((2 * j) / Dh));
  }
  const ends: number[] = [];
  sections.reduce((acc, s) => (ends.push(acc + s), acc + s), 0);
  while (ends.length < ROPE_MAX_SECTIONS) ends.push(half);
  const defines = floatDefines(op, x);

  const run = (src: Tensor, pos: Tensor, sign: number, label: string): Tensor => {
    const out = empty([B, H, T, Dh], src.dtype);
    const n = B * H * T * half;
    const p = new Params()
      .u32(n, H, T, half, src.offset, pos.offset, B)
      .f32(sign)
      .u32(...src.strides)
      .u32(...ends.slice(0, ROPE_MAX_SECTIONS))
      .u32(0, 0, 0, 0)
      .f32(...inv);
    // The shader declares 69 vec4 of params: pad so the bound slice is that large.
    while (p.length < 69 * 4) p.u32(0);
    getEngine().dispatch({
      shader: 'rope',
      defines,
      params: p,
      buffers: [src.buf, pos.buf, out.buf],
      workgroups: grid1d(n, 64),
      label: `${label} ${shapeStr(src.shape)} positions ${shapeStr(positions.shape)}`,
    });
    return out;
  };

  const pc = dense(positions);
  const y = run(x, pc, 1, op);
  const out = record(y, op, [x], (g, [ps]) => [run(g, ps, -1, `${op} backward`)], [pc]);
  pc.dispose();
  return out;
}

// ---------------------------------------------------------------- crossEntropy

export interface CrossEntropyOptions {
  /** Targets equal to this contribute nothing (default -100). */
  ignoreIndex?: number;
  /** Per-token weights (f32, the targets' shape); 0 skips a token. Gets no gradient. */
  mask?: Tensor;
  /** 'mean' (default): sum(w * loss) / sum(w), 0 when nothing counts; 'sum'; 'none': per token. */
  reduction?: 'mean' | 'sum' | 'none';
}

const REDUCTIONS = { none: 0, sum: 1, mean: 2 } as const;

/**
 * Cross-entropy of logits [N, V] (or [B, T, V]) against i32 targets [N] (or [B, T]), a
 * fused log-softmax + NLL. The mean's divisor (counted tokens, weighted by the mask) is
 * computed on the GPU: no readback. Backward: (softmax - onehot) * w * g / divisor, fused.
 */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  const op = 'crossEntropy';
  assertFloat(op, 'logits', logits);
  assertDType(op, 'targets', targets.dtype, ['i32']);
  const reduction = opts.reduction ?? 'mean';
  if (!Object.hasOwn(REDUCTIONS, reduction)) throw new RangeError(`${op}: reduction '${reduction}' is not one of mean, sum, none`);
  if (logits.rank < 2 || targets.rank !== logits.rank - 1 || targets.shape.some((d, i) => d !== logits.shape[i])) {
    throw new RangeError(`${op}: logits ${shapeStr(logits.shape)} and targets ${shapeStr(targets.shape)} do not match: expected logits [N, V] with targets [N], or [B, T, V] with [B, T]`);
  }
  const mask = opts.mask;
  if (mask) {
    assertDType(op, 'mask', mask.dtype, ['f32']);
    if (mask.rank !== targets.rank || mask.shape.some((d, i) => d !== targets.shape[i])) {
      throw new RangeError(`${op}: mask has shape ${shapeStr(mask.shape)}, expected the targets' shape ${shapeStr(targets.shape)}`);
    }
  }
  // Leading dims flatten into N rows: the kernels index contiguous data as [N, V].
  const V = logits.shape[logits.rank - 1];
  const N = targets.size;
  const mode = REDUCTIONS[reduction];
  const xc = dense(logits);
  const tc = dense(targets);
  const mc = mask ? dense(mask) : null;
  const rowLoss = empty(targets.shape, 'f32');
  const lse = empty([N], 'f32');
  const wt = empty([N], 'f32');
  const defines = { ...floatDefines(op, logits), WG: rowWG(V) };
  const ignore = opts.ignoreIndex ?? -100;
  const params = () => new Params().u32(N, V, xc.offset, tc.offset, mc?.offset ?? 0, mc ? 1 : 0).i32(ignore).u32(mode, 0);
  const label = `${op} ${shapeStr(logits.shape)}`;
  getEngine().dispatch({
    shader: 'cross_entropy',
    entry: 'forward',
    defines,
    params: params(),
    buffers: [xc.buf, tc.buf, (mc ?? tc).buf, rowLoss.buf, lse.buf, wt.buf],
    workgroups: rowGrid(V === 0 ? 0 : N),
    label,
  });
  mc?.dispose();

  let out = rowLoss;
  let den: Tensor;
  if (mode === 0) den = lse.view(lse.shape); // unused by the kernel for 'none'; any buffer binds
  else {
    out = empty([], 'f32');
    den = empty([1], 'f32');
    getEngine().dispatch({
      shader: 'cross_entropy',
      entry: 'finalize',
      defines: { ...defines, WG: rowWG(N) },
      params: params(),
      buffers: [rowLoss.buf, wt.buf, out.buf, den.buf],
      workgroups: [1],
      label: `${label} ${reduction}`,
    });
    rowLoss.dispose();
  }

  const result = record(
    out,
    op,
    [logits],
    (g, [xs, ts, ls, ws, ds]) => {
      const gc = dense(g);
      const dx = empty(xs.shape, xs.dtype);
      getEngine().dispatch({
        shader: 'cross_entropy',
        entry: 'backward',
        defines,
        params: new Params().u32(N, V, xs.offset, ts.offset, 0, 0).i32(ignore).u32(mode, gc.offset),
        buffers: [xs.buf, ts.buf, ls.buf, ws.buf, gc.buf, ds.buf, dx.buf],
        workgroups: grid1d(N * V, 64),
        label: `${label} backward`,
      });
      gc.dispose();
      return [dx];
    },
    [xc, tc, lse, wt, den],
  );
  for (const t of [xc, tc, lse, wt, den]) t.dispose();
  return result;
}
