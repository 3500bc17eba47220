// log(sum(exp(x))) over the middle axis of a dense [outer, R, inner] tensor, numerically
// stable: a running maximum m and a sum s of exp(x - m), rescaled when m grows, so no
// exp() ever overflows. Output m + log(s); an empty axis gives -inf (s = 0).
// Bindings: 0 params, 1 X (TIN, dense from its element offset), 2 Y (TOUT, [outer, inner]).
// Params (u32 words): 0 n = outer * inner, 1 R, 2 inner, 3 X offset. Arithmetic in f32.
// Entry `main`: 256 invocations per workgroup, one output each, one pass over R.
// Entry `rows` (inner == 1 only): one workgroup of 256 per row; each invocation keeps (m, s)
//   for elements t, t + 256, ...; a shared-memory tree merges the pairs:
//   m = max(m1, m2), s = s1 exp(m1 - m) + s2 exp(m2 - m). 2D workgroup index.
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 1>;
@group(0) @binding(1) var<storage, read> X: array<{{TIN}}>;
@group(0) @binding(2) var<storage, read_write> Y: array<{{TOUT}}>;

// Lowest finite f32: the starting maximum, so that merging two empty partials is 0 * exp(0).
const LOW = -3.4028234e38;
var<workgroup> pm: array<f32, 256>;
var<workgroup> ps: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= P[0].x) { return; }
  let R = P[0].y;
  let inner = P[0].z;
  let base = P[0].w + (i / inner) * R * inner + i % inner;
  var m: f32 = LOW;
  var s = 0.0;
  for (var r = 0u; r < R; r++) {
    let v = f32(X[base + r * inner]);
    if (v > m) {
      s = s * exp(m - v) + 1.0;
      m = v;
    } else {
      s += exp(v - m);
    }
  }
  Y[i] = {{TOUT}}(m + log(s));
}

@compute @workgroup_size(256)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= P[0].x) { return; }
  let R = P[0].y;
  let base = P[0].w + row * R;
  var m: f32 = LOW;
  var s = 0.0;
  for (var r = lid; r < R; r += 256u) {
    let v = f32(X[base + r]);
    if (v > m) {
      s = s * exp(m - v) + 1.0;
      m = v;
    } else {
      s += exp(v - m);
    }
  }
  pm[lid] = m;
  ps[lid] = s;
  workgroupBarrier();
  for (var st = 128u; st > 0u; st >>= 1u) {
    if (lid < st) {
      let m1 = pm[lid];
      let m2 = pm[lid + st];
      let mm = max(m1, m2);
      ps[lid] = ps[lid] * exp(m1 - mm) + ps[lid + st] * exp(m2 - mm);
      pm[lid] = mm;
    }
    workgroupBarrier();
  }
  if (lid == 0u) { Y[row] = {{TOUT}}(pm[0] + log(ps[0])); }
}
