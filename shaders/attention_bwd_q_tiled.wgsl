// Attention backward, dQ for GPUs (tiled, FlashAttention-2 style): a workgroup owns a block
// of BQ query rows of one (batch, query head) and walks the keys in tiles of BK staged in
// workgroup memory. Scores are recomputed from Q, K and the saved logsumexp, never stored
// beyond one tile; no atomics.
//   p_ij = exp(s_ij - lse_i), ds_ij = p_ij * (dO_i . v_j - D_i), dQ_i = scale * sum_j ds_ij k_j.
// Bindings: 0 params, 1 Q, 2 K, 3 V, 4 MASK, 5 KP (as in attention_fwd_tiled.wgsl; K and V
//   read in place through their strides), 6 DO [B, Hq, Tq, Dv] (contiguous from 0),
//   7 LD [B*Hq*Tq, 2] (lse, D_i), 8 DQ [B, Hq, Tq, D] (out).
// Params: the attention_fwd.wgsl layout; word 0 = B*Hq*Tq.
// Defines: VT, W, DOT, KPT, MAX_D, BQ, BK, C, NA (as in attention_fwd_tiled.wgsl).
// Workgroup: BQ * C invocations; workgroup (x, y) takes rows x*BQ .. of query head y =
//   b * Hq + h. Invocation t serves row r = t / C, column c = t % C: per tile it computes
//   ds for keys c, c + C, ... of its row, then accumulates dQ columns (VT units) c, c + C,
//   ... of its row over all keys of the tile. Keys hidden from a row contribute nothing,
//   so a row with no visible key gets dQ = 0.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 8>;
@group(0) @binding(1) var<storage, read> Q: array<{{VT}}>;
@group(0) @binding(2) var<storage, read> K: array<{{VT}}>;
@group(0) @binding(3) var<storage, read> V: array<{{VT}}>;
@group(0) @binding(4) var<storage, read> MASK: array<f32>;
@group(0) @binding(5) var<storage, read> KP: array<{{KPT}}>;
@group(0) @binding(6) var<storage, read> DO: array<{{VT}}>;
@group(0) @binding(7) var<storage, read> LD: array<f32>;
@group(0) @binding(8) var<storage, read_write> DQ: array<{{VT}}>;

const BQ: u32 = {{BQ}}u;
const BK: u32 = {{BK}}u;
const C: u32 = {{C}}u;
const WG: u32 = {{BQ}}u * {{C}}u;
const NA: u32 = {{NA}}u;
const SK: u32 = {{BK}}u / {{C}}u;
const RS: u32 = {{MAX_D}}u + 1u;
var<workgroup> Qs: array<{{VT}}, {{BQ}}u * ({{MAX_D}}u + 1u)>;
var<workgroup> DOs: array<{{VT}}, {{BQ}}u * ({{MAX_D}}u + 1u)>;
var<workgroup> Ks: array<{{VT}}, {{BK}}u * ({{MAX_D}}u + 1u)>;
var<workgroup> Vs: array<{{VT}}, {{BK}}u * ({{MAX_D}}u + 1u)>;
var<workgroup> DSs: array<f32, {{BQ}}u * {{BK}}u>;

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

  // Stage the block's (pre-scaled) query rows and output gradients.
  let qBase = pu(20u) / {{W}}u + (bh * Tq + i0) * D;
  for (var e = t; e < BQ * D; e += WG) {
    var x = {{VT}}(0.0);
    if (i0 + e / D < Tq) { x = Q[qBase + e] * scale; }
    Qs[(e / D) * RS + e % D] = x;
  }
  let oBase = (bh * Tq + i0) * Dv;
  for (var e = t; e < BQ * Dv; e += WG) {
    var x = {{VT}}(0.0);
    if (i0 + e / Dv < Tq) { x = DO[oBase + e]; }
    DOs[(e / Dv) * RS + e % Dv] = x;
  }
  var lse = 0.0;
  var Di = 0.0;
  if (live) {
    lse = LD[2u * (bh * Tq + i)];
    Di = LD[2u * (bh * Tq + i) + 1u];
  }

  var kEnd = Tk;
  if ((pu(7u) & 1u) != 0u) {
    let iLast = min(i0 + BQ, Tq) - 1u;
    kEnd = u32(clamp(bitcast<i32>(pu(8u)) + i32(iLast) + 1, 0, i32(Tk)));
  }

  var dq: array<{{VT}}, NA>;
  for (var a = 0u; a < NA; a++) { dq[a] = {{VT}}(0.0); }
  var s: array<f32, SK>;
  var dp: array<f32, SK>;
  for (var j0 = 0u; j0 < kEnd; j0 += BK) {
    workgroupBarrier();
    for (var e = t; e < BK * D; e += WG) {
      let jj = e / D;
      var x = {{VT}}(0.0);
      if (j0 + jj < Tk) { x = K[kRow0 + (j0 + jj) * kStride + e % D]; }
      Ks[jj * RS + e % D] = x;
    }
    for (var e = t; e < BK * Dv; e += WG) {
      let jj = e / Dv;
      var x = {{VT}}(0.0);
      if (j0 + jj < Tk) { x = V[vRow0 + (j0 + jj) * vStride + e % Dv]; }
      Vs[jj * RS + e % Dv] = x;
    }
    workgroupBarrier();

    for (var u = 0u; u < SK; u++) {
      s[u] = 0.0;
      dp[u] = 0.0;
    }
    for (var d = 0u; d < D; d++) {
      let q = Qs[r * RS + d];
      for (var u = 0u; u < SK; u++) { s[u] += dotv(q, Ks[(c + u * C) * RS + d]); }
    }
    for (var d = 0u; d < Dv; d++) {
      let o = DOs[r * RS + d];
      for (var u = 0u; u < SK; u++) { dp[u] += dotv(o, Vs[(c + u * C) * RS + d]); }
    }
    for (var u = 0u; u < SK; u++) {
      let j = j0 + c + u * C;
      var bias = MASKED;
      if (live && j < kEnd) { bias = keyBias(b, h, i, j); }
      var ds = 0.0;
      if (bias != MASKED) { ds = exp(s[u] + bias - lse) * (dp[u] - Di); }
      DSs[r * BK + c + u * C] = ds;
    }
    workgroupBarrier();

    for (var jj = 0u; jj < BK; jj++) {
      let ds = DSs[r * BK + jj];
      for (var a = 0u; a < NA; a++) {
        let d = c + a * C;
        if (d < D) { dq[a] += ds * Ks[jj * RS + d]; }
      }
    }
  }
  if (!live) { return; }
  let qb = (bh * Tq + i) * D;
  for (var a = 0u; a < NA; a++) {
    let d = c + a * C;
    if (d < D) { DQ[qb + d] = dq[a] * scale; }
  }
}
