// The first-stage retriever: an embedding model on the multimodal backbone, in the way of
// E5-V and LamRA. A query or candidate (text, image, or both) is wrapped in a prompt that
// asks the model to summarise it in one word; the final hidden state of the prompt's last
// token, through a learned linear projection and L2 normalisation, is its embedding.
// Cosine similarity of embeddings ranks candidates. Optionally the embedding carries a
// fixed lexical part beside it (character-trigram TF-IDF, LexicalSettings), which makes the
// model a hybrid of a dense and a sparse retriever where both sides are text, and smaller
// retrievers trained on one task each can sit beside them: a text-only expert for text ->
// text (TextExpert) and, by role (query or candidate, EmbedRole), one for text -> image
// (TextImageExpert). Each part changes only the pairs it is built for.
//
// The retriever owns its own Mllm (its own weights, e.g. loaded from the base checkpoint),
// so training it never disturbs the reranker. Checkpoints are one folder:
// model.safetensors (model.*, visual.* and retriever.proj.weight), config.json (the Mllm
// config plus a `retriever` section), tokenizer.json; lexical.json with a lexical part, and
// text-expert/ and text-image-expert/ (retriever checkpoints of their own) with experts.
//
// Batching: every input of a call runs in one forward pass. Sequences are right-padded;
// causal attention never lets a real token see the padding, so each sequence's last real
// position is read by gathering rows (no key-padding mask needed). The images of the
// batch go through the vision encoder together (one batch per image size), and the input
// rows are assembled with one indexSelect from [token rows; image rows].
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  type Tensor,
  addScalar,
  clamp,
  concat,
  embedding,
  fromArray,
  indexSelect,
  keep,
  linear,
  matmul,
  max,
  mul,
  mulScalar,
  noGrad,
  randn,
  requireGrad,
  reshape,
  slice,
  rsqrt,
  sum,
} from '../runtime/index.ts';
import { CheckpointError, loadCheckpointTensors, readConfig, saveCheckpoint, writeJsonAtomic } from './checkpoint.ts';
import { TfIdf, type TfIdfJson, charNgrams } from './lexical.ts';
import { type Preprocessed, patchPositions, patchify } from './image.ts';
import { Mllm, type MllmConfig } from './mllm.ts';
import { type Part, type QueryInput, type SequenceLayout, contentParts } from './sequence.ts';
import { SPECIAL, type Tokenizer, loadTokenizer, saveTokenizer } from './tokenizer.ts';
import { trigramCounts } from './trigrams.ts';

export const PROJ = 'retriever.proj.weight';
export const TRIGRAMS = 'retriever.trigrams.weight';
/** The lexical part's vocabulary and document frequencies, beside config.json. */
export const LEXICAL_FILE = 'lexical.json';
/** The text expert's own retriever checkpoint, a folder beside config.json. */
export const TEXT_EXPERT_DIR = 'text-expert';
/** The text -> image expert's own retriever checkpoint, a folder beside config.json. */
export const TEXT_IMAGE_EXPERT_DIR = 'text-image-expert';

/** The E5-V style prompt around the content (text of the prefix and of the suffix). */
export interface RetrieverPrompt {
  prefix: string;
  suffix: string;
}

export const DEFAULT_PROMPT: RetrieverPrompt = {
  prefix: `${SPECIAL.imStart}user\n`,
  suffix: `\nSummarize the above in one word:${SPECIAL.imEnd}\n${SPECIAL.imStart}assistant\n`,
};

/**
 * How the sequence becomes one vector: `last` reads the final hidden state of the
 * prompt's last token (E5-V, LamRA); `mean` averages the final hidden states over the
 * content (the positions between the prompt's prefix and suffix, as E5 averages over the
 * input): every content token then reaches the embedding directly, which a small model
 * trained from scratch learns to use much sooner than one position. Both then go through
 * the projection. `bag-max` projects every content position first, through a ReLU, and
 * keeps each feature's maximum over the content (as SPLADE pools its term weights): the
 * embedding is a bag of learned features, each one present or not, and it can be much
 * wider than the hidden size, where a linear image of one D-wide mean has at most D
 * dimensions (trained on text -> text alone, only the bag matched character trigrams;
 * README). But a maximum cannot take a feature away: a query image plus a modifier text
 * keeps all of the image's features, so the unmodified image stays the best match.
 * `mean+bag-max` puts both side by side: the first half of the embedding from the mean,
 * the second from the bag.
 */
