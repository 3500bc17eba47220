// Gradient clipping, stage 3: multiplies one gradient tensor in place by the clip scale.
// Bindings: 0 params, 1 G (f32 gradient, read_write, contiguous from its offset),
//   2 O (f32, read; the scale is O[scale offset], written by grad_norm_final).
// Params: 0 n, 1 G offset, 2 scale offset.
// Workgroup: 256 invocations, one element each; 2D grid for large n.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 1>;
@group(0) @binding(1) var<storage, read_write> G: array<f32>;
@group(0) @binding(2) var<storage, read> O: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= P[0].x) { return; }
  let k = P[0].y + i;
  G[k] = G[k] * O[P[0].z];
}
