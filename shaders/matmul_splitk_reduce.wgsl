// Second pass of a split-K matmul (runtime/ops/matmul.ts, splitk-* variants): sums the S
// per-slice partial products and adds the bias.
//   C[i] = sum_s P[s * n + i] (+ bias[i % N])   for i < n = batch * M * N
// The partials come from matmul_vec4.wgsl / matmul_sg.wgsl run over K slices; summing them
// here (rather than with atomics in the first pass) keeps the result deterministic and
// needs no float atomics.
// Bindings: 0 params, 1 P (f32 partials, contiguous [S, batch, M, N]), 2 bias (f32; any
//   buffer when unused), 3 C (f32, contiguous [batch, M, N]).
// Params (u32 words): 0 n, 1 S, 2 N, 3 flags (bit0 add bias), 4 bias offset, 5 bias stride.
// Workgroup: 256 invocations along x; one output each, at i = gid.x + gid.y * 256 * nwg.x
// (2D grid when n needs more than the per-dimension limit of workgroups).
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 2>;
@group(0) @binding(1) var<storage, read> PART: array<f32>;
@group(0) @binding(2) var<storage, read> BIAS: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;

//#include "lib/params.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let n = pu(0u);
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= n) { return; }
  var acc = 0.0;
  // Slices in order: the same sum every run.
  for (var s = 0u; s < pu(1u); s++) { acc += PART[s * n + i]; }
  if ((pu(3u) & 1u) != 0u) { acc += BIAS[pu(4u) + (i % pu(2u)) * pu(5u)]; }
  C[i] = acc;
}
