// Elementwise ops, each forward with its backward rule beside it.
// Unary ops run shaders/unary.wgsl with a WGSL expression in `x`; binary ops run
// shaders/binary.wgsl with an expression in `a`, `b`, broadcasting through strides.
import { type DType } from '../dtype.ts';
import { Params, getEngine } from '../engine.ts';
import { Tensor, empty, shapeStr } from '../tensor.ts';
import { record } from '../autograd.ts';
import { full, unaryKernel } from './copy.ts';
import { sumTo } from './reduce.ts';
import {
  assertFloat,
  assertSameDType,
  broadcastShapes,
  broadcastStrides,
  checkF16,
  collapseDims,
  computeType,
  enableFor,
  grid1d,
  isContiguousLayout,
  padTo,
} from './util.ts';

// ---------------------------------------------------------------- kernels

/** y = OP(a, b) with numpy broadcasting; `op` is a WGSL expression in a, b and a0. */
export function binaryKernel(a: Tensor, b: Tensor, op: string, label: string, outDType: DType = a.dtype, a0 = 0): Tensor {
  assertSameDType(label, a, b);
  checkF16(label, a, b);
  const shape = broadcastShapes(label, a.shape, b.shape);
  const y = empty(shape, outDType);
  const n = y.size;
  if (n === 0) return y;
  const sa = broadcastStrides(a, shape);
  const sb = broadcastStrides(b, shape);
  const c = collapseDims(shape, [sa, sb]);
  const flags = (isContiguousLayout(c.shape, c.strides[0]) ? 1 : 0) | (isContiguousLayout(c.shape, c.strides[1]) ? 2 : 0);
  const p = new Params()
    .u32(n, c.shape.length, a.offset, b.offset)
    .u32(...padTo(c.shape))
    .u32(...padTo(c.strides[0], 0))
    .u32(...padTo(c.strides[1], 0))
    .u32(flags)
    .f32(a0);
  getEngine().dispatch({
    shader: 'binary',
    defines: { ENABLE: enableFor(a.dtype, outDType), TIN: a.dtype, TOUT: outDType, CVT: computeType(a.dtype), OP: op },
    params: p,
    buffers: [a.buf, b.buf, y.buf],
    workgroups: grid1d(n),
    label: `${label} ${shapeStr(a.shape)} ${shapeStr(b.shape)}`,
  });
  return y;
}

/** Defines a float unary op with its derivative expressed through other ops. */
function unary(name: string, expr: string, grad: ((x: Tensor, y: Tensor, g: Tensor) => Tensor) | null) {
  return (x: Tensor): Tensor => {
    assertFloat(name, 'x', x);
    const y = unaryKernel(x, expr, name);
    if (!grad) return y;
    return record(y, name, [x], (g, [xs, ys]) => [grad(xs, ys, g)], [x, y]);
  };
}

// ---------------------------------------------------------------- binary

export function add(a: Tensor, b: Tensor): Tensor {
  const y = binaryKernel(a, b, 'a + b', 'add');
  const sa = a.shape, sb = b.shape;
  return record(y, 'add', [a, b], (g) => [sumTo(g, sa), sumTo(g, sb)]);
}

export function sub(a: Tensor, b: Tensor): Tensor {
  const y = binaryKernel(a, b, 'a - b', 'sub');
  const sa = a.shape, sb = b.shape;
  return record(y, 'sub', [a, b], (g) => {
    const nb = neg(g);
    const r = [sumTo(g, sa), sumTo(nb, sb)];
    nb.dispose();
    return r;
  });
}

export function mul(a: Tensor, b: Tensor): Tensor {
  const y = binaryKernel(a, b, 'a * b', 'mul');
  return record(y, 'mul', [a, b], (g, [as, bs]) => [gradThrough(g, bs, as.shape, 'a * b'), gradThrough(g, as, bs.shape, 'a * b')], [a, b]);
}

export function div(a: Tensor, b: Tensor): Tensor {
  const y = binaryKernel(a, b, 'a / b', 'div');
  return record(
    y,
    'div',
    [a, b],
    (g, [as, bs]) => {
      const ga = gradThrough(g, bs, as.shape, 'a / b');
      // d(a/b)/db = -a / b^2
      const t = binaryKernel(as, bs, '-a / (b * b)', 'div backward');
      const gb = gradThrough(g, t, bs.shape, 'a * b');
      t.dispose();
      return [ga, gb];
    },
    [a, b],
  );
}

/** g combined with another tensor by `op`, then summed back to `shape`. */
function gradThrough(g: Tensor, other: Tensor, shape: readonly number[], op: string): Tensor {
  const t = binaryKernel(g, other, op, 'backward');
  const r = sumTo(t, shape);
  t.dispose();
  return r;
}

