// A one-node ONNX model (C = MatMul(A, B), float32, fixed shapes), written as protobuf
// bytes by hand so the benchmark needs no ONNX tooling. onnxruntime accepts the bytes
// directly (InferenceSession.create(Uint8Array)).
//
// Only the protobuf wire types we need: varint (0) and length-delimited (2). Field
// numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, ValueInfoProto,
// TypeProto, TensorShapeProto, OperatorSetIdProto).

type Field = number[] | Uint8Array;

function varint(n: number): number[] {
  const out: number[] = [];
  // Field values here are small non-negative integers (< 2^53), so plain arithmetic is exact.
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return out;
}

const key = (field: number, wire: 0 | 2): number[] => varint((field << 3) | wire);

/** A varint field. */
function int(field: number, v: number): number[] {
  return [...key(field, 0), ...varint(v)];
}

/** A length-delimited field: a nested message or raw bytes. */
function bytes(field: number, body: Field): number[] {
  return [...key(field, 2), ...varint(body.length), ...body];
}

function str(field: number, s: string): number[] {
  return bytes(field, new TextEncoder().encode(s));
}

const FLOAT = 1; // TensorProto.DataType.FLOAT

/** ValueInfoProto { name = 1, type = 2 { tensor_type = 1 { elem_type = 1, shape = 2 { dim = 1 { dim_value = 1 } } } } } */
function tensorInfo(name: string, shape: readonly number[]): number[] {
  const dims = shape.flatMap((d) => bytes(1, int(1, d)));
  const tensorType = [...int(1, FLOAT), ...bytes(2, dims)];
  return [...str(1, name), ...bytes(2, bytes(1, tensorType))];
}

/**
 * The model bytes for C[m, n] = A[m, k] @ B[k, n] with inputs named 'A', 'B' and output 'C'.
 * ir_version 8 with opset 17 is understood by every onnxruntime since 1.13.
 */
export function matmulModel(m: number, k: number, n: number): Uint8Array {
  // NodeProto { input = 1, output = 2, name = 3, op_type = 4 }
  const node = [...str(1, 'A'), ...str(1, 'B'), ...str(2, 'C'), ...str(3, 'matmul'), ...str(4, 'MatMul')];
  // GraphProto { node = 1, name = 2, input = 11, output = 12 }
  const graph = [
    ...bytes(1, node),
    ...str(2, 'bench_matmul'),
    ...bytes(11, tensorInfo('A', [m, k])),
    ...bytes(11, tensorInfo('B', [k, n])),
    ...bytes(12, tensorInfo('C', [m, n])),
  ];
  // ModelProto { ir_version = 1, producer_name = 2, graph = 7, opset_import = 8 { domain = 1, version = 2 } }
  const model = [...int(1, 8), ...str(2, 'retrv-bench'), ...bytes(7, graph), ...bytes(8, [...str(1, ''), ...int(2, 17)])];
  return Uint8Array.from(model);
}
