// One training step of a tiny causal language model: token embedding, pre-norm blocks
// (multi-head causal attention + SiLU MLP, residuals), final RMSNorm, LM head,
// cross-entropy on next tokens, backward, AdamW update. Random tokens: the model learns
// nothing useful, the point is the cost of a real step.
// GFLOP/s counts 3× the forward matmul/attention FLOPs (backward ≈ 2× forward);
// elementwise, norm and optimizer work is not counted.
import { type Tensor, add, backward, fromArray, getEngine, keep, permute, requireGrad, reshape, silu, tidy } from '../../runtime/index.ts';
import { type BenchCase, CheckFailed, type Suite, cpuAttention, cpuMatmul, cpuRmsNorm, randF32, rng, runtimeFns } from './_lib.ts';

interface Optim {
  step(): void;
  zeroGrad(): void;
  dispose(): void;
}

type Ops = {
  matmul: (a: Tensor, b: Tensor) => Tensor;
  rmsNorm: (x: Tensor, w: Tensor, eps: number) => Tensor;
  attention: (q: Tensor, k: Tensor, v: Tensor, opts?: { causal?: boolean }) => Tensor;
  embedding: (weight: Tensor, ids: Tensor) => Tensor;
  crossEntropy: (logits: Tensor, targets: Tensor) => Tensor;
  AdamW: new (params: Tensor[], opts?: { lr?: number; weightDecay?: number }) => Optim;
};

const EPS = 1e-5;
const LR = 1e-3;

interface Dims {
  batch: number;
  t: number;
  vocab: number;
  d: number;
  heads: number;
  ff: number;
  layers: number;
}

interface ParamSpec {
  name: string;
  shape: number[];
  /** 'gain' starts near 1 (norm weights); 'weight' uniform in ±1/sqrt(fan-in). */
  kind: 'gain' | 'weight';
}

function paramSpecs({ vocab, d, ff, layers }: Dims): ParamSpec[] {
  const specs: ParamSpec[] = [{ name: 'embed', shape: [vocab, d], kind: 'weight' }];
  for (let l = 0; l < layers; l++) {
    specs.push(
      { name: `l${l}.norm1`, shape: [d], kind: 'gain' },
      { name: `l${l}.wq`, shape: [d, d], kind: 'weight' },
      { name: `l${l}.wk`, shape: [d, d], kind: 'weight' },
      { name: `l${l}.wv`, shape: [d, d], kind: 'weight' },
      { name: `l${l}.wo`, shape: [d, d], kind: 'weight' },
      { name: `l${l}.norm2`, shape: [d], kind: 'gain' },
      { name: `l${l}.w1`, shape: [d, ff], kind: 'weight' },
      { name: `l${l}.w2`, shape: [ff, d], kind: 'weight' },
    );
  }
  specs.push({ name: 'normf', shape: [d], kind: 'gain' }, { name: 'head', shape: [d, vocab], kind: 'weight' });
  return specs;
}

function initParams(specs: ParamSpec[]): Float32Array[] {
  return specs.map((s, i) => {
    const n = s.shape.reduce((a, b) => a * b, 1);
    if (s.kind === 'gain') return randF32(n, 600 + i, 0.9, 1.1);
    const r = 1 / Math.sqrt(s.shape[0]);
    return randF32(n, 600 + i, -r, r);
  });
}

/** Inputs and next-token targets: random ids in [0, vocab). */
function tokens({ batch, t, vocab }: Dims): { ids: Int32Array; targets: Int32Array } {
  const r = rng(77);
  const seq = Int32Array.from({ length: batch * (t + 1) }, () => Math.floor(r() * vocab));
  const ids = new Int32Array(batch * t);
  const targets = new Int32Array(batch * t);
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < t; i++) {
      ids[b * t + i] = seq[b * (t + 1) + i];
      targets[b * t + i] = seq[b * (t + 1) + i + 1];
    }
  }
  return { ids, targets };
}

