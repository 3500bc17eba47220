// The activation (SFT) stage as a runnable stage: loads the pre-trained base model and the
// self-aligned ICM, draws examples from the benchmark's train split, runs sftTrain (which
// resumes from runDir/checkpoint), and leaves runDir/final laid out like the align
// stage's final: the model (config.json, model.safetensors, tokenizer.json) and the ICM
// beside it (icm.safetensors, icm.json), so Mllm.load + Icm.load read either one.
//
//   npx tsx train/sft-stage.ts --base <checkpoint> [--icm <align final>] --out runs/sft-tiny
//     [--data data/emoji-mbeir] [--steps 300] [--batch 4] [--lr 1e-3] [--K 16]
//     [--k-start 4] [--easy-share 0.5] [--tasks 4,6] [--decision-share 0.5]
//     [--decision-tokens digits|answer] [--max-inspections 3]
//     [--trace full|brief|open|nameless|answer|pointed|looks|verify|glance] [--first-stage train-rankings.json]
//     [--save-every 25] [--seed 1] [--no-icm] [--no-inspect] [--quiet]
//
// Choices:
// - The ICM comes from --icm, else from the base folder when it holds one (an align
//   final); when neither has one the stage stops and says so rather than silently
//   training a fresh, unaligned ICM. --no-icm trains on full candidate tokens (the
//   "without ICM" ablation) and writes no ICM.
// - --no-inspect trains on traces without inspection (maxInspections 0).
// - runDir/final/sft.json is written last and marks a finished run: running the stage
//   again then does nothing (delete the folder to train anew).
// - Candidate lists are the positive, its hard negatives and random same-split pool items
//   (train/data/cot.ts candidateList), shuffled; with --first-stage (rankings of the
//   training queries, train/training-rankings.ts) they are each query's top K in the first
//   stage's order, and queries without a positive in their top K are left out.
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { type Tensor, init } from '../runtime/index.ts';
import { CheckpointError } from '../model/checkpoint.ts';
import { Icm, ICM_WEIGHTS_FILE, icmCompress } from '../model/icm.ts';
import { Mllm, type MllmConfig } from '../model/mllm.ts';
import type { EmojiAttributes, EmojiQueryAttributes } from './data/emoji-benchmark.ts';
import { loadBenchmark, readSideTable } from './data/emoji-benchmark.ts';
import { TRACE_STYLES, type TraceStyle } from './data/cot.ts';
import { ImageStore } from './data/inputs.ts';
import { parseTaskIds } from './data/mbeir.ts';
import { writeTextAtomic } from './atomic-write.ts';
import { readRankings } from './training-rankings.ts';
import { DECISION_TOKENS, type DecisionTokens, type SftData, type SftStepInfo, sftTrain } from './sft.ts';

export const SFT_DONE_FILE = 'sft.json';
const COMPRESS_FILE = 'compress.safetensors'; // sftTrain's name for the ICM weights

