// A procedural generator of scenes: one or two groups of identical shapes (circle,
// square, triangle) in one of six colours, on a plain white 64x64 background, rendered
// by our own rasteriser (exact colours, no antialiasing, so a test can count pixels),
// with a caption ("two red circles above a blue square") and controlled near-duplicates:
// the same scene with exactly one attribute changed (a colour, a count, the position,
// a shape). It writes an M-BEIR benchmark with fine-grained hard negatives (tasks 0, 3
// and 6), for tests and as a second benchmark. Deterministic per seed.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import type { RgbaImage } from '../../model/image.ts';
import { TASKS, type MbeirCandidate, type MbeirQuery } from './mbeir-types.ts';
import { type Benchmark, type BenchmarkMeta, type TaskMeta, taskPoolFile, writeBenchmarkDir } from './mbeir.ts';
import { SPLITS, type SeededRng, type Split, rngFor, splitOf } from './seeded.ts';

export const SCENE_SIZE = 64;
export const SHAPES = ['circle', 'square', 'triangle'] as const;
export type Shape = (typeof SHAPES)[number];
export const COLORS = ['red', 'green', 'blue', 'yellow', 'purple', 'orange'] as const;
export type ColorName = (typeof COLORS)[number];
/** Exact RGB of each colour (far apart, so no colour is mistaken for another). */
export const PALETTE: Record<ColorName, [number, number, number]> = {
  red: [220, 30, 30],
  green: [30, 160, 60],
  blue: [30, 70, 220],
  yellow: [240, 210, 20],
  purple: [140, 50, 180],
  orange: [250, 130, 10],
};
export const BACKGROUND: [number, number, number] = [255, 255, 255];
/** Where a lone group sits. */
export const POSITIONS = ['top', 'bottom', 'left', 'right', 'center'] as const;
export type Position = (typeof POSITIONS)[number];
/** Where the first of two groups sits relative to the second. */
export const RELATIONS = ['above', 'below', 'left of', 'right of'] as const;
export type Relation = (typeof RELATIONS)[number];
export const MAX_COUNT = 3;

export interface Group {
  shape: Shape;
  color: ColorName;
  /** 1..MAX_COUNT identical objects. */
  count: number;
}

/** A scene: one group with a position, or two groups (different colours) with a relation. */
export interface Scene {
  groups: Group[];
  /** One group: where it sits. */
  position?: Position;
  /** Two groups: where groups[0] is relative to groups[1]. */
  relation?: Relation;
  /** Fixes the sizes and offsets of the objects (near-duplicates keep it). */
  layoutSeed: number;
}

export type Attribute = 'color' | 'count' | 'position' | 'shape';
export const ATTRIBUTES: readonly Attribute[] = ['color', 'count', 'position', 'shape'];

// ---------------------------------------------------------------- captions

const COUNT_WORDS = ['zero', 'one', 'two', 'three', 'four'];
const POSITION_WORDS: Record<Position, string> = { top: 'at the top', bottom: 'at the bottom', left: 'on the left', right: 'on the right', center: 'in the middle' };
const MOVE_WORDS: Record<Position, string> = { top: 'to the top', bottom: 'to the bottom', left: 'to the left', right: 'to the right', center: 'to the middle' };
const RELATION_WORDS: Record<Relation, string> = { above: 'above', below: 'below', 'left of': 'to the left of', 'right of': 'to the right of' };

const article = (word: string) => (/^[aeiou]/.test(word) ? 'an' : 'a');

/** "a red circle", "two blue squares". */
export function groupPhrase(g: Group): string {
  if (g.count === 1) return `${article(g.color)} ${g.color} ${g.shape}`;
  return `${COUNT_WORDS[g.count]} ${g.color} ${g.shape}s`;
}

/** "two red circles above a blue square", "three green triangles on the left". */
export function sceneCaption(s: Scene): string {
  if (s.groups.length === 1) return `${groupPhrase(s.groups[0])} ${POSITION_WORDS[s.position!]}`;
  return `${groupPhrase(s.groups[0])} ${RELATION_WORDS[s.relation!]} ${groupPhrase(s.groups[1])}`;
}

