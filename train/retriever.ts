// InfoNCE training of the first-stage retriever.
//
// A batch holds B (query, positive, optional hard negative) triples. Every input of the
// batch is embedded in one forward pass; with queries q [B, E] and candidates
// c = [positives; hard negatives] [B + N, E] (unit rows), the logits are q c^T / tau, and
// the loss is the cross-entropy of row i against column i (its positive): every other
// positive is an in-batch negative, every hard negative a negative for every query.
// When triples carry candidate ids, a column holding the same candidate as a row's
// positive is masked out of that row (a duplicate is not a negative).
//
// Temperature: fixed by default (tau = 0.05, as in E5-V/LamRA-style contrastive tuning);
// with learnTemperature it is learned as CLIP does, a log-scale parameter
// (logit scale = 1/tau, initialised from `temperature`, capped at 100), saved with the
// optimizer state.
//
// Data come from a TripleSource whose batch(step, size) is deterministic in `step`, so a
// resumed run sees the batches it would have seen. Checkpoints: outDir/step-NNNNNN/ holds
// the retriever checkpoint plus optimizer.safetensors and state.json; outDir/latest.json
// names the newest complete one (written last, atomically); older ones are pruned.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  AdamW,
  type Tensor,
  add,
  argmax,
  backward,
  clamp,
  clipGradNorm,
  cosineSchedule,
  crossEntropy,
  exp,
  fromArray,
  keep,
  loadSafetensors,
  matmul,
  mul,
  mulScalar,
  requireGrad,
  saveSafetensors,
  slice,
  tidy,
} from '../runtime/index.ts';
import { Rng } from '../runtime/random.ts';
import { CorpusIndex, type EmbedPoolOptions, type PoolItem, retrieve } from '../model/corpus-index.ts';
import { Retriever } from '../model/retriever.ts';
import type { QueryInput } from '../model/sequence.ts';
import { writeJsonAtomic } from './atomic-write.ts';
import { type ImageStore, candidateInput, queryInput } from './data/inputs.ts';
import type { MbeirCandidate, MbeirQuery } from './data/mbeir-types.ts';
import { type EmojiAttributes, KEYWORD_TEMPLATES, readSideTable } from './data/emoji-benchmark.ts';

/** One training example: a query, its positive, and optionally a hard negative. */
export interface Triple {
  query: QueryInput;
  positive: QueryInput;
  negative?: QueryInput;
  /** Candidate ids (optional): used to mask duplicates of a row's positive. */
  positiveId?: string;
  negativeId?: string;
}

/** Training data: the batch for a step, the same every time it is asked for. */
export interface TripleSource {
  batch(step: number, size: number): Triple[] | Promise<Triple[]>;
}

/**
 * Triples from a list, reshuffled every epoch (seeded); a batch never spans two epochs,
 * so no triple appears twice in one batch (the epoch's remainder is dropped).
 */
export function arrayTripleSource(triples: readonly Triple[], seed = 0): TripleSource {
  const perms = new Map<number, Int32Array>();
  const perm = (epoch: number): Int32Array => {
    let p = perms.get(epoch);
    if (!p) {
      const rng = new Rng(seed * 1000003 + epoch);
      p = Int32Array.from(triples.keys());
      for (let i = p.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [p[i], p[j]] = [p[j], p[i]];
      }
      if (perms.size > 4) perms.delete(perms.keys().next().value!);
      perms.set(epoch, p);
    }
    return p;
  };
  return {
    batch(step: number, size: number): Triple[] {
      if (size > triples.length) throw new RangeError(`arrayTripleSource: batch size ${size} is larger than the ${triples.length} triples`);
      const perEpoch = Math.floor(triples.length / size);
      const p = perm(Math.floor(step / perEpoch));
      const at = (step % perEpoch) * size;
      return Array.from(p.subarray(at, at + size), (i) => triples[i]);
    },
  };
}

