// The whole Retrv-R1 pipeline as resumable stages under one run folder:
//
//   data        build the emoji benchmark (M-BEIR JSONL) unless it exists
//   pretrain    base pre-training of the MLLM                      -> <run>/pretrain/final
//   retriever   first-stage embedding retriever (InfoNCE)          -> <run>/retriever/final
//   first-stage Recall@1/5/10 per task on the test split with baselines -> <run>/first-stage/
//               (and, when a stage trains on first-stage lists, the rankings of the
//               training queries -> <run>/first-stage/train-rankings.json)
//   align       ICM self-alignment (model frozen)                  -> <run>/align/final
//   pointing    (optional) answer-only SFT phases                  -> <run>/pointing/phase-<n>/final
//   sft         activation: traces with inspection, ICM + model    -> <run>/sft/final
//   grpo        GRPO with the curriculum reward                    -> <run>/grpo/final
//   ablations   (optional) SFT and GRPO without the ICM, without inspection, GRPO with a
//               fixed lambda, each in its own folder
//   table       reranking on test queries: every row of the paper's table -> <run>/table/
//   report      a self-contained HTML report                       -> <run>/report.html
//
// A stage whose final output exists is skipped; an interrupted stage resumes from its
// checkpoint (each stage's own mechanism). Settings come from a named config (tiny: the
// demo, minutes on a 2-core software adapter; small: about 50 minutes there) or a JSON
// file that overrides one. Candidate lists for SFT and GRPO are drawn from the positive,
// its hard negatives and random train-pool items (train/data/cot.ts), shuffled; a pointing
// phase or SFT with firstStage: true takes the first stage's top K of each training query
// instead, in its order, as the reranker meets lists at test time.
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { init } from '../runtime/index.ts';
import { POOLINGS, type Pooling, Retriever, TEXT_EXPERT_DIR, TEXT_IMAGE_EXPERT_DIR, type TextExpert } from '../model/retriever.ts';
import { TfIdf } from '../model/lexical.ts';
import { getPreset } from '../model/presets.ts';
import { type EmojiAttributes, buildEmojiBenchmark, loadBenchmark, readSideTable, writeEmojiBenchmark } from './data/emoji-benchmark.ts';
import { ImageStore } from './data/inputs.ts';
import { TRACE_STYLES, type TraceStyle } from './data/cot.ts';
import { queriesOfTasks } from './data/mbeir.ts';
import type { MbeirQuery } from './data/mbeir-types.ts';
import { writeJsonAtomic } from './atomic-write.ts';
import { evaluateFirstStage } from './eval/first-stage-eval.ts';
import { formatRecallTable, taskName } from './eval/recall.ts';
import { type TableRowSpec, type TableSpec, formatTerminalTable, runAblationTable } from './eval/table.ts';
import { pretrain } from './pretrain.ts';
import { type RetrieverBatching, RETRIEVER_BATCHINGS, benchmarkTripleSource, keywordPairNames, parseTaskWeights, trainRetriever, withKeywordPairs } from './retriever.ts';
import { alignIcm } from './align.ts';
import { runSftStage } from './sft-stage.ts';
import { DECISION_TOKENS, type DecisionTokens } from './sft.ts';
import { LENGTH_NORMS, type LengthNorm, grpoTrain, loadGrpoData, loadGrpoModels } from './grpo.ts';
import { type Progress, withProgress } from './progress.ts';
import { writePipelineReport } from './pipeline-report.ts';
import { crossFitRankings, readRankings, trainingRankings, writeRankings } from './training-rankings.ts';
import { foldOfBase, foldOfQuery, queryFolds } from './cross-fit.ts';

