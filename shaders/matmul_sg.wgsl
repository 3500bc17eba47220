// Batched matmul for CPU adapters (lavapipe): rows shared across a subgroup, vec4 loads,
// no workgroup memory.
//   C[b, m, n] = sum_k A[b, m, k] * B[b, k, n] (+ bias[n])
// Why this shape: lavapipe runs a subgroup as the lanes of one SIMD vector, and it loads a
// storage buffer lane by lane with a bounds check per element, so loads (not FMAs) set the
// speed. All lanes of a workgroup work on the same TM rows (m0 depends on the workgroup
// only), each on its own TN columns. A's TM x 4 block per k-step is loaded once per subgroup
// (each of 8 lanes loads TM/8 vec4s) and handed to every lane by subgroupShuffle, which is a
// register permute there. B is loaded per lane (no lane needs another's columns).
// Needs subgroups of at least 8 invocations (the host checks the adapter's minimum size).
// Layouts and requirements are those of matmul_vec4.wgsl:
//   A_KMAJOR true: A's unit stride is along K, else along M (M a multiple of 4).
//   B_KMAJOR true: B's unit stride is along K, else along N (N a multiple of 4).
//   Offsets and all other strides multiples of 4; K a multiple of 4 unless neither operand
//   is K-major (then a scalar-k tail handles the rest).
// Bindings: 0 params, 1 A (vec4), 2 B (vec4), 3 bias (f32; any buffer when unused),
//   4 C (f32, contiguous [batch, M, N]).
// Params (u32 words): as matmul_vec4.wgsl: 0 M, 1 N, 2 K, 3 batch rank, 4 A offset,
//   5 B offset, 6 flags (bit0 add bias), 7 batch base, 8 A stride along m, 9 A stride along k,
//   10 B stride along k, 11 B stride along n, 12 bias offset, 13 bias stride,
//   14 K slice length, 15 batch count Z (split-K, as in matmul_vec4.wgsl: workgroup z +
//   base = s * Z + b runs batch b over K slice s and stores to C[s * Z + b]),
//   16..21 batch shape, 22..27 A batch strides, 28..33 B batch strides.
// Workgroup: WGX x 1 invocations; invocation x computes rows m0 = wg.y * TM .. m0 + TM - 1
// (TM = 8, 16 or 32, handled as chunks of 8 rows) and columns n0 = (wg.x * WGX + x) * TN .. n0 + TN - 1 (TN a multiple
// of 4). Edge rows/columns are clamped for loads (so every lane stays active for the
// shuffles) and for stores (duplicate writes of equal values).
enable subgroups;
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 9>;
@group(0) @binding(1) var<storage, read> A: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> B: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> BIAS: array<f32>;
@group(0) @binding(4) var<storage, read_write> C: array<f32>;

// Rows are handled in chunks of 8, each with its own accumulator variable and loops of at
// most 8 trips: Mesa's NIR unrolls those reliably, while 16- or 32-trip loops were left
// rolled for some layouts (accumulators then live in memory: 5-10x slower).
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const TM4: u32 = TM / 4u;
const TN4: u32 = TN / 4u;
// vec4s of A each lane loads per k-step (the subgroup loads TM of them); also the number of
// 8-row chunks.
const AS: u32 = TM / 8u;
const WGX: u32 = {{WGX}}u;
const A_KMAJOR: bool = {{A_KMAJOR}};
const B_KMAJOR: bool = {{B_KMAJOR}};

alias Chunk = array<array<vec4<f32>, TN4>, 8>;
alias Frag = array<array<vec4<f32>, TN4>, 4>;

//#include "lib/params.wgsl"
//#include "lib/batch.wgsl"

