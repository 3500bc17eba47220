// The multimodal language model: the Qwen2-style LLM, the vision encoder whose merged
// tokens enter the LLM's sequence, and the tokenizer. Checkpoints are one folder:
// model.safetensors (model.* and visual.* tensors), config.json, tokenizer.json.
import { join } from 'node:path';
import { type Tensor, keep, requireGrad } from '../runtime/index.ts';
import { loadCheckpointTensors, readConfig, saveCheckpoint } from './checkpoint.ts';
import { Llm, type LlmConfig, initParameters, parameterShapes } from './llm.ts';
import { type SequenceLayout, batchLayouts, embedLayout, layoutSequence, type Part } from './sequence.ts';
import { type Tokenizer, loadTokenizer, saveTokenizer } from './tokenizer.ts';
import { VisionEncoder, type VisionConfig, initVisionParameters, visionParameterShapes } from './vision.ts';

export interface MllmConfig {
  architectures: string[];
  preset?: string;
  llm: LlmConfig;
  vision: VisionConfig;
  /** Pixels per image side used by preprocessing (see model/presets.ts). */
  imageSize: number;
}

export class Mllm {
  readonly llm: Llm;
  readonly vision: VisionEncoder;
  constructor(
    readonly config: MllmConfig,
    readonly params: Map<string, Tensor>,
    readonly tokenizer: Tokenizer,
  ) {
    if (config.llm.vocabSize !== tokenizer.vocabSize) {
      throw new RangeError(`model vocabulary ${config.llm.vocabSize} does not match the tokenizer's ${tokenizer.vocabSize}`);
    }
    if (!config.llm.ropeSections || config.llm.ropeSections.length !== 3) {
      throw new RangeError('the multimodal model needs M-RoPE: llm.ropeSections must list 3 sections (temporal, height, width)');
    }
    if (config.vision.outHidden !== config.llm.hidden) {
      throw new RangeError(`vision outHidden ${config.vision.outHidden} must equal the LLM width ${config.llm.hidden}`);
    }
    this.llm = new Llm(config.llm, params);
    this.vision = new VisionEncoder(config.vision, params);
  }

  /** A freshly initialised model. */
  static create(config: MllmConfig, tokenizer: Tokenizer, seed: number): Mllm {
    const params = new Map([...initParameters(config.llm, seed), ...initVisionParameters(config.vision, seed)]);
    return new Mllm(config, params, tokenizer);
  }

  static parameterShapes(config: MllmConfig): Record<string, number[]> {
    return { ...parameterShapes(config.llm), ...visionParameterShapes(config.vision) };
  }

  async save(dir: string): Promise<void> {
    await saveCheckpoint(dir, this.params, this.config);
    saveTokenizer(this.tokenizer, join(dir, 'tokenizer.json'));
  }

  /** Loads a checkpoint folder; names and shapes are checked against the config. */
  static async load(dir: string): Promise<Mllm> {
    const config = readConfig<MllmConfig>(dir);
    if (!config.llm || !config.vision) throw new Error(`checkpoint ${dir}: config.json is not a retrv multimodal config (no llm/vision sections)`);
    const tokenizer = loadTokenizer(join(dir, 'tokenizer.json'));
    const tensors = await loadCheckpointTensors(dir, Mllm.parameterShapes(config));
    for (const [name, t] of tensors) {
      t.name = name;
      keep(requireGrad(t));
    }
    return new Mllm(config, tensors, tokenizer);
  }

  parameterList(): Tensor[] {
    return [...this.params.values()];
  }

  /** Frees the weights (the model is unusable afterwards). */
  dispose(): void {
    for (const t of this.params.values()) t.dispose();
  }

  layout(parts: readonly Part[], marks?: Parameters<typeof layoutSequence>[3]): SequenceLayout {
    return layoutSequence(this.tokenizer, parts, this.config.vision.mergeSize, marks);
  }

  /** Input embeddings [T, D] of one laid-out sequence (text rows, image rows, given rows). */
  embed(layout: SequenceLayout): Tensor {
    return embedLayout(layout, this.llm.p('model.embed_tokens.weight'), this.vision);
  }

  /** A right-padded batch of laid-out sequences: embeddings [B, T, D], positions, ids, lengths. */
  batch(layouts: SequenceLayout[]): ReturnType<typeof batchLayouts> {
    return batchLayouts(layouts, this.llm.p('model.embed_tokens.weight'), this.vision, this.tokenizer.specialIds.pad);
  }

  /** Logits [B, T, V] for a batch of laid-out sequences (right-padded). */
  forward(layouts: SequenceLayout[]): { logits: Tensor; ids: Int32Array; lengths: number[]; T: number } {
    const batch = this.batch(layouts);
    const h = this.llm.forwardEmbeds(batch.embeds, batch.positions);
    return { logits: this.llm.head(h), ids: batch.ids, lengths: batch.lengths, T: batch.embeds.shape[1] };
  }
}
