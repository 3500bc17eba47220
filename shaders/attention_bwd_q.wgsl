// Attention backward, step 2: dQ, one query row per invocation (FlashAttention-2 style:
// scores are recomputed from Q, K and the saved logsumexp, never stored).
//   p_ij = exp(s_ij - lse_i), ds_ij = p_ij * (dO_i . v_j - D_i), dQ_i = scale * sum_j ds_ij k_j.
// Bindings: 0 params, 1 Q, 2 K, 3 V, 4 MASK, 5 KP (as in attention_fwd.wgsl),
//   6 DO [B, Hq, Tq, Dv] (contiguous from 0), 7 LD [B*Hq*Tq, 2] (lse, D_i),
//   8 DQ [B, Hq, Tq, D] (out).
// Params: the attention_fwd.wgsl layout; word 0 = B*Hq*Tq.
// Defines: MAX_D, KPT. Workgroup: 64 invocations, one query row each; keys hidden from
// the row contribute nothing, so a row with no visible key gets dQ = 0.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 6>;
@group(0) @binding(1) var<storage, read> Q: array<{{VT}}>;
@group(0) @binding(2) var<storage, read> K: array<{{VT}}>;
@group(0) @binding(3) var<storage, read> V: array<{{VT}}>;
@group(0) @binding(4) var<storage, read> MASK: array<f32>;
@group(0) @binding(5) var<storage, read> KP: array<{{KPT}}>;
@group(0) @binding(6) var<storage, read> DO: array<{{VT}}>;
@group(0) @binding(7) var<storage, read> LD: array<f32>;
@group(0) @binding(8) var<storage, read_write> DQ: array<{{VT}}>;

//#include "lib/params.wgsl"
//#include "lib/attention_mask.wgsl"
fn dotv(a: {{VT}}, b: {{VT}}) -> f32 { return {{DOT}}; }

fn keyEnd(i: u32, Tk: u32) -> u32 {
  if ((pu(7u) & 1u) == 0u) { return Tk; }
  return u32(clamp(bitcast<i32>(pu(8u)) + i32(i) + 1, 0, i32(Tk)));
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = gid.x + gid.y * nwg.x * 64u;
  if (r >= pu(0u)) { return; }
  let Hq = pu(1u);
  let Tq = pu(2u);
  let Tk = pu(3u);
  let D = pu(4u) / {{W}}u;
  let Dv = pu(5u) / {{W}}u;
  let i = r % Tq;
  let bh = r / Tq;
  let h = bh % Hq;
  let b = bh / Hq;
  let kvRow = (b * pu(10u) + h / pu(6u)) * Tk;
  let scale = pf(9u);

  var q: array<{{VT}}, {{MAX_D}}>;
  var dO: array<{{VT}}, {{MAX_D}}>;
  var dq: array<{{VT}}, {{MAX_D}}>;
  let qb = pu(20u) / {{W}}u + r * D;
  for (var d = 0u; d < D; d++) { q[d] = Q[qb + d] * scale; }
  for (var d = 0u; d < Dv; d++) { dO[d] = DO[r * Dv + d]; }
  let lse = LD[2u * r];
  let Di = LD[2u * r + 1u];
  let jEnd = keyEnd(i, Tk);
  for (var j = 0u; j < jEnd; j++) {
    let bias = keyBias(b, h, i, j);
    if (bias == MASKED) { continue; }
    let kb = pu(21u) / {{W}}u + (kvRow + j) * D;
    var s = 0.0;
    for (var d = 0u; d < D; d++) { s += dotv(q[d], K[kb + d]); }
    s += bias;
    let p = exp(s - lse);
    let vb = pu(22u) / {{W}}u + (kvRow + j) * Dv;
    var dp = 0.0;
    for (var d = 0u; d < Dv; d++) { dp += dotv(dO[d], V[vb + d]); }
    let ds = p * (dp - Di);
    for (var d = 0u; d < D; d++) { dq[d] += ds * K[kb + d]; }
  }
  for (var d = 0u; d < D; d++) { DQ[r * D + d] = dq[d] * scale; }
}
