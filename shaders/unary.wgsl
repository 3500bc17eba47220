// Unary elementwise map over a strided input, contiguous output.
// Also serves as the strided copy (OP = x) and dtype cast (TIN -> TOUT).
// Bindings: 0 params, 1 input (TIN, strided view), 2 output (TOUT, contiguous).
// Params (u32 words): 0 n, 1 rank (0 = input contiguous from its offset),
//   2 input offset, 3 unused, 4..9 shape, 10..15 input strides,
//   16, 17 scalar arguments a0, a1 (f32 bits) for ops like pow, clamp, scale.
// OP may call ipow(x, e) (integer powers, below).
// Workgroup: 256 invocations, each computes one output element; 2D grid for large n.
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 5>;
@group(0) @binding(1) var<storage, read> X: array<{{TIN}}>;
@group(0) @binding(2) var<storage, read_write> Y: array<{{TOUT}}>;

//#include "lib/params.wgsl"

fn srcIndex(i: u32) -> u32 {
  let rank = pu(1u);
  if (rank == 0u) { return pu(2u) + i; }
  var rem = i;
  var off = pu(2u);
  for (var d = i32(rank) - 1; d >= 0; d--) {
    let dim = pu(4u + u32(d));
    off += (rem % dim) * pu(10u + u32(d));
    rem /= dim;
  }
  return off;
}

// x ** e for an integer-valued e by repeated squaring (no log/exp): right sign for negative x,
// x ** 0 == 1, 1 / x first for negative e.
fn ipow(x: f32, e: f32) -> f32 {
  var n = i32(e);
  var b = x;
  if (n < 0) {
    b = 1.0 / x;
    n = -n;
  }
  var r = 1.0;
  while (n != 0) {
    if ((n & 1) == 1) { r *= b; }
    n >>= 1u;
    if (n != 0) { b *= b; }
  }
  return r;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  let a0 = pf(16u);
  let a1 = pf(17u);
  let x = {{CVT}}(X[srcIndex(i)]);
  Y[i] = {{TOUT}}({{OP}});
}
