// Line charts as inline SVG, drawn by hand: a plot box, "nice" ticks (1, 2 or 5 times a
// power of ten) on both axes with grid lines and labels, axis titles, a legend, and one
// <path> per series. The domain is widened to the outer ticks so every point lies inside.
//
// Choices: fixed geometry (CHART, exported so tests can work coordinates out by hand) in a
// viewBox that scales with the page; non-finite y values are dropped; a series with one
// point is drawn as a dot; series longer than MAX_POINTS keep the min and max of each
// bucket of steps, so spikes in a long noisy loss curve survive the thinning.
import { escapeHtml } from './escape.ts';
import type { Chart, Series } from './types.ts';

export const CHART = { width: 640, height: 320, left: 64, right: 20, top: 48, bottom: 48 } as const;
export const PALETTE = ['#1f6feb', '#d9480f', '#2f9e44', '#9c36b5', '#0c8599', '#c2255c', '#5c940d', '#e67700'] as const;
export const MAX_POINTS = 1200;

/** Tick step and ticks covering [lo, hi] with about `target` intervals; the domain is [ticks[0], last]. */
export function niceTicks(lo: number, hi: number, target = 5): { step: number; ticks: number[] } {
  if (!Number.isFinite(lo) || !Number.isFinite(hi) || lo > hi) throw new Error(`niceTicks: bad range [${lo}, ${hi}]`);
  if (lo === hi) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  const step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
  const first = Math.floor(lo / step + 1e-9);
  const last = Math.ceil(hi / step - 1e-9);
  const ticks: number[] = [];
  // multiply (not accumulate) so ticks are exact multiples of the step
  for (let i = first; i <= last; i++) ticks.push(Number((i * step).toPrecision(12)));
  return { step, ticks };
}

/** A tick label with as many decimals as the step needs. */
export function tickLabel(v: number, step: number): string {
  if (Math.abs(v) >= 1e6 || (v !== 0 && Math.abs(v) < 1e-4)) return v.toExponential(1);
  return v.toFixed(Math.max(0, Math.ceil(-Math.log10(step) - 1e-9)));
}

function finitePoints(s: Series): [number, number][] {
  return s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)).map(([x, y]) => [x, y]);
}

/** Keeps each bucket's first, min, max and last point (in x order) when there are too many. */
export function thin(points: [number, number][], max = MAX_POINTS): [number, number][] {
  if (points.length <= max) return points;
  const buckets = Math.floor(max / 4);
  const size = points.length / buckets;
  const out: [number, number][] = [];
  for (let b = 0; b < buckets; b++) {
    const part = points.slice(Math.floor(b * size), Math.floor((b + 1) * size));
    if (!part.length) continue;
    let lo = 0;
    let hi = 0;
    part.forEach(([, y], i) => {
      if (y < part[lo][1]) lo = i;
      if (y > part[hi][1]) hi = i;
    });
    for (const i of [...new Set([0, lo, hi, part.length - 1])].sort((a, b) => a - b)) out.push(part[i]);
  }
  return out;
}

const f1 = (v: number) => v.toFixed(1);

/** The chart as an <svg> element (a string). */
export function renderChart(chart: Chart): string {
  const { width: W, height: H, left, right, top, bottom } = CHART;
  const x0 = left;
  const x1 = W - right;
  const y0 = top;
  const y1 = H - bottom;
  const series = chart.series.map((s) => ({ name: s.name, points: thin(finitePoints(s)) }));
  const all = series.flatMap((s) => s.points);
  const out: string[] = [];
  out.push(`<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" role="img" aria-label="${escapeHtml(chart.title)}">`);
  out.push(`<title>${escapeHtml(chart.title)}</title>`);
  out.push(`<text class="chart-title" x="${x0}" y="20">${escapeHtml(chart.title)}</text>`);
  out.push(`<rect class="plot" x="${x0}" y="${y0}" width="${x1 - x0}" height="${y1 - y0}"/>`);
  if (all.length === 0) {
    out.push(`<text class="no-data" x="${(x0 + x1) / 2}" y="${(y0 + y1) / 2}" text-anchor="middle">no data</text>`);
    out.push('</svg>');
    return out.join('\n');
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const xt = niceTicks(Math.min(...xs), Math.max(...xs));
  const yt = niceTicks(Math.min(...ys), Math.max(...ys));
  const [xlo, xhi] = [xt.ticks[0], xt.ticks[xt.ticks.length - 1]];
  const [ylo, yhi] = [yt.ticks[0], yt.ticks[yt.ticks.length - 1]];
  const px = (x: number) => x0 + ((x - xlo) / (xhi - xlo)) * (x1 - x0);
  const py = (y: number) => y1 - ((y - ylo) / (yhi - ylo)) * (y1 - y0);

  for (const t of yt.ticks) {
    const y = f1(py(t));
    out.push(`<line class="grid" x1="${x0}" y1="${y}" x2="${x1}" y2="${y}"/>`);
    out.push(`<text class="tick y-tick" x="${x0 - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${tickLabel(t, yt.step)}</text>`);
  }
  for (const t of xt.ticks) {
    const x = f1(px(t));
    out.push(`<line class="grid" x1="${x}" y1="${y0}" x2="${x}" y2="${y1}"/>`);
    out.push(`<text class="tick x-tick" x="${x}" y="${y1 + 16}" text-anchor="middle">${tickLabel(t, xt.step)}</text>`);
  }
  out.push(`<line class="axis" x1="${x0}" y1="${y1}" x2="${x1}" y2="${y1}"/><line class="axis" x1="${x0}" y1="${y0}" x2="${x0}" y2="${y1}"/>`);
  if (chart.x) out.push(`<text class="axis-label" x="${(x0 + x1) / 2}" y="${H - 8}" text-anchor="middle">${escapeHtml(chart.x)}</text>`);
  if (chart.y) out.push(`<text class="axis-label" transform="translate(14 ${(y0 + y1) / 2}) rotate(-90)" text-anchor="middle">${escapeHtml(chart.y)}</text>`);

  series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length];
    if (s.points.length === 1) {
      const [x, y] = s.points[0];
      out.push(`<circle class="series" data-series="${escapeHtml(s.name)}" cx="${f1(px(x))}" cy="${f1(py(y))}" r="4" fill="${colour}"/>`);
    } else if (s.points.length > 1) {
      const d = s.points.map(([x, y], j) => `${j ? 'L' : 'M'}${f1(px(x))} ${f1(py(y))}`).join(' ');
      out.push(`<path class="series" data-series="${escapeHtml(s.name)}" d="${d}" fill="none" stroke="${colour}" stroke-width="2.5" stroke-linejoin="round"/>`);
    }
  });
  // legend: a row of swatches in the top margin, right of the title
  let lx = x1;
  const items: string[] = [];
  for (let i = series.length - 1; i >= 0; i--) {
    const label = series[i].name;
    const w = 26 + label.length * 7;
    lx -= w;
    items.unshift(
      `<g class="legend-item"><rect x="${f1(lx)}" y="30" width="14" height="4" fill="${PALETTE[i % PALETTE.length]}"/><text x="${f1(lx + 18)}" y="36">${escapeHtml(label)}</text></g>`,
    );
  }
  out.push(`<g class="legend">${items.join('')}</g>`);
  out.push('</svg>');
  return out.join('\n');
}
