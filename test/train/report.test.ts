// The HTML report: escaping, chart geometry (coordinates worked out by hand), tables,
// example markings, images, atomic writes, and a look at the page in headless Chromium
// (the DOM it built and a screenshot's pixels).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { PNG } from 'pngjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ReportData,
  escapeHtml,
  imageDataUri,
  imageFile,
  niceTicks,
  renderChart,
  renderReport,
  tickLabel,
  traceMarks,
  writeReport,
} from '../../train/report/index.ts';
import { thin } from '../../train/report/chart.ts';

const dir = mkdtempSync(join(tmpdir(), 'retrv-report-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A w x h PNG of one colour. */
function solidPng(rgb: [number, number, number], w = 24, h = 24): Uint8Array {
  const png = new PNG({ width: w, height: h });
  for (let i = 0; i < w * h; i++) png.data.set([...rgb, 255], i * 4);
  return new Uint8Array(PNG.sync.write(png));
}

const RED: [number, number, number] = [224, 49, 49];
const GREEN: [number, number, number] = [47, 158, 68];

const TRACE =
  '<think> The query asks for "red square". Candidates 1 ("blue circle") and 2 ("green square") are not it. ' +
  'Candidate 3 ("dark red square") is close. <inspection-index-start>3<inspection-index-end> It is darker. ' +
  '<inspection-index-start>0<inspection-index-end> Candidate 0 ("red square") matches. </think><answer>0</answer>';

function sampleReport(): ReportData {
  return {
    title: 'Run <script>alert("x")</script> & co',
    facts: { adapter: 'lavapipe (software Vulkan)', preset: 'tiny', date: '2025-01-02', command: 'retrv train --stage sft --config tiny', skipped: null },
    charts: [
      {
        title: 'loss',
        x: 'step',
        y: 'loss',
        series: [
          { name: 'sft', points: Array.from({ length: 60 }, (_, i) => [i, 2 * Math.exp(-i / 15) + 0.1] as [number, number]) },
          { name: 'grpo', points: Array.from({ length: 30 }, (_, i) => [i * 2, 1.5 - i / 40] as [number, number]) },
        ],
      },
      { title: 'reward', x: 'step', y: 'mean reward', series: [{ name: 'grpo', points: Array.from({ length: 30 }, (_, i) => [i, i / 30] as [number, number]) }] },
    ],
    tables: [{ title: 'Recall@k (%)', columns: ['task', 'R@1', 'R@5', 'R@10'], rows: [['text to image', 12.5, 40, 61.25], ['average', 7.75, null, 55]], note: 'test split' }],
    examples: [
      {
        query: { text: 'a red square', image: { bytes: solidPng(RED), alt: 'query image' } },
        candidates: [
          { id: 'c0', text: 'red square', image: { bytes: solidPng(RED) }, positive: true },
          { id: 'c1', text: 'blue circle', image: { bytes: solidPng([30, 60, 200]) } },
          { id: 'c2', text: 'green square', image: { bytes: solidPng(GREEN) } },
          { id: 'c3', text: 'dark red square', image: { bytes: solidPng([120, 20, 20]) } },
        ],
        trace: TRACE,
        inspections: [3, 0],
        eliminated: [1, 2],
        answer: 0,
      },
    ],
    notes: ['Numbers from a 2-core machine.'],
  };
}

describe('report rendering', () => {
  it('escapes every piece of text', () => {
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe('&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;');
    const html = renderReport(sampleReport());
    expect(html).not.toContain('<script');
    expect(html).toContain('<h1>Run &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co</h1>');
    // the trace's markers are text, not tags
    expect(html).toContain('&lt;think&gt;');
    expect(html).not.toContain('<think>');
  });

  it('loads nothing from outside the file', () => {
    const html = renderReport(sampleReport());
    const refs = [...html.matchAll(/\b(?:src|href)="([^"]*)"/g)].map((m) => m[1]);
    expect(refs.length).toBe(5); // 4 candidate images and the query image, nothing else
    for (const r of refs) expect(r.startsWith('data:image/png;base64,')).toBe(true);
    expect(html).not.toMatch(/url\(|@import|<link|<script/);
    expect(html).toContain(`default-src 'none'`);
  });

  it('leaves out null facts and empty sections', () => {
    const html = renderReport({ title: 't', facts: { a: 1, b: null, c: undefined } });
    expect(html).toContain('<dt>a</dt><dd>1</dd>');
    expect(html).not.toContain('<dt>b</dt>');
    expect(html).not.toMatch(/<h2>/);
    expect(() => renderReport({ title: '  ' })).toThrow(/title/);
  });
});

describe('charts', () => {
  it('picks 1-2-5 tick steps covering the data', () => {
    // 0..0.87 in ~5 steps: raw 0.174 -> 1.74 x 0.1 -> step 2 x 0.1 = 0.2; ticks 0..1.0
    expect(niceTicks(0, 0.87)).toEqual({ step: 0.2, ticks: [0, 0.2, 0.4, 0.6, 0.8, 1] });
    // 3..47: raw 8.8 -> 8.8 x 1 -> step 10; floor(0.3)=0 .. ceil(4.7)=5
    expect(niceTicks(3, 47)).toEqual({ step: 10, ticks: [0, 10, 20, 30, 40, 50] });
    // a flat series gets +-10%: 2.7..3.3, raw 0.12 -> step 0.1
    expect(niceTicks(3, 3).ticks).toEqual([2.7, 2.8, 2.9, 3, 3.1, 3.2, 3.3]);
    expect(tickLabel(0.4, 0.2)).toBe('0.4');
    expect(tickLabel(20, 10)).toBe('20');
    expect(tickLabel(0.05, 0.05)).toBe('0.05');
  });

  it('maps points into the plot box', () => {
    // plot box: x 64..620 (640 - 20), y 48..272 (320 - 48); domain x 0..10, y 0..1
    // (10 -> raw 2, step 2; 1 -> raw 0.2, step 0.2: the data ends on ticks)
    const svg = renderChart({ title: 'c', series: [{ name: 'a', points: [[0, 0], [5, 0.5], [10, 1]] }] });
    const d = /<path class="series" data-series="a" d="([^"]*)"/.exec(svg)![1];
    expect(d).toBe('M64.0 272.0 L342.0 160.0 L620.0 48.0');
    // 6 y ticks (0..1 by 0.2) and 6 x ticks (0..10 by 2), each a grid line and a label
    expect(svg.match(/class="tick y-tick"/g)!.length).toBe(6);
    expect(svg.match(/class="tick x-tick"/g)!.length).toBe(6);
    expect(svg).toMatch(/>1\.0<\/text>/);
  });

  it('draws several series in different colours, drops non-finite values, dots single points', () => {
    const svg = renderChart({
      title: 'c',
      series: [
        { name: 'a', points: [[0, 1], [1, NaN], [2, 3]] },
        { name: 'b', points: [[1, 2]] },
        { name: 'c', points: [] },
      ],
    });
    const d = /data-series="a" d="([^"]*)"/.exec(svg)![1];
    expect(d.split(' L').length).toBe(2); // the NaN point is gone
    expect(svg).toMatch(/<circle class="series" data-series="b"/);
    const colours = [...svg.matchAll(/data-series="[ab]"[^>]*(?:stroke|fill)="(#[0-9a-f]{6})"/g)].map((m) => m[1]);
    expect(new Set(colours).size).toBe(2);
    expect(renderChart({ title: 'empty', series: [] })).toContain('no data');
  });

  it('thins long series but keeps their spikes', () => {
    const pts = Array.from({ length: 10_000 }, (_, i) => [i, i === 4321 ? 50 : i === 777 ? -9 : Math.sin(i)] as [number, number]);
    const out = thin(pts, 400);
    expect(out.length).toBeLessThanOrEqual(400);
    expect(out.some(([x, y]) => x === 4321 && y === 50)).toBe(true);
    expect(out.some(([x, y]) => x === 777 && y === -9)).toBe(true);
    for (let i = 1; i < out.length; i++) expect(out[i][0]).toBeGreaterThan(out[i - 1][0]);
  });
});

