// Attention backward, step 3: dK and dV, one key row per invocation. The invocation loops
// over the query heads of its kv head (grouped-query attention) and their query rows, so
// the sums over heads need no float atomics:
//   dV_j = sum_{h,i} p_ij dO_i,  dK_j = scale * sum_{h,i} ds_ij q_i,
//   with p_ij = exp(s_ij - lse_i) and ds_ij = p_ij * (dO_i . v_j - D_i).
// Bindings: 0 params, 1 Q, 2 K, 3 V, 4 MASK, 5 KP (as in attention_fwd.wgsl),
//   6 DO [B, Hq, Tq, Dv] (contiguous from 0), 7 LD [B*Hq*Tq, 2] (lse, D_i),
//   8 DKV (out): dK [B, Hkv, Tk, D] at 0, then dV [B, Hkv, Tk, Dv] from word 11 (one
//   output buffer keeps the binding count within the default limit of 8 storage buffers).
// Params: the attention_fwd.wgsl layout; word 0 = B*Hkv*Tk, word 11 = B*Hkv*Tk*D.
// Defines: MAX_D, KPT. Workgroup: 64 invocations, one key row (b, kv head, j) each.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 6>;
@group(0) @binding(1) var<storage, read> Q: array<{{VT}}>;
@group(0) @binding(2) var<storage, read> K: array<{{VT}}>;
@group(0) @binding(3) var<storage, read> V: array<{{VT}}>;
@group(0) @binding(4) var<storage, read> MASK: array<f32>;
@group(0) @binding(5) var<storage, read> KP: array<{{KPT}}>;
@group(0) @binding(6) var<storage, read> DO: array<{{VT}}>;
@group(0) @binding(7) var<storage, read> LD: array<f32>;
@group(0) @binding(8) var<storage, read_write> DKV: array<{{VT}}>;

//#include "lib/params.wgsl"
//#include "lib/attention_mask.wgsl"
fn dotv(a: {{VT}}, b: {{VT}}) -> f32 { return {{DOT}}; }

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = gid.x + gid.y * nwg.x * 64u;
  if (r >= pu(0u)) { return; }
  let Hq = pu(1u);
  let Tq = pu(2u);
  let Tk = pu(3u);
  let D = pu(4u) / {{W}}u;
  let Dv = pu(5u) / {{W}}u;
  let group = pu(6u);
  let Hkv = pu(10u);
  let j = r % Tk;
  let bk = r / Tk;
  let kvh = bk % Hkv;
  let b = bk / Hkv;
  let scale = pf(9u);

  var k: array<{{VT}}, {{MAX_D}}>;
  var v: array<{{VT}}, {{MAX_D}}>;
  var dk: array<{{VT}}, {{MAX_D}}>;
  var dv: array<{{VT}}, {{MAX_D}}>;
  let kb = pu(21u) / {{W}}u + r * D;
  let vb = pu(22u) / {{W}}u + r * Dv;
  for (var d = 0u; d < D; d++) { k[d] = K[kb + d]; }
  for (var d = 0u; d < Dv; d++) { v[d] = V[vb + d]; }
  // Causal: only queries at absolute position >= j see this key.
  var iStart = 0u;
  if ((pu(7u) & 1u) != 0u) { iStart = u32(max(i32(j) - bitcast<i32>(pu(8u)), 0)); }
  for (var g = 0u; g < group; g++) {
    let h = kvh * group + g;
    for (var i = iStart; i < Tq; i++) {
      let bias = keyBias(b, h, i, j);
      if (bias == MASKED) { continue; }
      let qr = (b * Hq + h) * Tq + i;
      let qb = pu(20u) / {{W}}u + qr * D;
      var s = 0.0;
      for (var d = 0u; d < D; d++) { s += dotv(Q[qb + d] * scale, k[d]); }
      s += bias;
      let p = exp(s - LD[2u * qr]);
      let ob = qr * Dv;
      var dp = 0.0;
      for (var d = 0u; d < Dv; d++) {
        let o = DO[ob + d];
        dp += dotv(o, v[d]);
        dv[d] += p * o;
      }
      let ds = p * (dp - LD[2u * qr + 1u]);
      for (var d = 0u; d < D; d++) { dk[d] += ds * Q[qb + d]; }
    }
  }
  for (var d = 0u; d < D; d++) { DKV[r * D + d] = dk[d] * scale; }
  let vOut = pu(11u) / {{W}}u + r * Dv;
  for (var d = 0u; d < Dv; d++) { DKV[vOut + d] = dv[d]; }
}
