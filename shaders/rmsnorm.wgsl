// RMSNorm (Qwen2 style) over the last dim: y = x * rsqrt(mean(x^2) + eps) * w.
// x is contiguous [rows, D] from its offset; w is [D].
// Params (u32 words): 0 rows, 1 D, 2 X offset, 3 W offset, 4 eps (f32 bits),
//   5 G offset (backward entries), 6 rows per chunk (entry weight_grad).
// Entry `forward`: 1 X (T), 2 W (T), 3 Y (T, [rows, D]), 4 RSTD (f32, [rows], saved for backward).
//   WG invocations per row: sum of squares by a tree in workgroup memory, then y.
// Entry `backward`: 1 X, 2 W, 3 RSTD, 4 G (T, [rows, D]), 5 DX (T, [rows, D]).
//   With r = rstd, xh = x * r, gw = g * w: dx = r * (gw - xh * mean(gw * xh)).
//   WG invocations per row, one tree reduction.
// Entry `weight_grad`: 1 X, 2 RSTD, 3 G, 4 PART (f32, [chunks, D]).
//   One invocation per (column j, chunk c) in workgroups of WG columns (grid x) by chunks
//   (grid y): PART[c, j] = sum over the chunk's rows of g * x * r. The caller sums the
//   chunks (no atomics).
{{ENABLE}}
const WG: u32 = {{WG}}u;

@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 2>;
@group(0) @binding(1) var<storage, read> X: array<{{T}}>;
@group(0) @binding(2) var<storage, read> W: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> Y: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> RSTD: array<f32>;
// backward
@group(0) @binding(3) var<storage, read> RS: array<f32>;
@group(0) @binding(4) var<storage, read> G: array<{{T}}>;
@group(0) @binding(5) var<storage, read_write> DX: array<{{T}}>;
// weight_grad
@group(0) @binding(2) var<storage, read> RSW: array<f32>;
@group(0) @binding(3) var<storage, read> GW: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> PART: array<f32>;

var<workgroup> sh: array<f32, WG>;

//#include "lib/params.wgsl"

// Sum of v over the workgroup (every invocation gets the result).
fn wgSum(lid: u32, v: f32) -> f32 {
  sh[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) { sh[lid] = sh[lid] + sh[lid + s]; }
    workgroupBarrier();
  }
  let r = sh[0];
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
  var acc = 0.0;
  for (var j = lid; j < D; j += WG) {
    let v = f32(X[xo + j]);
    acc += v * v;
  }
  let r = inverseSqrt(wgSum(lid, acc) / f32(D) + pf(4u));
  for (var j = lid; j < D; j += WG) {
    Y[row * D + j] = {{T}}(f32(X[xo + j]) * r * f32(W[wo + j]));
  }
  if (lid == 0u) { RSTD[row] = r; }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= pu(0u)) { return; }
  let D = pu(1u);
  let xo = pu(2u) + row * D;
  let wo = pu(3u);
  let go = pu(5u) + row * D;
  let r = RS[row];
  var acc = 0.0;
  for (var j = lid; j < D; j += WG) {
    acc += f32(G[go + j]) * f32(W[wo + j]) * f32(X[xo + j]);
  }
  // mean(gw * xh) = r * sum(gw * x) / D
  let c = wgSum(lid, acc) * r / f32(D);
  for (var j = lid; j < D; j += WG) {
    let gw = f32(G[go + j]) * f32(W[wo + j]);
    let xh = f32(X[xo + j]) * r;
    DX[row * D + j] = {{T}}(r * (gw - xh * c));
  }
}

@compute @workgroup_size(WG)
fn weight_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x;
  let D = pu(1u);
  if (j >= D) { return; }
  let rows = pu(0u);
  let per = pu(6u);
  let start = gid.y * per;
  let end = min(rows, start + per);
  let xo = pu(2u);
  let go = pu(5u);
  var acc = 0.0;
  for (var row = start; row < end; row++) {
    acc += f32(GW[go + row * D + j]) * f32(X[xo + row * D + j]) * RSW[row];
  }
  PART[gid.y * D + j] = acc;
}