function forward(ops: Ops, dims: Dims, ids: Tensor, targets: Tensor, p: Tensor[]): Tensor {
  const { batch: B, t: T, d, heads: H, layers } = dims;
  const hd = d / H;
  // [B·T, d] -> [B, H, T, hd] (a strided view; attention reads it through contiguous()).
  const split = (m: Tensor) => permute(reshape(m, [B, T, H, hd]), [0, 2, 1, 3]);
  let x = ops.embedding(p[0], ids); // [B·T, d]
  let k = 1;
  for (let l = 0; l < layers; l++) {
    const [n1, wq, wk, wv, wo, n2, w1, w2] = p.slice(k, k + 8);
    k += 8;
    const h = ops.rmsNorm(x, n1, EPS);
    const a = ops.attention(split(ops.matmul(h, wq)), split(ops.matmul(h, wk)), split(ops.matmul(h, wv)), { causal: true });
    const merged = reshape(permute(a, [0, 2, 1, 3]), [B * T, d]);
    x = add(x, ops.matmul(merged, wo));
    x = add(x, ops.matmul(silu(ops.matmul(ops.rmsNorm(x, n2, EPS), w1)), w2));
  }
  const logits = ops.matmul(ops.rmsNorm(x, p[k], EPS), p[k + 1]);
  return ops.crossEntropy(logits, targets);
}

/** The same forward in float64 on the host: the mean next-token cross-entropy. */
function cpuLoss(dims: Dims, ids: Int32Array, targets: Int32Array, p: Float32Array[]): number {
  const { batch: B, t: T, vocab: V, d, heads: H, ff, layers } = dims;
  const N = B * T;
  const hd = d / H;
  let x = new Float64Array(N * d);
  for (let i = 0; i < N; i++) for (let c = 0; c < d; c++) x[i * d + c] = p[0][ids[i] * d + c];
  // [B·T, d] <-> [B·H, T, hd]
  const toHeads = (m: Float64Array) => {
    const out = new Float64Array(N * d);
    for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let i = 0; i < T; i++) for (let c = 0; c < hd; c++) {
      out[((b * H + h) * T + i) * hd + c] = m[(b * T + i) * d + h * hd + c];
    }
    return out;
  };
  const fromHeads = (m: Float64Array) => {
    const out = new Float64Array(N * d);
    for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let i = 0; i < T; i++) for (let c = 0; c < hd; c++) {
      out[(b * T + i) * d + h * hd + c] = m[((b * H + h) * T + i) * hd + c];
    }
    return out;
  };
  let k = 1;
  for (let l = 0; l < layers; l++) {
    const [n1, wq, wk, wv, wo, n2, w1, w2] = p.slice(k, k + 8);
    k += 8;
    const h = cpuRmsNorm(x, n1, N, d, EPS);
    const a = cpuAttention(toHeads(cpuMatmul(h, wq, N, d, d)), toHeads(cpuMatmul(h, wk, N, d, d)), toHeads(cpuMatmul(h, wv, N, d, d)), B * H, T, hd, true);
    const o = cpuMatmul(fromHeads(a), wo, N, d, d);
    x = x.map((v, i) => v + o[i]);
    const u = cpuMatmul(cpuRmsNorm(x, n2, N, d, EPS), w1, N, d, ff).map((v) => v / (1 + Math.exp(-v)));
    const m = cpuMatmul(u, w2, N, ff, d);
    x = x.map((v, i) => v + m[i]);
  }
  const logits = cpuMatmul(cpuRmsNorm(x, p[k], N, d, EPS), p[k + 1], N, d, V);
  let loss = 0;
  for (let i = 0; i < N; i++) {
    let max = -Infinity;
    for (let c = 0; c < V; c++) max = Math.max(max, logits[i * V + c]);
    let s = 0;
    for (let c = 0; c < V; c++) s += Math.exp(logits[i * V + c] - max);
    loss += max + Math.log(s) - logits[i * V + targets[i]];
  }
  return loss / N;
}