export interface SftStageOptions {
  /** The pre-trained base checkpoint folder (pre-training's final, or the align final). */
  base: string;
  /** A folder holding icm.safetensors + icm.json (the align run's final); default: the base folder when it holds one. */
  icm?: string;
  /** Full candidate tokens, no ICM (the ablation). */
  noIcm?: boolean;
  /** Traces without inspection (maxInspections 0). */
  noInspect?: boolean;
  /** First-stage rankings of the training queries (JSON, train/training-rankings.ts): lists are their top K in order. */
  firstStage?: string;
  /** The run folder: checkpoint/, final/, log.jsonl. */
  out: string;
  /** The emoji benchmark folder (default data/emoji-mbeir); examples come from its train split. */
  dataDir?: string;
  /** Instead of dataDir: already loaded data (tests; it must use the base model's image settings). */
  data?: SftData;
  steps: number;
  batch: number;
  lr: number;
  /** Candidates per query (default 16). */
  K?: number;
  /** The K curriculum's first list length (train/sft.ts curriculumK; default K, none). */
  kStart?: number;
  /** The share of the steps, from the start, whose lists take random negatives (train/sft.ts randomNegativeSteps; default 0). */
  easyShare?: number;
  /** Train on the queries of these task ids only (default: every task). */
  tasks?: readonly number[];
  /** The share of the loss on the candidate-index tokens (train/sft.ts decisionWeights; default none). */
  decisionShare?: number;
  /** Which tokens the decision share weights: every index (digits, default) or the answer's alone. */
  decisionTokens?: DecisionTokens;
  /** Inspections per trace at most (default 3; forced to 0 by noInspect). */
  maxInspections?: number;
  /** Wording of the synthetic traces (train/data/cot.ts; default full). */
  traceStyle?: TraceStyle;
  seed?: number;
  /** Checkpoint every n steps (default 25). */
  saveEvery?: number;
  warmupSteps?: number;
  /** The reranker's system instruction (default: model/sequence.ts DEFAULT_SYSTEM); evaluate with the same. */
  system?: string;
  /** Progress per step (e.g. a progress bar); without it a line is printed every printEvery steps. */
  onStep?: (s: SftStepInfo & { etaSeconds: number; tokensPerSecond: number }) => void;
  /** Default 10. */
  printEvery?: number;
  log?: (line: string) => void;
}

export interface SftStageResult {
  runDir: string;
  finalDir: string;
  steps: number;
  /** The last step's loss (NaN when the run had already finished). */
  lastLoss: number;
  /** Whether the final holds an ICM. */
  icm: boolean;
  /** True when runDir/final was already complete and nothing was trained. */
  skipped: boolean;
}

/** What a finished run records in final/sft.json. */
export interface SftStageRecord {
  stage: 'sft';
  base: string;
  icm: string | null;
  no_icm: boolean;
  no_inspect: boolean;
  max_inspections: number;
  trace_style: TraceStyle;
  K: number;
  /** The K curriculum's first list length (K: none). */
  k_start: number;
  /** The share of the steps whose lists took random negatives (0: none). */
  easy_share: number;
  tasks: readonly number[] | null;
  /** The rankings file the lists came from (null: shuffled positive + negatives). */
  first_stage: string | null;
  decision_share: number | null;
  decision_tokens: DecisionTokens;
  steps: number;
  batch: number;
  lr: number;
  seed: number;
  last_loss: number;
  system: string | null;
}

/** The ICM as the reranker prompt's compress hook: one ICM pass over a query's candidates. */
/**
 * Checks that `dir` is a multimodal (reranker) checkpoint folder, with an error that
 * names the folder and says what was found instead. `what` names the option in messages.
 */
export function checkMllmFolder(dir: string, what: string): MllmConfig {
  if (!existsSync(dir)) throw new CheckpointError(`${what} ${dir}: no such folder`);
  if (!statSync(dir).isDirectory()) throw new CheckpointError(`${what} ${dir}: not a folder (give a checkpoint folder, e.g. runs/<run>/final)`);
  const cfgPath = join(dir, 'config.json');
  if (!existsSync(cfgPath)) {
    const hint = existsSync(join(dir, 'final', 'config.json')) ? ` (did you mean ${join(dir, 'final')}?)` : Icm.exists(dir) ? ' (it holds an ICM only)' : '';
    throw new CheckpointError(`${what} ${dir}: no config.json, not a checkpoint folder${hint}`);
  }
  let config: MllmConfig;
  try {
    config = JSON.parse(readFileSync(cfgPath, 'utf8')) as MllmConfig;
  } catch (e) {
    throw new CheckpointError(`${what} ${cfgPath}: invalid JSON (${(e as Error).message})`);
  }
  const arch = config.architectures ?? [];
  if (arch.includes('RetrvRetriever')) throw new CheckpointError(`${what} ${dir}: this is a first-stage retriever checkpoint; give a multimodal model checkpoint (pre-training, align or sft final)`);
  if (!config.llm || !config.vision) throw new CheckpointError(`${what} ${dir}: config.json is not a retrv multimodal model (architectures [${arch.join(', ')}], no llm/vision sections)`);
  for (const f of ['model.safetensors', 'tokenizer.json']) if (!existsSync(join(dir, f))) throw new CheckpointError(`${what} ${dir}: ${f} is missing`);
  return config;
}

