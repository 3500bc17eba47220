// Square f32 matmul C = A @ B, side by side in one process: retrv, tfjs (WebGPU backend on
// retrv's device), onnxruntime (WebGPU EP and CPU EP). Same inputs for every library;
// each output is checked against float64 before its timing. GPU libraries time the work
// on resident tensors up to GPU completion; 'retrv+io' and 'ort-webgpu' include moving
// A and B to the device and C back (onnxruntime-node has no device-resident tensors).
import { type Tensor, fromArray, getEngine, getGpu } from '../../runtime/index.ts';
import { ortMatmul } from '../peers/ort.ts';
import { tfjsMatmul } from '../peers/tfjs.ts';
import { type BenchCase, type MatmulRunner, type Suite, checkMatmul, randF32, runtimeFn } from './_lib.ts';

type Matmul = (a: Tensor, b: Tensor, opts?: { transposeA?: boolean; transposeB?: boolean }) => Tensor;

async function retrvMatmul(a: Float32Array, b: Float32Array, m: number, k: number, n: number): Promise<MatmulRunner> {
  const matmul = runtimeFn<Matmul>('matmul');
  const ta = fromArray(a, [m, k]);
  const tb = fromArray(b, [k, n]);
  const eng = getEngine();
  return {
    async run() {
      const c = matmul(ta, tb);
      await eng.sync();
      c.dispose();
    },
    async output() {
      const c = matmul(ta, tb);
      try {
        return Float32Array.from(await c.toArray());
      } finally {
        c.dispose();
      }
    },
    async dispose() {
      ta.dispose();
      tb.dispose();
      await eng.sync();
    },
  };
}

/**
 * retrv doing what one onnxruntime session.run() does: upload A and B, multiply, read C
 * back. Puts the ort-webgpu number (which cannot keep tensors on the GPU) in context.
 */
async function retrvMatmulWithIo(a: Float32Array, b: Float32Array, m: number, k: number, n: number): Promise<MatmulRunner> {
  const matmul = runtimeFn<Matmul>('matmul');
  const once = async (): Promise<Float32Array> => {
    const ta = fromArray(a, [m, k]);
    const tb = fromArray(b, [k, n]);
    const c = matmul(ta, tb);
    try {
      return (await c.toArray()) as Float32Array;
    } finally {
      for (const t of [ta, tb, c]) t.dispose();
    }
  };
  return {
    async run() {
      await once();
    },
    async output() {
      return Float32Array.from(await once());
    },
    async dispose() {
      await getEngine().sync();
    },
  };
}

const libraries: Record<string, (a: Float32Array, b: Float32Array, m: number, k: number, n: number) => Promise<MatmulRunner>> = {
  retrv: retrvMatmul,
  'retrv+io': retrvMatmulWithIo,
  'tfjs-webgpu': async (a, b, m, k, n) => tfjsMatmul(await getGpu(), a, b, m, k, n),
  'ort-webgpu': (a, b, m, k, n) => ortMatmul('webgpu', a, b, m, k, n),
  'ort-cpu': (a, b, m, k, n) => ortMatmul('cpu', a, b, m, k, n),
};

function matmulCase(library: string, size: number): BenchCase {
  const m = size;
  const k = size;
  const n = size;
  let a: Float32Array | null = null;
  let b: Float32Array | null = null;
  let runner: MatmulRunner | null = null;
  return {
    name: `matmul ${m}x${k}x${n}`,
    library,
    params: { m, k, n, dtype: 'f32' },
    work: { flops: 2 * m * k * n },
    async setup() {
      // Same seeds for every library: identical inputs.
      a = randF32(m * k, 1000 + size);
      b = randF32(k * n, 2000 + size);
      runner = await libraries[library](a, b, m, k, n);
    },
    async check() {
      return checkMatmul(a!, b!, await runner!.output(), m, k, n);
    },
    run: () => runner!.run(),
    async teardown() {
      await runner?.dispose();
      runner = null;
      a = b = null;
    },
  };
}

const suite: Suite = {
  name: 'matmul',
  describe: 'square f32 C = A @ B; GFLOP/s = 2·n³ / mean time per run',
  cases({ sizes }) {
    return sizes.flatMap((s) => Object.keys(libraries).map((lib) => matmulCase(lib, s)));
  },
};
export default suite;
