// SwiGLU, y = silu(gate) * up = gate * sigmoid(gate) * up, elementwise over operands of one
// shape, each read through its own strides (views are read in place).
// Entry `forward`: 1 GATE (T), 2 UP (T), 3 Y (T, contiguous).
// Entry `backward`: 1 GATE, 2 UP, 3 DY (T, strided), 4 DGATE (T, contiguous), 5 DUP (T,
//   contiguous). With s = sigmoid(gate):
//   dgate = dy * up * s * (1 + gate * (1 - s)),  dup = dy * gate * s.
// Params (u32 words): 0 n, 1 rank (of the collapsed shape), 2 GATE offset, 3 UP offset,
//   4 DY offset, 5 flags (bit0 GATE, bit1 UP, bit2 DY contiguous from its offset),
//   8..13 shape, 14..19 GATE strides, 20..25 UP strides, 26..31 DY strides.
// Workgroup: 256 invocations, one element each (all three operands at the same
// coordinate); 2D grid for large n. Arithmetic in f32 whatever the storage type T.
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 8>;
@group(0) @binding(1) var<storage, read> GATE: array<{{T}}>;
@group(0) @binding(2) var<storage, read> UP: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> Y: array<{{T}}>;
// backward
@group(0) @binding(3) var<storage, read> DY: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> DGATE: array<{{T}}>;
@group(0) @binding(5) var<storage, read_write> DUP: array<{{T}}>;

//#include "lib/params.wgsl"

// Element offsets of coordinate i (row-major over the shape) in each of three operands;
// a contiguous operand skips the walk.
fn offsets(i: u32, nOps: u32) -> vec3<u32> {
  let flags = pu(5u);
  var o = vec3<u32>(pu(2u) + i, pu(3u) + i, pu(4u) + i);
  let need = select(3u, 7u, nOps == 3u);
  if ((flags & need) == need) { return o; }
  var rem = i;
  var s = vec3<u32>(pu(2u), pu(3u), pu(4u));
  for (var d = i32(pu(1u)) - 1; d >= 0; d--) {
    let dim = pu(8u + u32(d));
    let c = rem % dim;
    rem /= dim;
    s += c * vec3<u32>(pu(14u + u32(d)), pu(20u + u32(d)), pu(26u + u32(d)));
  }
  if ((flags & 1u) == 0u) { o.x = s.x; }
  if ((flags & 2u) == 0u) { o.y = s.y; }
  if ((flags & 4u) == 0u) { o.z = s.z; }
  return o;
}

// sigmoid without overflow trouble: exp(-x) may be inf for x < -88, and 1 / inf = 0.
fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  let o = offsets(i, 2u);
  let g = f32(GATE[o.x]);
  let u = f32(UP[o.y]);
  Y[i] = {{T}}(g * sigmoid(g) * u);
}

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  let o = offsets(i, 3u);
  let g = f32(GATE[o.x]);
  let u = f32(UP[o.y]);
  let dy = f32(DY[o.z]);
  let s = sigmoid(g);
  DGATE[i] = {{T}}(dy * u * s * (1.0 + g * (1.0 - s)));
  DUP[i] = {{T}}(dy * g * s);
}
