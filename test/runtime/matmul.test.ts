// matmul and linear against a float64 CPU reference: random M, N, K in 1..70 (1, odd, not a
// multiple of 4 or of any tile), transposes, broadcast batch dims, strided / offset / permuted
// views read in place, every kernel variant forced, split-K on skinny shapes (K slices not
// a multiple of S or the tile, every layout, batch, bias, candidates), gradients by finite
// differences (checkOp), f16 storage, errors.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import * as T from '../../runtime/index.ts';
import { f16BitsToF32, f32ToF16Bits } from '../../runtime/dtype.ts';
import { checkOp, expectClose, prod, randArray } from '../helpers.ts';
import { contiguousStrides } from '../../runtime/tensor.ts';
import { sizeClass } from '../../runtime/pool.ts';

// ---------------------------------------------------------------- CPU reference

const stridesOf = contiguousStrides;

/**
 * Batched matmul in float64 of row-major `a` (stored shape aShape, read transposed when tA)
 * and `b`; batch dims broadcast. Returns the row-major [...batch, M, N] result.
 */
function refMatmul(a: ArrayLike<number>, aShape: number[], b: ArrayLike<number>, bShape: number[], tA = false, tB = false): { out: Float64Array; shape: number[] } {
  const ra = aShape.length, rb = bShape.length;
  const [M, K] = tA ? [aShape[ra - 1], aShape[ra - 2]] : [aShape[ra - 2], aShape[ra - 1]];
  const N = tB ? bShape[rb - 2] : bShape[rb - 1];
  const ab = aShape.slice(0, -2), bb = bShape.slice(0, -2);
  const r = Math.max(ab.length, bb.length);
  const batch = Array.from({ length: r }, (_, i) => Math.max(ab[ab.length - r + i] ?? 1, bb[bb.length - r + i] ?? 1));
  const nb = prod(batch);
  const bst = stridesOf(batch);
  const batchOffset = (shape: number[], i: number, mat: number) => {
    const st = stridesOf(shape);
    let off = 0;
    for (let d = 0; d < shape.length; d++) {
      const j = d + r - shape.length;
      if (shape[d] !== 1) off += (Math.floor(i / bst[j]) % batch[j]) * st[d];
    }
    return off * mat;
  };
  const out = new Float64Array(nb * M * N);
  for (let q = 0; q < nb; q++) {
    const ao = batchOffset(ab, q, M * K), bo = batchOffset(bb, q, K * N);
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = a[ao + (tA ? k * M + m : m * K + k)];
          const bv = b[bo + (tB ? n * K + k : k * N + n)];
          s += av * bv;
        }
        out[(q * M + m) * N + n] = s;
      }
    }
  }
  return { out, shape: [...batch, M, N] };
}

/** Elements of a strided view over `base` in row-major order. */
function viewValues(base: ArrayLike<number>, shape: readonly number[], strides: readonly number[], offset: number): Float64Array {
  const os = stridesOf(shape);
  return Float64Array.from({ length: prod(shape) }, (_, i) => {
    let off = offset;
    for (let d = 0; d < shape.length; d++) off += (Math.floor(i / os[d]) % shape[d]) * strides[d];
    return base[off];
  });
}

/** Random f32-representable data. */
const data = (n: number, seed: number) => Float64Array.from(randArray(n, seed), Math.fround);
/** f32 accumulation over K terms of size <= 1: error grows like sqrt(K) (random rounding). */
const atolFor = (K: number) => 1e-5 * Math.sqrt(Math.max(K, 1)) + 1e-6;

/** Runs matmul on fresh tensors of the stored shapes and compares with the reference. */
async function checkMatmul(aShape: number[], bShape: number[], opts: T.MatmulOptions, seed: number): Promise<void> {
  const a = data(prod(aShape), seed), b = data(prod(bShape), seed + 1);
  const ref = refMatmul(a, aShape, b, bShape, opts.transposeA, opts.transposeB);
  const K = opts.transposeA ? aShape[aShape.length - 2] : aShape[aShape.length - 1];
  await T.tidyAsync(async () => {
    const y = T.matmul(T.fromArray(Float32Array.from(a), aShape), T.fromArray(Float32Array.from(b), bShape), opts);
    expect(y.shape).toEqual(ref.shape);
    expectClose(await y.toArray(), ref.out, atolFor(K), 1e-5, `matmul ${JSON.stringify({ aShape, bShape, ...opts })}`);
  });
}

