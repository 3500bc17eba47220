// Writes a report file atomically: render first (a bad input throws before anything is
// written), then a temp file in the same folder renamed over the target.
import { writeFileAtomic } from '../atomic-write.ts';
import { renderReport } from './render.ts';
import type { ReportData } from './types.ts';

export function writeReport(path: string, data: ReportData): void {
  writeFileAtomic(path, renderReport(data));
}
