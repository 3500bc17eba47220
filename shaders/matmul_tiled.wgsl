// Batched matmul through workgroup memory, for GPUs with real shared memory (on lavapipe
// the barriers cost more than the reuse gains; the tuner decides per adapter).
//   C[b, m, n] = sum_k A[b, m, k] * B[b, k, n] (+ bias[n])
// Same operands, bindings and params as matmul_vec4.wgsl (read its header): A and B are
// read in place through strides, each with one unit-stride axis chosen by define
// (A_KMAJOR, B_KMAJOR), vec4-aligned as the host checks.
// Workgroup: WGX x WGY invocations own a block of BM = TM * WGY rows by BN = TN * WGX
// columns. Per step of BK along K the block's A panel (BM x BK) and B panel (BK x BN) are
// staged in workgroup memory as As[k][m] and Bs[k][n] (vec4 along m and n), so the inner
// loop reads one vec4 of A and one of B per 16 FMAs. The next panels are loaded into
// registers while the current ones are consumed (one buffer in workgroup memory, two
// barriers per step).
// Invocation (tx, ty) computes rows g * 4 * WGY + 4 * ty + i (g < TM / 4, i < 4) and
// columns h * 4 * WGX + 4 * tx + c: neighbouring invocations read neighbouring vec4s of
// workgroup memory (no bank conflicts), and rows of a group share one vec4 load.
// Loads past M, N or K read clamped rows (never stored) or zeros (past K); stores are
// guarded. Requires (host): BM * BK and BK * BN multiples of 4 * WGX * WGY.
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
const A_KMAJOR: bool = {{A_KMAJOR}};
const B_KMAJOR: bool = {{B_KMAJOR}};

const TM4: u32 = TM / 4u;
const TN4: u32 = TN / 4u;
const BM: u32 = TM * WGY;
const BN: u32 = TN * WGX;
const BM4: u32 = BM / 4u;
const BN4: u32 = BN / 4u;
const NT: u32 = WGX * WGY;
// vec4 loads per invocation per panel.
const LA: u32 = BM * BK / (4u * NT);
const LB: u32 = BK * BN / (4u * NT);

var<workgroup> As: array<vec4<f32>, BK * BM4>;
var<workgroup> Bs: array<vec4<f32>, BK * BN4>;

//#include "lib/params.wgsl"
//#include "lib/batch.wgsl"

// Geometry of one matmul shared by the load helpers.
struct Geo {
  M: u32, N: u32, K: u32,
  aOff: u32, bOff: u32,
  sAm: u32, sAk: u32, sBk: u32, sBn: u32,
  m0: u32, n0: u32,
}

// Load number l of this invocation's share of the A panel starting at k0.
fn loadA(g: Geo, t: u32, l: u32, k0: u32) -> vec4<f32> {
  let v = t + l * NT;
  if (A_KMAJOR) {
    // v -> (row m, quad kq): A[m, k0 + 4kq .. +3] is one vec4.
    let m = v / (BK / 4u);
    let k = k0 + 4u * (v % (BK / 4u));
    if (k >= g.K) { return vec4<f32>(0.0); }
    return A[(g.aOff + min(g.m0 + m, g.M - 1u) * g.sAm + k) / 4u];
  } else {
    // v -> (k, row quad m4): A[k, m .. m+3] is one vec4.
    let k = k0 + v / BM4;
    if (k >= g.K) { return vec4<f32>(0.0); }
    return A[(g.aOff + k * g.sAk + min(g.m0 + 4u * (v % BM4), g.M - 4u)) / 4u];
  }
}

fn storeA(t: u32, l: u32, x: vec4<f32>) {
  let v = t + l * NT;
  if (A_KMAJOR) {
    let m = v / (BK / 4u);
    let k = 4u * (v % (BK / 4u));
    for (var j = 0u; j < 4u; j++) { As[(k + j) * BM4 + m / 4u][m % 4u] = x[j]; }
  } else {
    As[v] = x;
  }
}

