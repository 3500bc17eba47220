// Scenes: the caption matches what is drawn (found again from the pixels alone: each
// colour's connected regions give the count, their fill ratio the shape, their centroid
// the position), near-duplicates differ in exactly one attribute, and the benchmark
// writes PNGs that decode to the rendered pixels. Deterministic per seed.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeImage, type RgbaImage } from '../../model/image.ts';
import { formatIssue, loadBenchmarkDir } from '../../train/data/mbeir.ts';
import {
  ATTRIBUTES,
  BACKGROUND,
  COLORS,
  PALETTE,
  type ColorName,
  type Position,
  type Scene,
  type Shape,
  buildSceneBenchmark,
  changeAttribute,
  diffScenes,
  modificationText,
  randomScene,
  renderScene,
  sampleFamilies,
  sceneCaption,
  sceneKey,
  writeSceneBenchmark,
} from '../../train/data/scenes.ts';
import { SPLITS, SeededRng } from '../../train/data/seeded.ts';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'scenes-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Blob {
  color: ColorName;
  pixels: number;
  fill: number;
  cx: number;
  cy: number;
}

/** Connected regions (4-neighbour) of each palette colour; fails on any other colour. */
function blobs(img: RgbaImage): Blob[] {
  const n = img.width;
  const colorAt = (i: number): ColorName | 'bg' => {
    const r = img.rgba[i * 4];
    const g = img.rgba[i * 4 + 1];
    const b = img.rgba[i * 4 + 2];
    if (r === BACKGROUND[0] && g === BACKGROUND[1] && b === BACKGROUND[2]) return 'bg';
    const c = COLORS.find((k) => PALETTE[k][0] === r && PALETTE[k][1] === g && PALETTE[k][2] === b);
    if (c === undefined) throw new Error(`pixel ${i % n},${Math.floor(i / n)} has colour ${r},${g},${b}, not in the palette`);
    return c;
  };
  const seen = new Uint8Array(n * n);
  const out: Blob[] = [];
  for (let start = 0; start < n * n; start++) {
    const color = colorAt(start);
    if (seen[start] || color === 'bg') continue;
    const stack = [start];
    seen[start] = 1;
    let pixels = 0;
    let sx = 0;
    let sy = 0;
    let x0 = n;
    let x1 = -1;
    let y0 = n;
    let y1 = -1;
    while (stack.length > 0) {
      const i = stack.pop()!;
      const x = i % n;
      const y = Math.floor(i / n);
      pixels++;
      sx += x + 0.5;
      sy += y + 0.5;
      x0 = Math.min(x0, x);
      x1 = Math.max(x1, x);
      y0 = Math.min(y0, y);
      y1 = Math.max(y1, y);
      for (const [dx, dy] of [[1, 0], [-1, 0], [0, 1], [0, -1]]) {
        const nx = x + dx;
        const ny = y + dy;
        if (nx < 0 || ny < 0 || nx >= n || ny >= n) continue;
        const j = ny * n + nx;
        if (!seen[j] && colorAt(j) === color) {
          seen[j] = 1;
          stack.push(j);
        }
      }
    }
    out.push({ color, pixels, fill: pixels / ((x1 - x0 + 1) * (y1 - y0 + 1)), cx: sx / pixels, cy: sy / pixels });
  }
  return out;
}

/** Shape from how much of its bounding box a region fills. */
function shapeOf(fill: number): Shape {
  if (fill > 0.95) return 'square';
  if (fill > 0.68) return 'circle';
  return 'triangle';
}

const ANCHORS: Record<Position, [number, number]> = { top: [32, 16], bottom: [32, 48], left: [16, 32], right: [48, 32], center: [32, 32] };
function nearestAnchor(cx: number, cy: number, among: Position[]): Position {
  return among.reduce((best, p) => (Math.hypot(cx - ANCHORS[p][0], cy - ANCHORS[p][1]) < Math.hypot(cx - ANCHORS[best][0], cy - ANCHORS[best][1]) ? p : best));
}

/** Reads the scene back from the pixels, in the caption's own words. */
function readScene(img: RgbaImage, colorsInOrder: ColorName[]): string {
  const bs = blobs(img);
  const groups = colorsInOrder.map((color) => {
    const mine = bs.filter((b) => b.color === color);
    const shapes = new Set(mine.map((b) => shapeOf(b.fill)));
    if (shapes.size !== 1) throw new Error(`${color}: regions of several shapes ${[...shapes].join(', ')}`);
    const cx = mine.reduce((s, b) => s + b.cx, 0) / mine.length;
    const cy = mine.reduce((s, b) => s + b.cy, 0) / mine.length;
    return { color, shape: [...shapes][0], count: mine.length, cx, cy };
  });
  if (bs.some((b) => !colorsInOrder.includes(b.color))) throw new Error('a colour that no group has is drawn');
  const words = ['', 'a', 'two', 'three'];
  const phrase = (g: (typeof groups)[0]) =>
    g.count === 1 ? `${/^[aeiou]/.test(g.color) ? 'an' : 'a'} ${g.color} ${g.shape}` : `${words[g.count]} ${g.color} ${g.shape}s`;
  if (groups.length === 1) {
    const pos = nearestAnchor(groups[0].cx, groups[0].cy, ['top', 'bottom', 'left', 'right', 'center']);
    const where = { top: 'at the top', bottom: 'at the bottom', left: 'on the left', right: 'on the right', center: 'in the middle' }[pos];
    return `${phrase(groups[0])} ${where}`;
  }
  const [a, b] = groups;
  const rel =
    Math.abs(a.cy - b.cy) > Math.abs(a.cx - b.cx) ? (a.cy < b.cy ? 'above' : 'below') : a.cx < b.cx ? 'to the left of' : 'to the right of';
  return `${phrase(a)} ${rel} ${phrase(b)}`;
}

