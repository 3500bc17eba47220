// Constant padding with a per-dim step; also the backward of slice (the gradient
// placed every step-th element from `before` into a tensor of the fill value).
// Bindings: 0 params, 1 X (T, strided view), 2 Y (T, contiguous, output shape).
// Params (u32 words): 0 n (output elements), 1 rank, 2 X offset, 3 fill value bits
//   (f32 bits for float T, i32/u32 bits otherwise; see VALUE), 4..9 output shape,
//   10..15 X shape, 16..21 X strides, 22..27 before, 28..33 step (>= 1).
// Defines: ENABLE (f16), T (storage type), VALUE (the fill value as a T expression).
// Workgroup: 256 invocations, one output element each; 2D grid for large n.
// Along dim d an output coordinate o reads X coordinate j = (o - before) / step when
// o >= before, (o - before) % step == 0 and j < X shape; any other o gets the fill value.
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 9>;
@group(0) @binding(1) var<storage, read> X: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> Y: array<{{T}}>;

//#include "lib/params.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  var rem = i;
  var off = pu(2u);
  var inside = true;
  for (var d = i32(pu(1u)) - 1; d >= 0; d--) {
    let k = u32(d);
    let dim = pu(4u + k);
    let o = rem % dim;
    rem /= dim;
    let before = pu(22u + k);
    let step = pu(28u + k);
    if (o < before) { inside = false; break; }
    let rel = o - before;
    let j = rel / step;
    if (rel % step != 0u || j >= pu(10u + k)) { inside = false; break; }
    off += j * pu(16u + k);
  }
  if (inside) {
    Y[i] = X[off];
  } else {
    Y[i] = {{VALUE}};
  }
}
