// Batch offsets of the matmul kernels (matmul_*.wgsl): decomposes a batch index over the
// collapsed batch shape into the element offsets of A and B for that batch.
// Needs from the including shader: `P` holding the matmul params layout (at least 9
// vec4s): word 3 batch rank, 4 A offset, 5 B offset, 16..21 batch shape, 22..27 A batch
// strides, 28..33 B batch strides (0 on broadcast dims).
//#include "lib/params.wgsl"

struct BatchOffsets { a: u32, b: u32 }

fn batchOffsets(batch: u32) -> BatchOffsets {
  var o = BatchOffsets(pu(4u), pu(5u));
  var rem = batch;
  for (var d = i32(pu(3u)) - 1; d >= 0; d--) {
    let dim = pu(16u + u32(d));
    let c = rem % dim;
    rem /= dim;
    o.a += c * pu(22u + u32(d));
    o.b += c * pu(28u + u32(d));
  }
  return o;
}