export interface PipelineConfig {
  /** Model preset (model/presets.ts). */
  preset: string;
  /** The benchmark folder (built there when missing). */
  data: string;
  seed: number;
  pretrain: { steps: number; batch: number; lr: number };
  /**
   * batching: 'mixed' (any task in a batch) or 'task' (one task per batch, tasks in turn).
   * pooling: model/retriever.ts Pooling. embedDim: the embedding's width (the projection's
   * rows; bag-max pooling gains from one much wider than the hidden size). keywordShare:
   * the share of each batch given to keyword pairs of the training names
   * (train/retriever.ts withKeywordPairs; 0 = none). trigramDim: the width of the letter-trigram
   * part (model/retriever.ts TrigramSettings; 0 = none), over trigramBuckets hashed buckets.
   * taskWeights: more turns of one-task batches for some tasks, "<task>:<turns>,..." ("" =
   * every task one turn; train/retriever.ts taskBatchedTripleSource). lexicalWeight: the
   * share of a text-text score given to character-trigram TF-IDF fitted on the pool's texts
   * (model/retriever.ts LexicalSettings; 0 = a dense retriever). textExpert: a text-only
   * retriever trained on the text -> text queries and keyword pairs (steps 0 = none), its
   * embedding beside the others' for texts at `weight` (model/retriever.ts TextExpert).
   * textImageExpert: a retriever trained on the text -> image queries alone (steps 0 =
   * none), carried by text-only queries and image candidates at `weight`
   * (model/retriever.ts TextImageExpert).
   */
  retriever: {
    steps: number;
    batch: number;
    lr: number;
    pooling: Pooling;
    batching: RetrieverBatching;
    embedDim: number;
    keywordShare: number;
    trigramDim: number;
    trigramBuckets: number;
    taskWeights: string;
    lexicalWeight: number;
    textExpert: ExpertSettings;
    textImageExpert: ExpertSettings;
  };
  /**
   * perTask: test queries per task for the first-stage recall table (0 = all). crossFit: 0
   * ranks the training queries (for the stages with firstStage lists) with the retriever
   * itself, which saw them; F >= 2 trains F more retrievers, the i-th without fold i of the
   * training queries (train/cross-fit.ts), and ranks each fold with the one that never saw it.
   */
  firstStage: { perTask: number; crossFit: number };
  /** centre: the new ICM centres its rows over each list (model/icm.ts IcmConfig.centre). */
  align: { steps: number; batch: number; lr: number; centre: boolean };
  /**
   * The pointing warm-up: answer-only SFT phases (trace style 'answer', no inspection), each
   * starting from the one before, between alignment and SFT; SFT then starts from the last
   * phase (the ICM ablation runs its own phases, on full candidate tokens). Empty: SFT
   * starts from the aligned model. Why: the 2-layer model learns to point at the match
   * only with nothing between the prompt and the answer, and only from short lists of
   * random negatives first (README, "the SFT table").
   */
  pointing: PointingPhase[];
  /**
   * traceStyle: the synthetic traces' wording (train/data/cot.ts: full, brief, open, nameless, answer, pointed or looks). kStart:
   * the K curriculum's first list length (train/sft.ts curriculumK; eval.K = none).
   * easyShare: the share of the steps, from the start, whose lists take random negatives
   * instead of hard ones (train/sft.ts randomNegativeSteps; 0 = none). tasks: train on these
   * task ids' queries only (null = every task). answerShare: the share of the loss on the
   * decision tokens (train/sft.ts decisionWeights; 0 = one mean over every target token), which
   * are the answer's tokens (decisionTokens 'answer') or every index the trace writes
   * ('digits': in a pointed trace the first one is the pointing decision). firstStage: lists from the first stage's rankings of
   * the training queries, in its order (as PointingPhase.firstStage).
   */
  sft: { steps: number; batch: number; lr: number; traceStyle: TraceStyle; kStart: number; easyShare: number; tasks: number[] | null; answerShare: number; decisionTokens: DecisionTokens; firstStage: boolean };
  /** GRPO; lengthNorm: each completion averaged over its own tokens (`completion`, the paper's) or over maxNewTokens (`constant`, Dr. GRPO; train/grpo-objective.ts). */
  grpo: { steps: number; batch: number; group: number; lr: number; maxNewTokens: number; fixedLambda: number; lengthNorm: LengthNorm };
  /**
   * Reranking evaluation: candidates per query, test queries (spread over the tasks), the
   * generation budget, and tasks: the test queries of these task ids only (null = every
   * task). A synthetic trace at K = 16 is about 640 tokens in the full style and 160 (at
   * most about 300) in the brief one with the tiny tokenizer, so maxNewTokens (here and
   * for GRPO) must leave room to reach <answer>.
   */
  eval: { K: number; limit: number; maxNewTokens: number; tasks: number[] | null };
  /** Train and evaluate the ablation rows too. */
  ablations: boolean;
}

/** How the pipeline trains one of the retriever's experts (model/retriever.ts TextExpert, TextImageExpert). */
export interface ExpertSettings {
  /** 0 = no such expert. */
  steps: number;
  batch: number;
  lr: number;
  pooling: Pooling;
  embedDim: number;
  /** Share of each batch given to keyword pairs (text -> text; 0 = none). */
  keywordShare: number;
  weight: number;
}

/** One answer-only phase: lists of K candidates, random negatives for the first easyShare of its steps. */
export interface PointingPhase {
  steps: number;
  batch: number;
  lr: number;
  K: number;
  easyShare: number;
  tasks: number[] | null;
  /**
   * Optional (default false): each list is the query's first-stage top K in the first
   * stage's order, as the reranker meets it at test time (<run>/first-stage/
   * train-rankings.json, train/training-rankings.ts), so the model learns how far to
   * trust that order; queries without a positive in their top K are left out.
   */
  firstStage?: boolean;
}

/** The experts off (steps 0), with the settings tiny-3k.json turns on: those measured in the README. */
const NO_TEXT_EXPERT: ExpertSettings = { steps: 0, batch: 32, lr: 1e-3, pooling: 'bag-max', embedDim: 512, keywordShare: 0.5, weight: 0 };
const NO_TEXT_IMAGE_EXPERT: ExpertSettings = { steps: 0, batch: 32, lr: 1e-3, pooling: 'mean+bag-max', embedDim: 1024, keywordShare: 0, weight: 0 };

export const PIPELINE_CONFIGS: Record<string, PipelineConfig> = {
  tiny: {
    preset: 'tiny',
    data: 'data/emoji-mbeir',
    seed: 1,
    pretrain: { steps: 300, batch: 16, lr: 3e-3 },
    retriever: { steps: 150, batch: 16, lr: 1e-3, pooling: 'mean', batching: 'mixed', embedDim: 64, keywordShare: 0, trigramDim: 0, trigramBuckets: 8192, taskWeights: '', lexicalWeight: 0, textExpert: NO_TEXT_EXPERT, textImageExpert: NO_TEXT_IMAGE_EXPERT },
    firstStage: { perTask: 40, crossFit: 0 },
    align: { steps: 60, batch: 4, lr: 1e-3, centre: false },
    pointing: [],
    sft: { steps: 120, batch: 8, lr: 1e-3, traceStyle: 'brief', kStart: 16, easyShare: 0, tasks: null, answerShare: 0, decisionTokens: 'answer', firstStage: false },
    grpo: { steps: 4, batch: 2, group: 4, lr: 5e-5, maxNewTokens: 384, fixedLambda: 0.5, lengthNorm: 'completion' },
    eval: { K: 16, limit: 12, maxNewTokens: 384, tasks: null },
    ablations: false,
  },
  small: {
    // Sized from per-stage timings on lavapipe (2 cores) to finish in about an hour;
    // no ablations (a config file adds them: `{"base": "small", "ablations": true}`).
    preset: 'small',
    data: 'data/emoji-mbeir',
    seed: 1,
    pretrain: { steps: 450, batch: 16, lr: 2e-3 },
    retriever: { steps: 120, batch: 16, lr: 1e-3, pooling: 'mean', batching: 'mixed', embedDim: 64, keywordShare: 0, trigramDim: 0, trigramBuckets: 8192, taskWeights: '', lexicalWeight: 0, textExpert: NO_TEXT_EXPERT, textImageExpert: NO_TEXT_IMAGE_EXPERT },
    firstStage: { perTask: 0, crossFit: 0 },
    align: { steps: 40, batch: 8, lr: 1e-3, centre: true },
    pointing: [],
    sft: { steps: 60, batch: 8, lr: 1e-3, traceStyle: 'brief', kStart: 4, easyShare: 0.5, tasks: null, answerShare: 0, decisionTokens: 'answer', firstStage: false },
    grpo: { steps: 4, batch: 2, group: 4, lr: 2e-5, maxNewTokens: 384, fixedLambda: 0.5, lengthNorm: 'completion' },
    eval: { K: 16, limit: 30, maxNewTokens: 384, tasks: null },
    ablations: false,
  },
};

