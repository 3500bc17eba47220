// Atomic file writes: a temp file in the same folder renamed over the target, so a reader
// (or a crash) never sees half a file; the temp file is removed when the write fails.
// Sync forms for small state files written between steps; an async form for the rest.
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { type FileHandle, mkdir, open, rename, unlink } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

const tempName = (path: string) => `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;

export function writeFileAtomic(path: string, text: string): void {
  mkdirSync(dirname(resolve(path)), { recursive: true });
  const tmp = tempName(path);
  try {
    writeFileSync(tmp, text);
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

/** Pretty-printed JSON with a final newline. */
export function writeJsonAtomic(path: string, value: unknown): void {
  writeFileAtomic(path, JSON.stringify(value, null, 2) + '\n');
}

/** Opens a temp file, lets `write` fill it, then renames it over `path`. */
export async function writeHandleAtomic(path: string, write: (fh: FileHandle) => Promise<void>): Promise<void> {
  await mkdir(dirname(resolve(path)), { recursive: true });
  const tmp = tempName(path);
  const fh = await open(tmp, 'w');
  try {
    await write(fh);
    await fh.close();
    await rename(tmp, path);
  } catch (e) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw e;
  }
}

export async function writeTextAtomic(path: string, text: string): Promise<void> {
  await writeHandleAtomic(path, async (fh) => {
    await fh.write(text);
  });
}
