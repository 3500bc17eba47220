// safetensors files: read and write tensors.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON
//   { "<name>": { "dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end] }, ...,
//     "__metadata__": { "<key>": "<string value>" } }
// then the data section; offsets are relative to its start, tensors are row-major and
// little-endian, and together they cover the data section exactly, without overlap.
// Writers pad the header with spaces to a multiple of 8 so the data is 8-byte aligned.
//
// encodeSafetensors / decodeSafetensors are pure host code (testable without a GPU).
// saveSafetensors streams one batch of tensors at a time from the GPU into a temporary
// file beside the target and renames it into place, so a failure never leaves a half
// written file (nor touches an existing one). loadSafetensors reads the header, checks
// everything it can before reading data, then reads and uploads tensor by tensor; on a
// failure it disposes what it had uploaded. Every error names the file.
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { noGrad } from './autograd.ts';
import { type DType, elementBytes, f16BitsToF32 } from './dtype.ts';
import { getEngine } from './engine.ts';
import { Storage, Tensor, empty, fromArray, numel, shapeStr } from './tensor.ts';
import { contiguous } from './ops/copy.ts';

/** Bytes per element of every dtype the format defines. */
const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4,
  I64: 8, U64: 8, F64: 8,
};

export type SafeDType = 'BOOL' | 'U8' | 'I8' | 'F8_E4M3' | 'F8_E5M2' | 'I16' | 'U16' | 'F16' | 'BF16' | 'I32' | 'U32' | 'F32' | 'I64' | 'U64' | 'F64';

/** One tensor's raw bytes, as stored in a file. */
export interface SafeEntry {
  dtype: SafeDType;
  shape: number[];
  data: Uint8Array;
}

export interface SafeTensorInfo {
  dtype: SafeDType;
  shape: number[];
  data_offsets: [number, number];
}

/** Dtypes loadSafetensors turns into tensors (see loadSafetensors for the conversions). */
const LOADABLE = ['F32', 'F16', 'BF16', 'I32', 'U32', 'I64'];
const SAVED_AS: Record<DType, SafeDType> = { f32: 'F32', f16: 'F16', i32: 'I32', u32: 'U32' };
/** Largest header accepted: a bigger one is a corrupt length, not a real header. */
const MAX_HEADER = 100 * 1024 * 1024;
/** Bytes read back from the GPU per batch while saving (one submit per batch). */
const SAVE_BATCH = 64 * 1024 * 1024;

export class SafetensorsError extends Error {
  constructor(
    readonly file: string,
    problem: string,
  ) {
    super(`safetensors ${file}: ${problem}`);
    this.name = 'SafetensorsError';
  }
}

// ---------------------------------------------------------------- header

/** Sets an own property even for the name __proto__ (plain assignment would set the prototype). */
function put<V>(obj: Record<string, V>, key: string, value: V): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

function checkMetadata(source: string, metadata: Record<string, string>): void {
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw new SafetensorsError(source, `metadata value of '${k}' is a ${typeof v}, expected a string`);
  }
}