const dim = fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 70 }));
/** A multiple of 4 that is not a multiple of the 32/64-wide tiles most of the time. */
const dim4 = fc.integer({ min: 1, max: 17 }).map((d) => 4 * d);
/** Stored shape of an operand: rows x cols logical, swapped when transposed. */
const stored = (rows: number, cols: number, t: boolean) => (t ? [cols, rows] : [rows, cols]);

// Every kernel variant, forced: the vec4 ones need aligned layouts, the others take any.
// The subgroup kernels (sg-*, sgs-*) need subgroups of >= 8 lanes (lavapipe on AVX2 has them).
const sgOk = T.getEngine().ctx.hasSubgroups && ((T.getEngine().ctx.adapter.info as unknown as { subgroupMinSize?: number }).subgroupMinSize ?? 0) >= 8;
const shaderOf = (k: T.MatmulKernel) => (k === 'auto' ? '' : T.MATMUL_KERNELS[k].shader);
const allKernels = (Object.keys(T.MATMUL_KERNELS) as T.MatmulKernel[]).filter((k) => sgOk || !shaderOf(k).startsWith('matmul_sg'));
const vec4Kernels = allKernels.filter((k) => ['matmul_sg', 'matmul_vec4', 'matmul_tiled', 'matmul_tiled_db'].includes(shaderOf(k)));
/** The split-K variants (a vec4 or sg kernel over K slices, then matmul_splitk_reduce). */
const splitKernels = allKernels.filter((k) => k.startsWith('splitk')) as T.MatmulKernelName[];
const generalKernels: T.MatmulKernel[] = ['auto', ...allKernels.filter((k) => !vec4Kernels.includes(k))];

// ---------------------------------------------------------------- forward

