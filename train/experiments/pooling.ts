// Experiment: last-token vs mean pooling for the first-stage retriever, from the same base
// checkpoint with the same budget, evaluated on the VALIDATION split (never the test split).
//   npx tsx train/experiments/pooling.ts [steps 200] [batch 32] [poolings mean,last] [base dir]
import { mkdirSync } from 'node:fs';
import { init } from '../../runtime/index.ts';
import { Retriever, type Pooling } from '../../model/retriever.ts';
import { getPreset } from '../../model/presets.ts';
import { loadBenchmark } from '../data/emoji-benchmark.ts';
import { ImageStore } from '../data/inputs.ts';
import { evaluateFirstStage } from '../eval/first-stage-eval.ts';
import { formatRecallTable } from '../eval/recall.ts';
import { arrayTripleSource, benchmarkTriples, trainRetriever } from '../retriever.ts';

const steps = Number(process.argv[2] ?? 200);
const batch = Number(process.argv[3] ?? 32);
const poolings = (process.argv[4] ?? 'mean,last').split(',') as Pooling[];
const base = process.argv[5] ?? 'runs/first-stage-tiny/pretrain/final';
const ctx = await init();
const preset = getPreset('tiny');
const bench = await loadBenchmark('data/emoji-mbeir');
const images = new ImageStore({ root: bench.imageRoot, patchSize: preset.vision.patchSize, mergeSize: preset.vision.mergeSize, size: preset.imageSize });
const byDid = new Map(bench.pool.map((c) => [c.did, c]));
const triples = benchmarkTriples(bench.queries.train, byDid, images, 1);
for (const pooling of poolings) {
  const out = `runs/pooling-exp/${pooling}-${steps}x${batch}`;
  mkdirSync(out, { recursive: true });
  const t0 = performance.now();
  const { retriever } = await trainRetriever(() => Retriever.fromBase(base, 64, 1, undefined, pooling), arrayTripleSource(triples, 1), {
    steps, batchSize: batch, lr: 1e-3, outDir: out, checkpointEvery: 50, resume: true, logEvery: 25,
  });
  console.log(`${pooling}: trained in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  const reports = await evaluateFirstStage({ bench, retriever, images, split: 'val', seed: 1, outDir: out, adapter: ctx.description, preset: 'tiny' });
  console.log(formatRecallTable(reports, `${pooling} pooling, validation split`));
  retriever.dispose();
}
