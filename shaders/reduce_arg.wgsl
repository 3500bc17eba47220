// Max or min over the middle axis of a dense [outer, R, inner] tensor, with the position of
// the extreme: the value goes to Y, its index r in 0..R-1 to I. Ties keep the first (lowest)
// index, which is where max/min backward sends the gradient and what argmax returns.
// Bindings: 0 params, 1 X (T, dense from its element offset), 2 Y (T, [outer, inner]),
//   3 I (i32, [outer, inner]).
// Params (u32 words): 0 n = outer * inner, 1 R (>= 1; the caller rejects empty axes),
//   2 inner, 3 X offset.
// Defines: T storage type, CT compare type (f32 for f16/f32, else T), CMP '>' (max) or '<' (min).
// Entry `main`: 256 invocations per workgroup, one output each, a serial scan over R.
// Entry `rows` (inner == 1 only): one workgroup of 256 per row; invocation t scans t, t + 256,
//   ...; a shared-memory tree then combines (value, index) pairs, preferring the lower index
//   on equal values. The workgroup index is 2D for more than 65535 rows.
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 1>;
@group(0) @binding(1) var<storage, read> X: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> Y: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> I: array<i32>;

const NONE = 0xffffffffu;
var<workgroup> pv: array<{{CT}}, 256>;
var<workgroup> pi: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= P[0].x) { return; }
  let R = P[0].y;
  let inner = P[0].z;
  let base = P[0].w + (i / inner) * R * inner + i % inner;
  var best = {{CT}}(X[base]);
  var bi = 0u;
  for (var r = 1u; r < R; r++) {
    let v = {{CT}}(X[base + r * inner]);
    if (v {{CMP}} best) {
      best = v;
      bi = r;
    }
  }
  Y[i] = {{T}}(best);
  I[i] = i32(bi);
}

@compute @workgroup_size(256)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= P[0].x) { return; }
  let R = P[0].y;
  let base = P[0].w + row * R;
  var best: {{CT}};
  var bi = NONE;
  for (var r = lid; r < R; r += 256u) {
    let v = {{CT}}(X[base + r]);
    if (bi == NONE || v {{CMP}} best) {
      best = v;
      bi = r;
    }
  }
  pv[lid] = best;
  pi[lid] = bi;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let oi = pi[lid + s];
      let ov = pv[lid + s];
      let mi = pi[lid];
      let mv = pv[lid];
      if (oi != NONE && (mi == NONE || ov {{CMP}} mv || (ov == mv && oi < mi))) {
        pv[lid] = ov;
        pi[lid] = oi;
      }
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    Y[row] = {{T}}(pv[0]);
    I[row] = i32(pi[0]);
  }
}
