// Backward of logprobs.wgsl: dX[n, j] = g[n] * ([j == t_n] - exp(x[n, j] - lse[n])),
// and 0 for a row whose token is outside [0, V).
// Bindings: 0 params, 1 X [N, V] (contiguous from its offset), 2 TOK [N] (i32, from its
//   offset), 3 LSE [N], 4 G [N] (contiguous from its offset), 5 DX [N, V] (out, contiguous).
// Params (u32 words): 0 N*V, 1 V, 2 X offset, 3 TOK offset, 4 G offset.
// Workgroup: 256 invocations, one element each; 2D grid.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 2>;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> TOK: array<i32>;
@group(0) @binding(3) var<storage, read> LSE: array<f32>;
@group(0) @binding(4) var<storage, read> G: array<f32>;
@group(0) @binding(5) var<storage, read_write> DX: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= P[0].x) { return; }
  let V = P[0].y;
  let n = i / V;
  let j = i % V;
  let t = TOK[P[0].w + n];
  let valid = t >= 0 && u32(t) < V;
  let p = exp(X[P[0].z + i] - LSE[n]);
  let onehot = select(0.0, 1.0, valid && u32(t) == j);
  DX[i] = select(0.0, G[P[1].x + n] * (onehot - p), valid);
}
