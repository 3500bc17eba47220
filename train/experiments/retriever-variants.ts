// Experiment: first-stage retriever variants (pooling, batching) trained from the same base
// checkpoint with the same budget and seed, evaluated on the VALIDATION split (never the
// test split, so the choice it informs is not tuned on test queries).
//
//   npx tsx train/experiments/retriever-variants.ts --base <pretrain final> [--steps 200]
//     [--batch 32] [--lr 1e-3] [--variants mean/mixed,bag-max/mixed/512] [--out runs/retriever-variants]
//     [--train-tasks 0,1,3,4,6] [--eval-tasks 0,1,3,4,6] [--keyword-share 0] [--holdout-fold i/F]
//     [--trigrams <dim> [--trigram-buckets 8192]] [--task-weights 1:3] [--lexical-weight 0.6]
//
// A variant is <pooling>/<batching>[/<embedding width, default 64>] (model/retriever.ts
// Pooling; train/retriever.ts RetrieverBatching). Each trains into
// <out>/<pooling>-<batching>[-<width>]-<steps>x<batch>/ (resumable) and writes its
// validation recall table there. --train-tasks keeps only those tasks' training queries;
// --eval-tasks those tasks' validation queries. --keyword-share gives that share of each
// batch to keyword pairs of the training names (train/retriever.ts withKeywordPairs).
// --holdout-fold i/F leaves out fold i's training queries and keyword names (train/cross-fit.ts),
// for a retriever that ranks fold i as it would rank unseen queries; its folder gets -fold<i>of<F>.
// --trigrams adds a letter-trigram part of that width (model/trigrams.ts); the folder gets -tri<dim>.
// --task-weights <task>:<turns>,... gives those tasks more turns of one-task batches (taskBatchedTripleSource); the folder gets -w<task>x<turns>.
// --lexical-weight trains with the lexical part attached (model/retriever.ts LexicalSettings; TF-IDF of the pool's texts),
// so text-text pairs train on the hybrid score; the folder gets -lex<weight>.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { init } from '../../runtime/index.ts';
import { Mllm } from '../../model/mllm.ts';
import { POOLINGS, type Pooling, Retriever } from '../../model/retriever.ts';
import { TfIdf } from '../../model/lexical.ts';
import { loadBenchmark } from '../data/emoji-benchmark.ts';
import { ImageStore } from '../data/inputs.ts';
import { parseTaskIds } from '../data/mbeir.ts';
import { evaluateFirstStage } from '../eval/first-stage-eval.ts';
import { formatRecallTable } from '../eval/recall.ts';
import { RETRIEVER_BATCHINGS, type RetrieverBatching, benchmarkTripleSource, parseTaskWeights, keywordPairNames, trainRetriever, withKeywordPairs } from '../retriever.ts';
import { foldOfBase, foldOfQuery, parseFold, queryFolds } from '../cross-fit.ts';
import { positiveFlags } from './flags.ts';

