// Diagnostic: can the reranker learn to point at all? A synthetic task that any working
// candidate presentation must learn: the query is a copy of one of the K candidates, and
// the assistant turn is only `<think></think><answer>i</answer>`. If the model cannot learn
// this, the fault is in how candidates reach it (their order, their marks, rows that all
// look alike), not in the benchmark's difficulty.
//
//   npx tsx train/experiments/pointing.ts --base <model dir> [--mode text|image|vendor|word]
//     [--K 4] [--steps 300] [--batch 8] [--lr 1e-3] [--icm <align final> | --icm-fresh]
//     [--centre] [--relation mix|compare] [--hard] [--short-prompt] [--fresh | --preset small]
//     [--overfit] [--eval 200] [--out runs/pointing]
//
// text mode: the query and candidates are emoji names (text candidates of the pool).
// image mode: the query is an emoji image and the same image is among the candidates.
// vendor mode: like task 4 of the benchmark, the query is Google's image of an emoji and
// the candidates are Twitter's images, one of them of the same emoji.
// word mode: a control that needs one hop only: the query is a code word standing for the
// answer (alpha = 0, bravo = 1, ...; no candidate holds these words) and the candidates are
// names, so the answer position need only find the query word and map it to a digit.
// Items (names or images) are split by hash into a training half and a held-out half;
// accuracy is measured on held-out items only (teacher-forced: the answer position's logits
// over the K index tokens), so a model that memorised its items scores chance.
// --icm-fresh compresses the candidates with a freshly initialised ICM trained jointly
// (instead of --icm <align final>). --centre turns on the ICM's `centre` setting (each
// candidate's rows minus their mean over the K candidates): compressed emoji images share
// a large common component (cos(t_con, t_rel) 0.83 between different emojis, 0.99 for the
// same one), and this tests whether that is what hides the match.
// --relation compare|mix sets the ICM's candidate-over-query step: each token's similarity
// to what it read, or the query rows alone (the paper's; model/icm.ts, IcmConfig). A fresh
// ICM compares; an ICM saved before the setting existed mixes.
// --hard draws the other candidates from the match's subcategory where it has enough (as
// the benchmark's hard negatives are); image and vendor modes.
// --short-prompt replaces the 114-token instruction by a one-line one, so a step costs
// less than half (the task does not need the instruction).
// --overfit trains on one fixed batch (the standard check that the gradient path works: the
// loss must go to about 0) and reports accuracy on that batch instead of held-out items.
// --fresh re-initialises the weights (same architecture and tokenizer) to tell whether
// pre-training helps or hurts; --preset <name> does the same with another preset's
// architecture (the base's tokenizer kept), to tell whether depth and width are the limit.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { init, noGrad, reshape, slice, tidy } from '../../runtime/index.ts';
import { Icm, type IcmConfig, icmCompress, icmConfigFor } from '../../model/icm.ts';
import { Mllm } from '../../model/mllm.ts';
import { getPreset, withVocab } from '../../model/presets.ts';
import type { CandidateInput } from '../../model/sequence.ts';
import { ImageStore } from '../data/inputs.ts';
import { hash32, SeededRng } from '../data/seeded.ts';
import { sftSequence, sftTrain, type SftExample } from '../sft.ts';
import { positiveFlags } from './flags.ts';

const { values: a } = parseArgs({
  options: {
    base: { type: 'string' },
    mode: { type: 'string', default: 'text' },
    K: { type: 'string', default: '4' },
    steps: { type: 'string', default: '300' },
    batch: { type: 'string', default: '8' },
    lr: { type: 'string', default: '1e-3' },
    icm: { type: 'string' },
    fresh: { type: 'boolean', default: false },
    overfit: { type: 'boolean', default: false },
    preset: { type: 'string' },
    'short-prompt': { type: 'boolean', default: false },
    'icm-fresh': { type: 'boolean', default: false },
    centre: { type: 'boolean', default: false },
    relation: { type: 'string' },
    hard: { type: 'boolean', default: false },
    eval: { type: 'string', default: '200' },
    data: { type: 'string', default: 'data/emoji-mbeir' },
    'image-root': { type: 'string', default: 'node_modules' },
    out: { type: 'string', default: 'runs/pointing' },
  },
});
if (!a.base) throw new Error('--base <model folder> is required');
if (!['text', 'image', 'vendor', 'word'].includes(a.mode!)) throw new Error(`--mode must be text, image, vendor or word, got ${a.mode}`);
const CODE_WORDS = ['alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel', 'india', 'juliett'];
const { K, steps, batch, lr, eval: evalN } = positiveFlags(a, ['K', 'steps', 'batch', 'lr', 'eval']);
if (K > 10) throw new Error('--K at most 10 (each index must be one digit for the teacher-forced score)');