/**
 * Batches drawn from one task at a time: step s takes the task at s mod T (tasks in
 * ascending id, those with fewer triples than a batch left out) and that task's own
 * seeded order (arrayTripleSource), so every task gets the same share of steps. Within a
 * batch the candidates are then all of one kind (all names for text -> text), and the
 * loss cannot be lowered by telling a text candidate from an image one: with mixed
 * batches most in-batch negatives of a text -> text query are images.
 * `weights` (task id -> a whole number of turns per cycle, 1 when absent) gives a task
 * more of the steps: { 1: 3 } makes the cycle 0 1 1 1 3 4 6 when all five are usable.
 */
export function taskBatchedTripleSource(triples: readonly Triple[], taskOf: readonly number[], seed = 0, weights: Readonly<Record<number, number>> = {}): TripleSource {
  if (taskOf.length !== triples.length) throw new RangeError(`taskBatchedTripleSource: ${triples.length} triples but ${taskOf.length} task ids`);
  for (const [t, w] of Object.entries(weights)) {
    if (!(Number.isInteger(w) && w >= 1)) throw new RangeError(`taskBatchedTripleSource: task ${t}'s weight must be a whole number of turns (1 or more), got ${w}`);
  }
  const byTask = new Map<number, Triple[]>();
  triples.forEach((t, i) => (byTask.get(taskOf[i]) ?? byTask.set(taskOf[i], []).get(taskOf[i])!).push(t));
  const tasks = [...byTask.keys()].sort((x, y) => x - y);
  const sources = new Map(tasks.map((t) => [t, arrayTripleSource(byTask.get(t)!, seed * 31 + t)]));
  return {
    batch(step: number, size: number) {
      const usable = tasks.filter((t) => byTask.get(t)!.length >= size);
      if (!usable.length) throw new RangeError(`taskBatchedTripleSource: no task has ${size} triples (sizes ${tasks.map((t) => `${t}: ${byTask.get(t)!.length}`).join(', ')})`);
      const cycle = usable.flatMap((t) => Array<number>(weights[t] ?? 1).fill(t));
      const at = step % cycle.length;
      const task = cycle[at];
      // The task's own batch index: its turns in the cycles before, then in this one.
      const turn = Math.floor(step / cycle.length) * (weights[task] ?? 1) + cycle.slice(0, at).filter((t) => t === task).length;
      return sources.get(task)!.batch(turn, size);
    },
  };
}

export interface RetrieverTrainOptions {
  steps: number;
  batchSize: number;
  /** Peak learning rate (default 1e-4). */
  lr?: number;
  warmup?: number;
  /** Cosine floor (default lr / 10). */
  minLr?: number;
  weightDecay?: number;
  /** Gradient norm clip (default 1). */
  clip?: number;
  /** Softmax temperature tau (default 0.05); its starting value when learned. */
  temperature?: number;
  learnTemperature?: boolean;
  /** A progress line every N steps (default 10); 0 for none. */
  logEvery?: number;
  log?: (line: string) => void;
  outDir?: string;
  /** Checkpoint every N steps (default 0: only at the end, when outDir is set). */
  checkpointEvery?: number;
  /** Continue from outDir/latest.json when there is one. */
  resume?: boolean;
  /** Checkpoints kept (default 2). */
  keep?: number;
  onStep?: (info: RetrieverStepInfo) => void;
}

export interface RetrieverStepInfo {
  step: number;
  loss: number;
  /** Share of queries whose positive scores highest among all candidates of the batch. */
  accuracy: number;
  temperature: number;
  lr: number;
  ms: number;
}

const LOGIT_SCALE = 'train.logit_scale';
const MAX_LOGIT_SCALE = 100;

interface TrainState {
  step: number;
  temperature: number;
  learnTemperature: boolean;
}

