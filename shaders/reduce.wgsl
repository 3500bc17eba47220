// Sum (times a scale, which makes it a mean) over the middle axis of a dense [outer, R, inner]
// tensor. The caller arranges any reduction into this form (see runtime/ops/reduce.ts).
// Bindings: 0 params, 1 X (TIN, dense from its element offset), 2 Y (TOUT, [outer, inner]).
// Params (u32 words): 0 n = outer * inner, 1 R, 2 inner, 3 X offset, 4 scale (f32 bits).
// Accumulation is f32 whatever the storage type.
// Entry `main`: 256 invocations per workgroup, one output each, a serial loop over R; reads
//   coalesce across neighbouring invocations when inner > 1. 2D grid for large n.
// Entry `rows` (inner == 1 only): one workgroup of 256 per output row; invocation t sums
//   elements t, t + 256, ... of the row, then a shared-memory tree adds the 256 partials.
//   The workgroup index is 2D (x + y * num_workgroups.x) for more than 65535 rows.
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 2>;
@group(0) @binding(1) var<storage, read> X: array<{{TIN}}>;
@group(0) @binding(2) var<storage, read_write> Y: array<{{TOUT}}>;

var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= P[0].x) { return; }
  let R = P[0].y;
  let inner = P[0].z;
  let base = P[0].w + (i / inner) * R * inner + i % inner;
  var acc = 0.0;
  for (var r = 0u; r < R; r++) {
    acc += f32(X[base + r * inner]);
  }
  Y[i] = {{TOUT}}(acc * bitcast<f32>(P[1].x));
}

@compute @workgroup_size(256)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  // Uniform per workgroup, so the barriers below stay in uniform control flow.
  if (row >= P[0].x) { return; }
  let R = P[0].y;
  let base = P[0].w + row * R;
  var acc = 0.0;
  for (var r = lid; r < R; r += 256u) {
    acc += f32(X[base + r]);
  }
  part[lid] = acc;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) { part[lid] += part[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) { Y[row] = {{TOUT}}(part[0] * bitcast<f32>(P[1].x)); }
}
