// Tensor: a typed view (shape, strides, element offset) over a pooled GPU buffer.
//
// Several tensors may share one Storage (views: reshape, permute, slice, expand); the
// storage counts its references and returns its buffer to the pool when the last view
// is disposed. Creating, reading and disposing are explicit; `tidy` (scope.ts) disposes
// whatever a block created and did not return.
import { type GpuBuf } from './pool.ts';
import { getEngine } from './engine.ts';
import { type DType, bytesFor, elementBytes, f16ToF32, f32ToF16, hostArrayFor } from './dtype.ts';
import { TENSOR_BRAND, registerInScope } from './scope.ts';
import type { GradNode } from './autograd.ts';

export class Storage {
  refs = 1;
  constructor(
    public buf: GpuBuf,
    readonly dtype: DType,
    readonly elements: number,
  ) {}
  retain(): this {
    this.refs++;
    return this;
  }
  release(): void {
    if (--this.refs === 0) getEngine().pool.release(this.buf);
  }
}

let nextId = 1;

export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export class Tensor {
  readonly [TENSOR_BRAND] = true;
  readonly id = nextId++;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  /** Element offset of this view into its storage. */
  readonly offset: number;
  readonly dtype: DType;
  /** True for leaves that should receive gradients, and for outputs of ops on them. */
  requiresGrad = false;
  /** Accumulated gradient (leaves only), owned by this tensor. */
  grad: Tensor | null = null;
  /** The op that produced this tensor, while its graph is alive. */
  node: GradNode | null = null;
  /** Optional name (parameters), used in checkpoints and error messages. */
  name?: string;
  private _storage: Storage | null;

  constructor(storage: Storage, shape: readonly number[], strides?: readonly number[], offset = 0) {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new TypeError(`invalid shape ${shapeStr(shape)}: dimensions must be non-negative integers`);
    }
    this._storage = storage;
    this.dtype = storage.dtype;
    this.shape = Object.freeze([...shape]);
    this.strides = Object.freeze(strides ? [...strides] : contiguousStrides(shape));
    this.offset = offset;
    registerInScope(this);
  }

  get storage(): Storage {
    if (!this._storage) throw new Error(`use of disposed tensor${this.name ? ` '${this.name}'` : ''} (shape ${shapeStr(this.shape)})`);
    return this._storage;
  }
  get buf(): GpuBuf {
    return this.storage.buf;
  }
  get disposed(): boolean {
    return this._storage === null;
  }
  get size(): number {
    return numel(this.shape);
  }
  get rank(): number {
    return this.shape.length;
  }

  /** True when elements are laid out densely in row-major order from `offset`. */
  isContiguous(): boolean {
    let acc = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] !== 1 && this.strides[i] !== acc) return false;
      acc *= this.shape[i];
    }
    return true;
  }

  /** A new view sharing this tensor's storage. Autograd is the caller's business. */
  view(shape: readonly number[], strides?: readonly number[], offset = this.offset): Tensor {
    return new Tensor(this.storage.retain(), shape, strides, offset);
  }

  dispose(): void {
    if (!this._storage) return;
    this._storage.release();
    this._storage = null;
    if (this.node) {
      this.node.unref();
      this.node = null;
    }
    if (this.grad) {
      this.grad.dispose();
      this.grad = null;
    }
  }

  /** Copies the elements to the host, in row-major order (f16 is widened to f32). */
  async toArray(): Promise<Float32Array | Int32Array | Uint32Array> {
    const { contiguous } = await import('./ops/copy.ts');
    const src = this.isContiguous() ? this : contiguous(this);
    try {
      // Exact byte counts (bytesFor rounds up to 4, which is wrong for an odd f16 offset).
      const bytes = elementBytes(src.dtype) * src.size;
      const start = elementBytes(src.dtype) * src.offset;
      // Copies must start at a multiple of 4 bytes: an odd f16 offset reads one earlier element.
      const aligned = start - (start % 4);
      const raw = await getEngine().read(src.buf, aligned, bytes + (start - aligned));
      const skip = start - aligned;
      if (src.dtype === 'f16') return f16ToF32(new Uint16Array(raw, skip, src.size));
      const Host = hostArrayFor(src.dtype);
      return new Host(raw, skip, src.size);
    } finally {
      if (src !== this) src.dispose();
    }
  }

  /** The single element of a tensor of size 1. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new RangeError(`item() needs a tensor of one element, got shape ${shapeStr(this.shape)}`);
    return (await this.toArray())[0];
  }

  toString(): string {
    return `Tensor(${shapeStr(this.shape)}, ${this.dtype}${this.name ? `, '${this.name}'` : ''})`;
  }
}

/** An uninitialised contiguous tensor (outputs of kernels). */
export function empty(shape: readonly number[], dtype: DType = 'f32'): Tensor {
  const n = numel(shape);
  const buf = getEngine().pool.acquire(Math.max(4, bytesFor(dtype, n)));
  return new Tensor(new Storage(buf, dtype, n), shape);
}

type HostData = ArrayLike<number> | Float32Array | Int32Array | Uint32Array;

/** Uploads host data. `dtype` 'f16' converts on the host (needs the shader-f16 feature to compute on). */
export function fromArray(data: HostData, shape: readonly number[] = [data.length], dtype: DType = 'f32'): Tensor {
  const n = numel(shape);
  if (n !== data.length) {
    throw new RangeError(`fromArray: ${data.length} values do not fill shape ${shapeStr(shape)} (${n} elements)`);
  }
  let host: ArrayBufferView;
  if (dtype === 'f16') host = f32ToF16(data);
  else {
    const Host = hostArrayFor(dtype);
    host = data instanceof Host ? data : Host.from(data as ArrayLike<number>);
  }
  const eng = getEngine();
  const buf = eng.upload(host, Math.max(4, host.byteLength));
  return new Tensor(new Storage(buf, dtype, n), shape);
}

export function scalar(v: number, dtype: DType = 'f32'): Tensor {
  return fromArray([v], [], dtype);
}