describe('matmul forward', () => {
  it('matches the reference for random M, N, K and transposes (auto and the general kernels)', async () => {
    for (const kernel of generalKernels) {
      await fc.assert(
        fc.asyncProperty(dim, dim, dim, fc.boolean(), fc.boolean(), fc.nat(1000), async (M, N, K, tA, tB, seed) => {
          await checkMatmul(stored(M, K, tA), stored(K, N, tB), { transposeA: tA, transposeB: tB, kernel }, seed);
        }),
        { numRuns: 10 },
      );
    }
  });

  it('runs every vec4 variant on every operand layout, with edge tiles and a K tail', async () => {
    // A is K-major unless transposed (then M-major); B is N-major unless transposed (then
    // K-major). The vec4 axis of each layout must be a multiple of 4; the others are free.
    // With A M-major and B N-major, K is free too (the kernel's scalar-k tail).
    for (const kernel of vec4Kernels) {
      for (const [tA, tB] of [[false, false], [false, true], [true, false], [true, true]]) {
        await fc.assert(
          fc.asyncProperty(dim, dim4, dim, dim4, dim, dim4, fc.nat(1000), async (m, m4, n, n4, k, k4, seed) => {
            const M = tA ? m4 : m;
            const N = tB ? n : n4;
            const K = !tA || tB ? k4 : k;
            await checkMatmul(stored(M, K, tA), stored(K, N, tB), { transposeA: tA, transposeB: tB, kernel }, seed);
          }),
          { numRuns: 4 },
        );
      }
    }
  });

  it('runs the workgroup-memory kernels across several blocks and K panels', async () => {
    // Each kernel's own block (BM x BN, up to 128 x 256) and panel depth (8 or 16): M and N
    // span two full blocks and a partial third, K several panels and a partial last one, in
    // every layout; then two batches through different blocks of one dispatch. The panel
    // counts (K 44, 37, 20 over BK 8 or 16: 6, 5, 3 or 3, 3, 2) are odd and even for each
    // BK, so the double-buffered kernels finish on either buffer.
    for (const kernel of vec4Kernels.filter((k) => k.startsWith('tile'))) {
      const v = T.MATMUL_KERNELS[kernel as keyof typeof T.MATMUL_KERNELS];
      const [BM, BN] = [v.TM * v.WGY, v.TN * v.WGX];
      for (const [tA, tB] of [[false, false], [false, true], [true, false], [true, true]]) {
        const [M, N, K] = [2 * BM + (tA ? 8 : 5), 2 * BN + (tB ? 3 : 12), !tA || tB ? 44 : 37];
        await checkMatmul(stored(M, K, tA), stored(K, N, tB), { transposeA: tA, transposeB: tB, kernel }, M + N + K);
      }
      await checkMatmul([2, BM + 4, 20], [2, 20, BN + 8], { kernel }, BM + BN);
    }
  });

  it('broadcasts batch dims numpy-style', async () => {
    // [a stored shape, b stored shape, transposeA, transposeB, the vec4 kernels can read it]
    const cases: [number[], number[], boolean, boolean, boolean][] = [
      [[2, 3, 5, 8], [8, 6], false, false, false], // [B, H, M, K] x [K, N] (folds the batch into M)
      [[2, 3, 5, 8], [8, 12], false, false, true],
      [[1, 3, 7, 4], [2, 1, 4, 9], false, false, false], // [1, H, ..] x [B, 1, ..]
      [[1, 3, 4, 7], [2, 1, 9, 4], true, true, false],
      [[1, 3, 4, 12], [2, 1, 8, 4], true, true, true],
      [[5, 12], [3, 12, 8], false, false, true], // unbatched a, batched b
      [[2, 3, 6, 4], [3, 8, 4], false, true, true], // trailing batch dims only
      [[2, 3, 8, 4], [3, 4, 8], false, false, true],
      [[3, 1, 5, 4], [1, 2, 4, 8], false, false, true], // broadcast batch strides
      [[2, 1, 3, 5], [1, 1, 5, 3], false, false, false], // size-1 batch dims in b: still foldable
    ];
    let seed = 10;
    for (const [as, bs, tA, tB, vec4] of cases) {
      for (const kernel of vec4 ? [...generalKernels, ...vec4Kernels] : generalKernels) {
        await checkMatmul(as, bs, { transposeA: tA, transposeB: tB, kernel }, seed++);
      }
    }
  });

  it('splits a batch larger than the per-dimension workgroup limit', async () => {
    const B = T.getEngine().ctx.limits.maxComputeWorkgroupsPerDimension + 3;
    await checkMatmul([B, 1, 2], [B, 2, 1], {}, 3);
  });

  it('handles empty dims: K = 0 gives zeros, M = 0 or a 0 batch gives an empty result', async () => {
    await T.tidyAsync(async () => {
      const y = T.matmul(T.fromArray([], [3, 0]), T.fromArray([], [0, 5]));
      expect(y.shape).toEqual([3, 5]);
      expect(Array.from(await y.toArray())).toEqual(new Array(15).fill(0));
      expect(T.matmul(T.fromArray([], [0, 4]), T.fromArray(new Float32Array(20), [4, 5])).shape).toEqual([0, 5]);
      expect(T.matmul(T.fromArray([], [0, 2, 4]), T.fromArray(new Float32Array(20), [4, 5])).shape).toEqual([0, 2, 5]);
    });
  });
});

// ---------------------------------------------------------------- split-K

