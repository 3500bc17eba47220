// Gather along one axis: Y[c] = X[xbase(c) + I[ibase(c)] * kStride] for every output
// coordinate c. Serves gather (torch.gather), indexSelect and embedding: the caller
// gives, per output dim, X's stride (0 on the gathered axis and on dims X does not
// have) and the index's stride (0 where the index is broadcast).
// Bindings: 0 params, 1 X (T, strided view), 2 I (i32, strided view), 3 Y (T, contiguous).
// Params (u32 words): 0 n (output elements), 1 rank, 2 X offset, 3 I offset,
//   4 K (size of X's gathered axis), 5 kStride (X's stride on that axis), 6, 7 unused,
//   8..13 output shape, 14..19 X strides, 20..25 I strides.
// Defines: ENABLE (f16), T (storage type).
// Workgroup: 256 invocations, one output element each; 2D grid for large n.
// An index outside [0, K) reads 0 (no bounds check on the host: that would need a readback).
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 7>;
@group(0) @binding(1) var<storage, read> X: array<{{T}}>;
@group(0) @binding(2) var<storage, read> I: array<i32>;
@group(0) @binding(3) var<storage, read_write> Y: array<{{T}}>;

//#include "lib/params.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  var rem = i;
  var xo = pu(2u);
  var io = pu(3u);
  for (var d = i32(pu(1u)) - 1; d >= 0; d--) {
    let k = u32(d);
    let dim = pu(8u + k);
    let c = rem % dim;
    rem /= dim;
    xo += c * pu(14u + k);
    io += c * pu(20u + k);
  }
  let k = I[io];
  if (k < 0 || u32(k) >= pu(4u)) {
    Y[i] = {{T}}(0);
    return;
  }
  Y[i] = X[xo + u32(k) * pu(5u)];
}
