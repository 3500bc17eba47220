// The model presets on the adapter at hand: prefill and decode tokens/s of the language
// model (KV cache), and the vision encoder's cost per image, with peak GPU memory.
// Checks are self-consistency checks against a different code path (a full forward
// without the cache; one image alone against the same image inside a batch), since a
// float64 CPU model would take longer than the benchmark.
import { type Tensor, fromArray, getEngine, noGrad, reshape, resetStats, slice, stats, tidy } from '../../runtime/index.ts';
import { Session } from '../../model/generate.ts';
import { Llm, initParameters } from '../../model/llm.ts';
import { PRESETS, type ModelPreset, summarize, withVocab } from '../../model/presets.ts';
import { VisionEncoder, initVisionParameters } from '../../model/vision.ts';
import { patchPositions, patchify, preprocess } from '../../model/image.ts';
import { type BenchCase, type Suite, checkClose, rng } from './_lib.ts';

const PROMPT = 128;

function tokens(n: number, vocab: number, seed: number): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => Math.floor(r() * vocab));
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** Last-position logits of a full forward (no cache), for checks. */
async function fullLastLogits(model: Llm, ids: number[]): Promise<Float32Array> {
  const T = ids.length;
  const out = noGrad(() =>
    tidy(() => {
      const pos = fromArray(Int32Array.from({ length: 3 * T }, (_, i) => i % T), model.config.ropeSections ? [3, 1, T] : [1, T], 'i32');
      const logits = model.forward(fromArray(ids, [1, T], 'i32'), pos);
      return reshape(slice(logits, 1, T - 1, T), [model.config.vocabSize]);
    }),
  );
  const v = (await out.toArray()) as Float32Array;
  out.dispose();
  return v;
}

function prefillCase(p: ModelPreset): BenchCase {
  let model: Llm | null = null;
  const ids = tokens(PROMPT, p.vocabSize, 7);
  const s = summarize(p, p.vocabSize, PROMPT);
  return {
    name: `prefill ${p.name} T=${PROMPT}`,
    library: 'retrv',
    params: { preset: p.name, tokens: PROMPT, llmParams: s.llmParams },
    work: { flops: s.flopsPerToken * PROMPT },
    async setup() {
      model = new Llm(withVocab(p, p.vocabSize).llm, initParameters(withVocab(p, p.vocabSize).llm, 1));
    },
    async check() {
      resetStats();
      const session = new Session(model!, 1, { capacity: PROMPT });
      session.prefill([ids]);
      const got = await session.logits().toArray();
      const peak = stats().peakBytes;
      session.dispose();
      const r = checkClose('prefill logits', got, await fullLastLogits(model!, ids), 1e-4, 1e-3);
      return { ...r, note: `peak ${mib(peak)}; ${(s.llmParams / 1e6).toFixed(2)}M params, ${(s.flopsPerToken / 1e6).toFixed(1)} MFLOP/token` };
    },
    async run() {
      const session = new Session(model!, 1, { capacity: PROMPT });
      session.prefill([ids]);
      await getEngine().sync();
      session.dispose();
    },
    async teardown() {
      for (const t of model?.params.values() ?? []) t.dispose();
      model = null;
    },
  };
}

/** One decode step per run through the KV cache; the context grows from 128 by one per run. */
function decodeCase(p: ModelPreset): BenchCase {
  let model: Llm | null = null;
  let session: Session | null = null;
  const ids = tokens(PROMPT, p.vocabSize, 8);
  const s = summarize(p, p.vocabSize, PROMPT);
  let next = 1;
  return {
    name: `decode ${p.name} from T=${PROMPT}`,
    library: 'retrv',
    params: { preset: p.name, context: PROMPT },
    work: { flops: s.flopsPerToken },
    async setup() {
      const cfg = withVocab(p, p.vocabSize).llm;
      model = new Llm(cfg, initParameters(cfg, 1));
      session = new Session(model, 1, { capacity: PROMPT + 4096 });
      session.prefill([ids]);
      await getEngine().sync();
    },
    async check() {
      session!.append([[next]]);
      const got = await session!.logits().toArray();
      const r = checkClose('decode logits', got, await fullLastLogits(model!, [...ids, next]), 1e-4, 1e-3);
      session!.dispose();
      session = new Session(model!, 1, { capacity: PROMPT + 4096 });
      session.prefill([ids]);
      return { ...r, note: 'one token per run, context 128 + runs so far' };
    },
    async run() {
      next = (next * 31 + 7) % p.vocabSize;
      session!.append([[next]]);
      await getEngine().sync();
    },
    async teardown() {
      session?.dispose();
      for (const t of model?.params.values() ?? []) t.dispose();
      model = session = null;
    },
  };
}

