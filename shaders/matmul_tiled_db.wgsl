// Batched matmul through double-buffered workgroup memory, for GPUs with real shared memory
// (the sibling of matmul_tiled.wgsl, aimed at what limits that kernel on an NVIDIA GPU).
//   C[b, m, n] = sum_k A[b, m, k] * B[b, k, n] (+ bias[n])
// Same operands, bindings and params as matmul_vec4.wgsl (read its header): A and B are
// read in place through strides, each with one unit-stride axis chosen by define
// (A_KMAJOR, B_KMAJOR), vec4-aligned as the host checks.
// Workgroup: NT = WGX * WGY invocations in one dimension own a block of BM = TM * WGY rows
// by BN = TN * WGX columns (TM, TN multiples of 4). Per step of BK along K the block's A
// panel (BM x BK) and B panel (BK x BN) sit in workgroup memory as As[buf][k][m / 4] and
// Bs[buf][k][n / 4] (vec4 along m and n); the inner loop reads TM / 4 + TN / 4 vec4s per
// TM * TN FMAs. How it differs from matmul_tiled.wgsl, and why:
// - Two panel buffers: the next panel is loaded into registers before the current one is
//   consumed and stored into the other buffer after it, so a step needs one barrier (the
//   single-buffer kernel needs two, and stalls on both).
// - Panels are 3D arrays indexed [buf][k][column]: the bounds clamp Dawn's robustness
//   inserts applies to each index alone, so the column's clamp is the same for every k and
//   is computed once, leaving base + constant addresses in the unrolled inner loop (a flat
//   index needs a clamp per load).
// - Invocations are laid out per group of 32 consecutive ones (one NVIDIA warp): a group
//   covers LY = 32 / LX invocation rows by LX invocation columns, so a warp reads
//   TM/4 * LY + TN/4 * LX distinct vec4s per k instead of those of a 2 x 16 strip.
//   Results do not depend on the real subgroup size; only the speed does.
// - Each load of a K-major operand's panel (vec4 along k, stored transposed) takes
//   consecutive rows across consecutive invocations, so the scalar transposed stores of a
//   warp hit 32 consecutive words (no bank conflicts, no padding needed).
// Invocation (tx, ty) computes rows q * 4 * WGY + 4 * ty + i (q < TM / 4, i < 4) and
// columns h * 4 * WGX + 4 * tx + c of the block: neighbouring invocations read
// neighbouring vec4s of workgroup memory, and 4 rows share one vec4 load.
// Loads past M or N read clamped rows (never stored), past K zeros; stores are guarded.
// Requires (host): BM * BK and BK * BN multiples of 4 * NT, NT a multiple of 32,
// WGX a multiple of LX, WGY a multiple of 32 / LX.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 9>;
@group(0) @binding(1) var<storage, read> A: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> B: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> BIAS: array<f32>;
@group(0) @binding(4) var<storage, read_write> C: array<f32>;

const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const WGX: u32 = {{WGX}}u;
const WGY: u32 = {{WGY}}u;
const BK: u32 = {{BK}}u;
const LX: u32 = {{LX}}u;
const A_KMAJOR: bool = {{A_KMAJOR}};
const B_KMAJOR: bool = {{B_KMAJOR}};

const TM4: u32 = TM / 4u;
const TN4: u32 = TN / 4u;
const BM: u32 = TM * WGY;
const BN: u32 = TN * WGX;
const BM4: u32 = BM / 4u;
const BN4: u32 = BN / 4u;
const NT: u32 = WGX * WGY;
// Invocations of one warp along x and y, and warps along x.
const LY: u32 = 32u / LX;
const GX: u32 = WGX / LX;
// vec4 loads per invocation per panel.
const LA: u32 = BM * BK / (4u * NT);
const LB: u32 = BK * BN / (4u * NT);

var<workgroup> As: array<array<array<vec4<f32>, BM4>, BK>, 2>;
var<workgroup> Bs: array<array<array<vec4<f32>, BN4>, BK>, 2>;

//#include "lib/params.wgsl"
//#include "lib/batch.wgsl"

