// Experiment: the weight of the lexical part (character-trigram TF-IDF, model/lexical.ts) of a
// hybrid retriever, chosen on the VALIDATION split. The TF-IDF is fitted on the texts of the
// benchmark's pool, attached to a trained retriever at each weight, and the chosen tasks'
// validation queries rank their local pools.
//
//   npx tsx train/experiments/lexical-weight.ts --retriever <retriever checkpoint>
//     [--weights 0,0.2,0.4,0.5,0.6,0.7,0.8] [--tasks 1] [--data data/emoji-mbeir] [--out runs/lexical-weight]
//     [--save <folder>]
//
// --save writes the retriever with the lexical part at the best weight (highest macro R@10,
// then R@5, then R@1, over the chosen tasks' validation queries). Weight 0 is the retriever as trained. Only text-text pairs change (LexicalSettings), so
// task 1 is the one to look at; the other tasks' rows show that they do not move.
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
  },
});
if (!a.retriever) throw new Error('--retriever <retriever checkpoint folder> is required');
const weights = a.weights!.split(',').map(Number);
for (const w of weights) if (!(w >= 0 && w < 1)) throw new Error(`--weights: ${w} is not a weight from 0 (no lexical part) to below 1`);
const tasks = new Set(parseTaskIds(a.tasks!, '--tasks'));

const ctx = await init();
console.log(`adapter: ${ctx.description}`);
const bench = await loadBenchmark(a.data!);
const evalBench = { ...bench, queries: { ...bench.queries, val: bench.queries.val.filter((q) => tasks.has(q.task_id)) } };
const tfidf = TfIdf.fit(bench.pool.map((c) => c.txt));
console.log(`TF-IDF over ${tfidf.size} character trigrams of ${tfidf.docs} pool texts`);
const dense = await Retriever.load(a.retriever);
const { vision, imageSize, preset } = dense.config;
const images = new ImageStore({ root: bench.imageRoot, patchSize: vision.patchSize, mergeSize: vision.mergeSize, size: imageSize });
/** Whether x beats y at the first place they differ. */
const better = (x: readonly number[], y: readonly number[]) => {
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i] > y[i];
  return false;
};
const rows: Record<string, RecallReport> = {};
let best: { weight: number; key: number[] } | undefined;
try {
  for (const weight of weights) {
    const retriever = weight ? dense.withLexical({ tfidf, weight }) : dense;
    const out = join(a.out!, `weight-${weight}`);
    mkdirSync(out, { recursive: true });
    const reports = await evaluateFirstStage({ bench: evalBench, retriever, images, split: 'val', seed: 1, outDir: out, adapter: ctx.description, preset: preset ?? 'unknown' });
    rows[`lexical weight ${weight}`] = reports['first stage'];
    const m = reports['first stage'].macro;
    const key = [m['R@10'], m['R@5'], m['R@1']];
    if (!best || better(key, best.key)) best = { weight, key };
    rows['character trigram TF-IDF (trivial match)'] = reports['trivial match'];
    console.log(formatRecallTable(reports['first stage'], `lexical weight ${weight}, validation split`));
  }
  if (a.save && best) {
    await (best.weight ? dense.withLexical({ tfidf, weight: best.weight }) : dense).save(a.save);
    console.log(`saved the retriever with lexical weight ${best.weight} (the best on validation) to ${a.save}`);
  }
} finally {
  dense.dispose();
}
console.log(formatRecallTable(rows, `${a.retriever}, validation split, by lexical weight`));
