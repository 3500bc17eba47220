// The first half of the pipeline on its own: build the emoji benchmark (M-BEIR format),
// pre-train the multimodal base model, train the first-stage embedding retriever from it
// with InfoNCE, and evaluate Recall@1/5/10 per task on the test split beside two baselines
// (random ranking; character n-gram / mean-colour matching). The stages are those of
// train/pipeline.ts (data, pretrain, retriever, first-stage) with the settings below.
//
//   npm run first-stage -- [--preset tiny] [--run runs/first-stage-tiny] [--pretrain-steps 300]
//                          [--retriever-steps 300] [--batch 16]
//                          [--pooling mean|last|bag-max|mean+bag-max] [--embed-dim 64]
//                          [--keyword-share 0] [--batching mixed|task] [--trigrams 0 (width)]
//                          [--task-weights ''] [--lexical-weight 0]
//                          [--text-expert-steps 0] [--text-expert-weight 0.2]
//                          [--eval-per-task 0 (all)] [--seed 1] [--quiet]
//
// Every stage resumes from its checkpoint when interrupted, and is skipped when its
// final output exists. The recall table goes to <run>/first-stage/first-stage-recall.json.
import { parseArgs } from 'node:util';
import { POOLINGS, type Pooling } from '../model/retriever.ts';
import { getPreset } from '../model/presets.ts';
import { PIPELINE_CONFIGS, type PipelineConfig, checkRetrieverSettings, runPipeline } from './pipeline.ts';
import { RETRIEVER_BATCHINGS, type RetrieverBatching } from './retriever.ts';

const { values: a } = parseArgs({
  options: {
    data: { type: 'string', default: 'data/emoji-mbeir' },
    preset: { type: 'string', default: 'tiny' },
    run: { type: 'string' },
    'pretrain-steps': { type: 'string', default: '300' },
    'retriever-steps': { type: 'string', default: '300' },
    batch: { type: 'string', default: '16' },
    pooling: { type: 'string', default: 'mean' },
    'embed-dim': { type: 'string', default: '64' },
    'keyword-share': { type: 'string', default: '0' },
    batching: { type: 'string', default: 'mixed' },
    trigrams: { type: 'string', default: '0' },
    'task-weights': { type: 'string', default: '' },
    'lexical-weight': { type: 'string', default: '0' },
    'text-expert-steps': { type: 'string', default: '0' },
    'text-expert-weight': { type: 'string', default: '0.2' },
    'eval-per-task': { type: 'string', default: '0' },
    seed: { type: 'string', default: '1' },
    quiet: { type: 'boolean', default: false },
  },
});
const num = (name: string, v: string | undefined, min = 0): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${v}`);
  return n;
};
const preset = getPreset(a.preset!);
if (!POOLINGS.includes(a.pooling as Pooling)) throw new Error(`--pooling must be one of ${POOLINGS.join(', ')}, got ${a.pooling}`);
if (!RETRIEVER_BATCHINGS.includes(a.batching as RetrieverBatching)) throw new Error(`--batching must be one of ${RETRIEVER_BATCHINGS.join(', ')}, got ${a.batching}`);
const batch = num('batch', a.batch, 2);
const share = Number(a['keyword-share']);
if (!(share >= 0 && share < 1)) throw new Error(`--keyword-share must be a number from 0 (none) to below 1, got ${a['keyword-share']}`);
const expertSteps = num('text-expert-steps', a['text-expert-steps']);
const base = PIPELINE_CONFIGS[preset.name] ?? PIPELINE_CONFIGS.tiny;
const config: PipelineConfig = {
  ...base,
  preset: preset.name,
  data: a.data!,
  seed: num('seed', a.seed),
  pretrain: { steps: num('pretrain-steps', a['pretrain-steps'], 1), batch, lr: 3e-3 },
  retriever: { steps: num('retriever-steps', a['retriever-steps'], 1), batch, lr: 1e-3, pooling: a.pooling as Pooling, batching: a.batching as RetrieverBatching, embedDim: num('embed-dim', a['embed-dim'], 1), keywordShare: share, trigramDim: num('trigrams', a.trigrams), trigramBuckets: 8192, taskWeights: a['task-weights']!, lexicalWeight: Number(a['lexical-weight']), textExpert: { ...base.retriever.textExpert, batch, steps: expertSteps, weight: expertSteps ? Number(a['text-expert-weight']) : 0 }, textImageExpert: base.retriever.textImageExpert },
  firstStage: { perTask: num('eval-per-task', a['eval-per-task']), crossFit: 0 },
};
// The flags --lexical-weight, --task-weights and --text-expert-* fill these settings.
checkRetrieverSettings(config.retriever, 'npm run first-stage: retriever');
await runPipeline({
  config,
  runDir: a.run ?? `runs/first-stage-${preset.name}`,
  stages: ['data', 'pretrain', 'retriever', 'first-stage'],
  quiet: a.quiet || !!process.env.CI,
});
