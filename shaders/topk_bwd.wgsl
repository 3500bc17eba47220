// Backward of top-k: scatters the gradient of each kept value to its source position.
// DX must be zero-filled first; indices within a row are distinct, so writes never collide.
// Bindings: 0 params, 1 G [rows, k] (contiguous from its offset), 2 I [rows, k] (i32,
//   contiguous from 0), 3 DX [rows, V] (out).
// Params (u32 words): 0 rows * k, 1 k, 2 V, 3 G offset.
// Workgroup: 256 invocations, one kept element each; 2D grid.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 1>;
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read> I: array<i32>;
@group(0) @binding(3) var<storage, read_write> DX: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let e = gid.x + gid.y * nwg.x * 256u;
  if (e >= P[0].x) { return; }
  let row = e / P[0].y;
  DX[row * P[0].z + u32(I[e])] = G[P[0].w + e];
}