/** A key equal for scenes that mean the same ("A below B" is "B above A"). */
export function sceneKey(s: Scene): string {
  const g = (x: Group) => `${x.count} ${x.color} ${x.shape}`;
  if (s.groups.length === 1) return `${g(s.groups[0])} @${s.position}`;
  const [a, b] = s.groups;
  switch (s.relation!) {
    case 'above':
      return `${g(a)} above ${g(b)}`;
    case 'below':
      return `${g(b)} above ${g(a)}`;
    case 'left of':
      return `${g(a)} left of ${g(b)}`;
    case 'right of':
      return `${g(b)} left of ${g(a)}`;
  }
}

// ---------------------------------------------------------------- layout and rendering

interface Rect {
  x: number;
  y: number;
  w: number;
  h: number;
}

const HALF = SCENE_SIZE / 2;
const REGIONS: Record<Position, Rect> = {
  top: { x: 0, y: 0, w: SCENE_SIZE, h: HALF },
  bottom: { x: 0, y: HALF, w: SCENE_SIZE, h: HALF },
  left: { x: 0, y: 0, w: HALF, h: SCENE_SIZE },
  right: { x: HALF, y: 0, w: HALF, h: SCENE_SIZE },
  center: { x: 8, y: 16, w: 48, h: 32 },
};

/** The region of each group. */
function groupRegions(s: Scene): Rect[] {
  if (s.groups.length === 1) return [REGIONS[s.position!]];
  const pair: Record<Relation, [Position, Position]> = { above: ['top', 'bottom'], below: ['bottom', 'top'], 'left of': ['left', 'right'], 'right of': ['right', 'left'] };
  const [a, b] = pair[s.relation!];
  return [REGIONS[a], REGIONS[b]];
}

export const MIN_OBJECT = 10;
export const MAX_OBJECT = 16;
/** How far (px) an object may sit from its cell's centre. */
export const JITTER = 3;

/** One drawn object: its shape, colour and bounding box (side `size`). */
export interface PlacedObject {
  shape: Shape;
  color: ColorName;
  group: number;
  x: number;
  y: number;
  size: number;
}

/**
 * Lays the objects out: each group's region is cut into `count` cells along its long
 * side; each object gets a size and a small offset from its cell's centre (staying at
 * least 1 px from the cell's edges, so objects never touch), fixed by layoutSeed.
 */
export function layoutScene(s: Scene): PlacedObject[] {
  const out: PlacedObject[] = [];
  groupRegions(s).forEach((r, gi) => {
    const g = s.groups[gi];
    const rng = rngFor(s.layoutSeed, `group${gi}`);
    const along = r.w >= r.h;
    for (let i = 0; i < g.count; i++) {
      const cw = along ? Math.floor(r.w / g.count) : r.w;
      const ch = along ? r.h : Math.floor(r.h / g.count);
      const cx = along ? r.x + i * cw : r.x;
      const cy = along ? r.y : r.y + i * ch;
      const maxSize = Math.min(MAX_OBJECT, cw - 2, ch - 2);
      const size = MIN_OBJECT + Math.floor(rng.next() * (maxSize - MIN_OBJECT + 1));
      // Near the cell's centre (+-JITTER px), so a group's position is never in doubt.
      const place = (c0: number, len: number, u: number) => {
        const at = Math.round(c0 + (len - size) / 2 + (u * 2 - 1) * JITTER);
        return Math.min(c0 + len - size - 1, Math.max(c0 + 1, at));
      };
      const x = place(cx, cw, rng.next());
      const y = place(cy, ch, rng.next());
      out.push({ shape: g.shape, color: g.color, group: gi, x, y, size });
    }
  });
  return out;
}

/** Whether pixel (px, py) (its centre) is inside the object. */
function covers(o: PlacedObject, px: number, py: number): boolean {
  const u = px + 0.5 - o.x;
  const v = py + 0.5 - o.y;
  if (u < 0 || v < 0 || u > o.size || v > o.size) return false;
  switch (o.shape) {
    case 'square':
      return true;
    case 'circle': {
      const r = o.size / 2;
      return (u - r) * (u - r) + (v - r) * (v - r) <= r * r;
    }
    case 'triangle':
      // Apex at the top centre, base along the bottom edge.
      return Math.abs(u - o.size / 2) <= (v / o.size) * (o.size / 2);
  }
}

