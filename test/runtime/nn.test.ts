// Fused nn kernels (runtime/ops/nn.ts) against float64 CPU references: softmax,
// logSoftmax, rmsNorm, layerNorm, rope (plain, M-RoPE, 2-section vision), crossEntropy.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import * as T from '../../runtime/index.ts';
import { checkOp, expectClose, prod, randArray, rng } from '../helpers.ts';

// ---------------------------------------------------------------- references (float64)

/** Softmax or log-softmax of a row-major tensor over `axis`. */
function softmaxRef(x: Float64Array, shape: number[], axis: number, log: boolean): Float64Array {
  const D = shape[axis];
  const inner = prod(shape.slice(axis + 1));
  const outer = prod(shape.slice(0, axis));
  const y = new Float64Array(x.length);
  for (let o = 0; o < outer; o++) {
    for (let k = 0; k < inner; k++) {
      const at = (j: number) => o * D * inner + j * inner + k;
      let m = -Infinity;
      for (let j = 0; j < D; j++) m = Math.max(m, x[at(j)]);
      let s = 0;
      for (let j = 0; j < D; j++) s += Math.exp(x[at(j)] - m);
      for (let j = 0; j < D; j++) y[at(j)] = log ? x[at(j)] - m - Math.log(s) : Math.exp(x[at(j)] - m) / s;
    }
  }
  return y;
}

function rmsNormRef(x: Float64Array, w: Float64Array, D: number, eps: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / D; r++) {
    let ss = 0;
    for (let j = 0; j < D; j++) ss += x[r * D + j] ** 2;
    const rs = 1 / Math.sqrt(ss / D + eps);
    for (let j = 0; j < D; j++) y[r * D + j] = x[r * D + j] * rs * w[j];
  }
  return y;
}

function layerNormRef(x: Float64Array, w: Float64Array, b: Float64Array, D: number, eps: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / D; r++) {
    let mu = 0;
    for (let j = 0; j < D; j++) mu += x[r * D + j];
    mu /= D;
    let v = 0;
    for (let j = 0; j < D; j++) v += (x[r * D + j] - mu) ** 2;
    const rs = 1 / Math.sqrt(v / D + eps);
    for (let j = 0; j < D; j++) y[r * D + j] = (x[r * D + j] - mu) * rs * w[j] + b[j];
  }
  return y;
}

/**
 * RoPE of x [B, H, T, Dh] with positions [S, B, T]; frequency j reads row section(j).
 * The angle is pos * f32(invFreq) rounded to f32, as the kernel (and HF) computes it.
 */
function ropeRef(x: Float64Array, pos: ArrayLike<number>, dims: number[], sections: number[], invFreq: number[], sign = 1): Float64Array {
  const [B, H, T_, Dh] = dims;
  const half = Dh / 2;
  const sec: number[] = [];
  sections.forEach((n, s) => { for (let q = 0; q < n; q++) sec.push(s); });
  const y = new Float64Array(x.length);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let t = 0; t < T_; t++)
        for (let j = 0; j < half; j++) {
          const p = pos[(sec[j] * B + b) * T_ + t];
          const a = Math.fround(p * Math.fround(invFreq[j])) * sign;
          const o = ((b * H + h) * T_ + t) * Dh;
          const x1 = x[o + j], x2 = x[o + j + half];
          y[o + j] = x1 * Math.cos(a) - x2 * Math.sin(a);
          y[o + j + half] = x2 * Math.cos(a) + x1 * Math.sin(a);
        }
  return y;
}

const invFreqOf = (theta: number, Dh: number) => Array.from({ length: Dh / 2 }, (_, j) => 1 / theta ** ((2 * j) / Dh));

interface CeOpts { ignore?: number; mask?: Float64Array; reduction?: 'mean' | 'sum' | 'none' }
function crossEntropyRef(x: Float64Array, tg: ArrayLike<number>, V: number, o: CeOpts = {}): Float64Array {
  const N = tg.length;
  const per = new Float64Array(N);
  let num = 0, den = 0;
  for (let i = 0; i < N; i++) {
    const w = tg[i] === (o.ignore ?? -100) ? 0 : o.mask ? o.mask[i] : 1;
    if (w === 0) continue;
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, x[i * V + v]);
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(x[i * V + v] - m);
    per[i] = w * (m + Math.log(s) - x[i * V + tg[i]]);
    num += per[i];
    den += w;
  }
  const red = o.reduction ?? 'mean';
  if (red === 'none') return per;
  if (red === 'sum') return Float64Array.of(num);
  return Float64Array.of(den === 0 ? 0 : num / den);
}

