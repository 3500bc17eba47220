// Batched matmul, general fallback: scalar loads through arbitrary strides (odd sizes,
// unaligned offsets, strided views), register-tiled, no workgroup memory.
//   C[b, m, n] = sum_k A[b, m, k] * B[b, k, n] (+ bias[n])
// Bindings: 0 params, 1 A, 2 B, 3 bias (any buffer when unused), 4 C (contiguous
//   [batch, M, N]). A, B, bias and C have element type T (f32, or f16 with f32 accumulation).
// Params (u32 words): same layout as matmul_vec4.wgsl: 0 M, 1 N, 2 K, 3 batch rank,
//   4 A offset, 5 B offset, 6 flags (bit0 add bias), 7 batch base, 8 A stride along m,
//   9 A stride along k, 10 B stride along k, 11 B stride along n, 12 bias offset,
//   13 bias stride, 16..21 batch shape, 22..27 A batch strides, 28..33 B batch strides.
// Workgroup: WGX x WGY invocations; each computes a TM x TN block of C at rows
// m0 = (wg.y * WGY + lid.y) * TM, columns n0 = (wg.x * WGX + lid.x) * TN; loads past the
// edge are clamped to the last row/column, and so are stores (a clamped result equals the
// value at the clamped position, so duplicate writes agree).
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 9>;
@group(0) @binding(1) var<storage, read> A: array<{{T}}>;
@group(0) @binding(2) var<storage, read> B: array<{{T}}>;
@group(0) @binding(3) var<storage, read> BIAS: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> C: array<{{T}}>;

const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const WGX: u32 = {{WGX}}u;
const WGY: u32 = {{WGY}}u;

//#include "lib/params.wgsl"
//#include "lib/batch.wgsl"

@compute @workgroup_size(WGX, WGY, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let M = pu(0u);
  let N = pu(1u);
  let K = pu(2u);
  let m0 = (wg.y * WGY + lid.y) * TM;
  let n0 = (wg.x * WGX + lid.x) * TN;
  // No early exit for lanes past the edge: they compute clamped duplicates (see the stores).

  let batch = wg.z + pu(7u);
  let off = batchOffsets(batch);
  let aOff = off.a;
  let bOff = off.b;
  let sAk = pu(9u);
  let sBk = pu(10u);

  var aBase: array<u32, TM>;
  for (var i = 0u; i < TM; i++) { aBase[i] = aOff + min(m0 + i, M - 1u) * pu(8u); }
  var bBase: array<u32, TN>;
  for (var j = 0u; j < TN; j++) { bBase[j] = bOff + min(n0 + j, N - 1u) * pu(11u); }

  var acc: array<array<f32, TN>, TM>;
  var bk: array<f32, TN>;
  for (var k = 0u; k < K; k++) {
    for (var j = 0u; j < TN; j++) { bk[j] = f32(B[bBase[j] + k * sBk]); }
    for (var i = 0u; i < TM; i++) {
      let a = f32(A[aBase[i] + k * sAk]);
      for (var j = 0u; j < TN; j++) { acc[i][j] = fma(a, bk[j], acc[i][j]); }
    }
  }

  // Clamped, unconditional stores: a clamped lane computed exactly the value that belongs
  // at the clamped position, so duplicate writes are identical (fewer branches to compile).
  let hasBias = (pu(6u) & 1u) != 0u;
  let cBase = batch * M * N;
  for (var j = 0u; j < TN; j++) {
    let n = min(n0 + j, N - 1u);
    var bv = 0.0;
    if (hasBias) { bv = f32(BIAS[pu(12u) + n * pu(13u)]); }
    for (var i = 0u; i < TM; i++) {
      C[cBase + min(m0 + i, M - 1u) * N + n] = {{T}}(acc[i][j] + bv);
    }
  }
}
