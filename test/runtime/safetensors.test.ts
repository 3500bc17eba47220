// safetensors: bit-exact round trips, conversions on load, every corrupt-file case
// named with the file and the problem, and atomic saves that leave nothing half written.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as T from '../../runtime/index.ts';

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'retrv-st-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** The bytes of a file with this header (object or literal text) and data section. */
function rawFile(header: unknown, data: Uint8Array, headerLen?: number): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen ?? json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function fileWith(name: string, bytes: Uint8Array): string {
  const p = join(dir, name);
  writeFileSync(p, bytes);
  return p;
}

/** Raw bytes of a GPU tensor's storage (no conversion), row-major. */
async function rawBits(t: T.Tensor): Promise<Uint8Array> {
  const eb = T.elementBytes(t.dtype);
  const buf = await T.getEngine().read(t.buf, t.offset * eb, t.size * eb);
  return new Uint8Array(buf);
}

describe('encode / decode (host only)', () => {
  it('round-trips every dtype byte for byte, pads the header to 8 and keeps metadata', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            dtype: fc.constantFrom('F32', 'F16', 'BF16', 'I32', 'I64', 'U8', 'F64', 'BOOL'),
            shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 }),
            seed: fc.integer(),
          }),
          { maxLength: 5 },
        ),
        fc.dictionary(fc.string({ maxLength: 6 }), fc.string({ maxLength: 8 }), { maxKeys: 3 }),
        (specs, metadata) => {
          const sizes: Record<string, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, U8: 1, F64: 8, BOOL: 1 };
          const entries: Record<string, T.SafeEntry> = {};
          specs.forEach((s, i) => {
            const n = s.shape.reduce((a, b) => a * b, 1) * sizes[s.dtype];
            const data = Uint8Array.from({ length: n }, (_, k) => (s.seed * 31 + k * 7) & 255);
            entries[`t${i}.weight`] = { dtype: s.dtype as T.SafeDType, shape: s.shape, data };
          });
          delete (metadata as Record<string, string>).__proto__;
          const bytes = T.encodeSafetensors(entries, metadata);
          const hlen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
          expect(hlen % 8).toBe(0);
          const back = T.decodeSafetensors(bytes);
          expect(back.metadata).toEqual(metadata);
          expect(Object.keys(back.entries)).toEqual(Object.keys(entries));
          for (const [k, e] of Object.entries(entries)) {
            expect(back.entries[k].dtype).toBe(e.dtype);
            expect(back.entries[k].shape).toEqual(e.shape);
            expect(Array.from(back.entries[k].data)).toEqual(Array.from(e.data));
          }
        },
      ),
      { numRuns: 30 },
    );
  });

  it('treats a tensor named __proto__ as an ordinary name', () => {
    const entries = JSON.parse('{"__proto__": {"dtype": "U8", "shape": [2], "data": null}}');
    entries.__proto__.data = new Uint8Array([1, 2]);
    const back = T.decodeSafetensors(T.encodeSafetensors(entries));
    expect(Object.keys(back.entries)).toEqual(['__proto__']);
    expect(Array.from(back.entries.__proto__.data)).toEqual([1, 2]);
  });

  it('names the source in errors and refuses data that does not fit the shape', () => {
    expect(() => T.decodeSafetensors(new Uint8Array(3), 'blob.safetensors')).toThrow(/safetensors blob.safetensors: truncated file/);
    expect(() => T.encodeSafetensors({ a: { dtype: 'F32', shape: [3], data: new Uint8Array(8) } })).toThrow(/'a': shape \[3\] of F32 needs 12 bytes, got 8/);
  });
});

