// Base pre-training of the multimodal model from scratch on the benchmark's corpus, so
// the reasoning stages start from a model that can read images and names.
//
// Tasks, mixed in every batch:
// - captioning: an emoji image (either vendor) -> "name: keyword, keyword, ..."
// - naming from text: "Keywords: ..." -> the emoji's name (text-side alignment)
// - language modelling on the candidate texts.
// Only emojis of the TRAIN split are used: the test emojis stay unseen.
//
// The tokenizer is trained here (byte-level BPE on the training texts plus the prompt
// vocabulary of the later stages) and saved with every checkpoint.
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { AdamW, cosineSchedule, crossEntropy, fromArray, getEngine, reshape } from '../runtime/index.ts';
import type { Preprocessed } from '../model/image.ts';
import { Mllm, type MllmConfig } from '../model/mllm.ts';
import { getPreset, withVocab } from '../model/presets.ts';
import type { Part, SequenceLayout } from '../model/sequence.ts';
import { SPECIAL, type Tokenizer, trainBpe } from '../model/tokenizer.ts';
import { Rng } from '../runtime/random.ts';
import type { EmojiAttributes } from './data/emoji-benchmark.ts';
import { ImageStore } from './data/inputs.ts';
import { loadOptimizerState, saveRunState, savedStep, trainStep } from './run-state.ts';

/** Words the later stages' prompts and reasoning traces use, so BPE learns them. */
export const PROMPT_VOCABULARY = [
  'What is shown in this picture?',
  'Which emoji has these keywords?',
  'Query: Candidates: The ideal result is an emoji that shows',
  'Eliminate candidate because it shows instead of; inspect the details; compare;',
  'the best match is candidate; skin tone light medium-light medium medium-dark dark',
  'You rank candidates for a retrieval query. Think step by step, inspect candidates when details matter, then give the index of the best candidate.',
];

export interface PretrainExample {
  /** Prompt parts (user turn content). */
  prompt: Part[];
  /** The answer text the loss is taken on. */
  answer: string;
}

/** A captioned image of the corpus. */
export interface CorpusItem {
  name: string;
  keywords: string[];
  /** Image paths (relative to the image root), one per vendor. */
  images: string[];
}

/** The training corpus: train-split emojis with their images. */
export function corpusFromAttributes(attrs: Iterable<EmojiAttributes>, imagePathOf: (a: EmojiAttributes) => string[]): CorpusItem[] {
  const byUnified = new Map<string, CorpusItem>();
  for (const a of attrs) {
    if (a.split !== 'train') continue;
    let item = byUnified.get(a.unified);
    if (!item) byUnified.set(a.unified, (item = { name: a.name, keywords: a.keywords, images: [] }));
    if (a.kind === 'image') for (const p of imagePathOf(a)) if (!item.images.includes(p)) item.images.push(p);
  }
  return [...byUnified.values()];
}

export function trainTokenizer(corpus: CorpusItem[], vocabSize: number): Tokenizer {
  const texts = corpus.map((c) => `${c.name}: ${c.keywords.join(', ')}`);
  return trainBpe([...texts, ...PROMPT_VOCABULARY], { vocabSize });
}

const chat = (user: Part[], answer: string): { parts: Part[]; answerAt: number } => {
  const parts: Part[] = [{ text: `${SPECIAL.imStart}user\n` }, ...user, { text: `${SPECIAL.imEnd}\n${SPECIAL.imStart}assistant\n` }];
  const answerAt = parts.length;
  parts.push({ text: answer + SPECIAL.imEnd });
  return { parts, answerAt };
};

/** Samples one pre-training sequence: captioning, naming, or plain text. */
export function sampleExample(corpus: CorpusItem[], rng: Rng, image: (path: string) => Preprocessed): { parts: Part[]; answerAt: number } {
  const item = corpus[rng.int(corpus.length)];
  const caption = `${item.name}: ${item.keywords.join(', ')}`;
  const r = rng.next();
  if (r < 0.6 && item.images.length) {
    const img = image(item.images[rng.int(item.images.length)]);
    return chat([{ image: img }, { text: 'What is shown in this picture?' }], caption);
  }
  if (r < 0.85) return chat([{ text: `Which emoji has these keywords? ${item.keywords.join(', ')}` }], item.name);
  return { parts: [{ text: caption }], answerAt: 0 };
}

/** Next-token targets: -100 everywhere except the answer span (from the answer part on). */
export function targetsFor(layouts: SequenceLayout[], T: number): Int32Array {
  const targets = new Int32Array(layouts.length * T).fill(-100);
  layouts.forEach((l, b) => {
    const s = l.spans.find((x) => x.label === 'answer')!;
    for (let t = Math.max(1, s.start); t < s.end; t++) targets[b * T + t - 1] = l.ids[t];
  });
  return targets;
}