export type Pooling = 'last' | 'mean' | 'bag-max' | 'mean+bag-max';
export const POOLINGS: readonly Pooling[] = ['last', 'mean', 'bag-max', 'mean+bag-max'];

/**
 * The letter-trigram part of the embedding (model/trigrams.ts): a learned row per bucket,
 * summed over the trigrams of the content's text. It is appended to the pooled embedding,
 * each part unit-norm and scaled by 1/sqrt 2, so between two texts a cosine is the mean of
 * the backbone's and the trigrams' cosines; an input without text has a zero trigram part,
 * which leaves the ranking of a pool of images or of an image query as the backbone's, but
 * halves those cosines, so InfoNCE on them runs at twice the temperature (README: on task 6
 * that cost half the R@1; the option is off in every config).
 */
export interface TrigramSettings {
  buckets: number;
  dim: number;
}

/**
 * The lexical part of a hybrid retriever: character-trigram TF-IDF (model/lexical.ts), with
 * the vocabulary and document frequencies of a corpus (lexical.json), appended to the
 * embedding of every input that has text. A text's dense part is scaled by sqrt(1 - weight)
 * and its TF-IDF vector by sqrt(weight), so between two texts the score is
 * (1 - weight) * dense cosine + weight * TF-IDF cosine, the usual weighted fusion of a
 * dense and a sparse retriever. An input without text keeps its dense part whole and a
 * zero lexical part: between it and anything the score is the dense cosine times 1 or
 * sqrt(1 - weight), the same factor for every candidate of one modality, so rankings of
 * images, or by an image, are the dense part's. The part has no parameters: it is fixed once
 * the corpus is, and the pipeline attaches it to the trained dense model (`withLexical`);
 * training with it attached puts text-text pairs on the hybrid score (train/retriever.ts
 * contrastiveLogits).
 */
export interface LexicalSettings {
  /** The TF-IDF cosine's share of a text-text score, in (0, 1). */
  weight: number;
  /** The vocabulary's size (lexical.json's grams), checked on load. */
  grams: number;
}

export interface RetrieverSettings {
  /** Embedding size after the projection (the trigram and lexical parts come on top). */
  embedDim: number;
  prompt: RetrieverPrompt;
  /** Default 'last' (checkpoints without the field). */
  pooling?: Pooling;
  /** Absent: no trigram part. */
  trigrams?: TrigramSettings;
  /** Absent: no lexical part. */
  lexical?: LexicalSettings;
  /** Absent: no text expert (its checkpoint is the text-expert/ folder). */
  textExpert?: { weight: number };
  /** Absent: no text -> image expert (its checkpoint is the text-image-expert/ folder). */
  textImageExpert?: { weight: number };
}

/** A fitted lexical part: the TF-IDF and its weight. */
export interface Lexical {
  tfidf: TfIdf;
  weight: number;
}

/**
 * A text expert: a second, text-only retriever (trained on text -> text pairs) whose
 * embedding of an input's text is appended, times sqrt(weight), beside the lexical part,
 * on the same terms: only inputs with text carry it, so it changes text-text scores alone,
 * which become (1 - lexical - expert weight) dense + expert weight * the expert's cosine +
 * lexical weight * TF-IDF cosine. The shared multimodal model is weak on text -> text; a
 * model that sees nothing else learns it (README, the hybrid retriever's section).
 */
export interface TextExpert {
  model: Retriever;
  weight: number;
}

/**
 * A text -> image expert: a retriever trained on text -> image queries alone. Its part
 * depends on the role (EmbedRole): a text-only *query* carries the expert's embedding whole;
 * an image-only *candidate* carries it times sqrt(weight), its other parts times
 * sqrt(1 - weight); every other input carries a zero part. So a text-only query's score
 * against an image candidate is sqrt(1 - weight) times its score without the expert plus
 * sqrt(weight) times the expert's cosine, and nothing else changes rankings: against a
 * pool of texts the query's extra part meets zeros, and an image query meets every image
 * candidate's dense part times the same sqrt(1 - weight). (A text-only query's row is then
 * longer than 1: a factor per query, which no ranking sees.)
 */
export type TextImageExpert = TextExpert;

