// ICM self-alignment (PAPER.md, training stage 1): the language model and the vision
// encoder stay frozen; only the Information Compression Module learns, so that the model
// reading a candidate's 2 compressed rows says what it says reading the candidate's full
// tokens.
//
// Distillation on the same prompts: the teacher is the frozen model over the FULL prompt,
// the student the same model with every candidate replaced by its ICM rows. Both read a
// teacher-forced continuation after the prompt. The loss is KL(teacher || student) of the
// next-token distributions at every position after the first candidate that is not a
// candidate's content (the text between candidates, the rest of the prompt and the
// continuation: those positions exist in both sequences, in the same order), plus
// optionally the student's cross-entropy on the continuation tokens.
//
// Prompts, from the train split of the emoji benchmark:
// - describe: "Query: <q> Candidate: <c> Describe the candidate ..." -> "The candidate
//   shows <name>. It is (not) what the query asks for." (true to the data)
// - rerank: the reranker's prompt over K candidates (positive, hard negatives, random
//   same-task train candidates) -> "The best match is candidate <i>."
//
// Frozen means requiresGrad = false on every model parameter for the stage (restored at
// the end): the ops then record a graph only downstream of the ICM rows, no weight
// gradient of the LLM is computed, and none accumulates.
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import {
  type Tensor,
  AdamW,
  add,
  cosineSchedule,
  crossEntropy,
  exp,
  fromArray,
  getEngine,
  indexSelect,
  init,
  keep,
  logSoftmax,
  mul,
  mulScalar,
  noGrad,
  reshape,
  sub,
  sum,
} from '../runtime/index.ts';
import { Rng } from '../runtime/random.ts';
import { Icm, compressHook, icmConfigFor } from '../model/icm.ts';
import { Mllm } from '../model/mllm.ts';
import { type CandidateInput, type Part, type QueryInput, type SequenceLayout, contentParts, rerankParts } from '../model/sequence.ts';
import { SPECIAL } from '../model/tokenizer.ts';
import { type EmojiAttributes, loadBenchmark, readSideTable } from './data/emoji-benchmark.ts';
import { ImageStore, candidateInput, queryInput } from './data/inputs.ts';
import type { MbeirCandidate, MbeirQuery } from './data/mbeir-types.ts';
import { loadOptimizerState, saveRunState, savedStep, trainStep } from './run-state.ts';

/** One distillation prompt. */
export interface AlignExample {
  kind: 'describe' | 'rerank';
  query: QueryInput;
  /** One candidate for 'describe', K for 'rerank'. */
  candidates: CandidateInput[];
  /** The teacher-forced assistant text. */
  continuation: string;
}

export const DESCRIBE_INSTRUCTION = 'Describe the candidate and say whether it is what the query asks for.';

type Compress = (c: CandidateInput, i: number) => Tensor | null;
type Marks = { at: number; label: string; until: number }[];

/** The prompt of an example (candidates full, or through `compress`), continuation marked "continuation". */
export function alignParts(ex: AlignExample, compress?: Compress): { parts: Part[]; marks: Marks } {
  let parts: Part[];
  let marks: Marks;
  if (ex.kind === 'rerank') {
    ({ parts, marks } = rerankParts(ex.query, ex.candidates, { compress }));
  } else {
    if (ex.candidates.length !== 1) throw new RangeError(`align: a describe example has one candidate, got ${ex.candidates.length}`);
    parts = [{ text: `${SPECIAL.imStart}user\nQuery: ` }];
    marks = [];
    const q = contentParts(ex.query);
    marks.push({ at: parts.length, label: 'query', until: parts.length + q.length });
    parts.push(...q, { text: `\nCandidate: ${SPECIAL.candStart}0 ` });
    const rows = compress?.(ex.candidates[0], 0) ?? null;
    const body: Part[] = rows ? [{ embeds: rows, label: 'cand:0' }] : contentParts(ex.candidates[0]);
    marks.push({ at: parts.length, label: 'cand:0', until: parts.length + body.length });
    parts.push(...body, { text: `${SPECIAL.candEnd}\n${DESCRIBE_INSTRUCTION}${SPECIAL.imEnd}\n${SPECIAL.imStart}assistant\n` });
  }
  marks.push({ at: parts.length, label: 'continuation', until: parts.length + 1 });
  parts.push({ text: ex.continuation + SPECIAL.imEnd });
  return { parts, marks };
}

