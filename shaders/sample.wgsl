// Token sampling on the GPU, one workgroup per row of logits: softmax with temperature,
// nucleus (top-p) filtering, then inverse-CDF sampling with a per-row uniform from a
// counter-based hash of (seed, step, row), so the same seed gives the same tokens.
// Bindings: 0 params, 1 X logits [N, V] (f32, contiguous from its offset), 2 OUT [N] (i32).
// Params (u32 words): 0 N, 1 V, 2 X offset, 3 flags (bit0 greedy: argmax, lowest index on
//   ties), 4 1/temperature (f32), 5 topP (f32), 6 seed low word, 7 seed high word, 8 step.
// Workgroup: 64 invocations per row (2D grid of rows). With z_j = (x_j - max) / temperature
// and w_j = exp(z_j):
//   1. strided max/argmax/min reduction;
//   2. if topP < 1, the nucleus is {j : z_j >= t} for the largest threshold t whose kept
//      mass is >= topP * total; t is found by bisection over the order-preserving integer
//      keys of f32 (at most 32 passes, exact; ties at the threshold are all kept);
//   3. each invocation sums the kept weights of a contiguous chunk; invocation 0 walks the
//      chunk sums to u * kept mass and then scans that chunk for the token.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 3>;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> OUT: array<i32>;

const WG: u32 = 64u;
const NONE: u32 = 0xffffffffu;
var<workgroup> redF: array<f32, 64>;
var<workgroup> redG: array<f32, 64>;
var<workgroup> redU: array<u32, 64>;
// Results handed from invocation 0 to all (read with workgroupUniformLoad).
var<workgroup> res: vec4<u32>;
var<workgroup> resSum: f32;

//#include "lib/params.wgsl"

// Order-preserving map f32 -> u32 (a < b  <=>  okey(a) < okey(b)), and its inverse.
fn okey(f: f32) -> u32 {
  let b = bitcast<u32>(f);
  return select(~b, b | 0x80000000u, (b & 0x80000000u) == 0u);
}
fn unkey(k: u32) -> f32 {
  return select(bitcast<f32>(~k), bitcast<f32>(k & 0x7fffffffu), (k & 0x80000000u) != 0u);
}

// PCG hash (a good 32-bit integer mixer); mirrored on the host by sampleUniform in sample.ts.
fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}

fn uniform01(row: u32) -> f32 {
  let h = pcg(row ^ pcg(pu(8u) ^ pcg(pu(7u) ^ pcg(pu(6u)))));
  return f32(h >> 8u) * (1.0 / 16777216.0);
}

// Sum over the row of w_j for z_j >= t, identical in every invocation (strided partial sums,
// then a serial sum by invocation 0, so the result is deterministic).
fn massAbove(base: u32, V: u32, mx: f32, invT: f32, t: f32, lid: u32) -> f32 {
  var s = 0.0;
  for (var j = lid; j < V; j += WG) {
    let z = (X[base + j] - mx) * invT;
    if (z >= t) { s += exp(z); }
  }
  redF[lid] = s;
  workgroupBarrier();
  if (lid == 0u) {
    var tot = 0.0;
    for (var c = 0u; c < WG; c++) { tot += redF[c]; }
    resSum = tot;
  }
  return workgroupUniformLoad(&resSum);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= pu(0u)) { return; }
  let V = pu(1u);
  let base = pu(2u) + row * V;

  // 1. max (lowest index on ties) and min.
  var best = 0.0;
  var bi = NONE;
  var mn = 0.0;
  for (var j = lid; j < V; j += WG) {
    let x = X[base + j];
    if (bi == NONE) {
      best = x;
      mn = x;
      bi = j;
    } else {
      if (x > best) { best = x; bi = j; }
      mn = min(mn, x);
    }
  }
  redF[lid] = best;
  redG[lid] = mn;
  redU[lid] = bi;
  workgroupBarrier();
  if (lid == 0u) {
    var b = 0.0;
    var m = 0.0;
    var i = NONE;
    for (var c = 0u; c < WG; c++) {
      let ci = redU[c];
      if (ci == NONE) { continue; }
      if (i == NONE || redF[c] > b || (redF[c] == b && ci < i)) { b = redF[c]; i = ci; }
      if (c == 0u || redG[c] < m) { m = redG[c]; }
    }
    res = vec4<u32>(bitcast<u32>(b), i, bitcast<u32>(m), 0u);
  }
  let r = workgroupUniformLoad(&res);
  let mx = bitcast<f32>(r.x);
  let amax = r.y;
  if ((pu(3u) & 1u) != 0u || amax == NONE) {
    if (lid == 0u) { OUT[row] = i32(select(amax, 0u, amax == NONE)); }
    return;
  }
  let invT = pf(4u);
  let topP = pf(5u);

  // 2. the nucleus threshold: invariant mass(lo) >= goal > mass(hi).
  var lo = okey((bitcast<f32>(r.z) - mx) * invT);
  if (topP < 1.0) {
    var hi = okey(0.0) + 1u;
    let goal = topP * massAbove(base, V, mx, invT, unkey(lo), lid);
    for (var it = 0u; it < 32u; it++) {
      if (hi - lo > 1u) {
        let mid = lo + (hi - lo) / 2u;
        let m = massAbove(base, V, mx, invT, unkey(mid), lid);
        if (m >= goal) { lo = mid; } else { hi = mid; }
      }
    }
  }
  let t = unkey(lo);

  // 3. inverse CDF over contiguous chunks.
  let chunk = (V + WG - 1u) / WG;
  let start = min(lid * chunk, V);
  let end = min(start + chunk, V);
  var s = 0.0;
  for (var j = start; j < end; j++) {
    let z = (X[base + j] - mx) * invT;
    if (z >= t) { s += exp(z); }
  }
  redF[lid] = s;
  workgroupBarrier();
  if (lid == 0u) {
    var total = 0.0;
    for (var c = 0u; c < WG; c++) { total += redF[c]; }
    let goal = uniform01(row) * total;
    var acc = 0.0;
    var pick = amax;
    var found = false;
    var lastChunk = NONE;
    for (var c = 0u; c < WG && !found; c++) {
      if (redF[c] > 0.0) { lastChunk = c; }
      if (acc + redF[c] > goal && redF[c] > 0.0) {
        found = true;
        lastChunk = c;
      } else {
        acc += redF[c];
      }
    }
    if (lastChunk != NONE) {
      // Scan the chosen chunk; if rounding leaves the goal unreached, take its last kept token.
      let c0 = min(lastChunk * chunk, V);
      let c1 = min(c0 + chunk, V);
      var done = false;
      for (var j = c0; j < c1 && !done; j++) {
        let z = (X[base + j] - mx) * invT;
        if (z >= t) {
          let w = exp(z);
          if (w > 0.0) { pick = j; }
          acc += w;
          if (found && acc > goal && w > 0.0) { done = true; }
        }
      }
    }
    OUT[row] = i32(pick);
  }
}
