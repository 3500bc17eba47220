// Batched matmul for CPU adapters, general layouts: the row sharing of matmul_sg.wgsl with
// scalar loads through arbitrary strides (odd sizes, unaligned offsets, strided views, f16).
//   C[b, m, n] = sum_k A[b, m, k] * B[b, k, n] (+ bias[n]), accumulated in f32.
// On lavapipe a load costs per lane and per element whether it is part of a vec4 or not, so
// the scalar form loses little: per k each lane loads TM/8 elements of A (the subgroup's 8
// lanes split the tile's TM rows; subgroupShuffle hands them around) and TN of B.
// Needs subgroups of at least 8 invocations (the host checks the adapter's minimum size).
// Bindings: 0 params, 1 A, 2 B, 3 bias (any buffer when unused), 4 C (contiguous
//   [batch, M, N]); all of element type T (f32, or f16 stored / f32 accumulated).
// Params (u32 words): as matmul_vec4.wgsl: 0 M, 1 N, 2 K, 3 batch rank, 4 A offset,
//   5 B offset, 6 flags (bit0 add bias), 7 batch base, 8 A stride along m, 9 A stride along k,
//   10 B stride along k, 11 B stride along n, 12 bias offset, 13 bias stride,
//   16..21 batch shape, 22..27 A batch strides, 28..33 B batch strides.
// Workgroup: WGX x 1 invocations; invocation x computes rows m0 = wg.y * TM .. m0 + TM - 1
// (TM = 8, 16 or 32, as chunks of 8 rows: loops of at most 8 trips, which Mesa's NIR unrolls
// reliably) and columns n0 = (wg.x * WGX + x) * TN .. (TN a multiple of 4). Edge rows and
// columns are clamped for loads (every lane stays active for the shuffles) and for stores
// (a clamped lane computed exactly the value at the clamped position: duplicate writes agree).
{{ENABLE}}
enable subgroups;
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 9>;
@group(0) @binding(1) var<storage, read> A: array<{{T}}>;
@group(0) @binding(2) var<storage, read> B: array<{{T}}>;
@group(0) @binding(3) var<storage, read> BIAS: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> C: array<{{T}}>;

const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const TN4: u32 = TN / 4u;
// Elements of A each lane loads per k (one per 8-row chunk).
const AS: u32 = TM / 8u;
const WGX: u32 = {{WGX}}u;

alias Chunk = array<array<vec4<f32>, TN4>, 8>;

//#include "lib/params.wgsl"
//#include "lib/batch.wgsl"

// One k for rows 8c..8c+7: acc[r][g] += A[row, k] * B[k, cols of group g].
fn stepChunk(acc: ptr<function, Chunk>, av: ptr<function, array<f32, AS>>, b: ptr<function, array<vec4<f32>, TN4>>, c: u32) {
  for (var r = 0u; r < 8u; r++) {
    let a = vec4<f32>(subgroupShuffle((*av)[c], r));
    for (var g = 0u; g < TN4; g++) { (*acc)[r][g] = fma(a, (*b)[g], (*acc)[r][g]); }
  }
}

fn storeChunk(acc: ptr<function, Chunk>, bv: ptr<function, array<f32, TN>>, cols: ptr<function, array<u32, TN>>, cBase: u32, M: u32, N: u32, m0: u32, c: u32) {
  for (var r = 0u; r < 8u; r++) {
    let row = cBase + min(m0 + 8u * c + r, M - 1u) * N;
    for (var j = 0u; j < TN; j++) {
      C[row + (*cols)[j]] = {{T}}((*acc)[r][j / 4u][j % 4u] + (*bv)[j]);
    }
  }
}

@compute @workgroup_size(WGX, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(subgroup_invocation_id) sgi: u32) {
  let M = pu(0u);
  let N = pu(1u);
  let K = pu(2u);
  let m0 = wg.y * TM;
  let n0 = (wg.x * WGX + lid.x) * TN;

  let batch = wg.z + pu(7u);
  let off = batchOffsets(batch);
  let aOff = off.a;
  let bOff = off.b;
  let sAk = pu(9u);
  let sBk = pu(10u);

  // This lane loads row m0 + lane + 8j (clamped) for chunk j.
  let lane = sgi % 8u;
  var aIdx: array<u32, AS>;
  for (var j = 0u; j < AS; j++) { aIdx[j] = aOff + min(m0 + lane + 8u * j, M - 1u) * pu(8u); }
  var cols: array<u32, TN>;
  var bIdx: array<u32, TN>;
  for (var j = 0u; j < TN; j++) {
    cols[j] = min(n0 + j, N - 1u);
    bIdx[j] = bOff + cols[j] * pu(11u);
  }

  var acc0: Chunk;
  var acc1: Chunk;
  var acc2: Chunk;
  var acc3: Chunk;
  var av: array<f32, AS>;
  var b: array<vec4<f32>, TN4>;
  for (var k = 0u; k < K; k++) {
    for (var j = 0u; j < AS; j++) { av[j] = f32(A[aIdx[j]]); aIdx[j] += sAk; }
    for (var g = 0u; g < TN4; g++) {
      b[g] = vec4<f32>(f32(B[bIdx[4u * g]]), f32(B[bIdx[4u * g + 1u]]), f32(B[bIdx[4u * g + 2u]]), f32(B[bIdx[4u * g + 3u]]));
    }
    for (var j = 0u; j < TN; j++) { bIdx[j] += sBk; }
    stepChunk(&acc0, &av, &b, 0u);
    if (AS > 1u) { stepChunk(&acc1, &av, &b, 1u); }
    if (AS > 2u) {
      stepChunk(&acc2, &av, &b, 2u);
      stepChunk(&acc3, &av, &b, 3u);
    }
  }

  var bv: array<f32, TN>;
  if ((pu(6u) & 1u) != 0u) {
    for (var j = 0u; j < TN; j++) { bv[j] = f32(BIAS[pu(12u) + cols[j] * pu(13u)]); }
  }
  let cBase = batch * M * N;
  storeChunk(&acc0, &bv, &cols, cBase, M, N, m0, 0u);
  if (AS > 1u) { storeChunk(&acc1, &bv, &cols, cBase, M, N, m0, 1u); }
  if (AS > 2u) {
    storeChunk(&acc2, &bv, &cols, cBase, M, N, m0, 2u);
    storeChunk(&acc3, &bv, &cols, cBase, M, N, m0, 3u);
  }
}