/** The 8-byte length and the space-padded JSON header for tensors laid out in order. */
function buildHeader(source: string, specs: { name: string; dtype: SafeDType; shape: readonly number[] }[], metadata: Record<string, string>): { head: Uint8Array; dataBytes: number } {
  checkMetadata(source, metadata);
  // No prototype: a tensor named __proto__ is an ordinary key.
  const header: Record<string, unknown> = Object.create(null);
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let at = 0;
  for (const s of specs) {
    if (s.name === '__metadata__' || s.name === '') throw new SafetensorsError(source, `invalid tensor name '${s.name}'`);
    const size = DTYPE_BYTES[s.dtype];
    if (size === undefined) throw new SafetensorsError(source, `tensor '${s.name}': unsupported dtype ${s.dtype}`);
    const bytes = numel(s.shape) * size;
    header[s.name] = { dtype: s.dtype, shape: [...s.shape], data_offsets: [at, at + bytes] };
    at += bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const head = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(json, 8);
  return { head, dataBytes: at };
}

/** Parses and checks a header against a data section of `dataBytes` bytes. */
function parseHeader(source: string, json: Uint8Array, dataBytes: number): { tensors: Record<string, SafeTensorInfo>; metadata: Record<string, string>; raw: Record<string, unknown> } {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
  } catch (e) {
    throw new SafetensorsError(source, `invalid JSON header (${(e as Error).message})`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new SafetensorsError(source, 'invalid header: the JSON is not an object');
  const tensors: Record<string, SafeTensorInfo> = Object.create(null);
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new SafetensorsError(source, 'invalid header: __metadata__ is not an object');
      metadata = v as Record<string, string>;
      checkMetadata(source, metadata);
      continue;
    }
    const e = v as Partial<SafeTensorInfo> | null;
    if (e === null || typeof e !== 'object') throw new SafetensorsError(source, `invalid header entry for tensor '${name}'`);
    if (typeof e.dtype !== 'string' || DTYPE_BYTES[e.dtype] === undefined) throw new SafetensorsError(source, `tensor '${name}': unsupported dtype ${JSON.stringify(e.dtype)}`);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new SafetensorsError(source, `tensor '${name}': invalid shape ${JSON.stringify(e.shape)}`);
    }
    const o = e.data_offsets;
    if (!Array.isArray(o) || o.length !== 2 || !o.every((x) => Number.isSafeInteger(x) && x >= 0) || o[1] < o[0]) {
      throw new SafetensorsError(source, `tensor '${name}': invalid data_offsets ${JSON.stringify(o)}`);
    }
    if (o[1] > dataBytes) {
      throw new SafetensorsError(source, `tensor '${name}': data_offsets [${o[0]}, ${o[1]}] out of range: the data section has ${dataBytes} bytes (truncated file?)`);
    }
    const need = numel(e.shape) * DTYPE_BYTES[e.dtype];
    if (o[1] - o[0] !== need) {
      throw new SafetensorsError(source, `tensor '${name}': shape ${shapeStr(e.shape)} of ${e.dtype} needs ${need} bytes but data_offsets [${o[0]}, ${o[1]}] hold ${o[1] - o[0]}`);
    }
    tensors[name] = { dtype: e.dtype as SafeDType, shape: e.shape, data_offsets: [o[0], o[1]] };
  }
  // The tensors must tile the data section: sorted by offset, each starts where the last ended.
  const order = Object.entries(tensors).sort(([, a], [, b]) => a.data_offsets[0] - b.data_offsets[0] || a.data_offsets[1] - b.data_offsets[1]);
  let end = 0;
  let prev = '';
  for (const [name, t] of order) {
    const [b, e] = t.data_offsets;
    if (b < end) throw new SafetensorsError(source, `tensors '${prev}' and '${name}' overlap (bytes ${b} to ${Math.min(e, end)} of the data section)`);
    if (b > end) throw new SafetensorsError(source, `bytes ${end} to ${b} of the data section belong to no tensor (before '${name}')`);
    end = e;
    prev = name;
  }
  if (end !== dataBytes) throw new SafetensorsError(source, `the data section has ${dataBytes} bytes but the tensors cover ${end}${prev ? ` (the last is '${prev}')` : ''}`);
  return { tensors, metadata, raw: raw as Record<string, unknown> };
}

/** The header length from the first 8 bytes, checked against the file size. */
function headerLength(source: string, first8: Uint8Array, fileBytes: number): number {
  if (fileBytes < 8) throw new SafetensorsError(source, `truncated file: ${fileBytes} bytes, shorter than the 8-byte header length`);
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(fileBytes - 8)) throw new SafetensorsError(source, `header length ${n} is beyond the end of the file (${fileBytes} bytes)`);
  if (n > BigInt(MAX_HEADER)) throw new SafetensorsError(source, `header length ${n} exceeds the ${MAX_HEADER}-byte limit`);
  if (n < 2n) throw new SafetensorsError(source, `header length ${n} is too small for a JSON object`);
  return Number(n);
}

// ---------------------------------------------------------------- host-side encode/decode

