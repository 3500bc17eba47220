// Backward of max/min: the gradient of each output goes to the position of its extreme only.
// Bindings: 0 params, 1 G (T, [outer, inner], dense from its element offset),
//   2 I (i32, [outer, inner], the extreme's index from reduce_arg, from its offset),
//   3 Y (T, [outer, R, inner], contiguous).
// Params (u32 words): 0 N = outer * R * inner, 1 R, 2 inner, 3 G offset, 4 I offset.
// Workgroup: 256 invocations, one element of Y each: Y[o, r, k] = G[o, k] if I[o, k] == r,
//   else 0. 2D grid for large N.
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 2>;
@group(0) @binding(1) var<storage, read> G: array<{{T}}>;
@group(0) @binding(2) var<storage, read> I: array<i32>;
@group(0) @binding(3) var<storage, read_write> Y: array<{{T}}>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= P[0].x) { return; }
  let R = P[0].y;
  let inner = P[0].z;
  let k = i % inner;
  let r = (i / inner) % R;
  let j = (i / (inner * R)) * inner + k;
  Y[i] = select({{T}}(0), G[P[0].w + j], u32(I[P[1].x + j]) == r);
}
