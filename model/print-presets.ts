// Prints each preset's parameter counts and FLOPs:  npm run presets
import { PRESETS, summarize } from './presets.ts';

const rows = Object.values(PRESETS).map((p) => {
  const s = summarize(p);
  return {
    preset: p.name,
    'LLM params': `${(s.llmParams / 1e6).toFixed(2)}M`,
    'vision params': `${(s.visionParams / 1e6).toFixed(2)}M`,
    'MFLOP/token (ctx 512)': (s.flopsPerToken / 1e6).toFixed(1),
    'MFLOP/image': (s.flopsPerImage / 1e6).toFixed(1),
    'tokens/image': s.imageTokens,
    'vocab (target)': p.vocabSize,
  };
});
console.table(rows);