export function maximum(a: Tensor, b: Tensor): Tensor {
  const y = binaryKernel(a, b, 'max(a, b)', 'maximum');
  return record(
    y,
    'maximum',
    [a, b],
    (g, [as, bs]) => {
      // Ties send the gradient to a.
      const ma = binaryKernel(as, bs, 'select(0.0, 1.0, a >= b)', 'maximum backward');
      const mb = binaryKernel(as, bs, 'select(0.0, 1.0, a < b)', 'maximum backward');
      const r = [gradThrough(g, ma, as.shape, 'a * b'), gradThrough(g, mb, bs.shape, 'a * b')];
      ma.dispose();
      mb.dispose();
      return r;
    },
    [a, b],
  );
}

export function minimum(a: Tensor, b: Tensor): Tensor {
  const y = binaryKernel(a, b, 'min(a, b)', 'minimum');
  return record(
    y,
    'minimum',
    [a, b],
    (g, [as, bs]) => {
      const ma = binaryKernel(as, bs, 'select(0.0, 1.0, a <= b)', 'minimum backward');
      const mb = binaryKernel(as, bs, 'select(0.0, 1.0, a > b)', 'minimum backward');
      const r = [gradThrough(g, ma, as.shape, 'a * b'), gradThrough(g, mb, bs.shape, 'a * b')];
      ma.dispose();
      mb.dispose();
      return r;
    },
    [a, b],
  );
}

/** a ** b elementwise (b a tensor); for a scalar exponent use powScalar. */
export function pow(a: Tensor, b: Tensor): Tensor {
  const y = binaryKernel(a, b, 'pow(a, b)', 'pow');
  return record(
    y,
    'pow',
    [a, b],
    (g, [as, bs, ys]) => {
      const da = binaryKernel(as, bs, 'select(b * pow(a, b - 1.0), 0.0, b == 0.0)', 'pow backward');
      const ga = gradThrough(g, da, as.shape, 'a * b');
      da.dispose();
      // d/db = y * log(a); defined as 0 where a == 0.
      const la = unaryKernel(as, 'select(log(x), 0.0, x == 0.0)', 'pow backward');
      const db = binaryKernel(ys, la, 'a * b', 'pow backward');
      const gb = gradThrough(g, db, bs.shape, 'a * b');
      la.dispose();
      db.dispose();
      return [ga, gb];
    },
    [a, b, y],
  );
}

// ---------------------------------------------------------------- scalar forms

export function addScalar(x: Tensor, s: number): Tensor {
  assertFloat('addScalar', 'x', x);
  const y = unaryKernel(x, 'x + a0', 'addScalar', x.dtype, s);
  return record(y, 'addScalar', [x], (g) => [g]);
}

export function mulScalar(x: Tensor, s: number): Tensor {
  assertFloat('mulScalar', 'x', x);
  const y = unaryKernel(x, 'x * a0', 'mulScalar', x.dtype, s);
  return record(y, 'mulScalar', [x], (g) => [mulScalar(g, s)]);
}

/**
 * x ** p. Integer p (|p| <= 2^24) uses repeated squaring (ipow in unary.wgsl): correct for
 * any sign of x, x ** 0 == 1 even at 0, and as accurate as a few multiplies.
 * Other p use WGSL pow, defined for x >= 0 only.
 */
export function powScalar(x: Tensor, p: number): Tensor {
  assertFloat('powScalar', 'x', x);
  // WGSL pow(x, e) is exp2(e * log2(x)): NaN for x < 0, inexact for integer e, pow(0, 0) = 0 on lavapipe.
  const expr = Number.isInteger(p) && Math.abs(p) <= 2 ** 24 ? 'ipow(x, a0)' : 'pow(x, a0)';
  const y = unaryKernel(x, expr, 'powScalar', x.dtype, p);
  return record(
    y,
    'powScalar',
    [x],
    (g, [xs]) => {
      const d = p === 0 ? unaryKernel(xs, '0.0', 'powScalar backward') : unaryKernel(xs, `a0 * ${expr.replaceAll('a0', 'a1')}`, 'powScalar backward', xs.dtype, p, p - 1);
      const r = mul(g, d);
      d.dispose();
      return [r];
    },
    [x],
  );
}

/** Clamps to [lo, hi]; the gradient passes where lo <= x <= hi. */
export function clamp(x: Tensor, lo = -Infinity, hi = Infinity): Tensor {
  assertFloat('clamp', 'x', x);
  const y = unaryKernel(x, 'clamp(x, a0, a1)', 'clamp', x.dtype, Math.max(lo, -3.4e38), Math.min(hi, 3.4e38));
  return record(
    y,
    'clamp',
    [x],
    (g, [xs]) => {
      const m = unaryKernel(xs, 'select(0.0, 1.0, x >= a0 && x <= a1)', 'clamp backward', xs.dtype, Math.max(lo, -3.4e38), Math.min(hi, 3.4e38));
      const r = mul(g, m);
      m.dispose();
      return [r];
    },
    [x],
  );
}

// ---------------------------------------------------------------- unary