/** The newest complete checkpoint folder in outDir, if any. */
export function latestCheckpoint(outDir: string): { dir: string; step: number } | null {
  const path = join(outDir, 'latest.json');
  if (!existsSync(path)) return null;
  const { dir, step } = JSON.parse(readFileSync(path, 'utf8')) as { dir: string; step: number };
  return { dir: join(outDir, dir), step };
}

/**
 * Logits [B, C] of the queries against [positives; hard negatives] times `scale` (1/tau),
 * duplicates of a row's positive masked out, and the targets (row i -> column i).
 */
export function contrastiveLogits(retriever: Retriever, batch: readonly Triple[], scale: Tensor): { logits: Tensor; targets: Tensor } {
  if (retriever.imageExpert) throw new Error('contrastiveLogits: a retriever with a text -> image expert embeds queries and candidates differently; train the dense model, then attach the expert');
  const B = batch.length;
  const negs = batch.filter((t) => t.negative);
  const inputs = [...batch.map((t) => t.query), ...batch.map((t) => t.positive), ...negs.map((t) => t.negative!)];
  const all = retriever.embed(inputs);
  const q = slice(all, 0, 0, B);
  const c = slice(all, 0, B, inputs.length);
  let logits = mul(matmul(q, c, { transposeB: true }), scale);
  // A hybrid retriever's text-text scores mix in TF-IDF; every other pair's score is the
  // dense cosine times the pair's dense factors (LexicalSettings), undone here so that an
  // image batch or a text -> image batch trains at the temperature it would without it.
  const a = retriever.denseScales(inputs.map((x) => x.text ?? ''));
  if (a) {
    const r = new Float32Array(B * (inputs.length - B));
    for (let i = 0; i < B; i++) for (let j = B; j < inputs.length; j++) r[i * (inputs.length - B) + j - B] = a[i] < 1 && a[j] < 1 ? 1 : 1 / (a[i] * a[j]);
    logits = mul(logits, fromArray(r, [B, inputs.length - B]));
  }
  const colIds = [...batch.map((t) => t.positiveId), ...negs.map((t) => t.negativeId)];
  const C = colIds.length;
  const mask = new Float32Array(B * C);
  let masked = false;
  batch.forEach((t, i) => {
    if (t.positiveId === undefined) return;
    colIds.forEach((id, j) => {
      if (j !== i && id === t.positiveId) {
        mask[i * C + j] = -1e4;
        masked = true;
      }
    });
  });
  if (masked) logits = add(logits, fromArray(mask, [B, C]));
  return { logits, targets: fromArray(Int32Array.from(batch.keys()), [B], 'i32') };
}

/**
 * Trains a retriever with InfoNCE. `init` makes the starting model (called unless a
 * checkpoint is resumed). Returns the model and the steps run by this call.
 */
