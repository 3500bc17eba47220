// Writes every image a benchmark folder names at a model's input size, so a run on a lent
// GPU machine (64 MiB of files travel) can carry the benchmark's images: the 64 px emoji
// PNGs are 25 MB, the same images at 32 px a third of that.
//
//   npx tsx scripts/shrink-images.ts --bench data/emoji-mbeir --image-root node_modules \
//     --size 32 --patch 8 --merge 2 --out /tmp/shrunk
//
// Each image is composited over white and resized by the model's own `preprocess` (so the
// only change is rounding to 8 bits), then written as an opaque PNG under the same relative
// path. It prints the largest difference between the model's input from the original and
// from the shrunk file (normalised pixel units), so the rounding is measured, not assumed.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadImage, preprocess } from '../model/image.ts';
import { encodePng } from '../train/data/scenes.ts';

const { values: a } = parseArgs({
  options: {
    bench: { type: 'string', default: 'data/emoji-mbeir' },
    'image-root': { type: 'string', default: 'node_modules' },
    size: { type: 'string', default: '32' },
    patch: { type: 'string', default: '8' },
    merge: { type: 'string', default: '2' },
    out: { type: 'string' },
  },
});
if (!a.out) throw new Error('--out <folder for the shrunk images> is required');
const [size, patchSize, mergeSize] = [a.size, a.patch, a.merge].map((v) => Number(v));

// Every image path the pool and query files name.
const paths = new Set<string>();
for (const file of ['pool.jsonl', 'queries_train.jsonl', 'queries_val.jsonl', 'queries_test.jsonl']) {
  for (const line of readFileSync(join(a.bench!, file), 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const row = JSON.parse(line) as { img_path?: string | null; query_img_path?: string | null };
    for (const p of [row.img_path, row.query_img_path]) if (p) paths.add(p);
  }
}

let worst = 0;
for (const path of paths) {
  const img = loadImage(join(a['image-root']!, path));
  const unit = preprocess(img, { patchSize, mergeSize, targetSize: size, mean: [0, 0, 0], std: [1, 1, 1] });
  const { height: h, width: w } = unit;
  const rgba = new Uint8Array(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    for (let c = 0; c < 3; c++) rgba[4 * i + c] = Math.max(0, Math.min(255, Math.round(unit.pixels[c * w * h + i] * 255)));
    rgba[4 * i + 3] = 255;
  }
  const shrunk = { width: w, height: h, rgba };
  const before = preprocess(img, { patchSize, mergeSize, targetSize: size }).pixels;
  const after = preprocess(shrunk, { patchSize, mergeSize, targetSize: size }).pixels;
  if (before.length !== after.length) throw new Error(`${path}: the shrunk image preprocesses to another size`);
  for (let i = 0; i < before.length; i++) worst = Math.max(worst, Math.abs(before[i] - after[i]));
  const target = join(a.out, path);
  mkdirSync(dirname(target), { recursive: true });
  writeFileSync(target, encodePng(shrunk));
}
console.log(`${paths.size} images at ${size} px in ${a.out}; largest change of a model input value: ${worst.toExponential(2)}`);