function visionCase(p: ModelPreset): BenchCase {
  let enc: VisionEncoder | null = null;
  let patches: Tensor | null = null;
  let pos: Int32Array | null = null;
  const s = summarize(p);
  const S = p.imageSize;
  return {
    name: `vision ${p.name} ${S}px`,
    library: 'retrv',
    params: { preset: p.name, imageSize: S, imageTokens: s.imageTokens },
    work: { flops: s.flopsPerImage },
    async setup() {
      const cfg = withVocab(p, p.vocabSize).vision;
      enc = new VisionEncoder(cfg, initVisionParameters(cfg, 1));
      const r = rng(3);
      const rgba = Uint8Array.from({ length: S * S * 4 }, () => Math.floor(r() * 256));
      const pre = preprocess({ width: S, height: S, rgba }, { patchSize: cfg.patchSize, mergeSize: cfg.mergeSize, targetSize: S });
      const flat = patchify(pre, cfg.patchSize, cfg.mergeSize);
      patches = fromArray(flat, [pre.gridH * pre.gridW, flat.length / (pre.gridH * pre.gridW)]);
      pos = patchPositions(pre.gridH, pre.gridW, cfg.mergeSize);
    },
    async check() {
      resetStats();
      const one = noGrad(() => enc!.forward(patches!, pos!));
      const got = await one.toArray();
      const peak = stats().peakBytes;
      one.dispose();
      // The same image twice in a batch must give the same rows twice.
      const n = patches!.shape[0];
      const pos2 = new Int32Array(4 * n);
      pos2.set(pos!.subarray(0, n), 0);
      pos2.set(pos!.subarray(0, n), n);
      pos2.set(pos!.subarray(n), 2 * n);
      pos2.set(pos!.subarray(n), 3 * n);
      const host = await patches!.toArray();
      const doubled = new Float32Array(host.length * 2);
      doubled.set(host, 0);
      doubled.set(host, host.length);
      const batch = noGrad(() => tidy(() => enc!.forward(fromArray(doubled, [2 * n, patches!.shape[1]]), pos2, [n, n])));
      const b = await batch.toArray();
      batch.dispose();
      const half = b.length / 2;
      checkClose('vision batch vs single', b.subarray(half), got, 1e-5, 1e-4);
      const r = checkClose('vision batch vs single', b.subarray(0, half), got, 1e-5, 1e-4);
      return { ...r, note: `peak ${mib(peak)}; ${s.imageTokens} tokens/image, ${(s.visionParams / 1e6).toFixed(2)}M params` };
    },
    async run() {
      const y = noGrad(() => enc!.forward(patches!, pos!));
      await getEngine().sync();
      y.dispose();
    },
    async teardown() {
      patches?.dispose();
      for (const t of enc?.params.values() ?? []) t.dispose();
      enc = patches = null;
    },
  };
}

const suite: Suite = {
  name: 'model',
  describe: 'model presets: prefill and decode tokens/s (KV cache), vision encoder per image; GFLOP/s from the model FLOPs',
  cases: ({ quick }) => {
    const presets = quick ? [PRESETS.tiny, PRESETS.small] : [PRESETS.tiny, PRESETS.small, PRESETS.base];
    return presets.flatMap((p) => [prefillCase(p), decodeCase(p), visionCase(p)]);
  },
};
export default suite;
