// Checkpoint folders: bit-exact round trip with Qwen2 names, and clear errors for
// corrupted, truncated or mismatched files.
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CheckpointError, loadCheckpointTensors, readConfig, saveCheckpoint } from '../../model/checkpoint.ts';
import { type LlmConfig, initParameters, parameterShapes } from '../../model/llm.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-ckpt-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const config: LlmConfig = { vocabSize: 40, hidden: 16, layers: 2, heads: 4, kvHeads: 2, mlp: 24, ropeTheta: 10000, rmsEps: 1e-6, tieEmbeddings: true };

describe('checkpoint', () => {
  it('round-trips every parameter bit for bit, with Qwen2 names and the config', async () => {
    const params = initParameters(config, 5);
    const ck = join(dir, 'a');
    await saveCheckpoint(ck, params, config);
    expect(readConfig<LlmConfig>(ck)).toEqual(config);
    const loaded = await loadCheckpointTensors(ck, parameterShapes(config));
    expect([...loaded.keys()].sort()).toEqual([...params.keys()].sort());
    expect(loaded.has('model.layers.1.self_attn.q_proj.weight')).toBe(true);
    for (const [name, t] of params) {
      const a = new Uint32Array((await t.toArray()).buffer);
      const b = new Uint32Array((await loaded.get(name)!.toArray()).buffer);
      expect(b, name).toEqual(a);
    }
    for (const t of [...params.values(), ...loaded.values()]) t.dispose();
  });

  it('names every missing, unexpected and mismatched tensor', async () => {
    const params = initParameters(config, 6);
    const ck = join(dir, 'b');
    await saveCheckpoint(ck, params, config);
    const other = parameterShapes({ ...config, mlp: 32, tieEmbeddings: false });
    const err = await loadCheckpointTensors(ck, other).catch((e) => e);
    expect(err).toBeInstanceOf(CheckpointError);
    expect(err.message).toMatch(/missing lm_head\.weight \[40, 16\]/);
    expect(err.message).toMatch(/model\.layers\.0\.mlp\.up_proj\.weight has shape \[24, 16\], expected \[32, 16\]/);
    for (const t of params.values()) t.dispose();
  });

  it('a truncated or corrupted file is a clear error naming the file', async () => {
    const params = initParameters(config, 7);
    const ck = join(dir, 'c');
    await saveCheckpoint(ck, params, config);
    const file = join(ck, 'model.safetensors');
    const bytes = readFileSync(file);
    truncateSync(file, bytes.length - 100);
    await expect(loadCheckpointTensors(ck, parameterShapes(config))).rejects.toThrow(/model\.safetensors/);
    writeFileSync(file, Buffer.concat([Buffer.from([8, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"a":oops')]));
    await expect(loadCheckpointTensors(ck, parameterShapes(config))).rejects.toThrow(/model\.safetensors/);
    writeFileSync(join(ck, 'config.json'), '{ not json');
    expect(() => readConfig(ck)).toThrow(/config\.json: invalid JSON/);
    expect(() => readConfig(join(dir, 'nowhere'))).toThrow(/no config\.json/);
    for (const t of params.values()) t.dispose();
  });
});
