// Diagnostic: SFT whose assistant turn is only `<think></think><answer>i</answer>` (no chain
// of thought), on the same candidate lists as the SFT stage, to tell apart "the model cannot
// learn to pick from the compressed candidates" from "the chain of thought is in the way".
// Evaluate the result on the VALIDATION split with `retrv eval` (e.g. on the task 4 and 6
// queries of queries_val.jsonl); never tune on the test split.
//
//   npx tsx train/experiments/sft-answer-only.ts --base <align final> [--steps 600]
//     [--batch 8] [--lr 1e-3] [--K 16] [--k-start 4] [--easy-share 0.5] [--tasks 4,6] [--no-icm]
//     [--labels-from 16] [--index-tag] [--out runs/sft-answer-only]
//
// --k-start n: the SFT stage's K curriculum (n candidates first, doubling up to K).
// --easy-share f: the SFT stage's negatives curriculum (random negatives for that share of the steps).
// --tasks 4,6: train on those tasks' queries only.
// --labels-from n: each list is numbered with K increasing numbers drawn from 0..n-1 (the
//   answer is the positive's number), so a K = 4 run trains every answer index of a K = n list.
// --index-tag: the ICM adds each candidate's index embedding to its rows (IcmConfig.indexTag;
//   kept in the saved icm.json, so evaluation tags the same way).
// --no-icm gives every candidate its full tokens (the base may then be any pre-trained model).
import { parseArgs } from 'node:util';
import { init } from '../../runtime/index.ts';
import { Icm, icmCompress } from '../../model/icm.ts';
import { Mllm } from '../../model/mllm.ts';
import { emojiIndex } from '../data/cot.ts';
import { parseTaskIds } from '../data/mbeir.ts';
import { batchQueries, curriculumK, curriculumSchedule, makeSftExample, randomNegativeSteps, sftTrain, spreadLabels, trainingQueries } from '../sft.ts';
import { loadSftData } from '../sft-stage.ts';
import { positiveFlags } from './flags.ts';

const { values: a } = parseArgs({
  options: {
    base: { type: 'string' },
    steps: { type: 'string', default: '600' },
    batch: { type: 'string', default: '8' },
    lr: { type: 'string', default: '1e-3' },
    K: { type: 'string', default: '16' },
    'k-start': { type: 'string' },
    'easy-share': { type: 'string', default: '0' },
    tasks: { type: 'string' },
    'labels-from': { type: 'string' },
    'index-tag': { type: 'boolean', default: false },
    'no-icm': { type: 'boolean', default: false },
    data: { type: 'string', default: 'data/emoji-mbeir' },
    out: { type: 'string', default: 'runs/sft-answer-only' },
  },
});
if (!a.base) throw new Error('--base <align final: a model with its ICM, or any model with --no-icm> is required');
const { steps, batch, lr, K } = positiveFlags(a, ['steps', 'batch', 'lr', 'K']);
const kStart = a['k-start'] === undefined ? K : positiveFlags(a, ['k-start'])['k-start'];
const easySteps = randomNegativeSteps(steps, Number(a['easy-share']));
const labelsFrom = a['labels-from'] === undefined ? 0 : positiveFlags(a, ['labels-from'])['labels-from'];
if (labelsFrom && labelsFrom < K) throw new Error(`--labels-from must be at least --K (${K}), got ${labelsFrom}`);
console.log(`lists: ${curriculumSchedule(steps, K, kStart)}; random negatives for the first ${easySteps} steps${labelsFrom ? `; numbered from 0-${labelsFrom - 1}` : ''}`);
await init();
const model = await Mllm.load(a.base);
const icm = a['no-icm'] ? null : await Icm.load(a.base);
if (!icm && !a['no-icm']) throw new Error(`${a.base} holds no ICM (icm.safetensors + icm.json): give an align final`);
if (a['index-tag']) {
  if (!icm) throw new Error('--index-tag needs the ICM (drop --no-icm)');
  if (labelsFrom) throw new Error('--index-tag tags candidates by position; it cannot be combined with --labels-from');
  icm.config.indexTag = true;
}
const data = await loadSftData(a.data!, model);
const emojis = emojiIndex(data.attributes.values());
// --tasks 4,6 keeps the training queries of those tasks only.
const tasks = a.tasks === undefined ? undefined : parseTaskIds(a.tasks);
const queries = trainingQueries(data, tasks);
console.log(`${queries.length} training queries${tasks ? ` of tasks ${tasks.join(', ')}` : ''}`);
await sftTrain({
  model,
  runDir: a.out!,
  steps,
  batch,
  lr,
  seed: 1,
  K,
  maxInspections: 0,
  compress: icm ? icmCompress(model, icm) : undefined,
  compressParams: icm ? icm.parameterList() : [],
  saveEvery: 50,
  // The SFT stage's examples (same lists, answer positions and draws), with the trace cut to the answer.
  examples: (step) =>
    batchQueries(queries, batch, step, 1).map((q) => {
      const ex = makeSftExample(model, data, emojis, q, {
        K: curriculumK(step, steps, K, kStart),
        seed: 1,
        draw: step,
        maxInspections: 0,
        style: 'brief',
        hardNegatives: step >= easySteps,
      });
      const labels = labelsFrom ? spreadLabels(ex.candidates.length, labelsFrom, 1, `${q.qid}:${step}`) : undefined;
      const text = `<think></think><answer>${labels ? labels[ex.trace.answer] : ex.trace.answer}</answer>`;
      return { ...ex, labels, trace: { ...ex.trace, text, inspections: [], sentences: [] }, traceIds: [...model.tokenizer.encode(text), model.tokenizer.specialIds.imEnd] };
    }),
  onStep: (s) => {
    if (s.step % 50 === 0 || s.step + 1 === steps) console.log(`step ${s.step + 1}/${steps}  loss ${s.loss.toFixed(3)}  ${s.ms.toFixed(0)} ms`);
  },
});
if (icm) await icm.save(`${a.out}/final`);
console.log(`done: ${a.out}/final`);
