// Top-k along the last axis, stage 1: each invocation keeps the k largest values of one
// contiguous chunk of a row, sorted descending (ties: lower index first), by insertion into
// its slice of the output. With one chunk per row this is the final result; otherwise
// topk_merge.wgsl merges the chunks' lists.
// Bindings: 0 params, 1 X [rows, V] (f32, contiguous from its offset),
//   2 OV [rows * C, k] values (out), 3 OI [rows * C, k] indices within the row (i32, out).
// Params (u32 words): 0 rows * C, 1 V, 2 k, 3 C (chunks per row), 4 chunk length, 5 X offset.
// Workgroup: 64 invocations, one (row, chunk) each; 2D grid. A chunk shorter than k fills
// only its first (chunk length) slots.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 2>;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> OV: array<f32>;
@group(0) @binding(3) var<storage, read_write> OI: array<i32>;

//#include "lib/params.wgsl"

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let g = gid.x + gid.y * nwg.x * 64u;
  if (g >= pu(0u)) { return; }
  let V = pu(1u);
  let k = pu(2u);
  let C = pu(3u);
  let len = pu(4u);
  let row = g / C;
  let start = min((g % C) * len, V);
  let end = min(start + len, V);
  let kk = min(k, end - start);
  if (kk == 0u) { return; }
  let xb = pu(5u) + row * V;
  let ob = g * k;
  var cnt = 0u;
  for (var j = start; j < end; j++) {
    let v = X[xb + j];
    var pos: u32;
    if (cnt < kk) {
      pos = cnt;
      cnt++;
    } else if (v > OV[ob + kk - 1u]) {
      pos = kk - 1u;
    } else {
      continue;
    }
    // Shift smaller values down; equal values stay ahead (they have lower indices).
    while (pos > 0u && OV[ob + pos - 1u] < v) {
      OV[ob + pos] = OV[ob + pos - 1u];
      OI[ob + pos] = OI[ob + pos - 1u];
      pos--;
    }
    OV[ob + pos] = v;
    OI[ob + pos] = i32(j);
  }
}