// ---------------------------------------------------------------- arbitraries

const dimArb = fc.oneof(fc.constant(1), fc.integer({ min: 2, max: 40 }));
const rowsArb = fc.integer({ min: 1, max: 9 });
const seedArb = fc.integer({ min: 1, max: 1 << 30 });
const scaleArb = fc.constantFrom(1, 3, 50);
const RUNS = 6;

async function gpuRun(f: () => T.Tensor): Promise<Float32Array> {
  return T.tidyAsync(async () => (await f().toArray()) as Float32Array);
}

// ---------------------------------------------------------------- softmax

describe('softmax / logSoftmax', () => {
  it('match the reference over random shapes and axes, stable for large values', async () => {
    const shapeArb = fc.array(fc.oneof(fc.constant(1), fc.integer({ min: 2, max: 13 })), { minLength: 1, maxLength: 3 });
    await fc.assert(
      fc.asyncProperty(shapeArb, fc.nat(), fc.boolean(), scaleArb, seedArb, async (shape, ax, log, scale, seed) => {
        const axis = ax % shape.length;
        const x = randArray(prod(shape), seed, -scale, scale);
        const got = await gpuRun(() => {
          const t = T.fromArray(Float32Array.from(x), shape);
          return log ? T.logSoftmax(t, axis) : T.softmax(t, axis - shape.length * (ax & 1));
        });
        const ref = softmaxRef(Float64Array.from(Float32Array.from(x)), shape, axis, log);
        expectClose(got, ref, log ? 2e-5 : 1e-6, 1e-5, `${log ? 'logSoftmax' : 'softmax'} ${JSON.stringify(shape)} axis ${axis}`);
      }),
      { numRuns: 10 },
    );
  });

  it('long rows (wider than a workgroup) and rows of -inf', async () => {
    const x = randArray(2 * 600, 3, -50, 50);
    const got = await gpuRun(() => T.softmax(T.fromArray(Float32Array.from(x), [2, 600])));
    expectClose(got, softmaxRef(Float64Array.from(Float32Array.from(x)), [2, 600], 1, false), 1e-6, 1e-5, 'softmax D=600');
    const masked = Float32Array.of(-Infinity, 0, -Infinity, -Infinity, -Infinity, -Infinity);
    const y = await gpuRun(() => T.softmax(T.fromArray(masked, [2, 3])));
    expect(Array.from(y)).toEqual([0, 1, 0, 0, 0, 0]);
  });

  it('gradients (last axis, middle axis)', async () => {
    for (const [shape, axis, log] of [[[3, 7], 1, false], [[2, 5, 3], 1, true], [[4, 1], 1, false], [[2, 9], -1, true]] as const) {
      const a = axis < 0 ? axis + shape.length : axis;
      await checkOp({
        inputs: [{ data: randArray(prod(shape), 11 + a, -3, 3), shape: [...shape] }],
        gpu: ([x]) => (log ? T.logSoftmax(x, axis) : T.softmax(x, axis)),
        cpu: ([x]) => softmaxRef(x, [...shape], a, log),
      });
    }
  });

  it('rejects a bad axis, naming it and the rank', () => {
    const x = T.fromArray([1, 2], [2]);
    expect(() => T.softmax(x, 1)).toThrow(/axis 1 out of range for rank 1/);
    x.dispose();
  });
});

// ---------------------------------------------------------------- norms