// One k-step for rows 8c..8c+7 of the tile: acc[r][g] += A[row, k..k+3] * bf[..][g].
fn stepChunk(acc: ptr<function, Chunk>, av: ptr<function, array<vec4<f32>, AS>>, bf: ptr<function, Frag>, c: u32) {
  for (var r = 0u; r < 8u; r++) {
    // a = A[m0 + 8c + r, k..k+3], from the lane that loaded it.
    var a: vec4<f32>;
    if (A_KMAJOR) {
      a = subgroupShuffle((*av)[c], r);
    } else {
      let i = 8u * c + r;
      for (var q = 0u; q < 4u; q++) {
        let v = q * TM4 + i / 4u;
        a[q] = subgroupShuffle((*av)[v / 8u][i % 4u], v % 8u);
      }
    }
    for (var g = 0u; g < TN4; g++) {
      (*acc)[r][g] = fma(vec4<f32>(a.x), (*bf)[0][g], (*acc)[r][g]);
      (*acc)[r][g] = fma(vec4<f32>(a.y), (*bf)[1][g], (*acc)[r][g]);
      (*acc)[r][g] = fma(vec4<f32>(a.z), (*bf)[2][g], (*acc)[r][g]);
      (*acc)[r][g] = fma(vec4<f32>(a.w), (*bf)[3][g], (*acc)[r][g]);
    }
  }
}

// One scalar k (the K tail; A M-major): rows 8c..8c+7 read as two vec4s at aRow.
fn tailChunk(acc: ptr<function, Chunk>, b: ptr<function, array<vec4<f32>, TN4>>, aRow: u32, M: u32, m0: u32, c: u32, aOff: u32) {
  for (var h = 0u; h < 2u; h++) {
    let v = A[(aOff + min(m0 + 8u * c + 4u * h, M - 4u)) / 4u + aRow];
    for (var g = 0u; g < TN4; g++) {
      (*acc)[4u * h][g] = fma(vec4<f32>(v.x), (*b)[g], (*acc)[4u * h][g]);
      (*acc)[4u * h + 1u][g] = fma(vec4<f32>(v.y), (*b)[g], (*acc)[4u * h + 1u][g]);
      (*acc)[4u * h + 2u][g] = fma(vec4<f32>(v.z), (*b)[g], (*acc)[4u * h + 2u][g]);
      (*acc)[4u * h + 3u][g] = fma(vec4<f32>(v.w), (*b)[g], (*acc)[4u * h + 3u][g]);
    }
  }
}

// Stores rows 8c..8c+7 to clamped rows/columns, unconditionally: a clamped lane computed
// exactly the value that belongs there (its loads were clamped the same way), so duplicate
// writes agree, and the store code has no per-lane branches (lavapipe compiles a branchy
// scatter per element; branches there dominated compile time).
fn storeChunk(acc: ptr<function, Chunk>, bv: ptr<function, array<f32, TN>>, cols: ptr<function, array<u32, TN>>, cBase: u32, M: u32, N: u32, m0: u32, c: u32) {
  for (var r = 0u; r < 8u; r++) {
    let row = cBase + min(m0 + 8u * c + r, M - 1u) * N;
    for (var j = 0u; j < TN; j++) {
      C[row + (*cols)[j]] = (*acc)[r][j / 4u][j % 4u] + (*bv)[j];
    }
  }
}

