// Progress feedback for long work: one bar per stage (cli-progress) with an ETA and the
// live figures the caller passes (loss, tok/s, reward, accuracy, N_ins, ...), or, in quiet
// mode, one plain line every N steps or S seconds (and on the first and last step), which
// reads well in CI logs.
//
// Choices:
// - Quiet is picked automatically when the output stream is not a TTY or CI is set (any
//   value but "" / "0" / "false"); `quiet: true | false` forces either.
// - The ETA is ours in both modes (time per step since start() times the steps left), so a
//   resumed run (start > 0) does not count the steps it skipped as instant (it is passed
//   to the bar as {eta_left}: cli-progress's own {eta} would hide a payload of that name).
// - Bars go to stdout (where the rest of the training chatter goes); the bar keeps to one
//   line (cut at the terminal width, line wrapping left on so an interrupted process never
//   leaves the terminal without it). log() prints a line above the bar without breaking it.
// - fail(err) stops the bar, ends its line and prints the error on its own line (stderr);
//   withProgress() does that for a function that throws, and rethrows.
import { createRequire } from 'node:module';

/** Live figures shown next to the bar; null/undefined entries are left out. */
export type Figures = Readonly<Record<string, number | string | null | undefined>>;

/** The output a Progress writes to (process.stdout, or a test's fake). */
export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  /** What runs, e.g. "sft" (first thing on every line). */
  label: string;
  /** Steps in all. */
  total: number;
  /** Steps already done (a resumed run); default 0. */
  start?: number;
  /** Force quiet (true) or bars (false); default: quiet unless a TTY outside CI. */
  quiet?: boolean;
  /** Quiet mode: a line every this many steps (default 50)... */
  everySteps?: number;
  /** ...or when this many seconds passed since the last line (default 30). */
  everySeconds?: number;
  /** Default process.stdout. */
  stream?: ProgressStream;
  /** Where fail() prints the error; default process.stderr. */
  errorStream?: ProgressStream;
  /** Environment read for CI (default process.env). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Clock in ms (tests); default Date.now. */
  now?: () => number;
}

export interface Progress {
  readonly quiet: boolean;
  /** `step` steps are done (1..total); figures replace the previous ones. */
  update(step: number, figures?: Figures): void;
  /** A line of its own (above the bar in bar mode). */
  log(line: string): void;
  /** Ends the bar (or prints the last quiet line if the last step had none). */
  stop(): void;
  /** Stops and prints `label: stopped at step s/total: message` on its own line. */
  fail(err: unknown): void;
}

// cli-progress ships no types; this is the part of its API we use.
interface CliBar {
  start(total: number, startValue: number, payload: Record<string, string>): void;
  update(value: number, payload: Record<string, string>): void;
  stop(): void;
}
interface CliProgress {
  SingleBar: new (options: Record<string, unknown>) => CliBar;
}
const cliProgress = createRequire(import.meta.url)('cli-progress') as CliProgress;

/** True when bars would not render well: not a TTY, or running under CI. */
export function defaultQuiet(stream: ProgressStream = process.stdout, env: Readonly<Record<string, string | undefined>> = process.env): boolean {
  const ci = env.CI;
  const underCi = ci !== undefined && ci !== '' && ci !== '0' && ci.toLowerCase() !== 'false';
  return underCi || stream.isTTY !== true;
}

/** A figure as a short string: 4 significant digits, integers above 1000, exponent for tiny values. */
export function formatFigure(v: number | string): string {
  if (typeof v === 'string') return v;
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v) || Math.abs(v) >= 1000) return Math.round(v).toString();
  if (v !== 0 && Math.abs(v) < 1e-3) return v.toExponential(2);
  return Number(v.toPrecision(4)).toString();
}

