// Fills a contiguous buffer with one value (zeros, ones, full).
// Bindings: 0 params, 1 output. Params: 0 n, 1 the value's 32 bits (f32 bits for float
// outputs, converted to f16 in the kernel where needed; i32/u32 bits otherwise).
// Workgroup: 256 invocations, one element each; 2D grid.
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 1>;
@group(0) @binding(1) var<storage, read_write> Y: array<{{TOUT}}>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= P[0].x) { return; }
  Y[i] = {{VALUE}};
}
