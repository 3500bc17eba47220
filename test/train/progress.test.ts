// Progress feedback (quiet lines, bars on a fake terminal, clean stop on error) and the
// run's metrics log (append, read back with broken lines, series for the report).
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type ProgressStream, defaultQuiet, formatDuration, formatFigure, formatFigures, startProgress, withProgress } from '../../train/progress.ts';
import { appendLog, logPathOf, readLog, seriesByStage, seriesOf, stagesOf } from '../../train/run-log.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-progress-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A stream that keeps what is written; a TTY of 100 columns when asked. */
function sink(tty = false): ProgressStream & { text: () => string } {
  const chunks: string[] = [];
  return { isTTY: tty, columns: tty ? 100 : undefined, write: (s: string) => chunks.push(s), text: () => chunks.join('') };
}

/** A clock the test moves by hand. */
function clock(start = 1_000_000) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

// eslint-disable-next-line no-control-regex
const plain = (s: string) => s.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[78]/g, '');

describe('progress: quiet mode', () => {
  it('is chosen for a non-TTY or under CI, and can be forced', () => {
    expect(defaultQuiet({ write() {}, isTTY: false }, {})).toBe(true);
    expect(defaultQuiet({ write() {}, isTTY: true }, {})).toBe(false);
    expect(defaultQuiet({ write() {}, isTTY: true }, { CI: 'true' })).toBe(true);
    expect(defaultQuiet({ write() {}, isTTY: true }, { CI: '1' })).toBe(true);
    expect(defaultQuiet({ write() {}, isTTY: true }, { CI: 'false' })).toBe(false);
    expect(defaultQuiet({ write() {}, isTTY: true }, { CI: '' })).toBe(false);
    const out = sink(true);
    const p = startProgress({ label: 'x', total: 3, quiet: true, stream: out, env: {} });
    expect(p.quiet).toBe(true);
    p.stop();
    expect(out.text()).not.toContain('[');
  });

  it('prints the first step, every N steps and the last step, with an ETA', () => {
    const out = sink();
    const c = clock();
    const p = startProgress({ label: 'sft', total: 100, everySteps: 25, everySeconds: 60, stream: out, now: c.now, env: {} });
    for (let s = 1; s <= 100; s++) {
      c.advance(2000); // 2 s per step
      p.update(s, { loss: 4 / s, 'tok/s': 812.4, note: s === 30 ? 'warm' : null });
    }
    p.stop();
    const lines = out.text().trimEnd().split('\n');
    // the first step, then every 25 (at 2 s/step the 60 s rule never comes first), the last
    expect(lines.map((l) => l.split(' ')[1])).toEqual(['1/100', '25/100', '50/100', '75/100', '100/100']);
    // at step 25: 50 s for 25 steps -> 2 s/step x 75 left = 150 s = 2m30s
    expect(lines[1]).toBe('sft 25/100 (25%)  eta 2m30s  loss 0.16  tok/s 812.4');
    expect(lines[4]).toContain('eta 0s');
    expect(lines[4]).toContain('loss 0.04');
  });

  it('prints on time when steps are slow, and the ETA of a resumed run counts only its own steps', () => {
    const out = sink();
    const c = clock();
    const p = startProgress({ label: 'grpo', total: 1000, start: 900, everySteps: 1000, everySeconds: 30, stream: out, now: c.now, env: {} });
    for (let s = 901; s <= 910; s++) {
      c.advance(10_000); // 10 s per step
      p.update(s, { reward: 0.5 });
    }
    p.stop();
    const lines = out.text().trimEnd().split('\n');
    // 901 (first); then 30 s after the last line: 904, 907, 910 (also the stop line)
    expect(lines.map((l) => l.split(' ')[1])).toEqual(['901/1000', '904/1000', '907/1000', '910/1000']);
    // at 904: 4 steps in 40 s since the start -> 10 s x 96 left = 960 s = 16m00s
    expect(lines[1]).toContain('eta 16m00s');
  });

  it('fails cleanly: the last state, then the error on its own line', async () => {
    const out = sink();
    const err = sink();
    const c = clock();
    await expect(
      withProgress({ label: 'align', total: 10, stream: out, errorStream: err, now: c.now, env: {} }, async (p) => {
        c.advance(1000);
        p.update(1, { loss: 2 });
        c.advance(3000);
        p.update(4, { loss: 1.5 }); // not due (every 50 steps / 30 s): shown by the stop
        throw new Error('loss is NaN at step 4');
      }),
    ).rejects.toThrow('loss is NaN');
    // eta: 1 s x 9 left = 9 s; then 4 s for 4 steps -> 1 s x 6 left = 6 s
    expect(out.text()).toBe('align 1/10 (10%)  eta 9s  loss 2\nalign 4/10 (40%)  eta 6s  loss 1.5\n');
    expect(err.text()).toBe('align: stopped at step 4/10: loss is NaN at step 4\n');
  });

  it('rejects bad arguments with one clear error', () => {
    expect(() => startProgress({ label: 'x', total: -1 })).toThrow(/total must be a non-negative integer/);
    expect(() => startProgress({ label: 'x', total: 5, start: 6, quiet: true, stream: sink() })).toThrow(/start must be an integer in \[0, 5\]/);
    const p = startProgress({ label: 'x', total: 5, quiet: true, stream: sink() });
    expect(() => p.update(6)).toThrow(/step must be an integer in \[0, 5\], got 6/);
  });
});

