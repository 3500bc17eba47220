// rmsNorm(x, w, eps) over the last axis of a [rows, cols] f32 tensor:
// y = x / sqrt(mean(x²) + eps) · w. Memory bound: GB/s counts reading x and w, writing y.
import { type Tensor, fromArray, getEngine } from '../../runtime/index.ts';
import { type BenchCase, type Suite, checkClose, cpuRmsNorm, randF32, runtimeFn } from './_lib.ts';

type RmsNorm = (x: Tensor, w: Tensor, eps: number) => Tensor;

const EPS = 1e-5;

function rmsNormCase(rows: number, cols: number): BenchCase {
  let x: Tensor | null = null;
  let w: Tensor | null = null;
  let hx: Float32Array | null = null;
  let hw: Float32Array | null = null;
  let rmsNorm: RmsNorm | null = null;
  return {
    name: `rmsNorm ${rows}x${cols}`,
    library: 'retrv',
    params: { rows, cols, eps: EPS },
    work: { bytes: (2 * rows * cols + cols) * 4 },
    async setup() {
      rmsNorm = runtimeFn<RmsNorm>('rmsNorm');
      hx = randF32(rows * cols, 41, -2, 2);
      hw = randF32(cols, 42, 0.5, 1.5);
      x = fromArray(hx, [rows, cols]);
      w = fromArray(hw, [cols]);
    },
    async check() {
      const y = rmsNorm!(x!, w!, EPS);
      try {
        return checkClose('rmsNorm', await y.toArray(), cpuRmsNorm(hx!, hw!, rows, cols, EPS), 1e-5, 1e-4);
      } finally {
        y.dispose();
      }
    },
    async run() {
      const y = rmsNorm!(x!, w!, EPS);
      await getEngine().sync();
      y.dispose();
    },
    async teardown() {
      x?.dispose();
      w?.dispose();
      x = w = hx = hw = null;
    },
  };
}

const suite: Suite = {
  name: 'rmsnorm',
  describe: 'RMSNorm over the last axis with a weight; GB/s = (read x, w + write y) / mean time',
  cases: ({ quick }) => (quick ? [rmsNormCase(512, 512)] : [rmsNormCase(512, 512), rmsNormCase(4096, 1024)]),
};
export default suite;