export interface PretrainOptions {
  dataDir: string;
  imageRoot: string;
  attributes: EmojiAttributes[];
  preset: string;
  runDir: string;
  steps: number;
  batch: number;
  lr: number;
  seed: number;
  saveEvery: number;
  /** Called after each step. */
  onStep?: (s: { step: number; steps: number; loss: number; lr: number; ms: number; tokens: number }) => void;
  log?: (line: string) => void;
}

/** Runs (or resumes) pre-training; returns the trained model (also saved in runDir/final). */
export async function pretrain(o: PretrainOptions): Promise<Mllm> {
  const log = o.log ?? console.log;
  const preset = getPreset(o.preset);
  // The pool gives each image candidate's google path; the twitter image sits beside it.
  const imagePaths = new Map<string, string>();
  for (const line of readFileSync(join(o.dataDir, 'pool.jsonl'), 'utf8').split('\n')) {
    if (!line) continue;
    const c = JSON.parse(line) as { did: string; img_path: string | null };
    if (c.img_path) imagePaths.set(c.did, c.img_path);
  }
  const imagePathOf = (a: EmojiAttributes): string[] => {
    const google = imagePaths.get(a.did);
    return google ? [google, google.replaceAll('google', 'twitter')].filter((p) => existsSync(join(o.imageRoot, p))) : [];
  };
  const corpus = corpusFromAttributes(o.attributes, imagePathOf);
  if (!corpus.length) throw new Error(`pretrain: no training emojis found in ${o.dataDir}`);
  const ckptDir = join(o.runDir, 'checkpoint');
  mkdirSync(o.runDir, { recursive: true });

  let model: Mllm;
  const resumeStep = savedStep(ckptDir);
  const start = resumeStep ?? 0;
  if (resumeStep !== null) {
    model = await Mllm.load(ckptDir);
    log(`resuming from ${ckptDir} at step ${start}`);
  } else {
    const tok = trainTokenizer(corpus, preset.vocabSize);
    const cfg = withVocab(preset, tok.vocabSize);
    const config: MllmConfig = { architectures: ['RetrvMllm'], preset: preset.name, llm: cfg.llm, vision: cfg.vision, imageSize: preset.imageSize };
    model = Mllm.create(config, tok, o.seed);
  }
  log(`pretrain: ${corpus.length} training emojis, tokenizer ${model.tokenizer.vocabSize} ids, preset ${preset.name}`);

  const params = model.parameterList();
  const opt = new AdamW(params, { lr: o.lr, weightDecay: 0.01, betas: [0.9, 0.95] });
  if (resumeStep !== null) await loadOptimizerState(ckptDir, opt);
  const schedule = cosineSchedule({ peakLr: o.lr, warmupSteps: Math.min(50, Math.floor(o.steps / 10)), totalSteps: o.steps, minLr: o.lr / 10 });
  const images = new ImageStore({ root: o.imageRoot, patchSize: model.config.vision.patchSize, mergeSize: model.config.vision.mergeSize, size: model.config.imageSize });
  const image = (path: string): Preprocessed => images.preprocessed(path);
  const save = async (dir: string, step: number) => {
    await model.save(dir);
    await saveRunState(dir, opt, step);
  };

  const logPath = join(o.runDir, 'log.jsonl');
  const V = model.tokenizer.vocabSize;
  for (let step = start; step < o.steps; step++) {
    const t0 = performance.now();
    const rng = new Rng(o.seed * 1_000_003 + step); // batches depend only on the step: resume is exact
    const layouts = Array.from({ length: o.batch }, () => {
      const ex = sampleExample(corpus, rng, image);
      return model.layout(ex.parts, [{ at: ex.answerAt, label: 'answer', until: ex.parts.length }]);
    });
    const lr = schedule(step);
    const loss = trainStep(params, opt, lr, 1.0, () => {
      const { logits, T } = model.forward(layouts);
      return crossEntropy(reshape(logits, [o.batch * T, V]), fromArray(targetsFor(layouts, T), [o.batch * T], 'i32'));
    });
    const v = await loss.item();
    loss.dispose();
    if (!Number.isFinite(v)) throw new Error(`pretrain: loss is ${v} at step ${step}; stopping (the last checkpoint is in ${ckptDir})`);
    const ms = performance.now() - t0;
    const tokens = layouts.reduce((a, l) => a + l.length, 0);
    appendFileSync(logPath, JSON.stringify({ stage: 'pretrain', step, loss: v, lr, ms, tokens }) + '\n');
    o.onStep?.({ step, steps: o.steps, loss: v, lr, ms, tokens });
    if ((step + 1) % o.saveEvery === 0 && step + 1 < o.steps) await save(ckptDir, step + 1);
  }
  await getEngine().sync();
  await save(join(o.runDir, 'final'), o.steps);
  rmSync(ckptDir, { recursive: true, force: true });
  opt.dispose();
  return model;
}