export const STAGES = ['data', 'pretrain', 'retriever', 'first-stage', 'align', 'pointing', 'sft', 'grpo', 'ablations', 'table', 'report'] as const;
export type StageName = (typeof STAGES)[number];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep-merges `over` into `base`, refusing keys the base does not have (typos). */
function merge(base: Record<string, unknown>, over: Record<string, unknown>, where: string): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (!(k in base)) throw new Error(`${where}: unknown setting '${k}' (known: ${Object.keys(base).join(', ')})`);
    if (isObject(base[k])) {
      if (!isObject(v)) throw new Error(`${where}.${k}: expected an object`);
      out[k] = merge(base[k] as Record<string, unknown>, v, `${where}.${k}`);
    } else {
      if (typeof v !== typeof base[k]) throw new Error(`${where}.${k}: expected a ${typeof base[k]}, got ${JSON.stringify(v)}`);
      out[k] = v;
    }
  }
  return out;
}

function checkTasks(tasks: unknown, where: string): void {
  if (tasks !== null && !(Array.isArray(tasks) && tasks.length && tasks.every((t) => Number.isInteger(t) && t >= 0))) {
    throw new Error(`${where}: ${JSON.stringify(tasks)} must be null (every task) or a list of task ids such as [4, 6]`);
  }
}

const POINTING_KEYS = ['steps', 'batch', 'lr', 'K', 'easyShare', 'tasks'];
const POINTING_OPTIONAL = ['firstStage'];

function checkPointingPhase(ph: unknown, where: string, evalK: number): void {
  if (!isObject(ph)) throw new Error(`${where}: expected an object with ${POINTING_KEYS.join(', ')}`);
  const known = [...POINTING_KEYS, ...POINTING_OPTIONAL];
  for (const k of Object.keys(ph)) if (!known.includes(k)) throw new Error(`${where}: unknown setting '${k}' (known: ${known.join(', ')})`);
  for (const k of POINTING_KEYS) if (!(k in ph)) throw new Error(`${where}: '${k}' is missing (a phase sets all of ${POINTING_KEYS.join(', ')})`);
  for (const k of ['steps', 'batch']) if (!Number.isInteger(ph[k]) || (ph[k] as number) < 1) throw new Error(`${where}.${k}: ${JSON.stringify(ph[k])} must be a positive integer`);
  if (!(typeof ph.lr === 'number' && ph.lr > 0)) throw new Error(`${where}.lr: ${JSON.stringify(ph.lr)} must be a positive number`);
  if (!Number.isInteger(ph.K) || (ph.K as number) < 2 || (ph.K as number) > evalK) throw new Error(`${where}.K: ${JSON.stringify(ph.K)} must be an integer from 2 to eval.K = ${evalK}`);
  if (!(typeof ph.easyShare === 'number' && ph.easyShare >= 0 && ph.easyShare <= 1)) throw new Error(`${where}.easyShare: ${JSON.stringify(ph.easyShare)} must be a number from 0 to 1`);
  checkTasks(ph.tasks, `${where}.tasks`);
  if ('firstStage' in ph && typeof ph.firstStage !== 'boolean') throw new Error(`${where}.firstStage: ${JSON.stringify(ph.firstStage)} must be true or false`);
}