describe('matmul split-K', () => {
  it('has split-K variants of the vec4 (and, with subgroups, sg) kernels', () => {
    expect(splitKernels.filter((k) => k.includes('-vec4-')).length).toBeGreaterThanOrEqual(3);
    if (sgOk) expect(splitKernels.some((k) => k.includes('-sg-'))).toBe(true);
  });

  it('cuts K into slices that are multiples of 4, at most S of them, covering K exactly', () => {
    for (const K of [0, 1, 4, 5, 37, 256, 300, 1021, 4100]) {
      for (const S of [1, 2, 4, 8, 16, 32]) {
        const [n, len] = T.splitK(K, S);
        expect(n).toBeGreaterThanOrEqual(1);
        expect(n).toBeLessThanOrEqual(Math.max(S, 1));
        if (n > 1) {
          expect(len % 4).toBe(0);
          expect((n - 1) * len).toBeLessThan(K); // no empty slice
        }
        expect(n * len).toBeGreaterThanOrEqual(K);
      }
    }
    expect(T.splitK(300, 8)).toEqual([8, 40]);
    expect(T.splitK(260, 16)).toEqual([13, 20]);
  });

  // Skinny products: small M and N, K in the hundreds and not a multiple of 4 * S (nor of
  // the 4-row / 4-column tiles for M and N), in every layout the kernels can read.
  const skinny = fc.record({
    m: fc.integer({ min: 1, max: 24 }),
    n: fc.integer({ min: 1, max: 40 }),
    k: fc.integer({ min: 50, max: 130 }),
    tA: fc.boolean(),
    tB: fc.boolean(),
    seed: fc.nat(1000),
  });

  it('matches the reference on skinny shapes in every layout, K not a multiple of S or of the tile', async () => {
    for (const kernel of splitKernels) {
      await fc.assert(
        fc.asyncProperty(skinny, async ({ m, n, k, tA, tB, seed }) => {
          // The vec4 axes must be multiples of 4 (A: K or M, B: K or N); a free K is odd.
          const M = tA ? 4 * m : m;
          const N = tB ? n : 4 * n;
          const K = !tA || tB ? 4 * k + 4 : 4 * k + 3;
          await checkMatmul(stored(M, K, tA), stored(K, N, tB), { transposeA: tA, transposeB: tB, kernel }, seed);
          expect(T.lastMatmulChoice()).toMatchObject({ kernel, source: 'forced' });
        }),
        { numRuns: 4 },
      );
    }
  });

  it('runs a batch (broadcast too) and a fused bias, with the partials back in the pool', async () => {
    for (const kernel of splitKernels) {
      // [batch 2, 3 broadcast against 1] x a shared B, and a batched B with a broadcast A.
      await checkMatmul([2, 3, 12, 308], [308, 20], { kernel }, 7);
      await checkMatmul([1, 8, 300], [3, 300, 16], { kernel }, 8);
      await checkMatmul([2, 1, 300, 8], [1, 3, 300, 12], { transposeA: true, kernel }, 9);
      // linear: x [5, 2, K] @ w^T + bias (strided: every other element), out odd.
      const [rows, inF, out] = [10, 292, 13];
      const x = data(rows * inF, 1), w = data(out * inF, 2), b = data(2 * out, 3);
      const ref = Float64Array.from({ length: rows * out }, (_, i) => {
        const [r, o] = [Math.floor(i / out), i % out];
        let acc = b[2 * o];
        for (let q = 0; q < inF; q++) acc += x[r * inF + q] * w[o * inF + q];
        return acc;
      });
      await T.tidyAsync(async () => {
        const xt = T.fromArray(Float32Array.from(x), [5, 2, inF]);
        const wt = T.fromArray(Float32Array.from(w), [out, inF]);
        const bt = T.fromArray(Float32Array.from(b)).view([out], [2], 0);
        await T.getEngine().sync();
        const before = T.stats();
        const y = T.linear(xt, wt, bt, { kernel });
        const after = T.stats();
        // Two passes (slices, then their sum); the partials' buffer went back to the pool.
        expect(after.dispatches - before.dispatches).toBe(2);
        expect(after.bytesInUse - before.bytesInUse).toBe(sizeClass(4 * rows * out));
        expectClose(await y.toArray(), ref, atolFor(inF), 1e-5, `linear split-K (${kernel})`);
        y.dispose();
        expect(T.stats().bytesInUse).toBe(before.bytesInUse);
      });
    }
  });

  it('refuses layouts its base kernel cannot read, and the tuner offers it only for skinny classes', () => {
    T.tidy(() => {
      const a = T.fromArray(new Float32Array(8 * 301), [8, 301]);
      const b = T.fromArray(new Float32Array(301 * 8), [301, 8]);
      for (const kernel of splitKernels) expect(() => T.matmul(a, b, { kernel })).toThrow(new RegExp(`${kernel} cannot run this layout`));
      const cands = (M: number, N: number, K: number) => T.matmulCandidates(T.matmulClassOf(T.zeros([M, K]), T.zeros([K, N]))!);
      // Skinny (dW-like and decode-like): every split-K variant with >= 64 of K per slice.
      for (const [M, N, K] of [[16, 64, 2048], [64, 512, 1024], [1, 256, 4096]]) {
        const c = cands(M, N, K);
        for (const k of splitKernels) expect(c.includes(k)).toBe(K >= 64 * (T.MATMUL_KERNELS[k] as { S?: number }).S!);
      }
      // Large M * N, short K, or an unaligned layout: none.
      for (const [M, N, K] of [[256, 512, 2048], [16, 64, 128], [16, 64, 1023]]) expect(cands(M, N, K).filter((k) => k.startsWith('splitk'))).toEqual([]);
    });
  });
});