describe('rmsNorm', () => {
  it('matches the reference over random shapes', async () => {
    await fc.assert(
      fc.asyncProperty(rowsArb, dimArb, scaleArb, seedArb, async (rows, D, scale, seed) => {
        const x = randArray(rows * D, seed, -scale, scale);
        const w = randArray(D, seed + 1, -2, 2);
        const got = await gpuRun(() => T.rmsNorm(T.fromArray(Float32Array.from(x), [rows, D]), T.fromArray(Float32Array.from(w), [D])));
        expectClose(got, rmsNormRef(x, w, D, 1e-6), 1e-5, 1e-4, `rmsNorm [${rows}, ${D}]`);
      }),
      { numRuns: RUNS },
    );
  });

  it('gradients for x and weight (random shapes, a long row, many rows in chunks)', async () => {
    const cases: [number[], number][] = [[[2, 3, 5], 1], [[1, 1], 2], [[3, 300], 3], [[70, 3], 4]];
    for (const [rows, D, seed] of fc.sample(fc.tuple(rowsArb, dimArb, seedArb), 3)) cases.push([[rows, D], seed]);
    for (const [shape, seed] of cases) {
      const D = shape[shape.length - 1];
      await checkOp({
        inputs: [
          { data: randArray(prod(shape), seed, -2, 2), shape },
          { data: randArray(D, seed + 7, 0.5, 1.5), shape: [D] },
        ],
        gpu: ([x, w]) => T.rmsNorm(x, w, 1e-5),
        cpu: ([x, w]) => rmsNormRef(x, w, D, 1e-5),
      });
    }
  });

  it('names both shapes when the weight does not match', () => {
    T.tidy(() => {
      expect(() => T.rmsNorm(T.fromArray(new Float32Array(8), [2, 4]), T.fromArray(new Float32Array(5), [5]))).toThrow(
        /weight has shape \[5\], expected \[4\] \(the last dim of x \[2, 4\]\)/,
      );
    });
  });
});

describe('layerNorm', () => {
  it('matches the reference over random shapes (large mean included)', async () => {
    await fc.assert(
      fc.asyncProperty(rowsArb, dimArb, scaleArb, fc.constantFrom(0, 40), seedArb, async (rows, D, scale, shift, seed) => {
        const x = randArray(rows * D, seed, shift - scale, shift + scale);
        const w = randArray(D, seed + 1, -2, 2);
        const b = randArray(D, seed + 2, -1, 1);
        const xs = Float64Array.from(Float32Array.from(x));
        const got = await gpuRun(() =>
          T.layerNorm(T.fromArray(Float32Array.from(x), [rows, D]), T.fromArray(Float32Array.from(w), [D]), T.fromArray(Float32Array.from(b), [D])),
        );
        expectClose(got, layerNormRef(xs, w, b, D, 1e-5), 2e-4, 1e-4, `layerNorm [${rows}, ${D}]`);
      }),
      { numRuns: RUNS },
    );
  });

  it('gradients for x, weight and bias', async () => {
    const cases: [number[], number][] = [[[2, 3, 5], 1], [[1, 1], 2], [[2, 300], 3], [[70, 3], 4], [[5, 17], 5]];
    for (const [shape, seed] of cases) {
      const D = shape[shape.length - 1];
      await checkOp({
        inputs: [
          { data: randArray(prod(shape), seed, -2, 2), shape },
          { data: randArray(D, seed + 7, 0.5, 1.5), shape: [D] },
          { data: randArray(D, seed + 8, -1, 1), shape: [D] },
        ],
        gpu: ([x, w, b]) => T.layerNorm(x, w, b),
        cpu: ([x, w, b]) => layerNormRef(x, w, b, D, 1e-5),
      });
    }
  });

  it('names both shapes when the bias does not match', () => {
    T.tidy(() => {
      const x = T.fromArray(new Float32Array(6), [2, 3]);
      expect(() => T.layerNorm(x, T.fromArray(new Float32Array(3), [3]), T.fromArray(new Float32Array(2), [1, 2]))).toThrow(
        /bias has shape \[1, 2\], expected \[3\] \(the last dim of x \[2, 3\]\)/,
      );
    });
  });
});

// ---------------------------------------------------------------- rope

