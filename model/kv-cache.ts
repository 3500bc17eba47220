// A GPU-resident key/value cache for incremental decoding.
//
// Per layer, K and V live in preallocated tensors [B, Hkv, capacity, Dh] (post-RoPE keys),
// kept outside every tidy scope and freed by dispose(). Slots are shared by the batch:
// every forward over the cache writes T new slots for all B sequences at once, so all
// sequences advance together (`length` counts used slots). Sequences of different lengths
// are handled with slot validity, not per-sequence lengths: a [B, capacity] i32 mask
// (1 = attend) that the caller fills through the forward's keyPadding. Batched prompts of
// different lengths are left-padded (invalid slots first, the tokens last), and so is
// every later ragged append, so a sequence's newest token always sits in the last slot.
// Invalid slots hold harmless values that attention never reads (keyPadding excludes them).
//
// Appends copy the new keys/values into the cache on the GPU (the strided-copy kernel of
// shaders/concat.wgsl); attention then reads views of the cache in place. When the
// capacity runs out the cache grows (x2) with a GPU copy of the used slots.
import { type LlmConfig, headDim } from './llm.ts';
import { Params, type Tensor, cast, full, getEngine, keep, noGrad, shapeStr } from '../runtime/index.ts';
import { collapseDims, enableFor, grid1d, padTo } from '../runtime/ops/util.ts';

/**
 * Copies `src` into the view `dst` (same shape, any strides; dst's elements must not
 * overlap). Runs on the GPU, records no gradient. dst's storage is written in place.
 */
export function copyInto(dst: Tensor, src: Tensor): void {
  if (dst.dtype !== src.dtype) throw new TypeError(`copyInto: dtypes differ (dst ${dst.dtype}, src ${src.dtype})`);
  if (dst.rank !== src.rank || dst.shape.some((d, i) => d !== src.shape[i])) {
    throw new RangeError(`copyInto: dst ${shapeStr(dst.shape)} and src ${shapeStr(src.shape)} differ in shape`);
  }
  const n = src.size;
  if (n === 0) return;
  const c = collapseDims(src.shape, [src.strides, dst.strides]);
  // shaders/concat.wgsl is exactly a strided copy of X into a strided region of Y.
  getEngine().dispatch({
    shader: 'concat',
    defines: { ENABLE: enableFor(src.dtype), T: src.dtype },
    params: new Params()
      .u32(n, c.shape.length, src.offset, dst.offset)
      .u32(...padTo(c.shape))
      .u32(...padTo(c.strides[0], 0))
      .u32(...padTo(c.strides[1], 0)),
    buffers: [src.buf, dst.buf],
    workgroups: grid1d(n),
    label: `copyInto ${shapeStr(src.shape)}`,
  });
}

export interface KvCacheOptions {
  batch: number;
  layers: number;
  kvHeads: number;
  headDim: number;
  /** Slots preallocated per sequence (grows automatically when exceeded). */
  capacity: number;
}

export class KvCache {
  readonly batch: number;
  readonly layers: number;
  readonly kvHeads: number;
  readonly headDim: number;
  /** Slots allocated per sequence. */
  capacity: number;
  /** Slots written so far (the same for every sequence of the batch). */
  length = 0;
  private ks: Tensor[] = [];
  private vs: Tensor[] = [];
  /** i32 [B, capacity]: 1 = the slot holds a real token of that sequence, 0 = padding. */
  private valid: Tensor;
  /** Whether any slot so far was marked invalid (else attention runs without keyPadding). */
  private padded = false;
  private disposed = false;