@compute @workgroup_size(WGX, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(subgroup_invocation_id) sgi: u32) {
  let M = pu(0u);
  let N = pu(1u);
  let K = pu(2u);
  // No early exit (the grid never starts a row tile past M; columns past N are clamped):
  // every lane must take part in the shuffles, and control flow here costs per-lane masks.
  let m0 = wg.y * TM;
  let n0 = (wg.x * WGX + lid.x) * TN;

  // Split-K slice and batch; the slice's K range [kBegin, kEnd).
  let gz = wg.z + pu(7u);
  let batch = gz % pu(15u);
  let kBegin = (gz / pu(15u)) * pu(14u);
  let kEnd = min(K, kBegin + pu(14u));
  let off = batchOffsets(batch);
  let aOff = off.a;
  let bOff = off.b;
  let sAm = pu(8u);
  let sAk4 = pu(9u) / 4u;
  let sBk4 = pu(10u) / 4u;
  let sBn = pu(11u);

  // This lane's share of A, in vec4 units. K-major: slot j is row lane + 8j (4 k values).
  // M-major: the k-step's A block is TM vec4s, v = q * TM4 + g (k + q, rows m0 + 4g..);
  // slot j is v = lane + 8j.
  let lane = sgi % 8u;
  var aBase: array<u32, AS>;
  for (var j = 0u; j < AS; j++) {
    let v = lane + 8u * j;
    if (A_KMAJOR) {
      aBase[j] = (aOff + min(m0 + v, M - 1u) * sAm) / 4u;
    } else {
      aBase[j] = (aOff + min(m0 + 4u * (v % TM4), M - 4u)) / 4u + (v / TM4) * sAk4;
    }
  }
  // Columns (clamped) this lane reads and writes. K-major B: one column each; N-major B:
  // groups of 4 (N is a multiple of 4, so a group is all in or all out).
  var cols: array<u32, TN>;
  for (var j = 0u; j < TN; j++) {
    if (B_KMAJOR) { cols[j] = min(n0 + j, N - 1u); } else { cols[j] = min(n0 + 4u * (j / 4u), N - 4u) + j % 4u; }
  }
  var bBase: array<u32, TN>;
  for (var j = 0u; j < TN; j++) {
    if (B_KMAJOR) { bBase[j] = (bOff + cols[j] * sBn) / 4u; } else { bBase[j] = (bOff + cols[j]) / 4u; }
  }

  var acc0: Chunk;
  var acc1: Chunk;
  var acc2: Chunk;
  var acc3: Chunk;
  var av: array<vec4<f32>, AS>;
  // bf[q][g]: B[k + q, n0 + 4g..n0 + 4g + 3].
  var bf: Frag;
  let kb1 = kBegin / 4u + (kEnd - kBegin) / 4u;
  for (var kb = kBegin / 4u; kb < kb1; kb++) {
    for (var j = 0u; j < AS; j++) {
      if (A_KMAJOR) { av[j] = A[aBase[j] + kb]; } else { av[j] = A[aBase[j] + kb * 4u * sAk4]; }
    }
    for (var g = 0u; g < TN4; g++) {
      if (B_KMAJOR) {
        let c0 = B[bBase[4u * g] + kb];
        let c1 = B[bBase[4u * g + 1u] + kb];
        let c2 = B[bBase[4u * g + 2u] + kb];
        let c3 = B[bBase[4u * g + 3u] + kb];
        bf[0][g] = vec4<f32>(c0.x, c1.x, c2.x, c3.x);
        bf[1][g] = vec4<f32>(c0.y, c1.y, c2.y, c3.y);
        bf[2][g] = vec4<f32>(c0.z, c1.z, c2.z, c3.z);
        bf[3][g] = vec4<f32>(c0.w, c1.w, c2.w, c3.w);
      } else {
        for (var q = 0u; q < 4u; q++) { bf[q][g] = B[bBase[4u * g] + (kb * 4u + q) * sBk4]; }
      }
    }
    stepChunk(&acc0, &av, &bf, 0u);
    if (AS > 1u) { stepChunk(&acc1, &av, &bf, 1u); }
    if (AS > 2u) {
      stepChunk(&acc2, &av, &bf, 2u);
      stepChunk(&acc3, &av, &bf, 3u);
    }
  }
  // Tail of K (only when A is M-major and B N-major): at most 3 steps, loaded per lane.
  if (!A_KMAJOR && !B_KMAJOR) {
    for (var k = kb1 * 4u; k < kEnd; k++) {
      var b: array<vec4<f32>, TN4>;
      for (var g = 0u; g < TN4; g++) { b[g] = B[bBase[4u * g] + k * sBk4]; }
      tailChunk(&acc0, &b, k * sAk4, M, m0, 0u, aOff);
      if (AS > 1u) { tailChunk(&acc1, &b, k * sAk4, M, m0, 1u, aOff); }
      if (AS > 2u) {
        tailChunk(&acc2, &b, k * sAk4, M, m0, 2u, aOff);
        tailChunk(&acc3, &b, k * sAk4, M, m0, 3u, aOff);
      }
    }
  }

  var bv: array<f32, TN>;
  if ((pu(6u) & 1u) != 0u) {
    for (var j = 0u; j < TN; j++) { bv[j] = BIAS[pu(12u) + cols[j] * pu(13u)]; }
  }
  let cBase = gz * M * N;
  storeChunk(&acc0, &bv, &cols, cBase, M, N, m0, 0u);
  if (AS > 1u) { storeChunk(&acc1, &bv, &cols, cBase, M, N, m0, 1u); }
  if (AS > 2u) {
    storeChunk(&acc2, &bv, &cols, cBase, M, N, m0, 2u);
    storeChunk(&acc3, &bv, &cols, cBase, M, N, m0, 3u);
  }
}
