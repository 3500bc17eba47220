// The input of the HTML report (train/report/render.ts): plain data, no HTML. Every string
// is escaped by the renderer; images are PNG (or JPEG) bytes, embedded as data: URIs.

/** One line of a chart: [x, y] points (non-finite y values are left out). */
export interface Series {
  name: string;
  points: readonly (readonly [number, number])[];
}

/** A line chart: several series on shared axes. */
export interface Chart {
  title: string;
  /** Axis labels, e.g. "step" and "loss". */
  x?: string;
  y?: string;
  series: readonly Series[];
}

export type Cell = string | number | null;

/** A results table: rows x columns, numbers shown with `digits` decimals (default 1). */
export interface Table {
  title?: string;
  columns: readonly string[];
  rows: readonly (readonly Cell[])[];
  digits?: number;
  /** A line under the table (what the numbers mean, the command that produced them). */
  note?: string;
}

/** Image bytes (PNG or JPEG) and a text alternative. */
export interface ReportImage {
  bytes: Uint8Array;
  alt?: string;
}

export interface ExampleCandidate {
  /** e.g. the candidate's did. */
  id?: string;
  text?: string;
  image?: ReportImage;
  /** A ground-truth positive. */
  positive?: boolean;
}

/** One query, its candidates in the order the reranker saw them (index = position), and the trace. */
export interface Example {
  title?: string;
  query: { text?: string; image?: ReportImage };
  candidates: readonly ExampleCandidate[];
  /** The model's reasoning trace text (inspection markers are highlighted). */
  trace?: string;
  /** Inspected candidate indices, in order (N_ins = length). */
  inspections?: readonly number[];
  /** Candidates the trace ruled out without inspecting them. */
  eliminated?: readonly number[];
  /** The chosen candidate index; null when the model gave no valid answer. */
  answer?: number | null;
}

export interface ReportData {
  title: string;
  /** Run facts in order: adapter, preset, date, command, ... (null/undefined left out). */
  facts?: Readonly<Record<string, string | number | boolean | null | undefined>>;
  charts?: readonly Chart[];
  tables?: readonly Table[];
  examples?: readonly Example[];
  /** Free paragraphs at the end (limitations, how to reproduce). */
  notes?: readonly string[];
}
