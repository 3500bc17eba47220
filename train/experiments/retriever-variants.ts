// Experiment: first-stage retriever variants (pooling, batching) trained from the same base
// checkpoint with the same budget and seed, evaluated on the VALIDATION split (never the
// test split, so the choice it informs is not tuned on test queries).
//
//   npx tsx train/experiments/retriever-variants.ts --base <pretrain final> [--steps 200]
//     [--batch 32] [--lr 1e-3] [--variants mean/mixed,mean/task] [--out runs/retriever-variants]
//
// A variant is <pooling>/<batching> (model/retriever.ts Pooling; train/retriever.ts
// RetrieverBatching). Each trains into <out>/<pooling>-<batching>-<steps>x<batch>/ (resumable)
// and writes its validation recall table there.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { init } from '../../runtime/index.ts';
import { Mllm } from '../../model/mllm.ts';
import { type Pooling, Retriever } from '../../model/retriever.ts';
import { loadBenchmark } from '../data/emoji-benchmark.ts';
import { ImageStore } from '../data/inputs.ts';
import { evaluateFirstStage } from '../eval/first-stage-eval.ts';
import { formatRecallTable } from '../eval/recall.ts';
import { RETRIEVER_BATCHINGS, type RetrieverBatching, benchmarkTripleSource, trainRetriever } from '../retriever.ts';
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
  },
});
if (!a.base) throw new Error('--base <pre-trained checkpoint folder> is required');
const { steps, batch, lr } = positiveFlags(a, ['steps', 'batch', 'lr']);
const variants = a.variants!.split(',').map((v) => {
  const [pooling, batching] = v.split('/');
  if ((pooling !== 'mean' && pooling !== 'last') || !RETRIEVER_BATCHINGS.includes(batching as RetrieverBatching)) {
    throw new Error(`--variants: '${v}' is not <mean|last>/<${RETRIEVER_BATCHINGS.join('|')}>`);
  }
  return { pooling: pooling as Pooling, batching: batching as RetrieverBatching };
});

const ctx = await init();
console.log(`adapter: ${ctx.description}`);
const base = await Mllm.load(a.base);
const { vision, imageSize, preset } = base.config;
base.dispose();
const bench = await loadBenchmark(a.data!);
const images = new ImageStore({ root: bench.imageRoot, patchSize: vision.patchSize, mergeSize: vision.mergeSize, size: imageSize });
const byDid = new Map(bench.pool.map((c) => [c.did, c]));
for (const { pooling, batching } of variants) {
  const out = join(a.out!, `${pooling}-${batching}-${steps}x${batch}`);
  mkdirSync(out, { recursive: true });
  const t0 = performance.now();
  const source = benchmarkTripleSource(bench.queries.train, byDid, images, 1, batching);
  const { retriever } = await trainRetriever(() => Retriever.fromBase(a.base!, 64, 1, undefined, pooling), source, {
    steps, batchSize: batch, lr, outDir: out, checkpointEvery: 50, resume: true, logEvery: 25,
  });
  console.log(`${pooling}/${batching}: trained in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  const reports = await evaluateFirstStage({ bench, retriever, images, split: 'val', seed: 1, outDir: out, adapter: ctx.description, preset: preset ?? 'unknown' });
  console.log(formatRecallTable(reports, `${pooling} pooling, ${batching} batches, validation split`));
  retriever.dispose();
}
