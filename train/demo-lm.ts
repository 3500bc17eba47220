// The main job for now: train a tiny Qwen2-style language model on a real text (the
// CC0 1.0 legal code, embedded in train/data) on whatever WebGPU adapter is present,
// with a progress line, a JSONL log, resumable checkpoints and a sample at the end.
//
//   npm run demo-lm -- [--steps 1000] [--run runs/demo-lm] [--fresh] [--quiet]
//
// Later pipeline stages (the retrieval benchmark, Retrv-R1 training) replace this job.
import { appendFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  AdamW,
  cosineSchedule,
  fromArray,
  getEngine,
  init,
  noGrad,
  sample,
  slice,
  reshape,
  stats,
  tidy,
} from '../runtime/index.ts';
import { Llm, type LlmConfig, initParameters, parameterShapes } from '../model/llm.ts';
import { loadCheckpointTensors, saveCheckpoint } from '../model/checkpoint.ts';
import { Rng } from '../runtime/random.ts';
import { lmLoss, positionsFor, sampleBatch } from './lm-train.ts';
import { loadOptimizerState, saveRunState, savedStep, trainStep } from './run-state.ts';

const { values: args } = parseArgs({
  options: {
    steps: { type: 'string', default: '1000' },
    run: { type: 'string', default: 'runs/demo-lm' },
    fresh: { type: 'boolean', default: false },
    quiet: { type: 'boolean', default: false },
    'save-every': { type: 'string', default: '50' },
  },
});

const steps = Number(args.steps);
if (!Number.isInteger(steps) || steps <= 0) throw new Error(`--steps must be a positive integer, got ${args.steps}`);
const runDir = args.run!;
const ckptDir = join(runDir, 'checkpoint');
const quiet = args.quiet || !!process.env.CI;

const config: LlmConfig = { vocabSize: 256, hidden: 96, layers: 3, heads: 6, kvHeads: 2, mlp: 256, ropeTheta: 10000, rmsEps: 1e-6, tieEmbeddings: true };
const batch = 8;
const seqLen = 64;
const peakLr = 3e-3;

const ctx = await init();
console.log(`adapter: ${ctx.description}`);
const text = readFileSync(new URL('./data/cc0-legal-code.txt', import.meta.url));
const data = new Uint8Array(text);
console.log(`corpus: CC0 1.0 legal code, ${data.length} bytes; model: ${JSON.stringify(config)}`);

if (args.fresh) rmSync(runDir, { recursive: true, force: true });
mkdirSync(runDir, { recursive: true });
const logPath = join(runDir, 'log.jsonl');

const model = new Llm(config, initParameters(config, 1));
const params = [...model.params.values()];
const opt = new AdamW(params, { lr: peakLr, weightDecay: 0.01, betas: [0.9, 0.95] });
const schedule = cosineSchedule({ peakLr, warmupSteps: Math.min(20, Math.floor(steps / 10)), totalSteps: steps, minLr: peakLr / 10 });
let start = 0;

// Resume: parameters, optimizer moments and the step all come back from the checkpoint.
const resumeStep = savedStep(ckptDir);
if (resumeStep !== null) {
  const tensors = await loadCheckpointTensors(ckptDir, parameterShapes(config));
  for (const [name, t] of tensors) {
    const p = model.params.get(name)!;
    getEngine().copy(t.buf, t.offset * 4, p.buf, p.offset * 4, p.size * 4);
    t.dispose();
  }
  await loadOptimizerState(ckptDir, opt);
  start = resumeStep;
  console.log(`resuming from ${ckptDir} at step ${start}`);
}

/** Weights and config (model/checkpoint.ts), optimizer moments, and the step reached. */
async function saveAll(step: number, dir: string): Promise<void> {
  await saveCheckpoint(dir, model.params, { architectures: ['Qwen2ForCausalLM'], ...config });
  await saveRunState(dir, opt, step);
}

const rng = new Rng(1000 + start); // a resumed run draws fresh batches
const pos = fromArray(positionsFor(batch, seqLen), [batch, seqLen], 'i32');
const saveEvery = Number(args['save-every']);
const t0 = performance.now();
let firstLoss = NaN;
let lastLoss = NaN;
for (let step = start; step < steps; step++) {
  const ts = performance.now();
  const { ids, targets } = sampleBatch(data, batch, seqLen, rng);
  const lr = schedule(step);
  const loss = trainStep(params, opt, lr, 1.0, () => lmLoss(model, fromArray(ids, [batch, seqLen], 'i32'), pos, fromArray(targets, [batch * seqLen], 'i32')));
  const v = await loss.item();
  loss.dispose();
  if (Number.isNaN(firstLoss)) firstLoss = v;
  lastLoss = v;
  const ms = performance.now() - ts;
  const tokPerSec = (batch * seqLen * 1000) / ms;
  appendFileSync(logPath, JSON.stringify({ step, loss: v, lr, ms, tokens_per_s: tokPerSec }) + '\n');
  const done = step + 1 - start;
  const eta = ((performance.now() - t0) / done) * (steps - step - 1);
  const line = `step ${step + 1}/${steps}  loss ${v.toFixed(3)}  lr ${lr.toExponential(2)}  ${tokPerSec.toFixed(0)} tok/s  eta ${(eta / 1000).toFixed(0)}s`;
  if (!quiet && process.stdout.isTTY) process.stdout.write(`\r${line}   `);
  else if (step % 25 === 0 || step === steps - 1) console.log(line);
  if ((step + 1) % saveEvery === 0 && step + 1 < steps) await saveAll(step + 1, ckptDir);
}
if (process.stdout.isTTY && !quiet) process.stdout.write('\n');
await saveAll(steps, join(runDir, 'final'));
rmSync(ckptDir, { recursive: true, force: true });
console.log(`loss ${firstLoss.toFixed(3)} -> ${lastLoss.toFixed(3)} (uniform over bytes would be ${Math.log(256).toFixed(3)})`);

// A greedy continuation, recomputing the whole prefix each token (the KV-cache
// generator belongs to the model issue).
const prompt = 'The person who associated a work with this deed ';
let out = prompt;
const tokens = [...new TextEncoder().encode(prompt)];
for (let i = 0; i < 80; i++) {
  const ctxIds = tokens.slice(-seqLen);
  const T = ctxIds.length;
  const next = tidy(() =>
    noGrad(() => {
      const logits = model.forward(fromArray(ctxIds, [1, T], 'i32'), fromArray(positionsFor(1, T), [1, T], 'i32'));
      const last = reshape(slice(logits, 1, T - 1, T), [1, config.vocabSize]);
      return sample(last, { temperature: 0, seed: 0 });
    }),
  );
  const id = (await next.toArray())[0];
  next.dispose();
  tokens.push(id);
  out = new TextDecoder().decode(new Uint8Array(tokens));
}
console.log(`sample: ${JSON.stringify(out)}`);
const s = stats();
console.log(`weights: ${join(runDir, 'final')}  log: ${logPath}  peak GPU memory ${(s.peakBytes / 2 ** 20).toFixed(1)} MiB`);
