// The small benchmark build, tokenizer and tiny model config that the SFT and GRPO tests
// share: a tokenizer trained on the names and the trace wording (as the real one is), and
// SFT data over two tasks (image + skin tone -> image, text -> text).
import type { MllmConfig } from '../../model/mllm.ts';
import { PRESETS, withVocab } from '../../model/presets.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { candidateList, emojiIndex, synthesizeTrace } from '../../train/data/cot.ts';
import { buildEmojiBenchmark } from '../../train/data/emoji-benchmark.ts';
import { ImageStore } from '../../train/data/inputs.ts';
import type { SftData } from '../../train/sft.ts';

export const bench = buildEmojiBenchmark({ seed: 1, maxPerTask: 20 });
export const attributes = new Map(bench.attributes.map((a) => [a.did, a]));
export const queryAttributes = new Map(bench.queryAttributes.map((a) => [a.qid, a]));
export const emojis = emojiIndex(bench.attributes);
export const K = 4;
export const SYSTEM = 'Rank.';

const sample = bench.queries.train.map((q) => {
  const c = candidateList(q, { K, seed: 1, pool: bench.taskPools.get(q.task_id)!, attributes });
  return synthesizeTrace(q, queryAttributes.get(q.qid)!, c, attributes, emojis, { seed: 1 }).text;
});
export const tok = trainBpe([...sample, ...bench.attributes.map((a) => a.name), SYSTEM], { vocabSize: 1024 });
export const cfg = withVocab(PRESETS.tiny, tok.vocabSize);
export const config: MllmConfig = { architectures: ['RetrvMllm'], preset: 'tiny', llm: cfg.llm, vision: cfg.vision, imageSize: PRESETS.tiny.imageSize };
export const images = new ImageStore({ root: bench.meta.image_root, patchSize: cfg.vision.patchSize, mergeSize: cfg.vision.mergeSize, size: config.imageSize });
export const data: SftData = {
  queries: bench.queries.train.filter((q) => q.task_id === 6 || q.task_id === 1),
  queryAttributes,
  attributes,
  byDid: new Map(bench.pool.map((c) => [c.did, c])),
  taskPools: bench.taskPools,
  images,
};
