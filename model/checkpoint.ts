// Model checkpoints: a folder with `model.safetensors` (Qwen2-style tensor names) and
// `config.json`. Loading checks every name and shape against what the model expects and
// reports all problems at once: missing, unexpected and mismatched tensors.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Tensor, loadSafetensors, saveSafetensors, shapeStr } from '../runtime/index.ts';

export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointError';
  }
}

/** Writes a JSON file of a checkpoint atomically (temp file, then rename). */
export function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, JSON.stringify(value, null, 2) + '\n');
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** Saves parameters and config into `dir` (created if needed). */
export async function saveCheckpoint(dir: string, params: Map<string, Tensor>, config: object, metadata: Record<string, string> = {}): Promise<void> {
  mkdirSync(dir, { recursive: true });
  await saveSafetensors(join(dir, 'model.safetensors'), Object.fromEntries(params), { format: 'pt', ...metadata });
  writeJsonAtomic(join(dir, 'config.json'), config);
}

/** Reads a checkpoint folder's config.json. */
export function readConfig<C>(dir: string): C {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) throw new CheckpointError(`checkpoint ${dir}: no config.json (is this a checkpoint folder?)`);
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as C;
  } catch (e) {
    throw new CheckpointError(`checkpoint ${path}: invalid JSON (${(e as Error).message})`);
  }
}

/**
 * Loads `model.safetensors` from `dir` and checks it against `expected` (name -> shape).
 * Every tensor is returned as f32; on any problem nothing stays allocated.
 */
export async function loadCheckpointTensors(dir: string, expected: Record<string, number[]>): Promise<Map<string, Tensor>> {
  const path = join(dir, 'model.safetensors');
  if (!existsSync(path)) throw new CheckpointError(`checkpoint ${dir}: no model.safetensors`);
  const { tensors } = await loadSafetensors(path, { dtype: 'f32' });
  const problems: string[] = [];
  for (const [name, shape] of Object.entries(expected)) {
    const t = tensors[name];
    if (!t) problems.push(`missing ${name} ${shapeStr(shape)}`);
    else if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      problems.push(`${name} has shape ${shapeStr(t.shape)}, expected ${shapeStr(shape)}`);
    }
  }
  for (const name of Object.keys(tensors)) if (!(name in expected)) problems.push(`unexpected ${name}`);
  if (problems.length) {
    for (const t of Object.values(tensors)) t.dispose();
    const shown = problems.slice(0, 20).join('\n  ');
    throw new CheckpointError(`checkpoint ${path} does not match the model:\n  ${shown}${problems.length > 20 ? `\n  ... and ${problems.length - 20} more` : ''}`);
  }
  return new Map(Object.entries(tensors));
}