describe('scenes', () => {
  it('captions match the rendered pixels (property over random scenes)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), (seed) => {
        const s = randomScene(new SeededRng(seed));
        const img = renderScene(s);
        expect(readScene(img, s.groups.map((g) => g.color))).toBe(sceneCaption(s));
      }),
      { numRuns: 300 },
    );
  });

  it('every scene of a sampled dataset reads back as its caption; near-duplicates change exactly one attribute', () => {
    const fams = sampleFamilies(60, 5);
    const keys = new Set<string>();
    for (const f of fams) {
      const all = [f.base, ...f.variants.map((v) => v.scene)];
      for (const s of all) {
        expect(readScene(renderScene(s), s.groups.map((g) => g.color))).toBe(sceneCaption(s));
        keys.add(sceneKey(s));
      }
      expect(f.variants.map((v) => v.attr)).toEqual(ATTRIBUTES);
      const baseCaption = sceneCaption(f.base);
      const basePixels = renderScene(f.base).rgba;
      for (const { attr, scene } of f.variants) {
        const d = diffScenes(f.base, scene);
        expect(d.length, `${baseCaption} -> ${sceneCaption(scene)}: ${d.join(', ')}`).toBe(1);
        const expected = attr === 'position' ? (f.base.groups.length === 1 ? 'position' : 'relation') : `.${attr}`;
        expect(d[0].endsWith(expected), `${attr}: ${d[0]}`).toBe(true);
        expect(sceneCaption(scene)).not.toBe(baseCaption);
        expect(Buffer.from(renderScene(scene).rgba).equals(Buffer.from(basePixels))).toBe(false);
        expect(sceneKey(scene)).not.toBe(sceneKey(f.base));
        // The modification text names the new value.
        const m = modificationText(f.base, scene);
        const gi = Number(/groups\[(\d)\]/.exec(d[0])?.[1] ?? 0);
        const newValue = attr === 'color' ? scene.groups[gi].color : attr === 'shape' ? scene.groups[gi].shape : attr === 'count' ? ['', 'one', 'two', 'three'][scene.groups[gi].count] : undefined;
        if (newValue !== undefined) expect(m, m).toContain(newValue);
      }
    }
    // No two scenes in the dataset mean the same thing.
    expect(keys.size).toBe(fams.length * 5);
  });

  it('changeAttribute keeps the groups in different colours', () => {
    const rng = new SeededRng(11);
    for (let i = 0; i < 300; i++) {
      const s = randomScene(rng);
      for (const a of ATTRIBUTES) {
        const t: Scene = changeAttribute(s, a, rng);
        expect(new Set(t.groups.map((g) => g.color)).size).toBe(t.groups.length);
        expect(diffScenes(s, t).length).toBe(1);
      }
    }
  });

  it('the benchmark: deterministic, images written as PNG that decode to the rendered pixels, loads back clean', async () => {
    const a = buildSceneBenchmark({ families: 30, seed: 2 });
    const b = buildSceneBenchmark({ families: 30, seed: 2 });
    expect(JSON.stringify({ q: a.queries, p: a.pool, at: a.attributes })).toBe(JSON.stringify({ q: b.queries, p: b.pool, at: b.attributes }));
    expect(JSON.stringify(buildSceneBenchmark({ families: 30, seed: 3 }).queries)).not.toBe(JSON.stringify(a.queries));
    for (const t of [0, 3, 6]) expect(SPLITS.reduce((n, s) => n + a.queries[s].filter((q) => q.task_id === t).length, 0)).toBeGreaterThan(0);

    const out = join(dir, 'scenes');
    await writeSceneBenchmark(out, a);
    const loaded = await loadBenchmarkDir(out, { checkImages: true });
    expect(loaded.issues.map(formatIssue)).toEqual([]);
    expect(loaded.skipped).toBe(0);
    expect(loaded.queries).toEqual(a.queries);
    for (const [path, img] of a.images) {
      const back = decodeImage(readFileSync(join(out, path)), path);
      expect(Buffer.from(back.rgba).equals(Buffer.from(img.rgba)), path).toBe(true);
    }
    // Hard negatives are the family's near-duplicates; every candidate of a query is in its split's family.
    const fam = new Map(a.attributes.map((x) => [x.did, x]));
    for (const s of SPLITS) {
      for (const q of a.queries[s]) {
        const f = fam.get(q.pos_cand_list[0])!.family;
        for (const d of [...q.pos_cand_list, ...q.neg_cand_list]) {
          expect(fam.get(d)!.family).toBe(f);
          expect(fam.get(d)!.split).toBe(s);
        }
        expect(q.neg_cand_list.length).toBe(4);
      }
    }
  });
});
