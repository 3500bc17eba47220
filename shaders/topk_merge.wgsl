// Top-k along the last axis, stage 2: merges the C sorted chunk lists of a row (from
// topk.wgsl) into the row's top k. Ties go to the lower chunk, i.e. the lower index.
// Bindings: 0 params, 1 SV [rows * C, k] values, 2 SI [rows * C, k] indices (i32),
//   3 OV [rows, k] values (out), 4 OI [rows, k] indices (i32, out).
// Params (u32 words): 0 rows, 1 V, 2 k, 3 C (<= 64), 4 chunk length.
// Workgroup: 64 invocations, one row each (C-way merge with a private head per chunk).
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 2>;
@group(0) @binding(1) var<storage, read> SV: array<f32>;
@group(0) @binding(2) var<storage, read> SI: array<i32>;
@group(0) @binding(3) var<storage, read_write> OV: array<f32>;
@group(0) @binding(4) var<storage, read_write> OI: array<i32>;

//#include "lib/params.wgsl"

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = gid.x + gid.y * nwg.x * 64u;
  if (row >= pu(0u)) { return; }
  let V = pu(1u);
  let k = pu(2u);
  let C = pu(3u);
  let len = pu(4u);
  var head: array<u32, 64>;
  for (var r = 0u; r < k; r++) {
    var bc = 0xffffffffu;
    var bv = 0.0;
    for (var c = 0u; c < C; c++) {
      let start = min(c * len, V);
      let have = min(k, min(start + len, V) - start);
      if (head[c] >= have) { continue; }
      let v = SV[((row * C) + c) * k + head[c]];
      if (bc == 0xffffffffu || v > bv) { bc = c; bv = v; }
    }
    if (bc == 0xffffffffu) { break; }
    let src = ((row * C) + bc) * k + head[bc];
    OV[row * k + r] = bv;
    OI[row * k + r] = SI[src];
    head[bc]++;
  }
}
