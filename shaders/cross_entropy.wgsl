// Cross-entropy of logits [N, V] against integer targets [N], fused log-softmax + NLL.
// Row weight w = 0 where target == ignoreIndex, else mask[row] (1 without a mask).
// A counted row whose target is outside [0, V) gets loss NaN, so a bad id cannot pass
// silently (an ignored or zero-weight row never reads its target).
// Params (u32 words): 0 N, 1 V, 2 logits offset, 3 targets offset, 4 mask offset,
//   5 has mask (0/1), 6 ignoreIndex (i32 bits), 7 reduction (0 none, 1 sum, 2 mean),
//   8 G offset (backward).
// Entry `forward`: 1 X (T logits, contiguous from offset), 2 TGT (i32), 3 MASK (f32; any
//   buffer when word 5 is 0), 4 LOSS (f32 [N]: w * (lse - x[target])), 5 LSE (f32 [N],
//   saved), 6 WT (f32 [N]: w, saved). WG invocations per row: one online (max, sum exp)
//   pass merged by a tree in workgroup memory.
// Entry `finalize`: 1 LOSS, 2 WT, 3 OUT (f32 [1]: the reduced loss), 4 DEN (f32 [1]:
//   the divisor, saved for backward). One workgroup of WG invocations sums both over N;
//   mean = sum(w * loss) / sum(w), 0 when sum(w) == 0; sum uses divisor 1.
// Entry `backward`: 1 X, 2 TGT, 3 LSE, 4 WT, 5 G (f32: [N] for reduction none, else
//   [1]), 6 DEN, 7 DX (T, [N, V]). One invocation per logit (64 per workgroup, 2D grid):
//   dx = scale * w * (exp(x - lse) - [v == target]), scale = G[row] (none), G[0] (sum),
//   G[0] / DEN[0] (mean, 0 when DEN[0] == 0).
{{ENABLE}}
const WG: u32 = {{WG}}u;
const BIG: f32 = 3.402823e38;

@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 3>;
@group(0) @binding(1) var<storage, read> X: array<{{T}}>;
@group(0) @binding(2) var<storage, read> TGT: array<i32>;
@group(0) @binding(3) var<storage, read> MASK: array<f32>;
@group(0) @binding(4) var<storage, read_write> LOSS: array<f32>;
@group(0) @binding(5) var<storage, read_write> LSE: array<f32>;
@group(0) @binding(6) var<storage, read_write> WT: array<f32>;
// finalize
@group(0) @binding(1) var<storage, read> LROW: array<f32>;
@group(0) @binding(2) var<storage, read> WROW: array<f32>;
@group(0) @binding(3) var<storage, read_write> OUT: array<f32>;
@group(0) @binding(4) var<storage, read_write> DEN: array<f32>;
// backward
@group(0) @binding(3) var<storage, read> LSEB: array<f32>;
@group(0) @binding(4) var<storage, read> WTB: array<f32>;
@group(0) @binding(5) var<storage, read> G: array<f32>;
@group(0) @binding(6) var<storage, read> DENB: array<f32>;
@group(0) @binding(7) var<storage, read_write> DX: array<{{T}}>;

var<workgroup> sa: array<f32, WG>;
var<workgroup> sb: array<f32, WG>;

//#include "lib/params.wgsl"

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= pu(0u)) { return; }
  let V = pu(1u);
  let xo = pu(2u) + row * V;
  var m = -BIG;
  var s = 0.0;
  for (var j = lid; j < V; j += WG) {
    let v = f32(X[xo + j]);
    if (v > m) {
      s = s * exp(m - v) + 1.0;
      m = v;
    } else {
      s += exp(v - m);
    }
  }
  sa[lid] = m;
  sb[lid] = s;
  workgroupBarrier();
  for (var st = WG / 2u; st > 0u; st = st / 2u) {
    if (lid < st) {
      let m1 = sa[lid];
      let m2 = sa[lid + st];
      let mm = max(m1, m2);
      sb[lid] = sb[lid] * exp(m1 - mm) + sb[lid + st] * exp(m2 - mm);
      sa[lid] = mm;
    }
    workgroupBarrier();
  }
  if (lid != 0u) { return; }
  let lse = sa[0] + log(sb[0]);
  let t = TGT[pu(3u) + row];
  var w = 1.0;
  if (pu(5u) == 1u) { w = MASK[pu(4u) + row]; }
  if (t == bitcast<i32>(pu(6u))) { w = 0.0; }
  var loss = 0.0;
  if (w != 0.0) {
    if (t < 0 || u32(t) >= V) {
      var nanBits = 0x7fc00000u;
      loss = bitcast<f32>(nanBits);
    } else {
      loss = w * (lse - f32(X[xo + u32(t)]));
    }
  }
  LOSS[row] = loss;
  LSE[row] = lse;
  WT[row] = w;
}

@compute @workgroup_size(WG)
fn finalize(@builtin(local_invocation_index) lid: u32) {
  let N = pu(0u);
  var a = 0.0;
  var b = 0.0;
  for (var i = lid; i < N; i += WG) {
    a += LROW[i];
    b += WROW[i];
  }
  sa[lid] = a;
  sb[lid] = b;
  workgroupBarrier();
  for (var st = WG / 2u; st > 0u; st = st / 2u) {
    if (lid < st) {
      sa[lid] = sa[lid] + sa[lid + st];
      sb[lid] = sb[lid] + sb[lid + st];
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    var den = 1.0;
    if (pu(7u) == 2u) { den = sb[0]; }
    OUT[0] = select(0.0, sa[0] / den, den != 0.0);
    DEN[0] = den;
  }
}

@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 64u;
  let V = pu(1u);
  if (i >= pu(0u) * V) { return; }
  let row = i / V;
  let v = i % V;
  let mode = pu(7u);
  var scale = 0.0;
  if (mode == 0u) {
    scale = G[pu(8u) + row];
  } else {
    scale = G[pu(8u)];
    if (mode == 2u) {
      let den = DENB[0];
      scale = select(0.0, scale / den, den != 0.0);
    }
  }
  let w = WTB[row];
  let p = exp(f32(X[pu(2u) + i]) - LSEB[row]);
  let onehot = select(0.0, 1.0, TGT[pu(3u) + row] == i32(v));
  DX[i] = {{T}}(scale * w * (p - onehot));
}