/** The bytes of a safetensors file holding `entries` (in insertion order) and metadata. */
export function encodeSafetensors(entries: Record<string, SafeEntry>, metadata: Record<string, string> = {}, source = '<buffer>'): Uint8Array {
  const list = Object.entries(entries);
  for (const [name, e] of list) {
    const size = DTYPE_BYTES[e.dtype];
    if (size === undefined) throw new SafetensorsError(source, `tensor '${name}': unsupported dtype ${e.dtype}`);
    if (!e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new SafetensorsError(source, `tensor '${name}': invalid shape ${JSON.stringify(e.shape)}`);
    const need = numel(e.shape) * size;
    if (e.data.byteLength !== need) throw new SafetensorsError(source, `tensor '${name}': shape ${shapeStr(e.shape)} of ${e.dtype} needs ${need} bytes, got ${e.data.byteLength}`);
  }
  const { head, dataBytes } = buildHeader(source, list.map(([name, e]) => ({ name, dtype: e.dtype, shape: e.shape })), metadata);
  const out = new Uint8Array(head.length + dataBytes);
  out.set(head);
  let at = head.length;
  for (const [, e] of list) {
    out.set(e.data, at);
    at += e.data.byteLength;
  }
  return out;
}

/**
 * Parses the bytes of a safetensors file. Entries' data are views into `bytes`; header
 * is the parsed JSON as stored. `source` names the bytes in errors (e.g. a file name).
 */
export function decodeSafetensors(bytes: Uint8Array, source = '<buffer>'): { header: Record<string, unknown>; metadata: Record<string, string>; entries: Record<string, SafeEntry> } {
  const n = headerLength(source, bytes.subarray(0, 8), bytes.byteLength);
  const start = 8 + n;
  const { tensors, metadata, raw } = parseHeader(source, bytes.subarray(8, start), bytes.byteLength - start);
  const entries: Record<string, SafeEntry> = {};
  for (const [name, t] of Object.entries(tensors)) {
    put(entries, name, { dtype: t.dtype, shape: t.shape, data: bytes.subarray(start + t.data_offsets[0], start + t.data_offsets[1]) });
  }
  return { header: raw, metadata, entries };
}

// ---------------------------------------------------------------- conversion to tensors

/** Host data (raw bytes, or converted values) and the tensor dtype for one stored tensor. */
function toHost(source: string, name: string, e: SafeEntry, wantF32: boolean): { dtype: DType; raw?: Uint8Array; values?: Float32Array | Int32Array } {
  const n = numel(e.shape);
  const dv = new DataView(e.data.buffer, e.data.byteOffset, e.data.byteLength);
  switch (e.dtype) {
    case 'F32':
      return { dtype: 'f32', raw: e.data };
    case 'I32':
      return { dtype: 'i32', raw: e.data };
    case 'U32':
      return { dtype: 'u32', raw: e.data };
    case 'F16': {
      if (!wantF32) return { dtype: 'f16', raw: e.data };
      const v = new Float32Array(n);
      for (let i = 0; i < n; i++) v[i] = f16BitsToF32(dv.getUint16(2 * i, true));
      return { dtype: 'f32', values: v };
    }
    case 'BF16': {
      // bf16 is the top half of an f32: widening is exact.
      const u = new Uint32Array(n);
      for (let i = 0; i < n; i++) u[i] = dv.getUint16(2 * i, true) << 16;
      return { dtype: 'f32', values: new Float32Array(u.buffer) };
    }
    case 'I64': {
      const v = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const x = dv.getBigInt64(8 * i, true);
        if (x < -2147483648n || x > 2147483647n) {
          throw new SafetensorsError(source, `tensor '${name}' (I64): element ${i} = ${x} does not fit in i32`);
        }
        v[i] = Number(x);
      }
      return { dtype: 'i32', values: v };
    }
    default:
      throw new SafetensorsError(source, `tensor '${name}': dtype ${e.dtype} cannot be loaded (loadable: ${LOADABLE.join(', ')})`);
  }
}

function upload(h: { dtype: DType; raw?: Uint8Array; values?: Float32Array | Int32Array }, shape: number[]): Tensor {
  const n = numel(shape);
  if (n === 0) return empty(shape, h.dtype);
  if (h.values) return fromArray(h.values, shape, h.dtype);
  // Raw little-endian bytes go up unchanged (bit-exact, f16 included).
  const raw = h.raw!;
  const buf = getEngine().upload(raw, Math.max(4, Math.ceil(raw.byteLength / 4) * 4));
  return new Tensor(new Storage(buf, h.dtype, n), shape);
}

// ---------------------------------------------------------------- files

async function readFully(fh: import('node:fs/promises').FileHandle, source: string, position: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(out, got, length - got, position + got);
    if (bytesRead === 0) throw new SafetensorsError(source, `truncated file: ended at byte ${position + got}, expected ${position + length}`);
    got += bytesRead;
  }
  return out;
}

export interface LoadOptions {
  /** 'f32': widen F16 to f32 too (BF16 and F32 always load as f32). Default: F16 stays f16. */
  dtype?: 'f32';
  /** Load only these tensors (all when omitted); a missing name is an error. */
  names?: string[];
}