/** Checks a config's retriever section; `where` names it in errors (e.g. "file.json.retriever"). */
export function checkRetrieverSettings(r: PipelineConfig['retriever'], where: string): void {
  if (!POOLINGS.includes(r.pooling)) throw new Error(`${where}.pooling: '${r.pooling}' is not one of ${POOLINGS.join(', ')}`);
  if (!Number.isInteger(r.embedDim) || r.embedDim < 1) throw new Error(`${where}.embedDim: ${r.embedDim} must be a positive integer`);
  if (!(r.keywordShare >= 0 && r.keywordShare < 1)) throw new Error(`${where}.keywordShare: ${r.keywordShare} must be a number from 0 (none) to below 1`);
  for (const k of ['trigramDim', 'trigramBuckets'] as const) {
    if (!Number.isInteger(r[k]) || r[k] < (k === 'trigramDim' ? 0 : 1)) throw new Error(`${where}.${k}: ${JSON.stringify(r[k])} must be ${k === 'trigramDim' ? 'a width (0 = no trigram part)' : 'a positive integer'}`);
  }
  if (!(r.lexicalWeight >= 0 && r.lexicalWeight < 1)) throw new Error(`${where}.lexicalWeight: ${JSON.stringify(r.lexicalWeight)} must be a number from 0 (no lexical part) to below 1`);
  if (typeof r.taskWeights !== 'string') throw new Error(`${where}.taskWeights: must be a string "<task>:<turns>,...", e.g. "1:3" ("" for none)`);
  for (const key of ['textExpert', 'textImageExpert'] as const) {
    const te = r[key];
    const at = `${where}.${key}`;
    if (!Number.isInteger(te.steps) || te.steps < 0) throw new Error(`${at}.steps: ${JSON.stringify(te.steps)} must be a whole number (0 = no such expert)`);
    if (!te.steps) continue;
    if (key === 'textExpert' && !(te.weight > 0 && te.weight + r.lexicalWeight < 1)) throw new Error(`${at}.weight: ${te.weight} must be above 0, and with lexicalWeight (${r.lexicalWeight}) below 1`);
    if (key === 'textImageExpert' && !(te.weight > 0 && te.weight < 1)) throw new Error(`${at}.weight: ${te.weight} must be between 0 and 1 (exclusive)`);
    if (!POOLINGS.includes(te.pooling)) throw new Error(`${at}.pooling: '${te.pooling}' is not one of ${POOLINGS.join(', ')}`);
    if (!Number.isInteger(te.embedDim) || te.embedDim < 1 || !Number.isInteger(te.batch) || te.batch < 2 || !(te.lr > 0)) throw new Error(`${at}: embedDim must be a positive integer, batch at least 2, lr above 0`);
    if (!(te.keywordShare >= 0 && te.keywordShare < 1)) throw new Error(`${at}.keywordShare: ${te.keywordShare} must be a number from 0 (none) to below 1`);
  }
  const taskWeights = parseTaskWeights(r.taskWeights, `${where}.taskWeights`);
  if (Object.keys(taskWeights).length && r.batching !== 'task') throw new Error(`${where}.taskWeights: needs batching 'task' (one task per batch), not '${r.batching}'`);
  if (!RETRIEVER_BATCHINGS.includes(r.batching)) throw new Error(`${where}.batching: '${r.batching}' is not one of ${RETRIEVER_BATCHINGS.join(', ')}`);
}

/**
 * A config by name (tiny, small) or from a JSON file whose settings override a named
 * config ({"base": "small", "sft": {"steps": 500}}; base defaults to the file's preset, else tiny).
 */
export function loadPipelineConfig(nameOrFile: string): PipelineConfig {
  if (PIPELINE_CONFIGS[nameOrFile]) return structuredClone(PIPELINE_CONFIGS[nameOrFile]);
  if (!existsSync(nameOrFile)) throw new Error(`config '${nameOrFile}': neither a config name (${Object.keys(PIPELINE_CONFIGS).join(', ')}) nor a file`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(nameOrFile, 'utf8'));
  } catch (e) {
    throw new Error(`${nameOrFile}: invalid JSON (${(e as Error).message})`);
  }
  if (!isObject(raw)) throw new Error(`${nameOrFile}: expected a JSON object of settings`);
  const { base: baseName, ...over } = raw;
  const name = typeof baseName === 'string' ? baseName : typeof over.preset === 'string' && PIPELINE_CONFIGS[over.preset] ? over.preset : 'tiny';
  const base = PIPELINE_CONFIGS[name];
  if (!base) throw new Error(`${nameOrFile}: base '${name}' is not a config (${Object.keys(PIPELINE_CONFIGS).join(', ')})`);
  const cfg = merge(base as unknown as Record<string, unknown>, over, nameOrFile) as unknown as PipelineConfig;
  getPreset(cfg.preset);
  checkRetrieverSettings(cfg.retriever, `${nameOrFile}.retriever`);
  if (!Number.isInteger(cfg.firstStage.crossFit) || cfg.firstStage.crossFit < 0 || cfg.firstStage.crossFit === 1) {
    throw new Error(`${nameOrFile}.firstStage.crossFit: ${JSON.stringify(cfg.firstStage.crossFit)} must be 0 (rank with the retriever itself) or a number of folds from 2`);
  }
  if (!TRACE_STYLES.includes(cfg.sft.traceStyle)) throw new Error(`${nameOrFile}.sft.traceStyle: '${cfg.sft.traceStyle}' is not one of ${TRACE_STYLES.join(', ')}`);
  if (!Number.isInteger(cfg.sft.kStart) || cfg.sft.kStart < 1 || cfg.sft.kStart > cfg.eval.K) {
    throw new Error(`${nameOrFile}.sft.kStart: ${cfg.sft.kStart} must be an integer from 1 to eval.K = ${cfg.eval.K}`);
  }
  if (!DECISION_TOKENS.includes(cfg.sft.decisionTokens)) throw new Error(`${nameOrFile}.sft.decisionTokens: '${cfg.sft.decisionTokens}' is not one of ${DECISION_TOKENS.join(', ')}`);
  if (!(cfg.sft.answerShare >= 0 && cfg.sft.answerShare < 1)) throw new Error(`${nameOrFile}.sft.answerShare: ${cfg.sft.answerShare} must be a number from 0 (none) to below 1`);
  if (!(cfg.sft.easyShare >= 0 && cfg.sft.easyShare <= 1)) throw new Error(`${nameOrFile}.sft.easyShare: ${cfg.sft.easyShare} must be a number from 0 to 1`);
  if (!LENGTH_NORMS.includes(cfg.grpo.lengthNorm)) throw new Error(`${nameOrFile}.grpo.lengthNorm: '${cfg.grpo.lengthNorm}' is not one of ${LENGTH_NORMS.join(', ')}`);
  checkTasks(cfg.sft.tasks, `${nameOrFile}.sft.tasks`);
  checkTasks(cfg.eval.tasks, `${nameOrFile}.eval.tasks`);
  if (!Array.isArray(cfg.pointing)) throw new Error(`${nameOrFile}.pointing: expected a list of phases ([] for none)`);
  cfg.pointing.forEach((ph, i) => checkPointingPhase(ph, `${nameOrFile}.pointing[${i}]`, cfg.eval.K));
  return cfg;
}

