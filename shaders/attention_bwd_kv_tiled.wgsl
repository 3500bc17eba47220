// Attention backward, dK and dV for GPUs (tiled, FlashAttention-2 style): a workgroup owns a
// block of BK key rows of one (batch, kv head) and walks the query rows of every query head
// of its group (grouped-query attention) in tiles of BQ staged in workgroup memory, so the
// sums over heads and rows need no atomics. Scores are recomputed from the saved logsumexp.
//   dV_j = sum_{h,i} p_ij dO_i,  dK_j = scale * sum_{h,i} ds_ij q_i,
//   with p_ij = exp(s_ij - lse_i) and ds_ij = p_ij * (dO_i . v_j - D_i).
// Bindings: 0 params, 1 Q, 2 K, 3 V, 4 MASK, 5 KP (as in attention_fwd_tiled.wgsl; K and V
//   read in place through their strides), 6 DO [B, Hq, Tq, Dv] (contiguous from 0),
//   7 LD [B*Hq*Tq, 2] (lse, D_i), 8 DKV (out): dK [B, Hkv, Tk, D] at 0, then dV
//   [B, Hkv, Tk, Dv] from word 11 (dense).
// Params: the attention_fwd.wgsl layout; word 0 = B*Hkv*Tk, word 11 = B*Hkv*Tk*D.
// Defines: VT, W, DOT, KPT, MAX_D, NA as in attention_fwd_tiled.wgsl; BK (key rows per
//   workgroup), BQ (query rows per tile, a multiple of C), C (invocations per key row).
// Workgroup: BK * C invocations; workgroup (x, y) takes keys x*BK .. x*BK+BK-1 of kv head
//   y = b * Hkv + kvh. Invocation t serves key r = t / C, column c = t % C: per query tile it
//   computes p and ds of queries c, c + C, ... of the tile for its key, then accumulates the
//   dK and dV columns (VT units) c, c + C, ... of its key over all queries of the tile.
//   Causal: query tiles start at the first query that sees the block's first key.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 8>;
@group(0) @binding(1) var<storage, read> Q: array<{{VT}}>;
@group(0) @binding(2) var<storage, read> K: array<{{VT}}>;
@group(0) @binding(3) var<storage, read> V: array<{{VT}}>;
@group(0) @binding(4) var<storage, read> MASK: array<f32>;
@group(0) @binding(5) var<storage, read> KP: array<{{KPT}}>;
@group(0) @binding(6) var<storage, read> DO: array<{{VT}}>;
@group(0) @binding(7) var<storage, read> LD: array<f32>;
@group(0) @binding(8) var<storage, read_write> DKV: array<{{VT}}>;

const BQ: u32 = {{BQ}}u;
const BK: u32 = {{BK}}u;
const C: u32 = {{C}}u;
const WG: u32 = {{BK}}u * {{C}}u;
const NA: u32 = {{NA}}u;
const SQ: u32 = {{BQ}}u / {{C}}u;
const RS: u32 = {{MAX_D}}u + 1u;
var<workgroup> Ks: array<{{VT}}, {{BK}}u * ({{MAX_D}}u + 1u)>;
var<workgroup> Vs: array<{{VT}}, {{BK}}u * ({{MAX_D}}u + 1u)>;
var<workgroup> Qs: array<{{VT}}, {{BQ}}u * ({{MAX_D}}u + 1u)>;
var<workgroup> DOs: array<{{VT}}, {{BQ}}u * ({{MAX_D}}u + 1u)>;
var<workgroup> Ps: array<f32, {{BK}}u * {{BQ}}u>;
var<workgroup> DSs: array<f32, {{BK}}u * {{BQ}}u>;

//#include "lib/params.wgsl"
//#include "lib/attention_mask.wgsl"
fn dotv(a: {{VT}}, b: {{VT}}) -> f32 { return {{DOT}}; }

