// Gradient norm, stage 2: the global L2 norm from all partial sums, and the clip scale.
// Bindings: 0 params, 1 S (f32 partial sums, read), 2 O (f32, read_write, 2 elements:
//   O[0] = norm = sqrt(sum of S), O[1] = scale = min(1, maxNorm / (norm + 1e-6))).
// Params: 0 count of partial sums, 1 maxNorm (f32 bits).
// Workgroup: one workgroup of 256 invocations; each sums a strided share of S, then a
// tree in shared memory; invocation 0 writes both outputs.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 1>;
@group(0) @binding(1) var<storage, read> S: array<f32>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;

var<workgroup> sh: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  let count = P[0].x;
  var acc = 0.0;
  for (var i = lid.x; i < count; i += 256u) { acc += S[i]; }
  sh[lid.x] = acc;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid.x < s) { sh[lid.x] += sh[lid.x + s]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    let norm = sqrt(sh[0]);
    O[0] = norm;
    O[1] = min(1.0, bitcast<f32>(P[0].y) / (norm + 1e-6));
  }
}
