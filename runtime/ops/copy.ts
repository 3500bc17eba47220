// Strided copy (contiguous), dtype casts, and constant fills.
import { type DType } from '../dtype.ts';
import { Params, getEngine } from '../engine.ts';
import { Tensor, empty, shapeStr } from '../tensor.ts';
import { record } from '../autograd.ts';
import { checkF16, collapseDims, computeType, enableFor, grid1d, padTo } from './util.ts';

/**
 * Runs the unary kernel: y = OP(x) elementwise over a strided view, contiguous output.
 * `op` is a WGSL expression in `x` (compute type) and scalars `a0`, `a1`.
 */
export function unaryKernel(x: Tensor, op: string, label: string, outDType: DType = x.dtype, a0 = 0, a1 = 0, computeAs?: string): Tensor {
  checkF16(label, x);
  const y = empty(x.shape, outDType);
  const n = x.size;
  if (n === 0) return y;
  const c = collapseDims(x.shape, [x.strides]);
  const contiguous = c.shape.length <= 1 && (c.shape.length === 0 || c.strides[0][0] === 1);
  const p = new Params()
    .u32(n, contiguous ? 0 : c.shape.length, x.offset, 0)
    .u32(...padTo(c.shape))
    .u32(...padTo(c.strides[0], 0))
    .f32(a0, a1);
  getEngine().dispatch({
    shader: 'unary',
    defines: { ENABLE: enableFor(x.dtype, outDType), TIN: x.dtype, TOUT: outDType, CVT: computeAs ?? computeType(x.dtype), OP: op },
    params: p,
    buffers: [x.buf, y.buf],
    workgroups: grid1d(n),
    label: `${label} ${shapeStr(x.shape)}`,
  });
  return y;
}

/** A contiguous copy of x, or a view of x when it is already contiguous from offset 0. */
export function contiguous(x: Tensor): Tensor {
  // The view case records too: otherwise a contiguous input would silently leave the graph.
  const y = x.isContiguous() && x.offset === 0 ? x.view(x.shape) : unaryKernel(x, 'x', 'contiguous');
  return record(y, 'contiguous', [x], (g) => [g]);
}

/** Converts to another dtype (float <-> int truncates toward zero). */
export function cast(x: Tensor, dtype: DType): Tensor {
  if (dtype === x.dtype) return contiguous(x);
  const y = unaryKernel(x, 'x', `cast to ${dtype}`, dtype, 0, 0, computeType(x.dtype));
  if ((x.dtype === 'f32' || x.dtype === 'f16') && (dtype === 'f32' || dtype === 'f16')) {
    const from = x.dtype;
    return record(y, 'cast', [x], (g) => [cast(g, from)]);
  }
  return y;
}

/** A new tensor filled with `value`. */
export function full(shape: readonly number[], value: number, dtype: DType = 'f32'): Tensor {
  const y = empty(shape, dtype);
  const n = y.size;
  if (n === 0) return y;
  // The value travels in the params (never in the shader source: no recompiles per value).
  const p = new Params().u32(n);
  let expr: string;
  if (dtype === 'i32') (p.i32(Math.trunc(value)), (expr = 'bitcast<i32>(P[0].y)'));
  else if (dtype === 'u32') (p.u32(Math.trunc(value)), (expr = 'P[0].y'));
  else (p.f32(value), (expr = `${dtype}(bitcast<f32>(P[0].y))`));
  getEngine().dispatch({
    shader: 'fill',
    defines: { ENABLE: enableFor(dtype), TOUT: dtype, VALUE: expr },
    params: p,
    buffers: [y.buf],
    workgroups: grid1d(n),
    label: `fill ${shapeStr(shape)}`,
  });
  return y;
}

export const zeros = (shape: readonly number[], dtype: DType = 'f32'): Tensor => full(shape, 0, dtype);
export const ones = (shape: readonly number[], dtype: DType = 'f32'): Tensor => full(shape, 1, dtype);
export const zerosLike = (t: Tensor): Tensor => full(t.shape, 0, t.dtype);
export const onesLike = (t: Tensor): Tensor => full(t.shape, 1, t.dtype);