describe('rope', () => {
  const randPos = (n: number, seed: number, max = 200) => {
    const r = rng(seed);
    return Int32Array.from({ length: n }, () => Math.floor(r() * max));
  };

  it('plain RoPE matches the reference over random shapes', async () => {
    const shapeArb = fc.tuple(fc.integer({ min: 1, max: 2 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 7 }), fc.integer({ min: 1, max: 9 }));
    await fc.assert(
      fc.asyncProperty(shapeArb, fc.constantFrom(1e4, 1e6), seedArb, async ([B, H, T_, half], theta, seed) => {
        const dims = [B, H, T_, 2 * half];
        const x = randArray(prod(dims), seed, -2, 2);
        const pos = randPos(B * T_, seed + 1);
        const got = await gpuRun(() => T.rope(T.fromArray(Float32Array.from(x), dims), T.fromArray(pos, [B, T_], 'i32'), { theta }));
        expectClose(got, ropeRef(x, pos, dims, [half], invFreqOf(theta, 2 * half)), 2e-5, 1e-4, `rope ${JSON.stringify(dims)}`);
      }),
      { numRuns: RUNS },
    );
  });

  it('stays accurate at large positions (angle range reduction)', async () => {
    const dims = [1, 1, 6, 8];
    const x = randArray(prod(dims), 5, -1, 1);
    const pos = Int32Array.of(0, 1, 4095, 10000, 32767, 65000);
    const got = await gpuRun(() => T.rope(T.fromArray(Float32Array.from(x), dims), T.fromArray(pos, [1, 6], 'i32')));
    expectClose(got, ropeRef(x, pos, dims, [4], invFreqOf(1e6, 8)), 2e-5, 1e-4, 'rope large positions');
  });

  it('reads a strided view of x (as after a [B, T, H, Dh] -> [B, H, T, Dh] permute)', async () => {
    const [B, T_, H, Dh] = [2, 3, 2, 6];
    const data = randArray(B * T_ * H * Dh, 9);
    // Reference input in [B, H, T, Dh] order.
    const x = new Float64Array(data.length);
    for (let b = 0; b < B; b++) for (let t = 0; t < T_; t++) for (let h = 0; h < H; h++) for (let d = 0; d < Dh; d++)
      x[((b * H + h) * T_ + t) * Dh + d] = data[((b * T_ + t) * H + h) * Dh + d];
    const pos = randPos(B * T_, 3);
    const got = await gpuRun(() => {
      const base = T.fromArray(Float32Array.from(data), [B, T_, H, Dh]);
      const v = base.view([B, H, T_, Dh], [T_ * H * Dh, Dh, H * Dh, 1]);
      return T.rope(v, T.fromArray(pos, [B, T_], 'i32'));
    });
    expectClose(got, ropeRef(x, pos, [B, H, T_, Dh], [Dh / 2], invFreqOf(1e6, Dh)), 2e-5, 1e-4, 'rope strided');
  });

  it('M-RoPE with equal rows equals plain RoPE; distinct rows match the reference', async () => {
    const [B, H, T_, Dh] = [2, 2, 5, 16];
    const dims = [B, H, T_, Dh];
    const x = randArray(prod(dims), 21);
    const pos = randPos(B * T_, 4);
    const sections = [2, 3, 3];
    const [plain, mrope] = await T.tidyAsync(async () => {
      const xt = T.fromArray(Float32Array.from(x), dims);
      const a = T.rope(xt, T.fromArray(pos, [B, T_], 'i32'));
      const rows3 = new Int32Array(3 * pos.length);
      for (let s = 0; s < 3; s++) rows3.set(pos, s * pos.length);
      const b = T.rope(xt, T.fromArray(rows3, [3, B, T_], 'i32'), { sections });
      return [await a.toArray(), await b.toArray()];
    });
    expect(Array.from(mrope)).toEqual(Array.from(plain));
    const distinct = randPos(3 * B * T_, 8);
    const got = await gpuRun(() => T.rope(T.fromArray(Float32Array.from(x), dims), T.fromArray(distinct, [3, B, T_], 'i32'), { sections }));
    expectClose(got, ropeRef(x, distinct, dims, sections, invFreqOf(1e6, Dh)), 2e-5, 1e-4, 'M-RoPE');
  });

  it('two sections [Dh/4, Dh/4] on patch rows/cols (vision), and explicit invFreq', async () => {
    const [B, H, T_, Dh] = [1, 3, 6, 12];
    const dims = [B, H, T_, Dh];
    const x = randArray(prod(dims), 31);
    // A 2x3 patch grid: row ids, then column ids.
    const pos = Int32Array.of(0, 0, 0, 1, 1, 1, 0, 1, 2, 0, 1, 2);
    const sections = [Dh / 4, Dh / 4];
    const got = await gpuRun(() => T.rope(T.fromArray(Float32Array.from(x), dims), T.fromArray(pos, [2, B, T_], 'i32'), { theta: 1e4, sections }));
    expectClose(got, ropeRef(x, pos, dims, sections, invFreqOf(1e4, Dh)), 2e-5, 1e-4, 'rope 2 sections');
    // HF's vision rotary restarts the frequencies in each section: pass them explicitly.
    const inv = [...invFreqOf(1e4, Dh / 2), ...invFreqOf(1e4, Dh / 2)];
    const got2 = await gpuRun(() => T.rope(T.fromArray(Float32Array.from(x), dims), T.fromArray(pos, [2, B, T_], 'i32'), { invFreq: inv, sections }));
    expectClose(got2, ropeRef(x, pos, dims, sections, inv), 2e-5, 1e-4, 'rope invFreq');
  });

  it('gradient is the rotation by the negative angle (plain and M-RoPE)', async () => {
    for (const [dims, sections] of [[[1, 2, 3, 4], undefined], [[2, 1, 3, 8], [1, 2, 1]], [[1, 1, 4, 12], [3, 3]]] as const) {
      const S = sections?.length ?? 1;
      const [B, , T_] = dims;
      const pos = randPos(S * B * T_, 17);
      await checkOp({
        inputs: [{ data: randArray(prod(dims), 41), shape: [...dims] }],
        gpu: ([x]) => T.rope(x, T.fromArray(pos, sections ? [S, B, T_] : [B, T_], 'i32'), { theta: 100, sections: sections ? [...sections] : undefined }),
        cpu: ([x]) => ropeRef(x, pos, [...dims], sections ? [...sections] : [dims[3] / 2], invFreqOf(100, dims[3])),
      });
    }
  });

  it('errors name the sections and the positions shape', () => {
    T.tidy(() => {
      const x = T.fromArray(new Float32Array(16), [1, 1, 2, 8]);
      const p3 = T.fromArray(new Int32Array(6), [3, 1, 2], 'i32');
      expect(() => T.rope(x, p3, { sections: [1, 1, 1] })).toThrow(/sections \[1, 1, 1\] sum to 3, expected Dh\/2 = 4/);
      expect(() => T.rope(x, T.fromArray(new Int32Array(2), [1, 2], 'i32'), { sections: [2, 2] })).toThrow(/positions has shape \[1, 2\], expected \[2, 1, 2\]/);
      expect(() => T.rope(x, T.fromArray([0, 1], [1, 2]))).toThrow(/rope: positions has dtype f32, expected i32/);
    });
  });
});

