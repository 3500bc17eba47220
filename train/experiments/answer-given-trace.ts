// Teacher-forced answers on validation (or training) queries of task 4: does a reranker
// still point at the match when it reads a correct trace instead of its own? Each query
// gets a hard list (the positive, its hard negatives, random fillers of its split; seed 7)
// and its synthetic trace in the given style (`answer`: the empty trace
// `<think></think>`); the model reads it up to `<answer>` and its pick is the index digit
// with the highest logit. Reported: right answers overall, and over the queries whose
// trace does not give the answer away (a `brief` trace always does: it eliminates every
// other candidate; an `open` or `nameless` one only when it inspects the answer). This
// separates "the model no longer points" from "its own traces derail it".
//
//   npx tsx train/experiments/answer-given-trace.ts <final/ with an ICM> <answer|brief|open|nameless>
//     [--K 8] [--queries 150] [--split val|train] [--max-inspections 3] [--think TEXT]
//     [--system-extra TEXT]
//
// --split train reads training queries instead: whether the model fits its own training
// lists, as against whether that carries over to emojis it never saw. --max-inspections 0
// gives traces without inspection (for a model trained with --no-inspect). --think puts
// TEXT inside the `answer` style's empty think, --system-extra appends TEXT to the system
// prompt: where in the sequence the pick is read from (a space inside the think, against
// ten more tokens before the whole prompt).
import { parseArgs } from 'node:util';
import { init, noGrad, tidyAsync } from '../../runtime/index.ts';
import { Icm, icmCompress } from '../../model/icm.ts';
import { compressPrompts } from '../../model/inspect.ts';
import { Mllm } from '../../model/mllm.ts';
import { DEFAULT_SYSTEM } from '../../model/sequence.ts';
import { type TraceStyle, emojiIndex } from '../data/cot.ts';
import { loadBenchmark } from '../data/emoji-benchmark.ts';
import { loadSftData } from '../sft-stage.ts';
import { makeSftExample, sftSequence, usableQueries } from '../sft.ts';

const { values: a, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    K: { type: 'string', default: '8' },
    queries: { type: 'string', default: '150' },
    split: { type: 'string', default: 'val' },
    'max-inspections': { type: 'string', default: '3' },
    think: { type: 'string', default: '' },
    'system-extra': { type: 'string', default: '' },
  },
});
const [ckpt, style] = positionals;
if (!ckpt || !['answer', 'brief', 'open', 'nameless'].includes(style)) throw new Error('usage: answer-given-trace.ts <final/ with an ICM> <answer|brief|open|nameless> [--K 8] [--queries 150] [--split val|train] [--max-inspections 3] [--think TEXT] [--system-extra TEXT]');
const K = Number(a.K);
const n = Number(a.queries);
const maxIns = Number(a['max-inspections']);
const split = a.split!;
if (!Number.isInteger(K) || K < 2 || K > 10) throw new Error(`--K must be an integer from 2 to 10 (one digit per index), got ${a.K}`);
if (split !== 'val' && split !== 'train') throw new Error(`--split must be val or train, got ${split}`);
if (!Number.isInteger(n) || n < 1) throw new Error(`--queries must be a positive integer, got ${a.queries}`);
if (a.think && style !== 'answer') throw new Error('--think fills the answer style\'s empty think; other styles bring their own trace');
if (!Number.isInteger(maxIns) || maxIns < 0) throw new Error(`--max-inspections must be a non-negative integer, got ${a['max-inspections']}`);

await init();
const model = await Mllm.load(ckpt);
const icm = await Icm.load(ckpt);
if (!icm) throw new Error(`${ckpt} holds no ICM (icm.safetensors + icm.json)`);
const data = await loadSftData('data/emoji-mbeir', model);
const bench = await loadBenchmark('data/emoji-mbeir');
const queries = usableQueries({ ...data, queries: bench.queries[split] })
  .filter((q) => q.task_id === 4)
  .slice(0, n);
const emojis = emojiIndex(data.attributes.values());
const tok = model.tokenizer;
const digits = Array.from({ length: K }, (_, i) => tok.encode(String(i))[0]);
const compress = icmCompress(model, icm);
let right = 0;
let open = 0;
let rightOpen = 0;
for (const q of queries) {
  const drawn = makeSftExample(model, data, emojis, q, { K, seed: 7, draw: 0, maxInspections: style === 'answer' ? 0 : maxIns, style: style === 'answer' ? 'brief' : (style as TraceStyle), hardNegatives: true });
  const answer = drawn.trace.answer;
  const empty = `<think>${a.think}</think><answer>${answer}</answer>`;
  const ex = style === 'answer' ? { ...drawn, trace: { ...drawn.trace, text: empty, inspections: [] }, traceIds: [...tok.encode(empty), tok.specialIds.imEnd] } : drawn;
  // The sequence's tensors are freed after each query (tidyAsync); only numbers come out.
  const scores = await tidyAsync(() => noGrad(async () => {
    const hooks = compressPrompts(compress, [ex]);
    const s = sftSequence(model, ex, maxIns, () => hooks[0], DEFAULT_SYSTEM + a['system-extra']);
    const at = s.layout.ids.lastIndexOf(tok.specialIds.answerStart);
    const all = await model.forward([s.layout]).logits.toArray();
    return digits.map((d) => all[at * tok.vocabSize + d]);
  }));
  const pick = scores.indexOf(Math.max(...scores));
  const givenAway = style === 'brief' || (style !== 'answer' && ex.trace.inspections.includes(answer));
  if (pick === answer) right++;
  if (!givenAway) {
    open++;
    if (pick === answer) rightOpen++;
  }
}
console.log(`${ckpt} (${style} traces${a.think ? ` thinking ${JSON.stringify(a.think)}` : ''}${a['system-extra'] ? ' with a longer system prompt' : ''}, K = ${K}${style === 'answer' ? '' : `, at most ${maxIns} inspections`}, ${split}): right ${right} of ${queries.length}; where the trace does not give the answer away ${rightOpen} of ${open} (chance ${(100 / K).toFixed(1)}%)`);