/** config.json of a retriever checkpoint: the backbone's config plus the retriever's own. */
export interface RetrieverConfig extends MllmConfig {
  retriever: RetrieverSettings;
}

/**
 * What a batch of inputs is: the queries of a search or the candidates of a pool. A model
 * may embed the two differently, as E5 prefixes "query:" and "passage:"; here only the text
 * -> image expert does (TextImageExpert). Without a role, an input is embedded as neither.
 */
export type EmbedRole = 'query' | 'candidate';

/** What an index needs from a model: inputs to unit-norm embeddings [N, E]. */
export interface Embedder {
  readonly embedDim: number;
  embed(inputs: readonly QueryInput[], role?: EmbedRole): Tensor;
}

/** L2 normalisation of the rows of x [N, E] (eps keeps a zero row finite). */
export function l2Normalize(x: Tensor, eps = 1e-12): Tensor {
  return mul(x, rsqrt(addScalar(sum(mul(x, x), -1, true), eps)));
}

export class Retriever implements Embedder {
  /** The embedding's width: the projection's, plus the trigram, expert and lexical parts'. */
  readonly embedDim: number;
  /** The projection's width (config.json's retriever.embedDim). */
  readonly projDim: number;
  readonly prompt: RetrieverPrompt;
  readonly pooling: Pooling;
  readonly trigrams?: TrigramSettings;
  private readonly prefixIds: number[];
  private readonly suffixIds: number[];

  constructor(
    readonly mllm: Mllm,
    /** The projection [projDim, hidden] (settings.embedDim rows). */
    readonly proj: Tensor,
    settings: Partial<RetrieverSettings> = {},
    /** The trigram buckets' rows [buckets, dim], with settings.trigrams. */
    readonly trigramTable?: Tensor,
    /** The lexical part (its settings come from here, not from `settings`). */
    readonly lexical?: Lexical,
    /** The text expert (owned: disposed with this retriever). */
    readonly expert?: TextExpert,
    /** The text -> image expert (owned as well). */
    readonly imageExpert?: TextImageExpert,
  ) {
    const D = mllm.config.llm.hidden;
    this.projDim = settings.embedDim ?? proj.shape[0];
    if (proj.rank !== 2 || proj.shape[0] !== this.projDim || proj.shape[1] !== D) {
      throw new RangeError(`retriever: projection has shape [${proj.shape}], expected [${this.projDim}, ${D}] (embedDim, hidden)`);
    }
    const t = settings.trigrams;
    if (t && !(trigramTable && trigramTable.rank === 2 && trigramTable.shape[0] === t.buckets && trigramTable.shape[1] === t.dim)) {
      throw new RangeError(`retriever: trigrams of ${t.buckets} buckets x ${t.dim} need a table of that shape, got ${trigramTable ? `[${trigramTable.shape}]` : 'none'}`);
    }
    if (!t && trigramTable) throw new RangeError('retriever: a trigram table without trigram settings');
    this.trigrams = t;
    if (lexical && !(lexical.weight > 0 && lexical.weight < 1)) throw new RangeError(`retriever: the lexical weight must be between 0 and 1 (exclusive), got ${lexical.weight}`);
    if (lexical && !lexical.tfidf.size) throw new RangeError('retriever: the lexical part has an empty vocabulary (a corpus without text?)');
    for (const [x, what] of [[expert, 'text expert'], [imageExpert, 'text -> image expert']] as const) {
      if (!x) continue;
      if (!(x.weight > 0 && x.weight < 1)) throw new RangeError(`retriever: the ${what}'s weight must be between 0 and 1 (exclusive), got ${x.weight}`);
      if (!x.model.plain) throw new RangeError(`retriever: a ${what} must be a plain dense retriever (no lexical part, no expert of its own)`);
    }
    if (!(this.textWeights().dense > 0)) throw new RangeError(`retriever: the lexical (${lexical?.weight ?? 0}) and text expert (${expert?.weight ?? 0}) weights must leave the dense part a share (sum below 1)`);
    this.embedDim = this.projDim + (t?.dim ?? 0) + (expert?.model.embedDim ?? 0) + (lexical?.tfidf.size ?? 0) + (imageExpert?.model.embedDim ?? 0);
    this.prompt = settings.prompt ?? DEFAULT_PROMPT;
    this.pooling = settings.pooling ?? 'last';
    if (!POOLINGS.includes(this.pooling)) throw new RangeError(`retriever: pooling must be one of ${POOLINGS.join(', ')}, got '${String(this.pooling)}'`);
    if (this.pooling === 'mean+bag-max' && this.projDim % 2) throw new RangeError(`retriever: mean+bag-max pooling splits the embedding in two halves, so embedDim must be even, got ${this.projDim}`);
    this.prefixIds = mllm.tokenizer.encode(this.prompt.prefix);
    this.suffixIds = mllm.tokenizer.encode(this.prompt.suffix);
    if (!this.suffixIds.length) throw new RangeError('retriever: the prompt suffix must not be empty (its last token is read)');
  }