export interface PipelineOptions {
  config: PipelineConfig;
  runDir: string;
  /** Stages to run (default all, in order); a stage whose inputs are missing fails clearly. */
  stages?: readonly StageName[];
  /** No progress bars (also automatic when stdout is not a terminal or CI is set). */
  quiet?: boolean;
  /** The input checkpoint of the (single) stage run, instead of the run's earlier stage. */
  ckpt?: string;
  /** What to record as the command in the report. */
  command?: string;
  log?: (line: string) => void;
}

/** Where each stage keeps its output inside a pipeline run. */
export function stageDirs(runDir: string) {
  const d = (s: string) => join(runDir, s);
  return {
    pretrain: d('pretrain'),
    retriever: d('retriever'),
    firstStage: d('first-stage'),
    trainRankings: join(d('first-stage'), TRAIN_RANKINGS_FILE),
    align: d('align'),
    pointing: d('pointing'),
    pointingNoIcm: d('pointing-no-icm'),
    sft: d('sft'),
    grpo: d('grpo'),
    sftNoIcm: d('sft-no-icm'),
    sftNoInspect: d('sft-no-inspect'),
    grpoNoIcm: d('grpo-no-icm'),
    grpoNoInspect: d('grpo-no-inspect'),
    grpoFixed: d('grpo-fixed-lambda'),
    table: d('table'),
    report: join(runDir, 'report.html'),
  };
}

/** The first-stage rankings of the training queries, beside the first stage's recall. */
export const TRAIN_RANKINGS_FILE = 'train-rankings.json';

/** Whether any training stage of the config draws its lists from the training queries' rankings. */
export const usesTrainRankings = (c: PipelineConfig) => c.sft.firstStage || c.pointing.some((ph) => ph.firstStage);

/** The folder of the retriever trained without fold i of F (cross-fitted training rankings). */
export const heldOutRetrieverDir = (runDir: string, i: number, F: number) => join(stageDirs(runDir).retriever, `without-fold-${i}-of-${F}`);

/** The folder of pointing phase i (from 0) inside a pointing stage folder. */
export const pointingPhaseDir = (dir: string, i: number) => join(dir, `phase-${i + 1}`);

const hasModel = (dir: string) => existsSync(join(dir, 'final', 'config.json'));

function need(dir: string, what: string, stage: string): string {
  const f = join(dir, 'final');
  if (!existsSync(join(f, 'config.json'))) throw new Error(`stage ${stage} needs ${what} in ${f}; run the earlier stages first (or the whole pipeline)`);
  return f;
}

/**
 * The rows of the reranking table: which checkpoint each row evaluates, and how; with a
 * pointing warm-up of n phases, its last phase is a row too (an answer-only reranker).
 */
export function tableRows(runDir: string, ablations: boolean, pointingPhases = 0): TableRowSpec[] {
  const s = stageDirs(runDir);
  const rows: TableRowSpec[] = [
    { name: 'zero-shot reranking', ckpt: join(s.align, 'final'), zeroShot: true },
    ...(pointingPhases ? [{ name: 'pointing warm-up (answer-only SFT)', ckpt: join(pointingPhaseDir(s.pointing, pointingPhases - 1), 'final'), noInspect: true }] : []),
    { name: 'SFT', ckpt: join(s.sft, 'final') },
    { name: 'SFT + GRPO (full)', ckpt: join(s.grpo, 'final') },
  ];
  if (ablations) {
    rows.push(
      { name: 'SFT without ICM', ckpt: join(s.sftNoIcm, 'final'), noIcm: true },
      { name: 'SFT without inspection', ckpt: join(s.sftNoInspect, 'final'), noInspect: true },
      { name: 'full without ICM', ckpt: join(s.grpoNoIcm, 'final'), noIcm: true },
      { name: 'full without inspection', ckpt: join(s.grpoNoInspect, 'final'), noInspect: true },
      { name: 'full, fixed lambda', ckpt: join(s.grpoFixed, 'final') },
    );
  }
  return rows;
}

