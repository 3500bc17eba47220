// Training throughput of the model presets: one language-model training step of each
// preset's LLM (forward, backward, gradient clipping, AdamW; one submit) on random tokens,
// as tokens per second and model FLOPs utilisation (MFU).
// Model FLOPs per step = 3 x the forward FLOPs of model/presets.ts summarize() (6 per
// matmul weight per token plus 12 * layers * hidden * T for attention, the PaLM
// convention; causal masking is not discounted), times the tokens of the batch.
// MFU = those FLOPs per second over the adapter's measured matmul rate: the suite times a
// square f32 matmul on the same adapter in the same run (2048 on hardware, 1024 on a
// software adapter) and bench/run.ts divides (params.mfuReference names that case).
// Check before timing: the step's loss equals a separate no-grad forward's loss on the same
// weights, and three steps on one batch lower it.
import { AdamW, type Tensor, crossEntropy, fromArray, getEngine, matmul, noGrad, reshape, tidy, tunePending } from '../../runtime/index.ts';
import { Llm, initParameters } from '../../model/llm.ts';
import { PRESETS, type ModelPreset, summarize, withVocab } from '../../model/presets.ts';
import { trainStep } from '../../train/run-state.ts';
import { type BenchCase, CheckFailed, type Suite, checkMatmul, randF32, rng } from './_lib.ts';

interface Shape {
  batch: number;
  T: number;
}

const SHAPES: Record<string, Shape> = { tiny: { batch: 8, T: 128 }, small: { batch: 8, T: 128 }, base: { batch: 4, T: 256 } };

function referenceName(size: number): string {
  return `matmul ${size}x${size}x${size} (MFU reference)`;
}

function randomBatch(B: number, T: number, vocab: number, seed: number): { ids: Int32Array; targets: Int32Array; pos: Int32Array } {
  const r = rng(seed);
  const ids = Int32Array.from({ length: B * T }, () => Math.floor(r() * vocab));
  const targets = Int32Array.from({ length: B * T }, () => Math.floor(r() * vocab));
  return { ids, targets, pos: Int32Array.from({ length: B * T }, (_, i) => i % T) };
}

function trainCase(p: ModelPreset, shape: Shape, reference: string): BenchCase {
  const cfg = withVocab(p, p.vocabSize).llm;
  const { batch: B, T } = shape;
  const tokens = B * T;
  const s = summarize(p, p.vocabSize, T);
  let model: Llm | null = null;
  let opt: AdamW | null = null;
  let params: Tensor[] = [];
  const data = randomBatch(B, T, cfg.vocabSize, 11);
  const positions = () => {
    // M-RoPE presets take [3, B, T] positions (all three equal for text).
    const sections = cfg.ropeSections?.length ?? 0;
    if (!sections) return fromArray(data.pos, [B, T], 'i32');
    const pos = new Int32Array(sections * tokens);
    for (let k = 0; k < sections; k++) pos.set(data.pos, k * tokens);
    return fromArray(pos, [sections, B, T], 'i32');
  };
  const loss = () => {
    const logits = model!.forward(fromArray(data.ids, [B, T], 'i32'), positions());
    return crossEntropy(reshape(logits, [tokens, cfg.vocabSize]), fromArray(data.targets, [tokens], 'i32'));
  };
  const step = async () => {
    const l = trainStep(params, opt!, 1e-4, 1, loss);
    const v = await l.item();
    l.dispose();
    return v;
  };
  return {
    name: `train step ${p.name} ${B}x${T}`,
    library: 'retrv',
    params: { preset: p.name, batch: B, T, tokens, llmParams: s.llmParams, mfuReference: reference },
    work: { flops: 3 * s.flopsPerToken * tokens },
    async setup() {
      model = new Llm(cfg, initParameters(cfg, 1));
      params = [...model.params.values()];
      opt = new AdamW(params, { lr: 1e-4, weightDecay: 0.01, betas: [0.9, 0.95] });
    },
    async check() {
      const fwd = noGrad(() => tidy(loss));
      const before = await fwd.item();
      fwd.dispose();
      const first = await step();
      if (Math.abs(first - before) > 1e-4 * Math.max(1, Math.abs(before))) {
        throw new CheckFailed(`the training step's loss ${first} differs from a no-grad forward's ${before}`);
      }
      // Tune the matmul classes the step used, then make sure training still works.
      await tunePending();
      await step();
      const third = await step();
      if (!(third < first)) throw new CheckFailed(`three steps on one batch did not lower the loss (${first} -> ${third})`);
      return { compared: 1, maxAbsErr: Math.abs(first - before), note: `loss ${first.toFixed(3)} -> ${third.toFixed(3)}; ${(s.llmParams / 1e6).toFixed(2)}M params, ${tokens} tokens/step` };
    },
    async run() {
      const l = trainStep(params, opt!, 1e-4, 1, loss);
      await getEngine().sync();
      l.dispose();
    },
    async teardown() {
      opt?.dispose();
      for (const t of params) t.dispose();
      model = opt = null;
      params = [];
    },
  };
}

/** The adapter's matmul rate: square f32 matmul with the tuned kernel. */
function referenceCase(size: number): BenchCase {
  let a: Tensor | null = null;
  let b: Tensor | null = null;
  const ha = randF32(size * size, 5);
  const hb = randF32(size * size, 6);
  const run = async () => {
    const c = matmul(a!, b!);
    await getEngine().sync();
    c.dispose();
  };
  return {
    name: referenceName(size),
    library: 'retrv',
    params: { size },
    work: { flops: 2 * size ** 3 },
    async setup() {
      a = fromArray(ha, [size, size]);
      b = fromArray(hb, [size, size]);
    },
    async check() {
      // Tune this class first, then check the kernel that will be timed (sampled entries
      // against float64).
      await run();
      await tunePending();
      const c = matmul(a!, b!);
      const got = (await c.toArray()) as Float32Array;
      c.dispose();
      return { ...checkMatmul(ha, hb, got, size, size, size), note: 'the adapter matmul rate MFU divides by' };
    },
    run,
    async teardown() {
      a?.dispose();
      b?.dispose();
      a = b = null;
    },
  };
}

const suite: Suite = {
  name: 'train-presets',
  describe: 'one LM training step per model preset: tokens/s and MFU (model FLOPs over the measured matmul rate of the adapter)',
  cases: ({ quick }) => {
    const size = getEngine().ctx.isSoftware ? 1024 : 2048;
    const presets = quick ? [PRESETS.tiny, PRESETS.small] : [PRESETS.tiny, PRESETS.small, PRESETS.base];
    return [referenceCase(size), ...presets.map((p) => trainCase(p, SHAPES[p.name] ?? { batch: 8, T: 128 }, referenceName(size)))];
  },
};
export default suite;