/** Loads the ICM of `dir`, checked against the model's width; a clear error when there is none. */
export async function loadIcmFor(dir: string, model: Mllm, what: string): Promise<Icm> {
  if (!existsSync(dir)) throw new CheckpointError(`${what} ${dir}: no such folder`);
  if (!Icm.exists(dir)) {
    const hint = Icm.exists(join(dir, 'final')) ? ` (did you mean ${join(dir, 'final')}?)` : '';
    throw new CheckpointError(`${what} ${dir}: no ${ICM_WEIGHTS_FILE} and icm.json there${hint}; give the align run's final folder, or --no-icm for full candidate tokens`);
  }
  const icm = (await Icm.load(dir))!;
  if (icm.config.hidden !== model.config.llm.hidden) {
    icm.dispose();
    throw new CheckpointError(`${what} ${dir}: the ICM is ${icm.config.hidden} wide but the model is ${model.config.llm.hidden} wide (an ICM aligned on another base model?)`);
  }
  return icm;
}

/** The SFT data of a benchmark folder's train split, images sized for `model`. */
export async function loadSftData(dataDir: string, model: Mllm): Promise<SftData & { summary: string[] }> {
  if (!existsSync(join(dataDir, 'meta.json'))) throw new Error(`${dataDir}: no meta.json; build the benchmark first (npm run build-data)`);
  for (const f of ['attributes.jsonl', 'query_attributes.jsonl']) {
    if (!existsSync(join(dataDir, f))) throw new Error(`${join(dataDir, f)} is missing: the SFT traces are written from the emoji benchmark's side tables`);
  }
  const bench = await loadBenchmark(dataDir);
  const attributes = await readSideTable<EmojiAttributes>(join(dataDir, 'attributes.jsonl'), 'did');
  const queryAttributes = await readSideTable<EmojiQueryAttributes>(join(dataDir, 'query_attributes.jsonl'), 'qid');
  const v = model.config.vision;
  const images = new ImageStore({ root: bench.imageRoot, patchSize: v.patchSize, mergeSize: v.mergeSize, size: model.config.imageSize });
  return {
    queries: bench.queries.train,
    queryAttributes,
    attributes,
    byDid: new Map(bench.pool.map((c) => [c.did, c])),
    taskPools: bench.taskPools,
    images,
    summary: bench.summary,
  };
}

const positive = (name: string, v: number, integer: boolean) => {
  if (!Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) throw new RangeError(`sft stage: ${name} must be a positive ${integer ? 'integer' : 'number'}, got ${v}`);
};