/** Renders a scene to a 64x64 RGBA image (opaque). */
export function renderScene(s: Scene): RgbaImage {
  const n = SCENE_SIZE;
  const rgba = new Uint8Array(n * n * 4);
  for (let i = 0; i < n * n; i++) {
    rgba[i * 4] = BACKGROUND[0];
    rgba[i * 4 + 1] = BACKGROUND[1];
    rgba[i * 4 + 2] = BACKGROUND[2];
    rgba[i * 4 + 3] = 255;
  }
  for (const o of layoutScene(s)) {
    const [r, g, b] = PALETTE[o.color];
    for (let y = o.y; y < Math.min(n, o.y + o.size); y++) {
      for (let x = o.x; x < Math.min(n, o.x + o.size); x++) {
        if (!covers(o, x, y)) continue;
        const p = (y * n + x) * 4;
        rgba[p] = r;
        rgba[p + 1] = g;
        rgba[p + 2] = b;
      }
    }
  }
  return { width: n, height: n, rgba };
}

/** PNG bytes of an RGBA image. */
export function encodePng(img: RgbaImage): Buffer {
  const png = new PNG({ width: img.width, height: img.height });
  png.data = Buffer.from(img.rgba.buffer, img.rgba.byteOffset, img.rgba.byteLength);
  return PNG.sync.write(png);
}

// ---------------------------------------------------------------- sampling and near-duplicates

/** A random scene (half of them with one group). */
export function randomScene(rng: SeededRng): Scene {
  const group = (avoid: ColorName[]): Group => ({
    shape: rng.pick(SHAPES),
    color: rng.pick(COLORS.filter((c) => !avoid.includes(c))),
    count: rng.range(1, MAX_COUNT),
  });
  const layoutSeed = Math.floor(rng.next() * 2 ** 31);
  if (rng.next() < 0.5) return { groups: [group([])], position: rng.pick(POSITIONS), layoutSeed };
  const a = group([]);
  return { groups: [a, group([a.color])], relation: rng.pick(RELATIONS), layoutSeed };
}

const cloneScene = (s: Scene): Scene => ({ ...s, groups: s.groups.map((g) => ({ ...g })) });

/**
 * The scene with one attribute changed: a group's colour (to one no group has), a group's
 * count, the position (lone group) or relation (two groups), or a group's shape.
 */
export function changeAttribute(s: Scene, attr: Attribute, rng: SeededRng): Scene {
  const out = cloneScene(s);
  const gi = rng.int(s.groups.length);
  const g = out.groups[gi];
  switch (attr) {
    case 'color':
      g.color = rng.pick(COLORS.filter((c) => !s.groups.some((x) => x.color === c)));
      break;
    case 'count':
      g.count = rng.pick([1, 2, 3].filter((c) => c !== g.count));
      break;
    case 'shape':
      g.shape = rng.pick(SHAPES.filter((x) => x !== g.shape));
      break;
    case 'position':
      if (s.groups.length === 1) out.position = rng.pick(POSITIONS.filter((p) => p !== s.position));
      else out.relation = rng.pick(RELATIONS.filter((r) => r !== s.relation));
      break;
  }
  return out;
}

/** The attributes in which two scenes differ: "groups[1].color", "position", "relation", ... */
export function diffScenes(a: Scene, b: Scene): string[] {
  if (a.groups.length !== b.groups.length) return ['groups.length'];
  const d: string[] = [];
  a.groups.forEach((g, i) => {
    for (const k of ['shape', 'color', 'count'] as const) if (g[k] !== b.groups[i][k]) d.push(`groups[${i}].${k}`);
  });
  if (a.position !== b.position) d.push('position');
  if (a.relation !== b.relation) d.push('relation');
  return d;
}

/** The modification text that turns `from` into `to` (which differ in one attribute). */
export function modificationText(from: Scene, to: Scene): string {
  const diff = diffScenes(from, to);
  if (diff.length !== 1) throw new Error(`modificationText: scenes differ in ${diff.length} attributes (${diff.join(', ') || 'none'}), expected 1`);
  const m = /^groups\[(\d)\]\.(\w+)$/.exec(diff[0]);
  if (m) {
    const i = Number(m[1]);
    const a = from.groups[i];
    const b = to.groups[i];
    const the = a.count === 1 ? `the ${a.color} ${a.shape}` : `the ${a.color} ${a.shape}s`;
    switch (m[2]) {
      case 'color':
        return `make ${the} ${b.color}`;
      case 'shape':
        return a.count === 1 ? `turn ${the} into ${article(b.shape)} ${b.shape}` : `turn ${the} into ${b.shape}s`;
      case 'count':
        return `${COUNT_WORDS[b.count]} ${a.color} ${a.shape}${b.count > 1 ? 's' : ''} instead of ${COUNT_WORDS[a.count]}`;
    }
  }
  if (diff[0] === 'position') {
    const g = from.groups[0];
    return `move ${g.count === 1 ? 'it' : 'them'} ${MOVE_WORDS[to.position!]}`;
  }
  return `put ${groupPhrase(from.groups[0]).replace(/^(a|an|one|two|three) /, 'the ')} ${RELATION_WORDS[to.relation!]} ${groupPhrase(from.groups[1]).replace(/^(a|an|one|two|three) /, 'the ')}`;
}