/**
 * The compared positions of a layout, in order: every position at or after the end of
 * the first candidate that lies in no candidate's content.
 */
export function comparedPositions(l: SequenceLayout): number[] {
  const cands = l.spans.filter((s) => s.label.startsWith('cand:'));
  if (!cands.length) throw new Error('align: the prompt has no candidate span');
  const from = Math.min(...cands.map((s) => s.end));
  const out: number[] = [];
  for (let p = from; p < l.length; p++) if (!cands.some((s) => p >= s.start && p < s.end)) out.push(p);
  return out;
}

/** Sets requiresGrad on every parameter of the model; returns a function restoring the old flags. */
export function freeze(model: Mllm): () => void {
  const before = model.parameterList().map((t) => [t, t.requiresGrad] as const);
  for (const [t] of before) {
    t.requiresGrad = false;
    t.grad?.dispose();
    t.grad = null;
  }
  return () => {
    for (const [t, on] of before) t.requiresGrad = on;
  };
}

export interface AlignLoss {
  /** kl + ceWeight * ce (scalar, differentiable in the ICM). */
  loss: Tensor;
  kl: Tensor;
  ce: Tensor | null;
  /** Prompt + continuation tokens, teacher (full) and student (compressed). */
  fullTokens: number;
  compressedTokens: number;
}

/** Final hidden states [B, T, D] of right-padded layouts (Mllm.forward without the head). */
function hidden(model: Mllm, layouts: SequenceLayout[]): { h: Tensor; T: number } {
  const batch = model.batch(layouts);
  return { h: model.llm.forwardEmbeds(batch.embeds, batch.positions), T: batch.embeds.shape[1] };
}

/**
 * The distillation loss of a batch of examples. The model must be frozen (see freeze):
 * the teacher runs without a graph, the student's graph starts at the ICM.
 */
export function alignLoss(model: Mllm, icm: Icm, examples: readonly AlignExample[], opts: { ceWeight?: number } = {}): AlignLoss {
  const B = examples.length;
  const ceWeight = opts.ceWeight ?? 0;
  const teacherLayouts = examples.map((ex) => {
    const { parts, marks } = alignParts(ex);
    return model.layout(parts, marks);
  });
  // The student: every candidate of the batch through the ICM in one pass.
  const rows = icm.compressGroups(model, examples.map((ex) => ({ query: ex.query, candidates: ex.candidates })));
  const studentLayouts = examples.map((ex, b) => {
    const { parts, marks } = alignParts(ex, compressHook(rows[b]));
    return model.layout(parts, marks);
  });
  const teacher = noGrad(() => hidden(model, teacherLayouts));
  const student = hidden(model, studentLayouts);
  const idxT: number[] = [];
  const idxS: number[] = [];
  const targets: number[] = [];
  for (let b = 0; b < B; b++) {
    const pt = comparedPositions(teacherLayouts[b]);
    const ps = comparedPositions(studentLayouts[b]);
    const ls = studentLayouts[b];
    if (pt.length !== ps.length) throw new Error(`align: example ${b} compares ${pt.length} teacher positions with ${ps.length} student positions`);
    const cont = ls.spans.find((s) => s.label === 'continuation')!;
    pt.forEach((p, i) => {
      idxT.push(b * teacher.T + p);
      idxS.push(b * student.T + ps[i]);
      const next = ps[i] + 1;
      targets.push(next >= cont.start && next < cont.end ? ls.ids[next] : -100);
    });
  }
  const N = idxT.length;
  // The head runs on the compared rows only (the full [B, T, V] logits are never formed).
  const D = model.config.llm.hidden;
  const logP = noGrad(() => logSoftmax(model.llm.head(indexSelect(reshape(teacher.h, [B * teacher.T, D]), 0, idxT))));
  const studentRows = model.llm.head(indexSelect(reshape(student.h, [B * student.T, D]), 0, idxS));
  const logQ = logSoftmax(studentRows);
  // KL(p || q) = sum_v p (log p - log q), averaged over the compared positions.
  const kl = mulScalar(sum(mul(noGrad(() => exp(logP)), sub(logP, logQ))), 1 / N);
  let ce: Tensor | null = null;
  let loss = kl;
  if (ceWeight > 0) {
    ce = crossEntropy(studentRows, fromArray(Int32Array.from(targets), [N], 'i32'));
    loss = add(kl, mulScalar(ce, ceWeight));
  }
  return {
    loss,
    kl,
    ce,
    fullTokens: teacherLayouts.reduce((a, l) => a + l.length, 0),
    compressedTokens: studentLayouts.reduce((a, l) => a + l.length, 0),
  };
}

