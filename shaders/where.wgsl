// where(cond, a, b) with broadcasting through strides (stride 0 on broadcast dims).
// Bindings: 0 params, 1 cond (TC), 2 a (T), 3 b (T), 4 output (T, contiguous).
// Params: 0 n, 1 rank, 2 cond offset, 3 a offset, 4 b offset, 5..10 shape,
//   11..16 cond strides, 17..22 a strides, 23..28 b strides.
// Workgroup: 256 invocations, one output element each; 2D grid.
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 8>;
@group(0) @binding(1) var<storage, read> C: array<{{TC}}>;
@group(0) @binding(2) var<storage, read> A: array<{{T}}>;
@group(0) @binding(3) var<storage, read> B: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> Y: array<{{T}}>;

//#include "lib/params.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  var rem = i;
  var oc = pu(2u);
  var oa = pu(3u);
  var ob = pu(4u);
  for (var d = i32(pu(1u)) - 1; d >= 0; d--) {
    let dim = pu(5u + u32(d));
    let c = rem % dim;
    rem /= dim;
    oc += c * pu(11u + u32(d));
    oa += c * pu(17u + u32(d));
    ob += c * pu(23u + u32(d));
  }
  Y[i] = select(B[ob], A[oa], C[oc] != {{TC}}(0));
}
