// Host image preprocessing (model/image.ts): PNG / JPEG decoding from bytes made in the
// test, errors that name the source, smart-resize sizes, compositing, resampling, and the
// patch order / positions the vision merger relies on.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { PNG } from 'pngjs';
import jpeg from 'jpeg-js';
import { CLIP_MEAN, CLIP_STD, decodeImage, loadImage, patchPositions, patchify, preprocess, smartResize, type RgbaImage } from '../../model/image.ts';

// ---------------------------------------------------------------- test images

function rgbaOf(width: number, height: number, px: (x: number, y: number) => [number, number, number, number]): Uint8Array {
  const d = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) d.set(px(x, y), (y * width + x) * 4);
  return d;
}

function pngBytes(width: number, height: number, rgba: Uint8Array, opts: { colorType?: 0 | 2 | 4 | 6; bitDepth?: 8 | 16 } = {}): Uint8Array {
  const png = new PNG({ width, height });
  // pngjs reads 16-bit input as native-endian 16-bit words; v * 257 scales back to v exactly.
  png.data = opts.bitDepth === 16 ? Buffer.from(Uint16Array.from(rgba, (v) => v * 257).buffer) : Buffer.from(rgba);
  return new Uint8Array(PNG.sync.write(png, { colorType: opts.colorType ?? 6, bitDepth: opts.bitDepth ?? 8 }));
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, data.length);
  out.set(Buffer.from(type, 'latin1'), 4);
  out.set(data, 8);
  dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** An 8-bit palette PNG (colour type 3) with a tRNS chunk, assembled by hand (pngjs cannot write one). */
function palettePng(width: number, height: number, palette: [number, number, number][], alpha: number[], index: (x: number, y: number) => number): Uint8Array {
  const ihdr = new Uint8Array(13);
  const dv = new DataView(ihdr.buffer);
  dv.setUint32(0, width);
  dv.setUint32(4, height);
  ihdr.set([8, 3, 0, 0, 0], 8); // bit depth 8, palette, deflate, adaptive filter, no interlace
  const raw = new Uint8Array(height * (width + 1));
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) raw[y * (width + 1) + 1 + x] = index(x, y); // filter byte 0
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('PLTE', new Uint8Array(palette.flat())),
    chunk('tRNS', new Uint8Array(alpha)),
    chunk('IDAT', new Uint8Array(deflateSync(raw))),
    chunk('IEND', new Uint8Array(0)),
  ];
  return Buffer.concat(parts);
}

const colourful = (x: number, y: number): [number, number, number, number] => [(x * 40 + 7) % 256, (y * 50 + 3) % 256, (x * y * 13) % 256, 255];

/** Identity options: no resizing for sizes that are multiples of 4, values /255 unnormalised. */
const raw = { patchSize: 2, mergeSize: 2, minPixels: 1, maxPixels: 1 << 30, mean: [0, 0, 0] as [number, number, number], std: [1, 1, 1] as [number, number, number] };

// ---------------------------------------------------------------- decoding

