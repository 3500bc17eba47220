// Fused attention forward: O = softmax(scale * Q K^T + bias) V with an online softmax,
// one query row per invocation (no shared memory, no barriers: on lavapipe the
// invocations of a workgroup run as SIMD lanes and barriers are expensive). Scores are
// never stored; memory is linear in the sequence lengths.
// Bindings: 0 params, 1 Q [B, Hq, Tq, D] (contiguous from its offset), 2 K [B, Hkv, Tk, D],
//   3 V [B, Hkv, Tk, Dv] (K and V: dense rows, any b / h / t strides, e.g. KV-cache views), 4 MASK (f32 additive, strided, broadcast via stride 0),
//   5 KP (key padding, KPT, strided [B, Tk]; 0 = padded), 6 O [B, Hq, Tq, Dv] (out),
//   7 LSE [B, Hq, Tq] (out: logsumexp of the row's scores, for the backward).
//   Unused MASK / KP slots are bound to any read-only buffer and never read.
// Params (u32 words; shared with attention_bwd_q / attention_bwd_kv):
//   0 rows (= B*Hq*Tq here), 1 Hq, 2 Tq, 3 Tk, 4 D, 5 Dv, 6 group (= Hq / Hkv),
//   7 flags (bit0 causal, bit1 mask, bit2 key padding), 8 qOffset (i32), 9 scale (f32),
//   10 Hkv, 11 dV base in the dK|dV output (bwd_kv only),
//   12 mask offset, 13..16 mask strides (b, h, i, j), 17 KP offset, 18..19 KP strides (b, j),
//   20 Q offset, 21 K offset, 22 V offset, 23 unused,
//   24..26 K strides (b, h, t), 27..29 V strides (b, h, t) (forward only; the backward
//   kernels get contiguous K and V).
// Defines: MAX_D (private array length >= D and Dv), KPT (key padding element type).
// Workgroup: 64 invocations; invocation r computes output row r = (b*Hq + h)*Tq + i,
// reading kv head h / group. Query i sits at absolute position qOffset + i; causal keys
// j > qOffset + i are skipped. A row with no visible key gets O = 0 (and LSE = 0).
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 8>;
@group(0) @binding(1) var<storage, read> Q: array<{{VT}}>;
@group(0) @binding(2) var<storage, read> K: array<{{VT}}>;
@group(0) @binding(3) var<storage, read> V: array<{{VT}}>;
@group(0) @binding(4) var<storage, read> MASK: array<f32>;
@group(0) @binding(5) var<storage, read> KP: array<{{KPT}}>;
@group(0) @binding(6) var<storage, read_write> O: array<{{VT}}>;
@group(0) @binding(7) var<storage, read_write> LSE: array<f32>;

//#include "lib/params.wgsl"
//#include "lib/attention_mask.wgsl"
fn dotv(a: {{VT}}, b: {{VT}}) -> f32 { return {{DOT}}; }

// One past the last key query i may see (causal), else Tk.
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
  let kvh = h / pu(6u);
  // Element offsets of this (b, kv head)'s key / value row 0; row j adds j * t-stride.
  let kRow0 = pu(21u) + b * pu(24u) + kvh * pu(25u);
  let vRow0 = pu(22u) + b * pu(27u) + kvh * pu(28u);
  let scale = pf(9u);

  // The query, pre-scaled (the backward recomputes scores the same way).
  var q: array<{{VT}}, {{MAX_D}}>;
  let qb = pu(20u) / {{W}}u + r * D;
  for (var d = 0u; d < D; d++) { q[d] = Q[qb + d] * scale; }
  var acc: array<{{VT}}, {{MAX_D}}>;
  var m = MASKED;
  var l = 0.0;
  let jEnd = keyEnd(i, Tk);
  for (var j = 0u; j < jEnd; j++) {
    let bias = keyBias(b, h, i, j);
    if (bias == MASKED) { continue; }
    let kb = (kRow0 + j * pu(26u)) / {{W}}u;
    var s = 0.0;
    for (var d = 0u; d < D; d++) { s += dotv(q[d], K[kb + d]); }
    s += bias;
    if (s > m) {
      // A new running max: rescale what was accumulated so far.
      let c = exp(m - s);
      l *= c;
      for (var d = 0u; d < Dv; d++) { acc[d] *= c; }
      m = s;
    }
    let p = exp(s - m);
    l += p;
    let vb = (vRow0 + j * pu(29u)) / {{W}}u;
    for (var d = 0u; d < Dv; d++) { acc[d] += p * V[vb + d]; }
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  let ob = r * Dv;
  for (var d = 0u; d < Dv; d++) { O[ob + d] = acc[d] * inv; }
  LSE[r] = select(0.0, m + log(l), l > 0.0);
}