describe('tables and examples', () => {
  it('formats numbers, marks empty cells, rejects ragged rows', () => {
    const html = renderReport(sampleReport());
    expect(html).toContain('<td class="num">12.5</td><td class="num">40.0</td><td class="num">61.3</td>');
    expect(html).toContain('<td class="num">7.8</td><td class="empty">-</td>');
    const two = renderReport({ title: 't', tables: [{ columns: ['a'], rows: [[1 / 3]], digits: 2 }] });
    expect(two).toContain('<td class="num">0.33</td>');
    expect(() => renderReport({ title: 't', tables: [{ title: 'R', columns: ['a', 'b'], rows: [['x', 1], ['y']] }] })).toThrow(/"R" row 2 has 1 cells, expected 2/);
  });

  it('marks positive, inspected, eliminated and chosen candidates, and highlights the trace', () => {
    const html = renderReport(sampleReport());
    const cands = [...html.matchAll(/<li class="([^"]*)" data-index="(\d+)"/g)].map((m) => ({ i: Number(m[2]), cls: m[1].split(' ') }));
    expect(cands.map((c) => c.i)).toEqual([0, 1, 2, 3]);
    const has = (cls: string) => cands.filter((c) => c.cls.includes(cls)).map((c) => c.i);
    expect(has('inspected')).toEqual([0, 3]);
    expect(has('eliminated')).toEqual([1, 2]);
    expect(has('answer')).toEqual([0]);
    expect(has('positive')).toEqual([0]);
    // inspection order: 3 first, then 0
    expect(html).toMatch(/data-index="3"[^\n]*inspected #1/);
    expect(html).toMatch(/data-index="0"[^\n]*inspected #2/);
    expect([...html.matchAll(/<mark class="ins" data-index="(\d+)"/g)].map((m) => m[1])).toEqual(['3', '0']);
    expect(html).toContain('Inspected (N_ins = 2): 3, 0. Answer: 0 <span class="ok">(correct)</span>');
  });

  it('reports a wrong or missing answer and indices that are no candidates', () => {
    const data = sampleReport();
    const ex = { ...data.examples![0], answer: 2, inspections: [7] };
    expect(renderReport({ title: 't', examples: [ex] })).toMatch(/Answer: 2 <span class="wrong">\(wrong\)<\/span>.*Not candidates \(0\.\.3\): 7/);
    expect(renderReport({ title: 't', examples: [{ ...ex, answer: null }] })).toContain('no valid answer');
  });

  it('reads inspections, eliminations and the answer from a trace', () => {
    expect(traceMarks(TRACE, 4)).toEqual({ inspections: [3, 0], eliminated: [1, 2], answer: 0 });
    // out of range and repeated requests are not inspections; an out-of-range answer is none
    const t = '<think> 1 ("a") no. <inspection-index-start>9<inspection-index-end><inspection-index-start>2<inspection-index-end><inspection-index-start>2<inspection-index-end></think><answer>5</answer>';
    expect(traceMarks(t, 4)).toEqual({ inspections: [2], eliminated: [1], answer: null });
  });
});

describe('images and files', () => {
  it('embeds PNG bytes as a data URI and rejects other bytes', () => {
    const bytes = solidPng(GREEN, 3, 2);
    const uri = imageDataUri({ bytes });
    expect(uri.startsWith('data:image/png;base64,')).toBe(true);
    expect(Buffer.from(uri.split(',')[1], 'base64').equals(Buffer.from(bytes))).toBe(true);
    expect(() => imageDataUri({ bytes: new TextEncoder().encode('GIF89a...'), alt: 'x.gif' })).toThrow(/"x.gif" is neither PNG nor JPEG \(first bytes: 47 49 46 38/);
    const bad = join(dir, 'not-an-image.png');
    writeFileSync(bad, 'hello');
    expect(() => imageFile(bad)).toThrow(new RegExp(`${bad}: is neither PNG nor JPEG`));
    const good = join(dir, 'ok.png');
    writeFileSync(good, bytes);
    expect(imageFile(good).alt).toBe('ok.png');
  });

  it('writes atomically: a bad input leaves the old file and no temp file', () => {
    const sub = join(dir, 'atomic', 'deep');
    const path = join(sub, 'report.html');
    writeReport(path, { title: 'first' });
    expect(readFileSync(path, 'utf8')).toContain('<h1>first</h1>');
    expect(() => writeReport(path, { title: 'second', tables: [{ columns: ['a'], rows: [[1, 2]] }] })).toThrow(/row 1/);
    expect(readFileSync(path, 'utf8')).toContain('<h1>first</h1>');
    expect(readdirSync(sub)).toEqual(['report.html']);
  });
});

// ---- headless Chromium: the page as a browser builds and paints it ----

function findChromium(): string | null {
  if (existsSync('/usr/bin/chromium')) return '/usr/bin/chromium';
  const r = spawnSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : null;
}

let chromium: string | null = null;
let whyNoChromium = '';

function runChromium(args: string[]): string {
  const profile = mkdtempSync(join(tmpdir(), 'retrv-chromium-'));
  try {
    return execFileSync(
      chromium!,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        `--user-data-dir=${profile}`,
        ...args,
      ],
      { encoding: 'utf8', timeout: 60_000, maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'] },
    );
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

describe('the report in headless Chromium', () => {
  const page = join(dir, 'browser', 'report.html');
  beforeAll(() => {
    chromium = findChromium();
    if (!chromium) {
      // install it when we can (root on Debian/Ubuntu); skip only when that is impossible
      const r = spawnSync('bash', ['scripts/setup-chromium.sh'], { encoding: 'utf8', timeout: 540_000 });
      chromium = findChromium();
      if (!chromium) whyNoChromium = `chromium is not installed and scripts/setup-chromium.sh could not install it: ${(r.stderr || r.stdout || String(r.error)).trim().split('\n')[0]}`;
    }
    mkdirSync(join(dir, 'browser'), { recursive: true });
    writeReport(page, sampleReport());
  }, 600_000);

  it('builds the DOM with the chart paths, the table cells and the marked candidates', (ctx) => {
    if (!chromium) {
      console.warn(`SKIPPED report browser test: ${whyNoChromium}`);
      ctx.skip(whyNoChromium);
    }
    const dom = runChromium(['--dump-dom', pathToFileURL(page).href]);
    expect(dom).toContain('<h1>Run &lt;script&gt;alert("x")&lt;/script&gt; &amp; co</h1>');
    // 3 series over 2 charts, each a path with many points
    const paths = [...dom.matchAll(/<path class="series" data-series="([^"]+)" d="([^"]+)"/g)];
    expect(paths.map((m) => m[1])).toEqual(['sft', 'grpo', 'grpo']);
    for (const m of paths) expect(m[2].split('L').length).toBeGreaterThanOrEqual(30);
    const cells = [...dom.matchAll(/<td class="(?:num|empty)">([^<]*)<\/td>/g)].map((m) => m[1]);
    expect(cells).toEqual(['12.5', '40.0', '61.3', '7.8', '-', '55.0']);
    const inspected = [...dom.matchAll(/<li class="([^"]*)" data-index="(\d+)"/g)].filter((m) => m[1].split(' ').includes('inspected')).map((m) => Number(m[2]));
    expect(inspected).toEqual([0, 3]);
    expect(dom.match(/<img [^>]*src="data:image\/png;base64,/g)!.length).toBe(5);
  });

  it('paints a readable page: curves in their colours, images shown, not blank', (ctx) => {
    if (!chromium) {
      console.warn(`SKIPPED report browser test: ${whyNoChromium}`);
      ctx.skip(whyNoChromium);
    }
    const shot = join(dir, 'browser', 'shot.png');
    runChromium([`--screenshot=${shot}`, '--window-size=1200,2000', pathToFileURL(page).href]);
    const png = PNG.sync.read(readFileSync(shot));
    expect([png.width, png.height]).toEqual([1200, 2000]);
    const colours = new Map<number, number>();
    for (let i = 0; i < png.data.length; i += 4) {
      const key = (png.data[i] << 16) | (png.data[i + 1] << 8) | png.data[i + 2];
      colours.set(key, (colours.get(key) ?? 0) + 1);
    }
    expect(colours.size).toBeGreaterThan(50); // text, lines, images: far from blank
    const near = (rgb: [number, number, number], tol = 24) => {
      let n = 0;
      for (const [key, count] of colours) {
        const d = Math.abs((key >> 16) - rgb[0]) + Math.abs(((key >> 8) & 255) - rgb[1]) + Math.abs((key & 255) - rgb[2]);
        if (d <= tol) n += count;
      }
      return n;
    };
    // the first and second series colours (#1f6feb, #d9480f: PALETTE), a 2.5 px line over ~500 px
    expect(near([0x1f, 0x6f, 0xeb])).toBeGreaterThan(300);
    expect(near([0xd9, 0x48, 0x0f])).toBeGreaterThan(300);
    // two red 56x56 images (query, candidate 0): the data: URIs painted under the CSP
    expect(near(RED, 6)).toBeGreaterThan(2 * 40 * 40);
    // the green one belongs to an eliminated candidate, dimmed to opacity 0.55 over white:
    // 0.55 * (47, 158, 68) + 0.45 * 255 = (140.6, 201.6, 152.2)
    expect(near(GREEN, 6)).toBeLessThan(40 * 40); // (only the positive's green index digit)
    expect(near([141, 202, 152], 6)).toBeGreaterThan(40 * 40);
    // the inspected candidates' background (#fff4e0)
    expect(near([0xff, 0xf4, 0xe0], 3)).toBeGreaterThan(2000);
  });
});