/** A base scene and one near-duplicate per attribute. */
export interface SceneFamily {
  id: string;
  base: Scene;
  variants: { attr: Attribute; scene: Scene }[];
}

/**
 * Samples `n` families whose scenes all mean different things (no caption of one scene
 * could describe another), so every query has exactly one answer.
 */
export function sampleFamilies(n: number, seed: number): SceneFamily[] {
  const used = new Set<string>();
  const out: SceneFamily[] = [];
  const rng = rngFor(seed, 'scenes');
  let tries = 0;
  while (out.length < n) {
    if (++tries > n * 200) throw new Error(`sampleFamilies: could not find ${n} families of distinct scenes (got ${out.length})`);
    const base = randomScene(rng);
    const keys = new Set([sceneKey(base)]);
    const variants: SceneFamily['variants'] = [];
    for (const attr of ATTRIBUTES) {
      for (let t = 0; t < 20; t++) {
        const v = changeAttribute(base, attr, rng);
        const k = sceneKey(v);
        if (!used.has(k) && !keys.has(k)) {
          keys.add(k);
          variants.push({ attr, scene: v });
          break;
        }
      }
    }
    if (variants.length < ATTRIBUTES.length || [...keys].some((k) => used.has(k))) continue;
    for (const k of keys) used.add(k);
    out.push({ id: `s${String(out.length).padStart(5, '0')}`, base, variants });
  }
  return out;
}

// ---------------------------------------------------------------- the benchmark

export interface SceneBenchmarkOptions {
  /** Scene families (each 5 scenes). Default 200. */
  families?: number;
  seed?: number;
  fractions?: [number, number, number];
}

export interface SceneAttributes {
  did: string;
  kind: 'image' | 'caption';
  family: string;
  /** 'base' or the attribute changed from the base. */
  variant: 'base' | Attribute;
  scene: Scene;
  caption: string;
  split: Split;
}

export interface SceneBenchmark extends Benchmark {
  attributes: SceneAttributes[];
  /** Relative image path -> rendered image, written under the dataset dir. */
  images: Map<string, RgbaImage>;
  card: string;
}

const SCENE_TASKS: Record<number, Omit<TaskMeta, 'pool_size' | 'pool_file'>> = {
  0: { name: TASKS[0], query: 'the caption of a scene', candidates: 'scene images' },
  3: { name: TASKS[3], query: 'a scene image', candidates: 'scene captions' },
  6: { name: TASKS[6], query: 'a base scene image + a text that changes one attribute', candidates: 'scene images' },
};