// ---------------------------------------------------------------- views

describe('matmul on views', () => {
  /** Checks matmul of two views over random base buffers. */
  async function checkViews(
    a: { shape: number[]; strides: number[]; offset: number },
    b: { shape: number[]; strides: number[]; offset: number },
    opts: T.MatmulOptions,
    seed: number,
  ): Promise<void> {
    const span = (v: typeof a) => v.offset + v.shape.reduce((s, d, i) => s + (d - 1) * v.strides[i], 0) + 1;
    const ab = data(span(a), seed), bb = data(span(b), seed + 1);
    const ref = refMatmul(viewValues(ab, a.shape, a.strides, a.offset), a.shape, viewValues(bb, b.shape, b.strides, b.offset), b.shape, opts.transposeA, opts.transposeB);
    const K = opts.transposeA ? a.shape[a.shape.length - 2] : a.shape[a.shape.length - 1];
    await T.tidyAsync(async () => {
      const at = T.fromArray(Float32Array.from(ab)).view(a.shape, a.strides, a.offset);
      const bt = T.fromArray(Float32Array.from(bb)).view(b.shape, b.strides, b.offset);
      const y = T.matmul(at, bt, opts);
      expectClose(await y.toArray(), ref.out, atolFor(K), 1e-5, `views ${JSON.stringify({ a, b, ...opts })}`);
    });
  }

  it('reads transposed views in place (no transpose flag), vec4 and scalar', async () => {
    await fc.assert(
      fc.asyncProperty(dim, dim, dim, fc.constantFrom(...generalKernels), fc.nat(1000), async (M, N, K, kernel, seed) => {
        // a: a [K, M] buffer seen as [M, K]; b: a [N, K] buffer seen as [K, N].
        await checkViews({ shape: [M, K], strides: [1, M], offset: 0 }, { shape: [K, N], strides: [1, K], offset: 0 }, { kernel }, seed);
      }),
      { numRuns: 8 },
    );
    // The same layouts through the vec4 kernels (M-major A, K-major B).
    for (const kernel of vec4Kernels) await checkViews({ shape: [12, 8], strides: [1, 12], offset: 0 }, { shape: [8, 20], strides: [1, 8], offset: 0 }, { kernel }, 5);
  });

  it('handles offsets, padded row strides, permuted batch dims and views needing a copy', async () => {
    // kernel 'vec4' marks layouts the vec4 kernels can read (all of them are run).
    const cases: [Parameters<typeof checkViews>[0], Parameters<typeof checkViews>[1], { transposeA?: boolean; transposeB?: boolean; kernel?: 'vec4' }][] = [
      // offset 1 breaks vec4 alignment (scalar); offset 4 keeps it (vec4)
      [{ shape: [5, 8], strides: [8, 1], offset: 1 }, { shape: [8, 4], strides: [4, 1], offset: 0 }, {}],
      [{ shape: [5, 8], strides: [8, 1], offset: 4 }, { shape: [8, 4], strides: [4, 1], offset: 4 }, { kernel: 'vec4' }],
      // rows padded to 12 (a slice of a wider matrix)
      [{ shape: [6, 8], strides: [12, 1], offset: 0 }, { shape: [8, 7], strides: [9, 1], offset: 2 }, {}],
      // [H, B, M, K] storage seen as [B, H, M, K] (a permute of the batch dims)
      [{ shape: [2, 3, 4, 8], strides: [32, 64, 8, 1], offset: 0 }, { shape: [2, 3, 8, 4], strides: [96, 32, 4, 1], offset: 0 }, {}],
      // no unit stride in the last two dims (every other element): copied first
      [{ shape: [5, 6], strides: [12, 2], offset: 0 }, { shape: [6, 3], strides: [1, 12], offset: 0 }, {}],
      [{ shape: [2, 4, 8], strides: [64, 16, 2], offset: 0 }, { shape: [8, 8], strides: [16, 2], offset: 1 }, { transposeB: true }],
      // a transposed view passed with transposeA: reads the original row-major layout
      [{ shape: [7, 5], strides: [1, 7], offset: 0 }, { shape: [7, 3], strides: [3, 1], offset: 0 }, { transposeA: true }],
      // expanded (stride 0) batch dim
      [{ shape: [3, 4, 8], strides: [0, 8, 1], offset: 0 }, { shape: [3, 8, 5], strides: [40, 5, 1], offset: 0 }, {}],
    ];
    let seed = 40;
    for (const [a, b, opts] of cases) {
      const kernels = opts.kernel ? vec4Kernels : generalKernels;
      for (const kernel of kernels) await checkViews(a, b, { ...opts, kernel }, seed++);
    }
  });
});

