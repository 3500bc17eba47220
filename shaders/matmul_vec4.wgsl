// Batched matmul, register-tiled, vec4 loads straight from storage (no workgroup memory,
// no barriers: lavapipe runs a workgroup's invocations as SIMD lanes and barriers are
// costly there; on a discrete GPU the L1/L2 caches serve the reuse).
//   C[b, m, n] = sum_k A[b, m, k] * B[b, k, n] (+ bias[n])
// A and B are read through strides, so transposed operands and permuted views are read in
// place. Each operand has one unit-stride axis, chosen by define:
//   A_KMAJOR true: A's unit stride is along K (A[m, k..k+3] is one vec4), else along M.
//   B_KMAJOR true: B's unit stride is along K (B[k..k+3, n] is one vec4), else along N.
// Requirements (checked by the host): every vec4 axis length is a multiple of 4, the
// offsets and every other stride are multiples of 4 (so element index / 4 is the vec4
// index). K need not be a multiple of 4 when neither operand is K-major (scalar-k tail).
// Bindings: 0 params, 1 A (vec4), 2 B (vec4), 3 bias (f32; any buffer when unused),
//   4 C (f32, contiguous [batch, M, N]).
// Params (u32 words): 0 M, 1 N, 2 K, 3 batch rank, 4 A offset, 5 B offset, 6 flags
//   (bit0 add bias), 7 batch base (added to workgroup z: large batches split dispatches),
//   8 A stride along m, 9 A stride along k, 10 B stride along k, 11 B stride along n,
//   12 bias offset, 13 bias stride, 14 K slice length (a multiple of 4; K when unsplit),
//   15 batch count Z, 16..21 batch shape, 22..27 A batch strides, 28..33 B batch strides
//   (0 on broadcast dims).
// Split-K (runtime/ops/matmul.ts, splitk-* variants): workgroup z + base = g = s * Z + b
// runs batch b over K slice s, k in [s * w14, min(K, (s + 1) * w14)), and stores to
// C[g, m, n] (C is then the f32 partials [S, Z, M, N], bias off; matmul_splitk_reduce.wgsl
// sums them). Unsplit calls pass w14 = K, so g = b and C is [Z, M, N].
// Workgroup: WGX x WGY invocations; each computes a TM x TN block of C (TM, TN multiples
// of 4) at rows m0 = (wg.y * WGY + lid.y) * TM, columns n0 = (wg.x * WGX + lid.x) * TN.
// Rows/columns past the edge are clamped for loads and for stores (a clamped result equals
// the value at the clamped position, so duplicate writes agree).
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 9>;
@group(0) @binding(1) var<storage, read> A: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> B: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> BIAS: array<f32>;
@group(0) @binding(4) var<storage, read_write> C: array<f32>;

const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const TM4: u32 = TM / 4u;
const TN4: u32 = TN / 4u;
const WGX: u32 = {{WGX}}u;
const WGY: u32 = {{WGY}}u;
const A_KMAJOR: bool = {{A_KMAJOR}};
const B_KMAJOR: bool = {{B_KMAJOR}};

//#include "lib/params.wgsl"
//#include "lib/batch.wgsl"