  constructor(o: KvCacheOptions) {
    for (const [name, v] of Object.entries(o)) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`KvCache: ${name} must be a positive integer, got ${v}`);
    }
    this.batch = o.batch;
    this.layers = o.layers;
    this.kvHeads = o.kvHeads;
    this.headDim = o.headDim;
    this.capacity = o.capacity;
    for (let i = 0; i < this.layers; i++) {
      this.ks.push(keep(this.alloc(this.capacity)));
      this.vs.push(keep(this.alloc(this.capacity)));
    }
    this.valid = keep(full([this.batch, this.capacity], 1, 'i32'));
  }

  /** A cache shaped for a model's config. */
  static forModel(config: LlmConfig, batch: number, capacity: number): KvCache {
    return new KvCache({ batch, layers: config.layers, kvHeads: config.kvHeads, headDim: headDim(config), capacity });
  }

  private alloc(capacity: number): Tensor {
    // Zeros, so never-written slots hold finite values.
    return full([this.batch, this.kvHeads, capacity, this.headDim], 0);
  }

  private check(): void {
    if (this.disposed) throw new Error('KvCache: used after dispose()');
  }

  /** Makes room for `extra` more slots, growing (at least x2) with a GPU copy of the used slots. */
  reserve(extra: number): void {
    this.check();
    const need = this.length + extra;
    if (need <= this.capacity) return;
    const cap = Math.max(need, 2 * this.capacity);
    noGrad(() => {
      const grow = (old: Tensor, fresh: Tensor, axis: number) => {
        if (this.length > 0) {
          const shape = [...old.shape];
          shape[axis] = this.length;
          const from = old.view(shape, old.strides, old.offset);
          const to = fresh.view(shape, fresh.strides, fresh.offset);
          copyInto(to, from);
          from.dispose();
          to.dispose();
        }
        old.dispose();
        return keep(fresh);
      };
      this.ks = this.ks.map((t) => grow(t, this.alloc(cap), 2));
      this.vs = this.vs.map((t) => grow(t, this.alloc(cap), 2));
      this.valid = grow(this.valid, full([this.batch, cap], 1, 'i32'), 1);
    });
    this.capacity = cap;
  }

  /** Slots [at, at + n) of layer tensor t along the sequence axis, as a view. */
  private slots(t: Tensor, at: number, n: number): Tensor {
    const [B, H, , D] = t.shape;
    return t.view([B, H, n, D], t.strides, t.offset + at * t.strides[2]);
  }

  private checkNew(what: string, x: Tensor): void {
    const want = [this.batch, this.kvHeads, x.shape[2], this.headDim];
    if (x.rank !== 4 || x.shape.some((d, i) => d !== want[i])) {
      throw new RangeError(`KvCache: new ${what} have shape ${shapeStr(x.shape)}, expected [B, Hkv, T, Dh] = ${shapeStr(want)}`);
    }
    if (this.length + x.shape[2] > this.capacity) {
      throw new RangeError(`KvCache: ${x.shape[2]} new slots after ${this.length} exceed the capacity ${this.capacity} (call reserve first)`);
    }
  }

  /** Writes layer `layer`'s new keys and values [B, Hkv, T, Dh] into slots [length, length + T). */
  write(layer: number, k: Tensor, v: Tensor): void {
    this.check();
    if (!(layer >= 0 && layer < this.layers)) throw new RangeError(`KvCache: layer ${layer} out of range [0, ${this.layers})`);
    this.checkNew('keys', k);
    this.checkNew('values', v);
    if (v.shape[2] !== k.shape[2]) throw new RangeError(`KvCache: keys ${shapeStr(k.shape)} and values ${shapeStr(v.shape)} differ in length`);
    noGrad(() => {
      const T = k.shape[2];
      const kd = this.slots(this.ks[layer], this.length, T);
      const vd = this.slots(this.vs[layer], this.length, T);
      copyInto(kd, k);
      copyInto(vd, v);
      kd.dispose();
      vd.dispose();
    });
  }

  /**
   * Marks which of the next T slots hold real tokens: mask [B, T] (f32 / i32 / u32,
   * nonzero = real; f32 values are truncated toward zero). Slots not marked are valid.
   */
  markValid(mask: Tensor): void {
    this.check();
    const T = mask.shape[1];
    if (mask.rank !== 2 || mask.shape[0] !== this.batch) {
      throw new RangeError(`KvCache: keyPadding has shape ${shapeStr(mask.shape)}, expected [B, T] with B = ${this.batch}`);
    }
    if (this.length + T > this.capacity) throw new RangeError(`KvCache: ${T} new slots after ${this.length} exceed the capacity ${this.capacity}`);
    noGrad(() => {
      const m = mask.dtype === 'i32' ? mask : cast(mask, 'i32');
      const dst = this.valid.view([this.batch, T], this.valid.strides, this.valid.offset + this.length);
      copyInto(dst, m);
      dst.dispose();
      if (m !== mask) m.dispose();
    });
    this.padded = true;
  }

  /** View [B, Hkv, n, Dh] of layer's keys in slots [0, n) (read in place by attention). */
  keys(layer: number, n: number = this.length): Tensor {
    this.check();
    return this.slots(this.ks[layer], 0, n);
  }

  /** View [B, Hkv, n, Dh] of layer's values in slots [0, n). */
  values(layer: number, n: number = this.length): Tensor {
    this.check();
    return this.slots(this.vs[layer], 0, n);
  }

  /** The key padding [B, n] for attention over slots [0, n), or undefined when no slot is padded. */
  keyPadding(n: number = this.length): Tensor | undefined {
    this.check();
    if (!this.padded) return undefined;
    return this.valid.view([this.batch, n], this.valid.strides, this.valid.offset);
  }

  /** Commits `n` written slots (the forward calls this after its last layer). */
  advance(n: number): void {
    this.check();
    if (this.length + n > this.capacity) throw new RangeError(`KvCache: advancing by ${n} after ${this.length} exceeds the capacity ${this.capacity}`);
    this.length += n;
  }

  /** Frees the GPU memory. */
  dispose(): void {
    if (this.disposed) return;
    for (const t of [...this.ks, ...this.vs, this.valid]) t.dispose();
    this.ks = [];
    this.vs = [];
    this.disposed = true;
  }
}