// ---------------------------------------------------------------- data

/** What the example sampler reads: train queries, the pool, true attributes, images. */
export interface AlignData {
  queries: MbeirQuery[];
  byDid: Map<string, MbeirCandidate>;
  attributes: Map<string, EmojiAttributes>;
  /** Train-split candidate dids of each task's local pool. */
  taskPool: Map<number, string[]>;
  images: ImageStore;
}

export function alignData(
  bench: { queries: { train: MbeirQuery[] }; pool: MbeirCandidate[]; taskPools: Map<number, string[]> },
  attributes: Map<string, EmojiAttributes>,
  images: ImageStore,
): AlignData {
  const byDid = new Map(bench.pool.map((c) => [c.did, c]));
  const isTrain = (did: string) => attributes.get(did)?.split === 'train';
  const taskPool = new Map<number, string[]>();
  const queries = bench.queries.train.filter((q) => q.pos_cand_list.some((d) => byDid.has(d)));
  for (const t of new Set(queries.map((q) => q.task_id))) {
    const dids = (bench.taskPools.get(t) ?? bench.pool.map((c) => c.did)).filter(isTrain);
    taskPool.set(t, dids);
  }
  if (!queries.length) throw new Error('align: the benchmark has no usable train queries');
  return { queries, byDid, attributes, taskPool, images };
}

function shuffle<T>(xs: T[], rng: Rng): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
}

/** Up to n distinct dids, hard negatives first, then random same-task train candidates; never a positive. */
function negatives(d: AlignData, q: MbeirQuery, n: number, rng: Rng): string[] {
  const pos = new Set(q.pos_cand_list);
  const out: string[] = [];
  const seen = new Set<string>();
  const take = (did: string) => {
    if (out.length < n && !pos.has(did) && !seen.has(did) && d.byDid.has(did)) {
      seen.add(did);
      out.push(did);
    }
  };
  for (const did of shuffle([...q.neg_cand_list], rng)) take(did);
  const pool = d.taskPool.get(q.task_id) ?? [];
  for (let tries = 0; out.length < n && tries < 20 * n && pool.length; tries++) take(pool[rng.int(pool.length)]);
  return out;
}

/** A true one-phrase description of a candidate: its emoji's name (its text when no attributes). */
function nameOf(d: AlignData, did: string): string {
  const a = d.attributes.get(did);
  if (a) return a.name;
  const c = d.byDid.get(did);
  return c?.txt ?? 'an image';
}

/** One example: a describe prompt with probability 1 - rerankShare, else a rerank prompt over k candidates. */
export function sampleAlignExample(d: AlignData, rng: Rng, opts: { k: number; rerankShare: number }): AlignExample {
  const q = d.queries[rng.int(d.queries.length)];
  const query = queryInput(q, d.images);
  const positives = q.pos_cand_list.filter((x) => d.byDid.has(x));
  const pos = positives[rng.int(positives.length)];
  const input = (did: string) => candidateInput(d.byDid.get(did)!, d.images);
  if (rng.next() < opts.rerankShare) {
    const dids = shuffle([pos, ...negatives(d, q, Math.max(0, opts.k - 1), rng)], rng);
    return { kind: 'rerank', query, candidates: dids.map(input), continuation: `The best match is candidate ${dids.indexOf(pos)}.` };
  }
  const neg = rng.next() < 0.5 ? negatives(d, q, 1, rng)[0] : undefined;
  const did = neg ?? pos;
  const verdict = neg ? 'It is not what the query asks for.' : 'It is what the query asks for.';
  return { kind: 'describe', query, candidates: [input(did)], continuation: `The candidate shows ${nameOf(d, did)}. ${verdict}` };
}

// ---------------------------------------------------------------- the stage

export interface AlignStep {
  step: number;
  steps: number;
  loss: number;
  kl: number;
  ce: number | null;
  lr: number;
  ms: number;
  fullTokens: number;
  compressedTokens: number;
}