export async function runPipeline(o: PipelineOptions): Promise<void> {
  const c = o.config;
  const log = o.log ?? console.log;
  const quiet = o.quiet;
  const want = new Set<StageName>(o.stages ?? STAGES);
  const s = stageDirs(o.runDir);
  if (o.ckpt && want.size !== 1) throw new Error('stage: a --ckpt override needs exactly one stage');
  // The primary input of a stage: the override, else the earlier stage's final folder.
  const input = (dir: string, what: string, stage: string) => o.ckpt ?? need(dir, what, stage);
  const preset = getPreset(c.preset);
  const ctx = await init();
  mkdirSync(o.runDir, { recursive: true });
  log(`adapter: ${ctx.description}`);
  log(`run: ${o.runDir} (preset ${preset.name})`);
  const started = performance.now();

  // One stage's work under a progress display that fails cleanly on error; its wall time
  // is logged and kept in <run>/stage-times.json (a resumed stage records its last part).
  const timesFile = join(o.runDir, 'stage-times.json');
  const run = async <T>(label: string, total: number, fn: (p: Progress) => Promise<T>) => {
    const t0 = performance.now();
    const out = await withProgress({ label, total, quiet }, fn);
    const seconds = Math.round((performance.now() - t0) / 1000);
    log(`${label}: ${seconds} s`);
    const times: Record<string, number> = existsSync(timesFile) ? JSON.parse(readFileSync(timesFile, 'utf8')) : {};
    times[label] = seconds;
    writeJsonAtomic(timesFile, times);
    return out;
  };
  // A stage's own lines: to the caller's log when one is given, else above the bar.
  const via = (p: Progress) => (line: string) => (o.log ? o.log(line) : p.log(line));

  // Data.
  if (want.has('data') && !existsSync(join(c.data, 'meta.json'))) {
    log(`data: building the emoji benchmark in ${c.data} ...`);
    await writeEmojiBenchmark(c.data, buildEmojiBenchmark({ seed: c.seed }));
  }
  if (!existsSync(join(c.data, 'meta.json'))) throw new Error(`no benchmark in ${c.data}: run the data stage first (retrv train --stage data, or the demo)`);
  const bench = await loadBenchmark(c.data);
  const images = new ImageStore({ root: bench.imageRoot, patchSize: preset.vision.patchSize, mergeSize: preset.vision.mergeSize, size: preset.imageSize });
  const byDid = new Map(bench.pool.map((x) => [x.did, x]));

  // Pre-training.
  if (want.has('pretrain') && !hasModel(s.pretrain)) {
    const attributes = [...(await readSideTable<EmojiAttributes>(join(c.data, 'attributes.jsonl'), 'did')).values()];
    await run('pretrain', c.pretrain.steps, (p) =>
      pretrain({
        dataDir: c.data,
        imageRoot: bench.imageRoot,
        attributes,
        preset: preset.name,
        runDir: s.pretrain,
        ...c.pretrain,
        seed: c.seed,
        saveEvery: 50,
        log: via(p),
        onStep: (x) => p.update(x.step + 1, { loss: x.loss, 'tok/s': (x.tokens * 1000) / x.ms }),
      }),
    );
  } else if (want.has('pretrain')) log(`pretrain: done (${join(s.pretrain, 'final')})`);

  // First-stage retriever; with cross-fitted training rankings, one more per held-out fold.
  const crossFit = usesTrainRankings(c) ? c.firstStage.crossFit : 0;
  const trainRetrieverInto = async (outDir: string, label: string, keep: (q: MbeirQuery) => boolean, keepName: (base: string) => boolean, withExperts = false) => {
    const base = input(s.pretrain, 'the pre-trained base model', 'retriever');
    const queries = bench.queries.train.filter(keep);
    let source = benchmarkTripleSource(queries, byDid, images, c.seed, c.retriever.batching, parseTaskWeights(c.retriever.taskWeights, 'retriever.taskWeights'));
    const names = c.retriever.keywordShare > 0 ? await keywordPairNames(c.data, keepName) : [];
    if (names.length) source = withKeywordPairs(source, names, byDid, images, c.retriever.keywordShare, c.seed);
    log(`${label}: ${queries.length} training queries${names.length ? `, keyword pairs of ${names.length} names` : ''}`);
    const dense = await run(label, c.retriever.steps, async (p) => {
      const { retriever } = await trainRetriever(() => Retriever.fromBase(base, c.retriever.embedDim, c.seed, undefined, c.retriever.pooling, c.retriever.trigramDim ? { buckets: c.retriever.trigramBuckets, dim: c.retriever.trigramDim } : undefined), source, {
        steps: c.retriever.steps,
        batchSize: c.retriever.batch,
        lr: c.retriever.lr,
        outDir,
        checkpointEvery: 50,
        resume: true,
        logEvery: 0,
        log: via(p),
        onStep: (x) => p.update(x.step, { loss: x.loss, 'in-batch acc': x.accuracy }), // step counts from 1 here
      });
      return retriever;
    });
    let hybrid = dense;
    try {
      // The lexical part is fixed, not trained: attached once the dense model is.
      const w = c.retriever.lexicalWeight;
      if (w) hybrid = hybrid.withLexical({ tfidf: TfIdf.fit(bench.pool.map((x) => x.txt)), weight: w });
      const experts = [
        { label: 'text expert', task: 1, te: c.retriever.textExpert, dir: TEXT_EXPERT_DIR, attach: (r: Retriever, e: TextExpert) => r.withTextExpert(e) },
        { label: 'text -> image expert', task: 0, te: c.retriever.textImageExpert, dir: TEXT_IMAGE_EXPERT_DIR, attach: (r: Retriever, e: TextExpert) => r.withTextImageExpert(e) },
      ];
      for (const x of withExperts ? experts : []) {
        if (!x.te.steps) continue;
        const model = await run(x.label, x.te.steps, (p) => trainExpert(x.label, x.task, x.te, join(outDir, x.dir), base, keep, keepName, p));
        hybrid = x.attach(hybrid, { model, weight: x.te.weight });
      }
      await hybrid.save(join(outDir, 'final'));
    } finally {
      hybrid.dispose();
    }
  };
  /** An expert: a retriever trained on one task's training queries alone (and keyword pairs, if its share says so), resumable in its own folder. */
  const trainExpert = async (label: string, task: number, te: ExpertSettings, outDir: string, base: string, keep: (q: MbeirQuery) => boolean, keepName: (base: string) => boolean, p: Progress) => {
    const queries = bench.queries.train.filter((q) => q.task_id === task && keep(q));
    if (!queries.length) throw new Error(`retriever: the benchmark has no task-${task} (${taskName(task)}) training queries to train the ${label} on; set its steps to 0`);
    let source = benchmarkTripleSource(queries, byDid, images, c.seed, 'mixed');
    const names = te.keywordShare > 0 ? await keywordPairNames(c.data, keepName) : [];
    if (names.length) source = withKeywordPairs(source, names, byDid, images, te.keywordShare, c.seed);
    via(p)(`${label}: ${queries.length} ${taskName(task)} training queries${names.length ? `, keyword pairs of ${names.length} names` : ''}, ${te.steps} steps`);
    const { retriever } = await trainRetriever(() => Retriever.fromBase(base, te.embedDim, c.seed, undefined, te.pooling), source, {
      steps: te.steps,
      batchSize: te.batch,
      lr: te.lr,
      outDir,
      checkpointEvery: 50,
      resume: true,
      logEvery: 0,
      log: via(p),
      onStep: (x) => p.update(x.step, { loss: x.loss }),
    });
    return retriever;
  };
  // The experts go with the main retriever only: a held-out retriever's training lists
  // would need experts of its own, trained without its fold (README: cross-fitted lists).
  if (want.has('retriever') && !hasModel(s.retriever)) await trainRetrieverInto(s.retriever, 'retriever', () => true, () => true, true);
  else if (want.has('retriever')) log(`retriever: done (${join(s.retriever, 'final')})`);
  if (want.has('retriever') && crossFit) {
    const folds = await queryFolds(c.data, crossFit);
    for (let i = 0; i < crossFit; i++) {
      const dir = heldOutRetrieverDir(o.runDir, i, crossFit);
      if (hasModel(dir)) {
        log(`retriever without fold ${i} of ${crossFit}: done (${join(dir, 'final')})`);
        continue;
      }
      await trainRetrieverInto(dir, `retriever without fold ${i} of ${crossFit}`, (q) => foldOfQuery(folds, q.qid) !== i, (b) => foldOfBase(b, crossFit) !== i);
    }
  }

  // First-stage recall with baselines.
  if (want.has('first-stage') && !existsSync(join(s.firstStage, 'first-stage-recall.json'))) {
    const dir = input(s.retriever, 'the trained retriever', 'first-stage');
    mkdirSync(s.firstStage, { recursive: true });
    const retriever = await Retriever.load(dir);
    try {
      const reports = await run('first stage', 1, (p) =>
        evaluateFirstStage({
          bench,
          retriever,
          images,
          perTask: c.firstStage.perTask,
          seed: c.seed,
          outDir: s.firstStage,
          adapter: ctx.description,
          preset: preset.name,
          onProgress: (what, done, total) => p.update(0, { [what]: `${done}/${total}` }),
        }),
      );
      log(formatRecallTable(reports, `first stage, test split, ${reports['first stage'].queries} queries`));
    } finally {
      retriever.dispose();
    }
  } else if (want.has('first-stage')) log(`first-stage: done (${s.firstStage})`);
  // Rankings of the training queries, for the stages that train on first-stage lists.
  if (want.has('first-stage') && usesTrainRankings(c) && !existsSync(s.trainRankings)) {
    const r = await run('first stage, training queries', 1, (p) => {
      const common = { dataDir: c.data, depth: 32, onProgress: (done: number, total: number) => p.update(0, { 'embedding the train-split pools': `${done}/${total}` }) };
      if (!crossFit) return trainingRankings({ ...common, retriever: input(s.retriever, 'the trained retriever', 'first-stage') });
      // Not --ckpt: each fold needs its own retriever, the one the retriever stage trained without it.
      const retrievers = Array.from({ length: crossFit }, (_, i) => need(heldOutRetrieverDir(o.runDir, i, crossFit), `the retriever without fold ${i} of ${crossFit}`, 'first-stage'));
      return crossFitRankings({ ...common, retrievers });
    });
    writeRankings(s.trainRankings, r.rankings);
    const how = crossFit ? `each of ${crossFit} folds ranked by a retriever trained without it` : 'the retriever trained on them';
    log(formatRecallTable({ 'first stage': r.recall }, `first stage, training queries against the train-split pools (${how})`));
  }

  // ICM self-alignment.
  if (want.has('align') && !hasModel(s.align)) {
    const base = input(s.pretrain, 'the pre-trained base model', 'align');
    await run('align', c.align.steps, async (p) => {
      const { model, icm } = await alignIcm({
        base,
        dataDir: c.data,
        runDir: s.align,
        ...c.align,
        seed: c.seed,
        saveEvery: 20,
        log: via(p),
        onStep: (x) => p.update(x.step + 1, { kl: x.kl, tokens: `${x.fullTokens} -> ${x.compressedTokens}` }),
      });
      model.dispose();
      icm.dispose();
    });
  } else if (want.has('align')) log(`align: done (${join(s.align, 'final')})`);

  // SFT (and its ablations), and the answer-only phases of the pointing warm-up.
  type SftRun = { steps: number; batch: number; lr: number; traceStyle: TraceStyle; K: number; kStart: number; easyShare: number; tasks: number[] | null; answerShare: number; decisionTokens?: DecisionTokens; firstStage?: boolean };
  const sftRun = async (label: string, dir: string, base: string, r: SftRun, opts: { noIcm?: boolean; noInspect?: boolean }) => {
    if (existsSync(join(dir, 'final', 'sft.json'))) return log(`${label}: done (${join(dir, 'final')})`);
    const { answerShare, decisionTokens, tasks, firstStage, ...settings } = r;
    if (firstStage && !existsSync(s.trainRankings)) throw new Error(`${label} trains on first-stage lists and needs ${s.trainRankings}; run the first-stage stage first`);
    await run(label, r.steps, (p) =>
      runSftStage({
        base,
        out: dir,
        dataDir: c.data,
        ...settings,
        tasks: tasks ?? undefined,
        firstStage: firstStage ? s.trainRankings : undefined,
        ...(answerShare > 0 ? { decisionShare: answerShare, decisionTokens: decisionTokens ?? 'answer' } : {}),
        seed: c.seed,
        ...opts,
        log: via(p),
        onStep: (x) => p.update(x.step + 1, { loss: x.loss, 'tok/s': x.tokensPerSecond, N_ins: x.inspections / r.batch }),
      }),
    );
  };
  const sft = (label: string, dir: string, base: string, opts: { noIcm?: boolean; noInspect?: boolean }) => sftRun(label, dir, base, { ...c.sft, K: c.eval.K }, opts);
  // The phases run in <dir>/phase-<n>, each from the one before.
  const pointing = async (label: string, dir: string, base: string, opts: { noIcm?: boolean }) => {
    let from = base;
    for (const [i, ph] of c.pointing.entries()) {
      const phase = { ...ph, traceStyle: 'answer' as const, kStart: ph.K, answerShare: 0 };
      await sftRun(`${label} ${i + 1}/${c.pointing.length}`, pointingPhaseDir(dir, i), from, phase, { ...opts, noInspect: true });
      from = join(pointingPhaseDir(dir, i), 'final');
    }
  };
  // Where SFT starts: the last pointing phase when there is a warm-up, else alignment (or
  // pre-training, for the ICM ablation).
  const pointed = (dir: string, fallback: string) => (c.pointing.length ? pointingPhaseDir(dir, c.pointing.length - 1) : fallback);
  // GRPO (and its ablations).
  const grpo = async (label: string, dir: string, from: string, opts: { fixedLambda?: number; maxInspections?: number }) => {
    if (hasModel(dir)) return log(`${label}: done (${join(dir, 'final')})`);
    const models = await loadGrpoModels(from);
    try {
      // GRPO trains on the tasks SFT trained on, on the same kind of lists.
      if (c.sft.firstStage && !existsSync(s.trainRankings)) throw new Error(`${label} trains on first-stage lists as SFT did and needs ${s.trainRankings}; run the first-stage stage first`);
      const all = await loadGrpoData(c.data, models.model, c.sft.firstStage ? readRankings(s.trainRankings) : undefined);
      const data = c.sft.tasks ? { ...all, queries: queriesOfTasks(all.queries, c.sft.tasks, `${c.data} train split`) } : all;
      await run(label, c.grpo.steps, (p) =>
        grpoTrain({
          ...models,
          data,
          runDir: dir,
          steps: c.grpo.steps,
          batch: c.grpo.batch,
          group: c.grpo.group,
          lr: c.grpo.lr,
          maxNewTokens: c.grpo.maxNewTokens,
          lengthNorm: c.grpo.lengthNorm,
          K: c.eval.K,
          seed: c.seed,
          saveEvery: 2,
          ...opts,
          log: via(p),
          onStep: (x) => p.update(x.step + 1, { reward: x.rewardMean, acc: x.accuracy, N_ins: x.inspections, kl: x.kl, lambda: x.lambda }),
        }),
      );
    } finally {
      models.model.dispose();
      models.reference.dispose();
      models.icm?.dispose();
      models.referenceIcm?.dispose();
    }
  };
  if (want.has('pointing') && c.pointing.length) await pointing('pointing', s.pointing, input(s.align, 'the aligned model and ICM', 'pointing'), {});
  if (want.has('sft')) await sft('sft', s.sft, input(pointed(s.pointing, s.align), c.pointing.length ? 'the last pointing phase' : 'the aligned model and ICM', 'sft'), {});
  if (want.has('grpo')) await grpo('grpo', s.grpo, input(s.sft, 'the SFT model', 'grpo'), {});
  if (want.has('ablations') && c.ablations) {
    if (c.pointing.length) await pointing('pointing without ICM', s.pointingNoIcm, need(s.pretrain, 'the pre-trained base model', 'ablations'), { noIcm: true });
    await sft('sft without ICM', s.sftNoIcm, need(pointed(s.pointingNoIcm, s.pretrain), 'the pre-trained base model (or its pointing phases)', 'ablations'), { noIcm: true });
    await sft('sft without inspection', s.sftNoInspect, need(pointed(s.pointing, s.align), 'the aligned model and ICM (or the pointing phases)', 'ablations'), { noInspect: true });
    await grpo('grpo without ICM', s.grpoNoIcm, need(s.sftNoIcm, 'the SFT model without ICM', 'ablations'), {});
    await grpo('grpo without inspection', s.grpoNoInspect, need(s.sftNoInspect, 'the SFT model without inspection', 'ablations'), { maxInspections: 0 });
    await grpo('grpo, fixed lambda', s.grpoFixed, need(s.sft, 'the SFT model', 'ablations'), { fixedLambda: c.grpo.fixedLambda });
  }

  // The reranking table.
  if (want.has('table')) {
    const spec: TableSpec = {
      common: {
        queries: join(c.data, 'queries_test.jsonl'),
        pool: join(c.data, 'pool.jsonl'),
        imageRoot: bench.imageRoot,
        retriever: need(s.retriever, 'the trained retriever', 'table'),
        K: c.eval.K,
        limit: c.eval.limit,
        maxNewTokens: c.eval.maxNewTokens,
        ...(c.eval.tasks ? { tasks: c.eval.tasks } : {}),
      },
      rows: tableRows(o.runDir, c.ablations, c.pointing.length),
    };
    for (const r of spec.rows) if (!existsSync(join(r.ckpt, 'config.json'))) throw new Error(`table row '${r.name}' needs ${r.ckpt}; run its training stage first`);
    // Progress counts rows: the first stage, then each reranker row.
    const rowIndex = (row: string) => 1 + spec.rows.findIndex((r) => r.name === row);
    const result = await run('table', spec.rows.length + 1, async (p) => {
      const r = await runAblationTable(spec, s.table, {
        log: via(p),
        onProgress: (row, what, d, t) => p.update(rowIndex(row), { row, [what]: `${d}/${t}` }),
      });
      p.update(spec.rows.length + 1);
      return r;
    });
    log(formatTerminalTable(result.rows, `reranking, test split${c.eval.tasks ? ` (tasks ${c.eval.tasks.join(', ')})` : ''}, ${c.eval.limit} queries, K = ${c.eval.K} (${ctx.description})`));
  }

  if (want.has('report')) {
    await writePipelineReport({ runDir: o.runDir, config: c, adapter: ctx.description, command: o.command, imageRoot: bench.imageRoot, byDid });
    log(`report: ${resolve(s.report)}`);
  }
  log(`pipeline finished in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}
