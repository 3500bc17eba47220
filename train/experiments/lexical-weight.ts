// Experiment: the weight of the lexical part (character-trigram TF-IDF, model/lexical.ts) of a
// hybrid retriever, chosen on the VALIDATION split. The TF-IDF is fitted on the texts of the
// benchmark's pool, attached to a trained retriever at each weight, and the chosen tasks'
// validation queries rank their local pools.
//
//   npx tsx train/experiments/lexical-weight.ts --retriever <retriever checkpoint>
//     [--weights 0,0.2,0.4,0.5,0.6,0.7,0.8] [--tasks 1] [--data data/emoji-mbeir] [--out runs/lexical-weight]
//     [--expert <text-only retriever> --expert-weights 0.1,0.2,0.3]
//     [--image-expert <text -> image retriever> --image-expert-weights 0.5,0.8,0.9] [--save <folder>]
//
// With --expert, every pair of a lexical weight and an expert weight (summing below 1) is
// tried, the expert attached as the retriever's text expert (model/retriever.ts TextExpert).
// --image-expert does the same for a text -> image expert (TextImageExpert; look at --tasks 0).
// A weight of 0 leaves that part as the loaded retriever has it.
// --save writes the retriever with its parts at the best weights (highest macro R@10, then
// R@5, then R@1, over the chosen tasks' validation queries). Weight 0 leaves a part out.
// Only text-text pairs change (LexicalSettings), so task 1 is the one to look at; the other
// tasks' rows show that they do not move.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { init } from '../../runtime/index.ts';
import { TfIdf } from '../../model/lexical.ts';
import { Retriever } from '../../model/retriever.ts';
import { loadBenchmark } from '../data/emoji-benchmark.ts';
import { ImageStore } from '../data/inputs.ts';
import { parseTaskIds } from '../data/mbeir.ts';
import { evaluateFirstStage } from '../eval/first-stage-eval.ts';
import { formatRecallTable, type RecallReport } from '../eval/recall.ts';

const { values: a } = parseArgs({
  options: {
    retriever: { type: 'string' },
    weights: { type: 'string', default: '0,0.2,0.4,0.5,0.6,0.7,0.8' },
    tasks: { type: 'string', default: '1' },
    data: { type: 'string', default: 'data/emoji-mbeir' },
    out: { type: 'string', default: 'runs/lexical-weight' },
    save: { type: 'string' },
    expert: { type: 'string' },
    'expert-weights': { type: 'string', default: '0' },
    'image-expert': { type: 'string' },
    'image-expert-weights': { type: 'string', default: '0' },
  },
});
if (!a.retriever) throw new Error('--retriever <retriever checkpoint folder> is required');
const weights = a.weights!.split(',').map(Number);
for (const w of weights) if (!(w >= 0 && w < 1)) throw new Error(`--weights: ${w} is not a weight from 0 (no lexical part) to below 1`);
const tasks = new Set(parseTaskIds(a.tasks!, '--tasks'));
const expertWeights = a.expert ? a['expert-weights']!.split(',').map(Number) : [0];
for (const w of expertWeights) if (!(w >= 0 && w < 1)) throw new Error(`--expert-weights: ${w} is not a weight from 0 (no expert) to below 1`);
const imageWeights = a['image-expert'] ? a['image-expert-weights']!.split(',').map(Number) : [0];
for (const w of imageWeights) if (!(w >= 0 && w < 1)) throw new Error(`--image-expert-weights: ${w} is not a weight from 0 (no expert) to below 1`);
const grid = weights.flatMap((weight) => expertWeights.filter((e) => weight + e < 1).flatMap((expertWeight) => imageWeights.map((imageWeight) => ({ weight, expertWeight, imageWeight }))));

const ctx = await init();
console.log(`adapter: ${ctx.description}`);
const bench = await loadBenchmark(a.data!);
const evalBench = { ...bench, queries: { ...bench.queries, val: bench.queries.val.filter((q) => tasks.has(q.task_id)) } };
const tfidf = TfIdf.fit(bench.pool.map((c) => c.txt));
console.log(`TF-IDF over ${tfidf.size} character trigrams of ${tfidf.docs} pool texts`);
const dense = await Retriever.load(a.retriever);
const expertModel = a.expert ? await Retriever.load(a.expert) : undefined;
const imageModel = a['image-expert'] ? await Retriever.load(a['image-expert']) : undefined;
const { vision, imageSize, preset } = dense.config;
const images = new ImageStore({ root: bench.imageRoot, patchSize: vision.patchSize, mergeSize: vision.mergeSize, size: imageSize });
/** Whether x beats y at the first place they differ. */
const better = (x: readonly number[], y: readonly number[]) => {
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i] > y[i];
  return false;
};
/** The retriever with the parts at these weights (0 = without that part); it shares the loaded weights. */
const attach = (weight: number, expertWeight: number, imageWeight: number): Retriever => {
  let r = weight ? dense.withLexical({ tfidf, weight }) : dense;
  if (expertWeight) r = r.withTextExpert({ model: expertModel!, weight: expertWeight });
  if (imageWeight) r = r.withTextImageExpert({ model: imageModel!, weight: imageWeight });
  return r;
};
const rows: Record<string, RecallReport> = {};
let best: { weight: number; expertWeight: number; imageWeight: number; key: number[] } | undefined;
try {
  for (const { weight, expertWeight, imageWeight } of grid) {
    const name = `lexical weight ${weight}${expertModel ? `, expert ${expertWeight}` : ''}${imageModel ? `, text -> image expert ${imageWeight}` : ''}`;
    const retriever = attach(weight, expertWeight, imageWeight);
    const out = join(a.out!, `weight-${weight}${expertModel ? `-expert-${expertWeight}` : ''}${imageModel ? `-image-${imageWeight}` : ''}`);
    mkdirSync(out, { recursive: true });
    const reports = await evaluateFirstStage({ bench: evalBench, retriever, images, split: 'val', seed: 1, outDir: out, adapter: ctx.description, preset: preset ?? 'unknown' });
    rows[name] = reports['first stage'];
    rows['character trigram TF-IDF (trivial match)'] = reports['trivial match'];
    const m = reports['first stage'].macro;
    const key = [m['R@10'], m['R@5'], m['R@1']];
    if (!best || better(key, best.key)) best = { weight, expertWeight, imageWeight, key };
    console.log(formatRecallTable(reports['first stage'], `${name}, validation split`));
  }
  if (a.save && best) {
    await attach(best.weight, best.expertWeight, best.imageWeight).save(a.save);
    console.log(`saved the retriever at weights ${JSON.stringify(best)} (the best on validation) to ${a.save}`);
  }
} finally {
  dense.dispose();
  expertModel?.dispose();
  imageModel?.dispose();
}
console.log(formatRecallTable(rows, `${a.retriever}, validation split, by weights`));
