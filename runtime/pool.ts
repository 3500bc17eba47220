// Buffer pool by size class.
//
// GPU buffers are expensive to create and the same sizes recur every training step,
// so released buffers are kept on free lists keyed by a size class and handed out
// again. Size classes are quarter steps between powers of two (at most 25% waste).
// Every tensor buffer has STORAGE | COPY_SRC | COPY_DST usage.

export interface GpuBuf {
  buffer: GPUBuffer;
  /** Bytes actually allocated (the size class). */
  size: number;
  /** Flush epoch in which a recorded command last touched this buffer (see engine.ts). */
  lastEpoch: number;
}

export function sizeClass(bytes: number): number {
  const n = Math.max(256, Math.ceil(bytes / 16) * 16);
  const p = 2 ** Math.floor(Math.log2(n));
  if (p <= 1024) return n <= p ? p : p * 2;
  const step = p / 4;
  return Math.ceil(n / step) * step;
}

export interface PoolStats {
  /** Bytes held by live tensors (size classes). */
  bytesInUse: number;
  /** Highest bytesInUse since the last resetPeak(). */
  peakBytes: number;
  /** Bytes of every buffer the pool owns, free or in use. */
  bytesAllocated: number;
  buffersCreated: number;
}

export class BufferPool {
  private free = new Map<number, GpuBuf[]>();
  readonly stats: PoolStats = { bytesInUse: 0, peakBytes: 0, bytesAllocated: 0, buffersCreated: 0 };

  constructor(
    private device: GPUDevice,
    private maxBufferSize: number,
  ) {}

  /**
   * A buffer of at least `bytes`. When `avoidEpoch` is given, buffers touched by
   * commands recorded in that epoch are skipped: such a buffer must not receive a
   * queue.writeBuffer, which would land before the still-unsubmitted commands run.
   */
  acquire(bytes: number, avoidEpoch = -1): GpuBuf {
    if (bytes > this.maxBufferSize) {
      throw new RangeError(
        `tensor of ${bytes} bytes exceeds this device's largest buffer (${this.maxBufferSize} bytes)`,
      );
    }
    // Near the device limit, allocate exactly (rounded to 4) rather than a larger class.
    let cls = sizeClass(bytes);
    if (cls > this.maxBufferSize) cls = Math.ceil(bytes / 4) * 4;
    const list = this.free.get(cls);
    let buf: GpuBuf | undefined;
    if (list && list.length) {
      if (avoidEpoch < 0) buf = list.pop();
      else {
        const i = list.findIndex((b) => b.lastEpoch !== avoidEpoch);
        if (i >= 0) buf = list.splice(i, 1)[0];
      }
    }
    if (!buf) {
      const buffer = this.device.createBuffer({
        size: cls,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      });
      buf = { buffer, size: cls, lastEpoch: -1 };
      this.stats.bytesAllocated += cls;
      this.stats.buffersCreated++;
    }
    this.stats.bytesInUse += buf.size;
    if (this.stats.bytesInUse > this.stats.peakBytes) this.stats.peakBytes = this.stats.bytesInUse;
    return buf;
  }

  release(buf: GpuBuf): void {
    this.stats.bytesInUse -= buf.size;
    let list = this.free.get(buf.size);
    if (!list) this.free.set(buf.size, (list = []));
    list.push(buf);
  }

  /** Destroys every free buffer (returns their memory to the driver). */
  trim(): void {
    for (const list of this.free.values()) {
      for (const b of list) {
        b.buffer.destroy();
        this.stats.bytesAllocated -= b.size;
      }
    }
    this.free.clear();
  }

  resetPeak(): void {
    this.stats.peakBytes = this.stats.bytesInUse;
  }
}
