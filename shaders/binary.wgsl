// Binary elementwise map with broadcasting through strides (a broadcast dim has stride 0).
// Bindings: 0 params, 1 A (strided), 2 B (strided), 3 output (contiguous).
// Params (u32 words): 0 n, 1 rank, 2 A offset, 3 B offset, 4..9 output shape,
//   10..15 A strides, 16..21 B strides, 22 flags (bit0 A contiguous, bit1 B contiguous),
//   23 scalar argument a0 (f32 bits).
// Workgroup: 256 invocations, one output element each; 2D grid for large n.
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 6>;
@group(0) @binding(1) var<storage, read> A: array<{{TIN}}>;
@group(0) @binding(2) var<storage, read> B: array<{{TIN}}>;
@group(0) @binding(3) var<storage, read_write> Y: array<{{TOUT}}>;

//#include "lib/params.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  let flags = pu(22u);
  var ia = pu(2u) + i;
  var ib = pu(3u) + i;
  if ((flags & 3u) != 3u) {
    var rem = i;
    var oa = pu(2u);
    var ob = pu(3u);
    for (var d = i32(pu(1u)) - 1; d >= 0; d--) {
      let dim = pu(4u + u32(d));
      let c = rem % dim;
      rem /= dim;
      oa += c * pu(10u + u32(d));
      ob += c * pu(16u + u32(d));
    }
    if ((flags & 1u) == 0u) { ia = oa; }
    if ((flags & 2u) == 0u) { ib = ob; }
  }
  let a0 = pf(23u);
  let a = {{CVT}}(A[ia]);
  let b = {{CVT}}(B[ib]);
  Y[i] = {{TOUT}}({{OP}});
}
