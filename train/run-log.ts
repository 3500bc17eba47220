// The metrics log of a run: runs/<run>/log.jsonl, one JSON object per line, each with
// `stage` (pretrain, retriever, align, sft, grpo, eval, ...) and `step`, plus whatever
// figures the stage records (loss, lr, ms, tokens, reward, ...), the format train/pretrain.ts,
// train/align.ts and train/sft.ts already append.
//
// Choices:
// - Appends are one appendFileSync of a whole line, so a crash leaves at most one torn last
//   line; the reader skips broken lines, counts them and warns with file:line, instead of
//   failing a report over one bad line.
// - A resumed run redoes the steps after its last checkpoint and appends them again; a
//   series keeps the LAST record of each (stage, step), so curves show what the final
//   weights went through.
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Series } from './report/types.ts';

export interface LogRecord {
  stage: string;
  step: number;
  [field: string]: unknown;
}

export interface SkippedLine {
  line: number;
  reason: string;
}

export interface RunLog {
  records: LogRecord[];
  skipped: SkippedLine[];
}

/** runs/<run>/log.jsonl for a run directory. */
export function logPathOf(runDir: string): string {
  return join(runDir, 'log.jsonl');
}

/** Appends one record as a line (creating the folder and file when missing). */
export function appendLog(path: string, record: LogRecord): void {
  if (typeof record.stage !== 'string' || record.stage === '') throw new Error(`appendLog(${path}): stage must be a non-empty string, got ${JSON.stringify(record.stage)}`);
  if (!Number.isInteger(record.step) || record.step < 0) throw new Error(`appendLog(${path}): step must be a non-negative integer, got ${JSON.stringify(record.step)}`);
  const { stage, step, ...rest } = record;
  mkdirSync(dirname(path), { recursive: true });
  appendFileSync(path, JSON.stringify({ stage, step, ...rest }) + '\n');
}

function problem(value: unknown): string | null {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return 'not a JSON object';
  const r = value as Record<string, unknown>;
  if (typeof r.stage !== 'string' || r.stage === '') return 'no "stage" string';
  if (!Number.isInteger(r.step) || (r.step as number) < 0) return 'no "step" (a non-negative integer)';
  return null;
}

/**
 * Reads a log; a missing file is an empty log. Broken lines (not JSON, not an object, no
 * stage or step) are skipped and listed; `warn` (default console.warn) gets one line naming
 * file:line of the first few and how many there were.
 */
export function readLog(path: string, opts: { warn?: ((line: string) => void) | null } = {}): RunLog {
  const records: LogRecord[] = [];
  const skipped: SkippedLine[] = [];
  if (!existsSync(path)) return { records, skipped };
  const lines = readFileSync(path, 'utf8').split('\n');
  lines.forEach((text, i) => {
    if (text.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      skipped.push({ line: i + 1, reason: 'not valid JSON' });
      return;
    }
    const why = problem(value);
    if (why) skipped.push({ line: i + 1, reason: why });
    else records.push(value as LogRecord);
  });
  const warn = opts.warn === undefined ? (line: string) => console.warn(line) : opts.warn;
  if (skipped.length && warn) {
    const shown = skipped.slice(0, 3).map((s) => `${path}:${s.line} (${s.reason})`).join(', ');
    warn(`run log: skipped ${skipped.length} broken line${skipped.length > 1 ? 's' : ''}: ${shown}${skipped.length > 3 ? ', ...' : ''}`);
  }
  return { records, skipped };
}

/** Stages in order of first appearance. */
export function stagesOf(records: readonly LogRecord[]): string[] {
  return [...new Set(records.map((r) => r.stage))];
}

/**
 * [step, value] points of one numeric field of one stage, sorted by step; the last record
 * of a step wins (resumed runs); records without a finite number in the field are left out.
 */
export function seriesOf(records: readonly LogRecord[], stage: string, field: string): [number, number][] {
  const byStep = new Map<number, number>();
  for (const r of records) {
    if (r.stage !== stage) continue;
    const v = r[field];
    if (typeof v === 'number' && Number.isFinite(v)) byStep.set(r.step, v);
    else byStep.delete(r.step); // a later record without the figure replaces an earlier one
  }
  return [...byStep.entries()].sort((a, b) => a[0] - b[0]);
}

/** One series per stage that has the field, named after the stage (e.g. loss of pretrain, sft, grpo). */
export function seriesByStage(records: readonly LogRecord[], field: string): Series[] {
  return stagesOf(records)
    .map((stage) => ({ name: stage, points: seriesOf(records, stage, field) }))
    .filter((s) => s.points.length > 0);
}
