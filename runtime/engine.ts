// The execution engine: pipeline cache, dispatch recording, uniforms, submit, readback.
//
// Every op records its dispatch into one long-lived command encoder (inside one compute
// pass while possible). Nothing is submitted until a value is needed on the CPU
// (`read`) or the caller asks (`flush`). A training step therefore costs one submit and
// one small readback (the loss).
//
// Kernel parameters (shapes, strides, scalars) go into a uniform arena: each dispatch
// gets a 256-byte-aligned slice of a chunk, and the chunks are written with
// queue.writeBuffer just before the submit that uses them. Queue operations run in
// order, so a chunk can be refilled for the next submit safely.
//
// Shaders live in shaders/<name>.wgsl (shared helpers in shaders/lib/, pulled in by
// `//#include` lines, see expandIncludes). `{{KEY}}` placeholders are replaced by the
// defines of a call; a pipeline is compiled once per (shader, defines) and cached.
// Binding 0 is always the uniform params (`array<vec4<u32>, N>`), bindings 1.. the
// storage buffers in the order the call lists them.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type GpuContext, checkDeviceHealth, debugMode, gpuSync, lostPromise, webgpuError } from './device.ts';
import { BufferPool, type GpuBuf } from './pool.ts';

const shaderDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'shaders');

// WGSL has no includes, so shared helpers live in shaders/lib/ and a shader pulls one in
// with a line `//#include "lib/<name>.wgsl"` (path relative to shaders/). It is replaced
// by that file's text, recursively, before the defines are substituted; a file already
// included into this shader is dropped (so libs may include what they need). Nesting is
// bounded so a runaway chain fails loudly.
const INCLUDE_LINE = /^[ \t]*\/\/#include\b.*$/gm;
const MAX_INCLUDE_DEPTH = 4;

/**
 * Expands the `//#include "path"` lines of shader `name`'s source `code`. `read` returns
 * a file's text by its path relative to shaders/, or undefined when there is no such file.
 */
