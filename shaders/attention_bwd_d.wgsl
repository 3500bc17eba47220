// Attention backward, step 1: per query row, packs (logsumexp, D_i = rowsum(dO * O)) into LD.
// Bindings: 0 params, 1 O [rows, Dv], 2 DO [rows, Dv], 3 LSE [rows] (all contiguous from 0),
//   4 LD [rows, 2] (out).
// Params: 0 rows, 1 Dv.
// Workgroup: 64 invocations, one query row each.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 1>;
@group(0) @binding(1) var<storage, read> O: array<f32>;
@group(0) @binding(2) var<storage, read> DO: array<f32>;
@group(0) @binding(3) var<storage, read> LSE: array<f32>;
@group(0) @binding(4) var<storage, read_write> LD: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = gid.x + gid.y * nwg.x * 64u;
  if (r >= P[0].x) { return; }
  let Dv = P[0].y;
  var s = 0.0;
  for (var d = 0u; d < Dv; d++) { s += DO[r * Dv + d] * O[r * Dv + d]; }
  LD[2u * r] = LSE[r];
  LD[2u * r + 1u] = s;
}
