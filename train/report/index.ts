// The HTML report of a training run or an evaluation: import from here.
export type { Cell, Chart, Example, ExampleCandidate, ReportData, ReportImage, Series, Table } from './types.ts';
export { renderReport } from './render.ts';
export { writeReport } from './write.ts';
export { imageDataUri, imageFile } from './image.ts';
export { type TraceMarks, traceMarks } from './trace-marks.ts';
export { CHART, PALETTE, niceTicks, renderChart, tickLabel } from './chart.ts';
export { escapeHtml } from './escape.ts';
