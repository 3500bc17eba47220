// The run/evaluation report as ONE self-contained HTML file: inline CSS, inline SVG charts
// (chart.ts), images as data: URIs; a Content-Security-Policy that forbids loading anything
// from elsewhere, so a report that reached out would show broken, not silently work.
//
// Sections, each left out when its data is empty: title and run facts, charts, tables,
// example queries (the query, its candidates in the reranker's order with the positive,
// inspected, eliminated and chosen ones marked, and the reasoning trace with its inspection
// requests highlighted), notes. All text is escaped (escape.ts). The output depends on the
// data only (no clock), so the same run gives the same file.
import { renderChart } from './chart.ts';
import { escapeHtml } from './escape.ts';
import { imageDataUri } from './image.ts';
import { INSPECTION_RE } from './trace-marks.ts';
import type { Cell, Example, ReportData, ReportImage, Table } from './types.ts';

const CSS = `
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; font: 15px/1.45 system-ui, "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #1b1f24; background: #ffffff; }
h1 { font-size: 26px; margin: 0 0 12px; }
h2 { font-size: 20px; margin: 32px 0 12px; padding-bottom: 4px; border-bottom: 2px solid #d0d7de; }
h3 { font-size: 16px; margin: 0 0 10px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; padding: 12px 16px; background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; }
.facts dt { font-weight: 600; color: #57606a; }
.facts dd { margin: 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; overflow-wrap: anywhere; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
svg.chart { flex: 1 1 480px; min-width: 0; max-width: 640px; height: auto; background: #ffffff; border: 1px solid #d0d7de; border-radius: 6px; font-family: system-ui, "DejaVu Sans", sans-serif; }
svg.chart .plot { fill: #fbfcfd; stroke: none; }
svg.chart .grid { stroke: #e6e9ed; stroke-width: 1; }
svg.chart .axis { stroke: #57606a; stroke-width: 1.2; }
svg.chart .tick, svg.chart .legend text { font-size: 12px; fill: #57606a; }
svg.chart .axis-label { font-size: 13px; fill: #1b1f24; }
svg.chart .chart-title { font-size: 15px; font-weight: 600; fill: #1b1f24; }
svg.chart .no-data { font-size: 14px; fill: #8c959f; }
table.results { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
table.results caption { text-align: left; font-weight: 600; padding-bottom: 6px; }
table.results th, table.results td { border: 1px solid #d0d7de; padding: 5px 12px; }
table.results th { background: #f6f8fa; text-align: left; }
table.results td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.results td.empty { color: #8c959f; text-align: center; }
.note { color: #57606a; font-size: 13px; margin: 4px 0 16px; }
.example { border: 1px solid #d0d7de; border-radius: 6px; padding: 14px 16px; margin: 0 0 20px; }
.query { display: flex; gap: 12px; align-items: center; margin-bottom: 10px; }
.query img, .cand img { width: 56px; height: 56px; object-fit: contain; background: #f6f8fa; border-radius: 4px; }
.tag { font-size: 12px; font-weight: 600; text-transform: uppercase; color: #57606a; }
.query .text { font-size: 16px; }
ol.cands { list-style: none; padding: 0; margin: 0 0 12px; display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 8px; }
.cand { display: flex; gap: 8px; align-items: center; padding: 6px 8px; border: 2px solid #d0d7de; border-radius: 6px; background: #ffffff; }
.cand .idx { font-weight: 700; min-width: 1.6em; text-align: center; color: #57606a; }
.cand .ctext { font-size: 13px; flex: 1; min-width: 0; overflow-wrap: anywhere; }
.cand.eliminated { opacity: 0.55; }
.cand.eliminated .ctext { text-decoration: line-through; }
.cand.inspected { border-color: #e67700; background: #fff4e0; }
.cand.answer { box-shadow: 0 0 0 3px #1f6feb inset; }
.cand.positive .idx { color: #2f9e44; }
.badges { display: flex; flex-direction: column; gap: 2px; align-items: flex-end; }
.badge { font-size: 11px; font-weight: 600; padding: 1px 6px; border-radius: 10px; white-space: nowrap; }
.badge.pos { background: #d3f9d8; color: #2b8a3e; }
.badge.ins { background: #ffe8cc; color: #a14a00; }
.badge.elim { background: #eceff1; color: #57606a; }
.badge.ans { background: #dbe8ff; color: #1849a9; }
.trace { white-space: pre-wrap; font: 13px/1.5 ui-monospace, "DejaVu Sans Mono", monospace; background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 12px; margin: 0 0 8px; }
.trace mark.ins { background: #ffd8a8; color: #7a3500; border-radius: 3px; padding: 0 3px; font-weight: 700; }
.summary { font-size: 14px; margin: 0; }
.summary .ok { color: #2b8a3e; font-weight: 600; }
.summary .wrong { color: #c92a2a; font-weight: 600; }
footer { margin-top: 40px; color: #8c959f; font-size: 12px; }
`;

