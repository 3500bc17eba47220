// Causal scaled dot-product attention, attention(q, k, v, {causal: true}) on
// [batch, heads, t, d] f32 tensors: softmax(q·kᵀ/sqrt(d) + mask)·v.
// GFLOP/s counts the useful work of the causal product: 2·b·h·t²·d (half of q·kᵀ and
// half of p·v), whatever a kernel computes and then masks.
import { type Tensor, fromArray, getEngine } from '../../runtime/index.ts';
import { type BenchCase, type Suite, checkClose, cpuAttention, randF32, runtimeFn } from './_lib.ts';

type Attention = (q: Tensor, k: Tensor, v: Tensor, opts?: { causal?: boolean }) => Tensor;

function attentionCase(b: number, h: number, t: number, d: number): BenchCase {
  const shape = [b, h, t, d];
  const n = b * h * t * d;
  let q: Tensor | null = null;
  let k: Tensor | null = null;
  let v: Tensor | null = null;
  let host: Float32Array[] = [];
  let attention: Attention | null = null;
  return {
    name: `attention causal b${b} h${h} t${t} d${d}`,
    library: 'retrv',
    params: { batch: b, heads: h, t, d, causal: true },
    work: { flops: 2 * b * h * t * t * d },
    async setup() {
      attention = runtimeFn<Attention>('attention');
      host = [randF32(n, 51), randF32(n, 52), randF32(n, 53)];
      [q, k, v] = host.map((x) => fromArray(x, shape));
    },
    async check() {
      const y = attention!(q!, k!, v!, { causal: true });
      try {
        const want = cpuAttention(host[0], host[1], host[2], b * h, t, d, true);
        return checkClose('attention', await y.toArray(), want, 1e-5, 1e-3);
      } finally {
        y.dispose();
      }
    },
    async run() {
      const y = attention!(q!, k!, v!, { causal: true });
      await getEngine().sync();
      y.dispose();
    },
    async teardown() {
      for (const x of [q, k, v]) x?.dispose();
      q = k = v = null;
      host = [];
    },
  };
}

const suite: Suite = {
  name: 'attention',
  describe: 'causal attention on [b, h, t, d]; GFLOP/s = 2·b·h·t²·d / mean time',
  cases: ({ quick }) => (quick ? [attentionCase(1, 4, 128, 64)] : [attentionCase(1, 4, 128, 64), attentionCase(1, 8, 512, 64)]),
};
export default suite;