// ---------------------------------------------------------------- gradients

describe('matmul backward', () => {
  const cases: [number[], number[], boolean, boolean][] = [
    [[3, 5], [5, 4], false, false],
    [[5, 3], [5, 4], true, false],
    [[3, 5], [4, 5], false, true],
    [[5, 3], [4, 5], true, true],
    [[2, 3, 4, 8], [8, 4], false, false], // dB through the folded batch (vec4 sizes)
    [[2, 3, 4, 5], [3, 5], false, true], // linear-like: dB folded, transposed
    [[2, 5, 3], [5, 4], true, false], // transposed a with shared b: dB through sumTo
    [[1, 2, 3, 4], [3, 1, 4, 2], false, false], // both broadcast
    [[3, 4], [2, 4, 5], false, false], // dA summed over b's batch
  ];
  for (const [as, bs, tA, tB] of cases) {
    it(`gradients of ${JSON.stringify(as)}${tA ? '^T' : ''} @ ${JSON.stringify(bs)}${tB ? '^T' : ''}`, async () => {
      await checkOp({
        inputs: [
          { data: data(prod(as), 1), shape: as },
          { data: data(prod(bs), 2), shape: bs },
        ],
        gpu: ([a, b]) => T.matmul(a, b, { transposeA: tA, transposeB: tB }),
        cpu: ([a, b]) => refMatmul(a, as, b, bs, tA, tB).out,
      });
    });
  }

  it('gives gradients only to the operand that requires them', async () => {
    await T.tidyAsync(async () => {
      const a = T.requireGrad(T.fromArray(Float32Array.from(data(12, 1)), [3, 4]));
      const b = T.fromArray(Float32Array.from(data(8, 2)), [4, 2]);
      T.backward(T.sum(T.matmul(a, b)));
      expect(a.grad?.shape).toEqual([3, 4]);
      expect(b.grad).toBeNull();
      // d sum(a @ b) / d a[m, k] = sum_n b[k, n]
      const bv = data(8, 2);
      expectClose(await a.grad!.toArray(), Float64Array.from({ length: 12 }, (_, i) => bv[(i % 4) * 2] + bv[(i % 4) * 2 + 1]), 1e-6, 1e-6);
      a.grad!.dispose();
    });
  });
});

// ---------------------------------------------------------------- linear

