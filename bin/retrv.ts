#!/usr/bin/env -S npx tsx
// The retrv command line: doctor, demo, train, eval, search, bench. Every error is one
// line plus a hint, with a non-zero exit code; --help works on every command.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError, Option } from 'commander';
import { NoAdapterError, getGpu } from '../runtime/device.ts';
import { parseTaskIds } from '../train/data/mbeir.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** An error the user can fix: printed as one line plus a hint, exit code 2. */
class UserError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

const int = (name: string, min = 1) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
  return n;
};

const taskList = (v: string) => {
  try {
    return parseTaskIds(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
};

const program = new Command();
program
  .name('retrv')
  .description('Retrv-R1 from scratch: a reasoning multimodal retriever on a WGSL tensor runtime (WebGPU through Dawn)')
  .showHelpAfterError('(add --help for usage)');

program
  .command('doctor')
  .description('show the WebGPU adapter, its features and limits, and what to install if none is found')
  .action(async () => {
    const ctx = await getGpu();
    const l = ctx.limits;
    console.log(`adapter      ${ctx.description}`);
    console.log(`kind         ${ctx.isSoftware ? 'software (CPU) implementation: fine for tests and the demo, slow for training' : 'hardware GPU'}`);
    console.log(`backend      ${ctx.info.backend}`);
    console.log(`features     ${[...ctx.features].sort().join(', ')}`);
    console.log(`f16 storage  ${ctx.hasF16 ? 'yes' : 'no'};  subgroups ${ctx.hasSubgroups ? 'yes' : 'no'};  timestamps ${ctx.hasTimestamps ? 'yes' : 'no'}`);
    console.log(`limits       buffer ${(l.maxBufferSize / 2 ** 20).toFixed(0)} MiB, storage binding ${(l.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB, workgroup memory ${l.maxComputeWorkgroupStorageSize} B, invocations ${l.maxComputeInvocationsPerWorkgroup}`);
  });

program
  .command('demo')
  .description('the main job on the embedded emoji benchmark: every stage end to end at the tiny size, then the results table (resumes if interrupted)')
  .option('--run <dir>', 'run folder', 'runs/demo')
  .option('--config <name|file>', 'pipeline config: tiny, small, or a JSON file', 'tiny')
  .option('--quiet', 'no progress bars (one line every few steps)')
  .action(async (o: { run: string; config: string; quiet?: boolean }) => {
    const { loadPipelineConfig, runPipeline } = await import('../train/pipeline.ts');
    await runPipeline({ config: loadPipelineConfig(o.config), runDir: o.run, quiet: o.quiet, command: `retrv demo --run ${o.run} --config ${o.config}` });
    console.log(`\nThe run is in ${o.run} (open ${join(o.run, 'report.html')} in a browser).`);
    console.log('Bigger runs: `retrv train --stage all --config small --run runs/small` (about 50 minutes on a 2-core software adapter,');
    console.log('far less on a GPU), or a JSON config file overriding any setting (see train/pipeline.ts).');
  });

program
  .command('train')
  .description('run one stage (or all) of the pipeline in runs/<run>; each stage resumes from its checkpoint')
  .addOption(new Option('--stage <stage>', 'which stage').choices(['all', 'data', 'pretrain', 'retriever', 'first-stage', 'align', 'pointing', 'sft', 'grpo', 'ablations', 'table', 'report']).makeOptionMandatory())
  .option('--config <name|file>', 'pipeline config: tiny, small, or a JSON file', 'tiny')
  .option('--run <name>', 'run name or folder (default runs/<config>)')
  .option('--ckpt <dir>', "the stage's input checkpoint (a final/ folder) instead of the run's earlier stage")
  .option('--quiet', 'no progress bars')
  .action(async (o: { stage: string; config: string; run?: string; ckpt?: string; quiet?: boolean }) => {
    const { STAGES, loadPipelineConfig, runPipeline } = await import('../train/pipeline.ts');
    const config = loadPipelineConfig(o.config);
    const runDir = o.run ? (o.run.includes('/') ? o.run : join('runs', o.run)) : join('runs', basename(o.config).replace(/\.json$/, ''));
    if (o.ckpt && o.stage === 'all') throw new UserError('--ckpt names the input of one stage', 'give --stage too, e.g. --stage sft --ckpt runs/x/align/final');
    if (o.ckpt) checkCkpt(o.ckpt);
    const stages = o.stage === 'all' ? [...STAGES] : [o.stage as (typeof STAGES)[number]];
    await runPipeline({ config, runDir, stages, quiet: o.quiet, ckpt: o.ckpt, command: `retrv ${process.argv.slice(2).join(' ')}` });
  });

program
  .command('eval')
  .description('first-stage and reranked Recall@1/5/10 per task on any M-BEIR-format data')
  .requiredOption('--queries <jsonl>', 'M-BEIR queries')
  .requiredOption('--pool <jsonl>', 'M-BEIR candidate pool')
  .requiredOption('--image-root <dir>', 'folder the image paths are relative to')
  .requiredOption('--ckpt <dir>', 'reranker checkpoint (a final/ folder; its ICM is used unless --no-icm)')
  .requiredOption('--out <json>', 'where to write the results')
  .option('--retriever <dir>', 'first-stage retriever checkpoint (default: the retriever of the same run)')
  .option('--k <n>', 'candidates reranked per query', int('--k'), 16)
  .option('--limit <n>', 'evaluate this many queries (spread over the tasks)', int('--limit'))
  .option('--tasks <ids>', 'only the queries of these task ids, e.g. 4,6', taskList)
  .option('--no-icm', 'full tokens for every candidate')
  .option('--no-inspect', 'no details inspection')
  .option('--prefix <text>', 'force the start of every answer, e.g. "<think><inspection-index-start>" (one decision path of a trained model)')
  .action(async (o: { queries: string; pool: string; imageRoot: string; ckpt: string; out: string; retriever?: string; k: number; limit?: number; tasks?: number[]; icm: boolean; inspect: boolean; prefix?: string }) => {
    for (const [flag, path] of [['--queries', o.queries], ['--pool', o.pool], ['--image-root', o.imageRoot]] as const) {
      if (!existsSync(path)) throw new UserError(`${flag} ${path}: no such file or folder`);
    }
    checkCkpt(o.ckpt);
    const retriever = o.retriever ?? siblingRetriever(o.ckpt);
    const { evaluateCheckpoint } = await import('../train/eval/evaluate.ts');
    const { startProgress } = await import('../train/progress.ts');
    const ctx = await getGpu();
    console.log(`adapter: ${ctx.description}`);
    const p = startProgress({ label: 'eval', total: 1 });
    const r = await evaluateCheckpoint({
      queries: o.queries,
      pool: o.pool,
      imageRoot: o.imageRoot,
      ckpt: o.ckpt,
      retriever,
      K: o.k,
      limit: o.limit,
      tasks: o.tasks,
      noIcm: !o.icm,
      noInspect: !o.inspect,
      prefix: o.prefix,
      out: o.out,
      onProgress: (what, done, total) => p.update(0, { [what]: `${done}/${total}` }),
      log: (l) => p.log(l),
    });
    p.stop();
    const pct = (x: Record<string, number>) => ['R@1', 'R@5', 'R@10'].map((k) => `${k} ${x[k].toFixed(1)}`).join('  ');
    console.log(`first stage  ${pct(r.first_stage)}`);
    console.log(`reranked     ${pct(r.reranked)}`);
    console.log(`prompt tokens ${r.prompt_tokens_mean.toFixed(0)}, N_ins ${r.inspections_mean.toFixed(2)}, ${r.rerank_ms_mean.toFixed(0)} ms/query; written to ${o.out}`);
  });

program
  .command('search')
  .description('search a pool with the first stage, rerank the top K with the reasoning model and show its trace')
  .argument('<text>', 'the query text')
  .requiredOption('--ckpt <dir>', 'reranker checkpoint (a final/ folder)')
  .option('--image <path>', 'a query image (PNG or JPEG)')
  .option('--pool <jsonl>', 'M-BEIR candidate pool', 'data/emoji-mbeir/pool.jsonl')
  .option('--image-root <dir>', "folder the pool's image paths are relative to (default: the benchmark's)")
  .option('--retriever <dir>', 'first-stage retriever checkpoint (default: the retriever of the same run)')
  .option('--k <n>', 'candidates to rerank', int('--k'), 16)
  .option('--top <n>', 'results to print', int('--top'), 5)
  .action(async (text: string, o: { ckpt: string; image?: string; pool: string; imageRoot?: string; retriever?: string; k: number; top: number }) => {
    checkCkpt(o.ckpt);
    if (!existsSync(o.pool)) throw new UserError(`--pool ${o.pool}: no such file`, o.pool.startsWith('data/emoji-mbeir') ? 'build the benchmark first: npm run build-data (or retrv demo)' : undefined);
    if (o.image && !existsSync(o.image)) throw new UserError(`--image ${o.image}: no such file`);
    const imageRoot = o.imageRoot ?? benchmarkImageRoot(o.pool);
    const retrieverDir = o.retriever ?? siblingRetriever(o.ckpt);
    const { search } = await import('../train/search.ts');
    await search({ text, image: o.image ? resolve(o.image) : undefined, pool: o.pool, imageRoot, ckpt: o.ckpt, retriever: retrieverDir, K: o.k, top: o.top });
  });

program
  .command('bench')
  .description('the benchmark suites (bench/run.ts; try: retrv bench -- --help)')
  .allowUnknownOption()
  .helpOption(false)
  .argument('[args...]', 'flags for bench/run.ts, e.g. --quick --suite matmul')
  .action((args: string[]) => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'bench/run.ts'), ...args], { stdio: 'inherit' });
    process.exitCode = r.status ?? 1;
  });