@compute @workgroup_size(WGX, WGY, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let M = pu(0u);
  let N = pu(1u);
  let K = pu(2u);
  // With WGY = 1 the rows depend on the workgroup only: lavapipe then loads A once per
  // SIMD vector (uniform address) instead of once per lane.
  let m0 = (wg.y * WGY + select(lid.y, 0u, WGY == 1u)) * TM;
  let n0 = (wg.x * WGX + lid.x) * TN;
  // No early exit for lanes past the edge: they compute clamped duplicates (see the stores).

  // Split-K slice and batch (see the header); the slice's K range.
  let g = wg.z + pu(7u);
  let batch = g % pu(15u);
  let kBegin = (g / pu(15u)) * pu(14u);
  let kEnd = min(K, kBegin + pu(14u));
  // Batch offsets: decompose the batch index over the (collapsed) batch shape.
  let off = batchOffsets(batch);
  let aOff = off.a;
  let bOff = off.b;
  let sAm = pu(8u);
  let sAk = pu(9u);
  let sBk = pu(10u);
  let sBn = pu(11u);

  // Per-row (A) and per-column (B) base indices, in vec4 units; edge rows/columns are
  // clamped to the last valid one (their results are never stored).
  var aBase: array<u32, TM>;
  if (A_KMAJOR) {
    for (var i = 0u; i < TM; i++) { aBase[i] = (aOff + min(m0 + i, M - 1u) * sAm) / 4u; }
  } else {
    // M-major: groups of 4 rows; M is a multiple of 4, so a group is all in or all out.
    for (var g = 0u; g < TM4; g++) { aBase[g] = (aOff + min(m0 + 4u * g, M - 4u)) / 4u; }
  }
  var bBase: array<u32, TN>;
  if (B_KMAJOR) {
    for (var j = 0u; j < TN; j++) { bBase[j] = (bOff + min(n0 + j, N - 1u) * sBn) / 4u; }
  } else {
    for (var g = 0u; g < TN4; g++) { bBase[g] = (bOff + min(n0 + 4u * g, N - 4u)) / 4u; }
  }
  let sAk4 = sAk / 4u;
  let sBk4 = sBk / 4u;

  var acc: array<array<vec4<f32>, TN4>, TM>;
  // af[i]: A[m0 + i, k..k+3]; bf[q][g]: B[k + q, n0 + 4g..n0 + 4g + 3].
  var af: array<vec4<f32>, TM>;
  var bf: array<array<vec4<f32>, TN4>, 4>;
  // Whole vec4 steps of the slice, then (layouts without a K-major operand) a scalar tail.
  let kb1 = kBegin / 4u + (kEnd - kBegin) / 4u;
  for (var kb = kBegin / 4u; kb < kb1; kb++) {
    let k = kb * 4u;
    if (A_KMAJOR) {
      for (var i = 0u; i < TM; i++) { af[i] = A[aBase[i] + kb]; }
    } else {
      for (var q = 0u; q < 4u; q++) {
        for (var g = 0u; g < TM4; g++) {
          let v = A[aBase[g] + (k + q) * sAk4];
          af[4u * g][q] = v.x;
          af[4u * g + 1u][q] = v.y;
          af[4u * g + 2u][q] = v.z;
          af[4u * g + 3u][q] = v.w;
        }
      }
    }
    if (B_KMAJOR) {
      for (var g = 0u; g < TN4; g++) {
        let c0 = B[bBase[4u * g] + kb];
        let c1 = B[bBase[4u * g + 1u] + kb];
        let c2 = B[bBase[4u * g + 2u] + kb];
        let c3 = B[bBase[4u * g + 3u] + kb];
        bf[0][g] = vec4<f32>(c0.x, c1.x, c2.x, c3.x);
        bf[1][g] = vec4<f32>(c0.y, c1.y, c2.y, c3.y);
        bf[2][g] = vec4<f32>(c0.z, c1.z, c2.z, c3.z);
        bf[3][g] = vec4<f32>(c0.w, c1.w, c2.w, c3.w);
      }
    } else {
      for (var q = 0u; q < 4u; q++) {
        for (var g = 0u; g < TN4; g++) { bf[q][g] = B[bBase[g] + (k + q) * sBk4]; }
      }
    }
    for (var i = 0u; i < TM; i++) {
      let a = af[i];
      for (var g = 0u; g < TN4; g++) {
        acc[i][g] = fma(vec4<f32>(a.x), bf[0][g], acc[i][g]);
        acc[i][g] = fma(vec4<f32>(a.y), bf[1][g], acc[i][g]);
        acc[i][g] = fma(vec4<f32>(a.z), bf[2][g], acc[i][g]);
        acc[i][g] = fma(vec4<f32>(a.w), bf[3][g], acc[i][g]);
      }
    }
  }
  // Tail of K (only when A is M-major and B is N-major: neither reads vec4s along K).
  if (!A_KMAJOR && !B_KMAJOR) {
    for (var k = kb1 * 4u; k < kEnd; k++) {
      for (var g = 0u; g < TM4; g++) {
        let v = A[aBase[g] + k * sAk4];
        for (var h = 0u; h < TN4; h++) {
          let b = B[bBase[h] + k * sBk4];
          acc[4u * g][h] = fma(vec4<f32>(v.x), b, acc[4u * g][h]);
          acc[4u * g + 1u][h] = fma(vec4<f32>(v.y), b, acc[4u * g + 1u][h]);
          acc[4u * g + 2u][h] = fma(vec4<f32>(v.z), b, acc[4u * g + 2u][h]);
          acc[4u * g + 3u][h] = fma(vec4<f32>(v.w), b, acc[4u * g + 3u][h]);
        }
      }
    }
  }

  // Stores go to clamped rows/columns, unconditionally: a clamped lane computed exactly
  // the value that belongs there (its loads were clamped the same way), so duplicate writes
  // are identical. This keeps per-lane branches out of the store code (lavapipe compiles a
  // branchy scatter per element, which dominated compile time).
  let hasBias = (pu(6u) & 1u) != 0u;
  let cBase = g * M * N;
  for (var g = 0u; g < TN4; g++) {
    for (var c = 0u; c < 4u; c++) {
      var n: u32;
      if (B_KMAJOR) { n = min(n0 + 4u * g + c, N - 1u); } else { n = min(n0 + 4u * g, N - 4u) + c; }
      var bv = 0.0;
      if (hasBias) { bv = BIAS[pu(12u) + n * pu(13u)]; }
      for (var i = 0u; i < TM; i++) {
        C[cBase + min(m0 + i, M - 1u) * N + n] = acc[i][g][c] + bv;
      }
    }
  }
}