function image(img: ReportImage, cls = ''): string {
  return `<img${cls ? ` class="${cls}"` : ''} src="${imageDataUri(img)}" alt="${escapeHtml(img.alt ?? '')}">`;
}

function factsSection(facts: NonNullable<ReportData['facts']>): string {
  const rows = Object.entries(facts)
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v as string | number | boolean)}</dd>`);
  return rows.length ? `<dl class="facts">${rows.join('')}</dl>` : '';
}

function cell(v: Cell, digits: number): string {
  if (v === null || v === '') return '<td class="empty">-</td>';
  if (typeof v === 'number') return `<td class="num">${escapeHtml(Number.isFinite(v) ? v.toFixed(digits) : String(v))}</td>`;
  return `<td>${escapeHtml(v)}</td>`;
}

function tableSection(t: Table, n: number): string {
  const name = t.title ?? `table ${n + 1}`;
  if (t.columns.length === 0) throw new Error(`report: ${JSON.stringify(name)} has no columns`);
  const digits = t.digits ?? 1;
  t.rows.forEach((r, i) => {
    if (r.length !== t.columns.length) throw new Error(`report: ${JSON.stringify(name)} row ${i + 1} has ${r.length} cells, expected ${t.columns.length} (${t.columns.join(', ')})`);
  });
  const head = `<tr>${t.columns.map((c) => `<th>${escapeHtml(c)}</th>`).join('')}</tr>`;
  const body = t.rows.map((r) => `<tr>${r.map((v) => cell(v, digits)).join('')}</tr>`).join('\n');
  return [
    `<table class="results">`,
    t.title ? `<caption>${escapeHtml(t.title)}</caption>` : '',
    `<thead>${head}</thead>`,
    `<tbody>${body}</tbody>`,
    `</table>`,
    t.note ? `<p class="note">${escapeHtml(t.note)}</p>` : '',
  ].join('\n');
}

/** The trace, escaped, with each inspection request shown as a highlighted "inspect i". */
function traceHtml(text: string): string {
  let out = '';
  let last = 0;
  for (const m of text.matchAll(INSPECTION_RE)) {
    out += escapeHtml(text.slice(last, m.index));
    out += `<mark class="ins" data-index="${escapeHtml(m[1])}" title="${escapeHtml(m[0])}">inspect ${escapeHtml(m[1])}</mark>`;
    last = m.index! + m[0].length;
  }
  return out + escapeHtml(text.slice(last));
}

function list(items: readonly number[]): string {
  return items.length ? items.join(', ') : 'none';
}

function exampleSection(ex: Example, n: number): string {
  const K = ex.candidates.length;
  const inspections = ex.inspections ?? [];
  const eliminated = ex.eliminated ?? [];
  const answer = ex.answer ?? null;
  const cands = ex.candidates.map((c, i) => {
    const ins = inspections.indexOf(i);
    const classes = ['cand', c.positive ? 'positive' : '', ins >= 0 ? 'inspected' : '', eliminated.includes(i) ? 'eliminated' : '', answer === i ? 'answer' : ''].filter(Boolean);
    const badges = [
      c.positive ? '<span class="badge pos">✓ positive</span>' : '',
      ins >= 0 ? `<span class="badge ins">inspected #${ins + 1}</span>` : '',
      eliminated.includes(i) ? '<span class="badge elim">eliminated</span>' : '',
      answer === i ? '<span class="badge ans">answer</span>' : '',
    ].join('');
    const label = [c.text ? `<span class="ctext">${escapeHtml(c.text)}</span>` : `<span class="ctext">${escapeHtml(c.id ?? '')}</span>`].join('');
    return `<li class="${classes.join(' ')}" data-index="${i}"${c.id ? ` data-id="${escapeHtml(c.id)}"` : ''}><span class="idx">${i}</span>${c.image ? image(c.image) : ''}${label}<span class="badges">${badges}</span></li>`;
  });
  const bad = [...inspections, ...eliminated, ...(answer === null ? [] : [answer])].filter((i) => !(Number.isInteger(i) && i >= 0 && i < K));
  const correct = answer !== null && ex.candidates[answer]?.positive === true;
  const verdict =
    answer === null ? '<span class="wrong">no valid answer</span>' : `${answer} ${correct ? '<span class="ok">(correct)</span>' : '<span class="wrong">(wrong)</span>'}`;
  const summary =
    `<p class="summary">Eliminated: ${list(eliminated)}. Inspected (N_ins = ${inspections.length}): ${list(inspections)}. Answer: ${verdict}.` +
    (bad.length ? ` <span class="wrong">Not candidates (0..${K - 1}): ${escapeHtml(bad.join(', '))}.</span>` : '') +
    '</p>';
  const q = ex.query;
  return [
    `<section class="example" id="example-${n + 1}">`,
    `<h3>${escapeHtml(ex.title ?? `Example ${n + 1}`)}</h3>`,
    `<div class="query"><span class="tag">query</span>${q.image ? image(q.image) : ''}${q.text ? `<span class="text">${escapeHtml(q.text)}</span>` : ''}</div>`,
    `<ol class="cands" start="0">\n${cands.join('\n')}\n</ol>`,
    ex.trace !== undefined ? `<pre class="trace">${traceHtml(ex.trace)}</pre>` : '',
    summary,
    `</section>`,
  ].join('\n');
}