/** `loss 0.4321  tok/s 812  N_ins 1.25` */
export function formatFigures(figures: Figures): string {
  return Object.entries(figures)
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k} ${formatFigure(v!)}`)
    .join('  ');
}

/** Seconds as 45s, 12m05s, 3h20m. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

const errorMessage = (err: unknown): string => (err instanceof Error ? err.message : String(err));

export function startProgress(o: ProgressOptions): Progress {
  if (typeof o.label !== 'string' || o.label === '') throw new Error('startProgress: label must be a non-empty string');
  if (!Number.isInteger(o.total) || o.total < 0) throw new Error(`startProgress(${o.label}): total must be a non-negative integer, got ${o.total}`);
  const first = o.start ?? 0;
  if (!Number.isInteger(first) || first < 0 || first > o.total) throw new Error(`startProgress(${o.label}): start must be an integer in [0, ${o.total}], got ${o.start}`);
  const stream = o.stream ?? process.stdout;
  const errorStream = o.errorStream ?? process.stderr;
  const now = o.now ?? Date.now;
  const quiet = o.quiet ?? defaultQuiet(stream, o.env ?? process.env);
  const everySteps = o.everySteps ?? 50;
  const everySeconds = o.everySeconds ?? 30;
  const t0 = now();
  let step = first;
  let figures: Figures = {};
  let stopped = false;
  let lastLineAt = t0; // quiet: time of the last line
  let lastLineStep = -1; // quiet: step of the last line

  const eta = (): string => {
    const done = step - first;
    if (step >= o.total) return '0s';
    if (done <= 0) return '?';
    return formatDuration((((now() - t0) / 1000) * (o.total - step)) / done);
  };
  const pct = () => (o.total === 0 ? 100 : Math.floor((100 * step) / o.total));
  const quietLine = () => {
    const f = formatFigures(figures);
    stream.write(`${o.label} ${step}/${o.total} (${pct()}%)  eta ${eta()}${f ? '  ' + f : ''}\n`);
    lastLineAt = now();
    lastLineStep = step;
  };

  let bar: CliBar | null = null;
  const payload = () => ({ label: o.label, eta_left: eta(), figures: formatFigures(figures) });
  if (!quiet) {
    bar = new cliProgress.SingleBar({
      stream,
      format: '{label} [{bar}] {value}/{total} {percentage}% | eta {eta_left} | {figures}',
      barsize: 24,
      linewrap: true,
      hideCursor: false,
      fps: 5,
    });
    bar.start(o.total, first, payload());
  }

  const check = (s: number) => {
    if (!Number.isInteger(s) || s < 0 || s > o.total) throw new Error(`progress(${o.label}): step must be an integer in [0, ${o.total}], got ${s}`);
  };

  return {
    quiet,
    update(s, f) {
      if (stopped) return;
      check(s);
      step = s;
      if (f) figures = f;
      if (bar) {
        bar.update(step, payload());
        return;
      }
      const due = step === o.total || lastLineStep < 0 || step % everySteps === 0 || (now() - lastLineAt) / 1000 >= everySeconds;
      if (due && step !== lastLineStep) quietLine();
    },
    log(line) {
      if (bar && !stopped) {
        // clear the bar's line, print, and let the next render redraw the bar under it;
        // \x1b7 re-saves the cursor at the bar's new line, where cli-progress's stop()
        // restores it (else it would jump back over the printed lines)
        stream.write(`\r\x1b[2K${line}\n\x1b7`);
        bar.update(step, payload());
      } else stream.write(line + '\n');
    },
    stop() {
      if (stopped) return;
      stopped = true;
      if (bar) bar.stop(); // final render, then a newline
      else if (step !== lastLineStep) quietLine();
    },
    fail(err) {
      const at = step;
      this.stop();
      errorStream.write(`${o.label}: stopped at step ${at}/${o.total}: ${errorMessage(err)}\n`);
    },
  };
}

/** Runs fn with a progress display; on error the display fails cleanly and the error is rethrown. */
export async function withProgress<T>(o: ProgressOptions, fn: (p: Progress) => Promise<T>): Promise<T> {
  const p = startProgress(o);
  try {
    const out = await fn(p);
    p.stop();
    return out;
  } catch (err) {
    p.fail(err);
    throw err;
  }
}