fn loadB(g: Geo, t: u32, l: u32, k0: u32) -> vec4<f32> {
  let v = t + l * NT;
  if (B_KMAJOR) {
    let n = v / (BK / 4u);
    let k = k0 + 4u * (v % (BK / 4u));
    if (k >= g.K) { return vec4<f32>(0.0); }
    return B[(g.bOff + min(g.n0 + n, g.N - 1u) * g.sBn + k) / 4u];
  } else {
    let k = k0 + v / BN4;
    if (k >= g.K) { return vec4<f32>(0.0); }
    return B[(g.bOff + k * g.sBk + min(g.n0 + 4u * (v % BN4), g.N - 4u)) / 4u];
  }
}

fn storeB(t: u32, l: u32, x: vec4<f32>) {
  let v = t + l * NT;
  if (B_KMAJOR) {
    let n = v / (BK / 4u);
    let k = 4u * (v % (BK / 4u));
    for (var j = 0u; j < 4u; j++) { Bs[(k + j) * BN4 + n / 4u][n % 4u] = x[j]; }
  } else {
    Bs[v] = x;
  }
}

@compute @workgroup_size(WGX, WGY, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  var g: Geo;
  g.M = pu(0u);
  g.N = pu(1u);
  g.K = pu(2u);
  let batch = wg.z + pu(7u);
  let off = batchOffsets(batch);
  g.aOff = off.a;
  g.bOff = off.b;
  g.sAm = pu(8u);
  g.sAk = pu(9u);
  g.sBk = pu(10u);
  g.sBn = pu(11u);
  g.m0 = wg.y * BM;
  g.n0 = wg.x * BN;
  let t = lid.y * WGX + lid.x;

  var acc: array<array<vec4<f32>, TN4>, TM>;
  var ra: array<vec4<f32>, LA>;
  var rb: array<vec4<f32>, LB>;
  for (var l = 0u; l < LA; l++) { ra[l] = loadA(g, t, l, 0u); }
  for (var l = 0u; l < LB; l++) { rb[l] = loadB(g, t, l, 0u); }

  let steps = (g.K + BK - 1u) / BK;
  for (var s = 0u; s < steps; s++) {
    workgroupBarrier();
    for (var l = 0u; l < LA; l++) { storeA(t, l, ra[l]); }
    for (var l = 0u; l < LB; l++) { storeB(t, l, rb[l]); }
    workgroupBarrier();
    if (s + 1u < steps) {
      let k0 = (s + 1u) * BK;
      for (var l = 0u; l < LA; l++) { ra[l] = loadA(g, t, l, k0); }
      for (var l = 0u; l < LB; l++) { rb[l] = loadB(g, t, l, k0); }
    }
    for (var k = 0u; k < BK; k++) {
      var a: array<vec4<f32>, TM4>;
      var b: array<vec4<f32>, TN4>;
      for (var q = 0u; q < TM4; q++) { a[q] = As[k * BM4 + q * WGY + lid.y]; }
      for (var h = 0u; h < TN4; h++) { b[h] = Bs[k * BN4 + h * WGX + lid.x]; }
      for (var q = 0u; q < TM4; q++) {
        for (var i = 0u; i < 4u; i++) {
          let av = vec4<f32>(a[q][i]);
          for (var h = 0u; h < TN4; h++) { acc[4u * q + i][h] = fma(av, b[h], acc[4u * q + i][h]); }
        }
      }
    }
  }

  let hasBias = (pu(6u) & 1u) != 0u;
  let cBase = batch * g.M * g.N;
  for (var h = 0u; h < TN4; h++) {
    for (var c = 0u; c < 4u; c++) {
      let n = g.n0 + h * 4u * WGX + 4u * lid.x + c;
      if (n >= g.N) { continue; }
      var bv = 0.0;
      if (hasBias) { bv = BIAS[pu(12u) + n * pu(13u)]; }
      for (var q = 0u; q < TM4; q++) {
        for (var i = 0u; i < 4u; i++) {
          let m = g.m0 + q * 4u * WGY + 4u * lid.y + i;
          if (m < g.M) { C[cBase + m * g.N + n] = acc[4u * q + i][h][c] + bv; }
        }
      }
    }
  }
}