/** g * f(x, y) where f is a WGSL expression of x (input) and y (output) — the local derivative. */
function chain(g: Tensor, x: Tensor, y: Tensor, derivative: string, label: string): Tensor {
  const d = binaryKernel(x, y, derivative.replaceAll('X', 'a').replaceAll('Y', 'b'), label);
  const r = mul(g, d);
  d.dispose();
  return r;
}

export const neg = unary('neg', '-x', (_x, _y, g) => neg(g));
export const exp = unary('exp', 'exp(x)', (x, y, g) => chain(g, x, y, 'Y', 'exp backward'));
export const log = unary('log', 'log(x)', (x, y, g) => chain(g, x, y, '1.0 / X', 'log backward'));
export const sqrt = unary('sqrt', 'sqrt(x)', (x, y, g) => chain(g, x, y, '0.5 / Y', 'sqrt backward'));
export const rsqrt = unary('rsqrt', 'inverseSqrt(x)', (x, y, g) => chain(g, x, y, '-0.5 * Y * Y * Y', 'rsqrt backward'));
export const abs = unary('abs', 'abs(x)', (x, y, g) => chain(g, x, y, 'sign(X)', 'abs backward'));
export const tanh = unary('tanh', 'tanh(clamp(x, -20.0, 20.0))', (x, y, g) => chain(g, x, y, '1.0 - Y * Y', 'tanh backward'));
export const sigmoid = unary('sigmoid', '1.0 / (1.0 + exp(-x))', (x, y, g) => chain(g, x, y, 'Y * (1.0 - Y)', 'sigmoid backward'));
export const silu = unary('silu', 'x / (1.0 + exp(-x))', (x, y, g) =>
  chain(g, x, y, '(1.0 / (1.0 + exp(-X))) * (1.0 + X * (1.0 - 1.0 / (1.0 + exp(-X))))', 'silu backward'),
);
export const relu = unary('relu', 'max(x, 0.0)', (x, y, g) => chain(g, x, y, 'select(0.0, 1.0, X > 0.0)', 'relu backward'));
// GELU, tanh approximation (as in GPT-2 and Qwen's vision merger):
//   0.5 x (1 + tanh(u)), u = 0.7978845608 (x + 0.044715 x^3),
// written with 0.5 (1 + tanh(u)) = sigmoid(2u) and 1 - tanh(u)^2 = 4 sigmoid(2u) sigmoid(-2u),
// which keep full relative accuracy in the tails (1 - t * t cancels to 0 in f32 for |u| > ~9).
// 2u is clamped to +-80 so exp() never overflows; beyond that the terms are below 1e-34.
const GELU = 'x / (1.0 + exp(-clamp(1.5957691216 * (x + 0.044715 * x * x * x), -80.0, 80.0)))';
const GELU_2U = 'clamp(1.5957691216 * (X + 0.044715 * X * X * X), -80.0, 80.0)';
// d/dx = s + 2 x s r u' = s (1 + x r (2u')), s = sigmoid(2u), r = sigmoid(-2u), 2u' = 1.5957691216 (1 + 0.134145 x^2).
export const gelu = unary('gelu', GELU, (x, y, g) =>
  chain(
    g,
    x,
    y,
    `(1.0 / (1.0 + exp(-${GELU_2U}))) * (1.0 + X * (1.0 / (1.0 + exp(${GELU_2U}))) * 1.5957691216 * (1.0 + 0.134145 * X * X))`,
    'gelu backward',
  ),
);

// ---------------------------------------------------------------- selection

/** where(cond, a, b): a where cond != 0, else b; all three broadcast. cond may be any dtype. */
export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  assertSameDType('where', a, b);
  checkF16('where', cond, a, b);
  const shape = broadcastShapes('where', broadcastShapes('where', cond.shape, a.shape), b.shape);
  const y = empty(shape, a.dtype);
  const n = y.size;
  if (n > 0) {
    const c = collapseDims(shape, [broadcastStrides(cond, shape), broadcastStrides(a, shape), broadcastStrides(b, shape)]);
    getEngine().dispatch({
      shader: 'where',
      defines: { ENABLE: enableFor(cond.dtype, a.dtype), TC: cond.dtype, T: a.dtype },
      params: new Params()
        .u32(n, c.shape.length, cond.offset, a.offset, b.offset)
        .u32(...padTo(c.shape))
        .u32(...padTo(c.strides[0], 0), ...padTo(c.strides[1], 0), ...padTo(c.strides[2], 0)),
      buffers: [cond.buf, a.buf, b.buf, y.buf],
      workgroups: grid1d(n),
      label: `where ${shapeStr(cond.shape)} ${shapeStr(a.shape)} ${shapeStr(b.shape)}`,
    });
  }
  return record(
    y,
    'where',
    [a, b],
    (g, [cs, as, bs]) => {
      const z = full([], 0, g.dtype);
      const ga = where(cs, g, z);
      const gb = where(cs, z, g);
      const r = [sumTo(ga, as.shape), sumTo(gb, bs.shape)];
      z.dispose();
      ga.dispose();
      gb.dispose();
      return r;
    },
    [cond, a, b],
  );
}