describe('decodeImage', () => {
  it('reads an RGBA PNG exactly', () => {
    const rgba = rgbaOf(7, 5, (x, y) => [x * 30, y * 40, 200 - x * y, (x + y) * 20]);
    const img = decodeImage(pngBytes(7, 5, rgba), 'rgba.png');
    expect([img.width, img.height]).toEqual([7, 5]);
    expect(Array.from(img.rgba)).toEqual(Array.from(rgba));
  });

  it('reads RGB, grey, grey+alpha and 16-bit PNGs as RGBA', () => {
    const rgb = rgbaOf(6, 4, colourful);
    expect(Array.from(decodeImage(pngBytes(6, 4, rgb, { colorType: 2 }), 'rgb.png').rgba)).toEqual(Array.from(rgb));
    expect(Array.from(decodeImage(pngBytes(6, 4, rgb, { colorType: 6, bitDepth: 16 }), 'rgb16.png').rgba)).toEqual(Array.from(rgb));
    const grey = rgbaOf(5, 3, (x, y) => [x * 50 + y, x * 50 + y, x * 50 + y, 255]);
    expect(Array.from(decodeImage(pngBytes(5, 3, grey, { colorType: 0 }), 'grey.png').rgba)).toEqual(Array.from(grey));
    const greyAlpha = rgbaOf(5, 3, (x, y) => [x * 50, x * 50, x * 50, y * 100]);
    expect(Array.from(decodeImage(pngBytes(5, 3, greyAlpha, { colorType: 4 }), 'ga.png').rgba)).toEqual(Array.from(greyAlpha));
  });

  it('reads a palette PNG with transparency', () => {
    const pal: [number, number, number][] = [[255, 0, 0], [0, 255, 0], [0, 0, 255]];
    const bytes = palettePng(4, 2, pal, [255, 128, 0], (x, y) => (x + y) % 3);
    const img = decodeImage(bytes, 'pal.png');
    const want = rgbaOf(4, 2, (x, y) => {
      const i = (x + y) % 3;
      return [...pal[i], [255, 128, 0][i]] as [number, number, number, number];
    });
    expect(Array.from(img.rgba)).toEqual(Array.from(want));
  });

  it('reads a JPEG close to what was encoded', () => {
    const rgba = rgbaOf(24, 16, (x, y) => [100 + 4 * x, 60 + 5 * y, 150, 255]); // smooth: small JPEG error
    const bytes = new Uint8Array(jpeg.encode({ width: 24, height: 16, data: Buffer.from(rgba) }, 95).data);
    const img = decodeImage(bytes, 'smooth.jpg');
    expect([img.width, img.height]).toEqual([24, 16]);
    let err = 0;
    for (let i = 0; i < rgba.length; i++) err = Math.max(err, Math.abs(img.rgba[i] - rgba[i]));
    expect(err).toBeLessThan(12);
    for (let i = 3; i < rgba.length; i += 4) expect(img.rgba[i]).toBe(255);
  });

  it('names the source for corrupt, truncated or unknown data', () => {
    const png = pngBytes(8, 8, rgbaOf(8, 8, colourful));
    const bad = png.slice();
    bad[45] ^= 0xff; // inside IDAT: the CRC no longer matches
    expect(() => decodeImage(bad, 'bad.png')).toThrow(/bad\.png: corrupt or truncated PNG/);
    expect(() => decodeImage(png.subarray(0, png.length - 30), 'cut.png')).toThrow(/cut\.png: corrupt or truncated PNG/);
    expect(() => decodeImage(png.subarray(0, 12), 'head.png')).toThrow(/head\.png: corrupt or truncated PNG/);
    const jpg = new Uint8Array(jpeg.encode({ width: 16, height: 16, data: Buffer.from(rgbaOf(16, 16, colourful)) }, 80).data);
    expect(() => decodeImage(jpg.subarray(0, jpg.length >> 1), 'cut.jpg')).toThrow(/cut\.jpg: corrupt or truncated JPEG/);
    expect(() => decodeImage(new TextEncoder().encode('GIF89a....'), 'anim.gif')).toThrow(/anim\.gif: unknown image format.*47 49 46/);
    expect(() => decodeImage(new Uint8Array(0), 'empty.bin')).toThrow(/empty\.bin: unknown image format.*empty/);
  });

  it('loadImage reads a file and names a missing path', () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrv-img-'));
    try {
      const rgba = rgbaOf(3, 2, colourful);
      const path = join(dir, 'x.png');
      writeFileSync(path, pngBytes(3, 2, rgba));
      expect(Array.from(loadImage(path).rgba)).toEqual(Array.from(rgba));
      const missing = join(dir, 'nope.png');
      expect(() => loadImage(missing)).toThrow(new RegExp(`${missing.replace(/[.\\/]/g, '\\$&')}: cannot read image file \\(no such file\\)`));
      writeFileSync(join(dir, 'junk.png'), 'not an image');
      expect(() => loadImage(join(dir, 'junk.png'))).toThrow(/junk\.png: unknown image format/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------- smart resize

describe('smartResize', () => {
  it('matches Qwen2-VL on worked cases', () => {
    // factor 28, Qwen's defaults (min 56*56, max 28*28*1280)
    expect(smartResize(224, 224, { factor: 28 })).toEqual({ height: 224, width: 224 });
    expect(smartResize(100, 300, { factor: 28 })).toEqual({ height: 112, width: 308 });
    // too big: both sides scaled by sqrt(area / max), floored to the factor
    expect(smartResize(2000, 3000, { factor: 28 })).toEqual({ height: 812, width: 1204 });
    // too small: scaled up by sqrt(min / area), ceiled
    expect(smartResize(20, 30, { factor: 28, minPixels: 56 * 56 })).toEqual({ height: 56, width: 84 });
    expect(smartResize(300, 600, { factor: 28, targetSize: 224 })).toEqual({ height: 168, width: 308 });
    expect(smartResize(500, 500, { factor: 28, targetSize: 224 })).toEqual({ height: 224, width: 224 });
  });

  it('gives multiples of the factor within the pixel bounds, keeping the aspect ratio', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3000 }),
        fc.double({ min: 1 / 8, max: 8, noNaN: true }),
        fc.constantFrom(4, 8, 28),
        fc.integer({ min: 1, max: 64 }),
        fc.integer({ min: 16, max: 2000 }),
        (h, aspect, f, minBlocks, maxBlocks) => {
          const w = Math.max(1, Math.round(h * aspect));
          const minPixels = Math.min(minBlocks, maxBlocks) * f * f;
          const maxPixels = maxBlocks * f * f;
          const s = smartResize(h, w, { factor: f, minPixels, maxPixels });
          expect(s.height % f).toBe(0);
          expect(s.width % f).toBe(0);
          expect(s.height * s.width).toBeLessThanOrEqual(maxPixels);
          // Ceiling both sides up to minPixels can overshoot; with room for that, both bounds hold.
          if (8 * minPixels <= maxPixels) expect(s.height * s.width).toBeGreaterThanOrEqual(minPixels);
          // Some common scale k puts both sides within one factor of k * (h, w).
          const lo = Math.max((s.height - f) / h, (s.width - f) / w);
          const hi = Math.min((s.height + f) / h, (s.width + f) / w);
          expect(lo).toBeLessThanOrEqual(hi + 1e-12);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('keeps extreme aspect ratios in bounds and refuses beyond 200', () => {
    const s = smartResize(1, 200, { factor: 28, maxPixels: 28 * 28 * 4 });
    expect(s.height).toBe(28);
    expect(s.width % 28).toBe(0);
    expect(s.height * s.width).toBeLessThanOrEqual(28 * 28 * 4);
    expect(() => smartResize(1, 201, { factor: 28 })).toThrow(/aspect ratio of 1x201/);
    expect(() => smartResize(10, 10, { factor: 4, minPixels: 100, maxPixels: 50 })).toThrow(/minPixels 100 exceeds maxPixels 50/);
  });
});

// ---------------------------------------------------------------- preprocess

describe('preprocess', () => {
  it('composites alpha on white and normalises with mean / std', () => {
    const img: RgbaImage = { width: 4, height: 4, rgba: rgbaOf(4, 4, (x, y) => [200, 100, 0, [0, 255, 128, 64][(x + y) % 4]]) };
    const pre = preprocess(img, raw);
    expect([pre.height, pre.width, pre.gridH, pre.gridW]).toEqual([4, 4, 2, 2]);
    for (let y = 0; y < 4; y++) {
      for (let x = 0; x < 4; x++) {
        const a = [0, 255, 128, 64][(x + y) % 4] / 255;
        [200, 100, 0].forEach((v, c) => expect(pre.pixels[c * 16 + y * 4 + x]).toBeCloseTo((v / 255) * a + 1 - a, 6));
      }
    }
    const clip = preprocess(img, { patchSize: 2, minPixels: 1 });
    for (let c = 0; c < 3; c++) {
      const white = (1 - CLIP_MEAN[c]) / CLIP_STD[c]; // pixel (0,0) is fully transparent: white
      expect(clip.pixels[c * 16]).toBeCloseTo(white, 5);
    }
  });

  it('resizes to multiples of patchSize * mergeSize, preserving constants and keeping an exact size unchanged', () => {
    const flat: RgbaImage = { width: 37, height: 23, rgba: rgbaOf(37, 23, () => [51, 102, 153, 255]) };
    const pre = preprocess(flat, { ...raw, patchSize: 3, maxPixels: 24 * 12 });
    expect(pre.height % 6).toBe(0);
    expect(pre.width % 6).toBe(0);
    expect(pre.height * pre.width).toBeLessThanOrEqual(24 * 12);
    expect([pre.gridH, pre.gridW]).toEqual([pre.height / 3, pre.width / 3]);
    const plane = pre.height * pre.width;
    for (let c = 0; c < 3; c++) for (let i = 0; i < plane; i++) expect(pre.pixels[c * plane + i]).toBeCloseTo([0.2, 0.4, 0.6][c], 5);

    const rgba = rgbaOf(8, 12, colourful);
    const same = preprocess({ width: 8, height: 12, rgba }, raw);
    for (let y = 0; y < 12; y++) for (let x = 0; x < 8; x++) expect(same.pixels[y * 8 + x]).toBeCloseTo(rgba[(y * 8 + x) * 4] / 255, 6);
  });

  it('averages when shrinking and interpolates when enlarging', () => {
    // Left half black, right half white, shrunk 4x: the outer columns stay pure.
    const halves = rgbaOf(32, 32, (x) => (x < 16 ? [0, 0, 0, 255] : [255, 255, 255, 255]));
    const small = preprocess({ width: 32, height: 32, rgba: halves }, { ...raw, targetSize: 8 });
    expect([small.height, small.width]).toEqual([8, 8]);
    for (let y = 0; y < 8; y++) {
      expect(small.pixels[y * 8]).toBeCloseTo(0, 6);
      expect(small.pixels[y * 8 + 7]).toBeCloseTo(1, 6);
      const row = Array.from(small.pixels.subarray(y * 8, y * 8 + 8));
      for (let x = 1; x < 8; x++) expect(row[x]).toBeGreaterThanOrEqual(row[x - 1]);
      expect(row[3] + row[4]).toBeCloseTo(1, 5); // symmetric about the edge
    }
    // A 2-pixel ramp enlarged to 8: monotone, within the two values, symmetric.
    const two = rgbaOf(2, 2, (x) => (x === 0 ? [0, 0, 0, 255] : [255, 255, 255, 255]));
    const big = preprocess({ width: 2, height: 2, rgba: two }, { ...raw, targetSize: 8 });
    const row = Array.from(big.pixels.subarray(0, 8));
    for (let x = 1; x < 8; x++) expect(row[x]).toBeGreaterThanOrEqual(row[x - 1]);
    for (let x = 0; x < 8; x++) expect(row[x] + row[7 - x]).toBeCloseTo(1, 5);
    expect(row[0]).toBe(0);
    expect(row[3]).toBeGreaterThan(0.2);
  });

  it('rejects a pixel buffer of the wrong size', () => {
    expect(() => preprocess({ width: 4, height: 4, rgba: new Uint8Array(10) }, raw)).toThrow(/4x4 needs 64 RGBA bytes, got 10/);
  });
});

// ---------------------------------------------------------------- patches

describe('patchify / patchPositions', () => {
  it('orders a 4x4 patch grid by 2x2 merge groups (hand-computed)', () => {
    // 8x8 image, patch 2: pixel value encodes channel, y, x.
    const pixels = new Float32Array(3 * 64);
    for (let c = 0; c < 3; c++) for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) pixels[c * 64 + y * 8 + x] = c * 100 + y * 10 + x;
    const pre = { pixels, height: 8, width: 8, gridH: 4, gridW: 4 };
    const rows = [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3];
    const cols = [0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 0, 1, 2, 3, 2, 3];
    expect(Array.from(patchPositions(4, 4, 2))).toEqual([...rows, ...cols]);
    const out = patchify(pre, 2, 2);
    expect(out.length).toBe(16 * 12);
    // Patch 5 is grid cell (0, 3): pixels y 0..1, x 6..7 of each channel.
    expect(Array.from(out.subarray(5 * 12, 6 * 12))).toEqual([6, 7, 16, 17, 106, 107, 116, 117, 206, 207, 216, 217]);
    // Patch 10 is cell (3, 0): y 6..7, x 0..1.
    expect(Array.from(out.subarray(10 * 12, 11 * 12))).toEqual([60, 61, 70, 71, 160, 161, 170, 171, 260, 261, 270, 271]);
    for (let i = 0; i < 16; i++) {
      const [r, c] = [rows[i], cols[i]];
      expect(out[i * 12], `patch ${i}`).toBe(20 * r + 2 * c);
    }
  });

  it('places every patch back where its position says (random sizes)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 3 }), (bh, bw, p, m) => {
        const gridH = bh * m;
        const gridW = bw * m;
        const H = gridH * p;
        const W = gridW * p;
        const pixels = Float32Array.from({ length: 3 * H * W }, (_, i) => i);
        const out = patchify({ pixels, height: H, width: W, gridH, gridW }, p, m);
        const pos = patchPositions(gridH, gridW, m);
        const n = gridH * gridW;
        const back = new Float32Array(pixels.length);
        for (let i = 0; i < n; i++) {
          for (let c = 0; c < 3; c++) for (let y = 0; y < p; y++) for (let x = 0; x < p; x++) {
            back[c * H * W + (pos[i] * p + y) * W + pos[n + i] * p + x] = out[i * 3 * p * p + c * p * p + y * p + x];
          }
        }
        expect(Array.from(back)).toEqual(Array.from(pixels));
        // Each merge group is m*m consecutive patches within one m x m block.
        for (let g = 0; g < n / (m * m); g++) {
          const rs = new Set<number>();
          const cs = new Set<number>();
          for (let k = 0; k < m * m; k++) {
            rs.add(Math.floor(pos[g * m * m + k] / m));
            cs.add(Math.floor(pos[n + g * m * m + k] / m));
          }
          expect([rs.size, cs.size]).toEqual([1, 1]);
        }
      }),
      { numRuns: 60 },
    );
  });

  it('works end to end from PNG bytes, and rejects grids that are not merge multiples', () => {
    const img = decodeImage(pngBytes(30, 20, rgbaOf(30, 20, colourful)), 'e2e.png');
    const pre = preprocess(img, { patchSize: 5, mergeSize: 2, minPixels: 1 });
    expect([pre.height, pre.width]).toEqual([20, 30]);
    expect(patchify(pre, 5, 2).length).toBe(pre.gridH * pre.gridW * 75);
    expect(() => patchPositions(3, 4, 2)).toThrow(/grid 3x4 is not a positive multiple of mergeSize 2/);
    expect(() => patchify({ ...pre, gridH: 3 }, 5, 2)).toThrow(/not a 3x6 grid of 5-pixel patches/);
  });
});
