// Image preprocessing on the host, as Qwen2-VL's processor does it (in our own code):
// decode PNG / JPEG to RGBA, composite alpha on white, "smart resize" (keep the aspect
// ratio, round both sides to multiples of patchSize * mergeSize, clamp the pixel count),
// normalise with the CLIP mean / std, then cut into patches ordered so that each
// mergeSize x mergeSize merge group is consecutive rows (what the vision merger expects).
//
// Differences from the reference processor: one frame (no temporal patch of 2, so a
// patch vector is [3, p, p] not [3, 2, p, p]), and an antialiased bilinear (triangle)
// resampler instead of PIL's bicubic.
import { readFileSync } from 'node:fs';
import { PNG } from 'pngjs';
import jpeg from 'jpeg-js';

export interface RgbaImage {
  width: number;
  height: number;
  /** width * height * 4 bytes, row-major RGBA. */
  rgba: Uint8Array;
}

/** The mean / std Qwen2-VL inherits from CLIP, per RGB channel (on values in [0, 1]). */
export const CLIP_MEAN: [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
export const CLIP_STD: [number, number, number] = [0.26862954, 0.26130258, 0.27577711];

/** Qwen2-VL refuses images more elongated than this; so do we. */
export const MAX_ASPECT_RATIO = 200;

/** Which decoder the magic bytes call for, or null. */
export function imageFormat(bytes: Uint8Array): 'png' | 'jpeg' | null {
  const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (bytes.length >= 8 && png.every((b, i) => bytes[i] === b)) return 'png';
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return 'jpeg';
  return null;
}

/**
 * Decodes PNG (any colour type or bit depth pngjs reads: grey, palette, RGB, with or
 * without alpha, 16-bit scaled to 8) or baseline/progressive JPEG to 8-bit RGBA.
 * `source` (a path or a label) is named in every error.
 */
export function decodeImage(bytes: Uint8Array, source: string): RgbaImage {
  const fmt = imageFormat(bytes);
  if (fmt === null) {
    const head = Array.from(bytes.subarray(0, 8), (b) => b.toString(16).padStart(2, '0')).join(' ');
    throw new Error(`${source}: unknown image format (expected PNG or JPEG; first bytes: ${head || 'none, the file is empty'})`);
  }
  let width: number;
  let height: number;
  let data: Uint8Array;
  try {
    if (fmt === 'png') {
      const png = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
      ({ width, height } = png);
      data = new Uint8Array(png.data.buffer, png.data.byteOffset, png.data.byteLength);
    } else {
      const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true });
      ({ width, height } = img);
      data = img.data;
    }
  } catch (e) {
    throw new Error(`${source}: corrupt or truncated ${fmt.toUpperCase()} (${(e as Error).message})`);
  }
  // Decoders can stop early on damaged input without throwing: check what came back.
  if (!(width > 0 && height > 0) || data.length !== width * height * 4) {
    throw new Error(`${source}: corrupt or truncated ${fmt.toUpperCase()} (decoded ${width}x${height} with ${data.length} bytes of pixels)`);
  }
  return { width, height, rgba: data };
}

/** Reads and decodes an image file; errors name the path. */
export function loadImage(path: string): RgbaImage {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(`${path}: cannot read image file${code === 'ENOENT' ? ' (no such file)' : ''} (${(e as Error).message})`);
  }
  return decodeImage(bytes, path);
}

// ---------------------------------------------------------------- smart resize

export interface ResizeOptions {
  /** Both sides become multiples of this (patchSize * mergeSize). */
  factor: number;
  /** Lower bound on height * width (default 4 * factor^2, Qwen's 56 * 56 at factor 28). */
  minPixels?: number;
  /** Upper bound on height * width (default 1280 * factor^2, Qwen's 1280 merged tokens). */
  maxPixels?: number;
  /**
   * Scale so that the area is about targetSize^2 (a square image of side targetSize,
   * when that is a multiple of factor, stays exactly that size), keeping the aspect
   * ratio. Replaces minPixels / maxPixels.
   */
  targetSize?: number;
}

/**
 * The output size for a height x width image (Qwen2-VL's smart_resize): each side rounded
 * to a multiple of `factor` (at least factor), then, if the area is out of bounds, both
 * sides rescaled by one factor (floored when shrinking, ceiled when growing). When
 * both bounds cannot be met, the area stays within maxPixels.
 */