  /** A fresh projection (and trigram table) on top of `mllm` (taken over: disposing the retriever disposes it). */
  static fromMllm(mllm: Mllm, embedDim: number, seed: number, prompt: RetrieverPrompt = DEFAULT_PROMPT, pooling: Pooling = 'last', trigrams?: TrigramSettings): Retriever {
    if (!Number.isInteger(embedDim) || embedDim < 1) throw new RangeError(`retriever: embedDim must be a positive integer, got ${embedDim}`);
    if (trigrams && !(Number.isInteger(trigrams.buckets) && trigrams.buckets > 0 && Number.isInteger(trigrams.dim) && trigrams.dim > 0)) {
      throw new RangeError(`retriever: trigram buckets and dim must be positive integers, got ${trigrams.buckets} and ${trigrams.dim}`);
    }
    const D = mllm.config.llm.hidden;
    const proj = keep(requireGrad(randn([embedDim, D], { seed: seed * 7919 + 101, std: 1 / Math.sqrt(D) })));
    proj.name = PROJ;
    let table: Tensor | undefined;
    if (trigrams) {
      // A random table is already a random projection of the trigram counts (their cosine,
      // roughly, before any training); training then weighs the buckets.
      table = keep(requireGrad(randn([trigrams.buckets, trigrams.dim], { seed: seed * 7919 + 211, std: 1 / Math.sqrt(trigrams.dim) })));
      table.name = TRIGRAMS;
    }
    return new Retriever(mllm, proj, { embedDim, prompt, pooling, trigrams }, table);
  }

  /** A freshly initialised backbone and projection. */
  static create(config: MllmConfig, tokenizer: Tokenizer, embedDim: number, seed: number, prompt?: RetrieverPrompt, pooling?: Pooling, trigrams?: TrigramSettings): Retriever {
    return Retriever.fromMllm(Mllm.create(config, tokenizer, seed), embedDim, seed, prompt, pooling, trigrams);
  }

  /** Starts from a base model checkpoint (its own copy of the weights) and a fresh projection. */
  static async fromBase(dir: string, embedDim: number, seed: number, prompt?: RetrieverPrompt, pooling?: Pooling, trigrams?: TrigramSettings): Promise<Retriever> {
    return Retriever.fromMllm(await Mllm.load(dir), embedDim, seed, prompt, pooling, trigrams);
  }

  get tokenizer(): Tokenizer {
    return this.mllm.tokenizer;
  }

  get config(): RetrieverConfig {
    const c = this.mllm.config;
    return {
      architectures: ['RetrvRetriever'],
      ...(c.preset ? { preset: c.preset } : {}),
      llm: c.llm,
      vision: c.vision,
      imageSize: c.imageSize,
      retriever: {
        embedDim: this.projDim,
        prompt: this.prompt,
        pooling: this.pooling,
        ...(this.trigrams ? { trigrams: this.trigrams } : {}),
        ...(this.lexical ? { lexical: { weight: this.lexical.weight, grams: this.lexical.tfidf.size } } : {}),
        ...(this.expert ? { textExpert: { weight: this.expert.weight } } : {}),
        ...(this.imageExpert ? { textImageExpert: { weight: this.imageExpert.weight } } : {}),
      },
    };
  }

  /** The shares of a text-text score: dense, text expert, lexical (they sum to 1). */
  textWeights(): { dense: number; expert: number; lexical: number } {
    const expert = this.expert?.weight ?? 0;
    const lexical = this.lexical?.weight ?? 0;
    return { dense: 1 - expert - lexical, expert, lexical };
  }

