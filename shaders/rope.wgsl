// Rotary position embedding, "rotate_half" convention (Qwen2): element i of a head pairs
// with i + Dh/2 and both turn by the angle pos * invFreq[i]:
//   y[i]        = x[i] * cos - x[i + half] * sin
//   y[i + half] = x[i + half] * cos + x[i] * sin
// M-RoPE: frequency j takes its position from row s of positions [S, B, T], where s is the
// section holding j (section s covers j in [ends[s-1], ends[s])). Plain RoPE is S = 1.
// The backward pass is the same kernel turning by the negative angle (sign = -1).
// Bindings: 1 X (T, strided [B, H, T, Dh] view), 2 POS (i32, contiguous [S, B, T] from
//   its offset), 3 Y (T, contiguous [B, H, T, Dh]).
// Params (u32 words): 0 pairs (= B*H*T*half), 1 H, 2 T, 3 half (= Dh/2), 4 X offset,
//   5 POS offset, 6 B, 7 sign (f32 bits), 8..11 X strides (b, h, t, i),
//   12..15 section ends (cumulative, unused ones = half), 16..19 unused,
//   20.. invFreq[j] (f32 bits, j < half, at most 256): computed on the host in float64 and
//   rounded to f32, as HF computes them.
// Workgroup: 64 invocations, each one (b, h, t, j) pair; 2D grid.
// The angle pos * invFreq is rounded to f32 (as in HF), then reduced to [-pi, pi] with a
// two-part 2*pi before cos/sin, whose accuracy is only specified on [-pi, pi].
{{ENABLE}}
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 69>;
@group(0) @binding(1) var<storage, read> X: array<{{T}}>;
@group(0) @binding(2) var<storage, read> POS: array<i32>;
@group(0) @binding(3) var<storage, read_write> Y: array<{{T}}>;

//#include "lib/params.wgsl"

// 2*pi = C1 + C2 with C1 short enough that k * C1 is exact for |k| < 2^16.
const C1: f32 = 6.28125;
const C2: f32 = 0.0019353071795864769;
const INV_2PI: f32 = 0.15915494309189535;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 64u;
  if (i >= pu(0u)) { return; }
  let H = pu(1u);
  let T = pu(2u);
  let half = pu(3u);
  let B = pu(6u);
  let j = i % half;
  let t = (i / half) % T;
  let h = (i / (half * T)) % H;
  let b = i / (half * T * H);
  var s = 0u;
  for (var q = 0u; q < 4u; q++) {
    if (j >= pu(12u + q)) { s = q + 1u; }
  }
  let pos = POS[pu(5u) + (s * B + b) * T + t];
  let a = f32(pos) * pf(20u + j);
  let k = round(a * INV_2PI);
  let red = fma(-k, C2, a - k * C1);
  let c = cos(red);
  let sn = sin(red) * pf(7u);
  let xo = pu(4u) + b * pu(8u) + h * pu(9u) + t * pu(10u);
  let si = pu(11u);
  let x1 = f32(X[xo + j * si]);
  let x2 = f32(X[xo + (j + half) * si]);
  let yo = ((b * H + h) * T + t) * 2u * half;
  Y[yo + j] = {{T}}(x1 * c - x2 * sn);
  Y[yo + j + half] = {{T}}(x2 * c + x1 * sn);
}