export function smartResize(height: number, width: number, opts: ResizeOptions): { height: number; width: number } {
  const f = opts.factor;
  if (!Number.isInteger(f) || f < 1) throw new RangeError(`smartResize: factor must be a positive integer, got ${f}`);
  if (!(Number.isInteger(height) && Number.isInteger(width) && height > 0 && width > 0)) {
    throw new RangeError(`smartResize: image size ${height}x${width} must be positive integers`);
  }
  if (Math.max(height, width) / Math.min(height, width) > MAX_ASPECT_RATIO) {
    throw new RangeError(`smartResize: aspect ratio of ${height}x${width} is above ${MAX_ASPECT_RATIO}`);
  }
  const round = (v: number) => Math.max(f, Math.round(v / f) * f);
  const floor = (v: number) => Math.max(f, Math.floor(v / f) * f);
  const ceil = (v: number) => Math.max(f, Math.ceil(v / f) * f);
  if (opts.targetSize !== undefined) {
    if (!(opts.targetSize > 0)) throw new RangeError(`smartResize: targetSize must be positive, got ${opts.targetSize}`);
    const s = opts.targetSize / Math.sqrt(height * width);
    return { height: round(height * s), width: round(width * s) };
  }
  const minPixels = opts.minPixels ?? 4 * f * f;
  const maxPixels = opts.maxPixels ?? 1280 * f * f;
  if (maxPixels < f * f) throw new RangeError(`smartResize: maxPixels ${maxPixels} is below one ${f}x${f} block`);
  if (minPixels > maxPixels) throw new RangeError(`smartResize: minPixels ${minPixels} exceeds maxPixels ${maxPixels}`);
  // The largest size under maxPixels: scale to that area, floor both sides.
  const shrink = () => {
    const beta = Math.sqrt((height * width) / maxPixels);
    let h = floor(height / beta);
    let w = floor(width / beta);
    // A side held at `factor` by the floor can leave the area too big: trim the other.
    while (h * w > maxPixels) {
      if (h >= w) h -= f;
      else w -= f;
    }
    return { height: h, width: w };
  };
  const h = round(height);
  const w = round(width);
  if (h * w > maxPixels) return shrink();
  if (h * w < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    const up = { height: ceil(height * beta), width: ceil(width * beta) };
    // Ceiling both sides can overshoot a maxPixels close to minPixels: the maximum wins.
    return up.height * up.width > maxPixels ? shrink() : up;
  }
  return { height: h, width: w };
}

// ---------------------------------------------------------------- resampling

interface AxisWeights {
  /** First source index for each output index. */
  start: Int32Array;
  /** Number of taps for each output index. */
  count: Int32Array;
  /** taps weights per output index, `maxTaps` apart. */
  w: Float32Array;
  maxTaps: number;
}

/**
 * Triangle-filter weights for resampling an axis of `n` samples to `m`: plain bilinear
 * when enlarging; when shrinking the filter widens by the ratio, so every source pixel
 * contributes (area-like averaging, no aliasing). Weights of each output sum to 1.
 */
function axisWeights(n: number, m: number): AxisWeights {
  const scale = n / m;
  const support = Math.max(scale, 1);
  const maxTaps = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(m);
  const count = new Int32Array(m);
  const w = new Float32Array(m * maxTaps);
  for (let o = 0; o < m; o++) {
    const center = (o + 0.5) * scale; // in source coordinates, pixel i covers [i, i + 1)
    const lo = Math.max(0, Math.floor(center - support));
    const hi = Math.min(n, Math.ceil(center + support));
    let total = 0;
    let k = 0;
    for (let i = lo; i < hi && k < maxTaps; i++, k++) {
      const t = Math.abs(i + 0.5 - center) / support;
      const v = Math.max(0, 1 - t);
      w[o * maxTaps + k] = v;
      total += v;
    }
    start[o] = lo;
    count[o] = k;
    for (let j = 0; j < k; j++) w[o * maxTaps + j] /= total;
  }
  return { start, count, w, maxTaps };
}