/** Runs (or resumes, or finds finished) the activation stage; see the file comment. */
export async function runSftStage(o: SftStageOptions): Promise<SftStageResult> {
  const log = o.log ?? console.log;
  positive('steps', o.steps, true);
  positive('batch', o.batch, true);
  positive('lr', o.lr, false);
  const K = o.K ?? 16;
  positive('K', K, true);
  const seed = o.seed ?? 1;
  const maxInspections = o.noInspect ? 0 : (o.maxInspections ?? 3);
  const runDir = o.out;
  const finalDir = join(runDir, 'final');
  const donePath = join(finalDir, SFT_DONE_FILE);
  if (existsSync(donePath)) {
    log(`sft: ${finalDir} is complete (${SFT_DONE_FILE}); nothing to do (delete ${runDir} to train anew)`);
    const rec = JSON.parse(readFileSync(donePath, 'utf8')) as SftStageRecord;
    return { runDir, finalDir, steps: rec.steps, lastLoss: NaN, icm: !rec.no_icm, skipped: true };
  }

  checkMllmFolder(o.base, 'base');
  const icmDir = o.noIcm ? null : (o.icm ?? (Icm.exists(o.base) ? o.base : null));
  if (!o.noIcm && icmDir === null) {
    throw new CheckpointError(`sft stage: no ICM: ${o.base} holds none and no --icm was given; give --icm <align final> (or --no-icm for full candidate tokens)`);
  }
  const firstStage = o.firstStage ? readRankings(o.firstStage) : undefined;
  const model = await Mllm.load(o.base);
  let icm: Icm | null = null;
  try {
    if (icmDir !== null) icm = await loadIcmFor(icmDir, model, 'icm');
    let data = o.data;
    if (!data) {
      const loaded = await loadSftData(o.dataDir ?? 'data/emoji-mbeir', model);
      for (const line of loaded.summary) if (!/skipped 0 /.test(line)) log(line);
      data = loaded;
    }
    if (firstStage) data = { ...data, firstStage };
    log(`sft stage: base ${o.base}${icm ? `, ICM from ${icmDir}` : ', no ICM (full candidate tokens)'}, ${maxInspections ? `up to ${maxInspections} inspections per trace` : 'no inspection'}`);

    const printEvery = o.printEvery ?? 10;
    const t0 = performance.now();
    let first: number | null = null;
    let tokens = 0;
    const compressParams: Tensor[] = icm ? icm.parameterList() : [];
    const r = await sftTrain({
      model,
      data,
      runDir,
      steps: o.steps,
      batch: o.batch,
      lr: o.lr,
      seed,
      K,
      kStart: o.kStart,
      easyShare: o.easyShare,
      tasks: o.tasks,
      decisionShare: o.decisionShare,
      decisionTokens: o.decisionTokens,
      maxInspections,
      traceStyle: o.traceStyle,
      compress: icm ? icmCompress(model, icm) : undefined,
      compressParams,
      system: o.system,
      saveEvery: o.saveEvery ?? 25,
      warmupSteps: o.warmupSteps,
      log,
      onStep: (s) => {
        // Rates over the steps of this process (a resumed run starts its clock anew).
        first ??= s.step;
        tokens += s.tokens;
        const done = s.step + 1 - first;
        const elapsed = (performance.now() - t0) / 1000;
        const etaSeconds = (elapsed / done) * (s.steps - s.step - 1);
        const tokensPerSecond = tokens / Math.max(elapsed, 1e-9);
        if (o.onStep) o.onStep({ ...s, etaSeconds, tokensPerSecond });
        else if (s.step % printEvery === 0 || s.step + 1 === s.steps) {
          log(`sft ${s.step + 1}/${s.steps}  loss ${s.loss.toFixed(4)}  ${tokensPerSecond.toFixed(0)} tok/s  N_ins ${(s.inspections / o.batch).toFixed(2)}  ETA ${formatSeconds(etaSeconds)}`);
        }
      },
    });
    // The ICM beside the model, as align.ts leaves it; sftTrain's copy of the same weights goes.
    if (icm) {
      await icm.save(finalDir);
      rmSync(join(finalDir, COMPRESS_FILE), { force: true });
    }
    const record: SftStageRecord = {
      stage: 'sft',
      base: resolve(o.base),
      icm: icmDir === null ? null : resolve(icmDir),
      no_icm: !icm,
      no_inspect: maxInspections === 0,
      max_inspections: maxInspections,
      trace_style: o.traceStyle ?? 'full',
      K,
      k_start: o.kStart ?? K,
      easy_share: o.easyShare ?? 0,
      tasks: o.tasks ?? null,
      first_stage: o.firstStage ? resolve(o.firstStage) : null,
      decision_share: o.decisionShare ?? null,
      decision_tokens: o.decisionTokens ?? 'digits',
      steps: o.steps,
      batch: o.batch,
      lr: o.lr,
      seed,
      last_loss: r.lastLoss,
      system: o.system ?? null,
    };
    await writeTextAtomic(donePath, JSON.stringify(record, null, 2) + '\n');
    log(`sft stage done in ${formatSeconds((performance.now() - t0) / 1000)} -> ${finalDir}`);
    return { runDir, finalDir, steps: o.steps, lastLoss: r.lastLoss, icm: !!icm, skipped: false };
  } finally {
    icm?.dispose();
    for (const t of model.parameterList()) t.dispose();
  }
}