describe('progress: bars', () => {
  it('draws a bar with the label, counts, ETA and figures, logs above it and ends its line', () => {
    const out = sink(true);
    const c = clock();
    const p = startProgress({ label: 'pretrain', total: 20, stream: out, now: c.now, env: {} });
    expect(p.quiet).toBe(false);
    c.advance(3000);
    p.update(1, { loss: 3.25 });
    c.advance(3000);
    p.update(2, { loss: 3.0, 'tok/s': 1500 });
    p.log('checkpoint saved');
    c.advance(3000);
    p.update(3, { loss: 2.5 });
    p.stop();
    p.stop(); // twice is harmless
    const text = plain(out.text());
    // cli-progress throttles redraws; the stop() render shows the final state:
    // 3 s/step x 17 left = 51 s
    expect(text).toMatch(/pretrain \[=+-+\] 3\/20 15% \| eta 51s \| loss 2\.5\n$/);
    expect(text).toContain('checkpoint saved\n');
    expect(text.indexOf('checkpoint saved')).toBeLessThan(text.lastIndexOf('3/20'));
    // the bar never exceeds the terminal width
    for (const segment of text.split(/[\r\n]/)) expect(segment.length).toBeLessThanOrEqual(100);
  });

  it('stops the bar before printing an error', () => {
    const out = sink(true);
    const err = sink();
    const p = startProgress({ label: 'sft', total: 5, stream: out, errorStream: err, env: {} });
    p.update(2, { loss: 1 });
    p.fail(new Error('out of GPU memory'));
    expect(out.text().endsWith('\n')).toBe(true);
    expect(err.text()).toBe('sft: stopped at step 2/5: out of GPU memory\n');
    p.update(3); // ignored after stop
    expect(plain(out.text())).not.toContain('3/5');
  });

  it('formats figures briefly', () => {
    expect(formatFigure(0.123456)).toBe('0.1235');
    expect(formatFigure(1234.56)).toBe('1235');
    expect(formatFigure(0.00001234)).toBe('1.23e-5');
    expect(formatFigure(42)).toBe('42');
    expect(formatFigure('warm')).toBe('warm');
    expect(formatFigures({ loss: 0.5, skip: undefined, N_ins: 1.25, acc: null })).toBe('loss 0.5  N_ins 1.25');
    expect(formatDuration(45)).toBe('45s');
    expect(formatDuration(725)).toBe('12m05s');
    expect(formatDuration(3 * 3600 + 20 * 60 + 10)).toBe('3h20m');
  });
});

