// Softmax and log-softmax over one axis, forward and backward, each one fused kernel.
// The input is viewed as contiguous [outer, D, inner]; a row is the D elements of one
// (outer, inner) pair, spaced `inner` apart (inner = 1 for the last axis: the fast path,
// reads coalesced across invocations). Row r = (r / inner, r % inner).
// Params (u32 words): 0 rows (= outer * inner), 1 D, 2 inner, 3 offset of binding 1,
//   4 mode (0 softmax, 1 log-softmax), 5 offset of binding 2 (backward only).
// Entry `forward`: 1 X (T, input), 2 Y (T, output, contiguous like X from 0).
//   One online pass keeps a running (max, sum of exp(x - max)) per invocation; the pairs
//   are merged by a tree in workgroup memory, then a second pass writes
//   exp(x - M) / S (softmax) or x - M - log(S) (log-softmax). A row of all -inf gives
//   softmax 0 instead of NaN (fully masked attention rows).
// Entry `backward`: 1 Y (T, the saved forward output), 2 G (T, gradient), 3 DX (T, output).
//   softmax: dx = y * (g - sum(g * y)); log-softmax: dx = g - exp(y) * sum(g).
// Workgroup: WG invocations per row, each striding over the row by WG; 2D grid of rows.
{{ENABLE}}
const WG: u32 = {{WG}}u;
const BIG: f32 = 3.402823e38;

@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 2>;
@group(0) @binding(1) var<storage, read> X: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> Y: array<{{T}}>;
@group(0) @binding(1) var<storage, read> YS: array<{{T}}>;
@group(0) @binding(2) var<storage, read> G: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> DX: array<{{T}}>;

var<workgroup> shm: array<f32, WG>;
var<workgroup> shs: array<f32, WG>;

//#include "lib/params.wgsl"

// Index of element 0 of row r in a contiguous [outer, D, inner] layout.
fn rowBase(r: u32) -> u32 {
  let D = pu(1u);
  let inner = pu(2u);
  return (r / inner) * D * inner + r % inner;
}

// Sum of v over the workgroup (every invocation gets the result).
fn wgSum(lid: u32, v: f32) -> f32 {
  shs[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) { shs[lid] = shs[lid] + shs[lid + s]; }
    workgroupBarrier();
  }
  let r = shs[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= pu(0u)) { return; }
  let D = pu(1u);
  let inner = pu(2u);
  let base = rowBase(row);
  let xo = pu(3u) + base;
  // Running max m and sum s of exp(v - m) over this invocation's elements.
  var m = -BIG;
  var s = 0.0;
  for (var j = lid; j < D; j += WG) {
    let v = f32(X[xo + j * inner]);
    if (v > m) {
      s = s * exp(m - v) + 1.0;
      m = v;
    } else {
      s += exp(v - m);
    }
  }
  shm[lid] = m;
  shs[lid] = s;
  workgroupBarrier();
  for (var st = WG / 2u; st > 0u; st = st / 2u) {
    if (lid < st) {
      let m1 = shm[lid];
      let m2 = shm[lid + st];
      let mm = max(m1, m2);
      shs[lid] = shs[lid] * exp(m1 - mm) + shs[lid + st] * exp(m2 - mm);
      shm[lid] = mm;
    }
    workgroupBarrier();
  }
  let M = shm[0];
  let S = shs[0];
  if (pu(4u) == 0u) {
    let inv = select(0.0, 1.0 / S, S > 0.0);
    for (var j = lid; j < D; j += WG) {
      Y[base + j * inner] = {{T}}(exp(f32(X[xo + j * inner]) - M) * inv);
    }
  } else {
    let lse = M + log(S);
    for (var j = lid; j < D; j += WG) {
      Y[base + j * inner] = {{T}}(f32(X[xo + j * inner]) - lse);
    }
  }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= pu(0u)) { return; }
  let D = pu(1u);
  let inner = pu(2u);
  let base = rowBase(row);
  let yo = pu(3u) + base;
  let go = pu(5u) + base;
  let logMode = pu(4u) == 1u;
  var acc = 0.0;
  for (var j = lid; j < D; j += WG) {
    let g = f32(G[go + j * inner]);
    acc += select(g * f32(YS[yo + j * inner]), g, logMode);
  }
  let tot = wgSum(lid, acc);
  for (var j = lid; j < D; j += WG) {
    let y = f32(YS[yo + j * inner]);
    let g = f32(G[go + j * inner]);
    DX[base + j * inner] = {{T}}(select(y * (g - tot), g - exp(y) * tot, logMode));
  }
}