const { values: a } = parseArgs({
  options: {
    base: { type: 'string' },
    steps: { type: 'string', default: '200' },
    batch: { type: 'string', default: '32' },
    lr: { type: 'string', default: '1e-3' },
    variants: { type: 'string', default: 'mean/mixed,mean/task' },
    data: { type: 'string', default: 'data/emoji-mbeir' },
    out: { type: 'string', default: 'runs/retriever-variants' },
    'train-tasks': { type: 'string', default: '0,1,3,4,6' },
    'eval-tasks': { type: 'string', default: '0,1,3,4,6' },
    'keyword-share': { type: 'string', default: '0' },
    'holdout-fold': { type: 'string' },
    trigrams: { type: 'string' },
    'trigram-buckets': { type: 'string', default: '8192' },
    'task-weights': { type: 'string', default: '' },
    'lexical-weight': { type: 'string', default: '0' },
  },
});
if (!a.base) throw new Error('--base <pre-trained checkpoint folder> is required');
const { steps, batch, lr } = positiveFlags(a, ['steps', 'batch', 'lr']);
const variants = a.variants!.split(',').map((v) => {
  const [pooling, batching, width, ...rest] = v.split('/');
  const embedDim = width === undefined ? 64 : Number(width);
  if (!POOLINGS.includes(pooling as Pooling) || !RETRIEVER_BATCHINGS.includes(batching as RetrieverBatching) || !(Number.isInteger(embedDim) && embedDim > 0) || rest.length) {
    throw new Error(`--variants: '${v}' is not <${POOLINGS.join('|')}>/<${RETRIEVER_BATCHINGS.join('|')}>[/<width>]`);
  }
  return { pooling: pooling as Pooling, batching: batching as RetrieverBatching, embedDim, name: `${pooling}-${batching}${width === undefined ? '' : `-${embedDim}`}` };
});
const taskList = (flag: 'train-tasks' | 'eval-tasks') => new Set(parseTaskIds(a[flag]!, `--${flag}`));
const keywordShare = Number(a['keyword-share']);
if (!(keywordShare >= 0 && keywordShare < 1)) throw new Error(`--keyword-share must be a number from 0 (none) to below 1, got ${a['keyword-share']}`);
const trainTasks = taskList('train-tasks');
const holdout = a['holdout-fold'] === undefined ? undefined : parseFold(a['holdout-fold']);
const trigrams = a.trigrams === undefined ? undefined : { dim: Number(a.trigrams), buckets: Number(a['trigram-buckets']) };
if (trigrams && !(Number.isInteger(trigrams.dim) && trigrams.dim > 0 && Number.isInteger(trigrams.buckets) && trigrams.buckets > 0)) {
  throw new Error(`--trigrams and --trigram-buckets must be positive integers, got ${a.trigrams} and ${a['trigram-buckets']}`);
}
const evalTasks = taskList('eval-tasks');
const taskWeights = parseTaskWeights(a['task-weights']!, '--task-weights');
const lexicalWeight = Number(a['lexical-weight']);
if (!(lexicalWeight >= 0 && lexicalWeight < 1)) throw new Error(`--lexical-weight must be a number from 0 (none) to below 1, got ${a['lexical-weight']}`);
const weightTag = Object.entries(taskWeights).map(([t, w]) => `-w${t}x${w}`).join('');

const ctx = await init();
console.log(`adapter: ${ctx.description}`);
const base = await Mllm.load(a.base);
const { vision, imageSize, preset } = base.config;
base.dispose();
const bench = await loadBenchmark(a.data!);
const images = new ImageStore({ root: bench.imageRoot, patchSize: vision.patchSize, mergeSize: vision.mergeSize, size: imageSize });
const byDid = new Map(bench.pool.map((c) => [c.did, c]));
const folds = holdout && (await queryFolds(a.data!, holdout.folds));
const trainQueries = bench.queries.train.filter((q) => trainTasks.has(q.task_id) && (!folds || foldOfQuery(folds, q.qid) !== holdout!.fold));
const keepName = (base: string) => !holdout || foldOfBase(base, holdout.folds) !== holdout.fold;
// The evaluation reads the validation split; only the chosen tasks' queries stay in it.
const evalBench = { ...bench, queries: { ...bench.queries, val: bench.queries.val.filter((q) => evalTasks.has(q.task_id)) } };
for (const { pooling, batching, embedDim, name } of variants) {
  const out = join(a.out!, `${name}${keywordShare ? `-kw${keywordShare}` : ''}${trigrams ? `-tri${trigrams.dim}` : ''}${weightTag}${lexicalWeight ? `-lex${lexicalWeight}` : ''}-${steps}x${batch}${holdout ? `-fold${holdout.fold}of${holdout.folds}` : ''}`);
  mkdirSync(out, { recursive: true });
  const t0 = performance.now();
  let source = benchmarkTripleSource(trainQueries, byDid, images, 1, batching, taskWeights);
  if (keywordShare) source = withKeywordPairs(source, await keywordPairNames(a.data!, keepName), byDid, images, keywordShare, 1);
  const start = async () => {
    const r = await Retriever.fromBase(a.base!, embedDim, 1, undefined, pooling, trigrams);
    return lexicalWeight ? r.withLexical({ tfidf: TfIdf.fit(bench.pool.map((c) => c.txt)), weight: lexicalWeight }) : r;
  };
  const { retriever } = await trainRetriever(start, source, {
    steps, batchSize: batch, lr, outDir: out, checkpointEvery: 50, resume: true, logEvery: 25,
  });
  console.log(`${name}: trained in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  const reports = await evaluateFirstStage({ bench: evalBench, retriever, images, split: 'val', seed: 1, outDir: out, adapter: ctx.description, preset: preset ?? 'unknown' });
  console.log(formatRecallTable(reports, `${pooling} pooling, ${batching} batches, width ${embedDim}, validation split`));
  retriever.dispose();
}
