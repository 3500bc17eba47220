// Decoding helpers over the vocabulary axis: top-k, GPU token sampling (temperature,
// nucleus / top-p, deterministic per seed) and the log-probabilities of chosen tokens
// (differentiable: GRPO needs per-token log-probs of the policy).
import { assertDType } from '../dtype.ts';
import { Params, getEngine } from '../engine.ts';
import { Tensor, empty, shapeStr } from '../tensor.ts';
import { noGrad, record } from '../autograd.ts';
import { contiguous, zeros } from './copy.ts';
import { grid1d } from './util.ts';

// ---------------------------------------------------------------- top-k

/** Most chunks a row is split into for top-k (stage 1 parallelism; the merge holds one head per chunk). */
const TOPK_MAX_CHUNKS = 64;

/**
 * The k largest values along the last axis, sorted descending (ties: lower index first),
 * with their indices (i32). Gradients flow from `values` back to the selected positions.
 */
export function topk(x: Tensor, k: number): { values: Tensor; indices: Tensor } {
  assertDType('topk', 'x', x.dtype, ['f32']);
  if (x.rank === 0) throw new RangeError(`topk: x must have at least one axis, got shape ${shapeStr(x.shape)}`);
  const V = x.shape[x.rank - 1];
  if (!Number.isInteger(k) || k < 0 || k > V) throw new RangeError(`topk: k = ${k} is out of range for a last axis of ${V} (shape ${shapeStr(x.shape)})`);
  const rows = V === 0 ? 0 : x.size / V;
  const outShape = [...x.shape.slice(0, -1), k];
  const values = empty(outShape);
  const indices = empty(outShape, 'i32');
  if (rows === 0 || k === 0) return { values, indices };

  const xc = noGrad(() => contiguous(x));
  const eng = getEngine();
  // Split long rows so that each invocation scans at least ~8k elements.
  const C = Math.max(1, Math.min(TOPK_MAX_CHUNKS, Math.floor(V / (8 * k))));
  const len = Math.ceil(V / C);
  const label = `topk k=${k} of ${shapeStr(x.shape)}`;
  const sv = C === 1 ? values : empty([rows * C, k]);
  const si = C === 1 ? indices : empty([rows * C, k], 'i32');
  eng.dispatch({
    shader: 'topk',
    params: new Params().u32(rows * C, V, k, C, len, xc.offset),
    buffers: [xc.buf, sv.buf, si.buf],
    workgroups: grid1d(rows * C, 64),
    label,
  });
  if (C > 1) {
    eng.dispatch({
      shader: 'topk_merge',
      params: new Params().u32(rows, V, k, C, len),
      buffers: [sv.buf, si.buf, values.buf, indices.buf],
      workgroups: grid1d(rows, 64),
      label: `${label} (merge)`,
    });
    sv.dispose();
    si.dispose();
  }
  xc.dispose();
  const inShape = x.shape;
  record(
    values,
    'topk',
    [x],
    (g, [idx]) => {
      const gc = contiguous(g);
      const dx = zeros(inShape);
      eng.dispatch({
        shader: 'topk_bwd',
        params: new Params().u32(rows * k, k, V, gc.offset),
        buffers: [gc.buf, idx.buf, dx.buf],
        workgroups: grid1d(rows * k),
        label: `${label} backward`,
      });
      gc.dispose();
      return [dx];
    },
    [indices],
  );
  return { values, indices };
}

// ---------------------------------------------------------------- sampling

export interface SampleOptions {
  /** Softmax temperature; 0 picks the argmax (lowest index on ties). Default 1. */
  temperature?: number;
  /** Nucleus mass: keep the most probable tokens whose mass reaches topP. Default 1 (all). */
  topP?: number;
  /** Random seed; the same (seed, step, row) always draws the same uniform. */
  seed: number;
  /** Decoding step, mixed into the per-row random stream. Default 0. */
  step?: number;
}

/** 32-bit PCG hash, the same as pcg() in shaders/sample.wgsl. */
function pcg(v: number): number {
  const s = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const w = Math.imul(((s >>> ((s >>> 28) + 4)) ^ s) >>> 0, 277803737) >>> 0;
  return ((w >>> 22) ^ w) >>> 0;
}

function seedWords(seed: number): [number, number] {
  if (!Number.isFinite(seed)) throw new RangeError(`sample: seed must be a finite number, got ${seed}`);
  const s = Math.trunc(seed);
  return [s >>> 0, Math.floor(s / 2 ** 32) >>> 0];
}

/**
 * The uniform in [0, 1) the sampler draws for (seed, step, row): the host mirror of the
 * kernel's counter-based hash (24 random bits), for tests and reproducing a draw.
 */
