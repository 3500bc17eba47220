// Reduction over the middle axis of a contiguous [outer, R, inner] tensor.
// Bindings: 0 params, 1 X (f32, contiguous from offset), 2 Y ([outer, inner]).
// Params: 0 outer*inner, 1 R, 2 inner, 3 X offset, 4 scale (f32 bits, multiplies the result).
// Defines: INIT (identity), ACC(acc, v) combine expression, FIN(acc, r) final expression.
// Workgroup: 256 invocations; each produces one output by a serial loop over R
// (reads are coalesced across invocations when inner > 1).
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 2>;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  let n = P[0].x;
  if (i >= n) { return; }
  let R = P[0].y;
  let inner = P[0].z;
  let o = i / inner;
  let k = i % inner;
  let base = P[0].w + o * R * inner + k;
  let scale = bitcast<f32>(P[1].x);
  var acc: f32 = {{INIT}};
  for (var r = 0u; r < R; r++) {
    let v = X[base + r * inner];
    acc = {{ACC}};
  }
  Y[i] = {{FIN}};
}
