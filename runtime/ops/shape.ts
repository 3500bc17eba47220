// Shape ops. Views share storage where the layout allows (reshape of a contiguous
// tensor, permute, expand, slice); otherwise a contiguous copy is made first.
import { record } from '../autograd.ts';
import { Tensor, numel, shapeStr } from '../tensor.ts';
import { contiguous } from './copy.ts';

/** Resolves one -1 in a target shape; the error names both shapes. */
export function resolveShape(op: string, from: readonly number[], to: readonly number[]): number[] {
  const n = numel(from);
  const unknown = to.filter((d) => d === -1).length;
  if (unknown > 1) throw new RangeError(`${op}: more than one -1 in ${shapeStr(to)}`);
  const known = to.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
  const out = to.map((d) => (d === -1 ? (known === 0 ? 0 : n / known) : d));
  if (numel(out) !== n || out.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new RangeError(`${op}: cannot reshape ${shapeStr(from)} (${n} elements) to ${shapeStr(to)}`);
  }
  return out;
}

/** Same elements in a new shape; a view when x is contiguous. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const to = resolveShape('reshape', x.shape, shape);
  let y: Tensor;
  if (x.isContiguous()) y = x.view(to, undefined, x.offset);
  else {
    const c = contiguous(x);
    y = c.view(to);
    c.dispose();
  }
  const from = x.shape;
  return record(y, 'reshape', [x], (g) => [reshape(g, from)]);
}