export async function trainRetriever(init: () => Retriever | Promise<Retriever>, source: TripleSource, o: RetrieverTrainOptions): Promise<{ retriever: Retriever; history: RetrieverStepInfo[]; startStep: number }> {
  const lr = o.lr ?? 1e-4;
  const tau0 = o.temperature ?? 0.05;
  const learnTau = !!o.learnTemperature;
  const logEvery = o.logEvery ?? 10;
  const log = o.log ?? ((line: string) => console.log(line));
  if (!(tau0 > 0)) throw new RangeError(`trainRetriever: temperature must be > 0, got ${tau0}`);
  if (!Number.isInteger(o.batchSize) || o.batchSize < 2) throw new RangeError(`trainRetriever: batchSize must be an integer >= 2 (in-batch negatives), got ${o.batchSize}`);

  const resumeFrom = o.resume && o.outDir ? latestCheckpoint(o.outDir) : null;
  let startStep = 0;
  let savedOpt: Record<string, Tensor> | null = null;
  let logScaleValue = Math.log(1 / tau0);
  if (resumeFrom) {
    const state = JSON.parse(readFileSync(join(resumeFrom.dir, 'state.json'), 'utf8')) as TrainState;
    if (state.learnTemperature !== learnTau) throw new Error(`trainRetriever: checkpoint ${resumeFrom.dir} was trained with learnTemperature ${state.learnTemperature}, this run asks for ${learnTau}`);
    savedOpt = (await loadSafetensors(join(resumeFrom.dir, 'optimizer.safetensors'), { dtype: 'f32' })).tensors;
    const saved = savedOpt[LOGIT_SCALE];
    if (saved) {
      logScaleValue = (await saved.toArray())[0];
      saved.dispose();
      delete savedOpt[LOGIT_SCALE];
    }
    startStep = state.step;
  }
  const retriever = resumeFrom ? await Retriever.load(resumeFrom.dir) : await init();
  const logScale = keep(requireGrad(fromArray([logScaleValue], [1]), learnTau));
  logScale.name = LOGIT_SCALE;
  // Sorted by name: the optimizer's state is positional too, and a loaded checkpoint's
  // parameter order need not match a fresh model's.
  const params = retriever.parameterList().sort((a, b) => (a.name! < b.name! ? -1 : a.name! > b.name! ? 1 : 0));
  const wd = o.weightDecay ?? 0.01;
  const groups = [
    { params: params.filter((p) => p.rank >= 2), weightDecay: wd },
    { params: [...params.filter((p) => p.rank < 2), ...(learnTau ? [logScale] : [])], weightDecay: 0 },
  ];
  const opt = new AdamW(groups, { lr, betas: [0.9, 0.98], weightDecay: wd });
  const schedule = cosineSchedule({ peakLr: lr, warmupSteps: o.warmup ?? 0, totalSteps: Math.max(o.steps, o.warmup ?? 0), minLr: o.minLr ?? lr / 10 });
  if (savedOpt) {
    try {
      await opt.loadStateDict(savedOpt);
    } finally {
      for (const t of Object.values(savedOpt)) t.dispose();
    }
    log(`retriever: resumed from ${resumeFrom!.dir} at step ${startStep}`);
  }

  const history: RetrieverStepInfo[] = [];
  let win = { loss: 0, acc: 0, n: 0, ms: 0 };
  const saveCheckpoint = async (step: number) => {
    if (!o.outDir) return;
    const name = `step-${String(step).padStart(6, '0')}`;
    const dir = join(o.outDir, name);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    await retriever.save(dir);
    const sd = opt.stateDict();
    try {
      await saveSafetensors(join(dir, 'optimizer.safetensors'), { ...sd, [LOGIT_SCALE]: logScale });
    } finally {
      for (const t of Object.values(sd)) t.dispose();
    }
    writeJsonAtomic(join(dir, 'state.json'), { step, temperature: tau0, learnTemperature: learnTau } satisfies TrainState);
    writeJsonAtomic(join(o.outDir, 'latest.json'), { dir: name, step });
    const keepN = o.keep ?? 2;
    const old = readdirSync(o.outDir).filter((d) => /^step-\d+$/.test(d) && d !== name).sort();
    for (const d of old.slice(0, Math.max(0, old.length - (keepN - 1)))) rmSync(join(o.outDir, d), { recursive: true, force: true });
  };

  try {
    for (let step = startStep; step < o.steps; step++) {
      const t0 = performance.now();
      const batch = await source.batch(step, o.batchSize);
      if (batch.length < 2) throw new RangeError(`trainRetriever: step ${step}: the source gave ${batch.length} triples (need >= 2)`);
      const stepLr = schedule(step);
      const { loss, pred, scale } = tidy(() => {
        const scale = learnTau ? exp(clamp(logScale, -Infinity, Math.log(MAX_LOGIT_SCALE))) : mulScalar(fromArray([1], [1]), 1 / tau0);
        const { logits, targets } = contrastiveLogits(retriever, batch, scale);
        const loss = crossEntropy(logits, targets);
        backward(loss);
        clipGradNorm(opt.params, o.clip ?? 1);
        opt.step({ lr: stepLr });
        opt.zeroGrad();
        return { loss, pred: argmax(logits, -1), scale };
      });
      const [lv, pv, sv] = await Promise.all([loss.toArray(), pred.toArray(), scale.toArray()]);
      loss.dispose();
      pred.dispose();
      scale.dispose();
      let correct = 0;
      for (let i = 0; i < batch.length; i++) if (pv[i] === i) correct++;
      const info: RetrieverStepInfo = { step: step + 1, loss: lv[0], accuracy: correct / batch.length, temperature: 1 / sv[0], lr: stepLr, ms: performance.now() - t0 };
      history.push(info);
      o.onStep?.(info);
      win = { loss: win.loss + info.loss, acc: win.acc + info.accuracy, n: win.n + 1, ms: win.ms + info.ms };
      if (logEvery > 0 && ((step + 1) % logEvery === 0 || step + 1 === o.steps)) {
        log(
          `retriever step ${step + 1}/${o.steps}  loss ${(win.loss / win.n).toFixed(4)}  in-batch acc ${(win.acc / win.n).toFixed(3)}  ` +
            `tau ${info.temperature.toFixed(4)}  lr ${stepLr.toExponential(2)}  ${(win.ms / win.n / 1000).toFixed(2)} s/step`,
        );
        win = { loss: 0, acc: 0, n: 0, ms: 0 };
      }
      if (o.checkpointEvery && (step + 1) % o.checkpointEvery === 0 && step + 1 < o.steps) await saveCheckpoint(step + 1);
    }
    if (o.outDir && (startStep < o.steps || !resumeFrom)) await saveCheckpoint(Math.max(o.steps, startStep));
  } finally {
    opt.dispose();
    logScale.dispose();
  }
  return { retriever, history, startStep };
}

