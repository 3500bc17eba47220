// The HTML report of a pipeline run (train/pipeline.ts): run facts, training curves from
// each stage's log.jsonl, the first-stage recall table, the reranking table, and example
// test queries with their candidates and the full model's reasoning trace.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MbeirCandidate } from './data/mbeir-types.ts';
import { TABLE_COLUMNS, type AblationRow, rowCells, slug } from './eval/table.ts';
import type { EvaluationResult } from './eval/evaluate.ts';
import type { RecallReport } from './eval/recall.ts';
import type { PipelineConfig } from './pipeline.ts';
import { stageDirs, tableRows } from './pipeline.ts';
import { type Chart, type Example, type ReportData, type Series, type Table, imageFile, writeReport } from './report/index.ts';
import { readLog, seriesOf } from './run-log.ts';

export interface PipelineReportOptions {
  runDir: string;
  config: PipelineConfig;
  adapter: string;
  command?: string;
  imageRoot: string;
  byDid: ReadonlyMap<string, MbeirCandidate>;
  /** Example queries shown (default 6). */
  examples?: number;
}

function series(dir: string, stage: string, field: string, name = stage): Series | null {
  const path = join(dir, 'log.jsonl');
  if (!existsSync(path)) return null;
  const points = seriesOf(readLog(path, { warn: null }).records, stage, field);
  return points.length ? { name, points } : null;
}

function readJson<T>(path: string): T | null {
  return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as T) : null;
}

function image(root: string, path: string | null | undefined, alt: string) {
  if (!path) return undefined;
  const full = join(root, path);
  return existsSync(full) ? imageFile(full, alt) : undefined;
}

export async function writePipelineReport(o: PipelineReportOptions): Promise<string> {
  const s = stageDirs(o.runDir);
  const charts: Chart[] = [];
  const losses = [series(s.pretrain, 'pretrain', 'loss'), series(s.sft, 'sft', 'loss')].filter((x): x is Series => !!x);
  if (losses.length) charts.push({ title: 'Training loss (cross-entropy)', x: 'step', y: 'loss', series: losses });
  const align = series(s.align, 'align', 'kl', 'align KL');
  if (align) charts.push({ title: 'ICM self-alignment', x: 'step', y: 'KL', series: [align] });
  const rl = [series(s.grpo, 'grpo', 'rewardMean', 'reward'), series(s.grpo, 'grpo', 'accuracy', 'accuracy'), series(s.grpo, 'grpo', 'inspections', 'N_ins')].filter((x): x is Series => !!x);
  if (rl.length) charts.push({ title: 'GRPO', x: 'step', y: 'value', series: rl });

  const tables: Table[] = [];
  const recall = readJson<Record<string, RecallReport>>(join(s.firstStage, 'first-stage-recall.json'));
  if (recall) {
    const methods = Object.keys(recall);
    const tasks = recall[methods[0]].tasks;
    tables.push({
      title: 'First stage, test split: Recall@10 (%) per task',
      columns: ['task', 'queries', ...methods],
      rows: [
        ...tasks.map((t, i) => [`${t.taskId}: ${t.task}`, String(t.queries), ...methods.map((m) => 100 * recall[m].tasks[i].recall['R@10'])]),
        ['mean over tasks', String(recall[methods[0]].queries), ...methods.map((m) => 100 * recall[m].macro['R@10'])],
      ],
    });
  }
  const table = readJson<{ rows: AblationRow[] }>(join(s.table, 'table.json'));
  if (table) {
    tables.push({
      title: `Reranking, test split (K = ${o.config.eval.K})`,
      columns: ['row', 'queries', ...TABLE_COLUMNS],
      rows: table.rows.map((r) => [r.name, String(r.queries), ...rowCells(r)]),
      note: 'R@k in percent over the evaluated queries; n/a where a row does no reranking.',
    });
  }

  const examples: Example[] = [];
  const full = tableRows(o.runDir, false).find((r) => r.name.includes('full'));
  const ev = full ? readJson<EvaluationResult>(join(s.table, 'rows', `${slug(full.name)}.json`)) : null;
  for (const q of ev?.per_query.slice(0, o.examples ?? 6) ?? []) {
    examples.push({
      title: `${q.qid} (task ${q.task_id})${q.correct ? ': correct' : ''}`,
      query: queryOf(ev!, q.qid, o.imageRoot),
      candidates: q.candidates.map((d) => {
        const c = o.byDid.get(d);
        return { id: d, text: c?.txt ?? undefined, image: image(o.imageRoot, c?.img_path, d), positive: q.positives.includes(d) };
      }),
      trace: q.text,
      inspections: q.inspected,
      answer: q.answer,
    });
  }

  const data: ReportData = {
    title: `retrv run ${o.runDir}`,
    facts: { adapter: o.adapter, preset: o.config.preset, date: new Date().toISOString(), command: o.command ?? null, run: o.runDir, config: JSON.stringify(o.config) },
    charts,
    tables,
    examples,
    notes: ['Each stage keeps its checkpoints and log.jsonl in its own folder of the run; delete a folder to run that stage again.'],
  };
  await writeReport(s.report, data);
  return s.report;
}

/** The query of an evaluated example: its text and image from the queries file. */
function queryOf(ev: EvaluationResult, qid: string, imageRoot: string): Example['query'] {
  const file = ev.queries_file;
  if (!existsSync(file)) return { text: qid };
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.includes(`"${qid}"`)) continue;
    const q = JSON.parse(line) as { qid: string; query_txt: string | null; query_img_path: string | null };
    if (q.qid !== qid) continue;
    return { text: q.query_txt ?? undefined, image: image(imageRoot, q.query_img_path, qid) };
  }
  return { text: qid };
}
