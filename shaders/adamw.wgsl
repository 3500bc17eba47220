// AdamW update of one f32 parameter tensor, fused into one pass: decoupled weight decay,
// both moments, bias correction and the in-place parameter write (one dispatch per
// parameter per step; no host readback).
// Bindings: 0 params, 1 W (parameter, read_write, updated in place from its element offset),
//   2 G (gradient, read, contiguous from its offset), 3 M (first moment, read_write,
//   contiguous from 0), 4 V (second moment, same layout), 5 S (gradient scale: G is
//   multiplied by S[scale offset]; the optimizer binds a 1.0 when no scale is given).
// Params (32-bit words): 0 n, 1 W offset, 2 G offset, 3 S offset,
//   4 fresh (1 on this parameter's first step: the moments start at 0 and are not read),
//   5 beta1, 6 1 - beta1, 7 beta2, 8 1 - beta2,
//   9 decay = 1 - lr * weightDecay, 10 stepSize = lr / (1 - beta1^t),
//   11 1 / sqrt(1 - beta2^t), 12 eps (words 5..12 are f32 bits; the host computes the
//   bias corrections in float64 from the step count t).
// Workgroup: 256 invocations, each updates one element (W, M, V at the same index); 2D grid
// for large n.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 4>;
@group(0) @binding(1) var<storage, read_write> W: array<f32>;
@group(0) @binding(2) var<storage, read> G: array<f32>;
@group(0) @binding(3) var<storage, read_write> M: array<f32>;
@group(0) @binding(4) var<storage, read_write> V: array<f32>;
@group(0) @binding(5) var<storage, read> S: array<f32>;

//#include "lib/params.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  let g = G[pu(2u) + i] * S[pu(3u)];
  var m = 0.0;
  var v = 0.0;
  if (pu(4u) == 0u) {
    m = M[i];
    v = V[i];
  }
  m = pf(5u) * m + pf(6u) * g;
  v = pf(7u) * v + pf(8u) * g * g;
  M[i] = m;
  V[i] = v;
  let w = pu(1u) + i;
  W[w] = W[w] * pf(9u) - pf(10u) * m / (sqrt(v) * pf(11u) + pf(12u));
}