  /**
   * The same model with a lexical part (or another one): it shares this retriever's
   * weights, so dispose only one of the two. Its embeddings are wider (embedDim).
   */
  withLexical(lexical: Lexical): Retriever {
    return new Retriever(this.mllm, this.proj, this.ownSettings(), this.trigramTable, lexical, this.expert, this.imageExpert);
  }

  /** The same model with a text expert (taken over; the weights are shared as with withLexical). */
  withTextExpert(expert: TextExpert): Retriever {
    return new Retriever(this.mllm, this.proj, this.ownSettings(), this.trigramTable, this.lexical, expert, this.imageExpert);
  }

  /** The same model with a text -> image expert (taken over; the weights are shared as with withLexical). */
  withTextImageExpert(imageExpert: TextImageExpert): Retriever {
    return new Retriever(this.mllm, this.proj, this.ownSettings(), this.trigramTable, this.lexical, this.expert, imageExpert);
  }

  private ownSettings(): Partial<RetrieverSettings> {
    return { embedDim: this.projDim, prompt: this.prompt, pooling: this.pooling, trigrams: this.trigrams };
  }

  /** Every trainable tensor: the backbone's, then the projection (and the trigram table). */
  parameterList(): Tensor[] {
    return [...this.mllm.parameterList(), this.proj, ...(this.trigramTable ? [this.trigramTable] : [])];
  }

  async save(dir: string): Promise<void> {
    const params = new Map(this.mllm.params);
    params.set(PROJ, this.proj);
    if (this.trigramTable) params.set(TRIGRAMS, this.trigramTable);
    // Before config.json, which is written last: a folder with a config is complete.
    if (this.expert) await this.expert.model.save(join(dir, TEXT_EXPERT_DIR));
    if (this.imageExpert) await this.imageExpert.model.save(join(dir, TEXT_IMAGE_EXPERT_DIR));
    if (this.lexical) {
      mkdirSync(dir, { recursive: true });
      writeJsonAtomic(join(dir, LEXICAL_FILE), this.lexical.tfidf.toJSON());
    }
    await saveCheckpoint(dir, params, this.config);
    saveTokenizer(this.tokenizer, join(dir, 'tokenizer.json'));
  }

  /** Loads a retriever checkpoint folder; names and shapes are checked against its config. */
  static async load(dir: string): Promise<Retriever> {
    const config = readConfig<RetrieverConfig>(dir);
    if (!config.llm || !config.vision || !config.retriever) {
      throw new Error(`checkpoint ${dir}: config.json is not a retrv retriever config (needs llm, vision and retriever sections)`);
    }
    const tokenizer = loadTokenizer(join(dir, 'tokenizer.json'));
    const { embedDim, prompt, pooling, trigrams, lexical, textExpert, textImageExpert } = config.retriever;
    const tfidf = lexical ? readLexical(dir, lexical) : undefined;
    for (const [has, sub, what] of [[textExpert, TEXT_EXPERT_DIR, 'a text expert'], [textImageExpert, TEXT_IMAGE_EXPERT_DIR, 'a text -> image expert']] as const) {
      if (has && !existsSync(join(dir, sub, 'config.json'))) throw new CheckpointError(`checkpoint ${dir}: config.json has ${what} but ${sub}/config.json is missing`);
    }
    const expected = { ...Mllm.parameterShapes(config), [PROJ]: [embedDim, config.llm.hidden], ...(trigrams ? { [TRIGRAMS]: [trigrams.buckets, trigrams.dim] } : {}) };
    const tensors = await loadCheckpointTensors(dir, expected);
    for (const [name, t] of tensors) {
      t.name = name;
      keep(requireGrad(t));
    }
    const proj = tensors.get(PROJ)!;
    tensors.delete(PROJ);
    const table = tensors.get(TRIGRAMS);
    tensors.delete(TRIGRAMS);
    const mllmConfig: MllmConfig = {
      architectures: ['RetrvMllm'],
      ...(config.preset ? { preset: config.preset } : {}),
      llm: config.llm,
      vision: config.vision,
      imageSize: config.imageSize,
    };
    const mllm = new Mllm(mllmConfig, tensors, tokenizer);
    const expertModel = textExpert ? await Retriever.load(join(dir, TEXT_EXPERT_DIR)) : undefined;
    const imageModel = textImageExpert ? await Retriever.load(join(dir, TEXT_IMAGE_EXPERT_DIR)) : undefined;
    try {
      return new Retriever(mllm, proj, { embedDim, prompt, pooling, trigrams }, table, tfidf && { tfidf, weight: lexical!.weight }, expertModel && { model: expertModel, weight: textExpert!.weight }, imageModel && { model: imageModel, weight: textImageExpert!.weight });
    } catch (e) {
      for (const t of [...mllm.parameterList(), proj, ...(table ? [table] : [])]) t.dispose();
      expertModel?.dispose();
      imageModel?.dispose();
      throw e;
    }
  }