describe('save / load', () => {
  it('round-trips f32 (NaN, -0, inf, subnormal), f16, i32 and u32 bit for bit, with metadata', async () => {
    await T.tidyAsync(async () => {
      const f = new Float32Array([1.5, -0, 0, NaN, Infinity, -Infinity, 1e-40, -3.4e38, 7, 0.1, 2, 3]);
      const nanPayload = new Uint32Array([0x7fa00001]); // a signalling NaN with a payload
      new Uint32Array(f.buffer)[2] = nanPayload[0];
      const h = [1, -0, NaN, 65504, 6e-8, -2.5, 0.333];
      const i = new Int32Array([-2147483648, 2147483647, 0, -1, 42]);
      const u = new Uint32Array([0, 4294967295, 7]);
      const tensors = {
        f: T.fromArray(f, [3, 4]),
        h: T.fromArray(h, [7], 'f16'),
        i: T.fromArray(i, [5], 'i32'),
        u: T.fromArray(u, [3], 'u32'),
        scalar: T.fromArray([3.25], []),
        empty: T.fromArray([], [2, 0]),
      };
      const path = join(dir, 'round.safetensors');
      await T.saveSafetensors(path, tensors, { format: 'pt', note: 'héllo' });
      // The file's data sections hold exactly the bits that were uploaded.
      const dec = T.decodeSafetensors(new Uint8Array(readFileSync(path)));
      expect(dec.metadata).toEqual({ format: 'pt', note: 'héllo' });
      expect(dec.entries.f).toMatchObject({ dtype: 'F32', shape: [3, 4] });
      expect(Array.from(dec.entries.f.data)).toEqual(Array.from(bytesOf(f)));
      expect(Array.from(dec.entries.h.data)).toEqual(Array.from(bytesOf(T.f32ToF16(h).subarray(0, 7))));
      expect(dec.entries.i.dtype).toBe('I32');
      expect(Array.from(dec.entries.i.data)).toEqual(Array.from(bytesOf(i)));
      expect(dec.entries.u.dtype).toBe('U32');
      expect(dec.entries.scalar.shape).toEqual([]);
      expect(dec.entries.empty.shape).toEqual([2, 0]);
      // Loading gives back the same dtypes, shapes and bits.
      const { tensors: back, metadata } = await T.loadSafetensors(path);
      expect(metadata).toEqual({ format: 'pt', note: 'héllo' });
      for (const [k, t] of Object.entries(tensors)) {
        expect(back[k].dtype, k).toBe(t.dtype);
        expect(back[k].shape, k).toEqual(t.shape);
        expect(Array.from(await rawBits(back[k])), k).toEqual(Array.from(await rawBits(t)));
      }
      // Saving what was loaded reproduces the file exactly.
      const again = join(dir, 'round2.safetensors');
      await T.saveSafetensors(again, back, { format: 'pt', note: 'héllo' });
      expect(Buffer.compare(readFileSync(path), readFileSync(again))).toBe(0);
    });
  });

  it('saves views (transposed, offset) as their row-major elements', async () => {
    await T.tidyAsync(async () => {
      const base = T.fromArray([0, 1, 2, 3, 4, 5], [2, 3]);
      const tr = base.view([3, 2], [1, 3]);
      const tail = base.view([4], [1], 2);
      const path = join(dir, 'views.safetensors');
      await T.saveSafetensors(path, { tr, tail });
      const { tensors } = await T.loadSafetensors(path);
      expect(Array.from(await tensors.tr.toArray())).toEqual([0, 3, 1, 4, 2, 5]);
      expect(Array.from(await tensors.tail.toArray())).toEqual([2, 3, 4, 5]);
    });
  });

  it('reads BF16 (widened to f32 exactly), F16 as f32 on request, and I64 into i32', async () => {
    // bf16 bits: 1.0, -2.5, +inf, the smallest subnormal, NaN, -0.
    const bf = new Uint16Array([0x3f80, 0xc020, 0x7f80, 0x0001, 0x7fc0, 0x8000]);
    const f16 = T.f32ToF16([1, -2, 0.5]).subarray(0, 3);
    const i64 = new BigInt64Array([-2147483648n, 2147483647n, 5n, -7n]);
    const bytes = T.encodeSafetensors({
      bf: { dtype: 'BF16', shape: [2, 3], data: bytesOf(bf) },
      h: { dtype: 'F16', shape: [3], data: bytesOf(f16) },
      ids: { dtype: 'I64', shape: [4], data: bytesOf(i64) },
    });
    const path = fileWith('conv.safetensors', bytes);
    await T.tidyAsync(async () => {
      const { tensors } = await T.loadSafetensors(path, { dtype: 'f32' });
      expect(tensors.bf.dtype).toBe('f32');
      expect(tensors.bf.shape).toEqual([2, 3]);
      const bits = new Uint32Array((await rawBits(tensors.bf)).buffer);
      expect(Array.from(bits)).toEqual(Array.from(bf, (b) => b << 16 >>> 0));
      expect(tensors.h.dtype).toBe('f32');
      expect(Array.from(await tensors.h.toArray())).toEqual([1, -2, 0.5]);
      expect(tensors.ids.dtype).toBe('i32');
      expect(Array.from(await tensors.ids.toArray())).toEqual([-2147483648, 2147483647, 5, -7]);
      const plain = await T.loadSafetensors(path, { names: ['h'] });
      expect(Object.keys(plain.tensors)).toEqual(['h']);
      expect(plain.tensors.h.dtype).toBe('f16');
    });
  });
});