describe('linear', () => {
  /** x [..., in] @ w^T + bias in float64. */
  function refLinear(x: Float64Array, xShape: number[], w: Float64Array, out: number, inF: number, bias?: Float64Array): Float64Array {
    const rows = prod(xShape) / inF;
    return Float64Array.from({ length: rows * out }, (_, i) => {
      const r = Math.floor(i / out), o = i % out;
      let s = bias ? bias[o] : 0;
      for (let k = 0; k < inF; k++) s += x[r * inF + k] * w[o * inF + k];
      return s;
    });
  }

  it('matches x @ w^T + b for random sizes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 3 }), dim, dim, dim, fc.boolean(), fc.nat(1000), async (B, rows, inF, out, withBias, seed) => {
        const xs = [B, rows, inF];
        const x = data(prod(xs), seed), w = data(out * inF, seed + 1), b = data(out, seed + 2);
        const ref = refLinear(x, xs, w, out, inF, withBias ? b : undefined);
        await T.tidyAsync(async () => {
          const y = T.linear(T.fromArray(Float32Array.from(x), xs), T.fromArray(Float32Array.from(w), [out, inF]), withBias ? T.fromArray(Float32Array.from(b), [out]) : undefined);
          expect(y.shape).toEqual([B, rows, out]);
          expectClose(await y.toArray(), ref, atolFor(inF), 1e-5, 'linear');
        });
      }),
      { numRuns: 12 },
    );
  });

  it('fuses the bias in every kernel variant', async () => {
    // in = 8 keeps every variant able to read x and weight (K-major, multiple of 4); out
    // 12 and 13 (weight is K-major, so any out runs on the vec4 kernels too).
    for (const [rows, inF, out] of [[37, 8, 12], [37, 8, 13]]) {
      const x = data(rows * inF, 1), w = data(out * inF, 2), b = data(out, 3);
      const ref = refLinear(x, [rows, inF], w, out, inF, b);
      await T.tidyAsync(async () => {
        const xt = T.fromArray(Float32Array.from(x), [rows, inF]), wt = T.fromArray(Float32Array.from(w), [out, inF]);
        // A strided bias (every other element of a longer vector) checks the bias stride too.
        const bt = T.fromArray(Float32Array.from({ length: 2 * out }, (_, i) => (i % 2 ? 0 : b[i / 2]))).view([out], [2], 0);
        for (const kernel of allKernels) {
          expectClose(await T.linear(xt, wt, bt, { kernel }).toArray(), ref, atolFor(inF), 1e-5, `linear bias (${kernel}, out ${out})`);
        }
      });
    }
  });

  const gradCases: [number[], number, boolean][] = [
    [[2, 3, 5], 4, true],
    [[3, 8], 4, true], // vec4 kernel with the fused bias
    [[2, 4], 3, false],
    [[5], 3, true], // a vector input
  ];
  for (const [xs, out, withBias] of gradCases) {
    it(`gradients of linear x ${JSON.stringify(xs)} -> ${out}${withBias ? ' with bias' : ''}`, async () => {
      const inF = xs[xs.length - 1];
      const inputs = [
        { data: data(prod(xs), 3), shape: xs },
        { data: data(out * inF, 4), shape: [out, inF] },
      ];
      if (withBias) inputs.push({ data: data(out, 5), shape: [out] });
      await checkOp({
        inputs,
        gpu: ([x, w, b]) => T.linear(x, w, b),
        cpu: ([x, w, b]) => refLinear(x, xs, w, out, inF, b),
      });
    });
  }
});

// ---------------------------------------------------------------- f16 and errors

