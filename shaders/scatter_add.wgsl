// Deterministic scatter-add along one axis, without atomics (WGSL has integer atomics
// only). OUT[target(e)] += SRC[e] for every element e of the iteration shape, where
// target(e) is e's coordinates with the axis coordinate replaced by I[e].
//
// Entries that hit the same output element lie in the same fiber (same coordinates
// off the axis) and carry the same index value. Two passes:
//  `chain`:   for each index entry, LINK = the axis position of the next entry of its
//             fiber with the same value (J when none), bit 31 set when an earlier entry
//             has that value (a follower). Cost O(J) per entry.
//  `scatter`: each leader (bit 31 clear) walks its chain in ascending axis order,
//             sums SRC along it, and adds the sum to its output element, which no other
//             invocation touches. The summation order is fixed: results are bitwise
//             reproducible run to run.
// Bindings: 0 params, 1 I (i32, strided), 2 LINK (u32), 3 SRC (T, strided), 4 OUT (T,
//   contiguous, already holding the base values). `chain` uses only 1 and 2.
// Params (u32 words), one layout for both passes:
//   0 n (elements iterated), 1 rank, 2 axis (a dim index), 3 J (axis size of the
//   iteration shape), 4 K (OUT's axis size), 5 I offset, 6 SRC offset, 7 unused,
//   8..13 shape, 14..19 I strides, 20..25 SRC strides, 26..31 LINK strides,
//   32..37 OUT strides (on the axis: the stride of the target coordinate).
//   For `chain` the shape is the index's distinct entries (broadcast dims of size 1)
//   and LINK is written contiguously over it.
// Defines: ENABLE (f16), T (storage type), ACC (accumulation type).
// Workgroup: 256 invocations, one element each; 2D grid for large n.
// An index outside [0, K) is ignored (no host check: that would need a readback).
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 10>;
@group(0) @binding(1) var<storage, read> I: array<i32>;
@group(0) @binding(2) var<storage, read_write> LINK: array<u32>;
@group(0) @binding(3) var<storage, read> SRC: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> OUT: array<{{T}}>;

const FOLLOWER: u32 = 0x80000000u;

//#include "lib/params.wgsl"

struct At {
  // Offsets off the axis (axis coordinate 0) into I, SRC, LINK, OUT (without the
  // I / SRC base offsets), and the axis coordinate.
  off: vec4<u32>,
  ca: u32,
}

fn locate(i: u32) -> At {
  var rem = i;
  var off = vec4<u32>(0u);
  var ca = 0u;
  let axis = pu(2u);
  for (var d = i32(pu(1u)) - 1; d >= 0; d--) {
    let k = u32(d);
    let dim = pu(8u + k);
    let c = rem % dim;
    rem /= dim;
    if (k == axis) {
      ca = c;
    } else {
      off += c * vec4<u32>(pu(14u + k), pu(20u + k), pu(26u + k), pu(32u + k));
    }
  }
  return At(off, ca);
}

@compute @workgroup_size(256)
fn chain(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  let J = pu(3u);
  let at = locate(i);
  let base = pu(5u) + at.off.x;
  let st = pu(14u + pu(2u));
  let v = I[base + at.ca * st];
  var next = J;
  for (var j = at.ca + 1u; j < J; j++) {
    if (I[base + j * st] == v) { next = j; break; }
  }
  var flag = 0u;
  for (var j = 0u; j < at.ca; j++) {
    if (I[base + j * st] == v) { flag = FOLLOWER; break; }
  }
  LINK[i] = next | flag;
}

@compute @workgroup_size(256)
fn scatter(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  let axis = pu(2u);
  let J = pu(3u);
  let at = locate(i);
  let ls = pu(26u + axis);
  let first = LINK[at.off.z + at.ca * ls];
  if ((first & FOLLOWER) != 0u) { return; }
  let k = I[pu(5u) + at.off.x + at.ca * pu(14u + axis)];
  if (k < 0 || u32(k) >= pu(4u)) { return; }
  let sb = pu(6u) + at.off.y;
  let ss = pu(20u + axis);
  var acc = {{ACC}}(SRC[sb + at.ca * ss]);
  // Links only point forward; the `j > prev` test guarantees termination regardless.
  var prev = at.ca;
  var j = first;
  while (j < J && j > prev) {
    acc += {{ACC}}(SRC[sb + j * ss]);
    prev = j;
    j = LINK[at.off.z + j * ls] & ~FOLLOWER;
  }
  let o = at.off.w + u32(k) * pu(32u + axis);
  OUT[o] = {{T}}({{ACC}}(OUT[o]) + acc);
}