await init();
let model = await Mllm.load(a.base);
if (a.preset) {
  const p = getPreset(a.preset);
  model = Mllm.create({ architectures: ['RetrvMllm'], preset: p.name, ...withVocab(p, model.tokenizer.vocabSize), imageSize: p.imageSize }, model.tokenizer, 7);
} else if (a.fresh) model = Mllm.create(model.config, model.tokenizer, 7);
if (a.icm && a['icm-fresh']) throw new Error('give --icm or --icm-fresh, not both');
const loaded = a.icm ? await Icm.load(a.icm) : a['icm-fresh'] ? Icm.create(icmConfigFor(model.config), 5) : null;
if (a.icm && !loaded) throw new Error(`${a.icm} holds no ICM`);
if (a.centre && !loaded) throw new Error('--centre needs an ICM (--icm or --icm-fresh)');
if (a.relation && !loaded) throw new Error('--relation needs an ICM (--icm or --icm-fresh)');
const settings: Partial<IcmConfig> = { ...(a.centre ? { centre: true } : {}), ...(a.relation ? { relation: a.relation as IcmConfig['relation'] } : {}) };
const icm = loaded && Object.keys(settings).length ? new Icm({ ...loaded.config, ...settings }, loaded.params) : loaded;
const compress = icm ? icmCompress(model, icm) : undefined;
const system = a['short-prompt'] ? 'Pick the candidate that matches the query.' : undefined;

