// LayerNorm over the last dim: y = (x - mean) * rsqrt(var + eps) * w + b (biased variance).
// x is contiguous [rows, D] from its offset; w, b are [D].
// Params (u32 words): 0 rows, 1 D, 2 X offset, 3 W offset, 4 B offset, 5 G offset,
//   6 eps (f32 bits), 7 rows per chunk (entry param_grad).
// Entry `forward`: 1 X (T), 2 W (T), 3 B (T), 4 Y (T, [rows, D]),
//   5 STATS (f32, [rows, 2]: mean, rstd; saved for backward).
//   WG invocations per row: mean by one tree reduction, then the variance as the mean of
//   (x - mean)^2 by a second (two passes: no cancellation for rows with a large mean).
// Entry `backward`: 1 X, 2 W, 3 STATS, 4 G (T, [rows, D]), 5 DX (T, [rows, D]).
//   With xh = (x - mean) * r, gw = g * w: dx = r * (gw - mean(gw) - xh * mean(gw * xh));
//   both means come from one tree over pairs.
// Entry `param_grad`: 1 X, 2 STATS, 3 G, 4 PW (f32, [chunks, D]), 5 PB (f32, [chunks, D]).
//   One invocation per (column j, chunk c), workgroups of WG columns (grid x) by chunks
//   (grid y): PW[c, j] = sum of g * xh, PB[c, j] = sum of g over the chunk's rows.
//   The caller sums the chunks (no atomics).
{{ENABLE}}
const WG: u32 = {{WG}}u;

@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 2>;
@group(0) @binding(1) var<storage, read> X: array<{{T}}>;
@group(0) @binding(2) var<storage, read> W: array<{{T}}>;
@group(0) @binding(3) var<storage, read> B: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> Y: array<{{T}}>;
@group(0) @binding(5) var<storage, read_write> STATS: array<f32>;
// backward
@group(0) @binding(3) var<storage, read> ST: array<f32>;
@group(0) @binding(4) var<storage, read> G: array<{{T}}>;
@group(0) @binding(5) var<storage, read_write> DX: array<{{T}}>;
// param_grad
@group(0) @binding(2) var<storage, read> STP: array<f32>;
@group(0) @binding(3) var<storage, read> GP: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> PW: array<f32>;
@group(0) @binding(5) var<storage, read_write> PB: array<f32>;

var<workgroup> sa: array<f32, WG>;
var<workgroup> sb: array<f32, WG>;

//#include "lib/params.wgsl"

// Sums of (a, b) over the workgroup (every invocation gets them).
fn wgSum2(lid: u32, a: f32, b: f32) -> vec2<f32> {
  sa[lid] = a;
  sb[lid] = b;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) {
      sa[lid] = sa[lid] + sa[lid + s];
      sb[lid] = sb[lid] + sb[lid + s];
    }
    workgroupBarrier();
  }
  let r = vec2<f32>(sa[0], sb[0]);
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= pu(0u)) { return; }
  let D = pu(1u);
  let xo = pu(2u) + row * D;
  let wo = pu(3u);
  let bo = pu(4u);
  var acc = 0.0;
  for (var j = lid; j < D; j += WG) { acc += f32(X[xo + j]); }
  let mean = wgSum2(lid, acc, 0.0).x / f32(D);
  var acc2 = 0.0;
  for (var j = lid; j < D; j += WG) {
    let d = f32(X[xo + j]) - mean;
    acc2 += d * d;
  }
  let r = inverseSqrt(wgSum2(lid, acc2, 0.0).x / f32(D) + pf(6u));
  for (var j = lid; j < D; j += WG) {
    Y[row * D + j] = {{T}}((f32(X[xo + j]) - mean) * r * f32(W[wo + j]) + f32(B[bo + j]));
  }
  if (lid == 0u) {
    STATS[2u * row] = mean;
    STATS[2u * row + 1u] = r;
  }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= pu(0u)) { return; }
  let D = pu(1u);
  let xo = pu(2u) + row * D;
  let wo = pu(3u);
  let go = pu(5u) + row * D;
  let mean = ST[2u * row];
  let r = ST[2u * row + 1u];
  var a = 0.0;
  var b = 0.0;
  for (var j = lid; j < D; j += WG) {
    let gw = f32(G[go + j]) * f32(W[wo + j]);
    a += gw;
    b += gw * (f32(X[xo + j]) - mean) * r;
  }
  let s = wgSum2(lid, a, b) / f32(D);
  for (var j = lid; j < D; j += WG) {
    let gw = f32(G[go + j]) * f32(W[wo + j]);
    let xh = (f32(X[xo + j]) - mean) * r;
    DX[row * D + j] = {{T}}(r * (gw - s.x - xh * s.y));
  }
}

@compute @workgroup_size(WG)
fn param_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x;
  let D = pu(1u);
  if (j >= D) { return; }
  let rows = pu(0u);
  let per = pu(7u);
  let start = gid.y * per;
  let end = min(rows, start + per);
  let xo = pu(2u);
  let go = pu(5u);
  var aw = 0.0;
  var ab = 0.0;
  for (var row = start; row < end; row++) {
    let g = f32(GP[go + row * D + j]);
    aw += g * (f32(X[xo + row * D + j]) - STP[2u * row]) * STP[2u * row + 1u];
    ab += g;
  }
  PW[gid.y * D + j] = aw;
  PB[gid.y * D + j] = ab;
}