describe('corrupt files', () => {
  const f32x2 = new Uint8Array(8);
  const cases: [string, () => Uint8Array, RegExp][] = [
    ['short.safetensors', () => new Uint8Array(5), /truncated file: 5 bytes/],
    ['longheader.safetensors', () => rawFile({}, new Uint8Array(0), 1000), /header length 1000 is beyond the end of the file/],
    ['json.safetensors', () => rawFile('{"a": {"dtype": ', f32x2), /invalid JSON header/],
    ['notobject.safetensors', () => rawFile('[1, 2]', new Uint8Array(0)), /the JSON is not an object/],
    ['range.safetensors', () => rawFile({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, f32x2), /'a': data_offsets \[0, 16\] out of range: the data section has 8 bytes/],
    [
      'overlap.safetensors',
      () => rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, new Uint8Array(12)),
      /tensors 'a' and 'b' overlap/,
    ],
    [
      'gap.safetensors',
      () => rawFile({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } }, new Uint8Array(12)),
      /bytes 4 to 8 of the data section belong to no tensor \(before 'b'\)/,
    ],
    ['trailing.safetensors', () => rawFile({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, f32x2), /the data section has 8 bytes but the tensors cover 4/],
    ['dtype.safetensors', () => rawFile({ a: { dtype: 'F33', shape: [2], data_offsets: [0, 8] } }, f32x2), /'a': unsupported dtype "F33"/],
    ['f64.safetensors', () => rawFile({ a: { dtype: 'F64', shape: [1], data_offsets: [0, 8] } }, f32x2), /'a': dtype F64 cannot be loaded/],
    ['size.safetensors', () => rawFile({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, f32x2), /'a': shape \[3\] of F32 needs 12 bytes but data_offsets \[0, 8\] hold 8/],
    ['shape.safetensors', () => rawFile({ a: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, f32x2), /'a': invalid shape \[-2\]/],
    ['meta.safetensors', () => rawFile({ __metadata__: { step: 3 } }, new Uint8Array(0)), /metadata value of 'step' is a number/],
    [
      'i64.safetensors',
      () =>
        T.encodeSafetensors({
          ok: { dtype: 'F32', shape: [2], data: f32x2 },
          ids: { dtype: 'I64', shape: [2], data: bytesOf(new BigInt64Array([1n, 1n << 40n])) },
        }),
      /'ids' \(I64\): element 1 = 1099511627776 does not fit in i32/,
    ],
  ];

  it.each(cases)('%s: the error names the file and the problem', async (name, make, problem) => {
    const path = fileWith(name, make());
    const before = T.stats().bytesInUse;
    const err = await T.loadSafetensors(path).then(
      () => null,
      (e: Error) => e,
    );
    expect(err, 'load should fail').toBeInstanceOf(T.SafetensorsError);
    expect(err!.message).toContain(path);
    expect(err!.message).toMatch(problem);
    // Tensors uploaded before the failure (the i64 case) are released again.
    expect(T.stats().bytesInUse).toBe(before);
  });

  it('a missing file is reported with its name', async () => {
    const path = join(dir, 'nope.safetensors');
    await expect(T.loadSafetensors(path)).rejects.toThrow(`safetensors ${path}: cannot open`);
  });
});

describe('atomic save', () => {
  const tmpLeft = (d: string) => readdirSync(d).filter((f) => f.endsWith('.tmp'));

  it('a disposed tensor in the middle of the dict fails the save and leaves no file', async () => {
    const d = mkdtempSync(join(dir, 'disposed-'));
    const path = join(d, 'model.safetensors');
    const a = T.fromArray([1, 2, 3]);
    const b = T.fromArray([4, 5]);
    const c = T.fromArray([6]);
    b.dispose();
    await expect(T.saveSafetensors(path, { a, b, c })).rejects.toThrow(`safetensors ${path}: tensor 'b' [2] is disposed`);
    expect(existsSync(path)).toBe(false);
    expect(readdirSync(d)).toEqual([]);
    // An existing checkpoint is left untouched by a failed save.
    await T.saveSafetensors(path, { a });
    const good = readFileSync(path);
    await expect(T.saveSafetensors(path, { a, b, c })).rejects.toThrow(/is disposed/);
    expect(Buffer.compare(readFileSync(path), good)).toBe(0);
    expect(tmpLeft(d)).toEqual([]);
    a.dispose();
    c.dispose();
  });

  it('a failure after the data was written (rename onto a folder) removes the temporary file', async () => {
    const d = mkdtempSync(join(dir, 'rename-'));
    const path = join(d, 'taken');
    mkdirSync(join(path, 'inside'), { recursive: true });
    const a = T.fromArray([1, 2, 3]);
    await expect(T.saveSafetensors(path, { a })).rejects.toThrow(`safetensors ${path}: write failed`);
    expect(tmpLeft(d)).toEqual([]);
    a.dispose();
  });

  it('refuses a missing folder, bad names and non-string metadata before writing', async () => {
    const a = T.fromArray([1]);
    const missing = join(dir, 'no-such-dir', 'x.safetensors');
    await expect(T.saveSafetensors(missing, { a })).rejects.toThrow(`safetensors ${missing}: write failed`);
    const path = join(dir, 'bad.safetensors');
    await expect(T.saveSafetensors(path, { __metadata__: a })).rejects.toThrow(/invalid tensor name '__metadata__'/);
    await expect(T.saveSafetensors(path, { a }, { n: 3 as unknown as string })).rejects.toThrow(/metadata value of 'n' is a number/);
    expect(existsSync(path)).toBe(false);
    a.dispose();
  });
});