// The items: text names or image paths from the pool, split by hash into train / held out.
const pool = readFileSync(join(a.data!, 'pool.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { did: string; txt: string | null; img_path: string | null });
// --hard: an item's subcategory (emoji images only), to draw the other candidates from it.
const subcategoryOf = new Map(readFileSync(join(a.data!, 'attributes.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { did: string; subcategory: string }).map((r) => [r.did, r.subcategory]));
const itemSubcategory = new Map(pool.flatMap((c) => (c.img_path ? [[c.img_path, subcategoryOf.get(c.did) ?? '']] : [])));
if (a.hard && a.mode !== 'image' && a.mode !== 'vendor') throw new Error('--hard needs --mode image or vendor');
const GOOGLE = 'emoji-datasource-google/img/google/64/';
const TWITTER = 'emoji-datasource-twitter/img/twitter/64/';
const raw =
  a.mode === 'image' ? pool.flatMap((c) => (c.img_path ? [c.img_path] : []))
  : a.mode === 'vendor' ? pool.flatMap((c) => (c.img_path?.startsWith(GOOGLE) && existsSync(join(a['image-root']!, TWITTER, c.img_path.slice(GOOGLE.length))) ? [c.img_path] : []))
  : pool.flatMap((c) => (c.txt ? [c.txt] : []));
const items = [...new Set(raw)];
if (items.length < 4 * K) throw new Error(`pointing: only ${items.length} items for mode ${a.mode} in ${a.data}`);
const train = items.filter((s) => hash32(s, 3) % 2 === 0);
const heldOut = items.filter((s) => hash32(s, 3) % 2 === 1);
const v = model.config.vision;
const images = new ImageStore({ root: a['image-root']!, patchSize: v.patchSize, mergeSize: v.mergeSize, size: model.config.imageSize });
const input = (s: string): CandidateInput => (a.mode === 'image' ? { image: images.preprocessed(s) } : a.mode === 'vendor' ? { image: images.preprocessed(TWITTER + s.slice(GOOGLE.length)) } : { text: s });
console.log(`pointing: ${a.mode}, K ${K}, ${train.length} training and ${heldOut.length} held-out items, ${icm ? `ICM (relation ${icm.config.relation ?? 'mix'})${a.centre ? ', rows centred over the list' : ''}` : 'full candidates'}${a.preset ? `, fresh ${a.preset} weights` : a.fresh ? ', fresh weights' : ''}`);

function example(from: readonly string[], rng: SeededRng, id: string): SftExample {
  const picked = new Set<string>();
  let answer: number;
  let names: string[];
  if (a.hard) {
    // The match first, then others of its subcategory where it has enough, then any.
    const match = rng.pick(from);
    const near = from.filter((s) => s !== match && itemSubcategory.get(s) === itemSubcategory.get(match));
    picked.add(match);
    if (near.length >= K - 1) while (picked.size < K) picked.add(rng.pick(near));
    while (picked.size < K) picked.add(rng.pick(from));
    answer = rng.int(K);
    const others = [...picked].slice(1);
    names = [...others.slice(0, answer), match, ...others.slice(answer)];
  } else {
    while (picked.size < K) picked.add(rng.pick(from));
    names = [...picked];
    answer = rng.int(K);
  }
  const text = `<think></think><answer>${answer}</answer>`;
  return {
    qid: id,
    query: a.mode === 'word' ? { text: CODE_WORDS[answer] } : a.mode === 'vendor' ? { image: images.preprocessed(names[answer]) } : input(names[answer]),
    candidateIds: names,
    candidates: names.map(input),
    trace: { text, answer, inspections: [], hard: [], sentences: [] },
    traceIds: [...model.tokenizer.encode(text), model.tokenizer.specialIds.imEnd],
  };
}

const runDir = a.out!;
mkdirSync(runDir, { recursive: true });
await sftTrain({
  model,
  runDir,
  steps,
  batch,
  lr,
  seed: 1,
  K,
  maxInspections: 0,
  compress,
  system,
  compressParams: icm ? icm.parameterList() : [],
  examples: (step) => {
    const rng = new SeededRng(hash32(`train:${a.overfit ? 0 : step}`, 1));
    return Array.from({ length: batch }, (_, i) => example(train, rng, `t${step}.${i}`));
  },
  onStep: (s) => {
    if (s.step % 25 === 0 || s.step + 1 === steps) console.log(`step ${s.step + 1}/${steps}  loss ${s.loss.toFixed(3)}  ${s.ms.toFixed(0)} ms`);
  },
});
// The trained ICM beside the model, so that a later run can start from both
// (--base <out>/final --icm <out>/final), e.g. at a larger K.
if (icm) await icm.save(join(runDir, 'final'));

// Teacher-forced accuracy on held-out items: at the position that predicts the answer digit,
// which of the K digit tokens scores highest?
const digitIds = Array.from({ length: K }, (_, i) => {
  const ids = model.tokenizer.encode(`${i}`);
  if (ids.length !== 1) throw new Error(`index ${i} is not one token`);
  return ids[0];
});
const rng = new SeededRng(hash32(a.overfit ? 'train:0' : 'eval', 1));
const evalCount = a.overfit ? batch : evalN;
let right = 0;
const picks = new Array<number>(K).fill(0);
const V = model.tokenizer.vocabSize;
for (let n = 0; n < evalCount; n++) {
  const ex = example(a.overfit ? train : heldOut, rng, `e${n}`);
  const row = noGrad(() =>
    tidy(() => {
      const seq = sftSequence(model, ex, 0, compress, system);
      // The position whose target is the answer digit predicts it.
      const at = [...seq.targets].findIndex((t) => digitIds.includes(t));
      if (at < 0) throw new Error('pointing: no digit target in the trace');
      const { logits } = model.forward([seq.layout]);
      return slice(reshape(logits, [seq.layout.length, V]), 0, at, at + 1);
    }),
  );
  const values = await row.toArray();
  row.dispose();
  let best = 0;
  for (let i = 1; i < K; i++) if (values[digitIds[i]] > values[digitIds[best]]) best = i;
  picks[best]++;
  if (best === ex.trace.answer) right++;
}
const result = { mode: a.mode, K, steps, batch, lr, icm: icm ? (a.icm ?? 'fresh') : null, centre: a.centre, relation: icm?.config.relation ?? null, hard: a.hard, fresh: a.fresh || !!a.preset, preset: a.preset ?? model.config.preset, overfit: a.overfit, evaluated: evalCount, accuracy: right / evalCount, chance: 1 / K, picks };
console.log(`${a.overfit ? 'training-batch' : 'held-out'} accuracy ${(100 * result.accuracy).toFixed(1)}% (chance ${(100 / K).toFixed(1)}%), answers by index ${picks.join(' ')}`);
writeFileSync(join(runDir, 'result.json'), JSON.stringify(result, null, 2) + '\n');