  /** Frees the weights (the experts' too). */
  dispose(): void {
    for (const t of this.parameterList()) t.dispose();
    this.expert?.model.dispose();
    this.imageExpert?.model.dispose();
  }

  /** The prompt parts of one input. */
  parts(x: QueryInput): Part[] {
    return [{ ids: this.prefixIds }, ...contentParts(x), { ids: this.suffixIds }];
  }

  layout(x: QueryInput): SequenceLayout {
    return this.mllm.layout(this.parts(x));
  }

  /** Unit-norm embeddings [N, E] of the inputs, in one batch (see LexicalSettings and TextImageExpert for the exceptions); `role` matters only to a text -> image expert. */
  embed(inputs: readonly QueryInput[], role?: EmbedRole): Tensor {
    if (!inputs.length) throw new RangeError('retriever: embed needs at least one input');
    const layouts = inputs.map((x) => this.layout(x));
    const texts = layouts.map((l) => this.contentText(l));
    const B = inputs.length;
    const dense = this.denseEmbeddings(layouts, texts);
    const scales = this.denseScales(texts);
    const parts = [scales ? mul(dense, fromArray(scales, [B, 1])) : dense];
    const withText = texts.flatMap((t, i) => (hasText(t) ? [i] : []));
    if (this.expert) parts.push(expertRows(this.expert.model, B, withText, (i) => ({ text: texts[i] }), Math.sqrt(this.expert.weight)));
    if (this.lexical) {
      const { tfidf, weight } = this.lexical;
      parts.push(mulScalar(fromArray(tfidf.dense(texts), [B, tfidf.size]), Math.sqrt(weight)));
    }
    if (!this.imageExpert) return parts.length === 1 ? parts[0] : concat(parts, 1);
    // By role: text-only queries carry the expert whole; image-only candidates carry it
    // times sqrt(weight) and their other parts times sqrt(1 - weight).
    const { model, weight } = this.imageExpert;
    const carry = (i: number) => (role === 'query' ? !inputs[i].image && hasText(texts[i]) : role === 'candidate' ? !!inputs[i].image && !hasText(texts[i]) : false);
    const carries = inputs.flatMap((_, i) => (carry(i) ? [i] : []));
    const rest = new Float32Array(B).fill(1);
    if (role === 'candidate') for (const i of carries) rest[i] = Math.sqrt(1 - weight);
    const own = concat(parts, 1);
    return concat([mul(own, fromArray(rest, [B, 1])), expertRows(model, B, carries, (i) => inputs[i], role === 'query' ? 1 : Math.sqrt(weight))], 1);
  }

