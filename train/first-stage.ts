// The first half of the pipeline, end to end: build the emoji benchmark (M-BEIR
// format), pre-train the multimodal base model, train the first-stage embedding
// retriever from it with InfoNCE, and evaluate Recall@1/5/10 per task on the test split
// beside two baselines (random ranking; character n-gram / mean-colour matching).
//
//   npm run first-stage -- [--preset tiny] [--run runs/first-stage-tiny] [--pretrain-steps 300]
//                          [--retriever-steps 300] [--pooling mean|last] [--eval-per-task 0 (all)] [--quiet]
//
// Every stage resumes from its checkpoint when interrupted, and is skipped when its
// final output exists.
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { init } from '../runtime/index.ts';
import { type Pooling, Retriever } from '../model/retriever.ts';
import { getPreset } from '../model/presets.ts';
import { type EmojiAttributes, buildEmojiBenchmark, loadBenchmark, readSideTable, writeEmojiBenchmark } from './data/emoji-benchmark.ts';
import { ImageStore } from './data/inputs.ts';
import { evaluateFirstStage } from './eval/first-stage-eval.ts';
import { formatRecallTable } from './eval/recall.ts';
import { pretrain } from './pretrain.ts';
import { arrayTripleSource, benchmarkTriples, trainRetriever } from './retriever.ts';

const { values: a } = parseArgs({
  options: {
    data: { type: 'string', default: 'data/emoji-mbeir' },
    preset: { type: 'string', default: 'tiny' },
    run: { type: 'string' },
    'pretrain-steps': { type: 'string', default: '300' },
    'retriever-steps': { type: 'string', default: '300' },
    batch: { type: 'string', default: '16' },
    pooling: { type: 'string', default: 'mean' },
    'eval-per-task': { type: 'string', default: '0' },
    seed: { type: 'string', default: '1' },
    quiet: { type: 'boolean', default: false },
  },
});
const num = (name: string, v: string | undefined, min = 0): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${v}`);
  return n;
};
const preset = getPreset(a.preset!);
const runDir = a.run ?? `runs/first-stage-${preset.name}`;
const seed = num('seed', a.seed);
const batch = num('batch', a.batch, 2);
const quiet = a.quiet || !!process.env.CI;
const progress = (line: string) => {
  if (!quiet && process.stdout.isTTY) process.stdout.write(`\r${line}    `);
};
const say = (line: string) => {
  if (!quiet && process.stdout.isTTY) process.stdout.write('\n');
  console.log(line);
};

const ctx = await init();
say(`adapter: ${ctx.description}`);
mkdirSync(runDir, { recursive: true });

// 1. The benchmark.
if (!existsSync(join(a.data!, 'meta.json'))) {
  say(`building the emoji benchmark in ${a.data} ...`);
  await writeEmojiBenchmark(a.data!, buildEmojiBenchmark({ seed }));
}
const bench = await loadBenchmark(a.data!);
for (const line of bench.summary) if (!/skipped 0 /.test(line)) say(line);
const attributes = [...(await readSideTable<EmojiAttributes>(join(a.data!, 'attributes.jsonl'), 'did')).values()];
say(`benchmark: ${bench.pool.length} candidates; test queries per task: ${[...new Set(bench.queries.test.map((q) => q.task_id))].map((t) => `${t}:${bench.queries.test.filter((q) => q.task_id === t).length}`).join(' ')}`);

// 2. Base pre-training.
const baseDir = join(runDir, 'pretrain', 'final');
if (!existsSync(join(baseDir, 'config.json'))) {
  const steps = num('pretrain-steps', a['pretrain-steps'], 1);
  let t0 = performance.now();
  await pretrain({
    dataDir: a.data!,
    imageRoot: bench.imageRoot,
    attributes,
    preset: preset.name,
    runDir: join(runDir, 'pretrain'),
    steps,
    batch,
    lr: 3e-3,
    seed,
    saveEvery: 50,
    log: say,
    onStep: (s) => {
      const line = `pretrain ${s.step + 1}/${s.steps}  loss ${s.loss.toFixed(3)}  ${((s.tokens * 1000) / s.ms).toFixed(0)} tok/s`;
      progress(line);
      if (quiet && (s.step % 50 === 0 || s.step + 1 === s.steps)) console.log(line);
    },
  });
  say(`pretrain done in ${((performance.now() - t0) / 1000).toFixed(0)} s -> ${baseDir}`);
  t0 = performance.now();
} else say(`pretrain: using ${baseDir}`);

// 3. The first-stage retriever.
const images = new ImageStore({ root: bench.imageRoot, patchSize: preset.vision.patchSize, mergeSize: preset.vision.mergeSize, size: preset.imageSize });
const byDid = new Map(bench.pool.map((c) => [c.did, c]));
const retrieverDir = join(runDir, 'retriever');
const retrieverFinal = join(retrieverDir, 'final');
let retriever: Retriever;
if (!existsSync(join(retrieverFinal, 'config.json'))) {
  const triples = benchmarkTriples(bench.queries.train, byDid, images, seed);
  const steps = num('retriever-steps', a['retriever-steps'], 1);
  const { retriever: r } = await trainRetriever(() => Retriever.fromBase(baseDir, 64, seed, undefined, a.pooling as Pooling), arrayTripleSource(triples, seed), {
    steps,
    batchSize: batch,
    lr: 1e-3,
    outDir: retrieverDir,
    checkpointEvery: 50,
    resume: true,
    logEvery: quiet ? 50 : 0,
    log: say,
    onStep: (s) => progress(`retriever ${s.step}/${steps}  loss ${s.loss.toFixed(3)}  in-batch acc ${s.accuracy.toFixed(2)}`),
  });
  await r.save(retrieverFinal);
  retriever = r;
  say(`retriever trained -> ${retrieverFinal}`);
} else {
  retriever = await Retriever.load(retrieverFinal);
  say(`retriever: using ${retrieverFinal}`);
}

// 4. Evaluation on the test split, per task, each task ranking its own local pool.
const reports = await evaluateFirstStage({
  bench,
  retriever,
  images,
  perTask: num('eval-per-task', a['eval-per-task']),
  seed,
  outDir: runDir,
  adapter: ctx.description,
  preset: preset.name,
  onProgress: (what, done, total) => progress(`${what} ${done}/${total}`),
});
say(formatRecallTable(reports, `test split, ${reports['first stage'].queries} queries`));
say(`recall JSON: ${join(runDir, 'first-stage-recall.json')}`);
retriever.dispose();