/** Builds the scene benchmark in memory; deterministic per seed. */
export function buildSceneBenchmark(opts: SceneBenchmarkOptions = {}): SceneBenchmark {
  const seed = opts.seed ?? 1;
  const fractions = opts.fractions ?? [0.8, 0.1, 0.1];
  const families = sampleFamilies(opts.families ?? 200, seed);
  const pool: MbeirCandidate[] = [];
  const attributes: SceneAttributes[] = [];
  const images = new Map<string, RgbaImage>();
  const queries: Record<Split, MbeirQuery[]> = { train: [], val: [], test: [] };
  const counts: Record<string, Record<Split, number>> = { 0: { train: 0, val: 0, test: 0 }, 3: { train: 0, val: 0, test: 0 }, 6: { train: 0, val: 0, test: 0 } };
  const imgPool: string[] = [];
  const capPool: string[] = [];
  const push = (split: Split, q: MbeirQuery) => {
    queries[split].push(q);
    counts[q.task_id][split]++;
  };
  for (const f of families) {
    const split = splitOf(f.id, seed, fractions);
    const members = [{ name: f.id, variant: 'base' as const, scene: f.base }, ...f.variants.map((v) => ({ name: `${f.id}-${v.attr}`, variant: v.attr, scene: v.scene }))];
    const ids = members.map((m) => ({ img: `img:scene:${m.name}`, cap: `txt:scene:${m.name}`, path: `images/${m.name}.png` }));
    members.forEach((m, i) => {
      const caption = sceneCaption(m.scene);
      images.set(ids[i].path, renderScene(m.scene));
      pool.push({ did: ids[i].img, txt: null, img_path: ids[i].path, modality: 'image' });
      pool.push({ did: ids[i].cap, txt: caption, img_path: null, modality: 'text' });
      imgPool.push(ids[i].img);
      capPool.push(ids[i].cap);
      for (const kind of ['image', 'caption'] as const) {
        attributes.push({ did: kind === 'image' ? ids[i].img : ids[i].cap, kind, family: f.id, variant: m.variant, scene: m.scene, caption, split });
      }
    });
    members.forEach((m, i) => {
      const others = ids.filter((_, j) => j !== i);
      push(split, { qid: `0:${m.name}`, query_txt: sceneCaption(m.scene), query_img_path: null, query_modality: 'text', pos_cand_list: [ids[i].img], neg_cand_list: others.map((o) => o.img), task_id: 0 });
      push(split, { qid: `3:${m.name}`, query_txt: null, query_img_path: ids[i].path, query_modality: 'image', pos_cand_list: [ids[i].cap], neg_cand_list: others.map((o) => o.cap), task_id: 3 });
      if (i > 0) {
        push(split, {
          qid: `6:${m.name}`,
          query_txt: modificationText(f.base, m.scene),
          query_img_path: ids[0].path,
          query_modality: 'image,text',
          pos_cand_list: [ids[i].img],
          neg_cand_list: others.map((o) => o.img),
          task_id: 6,
        });
      }
    });
  }
  const taskPools = new Map<number, string[]>([
    [0, imgPool],
    [3, capPool],
    [6, imgPool],
  ]);
  const tasks: Record<string, TaskMeta> = {};
  for (const [t, dids] of taskPools) tasks[t] = { ...SCENE_TASKS[t], pool_file: taskPoolFile(t), pool_size: dids.length };
  const meta: BenchmarkMeta = {
    name: 'scenes-mbeir',
    version: 1,
    seed,
    image_root: '.',
    counts,
    pool_size: pool.length,
    tasks,
    options: { families: families.length, fractions },
  };
  const card = sceneCard(meta);
  return { queries, pool, taskPools, meta, attributes, images, card };
}

/** Writes the scene benchmark: images/*.png, the M-BEIR files, attributes.jsonl, DATASET.md. */
export async function writeSceneBenchmark(out: string, bench: SceneBenchmark): Promise<void> {
  await mkdir(join(out, 'images'), { recursive: true });
  for (const [path, img] of bench.images) await writeFile(join(out, path), encodePng(img));
  await writeBenchmarkDir(out, bench, { jsonl: { 'attributes.jsonl': bench.attributes }, text: { 'DATASET.md': bench.card } });
}

function sceneCard(meta: BenchmarkMeta): string {
  const rows = Object.keys(meta.tasks).map((t) => {
    const c = meta.counts[t];
    return `| ${t} | ${meta.tasks[t].name} | ${c.train} | ${c.val} | ${c.test} | ${meta.tasks[t].pool_size} |`;
  });
  const opt = meta.options as { families: number };
  return `# scenes-mbeir: procedural shape scenes in the M-BEIR format

Generated by \`train/data/scenes.ts\`; seed ${meta.seed}, ${opt.families} scene families.

| task | type | train | val | test | pool |
|---:|---|---:|---:|---:|---:|
${rows.join('\n')}

Each family is a base scene (one or two groups of 1-3 identical circles, squares or
triangles in one of six colours, 64x64, white background) and four near-duplicates that
each change exactly one attribute: a colour, a count, the position (or the relation of
two groups), a shape. The other members of the family are the hard negatives of each
query. No two scenes in the dataset mean the same thing. Task 6 queries pair the base
image with a text naming the change ("make the red circles blue"). Splits are by family
(${SPLITS.join('/')}, seeded hash). Images are in \`images/\` (image root: this folder).
\`attributes.jsonl\` gives each candidate's scene specification. All content is generated
by our code (no third-party data).
`;
}