export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const r = Math.round(s);
  if (r < 60) return `${r} s`;
  if (r < 3600) return `${Math.floor(r / 60)} min ${String(r % 60).padStart(2, '0')} s`;
  return `${Math.floor(r / 3600)} h ${String(Math.floor((r % 3600) / 60)).padStart(2, '0')} min`;
}

// ---------------------------------------------------------------- command line

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      base: { type: 'string' },
      icm: { type: 'string' },
      out: { type: 'string' },
      data: { type: 'string', default: 'data/emoji-mbeir' },
      steps: { type: 'string', default: '300' },
      batch: { type: 'string', default: '4' },
      lr: { type: 'string', default: '1e-3' },
      K: { type: 'string', default: '16' },
      'k-start': { type: 'string' },
      'easy-share': { type: 'string', default: '0' },
      tasks: { type: 'string' },
      'decision-share': { type: 'string' },
      'decision-tokens': { type: 'string', default: 'digits' },
      'max-inspections': { type: 'string', default: '3' },
      trace: { type: 'string', default: 'full' },
      'first-stage': { type: 'string' },
      'save-every': { type: 'string', default: '25' },
      seed: { type: 'string', default: '1' },
      'no-icm': { type: 'boolean', default: false },
      'no-inspect': { type: 'boolean', default: false },
      quiet: { type: 'boolean', default: false },
    },
  });
  const num = (name: string, v: string | undefined, integer = true): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0 || (integer && !Number.isInteger(n))) throw new Error(`--${name} must be ${integer ? 'a non-negative integer' : 'a non-negative number'}, got ${v}`);
    return n;
  };
  if (!a.base) throw new Error('--base <checkpoint folder> is required (e.g. runs/align-tiny/final)');
  if (!a.out) throw new Error('--out <run folder> is required (e.g. runs/sft-tiny)');
  if (!TRACE_STYLES.includes(a.trace as TraceStyle)) throw new Error(`--trace must be one of ${TRACE_STYLES.join(', ')}, got ${a.trace}`);
  if (!DECISION_TOKENS.includes(a['decision-tokens'] as DecisionTokens)) throw new Error(`--decision-tokens must be one of ${DECISION_TOKENS.join(', ')}, got ${a['decision-tokens']}`);
  if (a['no-icm'] && a.icm) throw new Error('--icm and --no-icm contradict each other');
  const tasks = a.tasks === undefined ? undefined : parseTaskIds(a.tasks);
  const ctx = await init();
  console.log(`adapter: ${ctx.description}`);
  const quiet = a.quiet || !!process.env.CI;
  await runSftStage({
    base: a.base,
    icm: a.icm,
    noIcm: a['no-icm'],
    noInspect: a['no-inspect'],
    firstStage: a['first-stage'],
    out: a.out,
    dataDir: a.data,
    steps: num('steps', a.steps),
    batch: num('batch', a.batch),
    lr: num('lr', a.lr, false),
    K: num('K', a.K),
    kStart: a['k-start'] === undefined ? undefined : num('k-start', a['k-start']),
    easyShare: num('easy-share', a['easy-share'], false),
    tasks,
    decisionShare: a['decision-share'] === undefined ? undefined : num('decision-share', a['decision-share'], false),
    decisionTokens: a['decision-tokens'] as DecisionTokens,
    maxInspections: num('max-inspections', a['max-inspections']),
    traceStyle: a.trace as TraceStyle,
    saveEvery: num('save-every', a['save-every']),
    seed: num('seed', a.seed),
    printEvery: quiet ? 50 : 10,
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: Error) => {
    console.error(`sft-stage: ${e.message}`);
    process.exit(1);
  });
}
