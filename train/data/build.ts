// Builds the emoji benchmark (and optionally the scene benchmark) in the M-BEIR format.
//   tsx train/data/build.ts --out data/emoji-mbeir [--seed 1] [--max-per-task N]
//        [--hard-negatives 8] [--check-images] [--card train/data/DATASET.md]
//        [--scenes-out data/scenes-mbeir] [--scene-families 500]
// A full build (no --max-per-task) also refreshes the dataset card in train/data/.
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { TASKS } from './mbeir-types.ts';
import { formatIssue } from './mbeir.ts';
import { writeTextAtomic } from '../atomic-write.ts';
import { buildEmojiBenchmark, loadBenchmark, writeEmojiBenchmark } from './emoji-benchmark.ts';
import { buildSceneBenchmark, writeSceneBenchmark } from './scenes.ts';
import { SPLITS } from './seeded.ts';

function intArg(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer, got "${v}"`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: 'data/emoji-mbeir' },
      seed: { type: 'string', default: '1' },
      'max-per-task': { type: 'string' },
      'hard-negatives': { type: 'string' },
      'check-images': { type: 'boolean', default: false },
      card: { type: 'string' },
      'scenes-out': { type: 'string' },
      'scene-families': { type: 'string', default: '500' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log('usage: tsx train/data/build.ts --out DIR [--seed N] [--max-per-task N] [--hard-negatives N] [--check-images] [--card PATH] [--scenes-out DIR] [--scene-families N]');
    return;
  }
  const seed = intArg('seed', values.seed)!;
  const maxPerTask = intArg('max-per-task', values['max-per-task']);
  const t0 = performance.now();
  const secs = () => ((performance.now() - t0) / 1000).toFixed(1);

  console.log(`[${secs()}s] building the emoji benchmark (seed ${seed}${maxPerTask !== undefined ? `, at most ${maxPerTask} queries per task and split` : ''})`);
  const bench = buildEmojiBenchmark({ seed, maxPerTask, hardNegatives: intArg('hard-negatives', values['hard-negatives']) });
  await writeEmojiBenchmark(values.out, bench);
  console.log(`[${secs()}s] wrote ${values.out} (image root ${bench.meta.image_root})`);
  const card = values.card ?? (maxPerTask === undefined ? fileURLToPath(new URL('./DATASET.md', import.meta.url)) : undefined);
  if (card !== undefined) {
    await writeTextAtomic(card, bench.card);
    console.log(`[${secs()}s] dataset card: ${card}`);
  }

  // Read it back through the validating loader: what any consumer will see.
  const loaded = await loadBenchmark(values.out, { checkImages: values['check-images'] });
  for (const line of loaded.summary) console.log(`  ${line}`);
  for (const i of loaded.issues.slice(0, 20)) console.log(`  ${formatIssue(i)}`);
  if (loaded.issues.length > 20) console.log(`  ... ${loaded.issues.length - 20} more`);
  console.log(`[${secs()}s] loaded back: ${loaded.skipped} items skipped${values['check-images'] ? ', every image decoded' : ''}`);
  console.log('task                          train    val   test   pool');
  for (const [t, c] of Object.entries(bench.meta.counts)) {
    const name = `${t} ${TASKS[Number(t)]}`.padEnd(28);
    console.log(`${name} ${SPLITS.map((s) => String(c[s]).padStart(6)).join(' ')} ${String(bench.meta.tasks[t].pool_size).padStart(6)}`);
  }
  console.log(`pool.jsonl: ${bench.meta.pool_size} candidates`);

  if (values['scenes-out'] !== undefined) {
    const families = intArg('scene-families', values['scene-families'])!;
    console.log(`[${secs()}s] building the scene benchmark (${families} families)`);
    const scenes = buildSceneBenchmark({ families, seed });
    await writeSceneBenchmark(values['scenes-out'], scenes);
    const c = scenes.meta.counts;
    console.log(`[${secs()}s] wrote ${values['scenes-out']}: ${scenes.images.size} images; queries ${Object.entries(c).map(([t, x]) => `task ${t} ${x.train}/${x.val}/${x.test}`).join(', ')}`);
  }
  console.log(`[${secs()}s] done`);
}

main().catch((e: Error) => {
  console.error(`build-data: ${e.message}`);
  process.exit(1);
});
