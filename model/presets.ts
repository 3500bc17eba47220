// Model presets: `tiny` for tests (seconds on lavapipe), `small` for the CPU demo,
// `base` for a real GPU. The vocabulary size comes from the trained tokenizer, so a
// preset is completed with `withVocab`.
import { type LlmConfig, parameterShapes } from './llm.ts';
import { type VisionConfig, visionFlopsPerImage, visionParamCount } from './vision.ts';

export interface ModelPreset {
  name: string;
  /** Target vocabulary size for the BPE tokenizer (special tokens included). */
  vocabSize: number;
  llm: Omit<LlmConfig, 'vocabSize'>;
  vision: Omit<VisionConfig, 'outHidden'>;
  /** Pixels per side images are resized to (a multiple of patchSize * mergeSize). */
  imageSize: number;
}

export const PRESETS: Record<'tiny' | 'small' | 'base', ModelPreset> = {
  tiny: {
    name: 'tiny',
    vocabSize: 512,
    llm: { hidden: 64, layers: 2, heads: 4, kvHeads: 2, mlp: 128, ropeTheta: 10000, ropeSections: [2, 3, 3], rmsEps: 1e-6, tieEmbeddings: true },
    vision: { patchSize: 8, hidden: 48, layers: 1, heads: 4, mlp: 96, mergeSize: 2, rmsEps: 1e-6 },
    imageSize: 32,
  },
  small: {
    name: 'small',
    vocabSize: 2048,
    llm: { hidden: 192, layers: 4, heads: 6, kvHeads: 2, mlp: 512, ropeTheta: 10000, ropeSections: [4, 6, 6], rmsEps: 1e-6, tieEmbeddings: true },
    vision: { patchSize: 8, hidden: 96, layers: 2, heads: 4, mlp: 256, mergeSize: 2, rmsEps: 1e-6 },
    imageSize: 64,
  },
  base: {
    name: 'base',
    vocabSize: 8192,
    llm: { hidden: 768, layers: 12, heads: 12, kvHeads: 4, mlp: 2048, ropeTheta: 1e6, ropeSections: [8, 12, 12], rmsEps: 1e-6, tieEmbeddings: true },
    vision: { patchSize: 8, hidden: 384, layers: 6, heads: 6, mlp: 1024, mergeSize: 2, rmsEps: 1e-6 },
    imageSize: 64,
  },
};

export function getPreset(name: string): ModelPreset {
  const p = (PRESETS as Record<string, ModelPreset>)[name];
  if (!p) throw new RangeError(`unknown preset '${name}' (choose ${Object.keys(PRESETS).join(', ')})`);
  return p;
}

/** The full configs for a preset and a tokenizer's vocabulary size. */
export function withVocab(p: ModelPreset, vocabSize: number): { llm: LlmConfig; vision: VisionConfig } {
  return { llm: { ...p.llm, vocabSize }, vision: { ...p.vision, outHidden: p.llm.hidden } };
}

export interface PresetSummary {
  name: string;
  llmParams: number;
  visionParams: number;
  /** Forward FLOPs per text token at the given context length (2 per multiply-add). */
  flopsPerToken: number;
  /** Forward FLOPs of the vision encoder for one image of the preset's size. */
  flopsPerImage: number;
  imageTokens: number;
}

/** Parameter counts and FLOPs for a preset, as printed by `retrv` and the benchmarks. */
export function summarize(p: ModelPreset, vocabSize = p.vocabSize, contextLen = 512): PresetSummary {
  const { llm, vision } = withVocab(p, vocabSize);
  let llmParams = 0;
  let matmulParams = 0;
  for (const [name, shape] of Object.entries(parameterShapes(llm))) {
    const n = shape.reduce((a, b) => a * b, 1);
    llmParams += n;
    if (shape.length === 2 && name !== 'model.embed_tokens.weight') matmulParams += n;
  }
  matmulParams += llm.vocabSize * llm.hidden; // the (tied) output head
  const attention = 2 * llm.layers * contextLen * llm.hidden; // QK^T and PV per token
  const patches = (p.imageSize / vision.patchSize) ** 2;
  return {
    name: p.name,
    llmParams,
    visionParams: visionParamCount(vision),
    flopsPerToken: 2 * (matmulParams + attention),
    flopsPerImage: visionFlopsPerImage(vision, patches),
    imageTokens: patches / (vision.mergeSize * vision.mergeSize),
  };
}
