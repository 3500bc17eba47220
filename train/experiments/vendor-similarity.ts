// Diagnostic: do a model's content rows hold the cross-vendor match at all, before any
// reranker training? For held-out emojis drawn in both Google's and Twitter's style, the
// Google image is the query and K Twitter images (the same emoji and K - 1 others) the
// candidates; fixed scores (no learned weights) pick one:
//   pooled cosine  cos(mean query row, mean candidate row)
//   row compare    each candidate row reads the query rows by softmax(q.k / sqrt D) over
//                  unit-RMS rows; the score is the mean cosine of a row with what it read
//                  (the ICM's `compare` relation with identity projections)
// each on the raw rows and on rows minus the list's mean candidate row. If these pick well
// above chance, a reranker that fails to has lost the match on the way, not never had it.
// --hard draws the other candidates from the query emoji's subcategory where it has enough
// (as the SFT lists' hard negatives are), random ones otherwise.
//
//   npx tsx train/experiments/vendor-similarity.ts --base runs/tiny-3k/pretrain/final
//     [--pairs 300] [--K 4] [--hard] [--data data/emoji-mbeir] [--image-root node_modules]
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { init, noGrad, tidy } from '../../runtime/index.ts';
import { embedContents } from '../../model/icm.ts';
import { Mllm } from '../../model/mllm.ts';
import { ImageStore } from '../data/inputs.ts';
import { hash32, SeededRng } from '../data/seeded.ts';
import { positiveFlags } from './flags.ts';

const { values: a } = parseArgs({
  options: {
    base: { type: 'string' },
    pairs: { type: 'string', default: '300' },
    K: { type: 'string', default: '4' },
    hard: { type: 'boolean', default: false },
    data: { type: 'string', default: 'data/emoji-mbeir' },
    'image-root': { type: 'string', default: 'node_modules' },
  },
});
if (!a.base) throw new Error('--base <model folder> is required');
const { pairs, K } = positiveFlags(a, ['pairs', 'K']);
if (K < 2) throw new Error('--K must be at least 2');
await init();
const model = await Mllm.load(a.base);
const v = model.config.vision;
const images = new ImageStore({ root: a['image-root']!, patchSize: v.patchSize, mergeSize: v.mergeSize, size: model.config.imageSize });

// Held-out emojis (the pointing experiment's hash split) that both vendors draw.
const GOOGLE = 'emoji-datasource-google/img/google/64/';
const TWITTER = 'emoji-datasource-twitter/img/twitter/64/';
const pool = readFileSync(join(a.data!, 'pool.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { did: string; img_path: string | null });
const subcategoryOf = new Map(readFileSync(join(a.data!, 'attributes.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { did: string; subcategory: string }).map((r) => [r.did, r.subcategory]));
const fileSubcategory = new Map(pool.flatMap((c) => (c.img_path?.startsWith(GOOGLE) ? [[c.img_path.slice(GOOGLE.length), subcategoryOf.get(c.did) ?? '']] : [])));
const files = [...new Set(pool.flatMap((c) => (c.img_path?.startsWith(GOOGLE) ? [c.img_path.slice(GOOGLE.length)] : [])))]
  .filter((f) => existsSync(join(a['image-root']!, TWITTER, f)) && hash32(GOOGLE + f, 3) % 2 === 1)
  .slice(0, pairs);
if (files.length < K) throw new Error(`vendor-similarity: only ${files.length} emojis drawn by both vendors in ${a.data}`);

type Rows = Float64Array[];
async function rowsOf(paths: string[]): Promise<Rows[]> {
  const out: Rows[] = [];
  for (let i = 0; i < paths.length; i += 32) {
    const ts = noGrad(() => tidy(() => embedContents(model, paths.slice(i, i + 32).map((p) => ({ image: images.preprocessed(p) })))));
    for (const t of ts) {
      const d = await t.toArray();
      const [n, D] = t.shape;
      t.dispose();
      out.push(Array.from({ length: n }, (_, r) => Float64Array.from(d.subarray(r * D, (r + 1) * D))));
    }
  }
  return out;
}
const queries = await rowsOf(files.map((f) => GOOGLE + f));
const cands = await rowsOf(files.map((f) => TWITTER + f));
const D = queries[0][0].length;

const dot = (x: Float64Array, y: Float64Array) => x.reduce((s, xi, j) => s + xi * y[j], 0);
const cos = (x: Float64Array, y: Float64Array) => dot(x, y) / Math.sqrt(dot(x, x) * dot(y, y) + 1e-30);
const unitRms = (x: Float64Array) => x.map((xi) => xi / Math.sqrt(dot(x, x) / D + 1e-6));
const minus = (x: Float64Array, m: Float64Array) => x.map((xi, j) => xi - m[j]);
function meanRow(rows: Rows): Float64Array {
  const m = new Float64Array(D);
  for (const r of rows) r.forEach((x, j) => (m[j] += x / rows.length));
  return m;
}
function rowCompare(q: Rows, c: Rows): number {
  const keys = q.map(unitRms);
  let s = 0;
  for (const row of c) {
    const u = unitRms(row);
    const w = keys.map((k) => dot(u, k) / Math.sqrt(D));
    const top = Math.max(...w);
    const e = w.map((x) => Math.exp(x - top));
    const z = e.reduce((p, x) => p + x, 0);
    const mix = new Float64Array(D);
    q.forEach((k, j) => k.forEach((x, d) => (mix[d] += (e[j] / z) * x)));
    s += cos(mix, row);
  }
  return s / c.length;
}
const pooled = (q: Rows, c: Rows) => cos(meanRow(q), meanRow(c));
const listCentred = (score: (q: Rows, c: Rows) => number) => (q: Rows, list: Rows[]) => {
  const m = meanRow(list.flat());
  return list.map((c) => score(q.map((r) => minus(r, m)), c.map((r) => minus(r, m))));
};
const scorers: Record<string, (q: Rows, list: Rows[]) => number[]> = {
  'pooled cosine, raw rows': (q, list) => list.map((c) => pooled(q, c)),
  'pooled cosine, list-centred rows': listCentred(pooled),
  'row compare, raw rows': (q, list) => list.map((c) => rowCompare(q, c)),
  'row compare, list-centred rows': listCentred(rowCompare),
};

const rng = new SeededRng(3);
const right = new Map(Object.keys(scorers).map((k) => [k, 0]));
let hardLists = 0;
for (let i = 0; i < files.length; i++) {
  const list = new Set<number>([i]); // the match first; ties count as misses
  const near = files.flatMap((f, j) => (j !== i && fileSubcategory.get(f) === fileSubcategory.get(files[i]) ? [j] : []));
  if (a.hard && near.length >= K - 1) {
    hardLists++;
    while (list.size < K) list.add(rng.pick(near));
  }
  while (list.size < K) list.add(rng.int(files.length));
  for (const [name, score] of Object.entries(scorers)) {
    const s = score(queries[i], [...list].map((j) => cands[j]));
    if (s.every((x, j) => j === 0 || x < s[0])) right.set(name, right.get(name)! + 1);
  }
}
console.log(`${a.base}: ${files.length} held-out emojis, Google image among ${K} Twitter images (chance ${(100 / K).toFixed(1)}%)${a.hard ? `, ${hardLists} lists from one subcategory` : ''}`);
for (const [name, n] of right) console.log(`  ${name.padEnd(34)} top-1 ${((100 * n) / files.length).toFixed(1)}%`);
