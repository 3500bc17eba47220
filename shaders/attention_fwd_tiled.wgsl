// Fused attention forward for GPUs, FlashAttention-2 style: a workgroup owns a block of BQ
// query rows of one (batch, query head) and walks the keys in tiles of BK, staged in
// workgroup memory, so every K / V element loaded from global memory serves BQ rows (the
// `rows` kernel has every invocation load every K / V row itself and runs only B*Hq*Tq
// invocations). Online softmax per row; scores are never stored beyond one tile, so memory
// is linear in the sequence lengths. No subgroup operations.
//   O = softmax(scale * Q K^T + bias) V.
// Bindings: 0 params, 1 Q [B, Hq, Tq, D] (contiguous from its offset), 2 K [B, Hkv, Tk, D],
//   3 V [B, Hkv, Tk, Dv] (K and V: dense rows, any b / h / t strides), 4 MASK (f32 additive,
//   strided, broadcast via stride 0), 5 KP (key padding, KPT, strided [B, Tk]; 0 = padded),
//   6 O [B, Hq, Tq, Dv] (out), 7 LSE [B, Hq, Tq] (out: row logsumexp, for the backward).
//   Unused MASK / KP slots are bound to any read-only buffer and never read.
// Params: the attention_fwd.wgsl layout (0 rows, 1 Hq, 2 Tq, 3 Tk, 4 D, 5 Dv, 6 group,
//   7 flags, 8 qOffset, 9 scale, 10 Hkv, 12..16 mask, 17..19 KP, 20..22 Q/K/V offsets,
//   24..29 K/V strides (b, h, t)).
// Defines: VT (f32 or vec4<f32>), W (its width), DOT, KPT, MAX_D (VT units >= D, Dv),
//   BQ (query rows per workgroup), BK (keys per tile, a multiple of C), C (invocations per
//   row), NA (= ceil(MAX_D / C): accumulator slots per invocation).
// Workgroup: BQ * C invocations; workgroup (x, y) takes rows x*BQ .. x*BQ+BQ-1 of query head
//   y = b * Hq + h. Invocation t serves row r = t / C with column c = t % C: per tile it
//   computes the scores of keys c, c + C, ... of the tile for its row, and accumulates the
//   output columns (VT units) c, c + C, ... of its row over all keys of the tile. The C
//   invocations of a row agree on the running max through workgroup memory. Key tiles past
//   the last key any row of the block may see (causal) are skipped. A row with no visible
//   key gets O = 0 (and LSE = 0).
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 8>;
@group(0) @binding(1) var<storage, read> Q: array<{{VT}}>;
@group(0) @binding(2) var<storage, read> K: array<{{VT}}>;
@group(0) @binding(3) var<storage, read> V: array<{{VT}}>;
@group(0) @binding(4) var<storage, read> MASK: array<f32>;
@group(0) @binding(5) var<storage, read> KP: array<{{KPT}}>;
@group(0) @binding(6) var<storage, read_write> O: array<{{VT}}>;
@group(0) @binding(7) var<storage, read_write> LSE: array<f32>;

const BQ: u32 = {{BQ}}u;
const BK: u32 = {{BK}}u;
const C: u32 = {{C}}u;
const WG: u32 = {{BQ}}u * {{C}}u;
const NA: u32 = {{NA}}u;
const SK: u32 = {{BK}}u / {{C}}u;
// Staged rows are padded by one element so rows of a tile fall in different banks.
const RS: u32 = {{MAX_D}}u + 1u;
var<workgroup> Qs: array<{{VT}}, {{BQ}}u * ({{MAX_D}}u + 1u)>;
var<workgroup> Ks: array<{{VT}}, {{BK}}u * ({{MAX_D}}u + 1u)>;
var<workgroup> Vs: array<{{VT}}, {{BK}}u * ({{MAX_D}}u + 1u)>;
var<workgroup> Ps: array<f32, {{BQ}}u * {{BK}}u>;
// Per (row, column) partial max of a tile, and at the end the partial row sums.
var<workgroup> Red: array<f32, {{BQ}}u * {{C}}u>;

//#include "lib/params.wgsl"
//#include "lib/attention_mask.wgsl"
fn dotv(a: {{VT}}, b: {{VT}}) -> f32 { return {{DOT}}; }