function stepFlops({ batch, t, vocab, d, ff, layers }: Dims): number {
  const n = batch * t;
  const perLayer = 2 * n * d * d * 4 + 2 * n * d * ff * 2 + 2 * batch * t * t * d;
  return 3 * (layers * perLayer + 2 * n * d * vocab);
}

function trainCase(dims: Dims): BenchCase {
  const specs = paramSpecs(dims);
  let ops: Ops | null = null;
  let opt: Optim | null = null;
  let ids: Tensor | null = null;
  let targets: Tensor | null = null;
  let params: Tensor[] = [];
  let host: { ids: Int32Array; targets: Int32Array; params: Float32Array[] } | null = null;

  /** forward + backward + AdamW; returns the loss (kept: the caller disposes it). */
  const step = (): Tensor => {
    const loss = tidy(() => {
      const l = forward(ops!, dims, ids!, targets!, params);
      backward(l);
      return l;
    });
    opt!.step();
    opt!.zeroGrad();
    return keep(loss);
  };

  return {
    name: `train step L${dims.layers} d${dims.d} h${dims.heads} ff${dims.ff} V${dims.vocab} b${dims.batch}x${dims.t}`,
    library: 'retrv',
    params: { ...dims, optimizer: 'AdamW', lr: LR },
    work: { flops: stepFlops(dims) },
    async setup() {
      if (dims.d % dims.heads) throw new Error(`d ${dims.d} is not a multiple of heads ${dims.heads}`);
      ops = runtimeFns<Ops>('matmul', 'rmsNorm', 'attention', 'embedding', 'crossEntropy', 'AdamW');
      const tk = tokens(dims);
      host = { ...tk, params: initParams(specs) };
      ids = fromArray(tk.ids, [dims.batch * dims.t], 'i32');
      targets = fromArray(tk.targets, [dims.batch * dims.t], 'i32');
      params = host.params.map((h, i) => {
        const t = requireGrad(fromArray(h, specs[i].shape));
        t.name = specs[i].name;
        return t;
      });
      opt = new ops.AdamW(params, { lr: LR, weightDecay: 0 });
    },
    async check() {
      // The first loss matches the float64 forward, and one AdamW step lowers it (a wrong
      // gradient sign shows up here: Adam's first step moves every weight by about lr·sign(g)).
      const l0 = step();
      const l1 = step();
      const [v0, v1] = [await l0.item(), await l1.item()];
      l0.dispose();
      l1.dispose();
      const want = cpuLoss(dims, host!.ids, host!.targets, host!.params);
      const err = Math.abs(v0 - want);
      if (!(err <= 1e-4 * Math.abs(want) + 1e-6)) throw new CheckFailed(`loss ${v0}, float64 reference ${want}`);
      if (!(v1 < v0)) throw new CheckFailed(`one AdamW step (lr ${LR}) did not lower the loss: ${v0} -> ${v1}`);
      return { compared: 1, maxAbsErr: err, note: `loss ${v0.toFixed(5)} (ref ${want.toFixed(5)}) -> ${v1.toFixed(5)} after one step` };
    },
    async run() {
      const loss = step();
      await getEngine().sync();
      loss.dispose();
    },
    async teardown() {
      opt?.dispose();
      for (const t of [ids, targets, ...params]) t?.dispose();
      opt = ids = targets = null;
      params = [];
      host = null;
    },
  };
}

const quickDims: Dims = { batch: 2, t: 64, vocab: 64, d: 64, heads: 2, ff: 256, layers: 1 };
const fullDims: Dims = { batch: 4, t: 128, vocab: 256, d: 128, heads: 4, ff: 512, layers: 2 };

const suite: Suite = {
  name: 'train',
  describe: 'one AdamW step of a tiny causal LM (embed, attention+MLP blocks, LM head, cross-entropy); GFLOP/s = 3× forward FLOPs / mean time',
  cases: ({ quick }) => (quick ? [trainCase(quickDims)] : [trainCase(quickDims), trainCase(fullDims)]),
};
export default suite;