export function expandIncludes(
  name: string,
  code: string,
  read: (path: string) => string | undefined,
  seen = new Set<string>(),
  depth = 0,
): string {
  return code.replace(INCLUDE_LINE, (line) => {
    const m = line.match(/^[ \t]*\/\/#include[ \t]+"([\w./-]+\.wgsl)"[ \t]*$/);
    if (!m) throw new Error(`shader ${name}: malformed include line: ${line.trim()}`);
    const path = m[1];
    if (seen.has(path)) return '';
    if (depth >= MAX_INCLUDE_DEPTH) {
      throw new Error(`shader ${name}: includes nest deeper than ${MAX_INCLUDE_DEPTH} levels at "${path}"`);
    }
    const text = path.split('/').includes('..') ? undefined : read(path);
    if (text === undefined) throw new Error(`shader ${name}: included file "${path}" not found in shaders/`);
    seen.add(path);
    return expandIncludes(name, text, read, seen, depth + 1);
  });
}

/** The source of shaders/<name>.wgsl with its includes expanded (defines not yet applied). */
export function loadShader(name: string): string {
  const read = (path: string): string | undefined => {
    try {
      return readFileSync(join(shaderDir, path), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  };
  return expandIncludes(name, readFileSync(join(shaderDir, `${name}.wgsl`), 'utf8'), read);
}

/** Packs kernel parameters as 32-bit words (u32, i32 or f32), read in WGSL as u32 + bitcast. */
export class Params {
  private words: number[] = [];
  private kinds: ('u' | 'i' | 'f')[] = [];
  u32(...v: number[]): this {
    for (const x of v) { this.words.push(x >>> 0); this.kinds.push('u'); }
    return this;
  }
  i32(...v: number[]): this {
    for (const x of v) { this.words.push(x | 0); this.kinds.push('i'); }
    return this;
  }
  f32(...v: number[]): this {
    for (const x of v) { this.words.push(x); this.kinds.push('f'); }
    return this;
  }
  get length(): number {
    return this.words.length;
  }
  /** Writes into `view` at byte offset `at`. */
  writeTo(view: DataView, at: number): void {
    for (let i = 0; i < this.words.length; i++) {
      const k = this.kinds[i];
      if (k === 'f') view.setFloat32(at + 4 * i, this.words[i], true);
      else if (k === 'i') view.setInt32(at + 4 * i, this.words[i], true);
      else view.setUint32(at + 4 * i, this.words[i], true);
    }
  }
}

export interface DispatchCall {
  /** File name in shaders/ without extension. */
  shader: string;
  /** Placeholder values substituted into the WGSL source; part of the pipeline key. */
  defines?: Record<string, string | number>;
  entry?: string;
  params: Params;
  /** Storage bindings 1..n, in order. */
  buffers: GpuBuf[];
  workgroups: [number, number?, number?];
  /** Op name and shapes, used in error messages. */
  label: string;
}

export interface EngineStats {
  dispatches: number;
  submits: number;
  readbacks: number;
  uploads: number;
  pipelines: number;
}

const CHUNK = 64 * 1024;
const ALIGN = 256;

interface PendingRead {
  staging: GPUBuffer;
  bytes: number;
  resolve: (b: ArrayBuffer) => void;
  reject: (e: unknown) => void;
}

export class Engine {
  readonly pool: BufferPool;
  readonly stats: EngineStats = { dispatches: 0, submits: 0, readbacks: 0, uploads: 0, pipelines: 0 };
  /** Increments at each submit; see GpuBuf.lastEpoch. */
  epoch = 0;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private recorded = 0;
  private pipelines = new Map<string, GPUComputePipeline>();
  private sources = new Map<string, string>();
  private chunks: { buffer: GPUBuffer; data: ArrayBuffer; used: number }[] = [];
  private chunkIndex = 0;
  private reads: PendingRead[] = [];
  private flushScheduled = false;
  private debugErrors: Promise<string | null>[] = [];

  constructor(readonly ctx: GpuContext) {
    const maxBuf = Math.min(ctx.limits.maxBufferSize, ctx.limits.maxStorageBufferBindingSize);
    this.pool = new BufferPool(ctx.device, maxBuf);
  }

  get device(): GPUDevice {
    return this.ctx.device;
  }

  private source(name: string): string {
    let s = this.sources.get(name);
    if (s === undefined) {
      s = loadShader(name);
      this.sources.set(name, s);
    }
    return s;
  }

  pipeline(shader: string, defines: Record<string, string | number> = {}, entry = 'main'): GPUComputePipeline {
    const key = `${shader}|${entry}|${JSON.stringify(defines)}`;
    let p = this.pipelines.get(key);
    if (p) return p;
    let code = this.source(shader);
    for (const [k, v] of Object.entries(defines)) code = code.split(`{{${k}}}`).join(String(v));
    const left = code.match(/\{\{(\w+)\}\}/);
    if (left) throw new Error(`shader ${shader}: define ${left[1]} not given`);
    const module = this.device.createShaderModule({ code, label: shader });
    p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: entry }, label: key });
    this.pipelines.set(key, p);
    this.stats.pipelines++;
    return p;
  }

  private uniformSlice(params: Params): { buffer: GPUBuffer; offset: number; size: number } {
    // Bind at least 256 bytes (slices are 256-aligned anyway) so a shader whose params
    // array is longer than the words an op wrote still validates.
    const size = Math.max(ALIGN, Math.ceil((params.length * 4) / 16) * 16);
    let c = this.chunks[this.chunkIndex];
    if (c && c.used + size > CHUNK) {
      this.chunkIndex++;
      c = this.chunks[this.chunkIndex];
    }
    if (!c) {
      c = {
        buffer: this.device.createBuffer({ size: CHUNK, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST }),
        data: new ArrayBuffer(CHUNK),
        used: 0,
      };
      this.chunks.push(c);
    }
    const offset = c.used;
    params.writeTo(new DataView(c.data), offset);
    c.used = Math.ceil((offset + size) / ALIGN) * ALIGN;
    return { buffer: c.buffer, offset, size };
  }

  private getEncoder(): GPUCommandEncoder {
    if (!this.encoder) this.encoder = this.device.createCommandEncoder();
    return this.encoder;
  }

  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  dispatch(call: DispatchCall): void {
    this.healthy();
    const [x, y = 1, z = 1] = call.workgroups;
    if (x === 0 || y === 0 || z === 0) return;
    const maxWg = this.ctx.limits.maxComputeWorkgroupsPerDimension;
    if (x > maxWg || y > maxWg || z > maxWg) {
      throw new RangeError(`${call.label}: dispatch of ${x}x${y}x${z} workgroups exceeds the device limit ${maxWg} per dimension`);
    }
    if (debugMode) {
      this.device.pushErrorScope('validation');
      this.device.pushErrorScope('out-of-memory');
    }
    const pipeline = this.pipeline(call.shader, call.defines, call.entry);
    const u = this.uniformSlice(call.params);
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: u.buffer, offset: u.offset, size: u.size } }];
    call.buffers.forEach((b, i) => {
      b.lastEpoch = this.epoch;
      entries.push({ binding: i + 1, resource: { buffer: b.buffer } });
    });
    const bindGroup = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
    if (!this.pass) this.pass = this.getEncoder().beginComputePass();
    this.pass.setPipeline(pipeline);
    this.pass.setBindGroup(0, bindGroup);
    this.pass.dispatchWorkgroups(x, y, z);
    this.stats.dispatches++;
    this.recorded++;
    if (debugMode) {
      // Submit each dispatch alone so an error is attributed to exactly this op.
      this.submit();
      const oom = this.device.popErrorScope();
      const val = this.device.popErrorScope();
      this.debugErrors.push(
        Promise.all([oom, val]).then(([a, b]) => {
          const e = a ?? b;
          return e ? `${call.label} (shader ${call.shader}): ${e.message}` : null;
        }),
      );
    }
  }

  /** Records a buffer-to-buffer copy in order with the dispatches. */
  copy(src: GpuBuf, srcOffset: number, dst: GpuBuf, dstOffset: number, bytes: number): void {
    this.endPass();
    src.lastEpoch = this.epoch;
    dst.lastEpoch = this.epoch;
    this.getEncoder().copyBufferToBuffer(src.buffer, srcOffset, dst.buffer, dstOffset, bytes);
    this.recorded++;
  }

  /** Uploads host data into a fresh pool buffer (never one the pending commands touch). */
  upload(data: ArrayBufferView, bytes = data.byteLength): GpuBuf {
    this.healthy();
    const buf = this.pool.acquire(bytes, this.epoch);
    const padded = Math.ceil(data.byteLength / 4) * 4;
    if (padded === data.byteLength) {
      this.device.queue.writeBuffer(buf.buffer, 0, data.buffer, data.byteOffset, data.byteLength);
    } else {
      const tmp = new Uint8Array(padded);
      tmp.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      this.device.queue.writeBuffer(buf.buffer, 0, tmp);
    }
    this.stats.uploads++;
    return buf;
  }

  /** Reads `bytes` from a buffer. Reads requested in the same tick share one submit. */
  read(src: GpuBuf, offset: number, bytes: number): Promise<ArrayBuffer> {
    this.healthy();
    const size = Math.ceil(bytes / 4) * 4;
    const staging = this.device.createBuffer({ size: Math.max(size, 4), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    if (size > 0) this.copy(src, offset, { buffer: staging, size, lastEpoch: this.epoch }, 0, size);
    return new Promise((resolve, reject) => {
      this.reads.push({ staging, bytes, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        queueMicrotask(() => {
          this.flushScheduled = false;
          this.flush().catch(() => {});
        });
      }
    });
  }

  /**
   * Checks the device. On an error, what was recorded and not yet submitted belongs to the
   * failed batch: it is dropped (submitting it with later work would fail that work too,
   * and its reads would come back as zeros) and the reads waiting on it are rejected.
   */
  private healthy(): void {
    try {
      checkDeviceHealth();
    } catch (e) {
      this.pass = null;
      this.encoder = null;
      for (const c of this.chunks) c.used = 0;
      this.chunkIndex = 0;
      this.recorded = 0;
      for (const r of this.reads.splice(0, this.reads.length)) {
        r.staging.destroy();
        r.reject(e);
      }
      throw e;
    }
  }

  private submit(): void {
    this.endPass();
    if (!this.encoder && this.chunkIndex === 0 && (this.chunks[0]?.used ?? 0) === 0) return;
    for (let i = 0; i <= this.chunkIndex && i < this.chunks.length; i++) {
      const c = this.chunks[i];
      if (c.used) this.device.queue.writeBuffer(c.buffer, 0, c.data, 0, c.used);
      c.used = 0;
    }
    this.chunkIndex = 0;
    const cmd = this.getEncoder().finish();
    this.encoder = null;
    this.device.queue.submit([cmd]);
    this.stats.submits++;
    this.recorded = 0;
    this.epoch++;
  }

  /** Submits everything recorded and resolves pending reads. */
  async flush(): Promise<void> {
    const reads = this.reads.splice(0, this.reads.length);
    try {
      // A submit that fails validation still lets the reads map, with zeros in them: its
      // error is caught by a scope and awaited before any read resolves.
      let submitted: Promise<GPUError | null> = Promise.resolve(null);
      if (this.recorded > 0 || this.encoder) {
        this.device.pushErrorScope('validation');
        this.submit();
        submitted = this.device.popErrorScope();
      }
      await this.checkDebugErrors();
      const lost = lostPromise(this.ctx);
      const maps = reads.map((r) => Promise.race([r.staging.mapAsync(GPUMapMode.READ), lost]));
      for (const m of maps) m.catch(() => {}); // awaited below, unless the submit failed
      const err = await Promise.race([submitted, lost]);
      if (err) throw webgpuError([err.message]);
      await Promise.all(maps);
      for (const r of reads) {
        const out = r.staging.getMappedRange().slice(0, r.bytes);
        r.staging.unmap();
        r.staging.destroy();
        this.stats.readbacks++;
        r.resolve(out);
      }
      checkDeviceHealth();
    } catch (e) {
      for (const r of reads) {
        r.staging.destroy();
        r.reject(e);
      }
      throw e;
    }
  }

  /** Submits and waits until the GPU has finished all work (for timing). */
  async sync(): Promise<void> {
    await this.flush();
    await Promise.race([this.device.queue.onSubmittedWorkDone(), lostPromise(this.ctx)]);
    await this.checkDebugErrors();
    checkDeviceHealth();
  }

  private async checkDebugErrors(): Promise<void> {
    if (!this.debugErrors.length) return;
    const errs = await Promise.all(this.debugErrors.splice(0, this.debugErrors.length));
    const first = errs.find((e) => e !== null);
    if (first) throw new Error(`WebGPU error in ${first}`);
  }
}

let engine: Engine | null = null;
/** The engine for the process-wide GPU context (after init()). */
export function getEngine(): Engine {
  if (!engine) engine = new Engine(gpuSync());
  return engine;
}

/** Splits a count of workgroups into a 2D grid that respects the per-dimension limit. */
export function grid(groups: number, maxPerDim = 65535): [number, number] {
  if (groups <= maxPerDim) return [Math.max(groups, 0), 1];
  const y = Math.ceil(groups / maxPerDim);
  return [Math.ceil(groups / y), y];
}