@compute @workgroup_size({{BQ}} * {{C}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let Hq = pu(1u);
  let Tq = pu(2u);
  let Tk = pu(3u);
  let D = pu(4u) / {{W}}u;
  let Dv = pu(5u) / {{W}}u;
  let bh = wid.y;
  let h = bh % Hq;
  let b = bh / Hq;
  let kvh = h / pu(6u);
  let kRow0 = pu(21u) / {{W}}u + (b * pu(24u) + kvh * pu(25u)) / {{W}}u;
  let vRow0 = pu(22u) / {{W}}u + (b * pu(27u) + kvh * pu(28u)) / {{W}}u;
  let kStride = pu(26u) / {{W}}u;
  let vStride = pu(29u) / {{W}}u;
  let scale = pf(9u);
  let i0 = wid.x * BQ;
  let r = t / C;
  let c = t % C;
  let i = i0 + r;
  let live = i < Tq;

  // Stage the block's query rows, pre-scaled (rows past Tq are zero).
  let qBase = pu(20u) / {{W}}u + (bh * Tq + i0) * D;
  for (var e = t; e < BQ * D; e += WG) {
    let rr = e / D;
    let d = e % D;
    var x = {{VT}}(0.0);
    if (i0 + rr < Tq) { x = Q[qBase + e] * scale; }
    Qs[rr * RS + d] = x;
  }

  // Keys past the last one any row of the block may see are skipped (uniform bound).
  var kEnd = Tk;
  if ((pu(7u) & 1u) != 0u) {
    let iLast = min(i0 + BQ, Tq) - 1u;
    kEnd = u32(clamp(bitcast<i32>(pu(8u)) + i32(iLast) + 1, 0, i32(Tk)));
  }

  var acc: array<{{VT}}, NA>;
  for (var a = 0u; a < NA; a++) { acc[a] = {{VT}}(0.0); }
  var m = MASKED;
  var l = 0.0;
  var s: array<f32, SK>;
  for (var j0 = 0u; j0 < kEnd; j0 += BK) {
    // Everyone is done with the previous tile's K, V and P.
    workgroupBarrier();
    for (var e = t; e < BK * D; e += WG) {
      let jj = e / D;
      let d = e % D;
      var x = {{VT}}(0.0);
      if (j0 + jj < Tk) { x = K[kRow0 + (j0 + jj) * kStride + d]; }
      Ks[jj * RS + d] = x;
    }
    for (var e = t; e < BK * Dv; e += WG) {
      let jj = e / Dv;
      let d = e % Dv;
      var x = {{VT}}(0.0);
      if (j0 + jj < Tk) { x = V[vRow0 + (j0 + jj) * vStride + d]; }
      Vs[jj * RS + d] = x;
    }
    workgroupBarrier();

    // Scores of keys c, c + C, ... for row r.
    for (var u = 0u; u < SK; u++) { s[u] = 0.0; }
    for (var d = 0u; d < D; d++) {
      let q = Qs[r * RS + d];
      for (var u = 0u; u < SK; u++) { s[u] += dotv(q, Ks[(c + u * C) * RS + d]); }
    }
    var pmax = MASKED;
    for (var u = 0u; u < SK; u++) {
      let j = j0 + c + u * C;
      var bias = MASKED;
      if (live && j < kEnd) { bias = keyBias(b, h, i, j); }
      s[u] = select(s[u] + bias, MASKED, bias == MASKED);
      pmax = max(pmax, s[u]);
    }
    Red[t] = pmax;
    workgroupBarrier();
    var mNew = m;
    for (var cc = 0u; cc < C; cc++) { mNew = max(mNew, Red[r * C + cc]); }
    // Rescale what was accumulated under the old max (a factor 1 while nothing was seen).
    let corr = exp(m - mNew);
    l *= corr;
    for (var a = 0u; a < NA; a++) { acc[a] *= corr; }
    m = mNew;
    for (var u = 0u; u < SK; u++) {
      let p = select(exp(s[u] - m), 0.0, s[u] == MASKED);
      l += p;
      Ps[r * BK + c + u * C] = p;
    }
    workgroupBarrier();

    for (var jj = 0u; jj < BK; jj++) {
      let p = Ps[r * BK + jj];
      for (var a = 0u; a < NA; a++) {
        let d = c + a * C;
        if (d < Dv) { acc[a] += p * Vs[jj * RS + d]; }
      }
    }
  }

  // Row sums: each invocation summed the weights of its own keys.
  workgroupBarrier();
  Red[t] = l;
  workgroupBarrier();
  var lsum = 0.0;
  for (var cc = 0u; cc < C; cc++) { lsum += Red[r * C + cc]; }
  if (!live) { return; }
  let inv = select(0.0, 1.0 / lsum, lsum > 0.0);
  let ob = (bh * Tq + i) * Dv;
  for (var a = 0u; a < NA; a++) {
    let d = c + a * C;
    if (d < Dv) { O[ob + d] = acc[a] * inv; }
  }
  if (c == 0u) { LSE[bh * Tq + i] = select(0.0, m + log(lsum), lsum > 0.0); }
}