@compute @workgroup_size(NT, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let M = pu(0u);
  let N = pu(1u);
  let K = pu(2u);
  let batch = wg.z + pu(7u);
  let off = batchOffsets(batch);
  let aOff = off.a;
  let bOff = off.b;
  let sAm = pu(8u);
  let sAk = pu(9u);
  let sBk = pu(10u);
  let sBn = pu(11u);
  let m0 = wg.y * BM;
  let n0 = wg.x * BN;
  let w = t / 32u;
  let tx = (w % GX) * LX + t % LX;
  let ty = (w / GX) * LY + (t % 32u) / LX;

  // Each panel load l of this invocation: the vec4 index at k0 = 0 (aIdx), the k it starts
  // at within the panel (aK, for the guard past K) and where it goes in the panel (aCol:
  // the row for a K-major operand, the row quad otherwise). Step s adds s * aStep.
  var aIdx: array<u32, LA>;
  var aK: array<u32, LA>;
  var aCol: array<u32, LA>;
  for (var l = 0u; l < LA; l++) {
    let v = t + l * NT;
    if (A_KMAJOR) {
      // v -> (row m, quad kq): A[m, 4kq .. 4kq+3] is one vec4; rows vary fastest.
      aCol[l] = v % BM;
      aK[l] = 4u * (v / BM);
      aIdx[l] = (aOff + min(m0 + aCol[l], M - 1u) * sAm + aK[l]) / 4u;
    } else {
      // v -> (k, row quad): A[k, m .. m+3] is one vec4.
      aCol[l] = v % BM4;
      aK[l] = v / BM4;
      aIdx[l] = (aOff + aK[l] * sAk + min(m0 + 4u * aCol[l], M - 4u)) / 4u;
    }
  }
  var bIdx: array<u32, LB>;
  var bK: array<u32, LB>;
  var bCol: array<u32, LB>;
  for (var l = 0u; l < LB; l++) {
    let v = t + l * NT;
    if (B_KMAJOR) {
      bCol[l] = v % BN;
      bK[l] = 4u * (v / BN);
      bIdx[l] = (bOff + min(n0 + bCol[l], N - 1u) * sBn + bK[l]) / 4u;
    } else {
      bCol[l] = v % BN4;
      bK[l] = v / BN4;
      bIdx[l] = (bOff + bK[l] * sBk + min(n0 + 4u * bCol[l], N - 4u)) / 4u;
    }
  }
  let aStep = select(BK * sAk / 4u, BK / 4u, A_KMAJOR);
  let bStep = select(BK * sBk / 4u, BK / 4u, B_KMAJOR);

  var acc: array<array<vec4<f32>, TN4>, TM>;
  var ra: array<vec4<f32>, LA>;
  var rb: array<vec4<f32>, LB>;
  let steps = (K + BK - 1u) / BK;

  // Panel 0 into buffer 0.
  for (var l = 0u; l < LA; l++) {
    ra[l] = vec4<f32>(0.0);
    if (aK[l] < K) { ra[l] = A[aIdx[l]]; }
  }
  for (var l = 0u; l < LB; l++) {
    rb[l] = vec4<f32>(0.0);
    if (bK[l] < K) { rb[l] = B[bIdx[l]]; }
  }
  for (var l = 0u; l < LA; l++) {
    if (A_KMAJOR) {
      for (var j = 0u; j < 4u; j++) { As[0][aK[l] + j][aCol[l] / 4u][aCol[l] % 4u] = ra[l][j]; }
    } else {
      As[0][aK[l]][aCol[l]] = ra[l];
    }
  }
  for (var l = 0u; l < LB; l++) {
    if (B_KMAJOR) {
      for (var j = 0u; j < 4u; j++) { Bs[0][bK[l] + j][bCol[l] / 4u][bCol[l] % 4u] = rb[l][j]; }
    } else {
      Bs[0][bK[l]][bCol[l]] = rb[l];
    }
  }
  workgroupBarrier();

  for (var s = 0u; s < steps; s++) {
    let cur = s & 1u;
    let more = s + 1u < steps;
    // The next panel into registers: its global loads are in flight during the FMAs.
    if (more) {
      let k0 = (s + 1u) * BK;
      for (var l = 0u; l < LA; l++) {
        ra[l] = vec4<f32>(0.0);
        if (k0 + aK[l] < K) { ra[l] = A[aIdx[l] + (s + 1u) * aStep]; }
      }
      for (var l = 0u; l < LB; l++) {
        rb[l] = vec4<f32>(0.0);
        if (k0 + bK[l] < K) { rb[l] = B[bIdx[l] + (s + 1u) * bStep]; }
      }
    }
    for (var k = 0u; k < BK; k++) {
      var a: array<vec4<f32>, TM4>;
      var b: array<vec4<f32>, TN4>;
      for (var q = 0u; q < TM4; q++) { a[q] = As[cur][k][q * WGY + ty]; }
      for (var h = 0u; h < TN4; h++) { b[h] = Bs[cur][k][h * WGX + tx]; }
      for (var q = 0u; q < TM4; q++) {
        for (var i = 0u; i < 4u; i++) {
          let av = vec4<f32>(a[q][i]);
          for (var h = 0u; h < TN4; h++) { acc[4u * q + i][h] = fma(av, b[h], acc[4u * q + i][h]); }
        }
      }
    }
    // The other buffer was last read in step s - 1, which every invocation finished before
    // the previous barrier.
    if (more) {
      let nxt = cur ^ 1u;
      for (var l = 0u; l < LA; l++) {
        if (A_KMAJOR) {
          for (var j = 0u; j < 4u; j++) { As[nxt][aK[l] + j][aCol[l] / 4u][aCol[l] % 4u] = ra[l][j]; }
        } else {
          As[nxt][aK[l]][aCol[l]] = ra[l];
        }
      }
      for (var l = 0u; l < LB; l++) {
        if (B_KMAJOR) {
          for (var j = 0u; j < 4u; j++) { Bs[nxt][bK[l] + j][bCol[l] / 4u][bCol[l] % 4u] = rb[l][j]; }
        } else {
          Bs[nxt][bK[l]][bCol[l]] = rb[l];
        }
      }
    }
    workgroupBarrier();
  }

  let hasBias = (pu(6u) & 1u) != 0u;
  let cBase = batch * M * N;
  for (var h = 0u; h < TN4; h++) {
    for (var c = 0u; c < 4u; c++) {
      let n = n0 + h * 4u * WGX + 4u * tx + c;
      if (n >= N) { continue; }
      var bv = 0.0;
      if (hasBias) { bv = BIAS[pu(12u) + n * pu(13u)]; }
      for (var q = 0u; q < TM4; q++) {
        for (var i = 0u; i < 4u; i++) {
          let m = m0 + q * 4u * WGY + 4u * ty + i;
          if (m < M) { C[cBase + m * N + n] = acc[4u * q + i][h][c] + bv; }
        }
      }
    }
  }
}