describe('run log', () => {
  it('appends records and reads back the lines sft.ts and align.ts write', () => {
    const run = join(dir, 'run-a');
    const path = logPathOf(run);
    expect(path).toBe(join(run, 'log.jsonl'));
    appendLog(path, { stage: 'pretrain', step: 0, loss: 5, tokens: 100 });
    // the formats of train/align.ts and train/sft.ts
    appendFileSync(path, JSON.stringify({ stage: 'align', step: 0, loss: 0.9, kl: 0.9, ce: null, lr: 1e-3, ms: 5, full_tokens: 10, compressed_tokens: 4 }) + '\n');
    appendFileSync(path, JSON.stringify({ stage: 'sft', step: 0, steps: 3, loss: 2.5, lr: 1e-3, ms: 7, tokens: 50, traceTokens: 20, promptTokens: 30, inspections: 1 }) + '\n');
    appendLog(path, { stage: 'sft', step: 1, loss: 2.0 });
    const { records, skipped } = readLog(path, { warn: null });
    expect(skipped).toEqual([]);
    expect(records.length).toBe(4);
    expect(records[0]).toEqual({ stage: 'pretrain', step: 0, loss: 5, tokens: 100 });
    expect(Object.keys(records[3]).slice(0, 2)).toEqual(['stage', 'step']);
    expect(stagesOf(records)).toEqual(['pretrain', 'align', 'sft']);
    expect(seriesOf(records, 'sft', 'loss')).toEqual([[0, 2.5], [1, 2.0]]);
    expect(seriesOf(records, 'align', 'ce')).toEqual([]); // null is no value
    expect(() => appendLog(path, { stage: '', step: 0 })).toThrow(/stage must be a non-empty string/);
    expect(() => appendLog(path, { stage: 'x', step: 1.5 })).toThrow(/step must be a non-negative integer, got 1.5/);
    expect(readLog(join(dir, 'nothing', 'log.jsonl'))).toEqual({ records: [], skipped: [] });
  });

  it('skips and counts broken lines, naming file:line', () => {
    const path = join(dir, 'broken.jsonl');
    writeFileSync(
      path,
      [
        '{"stage":"sft","step":0,"loss":3}',
        '{"stage":"sft","step":1,"lo', // torn by a crash
        '',
        '[1,2]',
        '{"step":2,"loss":1}',
        '{"stage":"sft","step":-1}',
        '{"stage":"sft","step":3,"loss":2}',
      ].join('\n'),
    );
    const warnings: string[] = [];
    const { records, skipped } = readLog(path, { warn: (l) => warnings.push(l) });
    expect(records.map((r) => r.step)).toEqual([0, 3]);
    expect(skipped).toEqual([
      { line: 2, reason: 'not valid JSON' },
      { line: 4, reason: 'not a JSON object' },
      { line: 5, reason: 'no "stage" string' },
      { line: 6, reason: 'no "step" (a non-negative integer)' },
    ]);
    expect(warnings).toEqual([`run log: skipped 4 broken lines: ${path}:2 (not valid JSON), ${path}:4 (not a JSON object), ${path}:5 (no "stage" string), ...`]);
  });

  it('keeps the last record of a step replayed after a resume, sorted by step, one series per stage', () => {
    const path = join(dir, 'resumed', 'log.jsonl');
    for (const [step, loss] of [[0, 4], [1, 3], [2, 2.9], [3, 2.8]]) appendLog(path, { stage: 'sft', step, loss });
    // crash after step 3, resume from the checkpoint at step 2: steps 2 and 3 are redone
    for (const [step, loss] of [[2, 2.5], [3, 2.25], [4, 2]]) appendLog(path, { stage: 'sft', step, loss });
    appendLog(path, { stage: 'grpo', step: 0, loss: 0.1, reward: 0.25 });
    appendLog(path, { stage: 'grpo', step: 1, loss: 0.2, reward: 0.5 });
    const { records } = readLog(path);
    expect(seriesOf(records, 'sft', 'loss')).toEqual([[0, 4], [1, 3], [2, 2.5], [3, 2.25], [4, 2]]);
    expect(seriesByStage(records, 'loss')).toEqual([
      { name: 'sft', points: [[0, 4], [1, 3], [2, 2.5], [3, 2.25], [4, 2]] },
      { name: 'grpo', points: [[0, 0.1], [1, 0.2]] },
    ]);
    expect(seriesByStage(records, 'reward')).toEqual([{ name: 'grpo', points: [[0, 0.25], [1, 0.5]] }]);
    expect(readFileSync(path, 'utf8').split('\n').length).toBe(10); // 9 lines + the final newline
  });
});