// ---------------------------------------------------------------- crossEntropy

describe('crossEntropy', () => {
  const randTargets = (N: number, V: number, seed: number, ignoreFrac = 0) => {
    const r = rng(seed);
    return Int32Array.from({ length: N }, () => (r() < ignoreFrac ? -100 : Math.floor(r() * V)));
  };

  it('matches the reference for every reduction, with ignored rows and masks', async () => {
    await fc.assert(
      fc.asyncProperty(
        rowsArb, dimArb, scaleArb, fc.constantFrom('mean', 'sum', 'none'), fc.boolean(), seedArb,
        async (N, V, scale, reduction, withMask, seed) => {
          const x = randArray(N * V, seed, -scale, scale);
          const tg = randTargets(N, V, seed + 1, 0.3);
          const mask = withMask ? Float64Array.from(randArray(N, seed + 2, 0, 1), (v) => (v < 0.3 ? 0 : v)) : undefined;
          const got = await gpuRun(() =>
            T.crossEntropy(T.fromArray(Float32Array.from(x), [N, V]), T.fromArray(tg, [N], 'i32'), {
              reduction,
              mask: mask && T.fromArray(Float32Array.from(mask), [N]),
            }),
          );
          const ref = crossEntropyRef(Float64Array.from(Float32Array.from(x)), tg, V, { reduction, mask: mask && Float64Array.from(Float32Array.from(mask)) });
          expectClose(got, ref, 2e-5, 1e-5, `crossEntropy [${N}, ${V}] ${reduction}${withMask ? ' masked' : ''}`);
        },
      ),
      { numRuns: 10 },
    );
  });

  it('ignored rows contribute nothing to the loss or the gradient', async () => {
    const [N, V] = [4, 5];
    const x = randArray(N * V, 2, -2, 2);
    const tg = Int32Array.of(1, 7, 3, 0); // ignoreIndex 7 for row 1
    await checkOp({
      inputs: [{ data: x, shape: [N, V] }],
      gpu: ([l]) => T.crossEntropy(l, T.fromArray(tg, [N], 'i32'), { ignoreIndex: 7 }),
      cpu: ([l]) => crossEntropyRef(l, tg, V, { ignore: 7 }),
    });
    const grad = await T.tidyAsync(async () => {
      const l = T.requireGrad(T.fromArray(Float32Array.from(x), [N, V]));
      T.backward(T.crossEntropy(l, T.fromArray(tg, [N], 'i32'), { ignoreIndex: 7 }));
      const g = await l.grad!.toArray();
      l.grad!.dispose();
      return g;
    });
    expect(Array.from(grad.slice(V, 2 * V))).toEqual([0, 0, 0, 0, 0]);
  });

  it('all rows ignored gives loss 0 and zero gradient, no NaN', async () => {
    const [N, V] = [3, 4];
    const { loss, grad } = await T.tidyAsync(async () => {
      const l = T.requireGrad(T.fromArray(Float32Array.from(randArray(N * V, 4)), [N, V]));
      const out = T.crossEntropy(l, T.fromArray([-100, -100, -100], [N], 'i32'));
      const loss = await out.item();
      T.backward(out);
      const grad = await l.grad!.toArray();
      l.grad!.dispose();
      return { loss, grad };
    });
    expect(loss).toBe(0);
    expect(Array.from(grad).every((v) => v === 0)).toBe(true);
  });

  it('gradients for each reduction, with a mask and an ignored row', async () => {
    const [N, V] = [5, 6];
    const x = randArray(N * V, 12, -3, 3);
    const tg = Int32Array.of(0, -100, 5, 2, 3);
    const mask = Float64Array.of(1, 1, 0.25, 0, 2);
    for (const reduction of ['mean', 'sum', 'none'] as const) {
      await checkOp({
        inputs: [{ data: x, shape: [N, V] }],
        gpu: ([l]) => T.crossEntropy(l, T.fromArray(tg, [N], 'i32'), { reduction, mask: T.fromArray(Float32Array.from(mask), [N]) }),
        cpu: ([l]) => crossEntropyRef(l, tg, V, { reduction, mask }),
      });
    }
  });

  it('a long vocabulary row and large logits', async () => {
    const [N, V] = [3, 777];
    const x = randArray(N * V, 13, -50, 50);
    const tg = randTargets(N, V, 14);
    await checkOp({
      inputs: [{ data: x, shape: [N, V] }],
      gpu: ([l]) => T.crossEntropy(l, T.fromArray(tg, [N], 'i32')),
      cpu: ([l]) => crossEntropyRef(l, tg, V),
      atol: 2e-5,
    });
  });

  it('accepts [B, T, V] logits with [B, T] targets', async () => {
    const [B, T_, V] = [2, 3, 4];
    const x = randArray(B * T_ * V, 15, -2, 2);
    const tg = Int32Array.of(0, 3, -100, 1, 2, 2);
    for (const reduction of ['mean', 'none'] as const) {
      await checkOp({
        inputs: [{ data: x, shape: [B, T_, V] }],
        gpu: ([l]) => {
          const y = T.crossEntropy(l, T.fromArray(tg, [B, T_], 'i32'), { reduction });
          if (reduction === 'none') expect(y.shape).toEqual([B, T_]);
          return y;
        },
        cpu: ([l]) => crossEntropyRef(l, tg, V, { reduction }),
      });
    }
  });

  it('errors name the targets dtype and mismatched shapes', () => {
    T.tidy(() => {
      const l = T.fromArray(new Float32Array(6), [2, 3]);
      expect(() => T.crossEntropy(l, T.fromArray([0, 1], [2]))).toThrow(/crossEntropy: targets has dtype f32, expected i32/);
      expect(() => T.crossEntropy(l, T.fromArray([0, 1, 2], [3], 'i32'))).toThrow(/logits \[2, 3\] and targets \[3\]/);
    });
  });
});

