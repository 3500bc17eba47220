// Log-probabilities of given tokens: out[n] = x[n, t_n] - logsumexp(x[n, :]), one workgroup
// per row. Also stores the row logsumexp for the backward (logprobs_bwd.wgsl).
// Bindings: 0 params, 1 X logits [N, V] (f32, contiguous from its offset),
//   2 TOK [N] (i32, contiguous from its offset), 3 OUT [N] (f32), 4 LSE [N] (f32).
// Params (u32 words): 0 N, 1 V, 2 X offset, 3 TOK offset.
// Workgroup: 64 invocations per row (2D grid of rows): strided max, then strided sum of
// exp(x - max), each combined serially by invocation 0 (deterministic). A token outside
// [0, V) (e.g. -1 for padding) gives 0 and, in the backward, zero gradient.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 1>;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> TOK: array<i32>;
@group(0) @binding(3) var<storage, read_write> OUT: array<f32>;
@group(0) @binding(4) var<storage, read_write> LSE: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;
var<workgroup> res: f32;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  let N = P[0].x;
  if (row >= N) { return; }
  let V = P[0].y;
  let base = P[0].z + row * V;

  var m = -3.4e38;
  for (var j = lid; j < V; j += WG) { m = max(m, X[base + j]); }
  red[lid] = m;
  workgroupBarrier();
  if (lid == 0u) {
    var mm = red[0];
    for (var c = 1u; c < WG; c++) { mm = max(mm, red[c]); }
    res = mm;
  }
  let mx = workgroupUniformLoad(&res);

  var s = 0.0;
  for (var j = lid; j < V; j += WG) { s += exp(X[base + j] - mx); }
  red[lid] = s;
  workgroupBarrier();
  if (lid == 0u) {
    var tot = 0.0;
    for (var c = 0u; c < WG; c++) { tot += red[c]; }
    let lse = mx + log(tot);
    LSE[row] = lse;
    let t = TOK[P[0].w + row];
    var lp = 0.0;
    if (t >= 0 && u32(t) < V) { lp = X[base + u32(t)] - lse; }
    OUT[row] = lp;
  }
}