/**
 * Ranks a pool for queries with a retriever: embeds the pool into a GPU index (progress
 * through onProgress), embeds the queries, returns the top-k ids per query id.
 */
export async function rankWithRetriever(
  model: Retriever,
  pool: readonly PoolItem[],
  queries: readonly { qid: string; input: QueryInput }[],
  k: number,
  opts: EmbedPoolOptions = {},
): Promise<Map<string, string[]>> {
  return rankGroupsWithRetriever(model, [{ pool, queries, k }], opts);
}

/** One ranking job of rankGroupsWithRetriever: queries that rank their own pool. */
export interface RankGroup {
  pool: readonly PoolItem[];
  queries: readonly { qid: string; input: QueryInput }[];
  /** Ids per query (capped at the pool's size). */
  k: number;
}

/**
 * Rankings of several groups (e.g. each task's queries over its local pool) with every
 * distinct candidate embedded once: our tasks 4 and 6 share one pool, which holds task 0's
 * too, so per-group embedding did 13280 candidates where 7593 are distinct. Each group
 * then searches an index of its own pool's rows. Progress counts distinct candidates.
 */
export async function rankGroupsWithRetriever(model: Retriever, groups: readonly RankGroup[], opts: EmbedPoolOptions = {}): Promise<Map<string, string[]>> {
  const distinct = new Map<string, PoolItem>();
  for (const g of groups) for (const item of g.pool) if (!distinct.has(item.id)) distinct.set(item.id, item);
  const all = await CorpusIndex.build(model, [...distinct.values()], opts);
  const out = new Map<string, string[]>();
  try {
    // A group whose pool is every distinct candidate searches the full index itself (one
    // group, as in rankWithRetriever, needs no readback); the others get an index of their rows.
    const whole = (g: RankGroup) => g.pool.length === all.size && new Set(g.pool.map((c) => c.id)).size === all.size;
    const rows = groups.every(whole) ? null : await all.embeddings();
    const rowOf = new Map(all.ids.map((id, i) => [id, i]));
    const dim = all.dim;
    for (const g of groups) {
      const index = whole(g) ? all : subsetIndex(g.pool, rows!, rowOf, dim);
      try {
        const r = await retrieve(model, index, g.queries.map((q) => q.input), Math.min(g.k, g.pool.length), { batchSize: opts.batchSize });
        g.queries.forEach((q, i) => out.set(q.qid, r.ids[i]));
      } finally {
        if (index !== all) index.dispose();
      }
    }
  } finally {
    all.dispose();
  }
  return out;
}