// ---------------------------------------------------------------- memory

describe('buffers', () => {
  it('a step through every op frees all its buffers and needs one submit', async () => {
    const step = () =>
      T.tidyAsync(async () => {
        const x = T.requireGrad(T.fromArray(Float32Array.from(randArray(24, 61)), [2, 3, 4]));
        const w = T.requireGrad(T.fromArray([1, 2, 3, 4], [4]));
        const b = T.requireGrad(T.fromArray([1, 2, 3, 4], [4]));
        const r = T.rope(T.reshape(x, [2, 1, 3, 4]), T.fromArray([0, 1, 2, 3, 4, 5], [2, 3], 'i32'));
        const y = T.layerNorm(T.rmsNorm(T.softmax(x, 1), w), w, b);
        const logits = T.add(T.logSoftmax(y), T.reshape(r, [2, 3, 4]));
        const loss = T.crossEntropy(logits, T.fromArray([0, 1, -100, 3, 2, 1], [2, 3], 'i32'), { mask: T.fromArray([1, 1, 1, 0.5, 0, 1], [2, 3]) });
        T.backward(loss);
        const v = await loss.item();
        for (const t of [x, w, b]) t.grad!.dispose();
        return v;
      });
    await step();
    const before = T.stats();
    await step();
    const after = T.stats();
    expect(after.bytesInUse).toBe(before.bytesInUse);
    expect(after.submits - before.submits).toBe(1);
  });
});