/**
 * Reads a safetensors file into GPU tensors (created in the current tidy scope).
 * F32 -> f32, F16 -> f16 (or f32 with dtype 'f32'), BF16 -> f32 (widened on the host),
 * I32 -> i32, U32 -> u32, I64 -> i32 (an element outside the i32 range is an error).
 */
export async function loadSafetensors(path: string, opts: LoadOptions = {}): Promise<{ tensors: Record<string, Tensor>; metadata: Record<string, string> }> {
  let fh: import('node:fs/promises').FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new SafetensorsError(path, `cannot open (${(e as Error).message})`);
  }
  const tensors: Record<string, Tensor> = {};
  try {
    const size = (await fh.stat()).size;
    const n = headerLength(path, size >= 8 ? await readFully(fh, path, 0, 8) : new Uint8Array(8), size);
    const { tensors: infos, metadata } = parseHeader(path, await readFully(fh, path, 8, n), size - 8 - n);
    let names = Object.keys(infos).sort((a, b) => infos[a].data_offsets[0] - infos[b].data_offsets[0]);
    if (opts.names) {
      const missing = opts.names.filter((k) => !infos[k]);
      if (missing.length) throw new SafetensorsError(path, `no tensor named ${missing.map((k) => `'${k}'`).join(', ')}`);
      names = names.filter((k) => opts.names!.includes(k));
    }
    // Refuse unloadable dtypes before reading any data.
    for (const k of names) {
      if (!LOADABLE.includes(infos[k].dtype)) throw new SafetensorsError(path, `tensor '${k}': dtype ${infos[k].dtype} cannot be loaded (loadable: ${LOADABLE.join(', ')})`);
    }
    for (const k of names) {
      const t = infos[k];
      const [b, e] = t.data_offsets;
      const data = await readFully(fh, path, 8 + n + b, e - b);
      put(tensors, k, upload(toHost(path, k, { dtype: t.dtype, shape: t.shape, data }, opts.dtype === 'f32'), t.shape));
    }
    return { tensors, metadata };
  } catch (e) {
    for (const t of Object.values(tensors)) t.dispose();
    throw e instanceof SafetensorsError ? e : new SafetensorsError(path, (e as Error).message);
  } finally {
    await fh.close();
  }
}

/**
 * Writes tensors (f32, f16, i32, u32, stored as F32, F16, I32, U32) and string metadata
 * to `path`, atomically: the data goes to a temporary file in the same folder, which is
 * renamed over `path` only once complete. On any failure the temporary file is removed
 * and an existing file at `path` is left as it was.
 */
export async function saveSafetensors(path: string, tensors: Record<string, Tensor>, metadata: Record<string, string> = {}): Promise<void> {
  const list = Object.entries(tensors);
  // Check everything before creating a file.
  for (const [name, t] of list) {
    if (!(t instanceof Tensor)) throw new SafetensorsError(path, `'${name}' is not a tensor`);
    if (t.disposed) throw new SafetensorsError(path, `tensor '${name}' ${shapeStr(t.shape)} is disposed`);
  }
  const { head } = buildHeader(path, list.map(([name, t]) => ({ name, dtype: SAVED_AS[t.dtype], shape: t.shape })), metadata);
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fh: import('node:fs/promises').FileHandle | null = null;
  try {
    fh = await open(tmp, 'wx');
    await fh.write(head, 0, head.length, 0);
    let at = head.length;
    const eng = getEngine();
    for (let i = 0; i < list.length; ) {
      // One batch: every read requested in this tick shares one submit.
      const batch: Promise<ArrayBuffer>[] = [];
      let bytes = 0;
      while (i < list.length && (batch.length === 0 || bytes + tensorBytes(list[i][1]) <= SAVE_BATCH)) {
        const t = list[i][1];
        const nb = tensorBytes(t);
        if (nb === 0) batch.push(Promise.resolve(new ArrayBuffer(0)));
        else {
          const c = noGrad(() => contiguous(t));
          batch.push(eng.read(c.buf, c.offset * elementBytes(c.dtype), nb));
          c.dispose();
        }
        bytes += nb;
        i++;
      }
      for (const data of await Promise.all(batch)) {
        await fh.write(new Uint8Array(data), 0, data.byteLength, at);
        at += data.byteLength;
      }
    }
    await fh.sync();
    await fh.close();
    fh = null;
    await rename(tmp, path);
  } catch (e) {
    if (fh) await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw e instanceof SafetensorsError ? e : new SafetensorsError(path, `write failed (${(e as Error).message})`);
  }
}

function tensorBytes(t: Tensor): number {
  return t.size * elementBytes(t.dtype);
}