/** Resamples planar float channels [3, h, w] to [3, H, W], rows then columns. */
function resizePlanar(src: Float32Array, h: number, w: number, H: number, W: number): Float32Array {
  if (h === H && w === W) return src;
  const cx = axisWeights(w, W);
  const cy = axisWeights(h, H);
  const tmp = new Float32Array(3 * h * W);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < h; y++) {
      const row = c * h * w + y * w;
      for (let x = 0; x < W; x++) {
        let s = 0;
        const base = x * cx.maxTaps;
        for (let k = 0; k < cx.count[x]; k++) s += cx.w[base + k] * src[row + cx.start[x] + k];
        tmp[c * h * W + y * W + x] = s;
      }
    }
  }
  const out = new Float32Array(3 * H * W);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < H; y++) {
      const base = y * cy.maxTaps;
      for (let x = 0; x < W; x++) {
        let s = 0;
        for (let k = 0; k < cy.count[y]; k++) s += cy.w[base + k] * tmp[c * h * W + (cy.start[y] + k) * W + x];
        out[c * H * W + y * W + x] = s;
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------- preprocess

export interface PreprocessOptions {
  patchSize: number;
  /** Patches per side of a merge group (default 2). */
  mergeSize?: number;
  minPixels?: number;
  maxPixels?: number;
  /** See ResizeOptions.targetSize. */
  targetSize?: number;
  mean?: [number, number, number];
  std?: [number, number, number];
}

export interface Preprocessed {
  /** Normalised pixels, planar [3, height, width]. */
  pixels: Float32Array;
  height: number;
  width: number;
  /** Patches per column / per row: height / patchSize, width / patchSize. */
  gridH: number;
  gridW: number;
}

/** Composites on white, smart-resizes and normalises one image. */
export function preprocess(img: RgbaImage, opts: PreprocessOptions): Preprocessed {
  const { width: w, height: h, rgba } = img;
  if (rgba.length !== w * h * 4) {
    throw new RangeError(`preprocess: image of ${w}x${h} needs ${w * h * 4} RGBA bytes, got ${rgba.length}`);
  }
  const p = opts.patchSize;
  const m = opts.mergeSize ?? 2;
  if (!Number.isInteger(p) || p < 1 || !Number.isInteger(m) || m < 1) {
    throw new RangeError(`preprocess: patchSize ${p} and mergeSize ${m} must be positive integers`);
  }
  const size = smartResize(h, w, { factor: p * m, minPixels: opts.minPixels, maxPixels: opts.maxPixels, targetSize: opts.targetSize });
  const mean = opts.mean ?? CLIP_MEAN;
  const std = opts.std ?? CLIP_STD;

  // Alpha over white, in [0, 1], planar: resampling after compositing keeps transparent
  // pixels' (meaningless) colours from bleeding into their neighbours.
  const plane = w * h;
  const rgb = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    const a = rgba[4 * i + 3] / 255;
    for (let c = 0; c < 3; c++) rgb[c * plane + i] = (rgba[4 * i + c] / 255) * a + (1 - a);
  }
  const pixels = resizePlanar(rgb, h, w, size.height, size.width);
  const outPlane = size.height * size.width;
  for (let c = 0; c < 3; c++) {
    const inv = 1 / std[c];
    for (let i = c * outPlane; i < (c + 1) * outPlane; i++) pixels[i] = (pixels[i] - mean[c]) * inv;
  }
  return { pixels, height: size.height, width: size.width, gridH: size.height / p, gridW: size.width / p };
}

// ---------------------------------------------------------------- patches

function checkGrid(op: string, gridH: number, gridW: number, m: number): void {
  if (!Number.isInteger(m) || m < 1) throw new RangeError(`${op}: mergeSize must be a positive integer, got ${m}`);
  if (gridH % m !== 0 || gridW % m !== 0 || gridH < 1 || gridW < 1) {
    throw new RangeError(`${op}: patch grid ${gridH}x${gridW} is not a positive multiple of mergeSize ${m} on both sides`);
  }
}

/**
 * The patch-grid cell of each patch in merge order: merged-grid rows, merged-grid
 * columns, then the mergeSize x mergeSize cells inside (row-major). Yields [row, col].
 */
function* mergeOrder(gridH: number, gridW: number, m: number): Generator<[number, number]> {
  for (let br = 0; br < gridH / m; br++) {
    for (let bc = 0; bc < gridW / m; bc++) {
      for (let r = 0; r < m; r++) for (let c = 0; c < m; c++) yield [br * m + r, bc * m + c];
    }
  }
}

/**
 * Flattened patches [gridH * gridW, 3 * p * p] (each row is [channel, y, x] of one
 * patch), in merge order, so rows 4k..4k+3 (for mergeSize 2) form merged token k.
 */
export function patchify(pre: Preprocessed, patchSize: number, mergeSize = 2): Float32Array {
  const p = patchSize;
  const { gridH, gridW, height: H, width: W, pixels } = pre;
  if (gridH * p !== H || gridW * p !== W) {
    throw new RangeError(`patchify: image ${H}x${W} is not a ${gridH}x${gridW} grid of ${p}-pixel patches`);
  }
  checkGrid('patchify', gridH, gridW, mergeSize);
  const dim = 3 * p * p;
  const out = new Float32Array(gridH * gridW * dim);
  let at = 0;
  for (const [row, col] of mergeOrder(gridH, gridW, mergeSize)) {
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < p; y++) {
        const src = c * H * W + (row * p + y) * W + col * p;
        out.set(pixels.subarray(src, src + p), at);
        at += p;
      }
    }
  }
  return out;
}

/** Patch-grid [row, col] of every patch in patchify's order, as i32 [2, numPatches] (rows first). */
export function patchPositions(gridH: number, gridW: number, mergeSize = 2): Int32Array {
  checkGrid('patchPositions', gridH, gridW, mergeSize);
  const n = gridH * gridW;
  const out = new Int32Array(2 * n);
  let i = 0;
  for (const [row, col] of mergeOrder(gridH, gridW, mergeSize)) {
    out[i] = row;
    out[n + i] = col;
    i++;
  }
  return out;
}
