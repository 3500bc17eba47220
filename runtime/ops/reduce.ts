// Reductions over any axes: sum, mean (more in this file as they are added).
// A reduction over one axis views the contiguous input as [outer, R, inner]; several
// axes are reduced one after another.
import { Params, getEngine } from '../engine.ts';
import { Tensor, empty, shapeStr } from '../tensor.ts';
import { record } from '../autograd.ts';
import { contiguous } from './copy.ts';
import { mulScalar } from './elementwise.ts';
import { reshape } from './shape.ts';
import { assertFloat, grid1d, normAxis, sameShape } from './util.ts';

interface ReduceKernel {
  init: string;
  acc: string;
  fin: string;
}

const SUM: ReduceKernel = { init: '0.0', acc: 'acc + v', fin: 'acc * scale' };

/** Reduces one axis of x with the given kernel; keepdim keeps a size-1 axis. */
function reduceAxis(x: Tensor, axis: number, k: ReduceKernel, label: string, keepdim: boolean, scale = 1): Tensor {
  const xc = contiguous(x);
  const outer = x.shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const R = x.shape[axis];
  const inner = x.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const outShape = keepdim ? x.shape.map((d, i) => (i === axis ? 1 : d)) : x.shape.filter((_, i) => i !== axis);
  const y = empty(outShape);
  const n = outer * inner;
  getEngine().dispatch({
    shader: 'reduce',
    defines: { INIT: k.init, ACC: k.acc, FIN: k.fin },
    params: new Params().u32(n, R, inner, xc.offset).f32(scale),
    buffers: [xc.buf, y.buf],
    workgroups: grid1d(n),
    label: `${label} axis ${axis} of ${shapeStr(x.shape)}`,
  });
  xc.dispose();
  return y;
}

function axesList(op: string, x: Tensor, axes?: number | number[]): number[] {
  if (axes === undefined) return x.shape.map((_, i) => i);
  const list = (Array.isArray(axes) ? axes : [axes]).map((a) => normAxis(op, a, x.rank));
  if (new Set(list).size !== list.length) throw new RangeError(`${op}: repeated axis in [${axes}]`);
  return list.sort((a, b) => b - a);
}

/** The shape x has after reducing `axes` with keepdim. */
function keptShape(shape: readonly number[], axes: number[]): number[] {
  return shape.map((d, i) => (axes.includes(i) ? 1 : d));
}

function reduceMany(x: Tensor, axes: number[], k: ReduceKernel, label: string, keepdim: boolean, scale: number): Tensor {
  if (axes.length === 0) return x.view(x.shape, x.strides);
  let cur = x;
  // Reduce from the highest axis down so lower axis numbers stay valid; scale once at the end.
  axes.forEach((a, i) => {
    const next = reduceAxis(cur, a, k, label, true, i === axes.length - 1 ? scale : 1);
    if (cur !== x) cur.dispose();
    cur = next;
  });
  if (keepdim) return cur;
  const out = reshape(cur, x.shape.filter((_, i) => !axes.includes(i)));
  cur.dispose();
  return out;
}

/** Sum over `axes` (all when omitted). Backward: broadcast the gradient back. */
export function sum(x: Tensor, axes?: number | number[], keepdim = false): Tensor {
  assertFloat('sum', 'x', x);
  const list = axesList('sum', x, axes);
  const y = reduceMany(x, list, SUM, 'sum', keepdim, 1);
  const inShape = x.shape;
  return record(y, 'sum', [x], (g) => [broadcastTo(reshape(g, keptShape(inShape, list)), inShape)]);
}

/** Mean over `axes` (all when omitted). */
export function mean(x: Tensor, axes?: number | number[], keepdim = false): Tensor {
  assertFloat('mean', 'x', x);
  const list = axesList('mean', x, axes);
  const count = list.reduce((a, i) => a * x.shape[i], 1);
  const y = reduceMany(x, list, SUM, 'mean', keepdim, 1 / Math.max(count, 1));
  const inShape = x.shape;
  return record(y, 'mean', [x], (g) => {
    const b = broadcastTo(reshape(g, keptShape(inShape, list)), inShape);
    const r = mulScalar(b, 1 / Math.max(count, 1));
    b.dispose();
    return [r];
  });
}

/** Materialises a broadcast of x to `shape` (a contiguous copy). */
export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(x.shape, shape)) return contiguous(x);
  const r = shape.length;
  if (x.rank > r) throw new RangeError(`broadcastTo: cannot broadcast ${shapeStr(x.shape)} to ${shapeStr(shape)}`);
  const strides = new Array<number>(r).fill(0);
  for (let i = 0; i < x.rank; i++) {
    const j = r - x.rank + i;
    if (x.shape[i] !== shape[j] && x.shape[i] !== 1) throw new RangeError(`broadcastTo: cannot broadcast ${shapeStr(x.shape)} to ${shapeStr(shape)}`);
    strides[j] = x.shape[i] === 1 ? 0 : x.strides[i];
  }
  const v = x.view(shape, strides);
  const out = contiguous(v);
  v.dispose();
  return out;
}

/** Sums a broadcast gradient back down to `shape` (the inverse of broadcasting). */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(g.shape, shape)) return g.view(g.shape, g.strides);
  const lead = g.rank - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.rank; i++) {
    if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  }
  const r = reduceMany(g, axes.sort((a, b) => b - a), SUM, 'sumTo', true, 1);
  const out = reshape(r, shape);
  r.dispose();
  return out;
}

