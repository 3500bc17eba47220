// Gradient norm, stage 1: partial sums of squares of one gradient tensor.
// Bindings: 0 params, 1 G (f32 gradient, read, contiguous from its offset),
//   2 S (f32 partial sums, read_write; this dispatch writes S[base .. base + groups)).
// Params: 0 n, 1 G offset, 2 base slot.
// Workgroup: 256 invocations; a 1D grid of `groups` workgroups (at most a few hundred).
// Each invocation sums x*x over a grid-stride loop, the workgroup adds the 256 values
// by a tree in shared memory, and invocation 0 writes the group's sum to its own slot:
// no atomics, so the result does not depend on scheduling.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 1>;
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read_write> S: array<f32>;

var<workgroup> sh: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let n = P[0].x;
  let off = P[0].y;
  var acc = 0.0;
  for (var i = wid.x * 256u + lid.x; i < n; i += nwg.x * 256u) {
    let x = G[off + i];
    acc += x * x;
  }
  sh[lid.x] = acc;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid.x < s) { sh[lid.x] += sh[lid.x + s]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) { S[P[0].z + wid.x] = sh[0]; }
}