/** An index of a pool's rows copied from embeddings already on the host (already normalised). */
function subsetIndex(pool: readonly PoolItem[], rows: Float32Array, rowOf: ReadonlyMap<string, number>, dim: number): CorpusIndex {
  const data = new Float32Array(pool.length * dim);
  pool.forEach((item, j) => {
    const r = rowOf.get(item.id)!;
    data.set(rows.subarray(r * dim, (r + 1) * dim), j * dim);
  });
  const index = new CorpusIndex(dim);
  const emb = fromArray(data, [pool.length, dim]);
  try {
    index.add(pool.map((item) => item.id), emb, true);
  } catch (e) {
    index.dispose();
    throw e;
  } finally {
    emb.dispose();
  }
  return index;
}

/** What a keyword pair needs of a candidate: its id, keywords and subcategory (attributes.jsonl). */
export interface KeywordPairName {
  did: string;
  keywords: readonly string[];
  subcategory: string;
}

/**
 * The training names of a benchmark folder's attributes.jsonl, for withKeywordPairs; `keep`
 * (on the tone-free base code) leaves out the emojis of a held-out fold (train/cross-fit.ts).
 */
export async function keywordPairNames(dataDir: string, keep: (base: string) => boolean = () => true): Promise<KeywordPairName[]> {
  const file = join(dataDir, 'attributes.jsonl');
  if (!existsSync(file)) throw new Error(`keyword pairs need the names' keywords in ${file}, which this benchmark lacks: set the keyword share to 0`);
  return [...(await readSideTable<EmojiAttributes>(file, 'did')).values()].filter((x) => x.kind === 'name' && x.split === 'train' && keep(x.base));
}

/**
 * Mixes keyword pairs into a source: `share` of each batch is fresh text -> text triples,
 * 1 to 3 of a training name's keywords (any of them, those that repeat a word of the name
 * included) in a task-1 phrasing -> that name, with a name of the same subcategory as the
 * hard negative. The benchmark's task-1 queries avoid every keyword that shares a word
 * with the name, so on them alone a model can learn each name by heart; keyword pairs,
 * new every step, reward matching the words a query and a name share. A step's batch is
 * the same every time it is asked for (seeded by the step), as a resumed run needs.
 */
export function withKeywordPairs(source: TripleSource, names: readonly KeywordPairName[], byDid: ReadonlyMap<string, MbeirCandidate>, images: ImageStore, share: number, seed = 0): TripleSource {
  if (!(share > 0 && share < 1)) throw new RangeError(`withKeywordPairs: share must be between 0 and 1 (exclusive), got ${share}`);
  const usable = names.filter((n) => n.keywords.length && byDid.has(n.did));
  if (usable.length < 2) throw new RangeError(`withKeywordPairs: ${usable.length} names with keywords in the pool (need at least 2)`);
  const bySub = new Map<string, KeywordPairName[]>();
  for (const n of usable) (bySub.get(n.subcategory) ?? bySub.set(n.subcategory, []).get(n.subcategory)!).push(n);
  const input = (did: string) => candidateInput(byDid.get(did)!, images);
  return {
    async batch(step: number, size: number): Promise<Triple[]> {
      const all = await source.batch(step, size);
      const kept = size - Math.round(size * share);
      const out = all.slice(0, kept);
      // A name is not drawn twice, nor when the source's part of the batch has it already.
      const taken = new Set(out.map((t) => t.positiveId));
      let left = usable.filter((n) => !taken.has(n.did)).length;
      const rng = new Rng(seed * 1000003 + step * 7919 + 17);
      while (out.length < size && left > 0) {
        const n = usable[rng.int(usable.length)];
        if (taken.has(n.did)) continue;
        taken.add(n.did);
        left--;
        const kws = [...n.keywords];
        for (let i = kws.length - 1; i > 0; i--) {
          const j = rng.int(i + 1);
          [kws[i], kws[j]] = [kws[j], kws[i]];
        }
        const phrase = KEYWORD_TEMPLATES[rng.int(KEYWORD_TEMPLATES.length)](kws.slice(0, 1 + rng.int(3)));
        const siblings = bySub.get(n.subcategory)!.filter((x) => x.did !== n.did);
        const neg = siblings.length ? siblings[rng.int(siblings.length)] : undefined;
        out.push({ query: { text: phrase }, positive: input(n.did), positiveId: n.did, ...(neg ? { negative: input(neg.did), negativeId: neg.did } : {}) });
      }
      // Too few names left to draw: the source's own triples fill the batch.
      out.push(...all.slice(kept, kept + size - out.length));
      return out;
    },
  };
}

