// The first half of the pipeline, end to end: build the emoji benchmark (M-BEIR
// format), pre-train the multimodal base model, train the first-stage embedding
// retriever from it with InfoNCE, and evaluate Recall@1/5/10 per task on the test split
// beside two baselines (random ranking; character n-gram / mean-colour matching).
//
//   npm run first-stage -- [--preset tiny] [--run runs/first-stage-tiny] [--pretrain-steps 300]
//                          [--retriever-steps 300] [--eval-per-task 0 (all)] [--quiet]
//
// Every stage resumes from its checkpoint when interrupted, and is skipped when its
// final output exists.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { init, stats } from '../runtime/index.ts';
import { Retriever } from '../model/retriever.ts';
import { getPreset } from '../model/presets.ts';
import { type EmojiAttributes, buildEmojiBenchmark, loadBenchmark, readSideTable, writeEmojiBenchmark } from './data/emoji-benchmark.ts';
import { ImageStore, baselineCandidate, baselineQuery, candidateInput, queryInput } from './data/inputs.ts';
import type { MbeirQuery } from './data/mbeir-types.ts';
import { type RecallReport, computeRecall, formatRecallTable, randomRankings, trivialRankings, writeRecallJson } from './eval/recall.ts';
import { pretrain } from './pretrain.ts';
import { type Triple, arrayTripleSource, rankWithRetriever, trainRetriever } from './retriever.ts';
import { Rng } from '../runtime/random.ts';

const { values: a } = parseArgs({
  options: {
    data: { type: 'string', default: 'data/emoji-mbeir' },
    preset: { type: 'string', default: 'tiny' },
    run: { type: 'string' },
    'pretrain-steps': { type: 'string', default: '300' },
    'retriever-steps': { type: 'string', default: '300' },
    batch: { type: 'string', default: '16' },
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
  const rng = new Rng(seed + 7);
  const triples: Triple[] = bench.queries.train.map((q) => {
    const pos = byDid.get(q.pos_cand_list[rng.int(q.pos_cand_list.length)])!;
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
  const steps = num('retriever-steps', a['retriever-steps'], 1);
  const { retriever: r } = await trainRetriever(() => Retriever.fromBase(baseDir, 64, seed), arrayTripleSource(triples, seed), {
    steps,
    batchSize: batch,
    lr: 1e-3,
    outDir: retrieverDir,
    checkpointEvery: 50,
    resume: true,
    logEvery: quiet ? 50 : 0,
    log: say,
    onStep: (s) => progress(`retriever ${s.step + 1}/${steps}  loss ${s.loss.toFixed(3)}  in-batch acc ${s.accuracy.toFixed(2)}`),
  });
  await r.save(retrieverFinal);
  retriever = r;
  say(`retriever trained -> ${retrieverFinal}`);
} else {
  retriever = await Retriever.load(retrieverFinal);
  say(`retriever: using ${retrieverFinal}`);
}

// 4. Evaluation on the test split, per task, each task ranking its own local pool.
const perTask = num('eval-per-task', a['eval-per-task']);
const tasks = [...new Set(bench.queries.test.map((q) => q.task_id))].sort((x, y) => x - y);
const testQueries: MbeirQuery[] = [];
for (const t of tasks) {
  const qs = bench.queries.test.filter((q) => q.task_id === t);
  testQueries.push(...(perTask ? qs.slice(0, perTask) : qs));
}
const rankings = { retriever: new Map<string, string[]>(), random: new Map<string, string[]>(), trivial: new Map<string, string[]>() };
const t0 = performance.now();
for (const t of tasks) {
  const qs = testQueries.filter((q) => q.task_id === t);
  const pool = (bench.taskPools.get(t) ?? bench.pool.map((c) => c.did)).map((d) => byDid.get(d)!);
  const ranked = await rankWithRetriever(
    retriever,
    pool.map((c) => ({ id: c.did, input: () => candidateInput(c, images) })),
    qs.map((q) => ({ qid: q.qid, input: queryInput(q, images) })),
    10,
    { batchSize: 64, onProgress: (done, total) => progress(`task ${t}: embedding the pool ${done}/${total}`) },
  );
  for (const [k, v] of ranked) rankings.retriever.set(k, v);
  const bq = qs.map((q) => baselineQuery(q, images));
  const bc = pool.map((c) => baselineCandidate(c, images));
  for (const [k, v] of randomRankings(bq, bc, { k: 10, seed })) rankings.random.set(k, v);
  for (const [k, v] of trivialRankings(bq, bc, { k: 10, seed })) rankings.trivial.set(k, v);
}
const reports: Record<string, RecallReport> = {
  'first stage': computeRecall(testQueries, rankings.retriever),
  'trivial match': computeRecall(testQueries, rankings.trivial),
  random: computeRecall(testQueries, rankings.random),
};
say(formatRecallTable(reports, `test split, ${testQueries.length} queries`));
const out = join(runDir, 'first-stage-recall.json');
writeRecallJson(out, reports);
writeFileSync(join(runDir, 'adapter.json'), JSON.stringify({ adapter: ctx.description, preset: preset.name, eval_seconds: (performance.now() - t0) / 1000, peak_gpu_bytes: stats().peakBytes }, null, 2));
say(`recall JSON: ${out}`);
retriever.dispose();
