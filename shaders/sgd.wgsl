// SGD update of one f32 parameter tensor, fused: gradient scale, L2 weight decay
// (coupled, added to the gradient as in torch.optim.SGD), momentum with dampening,
// optional Nesterov, and the in-place parameter write (one dispatch per parameter).
// Bindings: 0 params, 1 W (parameter, read_write, from its element offset),
//   2 G (gradient, read, contiguous from its offset), 3 B (momentum buffer, read_write,
//   contiguous from 0; a 1-element placeholder when momentum is off, then never touched),
//   4 S (gradient scale at S[scale offset]; 1.0 when none is given).
// Params (32-bit words): 0 n, 1 W offset, 2 G offset, 3 S offset,
//   4 flags: bit0 fresh (first step for this parameter: B = d, B not read),
//            bit1 momentum on, bit2 Nesterov,
//   5 lr, 6 weightDecay, 7 momentum, 8 1 - dampening (f32 bits).
// Per element: d = g * s + wd * w; with momentum: b = fresh ? d : mom * b + (1 - damp) * d,
//   d = nesterov ? d + mom * b : b; then w -= lr * d.
// Workgroup: 256 invocations, one element each; 2D grid for large n.
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 3>;
@group(0) @binding(1) var<storage, read_write> W: array<f32>;
@group(0) @binding(2) var<storage, read> G: array<f32>;
@group(0) @binding(3) var<storage, read_write> B: array<f32>;
@group(0) @binding(4) var<storage, read> S: array<f32>;

//#include "lib/params.wgsl"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= pu(0u)) { return; }
  let flags = pu(4u);
  let wi = pu(1u) + i;
  let w = W[wi];
  var d = G[pu(2u) + i] * S[pu(3u)] + pf(6u) * w;
  if ((flags & 2u) != 0u) {
    let mom = pf(7u);
    var b = d;
    if ((flags & 1u) == 0u) { b = mom * B[i] + pf(8u) * d; }
    B[i] = b;
    d = select(b, d + mom * b, (flags & 4u) != 0u);
  }
  W[wi] = w - pf(5u) * d;
}