  /** The final hidden states of the batch [B*T, D] (T the longest layout), right-padded. */
  private hiddenStates(layouts: readonly SequenceLayout[]): { h: Tensor; T: number } {
    const B = layouts.length;
    const T = Math.max(...layouts.map((l) => l.length));
    const D = this.mllm.config.llm.hidden;
    const pad = this.tokenizer.specialIds.pad;
    const ids = new Int32Array(B * T).fill(pad);
    const positions = new Int32Array(3 * B * T);
    // Row of the input matrix for each position: its token row (b*T + t), or B*T + the
    // image row that replaces it.
    const rowMap = new Int32Array(B * T);
    for (let i = 0; i < rowMap.length; i++) rowMap[i] = i;
    // Images grouped by grid size: each group runs through the vision encoder as one
    // batch (equal sizes need no block-diagonal mask over all patches of the batch).
    const groups = new Map<string, { pre: Preprocessed; at: number }[]>();
    layouts.forEach((l, b) => {
      if (l.length === 0) throw new RangeError(`retriever: input ${b} is empty`);
      ids.set(l.ids, b * T);
      for (let r = 0; r < 3; r++) {
        const row = l.positions.subarray(r * l.length, (r + 1) * l.length);
        positions.set(row, r * B * T + b * T);
        // Padding continues the positions (never attended to by real tokens).
        const last = row[row.length - 1];
        for (let t = l.length; t < T; t++) positions[r * B * T + b * T + t] = last + 1 + (t - l.length);
      }
      for (const p of l.pieces) {
        if (p.kind === 'embeds') throw new Error('retriever: embedding-row parts are not supported');
        if (p.kind !== 'image') continue;
        const key = `${p.image.gridH}x${p.image.gridW}`;
        let g = groups.get(key);
        if (!g) groups.set(key, (g = []));
        g.push({ pre: p.image, at: b * T + p.start });
      }
    });
    const table = this.mllm.llm.p('model.embed_tokens.weight');
    let x = embedding(table, fromArray(ids, [B * T], 'i32'));
    if (groups.size) {
      const v = this.mllm.vision;
      const c = v.config;
      const patchLen = 3 * c.patchSize * c.patchSize;
      const parts: Tensor[] = [x];
      let imageRow = B * T;
      for (const g of groups.values()) {
        const { gridH, gridW } = g[0].pre;
        const n = gridH * gridW;
        const rows = n / (c.mergeSize * c.mergeSize);
        const total = n * g.length;
        const patches = new Float32Array(total * patchLen);
        const pp = new Int32Array(2 * total);
        const pos = patchPositions(gridH, gridW, c.mergeSize);
        g.forEach((im, i) => {
          patches.set(patchify(im.pre, c.patchSize, c.mergeSize), i * n * patchLen);
          pp.set(pos.subarray(0, n), i * n);
          pp.set(pos.subarray(n, 2 * n), total + i * n);
          for (let k = 0; k < rows; k++) rowMap[im.at + k] = imageRow + i * rows + k;
        });
        parts.push(v.forward(fromArray(patches, [total, patchLen]), pp, g.map(() => n)));
        imageRow += rows * g.length;
      }
      x = indexSelect(concat(parts, 0), 0, fromArray(rowMap, [B * T], 'i32'));
    }
    return { h: reshape(this.mllm.llm.forwardEmbeds(reshape(x, [B, T, D]), fromArray(positions, [3, B, T], 'i32')), [B * T, D]), T };
  }

  /** [from, to) of each layout's content (between the prompt's prefix and suffix). */
  private contentSpan(l: SequenceLayout): [number, number] {
    const from = this.prefixIds.length;
    return [from, Math.max(from + 1, l.length - this.suffixIds.length)];
  }

  /** Mean over each sequence's content rows of x [B*T, F], as one matmul with an averaging matrix. */
  private contentMean(layouts: readonly SequenceLayout[], T: number, x: Tensor): Tensor {
    const B = layouts.length;
    const w = new Float32Array(B * B * T);
    layouts.forEach((l, b) => {
      const [from, to] = this.contentSpan(l);
      w.fill(1 / (to - from), b * B * T + b * T + from, b * B * T + b * T + to);
    });
    return matmul(fromArray(w, [B, B * T]), x);
  }

  /**
   * The factor on each input's dense part, from its content text: sqrt of the dense share of
   * a text-text score for a text, 1 without text; null without a lexical part or text
   * expert. A text whose trigrams the corpus lacks has a short (or zero) lexical row, as its
   * TF-IDF cosine with every candidate is; it still counts as a text.
   */
  denseScales(texts: readonly string[]): Float32Array | null {
    if (!this.lexical && !this.expert) return null;
    const a = Math.sqrt(this.textWeights().dense);
    return Float32Array.from(texts, (t) => (hasText(t) ? a : 1));
  }

  /** Whether this retriever is the dense model alone (no lexical part, no experts): what an expert must be. */
  get plain(): boolean {
    return !this.lexical && !this.expert && !this.imageExpert;
  }

  /** The backbone's embedding (with the trigram part, when there is one), unit-norm [B, projDim + trigram dim]. */
  private denseEmbeddings(layouts: readonly SequenceLayout[], texts: readonly string[]): Tensor {
    const pooled = this.pooled(layouts);
    if (!this.trigrams || !this.trigramTable) return pooled;
    const { buckets } = this.trigrams;
    const counts = fromArray(trigramCounts(texts, buckets), [layouts.length, buckets]);
    return mulScalar(concat([pooled, l2Normalize(matmul(counts, this.trigramTable))], 1), Math.SQRT1_2);
  }

