// Helpers shared by op files: broadcasting, dimension collapsing, dtype defines, checks.
import { type DType, assertDType } from '../dtype.ts';
import { getEngine, grid } from '../engine.ts';
import { Tensor, shapeStr } from '../tensor.ts';

export const MAX_RANK = 6;

/** numpy-style broadcast of two shapes; the error names both. */
export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const r = Math.max(a.length, b.length);
  const out = new Array<number>(r);
  for (let i = 0; i < r; i++) {
    const da = a[a.length - r + i] ?? 1;
    const db = b[b.length - r + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new RangeError(`${op}: shapes ${shapeStr(a)} and ${shapeStr(b)} cannot be broadcast together`);
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** Strides of `t` as seen through a broadcast to `shape` (0 on broadcast dims). */
export function broadcastStrides(t: Tensor, shape: readonly number[]): number[] {
  const r = shape.length;
  const out = new Array<number>(r).fill(0);
  for (let i = 0; i < t.rank; i++) {
    const j = r - t.rank + i;
    out[j] = t.shape[i] === 1 && shape[j] !== 1 ? 0 : t.strides[i];
  }
  return out;
}

/**
 * Merges adjacent dims that are laid out contiguously relative to each other in every
 * operand, and drops size-1 dims, so kernels see the smallest rank (at most MAX_RANK).
 */
export function collapseDims(shape: readonly number[], strides: readonly (readonly number[])[]): { shape: number[]; strides: number[][] } {
  const dims: number[] = [];
  const st: number[][] = strides.map(() => []);
  for (let i = 0; i < shape.length; i++) {
    if (shape[i] === 1) continue;
    const k = dims.length;
    if (k > 0 && strides.every((s, q) => st[q][k - 1] === s[i] * shape[i])) {
      dims[k - 1] *= shape[i];
      strides.forEach((s, q) => (st[q][k - 1] = s[i]));
    } else {
      dims.push(shape[i]);
      strides.forEach((s, q) => st[q].push(s[i]));
    }
  }
  if (dims.length > MAX_RANK) throw new RangeError(`tensor of shape ${shapeStr(shape)} has more than ${MAX_RANK} non-mergeable dims`);
  return { shape: dims, strides: st };
}

/** Pads a list to MAX_RANK entries. */
export function padTo(v: readonly number[], fill = 1): number[] {
  return [...v, ...new Array(MAX_RANK - v.length).fill(fill)];
}

export function isContiguousLayout(shape: readonly number[], strides: readonly number[]): boolean {
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && strides[i] !== acc) return false;
    acc *= shape[i];
  }
  return true;
}

export function enableFor(...dtypes: DType[]): string {
  return dtypes.includes('f16') ? 'enable f16;' : '';
}

/** The type arithmetic runs in for a storage dtype (f16 computes in f32). */
export function computeType(dtype: DType): string {
  return dtype === 'f16' ? 'f32' : dtype;
}

export function isFloat(dtype: DType): boolean {
  return dtype === 'f32' || dtype === 'f16';
}

export function checkF16(op: string, ...ts: Tensor[]): void {
  if (ts.some((t) => t.dtype === 'f16') && !getEngine().ctx.hasF16) {
    throw new TypeError(`${op}: f16 tensors need the adapter feature shader-f16, which this adapter lacks`);
  }
}

export function assertFloat(op: string, name: string, t: Tensor): void {
  assertDType(op, name, t.dtype, ['f32', 'f16']);
}

export function assertSameDType(op: string, a: Tensor, b: Tensor): void {
  if (a.dtype !== b.dtype) throw new TypeError(`${op}: dtypes differ (${a.dtype} and ${b.dtype})`);
}

export function assertShape(op: string, name: string, t: Tensor, shape: readonly number[]): void {
  if (t.rank !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new RangeError(`${op}: ${name} has shape ${shapeStr(t.shape)}, expected ${shapeStr(shape)}`);
  }
}

/** Normalises a possibly negative axis; the error names the op and the rank. */
export function normAxis(op: string, axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= Math.max(rank, 1)) throw new RangeError(`${op}: axis ${axis} out of range for rank ${rank}`);
  return a;
}

/** 2D workgroup grid for n elements at `perGroup` elements per workgroup. */
export function grid1d(n: number, perGroup = 256): [number, number] {
  return grid(Math.ceil(n / perGroup), getEngine().ctx.limits.maxComputeWorkgroupsPerDimension);
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}
