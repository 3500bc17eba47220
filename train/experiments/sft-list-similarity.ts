// Diagnostic: on the SFT stage's own candidate lists (train split, first draw), how often
// does a fixed score, the cosine of the query's and each candidate's mean content row in
// the given model, pick the positive? And how many lists hold another skin tone of the
// positive's emoji (the hardest negatives)? The companion of vendor-similarity.ts, which
// builds its lists itself.
//
//   npx tsx train/experiments/sft-list-similarity.ts --base runs/tiny-3k/pretrain/final
//     [--task 4] [--K 4] [--queries 300] [--data data/emoji-mbeir]
import { parseArgs } from 'node:util';
import { init, noGrad, tidy } from '../../runtime/index.ts';
import { embedContents } from '../../model/icm.ts';
import { Mllm } from '../../model/mllm.ts';
import { emojiIndex } from '../data/cot.ts';
import { makeSftExample, usableQueries } from '../sft.ts';
import { loadSftData } from '../sft-stage.ts';
import { positiveFlags } from './flags.ts';

const { values: a } = parseArgs({
  options: {
    base: { type: 'string' },
    task: { type: 'string', default: '4' },
    K: { type: 'string', default: '4' },
    queries: { type: 'string', default: '300' },
    data: { type: 'string', default: 'data/emoji-mbeir' },
  },
});
if (!a.base) throw new Error('--base <model folder> is required');
const { K, queries: count } = positiveFlags(a, ['K', 'queries']);
const task = Number(a.task);
await init();
const model = await Mllm.load(a.base);
const data = await loadSftData(a.data!, model);
const emojis = emojiIndex(data.attributes.values());
const qs = usableQueries(data).filter((q) => q.task_id === task).slice(0, count);
if (!qs.length) throw new Error(`no usable training queries of task ${a.task} in ${a.data}`);

const dot = (x: Float64Array, y: Float64Array) => x.reduce((s, v, j) => s + v * y[j], 0);
const cos = (x: Float64Array, y: Float64Array) => dot(x, y) / Math.sqrt(dot(x, x) * dot(y, y) + 1e-30);
const baseOf = (did: string) => data.attributes.get(did)?.base;
let right = 0;
let withTone = 0;
for (const q of qs) {
  const ex = makeSftExample(model, data, emojis, q, { K, seed: 1, draw: 0, maxInspections: 0, style: 'brief' });
  const rows = noGrad(() => tidy(() => embedContents(model, [ex.query, ...ex.candidates])));
  const pooled: Float64Array[] = [];
  for (const t of rows) {
    const d = await t.toArray();
    const [n, D] = t.shape;
    t.dispose();
    const m = new Float64Array(D);
    for (let r = 0; r < n; r++) for (let j = 0; j < D; j++) m[j] += d[r * D + j] / n;
    pooled.push(m);
  }
  const scores = pooled.slice(1).map((c) => cos(pooled[0], c));
  if (scores.indexOf(Math.max(...scores)) === ex.trace.answer) right++;
  const positive = ex.candidateIds[ex.trace.answer];
  if (ex.candidateIds.some((d, i) => i !== ex.trace.answer && baseOf(d) === baseOf(positive))) withTone++;
}
console.log(`${a.base}, task ${task}, ${qs.length} SFT lists of ${K} (chance ${(100 / K).toFixed(1)}%):`);
console.log(`  pooled cosine picks the positive  ${((100 * right) / qs.length).toFixed(1)}%`);
console.log(`  lists with another tone of the positive's emoji  ${withTone} (${((100 * withTone) / qs.length).toFixed(0)}%)`);
