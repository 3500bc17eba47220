// softmax(x, -1) over the rows of a [rows, cols] f32 tensor. Memory bound: GB/s counts
// one read of x and one write of y (what a fused kernel must move at least).
import { type Tensor, fromArray, getEngine } from '../../runtime/index.ts';
import { type BenchCase, type Suite, checkClose, cpuSoftmax, randF32, runtimeFn } from './_lib.ts';

type Softmax = (x: Tensor, axis: number) => Tensor;

function softmaxCase(rows: number, cols: number): BenchCase {
  let x: Tensor | null = null;
  let host: Float32Array | null = null;
  let softmax: Softmax | null = null;
  return {
    name: `softmax ${rows}x${cols}`,
    library: 'retrv',
    params: { rows, cols, axis: -1 },
    work: { bytes: 2 * rows * cols * 4 },
    async setup() {
      softmax = runtimeFn<Softmax>('softmax');
      // Spread of ±8 so the max-subtraction matters.
      host = randF32(rows * cols, 31, -8, 8);
      x = fromArray(host, [rows, cols]);
    },
    async check() {
      const y = softmax!(x!, -1);
      try {
        return checkClose('softmax', await y.toArray(), cpuSoftmax(host!, rows, cols), 1e-6, 1e-4);
      } finally {
        y.dispose();
      }
    },
    async run() {
      const y = softmax!(x!, -1);
      await getEngine().sync();
      y.dispose();
    },
    async teardown() {
      x?.dispose();
      x = host = null;
    },
  };
}

const suite: Suite = {
  name: 'softmax',
  describe: 'softmax over the last axis; GB/s = (read x + write y) / mean time',
  cases: ({ quick }) => (quick ? [softmaxCase(512, 512)] : [softmaxCase(512, 512), softmaxCase(4096, 1024)]),
};
export default suite;