export function sampleUniform(seed: number, step: number, row: number): number {
  const [lo, hi] = seedWords(seed);
  const h = pcg((row >>> 0) ^ pcg((step >>> 0) ^ pcg(hi ^ pcg(lo))));
  return (h >>> 8) / 16777216;
}

/**
 * Draws one token per row of logits [N, V] on the GPU: softmax(logits / temperature), keep
 * the nucleus (smallest most-probable set with mass >= topP; tokens tied at its edge are all
 * kept), then inverse-CDF sampling with the row's uniform. Returns i32 [N]. No gradients.
 */
export function sample(logits: Tensor, opts: SampleOptions): Tensor {
  assertDType('sample', 'logits', logits.dtype, ['f32']);
  if (logits.rank !== 2) throw new RangeError(`sample: logits must be [N, V], got shape ${shapeStr(logits.shape)}`);
  const [N, V] = logits.shape;
  if (V === 0) throw new RangeError(`sample: logits have an empty vocabulary axis (shape ${shapeStr(logits.shape)})`);
  const temperature = opts.temperature ?? 1;
  const topP = opts.topP ?? 1;
  const step = opts.step ?? 0;
  if (!(temperature >= 0) || !Number.isFinite(temperature)) throw new RangeError(`sample: temperature must be >= 0, got ${temperature}`);
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`sample: topP must be in (0, 1], got ${topP}`);
  if (!Number.isInteger(step) || step < 0) throw new RangeError(`sample: step must be a non-negative integer, got ${step}`);
  const [seedLo, seedHi] = seedWords(opts.seed);
  const out = empty([N], 'i32');
  if (N === 0) return out;
  const xc = noGrad(() => contiguous(logits));
  const greedy = temperature === 0;
  getEngine().dispatch({
    shader: 'sample',
    params: new Params()
      .u32(N, V, xc.offset, greedy ? 1 : 0)
      .f32(greedy ? 1 : 1 / temperature, topP)
      .u32(seedLo, seedHi, step >>> 0),
    buffers: [xc.buf, out.buf],
    workgroups: grid1d(N, 1),
    label: `sample ${shapeStr(logits.shape)}`,
  });
  xc.dispose();
  return out;
}

// ---------------------------------------------------------------- log-probs

/**
 * log softmax(logits)[n, tokens[n]] for logits [N, V] and tokens i32 [N] -> f32 [N].
 * A token outside [0, V) (e.g. -1 padding) gives 0 and no gradient.
 * Backward w.r.t. logits: g[n] * (onehot(tokens[n]) - softmax(logits[n])).
 */
export function logProbsOf(logits: Tensor, tokens: Tensor): Tensor {
  assertDType('logProbsOf', 'logits', logits.dtype, ['f32']);
  assertDType('logProbsOf', 'tokens', tokens.dtype, ['i32']);
  if (logits.rank !== 2) throw new RangeError(`logProbsOf: logits must be [N, V], got shape ${shapeStr(logits.shape)}`);
  const [N, V] = logits.shape;
  if (tokens.rank !== 1 || tokens.shape[0] !== N) {
    throw new RangeError(`logProbsOf: tokens have shape ${shapeStr(tokens.shape)}, expected [N] = ${shapeStr([N])} for logits ${shapeStr(logits.shape)}`);
  }
  const out = empty([N]);
  if (N === 0) return out;
  if (V === 0) throw new RangeError(`logProbsOf: logits have an empty vocabulary axis (shape ${shapeStr(logits.shape)})`);
  const [xc, tc] = noGrad(() => [contiguous(logits), contiguous(tokens)]);
  const lse = empty([N]);
  const eng = getEngine();
  const label = `logProbsOf ${shapeStr(logits.shape)}`;
  eng.dispatch({
    shader: 'logprobs',
    params: new Params().u32(N, V, xc.offset, tc.offset),
    buffers: [xc.buf, tc.buf, out.buf, lse.buf],
    workgroups: grid1d(N, 1),
    label,
  });
  record(
    out,
    'logProbsOf',
    [logits],
    (g, [xs, ts, ls]) => {
      const gc = contiguous(g);
      const dx = empty([N, V]);
      eng.dispatch({
        shader: 'logprobs_bwd',
        params: new Params().u32(N * V, V, xs.offset, ts.offset).u32(gc.offset),
        buffers: [xs.buf, ts.buf, ls.buf, gc.buf, dx.buf],
        workgroups: grid1d(N * V),
        label: `${label} backward`,
      });
      gc.dispose();
      return [dx];
    },
    [xc, tc, lse],
  );
  xc.dispose();
  tc.dispose();
  lse.dispose();
  return out;
}

