// Writes a report file atomically: render first (a bad input throws before anything is
// written), then a temp file in the same folder renamed over the target.
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { renderReport } from './render.ts';
import type { ReportData } from './types.ts';

export function writeReport(path: string, data: ReportData): void {
  const html = renderReport(data);
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, html);
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}