describe('matmul dtypes and errors', () => {
  it('multiplies f16 operands with f32 accumulation when the adapter has shader-f16', async () => {
    if (!T.getEngine().ctx.hasF16) return;
    const f16 = (v: number) => f16BitsToF32(f32ToF16Bits(v));
    const [M, K, N] = [9, 37, 6];
    const a = Float64Array.from(data(M * K, 1), f16), b = Float64Array.from(data(K * N, 2), f16);
    const ref = refMatmul(a, [M, K], b, [K, N]).out;
    await T.tidyAsync(async () => {
      const af = T.fromArray(Float32Array.from(a), [M, K], 'f16'), bf = T.fromArray(Float32Array.from(b), [K, N], 'f16');
      for (const kernel of generalKernels) {
        const y = T.matmul(af, bf, { kernel });
        expect(y.dtype).toBe('f16');
        // f32 accumulation, one f16 rounding of the result (relative 2^-11).
        expectClose(await y.toArray(), ref, atolFor(K), 2 ** -11, `f16 matmul (${kernel})`);
      }
      for (const kernel of vec4Kernels) expect(() => T.matmul(af, bf, { kernel })).toThrow(/dtype f16/);
      const w = T.linear(T.fromArray(Float32Array.from(a), [M, K], 'f16'), T.fromArray(Float32Array.from(b), [N, K], 'f16'), T.fromArray([1, 2, 3, 4, 5, 6], [6], 'f16'));
      const refL = refMatmul(a, [M, K], b, [N, K], false, true).out.map((v, i) => v + (i % N) + 1);
      expectClose(await w.toArray(), refL, atolFor(K), 2 ** -11, 'f16 linear');
    });
  });

  it("refuses a variant that exceeds the adapter's workgroup limits, and leaves it out of the tuner's candidates", async () => {
    // Smaller limits than lavapipe's, seen through a proxy for the duration of the test:
    // 16 KiB of workgroup memory and 128 invocations per workgroup.
    const ctx = T.getEngine().ctx;
    const real = ctx.limits;
    const over: Record<string, number> = { maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 128, maxComputeWorkgroupSizeX: 128 };
    ctx.limits = new Proxy(real, { get: (t, k) => (typeof k === 'string' && k in over ? over[k] : Reflect.get(t, k)) });
    try {
      const need = (name: keyof typeof T.MATMUL_KERNELS) => {
        const v = T.MATMUL_KERNELS[name];
        const dbl = v.shader === 'matmul_tiled_db' ? 2 : 1;
        return { bytes: dbl * 4 * ('BK' in v ? v.BK : 0) * (v.TM * v.WGY + v.TN * v.WGX), inv: v.WGX * v.WGY };
      };
      const cls = T.matmulClassOf(T.fromArray(new Float32Array(64), [8, 8]), T.fromArray(new Float32Array(64), [8, 8]))!;
      const cands = T.matmulCandidates(cls);
      const a = T.fromArray(new Float32Array(64), [8, 8]);
      for (const name of Object.keys(T.MATMUL_KERNELS) as (keyof typeof T.MATMUL_KERNELS)[]) {
        if (!name.startsWith('tile')) continue;
        const { bytes, inv } = need(name);
        if (bytes > 16384) expect(() => T.matmul(a, a, { kernel: name })).toThrow(new RegExp(`${name} needs ${bytes} bytes of workgroup memory, the adapter allows 16384`));
        else if (inv > 128) expect(() => T.matmul(a, a, { kernel: name })).toThrow(/needs workgroups of .* the adapter allows/);
        else expect((await T.matmul(a, a, { kernel: name }).toArray()).length).toBe(64);
        expect(cands.includes(name)).toBe(bytes <= 16384 && inv <= 128);
      }
      // Some variants of each kind: refused for memory, for invocations, and run.
      expect(need('tiledb-128x128-8x8-k16').bytes).toBeGreaterThan(16384);
      expect(need('tiledb-64x64-4x4-k16')).toEqual({ bytes: 16384, inv: 256 });
      expect(need('tiledb-128x128-8x16-k8')).toEqual({ bytes: 16384, inv: 128 });
      a.dispose();
    } finally {
      ctx.limits = real;
    }
  });

  it('names both shapes, the op and the dtype in errors', () => {
    T.tidy(() => {
      const a = T.fromArray(new Float32Array(6), [2, 3]);
      const b = T.fromArray(new Float32Array(8), [4, 2]);
      expect(() => T.matmul(a, b)).toThrow(/inner dimensions differ \(3 vs 4\) for \[2, 3\] and \[4, 2\]/);
      expect(() => T.matmul(a, b, { transposeB: true })).toThrow(/\[2, 3\] and \[4, 2\]\^T/);
      expect(() => T.matmul(T.fromArray(new Float32Array(3), [3]), b)).toThrow(/at least 2 dims/);
      expect(() => T.matmul(T.fromArray([1, 2, 3, 4, 5, 6], [2, 3], 'i32'), b)).toThrow(/matmul: a has dtype i32/);
      expect(() => T.matmul(T.fromArray(new Float32Array(24), [2, 2, 2, 3]), T.fromArray(new Float32Array(18), [3, 3, 2]))).toThrow(/batch dims of \[2, 2, 2, 3\] and \[3, 3, 2\]/);
      expect(() => T.linear(a, T.fromArray(new Float32Array(8), [2, 4]))).toThrow(/linear: x \[2, 3\].*weight \[2, 4\]/);
      expect(() => T.linear(a, T.fromArray(new Float32Array(6), [2, 3]), T.fromArray([1, 2, 3], [3]))).toThrow(/bias has shape \[3\], expected \[2\]/);
      expect(() => T.matmul(T.fromArray(new Float32Array(12), [3, 4]), T.fromArray(new Float32Array(12), [4, 3]), { kernel: 'vec4-4x8' })).toThrow(/cannot run this layout/);
    });
  });
});