export type RetrieverBatching = 'mixed' | 'task';
export const RETRIEVER_BATCHINGS: readonly RetrieverBatching[] = ['mixed', 'task'];

/** Task weights written as `<task>:<turns>,...` (e.g. "1:3"); "" for none. `what` names the flag or field in errors. */
export function parseTaskWeights(text: string, what: string): Record<number, number> {
  const out: Record<number, number> = {};
  for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const m = /^(\d+):(\d+)$/.exec(part);
    if (!m || Number(m[2]) < 1) throw new Error(`${what}: '${part}' is not <task id>:<turns>, turns a whole number of 1 or more (e.g. 1:3)`);
    if (Number(m[1]) in out) throw new Error(`${what}: task ${m[1]} is given twice`);
    out[Number(m[1])] = Number(m[2]);
  }
  return out;
}

/** The benchmark's training triples as a source: mixed batches, or one task per batch. */
export function benchmarkTripleSource(queries: readonly MbeirQuery[], byDid: ReadonlyMap<string, MbeirCandidate>, images: ImageStore, seed: number, batching: RetrieverBatching, taskWeights: Readonly<Record<number, number>> = {}): TripleSource {
  const triples = benchmarkTriples(queries, byDid, images, seed);
  if (batching === 'task') return taskBatchedTripleSource(triples, queries.map((q) => q.task_id), seed, taskWeights);
  if (Object.keys(taskWeights).length) throw new RangeError(`task weights need one task per batch (batching 'task'), not '${batching}'`);
  if (batching === 'mixed') return arrayTripleSource(triples, seed);
  throw new RangeError(`retriever batching '${batching}' is not one of ${RETRIEVER_BATCHINGS.join(', ')}`);
}

/**
 * Training triples from benchmark queries: each query with one of its positives (seeded
 * draw) and, when it has hard negatives, one of them.
 */
export function benchmarkTriples(queries: readonly MbeirQuery[], byDid: ReadonlyMap<string, MbeirCandidate>, images: ImageStore, seed: number): Triple[] {
  const rng = new Rng(seed + 7);
  return queries.map((q) => {
    const pos = byDid.get(q.pos_cand_list[rng.int(q.pos_cand_list.length)]);
    if (!pos) throw new Error(`query ${q.qid}: positive ${q.pos_cand_list.join(', ')} is not in the pool`);
    const negId = q.neg_cand_list.length ? q.neg_cand_list[rng.int(q.neg_cand_list.length)] : null;
    const neg = negId ? byDid.get(negId) : undefined;
    return {
      query: queryInput(q, images),
      positive: candidateInput(pos, images),
      positiveId: pos.did,
      negative: neg ? candidateInput(neg, images) : undefined,
      negativeId: neg?.did,
    };
  });
}
