// Key masking of the row and tiled attention kernels (attention_fwd / _bwd_q / _bwd_kv
// and their _tiled variants): causal, key padding and additive mask in one bias.
// Needs from the including shader: `P` holding the attention params layout of
// attention_fwd.wgsl (at least 5 vec4s: words 7 flags, 8 qOffset, 12..16 mask offset and
// strides, 17..19 key padding offset and strides), `MASK: array<f32>`,
// `KP: array<{{KPT}}>` and the KPT define.
//#include "lib/params.wgsl"

// Marks an excluded key; mask values below -1e30 (i.e. -Infinity) also exclude the key.
const MASKED: f32 = -3.0e38;

// The additive bias of key j for query row (b, h, i), or MASKED when the key is excluded.
fn keyBias(b: u32, h: u32, i: u32, j: u32) -> f32 {
  let flags = pu(7u);
  if ((flags & 1u) != 0u && i32(j) > bitcast<i32>(pu(8u)) + i32(i)) { return MASKED; }
  if ((flags & 4u) != 0u && KP[pu(17u) + b * pu(18u) + j * pu(19u)] == {{KPT}}(0)) { return MASKED; }
  if ((flags & 2u) != 0u) {
    let m = MASK[pu(12u) + b * pu(13u) + h * pu(14u) + i * pu(15u) + j * pu(16u)];
    if (m < -1.0e30) { return MASKED; }
    return m;
  }
  return 0.0;
}