  /** The text of a layout's content (its token pieces between the prompt's prefix and suffix). */
  private contentText(l: SequenceLayout): string {
    const [from, to] = this.contentSpan(l);
    // Special tokens (an image's <|vision_start|>, <|vision_end|>) are not text.
    return this.tokenizer.decode(l.pieces.flatMap((p) => (p.kind === 'tokens' && p.start >= from && p.start < to ? p.ids : [])), { skipSpecial: true });
  }

  /** The backbone's unit-norm embeddings [B, projDim], as the pooling says. */
  private pooled(layouts: readonly SequenceLayout[]): Tensor {
    const B = layouts.length;
    const { h, T } = this.hiddenStates(layouts);
    if (this.pooling === 'last') {
      const lastIdx = Int32Array.from(layouts, (l, b) => b * T + l.length - 1);
      return l2Normalize(linear(indexSelect(h, 0, fromArray(lastIdx, [B], 'i32')), this.proj));
    }
    if (this.pooling === 'mean') return l2Normalize(linear(this.contentMean(layouts, T, h), this.proj));
    if (this.pooling === 'bag-max') return l2Normalize(this.bagMax(layouts, T, h, this.proj));
    // mean+bag-max: the first half of the projection's rows for the mean, the second for
    // the bag; each half unit-norm and scaled by 1/sqrt 2, so a cosine is the mean of the two.
    const half = this.projDim / 2;
    const m = l2Normalize(linear(this.contentMean(layouts, T, h), slice(this.proj, 0, 0, half)));
    const b = l2Normalize(this.bagMax(layouts, T, h, slice(this.proj, 0, half)));
    return mulScalar(concat([m, b], 1), Math.SQRT1_2);
  }

  /** Each feature's maximum over the content of ReLU(h w^T), [B, F] for w [F, D]. */
  private bagMax(layouts: readonly SequenceLayout[], T: number, h: Tensor, w: Tensor): Tensor {
    const B = layouts.length;
    const F = w.shape[0];
    const f = clamp(linear(h, w), 0);
    // Prompt and padding rows are zeroed, which never beats a ReLU output, so the maximum is the content's.
    const m = new Float32Array(B * T);
    layouts.forEach((l, b) => {
      const [from, to] = this.contentSpan(l);
      m.fill(1, b * T + from, b * T + to);
    });
    return max(mul(reshape(f, [B, T, F]), fromArray(m, [B, T, 1])), 1);
  }
}

/** A checkpoint's lexical.json, checked against its config. */
function readLexical(dir: string, settings: LexicalSettings): TfIdf {
  const path = join(dir, LEXICAL_FILE);
  if (!existsSync(path)) throw new CheckpointError(`checkpoint ${dir}: config.json has a lexical part but ${LEXICAL_FILE} is missing`);
  let tfidf: TfIdf;
  try {
    tfidf = TfIdf.fromJSON(JSON.parse(readFileSync(path, 'utf8')) as TfIdfJson);
  } catch (e) {
    throw new CheckpointError(`checkpoint ${path}: ${(e as Error).message}`);
  }
  if (tfidf.size !== settings.grams) throw new CheckpointError(`checkpoint ${path}: ${tfidf.size} grams, but config.json says ${settings.grams}`);
  return tfidf;
}

/** Whether a content text counts as text (has a character trigram). */
function hasText(text: string): boolean {
  return charNgrams(text).length > 0;
}

/**
 * An expert's embeddings [B, E]: inputs `rows` (input(i) for row i) embedded by the expert
 * and scaled by `factor`, zero rows elsewhere. No gradient: experts are fixed here.
 */
function expertRows(model: Retriever, B: number, rows: readonly number[], input: (i: number) => QueryInput, factor: number): Tensor {
  const E = model.embedDim;
  const zero = fromArray(new Float32Array(E), [1, E]);
  if (!rows.length) return indexSelect(zero, 0, fromArray(new Int32Array(B), [B], 'i32'));
  const e = noGrad(() => model.embed(rows.map(input)));
  // Row b: its expert row, or the zero row after them.
  const at = new Int32Array(B).fill(rows.length);
  rows.forEach((i, r) => (at[i] = r));
  return mulScalar(indexSelect(concat([e, zero], 0), 0, fromArray(at, [B], 'i32')), factor);
}
