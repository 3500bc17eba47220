// Fused SwiGLU, the gated MLP activation of Qwen2 / LLaMA: swiglu(gate, up) = silu(gate) * up.
// One kernel forward and one backward (dgate and dup together) instead of silu + mul
// (two passes and a temporary forward, four dispatches backward). Both operands are read
// through their strides, so views (the two halves of a fused gate_up projection,
// permutations, broadcasts by expand) need no copy. shaders/swiglu.wgsl.
import { Params, getEngine } from '../engine.ts';
import { Tensor, empty, shapeStr } from '../tensor.ts';
import { record } from '../autograd.ts';
import { assertFloat, assertSameDType, checkF16, collapseDims, enableFor, grid1d, isContiguousLayout, padTo, sameShape } from './util.ts';

/** Flags and collapsed strides of up to three same-shape operands (bit i: operand i contiguous). */
function layoutOf(shape: readonly number[], ts: Tensor[]): { rank: number; shape: number[]; strides: number[][]; flags: number } {
  const c = collapseDims(shape, ts.map((t) => t.strides));
  let flags = 0;
  c.strides.forEach((s, i) => {
    if (isContiguousLayout(c.shape, s)) flags |= 1 << i;
  });
  return { rank: c.shape.length, shape: c.shape, strides: c.strides, flags };
}

function params(n: number, ts: Tensor[], l: ReturnType<typeof layoutOf>): Params {
  const [g, u, dy] = ts;
  return new Params()
    .u32(n, l.rank, g.offset, u.offset, dy?.offset ?? 0, l.flags, 0, 0)
    .u32(...padTo(l.shape))
    .u32(...padTo(l.strides[0], 0), ...padTo(l.strides[1], 0), ...padTo(l.strides[2] ?? [], 0));
}

/**
 * silu(gate) * up elementwise, gate and up of one shape (any strided views) and one float
 * dtype; f16 computes in f32. Gradients for both inputs from one backward kernel.
 */
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  const op = 'swiglu';
  assertFloat(op, 'gate', gate);
  assertFloat(op, 'up', up);
  assertSameDType(op, gate, up);
  if (!sameShape(gate.shape, up.shape)) {
    throw new RangeError(`${op}: gate ${shapeStr(gate.shape)} and up ${shapeStr(up.shape)} must have the same shape`);
  }
  checkF16(op, gate, up);
  const shape = gate.shape;
  const defines = { ENABLE: enableFor(gate.dtype), T: gate.dtype };
  const y = empty(shape, gate.dtype);
  const n = y.size;
  if (n > 0) {
    getEngine().dispatch({
      shader: 'swiglu',
      entry: 'forward',
      defines,
      params: params(n, [gate, up], layoutOf(shape, [gate, up])),
      buffers: [gate.buf, up.buf, y.buf],
      workgroups: grid1d(n),
      label: `${op} ${shapeStr(shape)}`,
    });
  }
  return record(
    y,
    op,
    [gate, up],
    (g, [gs, us]) => {
      const dgate = empty(shape, gs.dtype);
      const dup = empty(shape, gs.dtype);
      if (n > 0) {
        getEngine().dispatch({
          shader: 'swiglu',
          entry: 'backward',
          defines,
          params: params(n, [gs, us, g], layoutOf(shape, [gs, us, g])),
          buffers: [gs.buf, us.buf, g.buf, dgate.buf, dup.buf],
          workgroups: grid1d(n),
          label: `${op} backward ${shapeStr(shape)}`,
        });
      }
      return [dgate, dup];
    },
    [gate, up],
  );
}