export interface AlignOptions {
  /** The frozen base model: a checkpoint folder (pre-training's final) or a loaded model. */
  base: string | Mllm;
  runDir: string;
  steps: number;
  batch: number;
  lr: number;
  seed: number;
  saveEvery: number;
  /** The emoji benchmark folder (examples from its train split); or give `examples`. */
  dataDir?: string;
  /** Custom examples for a step (tests, other data); called with the step's own Rng. */
  examples?: (step: number, rng: Rng, batch: number) => AlignExample[];
  /** Candidates per rerank prompt (default 8). */
  k?: number;
  /** Share of rerank prompts (default 0.5); the rest are describe prompts. */
  rerankShare?: number;
  /** Weight of the student's continuation cross-entropy (default 0: KL only). */
  ceWeight?: number;
  /** Attention heads of the ICM (default: the LLM's). */
  heads?: number;
  /** The new ICM centres its rows over each list (IcmConfig.centre; default off). */
  centre?: boolean;
  /** Global gradient-norm clip (default 1). */
  clip?: number;
  onStep?: (s: AlignStep) => void;
  log?: (line: string) => void;
}

/**
 * Runs (or resumes) self-alignment. Checkpoints (ICM + optimizer + step) go to
 * runDir/checkpoint every saveEvery steps; the end result to runDir/final: the base model
 * and the ICM in one folder (Mllm.load + Icm.load), which later stages start from. Each
 * step appends {stage: 'align', step, loss, kl, ce, ...} to runDir/log.jsonl.
 */
export async function alignIcm(o: AlignOptions): Promise<{ model: Mllm; icm: Icm }> {
  const log = o.log ?? console.log;
  const k = o.k ?? 8;
  const rerankShare = o.rerankShare ?? 0.5;
  if (!o.examples && !o.dataDir) throw new Error('alignIcm: give dataDir (the emoji benchmark) or an examples source');
  const model = typeof o.base === 'string' ? await Mllm.load(o.base) : o.base;
  let examples = o.examples;
  if (!examples) {
    const bench = await loadBenchmark(o.dataDir!);
    const attributes = await readSideTable<EmojiAttributes>(join(o.dataDir!, 'attributes.jsonl'), 'did');
    const v = model.config.vision;
    const images = new ImageStore({ root: bench.imageRoot, patchSize: v.patchSize, mergeSize: v.mergeSize, size: model.config.imageSize });
    const data = alignData(bench, attributes, images);
    log(`align: ${data.queries.length} train queries, K = ${k}, rerank share ${rerankShare}`);
    examples = (_step, rng, n) => Array.from({ length: n }, () => sampleAlignExample(data, rng, { k, rerankShare }));
  }

  const ckptDir = join(o.runDir, 'checkpoint');
  mkdirSync(o.runDir, { recursive: true });
  const resumeStep = savedStep(ckptDir);
  const start = resumeStep ?? 0;
  const icm = resumeStep !== null ? (await Icm.load(ckptDir))! : Icm.create({ ...icmConfigFor(model.config, o.heads), ...(o.centre ? { centre: true } : {}) }, o.seed);
  if (resumeStep !== null) log(`align: resuming from ${ckptDir} at step ${start}`);
  const restore = freeze(model);
  const params = icm.parameterList();
  const opt = new AdamW(params, { lr: o.lr, weightDecay: 0, betas: [0.9, 0.95] });
  try {
    if (resumeStep !== null) await loadOptimizerState(ckptDir, opt);
    const schedule = cosineSchedule({ peakLr: o.lr, warmupSteps: Math.min(20, Math.floor(o.steps / 10)), totalSteps: o.steps, minLr: o.lr / 10 });
    const saveCkpt = async (step: number) => {
      await icm.save(ckptDir);
      await saveRunState(ckptDir, opt, step);
    };
    const logPath = join(o.runDir, 'log.jsonl');
    for (let step = start; step < o.steps; step++) {
      const t0 = performance.now();
      const rng = new Rng(o.seed * 1_000_003 + step); // batches depend only on the step: resume is exact
      const batch = examples(step, rng, o.batch);
      const lr = schedule(step);
      let tokens = { full: 0, compressed: 0 };
      let parts: Tensor[] = []; // kl and ce when both are on, kept past the step's scope
      const loss = trainStep(params, opt, lr, o.clip ?? 1, () => {
        const r = alignLoss(model, icm, batch, { ceWeight: o.ceWeight });
        tokens = { full: r.fullTokens, compressed: r.compressedTokens };
        if (r.ce) parts = [keep(r.kl), keep(r.ce)];
        return r.loss;
      });
      const v = await loss.item();
      const [kl, ce] = parts.length ? [await parts[0].item(), await parts[1].item()] : [v, null];
      loss.dispose();
      for (const t of parts) t.dispose();
      if (!Number.isFinite(v)) throw new Error(`align: loss is ${v} at step ${step}; stopping (the last checkpoint is in ${ckptDir})`);
      const ms = performance.now() - t0;
      const rec: AlignStep = { step, steps: o.steps, loss: v, kl, ce, lr, ms, fullTokens: tokens.full, compressedTokens: tokens.compressed };
      appendFileSync(
        logPath,
        JSON.stringify({ stage: 'align', step, loss: v, kl, ce, lr, ms, full_tokens: tokens.full, compressed_tokens: tokens.compressed }) + '\n',
      );
      o.onStep?.(rec);
      if ((step + 1) % o.saveEvery === 0 && step + 1 < o.steps) await saveCkpt(step + 1);
    }
    await getEngine().sync();
    const finalDir = join(o.runDir, 'final');
    await model.save(finalDir);
    await icm.save(finalDir);
    rmSync(ckptDir, { recursive: true, force: true });
  } catch (e) {
    // What this call created goes; a model the caller passed in stays the caller's.
    icm.dispose();
    if (typeof o.base === 'string') for (const t of model.parameterList()) t.dispose();
    throw e;
  } finally {
    opt.dispose();
    restore();
  }
  return { model, icm };
}

