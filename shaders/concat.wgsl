// Strided copy of a view X into a region of the output Y (concat and stack run it
// once per input; the region starts at element `Y offset` and has X's shape).
// Bindings: 0 params, 1 X (T, strided view), 2 Y (T, the whole output buffer).
// Params (u32 words): 0 n (elements of X), 1 rank, 2 X offset, 3 Y offset,
//   4..9 shape, 10..15 X strides, 16..21 Y strides (the output's, for the same dims).
// Defines: ENABLE (f16), T (storage type).
// Workgroup: 256 invocations, one element of X each; 2D grid for large n.
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 6>;
@group(0) @binding(1) var<storage, read> X: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> Y: array<{{T}}>;

//#include "lib/params.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  var rem = i;
  var xo = pu(2u);
  var yo = pu(3u);
  for (var d = i32(pu(1u)) - 1; d >= 0; d--) {
    let k = u32(d);
    let dim = pu(4u + k);
    let c = rem % dim;
    rem /= dim;
    xo += c * pu(10u + k);
    yo += c * pu(16u + k);
  }
  Y[yo] = X[xo];
}