// ---------------------------------------------------------------- GPU workgroup variants

// Software adapters run 8 invocations per row; GPUs 32, 64 or 256. Run the GPU variants
// here too (rows shorter and longer than the workgroup).
describe.each([32, 256])('row kernels with %i invocations per row', (wg) => {
  it('softmax, norms and crossEntropy forward and gradients', async () => {
    T.setRowWorkgroupSize(wg);
    try {
      for (const [rows, D] of [[3, 5], [2, 300]]) {
        const shape = [rows, D];
        const x = randArray(rows * D, D, -3, 3);
        const w = randArray(D, D + 1, 0.5, 1.5);
        const b = randArray(D, D + 2, -1, 1);
        await checkOp({ inputs: [{ data: x, shape }], gpu: ([t]) => T.softmax(t), cpu: ([t]) => softmaxRef(t, shape, 1, false) });
        await checkOp({ inputs: [{ data: x, shape }], gpu: ([t]) => T.logSoftmax(t, 0), cpu: ([t]) => softmaxRef(t, shape, 0, true) });
        await checkOp({
          inputs: [{ data: x, shape }, { data: w, shape: [D] }],
          gpu: ([t, u]) => T.rmsNorm(t, u),
          cpu: ([t, u]) => rmsNormRef(t, u, D, 1e-6),
        });
        await checkOp({
          inputs: [{ data: x, shape }, { data: w, shape: [D] }, { data: b, shape: [D] }],
          gpu: ([t, u, v]) => T.layerNorm(t, u, v),
          cpu: ([t, u, v]) => layerNormRef(t, u, v, D, 1e-5),
        });
        const tg = Int32Array.from({ length: rows }, (_, i) => (i === 1 ? -100 : (i * 7) % D));
        await checkOp({
          inputs: [{ data: x, shape }],
          gpu: ([t]) => T.crossEntropy(t, T.fromArray(tg, [rows], 'i32')),
          cpu: ([t]) => crossEntropyRef(t, tg, D),
        });
      }
    } finally {
      T.setRowWorkgroupSize(null);
    }
  });
});

// ---------------------------------------------------------------- f16 storage

describe('f16 storage (when the adapter has shader-f16)', () => {
  it('softmax and rmsNorm compute in f32 on f16 tensors', async () => {
    if (!T.getEngine().ctx.hasF16) return;
    const x = randArray(3 * 10, 51, -4, 4);
    const w = randArray(10, 52, 0.5, 1.5);
    const xh = Float64Array.from(T.f16ToF32(T.f32ToF16(x)));
    const wh = Float64Array.from(T.f16ToF32(T.f32ToF16(w)));
    const [s, r] = await T.tidyAsync(async () => {
      const xt = T.fromArray(x, [3, 10], 'f16');
      const wt = T.fromArray(w, [10], 'f16');
      return [await T.softmax(xt).toArray(), await T.rmsNorm(xt, wt).toArray()];
    });
    expectClose(s, softmaxRef(xh, [3, 10], 1, false), 1e-3, 2e-3, 'softmax f16');
    expectClose(r, rmsNormRef(xh, wh, 10, 1e-6), 1e-3, 2e-3, 'rmsNorm f16');
  });
});