// ---------------------------------------------------------------- command line
//
//   npx tsx train/align.ts --base runs/first-stage-tiny/pretrain/final [--data data/emoji-mbeir]
//     [--run runs/align-tiny] [--steps 300] [--batch 8] [--lr 1e-3] [--k 8] [--rerank-share 0.5]
//     [--ce 0] [--centre] [--save-every 50] [--seed 1] [--quiet]

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      base: { type: 'string' },
      data: { type: 'string', default: 'data/emoji-mbeir' },
      run: { type: 'string' },
      steps: { type: 'string', default: '300' },
      batch: { type: 'string', default: '8' },
      lr: { type: 'string', default: '1e-3' },
      k: { type: 'string', default: '8' },
      'rerank-share': { type: 'string', default: '0.5' },
      ce: { type: 'string', default: '0' },
      centre: { type: 'boolean', default: false },
      'save-every': { type: 'string', default: '50' },
      seed: { type: 'string', default: '1' },
      quiet: { type: 'boolean', default: false },
    },
  });
  const num = (name: string, v: string | undefined, min: number, integer = true): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) throw new Error(`--${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}, got ${v}`);
    return n;
  };
  if (!a.base) throw new Error('--base <checkpoint folder> is required (e.g. runs/first-stage-tiny/pretrain/final)');
  if (!existsSync(join(a.base, 'config.json'))) throw new Error(`--base ${a.base}: no config.json there`);
  const preset = (JSON.parse(readFileSync(join(a.base, 'config.json'), 'utf8')) as { preset?: string }).preset ?? 'model';
  const quiet = a.quiet || !!process.env.CI;
  const tty = !quiet && process.stdout.isTTY;
  const say = (line: string) => {
    if (tty) process.stdout.write('\n');
    console.log(line);
  };
  const ctx = await init();
  say(`adapter: ${ctx.description}`);
  const steps = num('steps', a.steps, 1);
  const runDir = a.run ?? `runs/align-${preset}`;
  const t0 = performance.now();
  await alignIcm({
    base: a.base,
    dataDir: a.data,
    runDir,
    steps,
    batch: num('batch', a.batch, 1),
    lr: num('lr', a.lr, 0, false),
    k: num('k', a.k, 1),
    centre: a.centre,
    rerankShare: num('rerank-share', a['rerank-share'], 0, false),
    ceWeight: num('ce', a.ce, 0, false),
    saveEvery: num('save-every', a['save-every'], 1),
    seed: num('seed', a.seed, 0),
    log: say,
    onStep: (s) => {
      const line = `align ${s.step + 1}/${s.steps}  kl ${s.kl.toFixed(4)}${s.ce === null ? '' : `  ce ${s.ce.toFixed(3)}`}  lr ${s.lr.toExponential(1)}  tokens ${s.fullTokens} -> ${s.compressedTokens}  ${s.ms.toFixed(0)} ms`;
      if (tty) process.stdout.write(`\r${line}    `);
      else if (s.step % 50 === 0 || s.step + 1 === s.steps) console.log(line);
    },
  });
  say(`align done in ${((performance.now() - t0) / 1000).toFixed(0)} s -> ${join(runDir, 'final')} (log: ${join(runDir, 'log.jsonl')})`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