@compute @workgroup_size({{BK}} * {{C}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let Hq = pu(1u);
  let Tq = pu(2u);
  let Tk = pu(3u);
  let D = pu(4u) / {{W}}u;
  let Dv = pu(5u) / {{W}}u;
  let group = pu(6u);
  let Hkv = pu(10u);
  let bk = wid.y;
  let kvh = bk % Hkv;
  let b = bk / Hkv;
  let kRow0 = pu(21u) / {{W}}u + (b * pu(24u) + kvh * pu(25u)) / {{W}}u;
  let vRow0 = pu(22u) / {{W}}u + (b * pu(27u) + kvh * pu(28u)) / {{W}}u;
  let kStride = pu(26u) / {{W}}u;
  let vStride = pu(29u) / {{W}}u;
  let scale = pf(9u);
  let j0 = wid.x * BK;
  let r = t / C;
  let c = t % C;
  let j = j0 + r;
  let live = j < Tk;

  // Stage the block's key and value rows (rows past Tk are zero).
  for (var e = t; e < BK * D; e += WG) {
    var x = {{VT}}(0.0);
    if (j0 + e / D < Tk) { x = K[kRow0 + (j0 + e / D) * kStride + e % D]; }
    Ks[(e / D) * RS + e % D] = x;
  }
  for (var e = t; e < BK * Dv; e += WG) {
    var x = {{VT}}(0.0);
    if (j0 + e / Dv < Tk) { x = V[vRow0 + (j0 + e / Dv) * vStride + e % Dv]; }
    Vs[(e / Dv) * RS + e % Dv] = x;
  }

  // Causal: queries before the first one that sees key j0 are skipped (uniform bound).
  var iStart = 0u;
  if ((pu(7u) & 1u) != 0u) { iStart = u32(clamp(i32(j0) - bitcast<i32>(pu(8u)), 0, i32(Tq))); }

  var dk: array<{{VT}}, NA>;
  var dv: array<{{VT}}, NA>;
  for (var a = 0u; a < NA; a++) {
    dk[a] = {{VT}}(0.0);
    dv[a] = {{VT}}(0.0);
  }
  var s: array<f32, SQ>;
  var dp: array<f32, SQ>;
  for (var g = 0u; g < group; g++) {
    let h = kvh * group + g;
    let bh = b * Hq + h;
    for (var i0 = iStart; i0 < Tq; i0 += BQ) {
      workgroupBarrier();
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
      workgroupBarrier();

      for (var u = 0u; u < SQ; u++) {
        s[u] = 0.0;
        dp[u] = 0.0;
      }
      for (var d = 0u; d < D; d++) {
        let k = Ks[r * RS + d];
        for (var u = 0u; u < SQ; u++) { s[u] += dotv(Qs[(c + u * C) * RS + d], k); }
      }
      for (var d = 0u; d < Dv; d++) {
        let v = Vs[r * RS + d];
        for (var u = 0u; u < SQ; u++) { dp[u] += dotv(DOs[(c + u * C) * RS + d], v); }
      }
      for (var u = 0u; u < SQ; u++) {
        let i = i0 + c + u * C;
        var bias = MASKED;
        if (live && i < Tq) { bias = keyBias(b, h, i, j); }
        var p = 0.0;
        var ds = 0.0;
        if (bias != MASKED) {
          let qr = bh * Tq + i;
          p = exp(s[u] + bias - LD[2u * qr]);
          ds = p * (dp[u] - LD[2u * qr + 1u]);
        }
        Ps[r * BQ + c + u * C] = p;
        DSs[r * BQ + c + u * C] = ds;
      }
      workgroupBarrier();

      for (var ii = 0u; ii < BQ; ii++) {
        let p = Ps[r * BQ + ii];
        let ds = DSs[r * BQ + ii];
        for (var a = 0u; a < NA; a++) {
          let d = c + a * C;
          // Qs holds scale * q, so dk needs no final scale.
          if (d < D) { dk[a] += ds * Qs[ii * RS + d]; }
          if (d < Dv) { dv[a] += p * DOs[ii * RS + d]; }
        }
      }
    }
  }
  if (!live) { return; }
  let kOut = (bk * Tk + j) * D;
  let vOut = pu(11u) / {{W}}u + (bk * Tk + j) * Dv;
  for (var a = 0u; a < NA; a++) {
    let d = c + a * C;
    if (d < D) { DKV[kOut + d] = dk[a]; }
    if (d < Dv) { DKV[vOut + d] = dv[a]; }
  }
}