function checkCkpt(dir: string): void {
  if (!existsSync(dir)) throw new UserError(`--ckpt ${dir}: no such folder`);
  if (!existsSync(join(dir, 'config.json'))) {
    const hint = existsSync(join(dir, 'final', 'config.json')) ? `did you mean ${join(dir, 'final')}?` : 'give a final/ folder of a training stage, e.g. runs/demo/grpo/final';
    throw new UserError(`--ckpt ${dir}: no config.json there`, hint);
  }
}

/** runs/<run>/<stage>/final -> runs/<run>/retriever/final. */
function siblingRetriever(ckpt: string): string {
  const guess = join(resolve(ckpt), '..', '..', 'retriever', 'final');
  if (!existsSync(join(guess, 'config.json'))) throw new UserError(`no first-stage retriever found beside ${ckpt} (looked in ${guess})`, 'give --retriever <dir>');
  return guess;
}

/** The image root of our benchmark (meta.json beside the pool), else the pool's folder. */
function benchmarkImageRoot(pool: string): string {
  const meta = join(dirname(pool), 'meta.json');
  if (existsSync(meta)) {
    const m = JSON.parse(readFileSync(meta, 'utf8')) as { image_root?: string };
    if (m.image_root && existsSync(m.image_root)) return m.image_root;
    if (existsSync(join(root, 'node_modules'))) return join(root, 'node_modules');
  }
  return isAbsolute(pool) ? dirname(pool) : resolve(dirname(pool));
}

program.parseAsync().then(
  () => process.exit(process.exitCode ?? 0),
  (e: Error) => {
    if (e instanceof NoAdapterError) {
      console.error(`retrv: ${e.message}`);
      console.error('hint: install a Vulkan driver (on Debian/Ubuntu without a GPU: bash scripts/setup-vulkan.sh), then run `retrv doctor`');
      process.exit(2);
    }
    if (e instanceof UserError) {
      console.error(`retrv: ${e.message}`);
      if (e.hint) console.error(`hint: ${e.hint}`);
      process.exit(2);
    }
    const known = /^(config|table row|stage|--|no benchmark|sft|grpo|align)/.test(e.message) || e.name === 'CheckpointError';
    console.error(`retrv: ${e.message}`);
    if (!known && process.env.RETRV_DEBUG) console.error(e.stack);
    else if (!known) console.error('hint: RETRV_DEBUG=1 prints the stack');
    process.exit(1);
  },
);