/** The report as a complete HTML document. */
export function renderReport(data: ReportData): string {
  if (typeof data?.title !== 'string' || data.title.trim() === '') throw new Error('report: title must be a non-empty string');
  const parts: string[] = [];
  parts.push(`<h1>${escapeHtml(data.title)}</h1>`);
  if (data.facts) parts.push(factsSection(data.facts));
  if (data.charts?.length) parts.push(`<h2>Curves</h2>`, `<div class="charts">${data.charts.map(renderChart).join('\n')}</div>`);
  if (data.tables?.length) parts.push(`<h2>Results</h2>`, ...data.tables.map(tableSection));
  if (data.examples?.length) parts.push(`<h2>Example queries</h2>`, ...data.examples.map(exampleSection));
  if (data.notes?.length) parts.push(`<h2>Notes</h2>`, ...data.notes.map((p) => `<p>${escapeHtml(p)}</p>`));
  return [
    '<!DOCTYPE html>',
    '<html lang="en">',
    '<head>',
    '<meta charset="utf-8">',
    `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">`,
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>${escapeHtml(data.title)}</title>`,
    `<style>${CSS}</style>`,
    '</head>',
    '<body>',
    ...parts,
    '<footer>retrv report: a single self-contained file (inline CSS and SVG, images embedded).</footer>',
    '</body>',
    '</html>',
    '',
  ].join('\n');
}
