// Our default benchmark, built from real data shipped in npm packages: the Google (Noto)
// and Twitter (Twemoji) 64 px emoji images of emoji-datasource, with names from
// emojibase-data (CLDR labels) and its keywords (tags). Nothing is copied: image paths
// are relative to the project's node_modules folder, recorded as the image root.
//
// Tasks (M-BEIR ids): 0 text -> image, 1 text -> text, 3 image -> text, 4 image -> image
// across vendors, 6 image + modifier text -> image (skin tones). One shared pool (every
// candidate once, like M-BEIR's global pool) plus a local pool per task (the candidates
// of the task's target kind, like M-BEIR's per-task pools). Splits are by emoji group,
// so no query, emoji or skin-tone variant of an emoji is shared between splits. See
// datasetCard() for the full description that goes into DATASET.md.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { TASKS, type MbeirCandidate, type MbeirQuery, type Modality } from './mbeir-types.ts';
import {
  type Benchmark,
  type BenchmarkMeta,
  type LoadBenchmarkOptions,
  type LoadedBenchmark,
  type TaskMeta,
  iterateJsonl,
  loadBenchmarkDir,
  taskPoolFile,
  writeBenchmarkDir,
} from './mbeir.ts';
import { SPLITS, type Split, rngFor, splitOf } from './seeded.ts';

export const EMOJI_BENCHMARK_VERSION = 1;
export const EMOJI_TASK_IDS = [0, 1, 3, 4, 6] as const;

/** Skin-tone modifier code points and their CLDR names. */
export const SKIN_TONES: Record<string, string> = {
  '1F3FB': 'light skin tone',
  '1F3FC': 'medium-light skin tone',
  '1F3FD': 'medium skin tone',
  '1F3FE': 'medium-dark skin tone',
  '1F3FF': 'dark skin tone',
};

export interface EmojiBenchmarkOptions {
  /** Fixes every choice (splits, phrasings, negatives, subsets). Default 1. */
  seed?: number;
  /** At most this many queries per task in each split (tests, CI); the pool keeps only what they reference. */
  maxPerTask?: number;
  /** Hard negatives per query (same subcategory, same split). Default 8. */
  hardNegatives?: number;
  /** train / val / test shares of emoji groups. Default [0.8, 0.1, 0.1]. */
  fractions?: [number, number, number];
  /** Folder holding emoji-datasource-google/ and emoji-datasource-twitter/ (default: the project's node_modules). */
  imageRoot?: string;
}

/** The true attributes of one candidate, for reasoning traces (attributes.jsonl). */
export interface EmojiAttributes {
  did: string;
  kind: 'image' | 'description' | 'name';
  /** emoji-datasource's unified code of the emoji shown or named, e.g. "1F44B-1F3FB". */
  unified: string;
  /** unified code of the emoji without skin tone. */
  base: string;
  /** CLDR label (emojibase), e.g. "waving hand: dark skin tone". */
  name: string;
  short_name: string;
  category: string;
  subcategory: string;
  keywords: string[];
  /** e.g. "dark skin tone", or two tones joined by ", "; null without modifier. */
  skin_tone: string | null;
  /** Modifier code points in the code, in order (empty without). */
  tone_codes: string[];
  /** Image vendor; null for text candidates. */
  vendor: 'google' | null;
  split: Split;
}

/** The true attributes of one query (query_attributes.jsonl). */
export interface EmojiQueryAttributes {
  qid: string;
  task_id: number;
  split: Split;
  /** The emoji the query is about (for task 6: the target variant). */
  unified: string;
  base: string;
  name: string;
  category: string;
  subcategory: string;
  skin_tone: string | null;
  tone_codes: string[];
  /** Vendor of the query image, null for text queries. */
  query_vendor: 'google' | 'twitter' | null;
  /** Task 6: the modifier text; otherwise null. */
  modifier: string | null;
}

export interface EmojiBenchmark extends Benchmark {
  attributes: EmojiAttributes[];
  queryAttributes: EmojiQueryAttributes[];
  /** DATASET.md text. */
  card: string;
}

// ---------------------------------------------------------------- sources

interface DsVariant {
  unified: string;
  image: string;
  has_img_google: boolean;
  has_img_twitter: boolean;
}
interface DsEntry extends DsVariant {
  name: string;
  short_name: string;
  category: string;
  subcategory: string;
  sort_order: number;
  skin_variations?: Record<string, DsVariant>;
}
interface EbEntry {
  label: string;
  hexcode: string;
  tags?: string[];
  skins?: EbEntry[];
}

const require = createRequire(import.meta.url);

/** The node_modules folder that holds the emoji packages (the default image root). */
export function defaultImageRoot(): string {
  return dirname(dirname(require.resolve('emoji-datasource-google/package.json')));
}

export const vendorImagePath = (vendor: 'google' | 'twitter', image: string) => `emoji-datasource-${vendor}/img/${vendor}/64/${image}`;

function readJson<T>(pkgFile: string): T {
  return JSON.parse(readFileSync(require.resolve(pkgFile), 'utf8')) as T;
}

/** emojibase writes codes without FE0F (variation selector); emoji-datasource keeps some. */
const normHex = (hex: string) => hex.toUpperCase().split('-').filter((p) => p !== 'FE0F').join('-');

/** Lower-case word stems (trailing "s" dropped), for overlap tests between names and keywords. */
export function wordStems(text: string): Set<string> {
  return new Set((text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? []).map((w) => (w.length > 3 ? w.replace(/s$/, '') : w)));
}

/** One image-able emoji: a base, or a skin-tone variant of one. */
interface Emoji {
  unified: string;
  code: string;
  base: Emoji | null;
  image: string;
  name: string;
  shortName: string;
  category: string;
  subcategory: string;
  /** emojibase tags of the base emoji (variants inherit them). */
  keywords: string[];
  toneCodes: string[];
  skinTone: string | null;
  variants: Emoji[];
  order: number;
  hash: { google: string; twitter: string };
  split: Split;
}

function toneText(codes: string[]): string {
  const uniq = [...new Set(codes)];
  return uniq.map((c) => SKIN_TONES[c] ?? c).join(', ');
}

interface Sources {
  emojis: Emoji[];
  excluded: { component: number; noImages: number };
  versions: Record<string, string>;
}

function loadSources(imageRoot: string): Sources {
  const ds = readJson<DsEntry[]>('emoji-datasource-google/emoji.json');
  const eb = readJson<EbEntry[]>('emojibase-data/en/data.json');
  const ebByHex = new Map<string, EbEntry>();
  for (const e of eb) {
    ebByHex.set(normHex(e.hexcode), e);
    for (const s of e.skins ?? []) ebByHex.set(normHex(s.hexcode), s);
  }
  const fileHash = (vendor: 'google' | 'twitter', image: string): string | null => {
    try {
      return createHash('sha1').update(readFileSync(join(imageRoot, vendorImagePath(vendor, image)))).digest('hex');
    } catch {
      return null;
    }
  };
  const excluded = { component: 0, noImages: 0 };
  const emojis: Emoji[] = [];
  const sorted = ds.slice().sort((a, b) => a.sort_order - b.sort_order || a.unified.localeCompare(b.unified));
  for (const d of sorted) {
    // The skin-tone swatches and hair components are building blocks, not emojis to find.
    if (d.category === 'Component') {
      excluded.component++;
      continue;
    }
    const g = d.has_img_google ? fileHash('google', d.image) : null;
    const t = d.has_img_twitter ? fileHash('twitter', d.image) : null;
    if (g === null || t === null) {
      excluded.noImages++;
      continue;
    }
    const ebe = ebByHex.get(normHex(d.unified));
    const name = ebe?.label ?? d.name.toLowerCase();
    const base: Emoji = {
      unified: d.unified,
      code: d.unified.toLowerCase(),
      base: null,
      image: d.image,
      name,
      shortName: d.short_name,
      category: d.category,
      subcategory: d.subcategory,
      keywords: ebe?.tags ?? [],
      toneCodes: [],
      skinTone: null,
      variants: [],
      order: emojis.length,
      hash: { google: g, twitter: t },
      split: 'train',
    };
    emojis.push(base);
    for (const [key, v] of Object.entries(d.skin_variations ?? {})) {
      const vg = v.has_img_google ? fileHash('google', v.image) : null;
      const vt = v.has_img_twitter ? fileHash('twitter', v.image) : null;
      if (vg === null || vt === null) {
        excluded.noImages++;
        continue;
      }
      const toneCodes = [...new Set(key.split('-'))];
      const skinTone = toneText(toneCodes);
      const variant: Emoji = {
        ...base,
        unified: v.unified,
        code: v.unified.toLowerCase(),
        base,
        image: v.image,
        name: ebByHex.get(normHex(v.unified))?.label ?? `${name}: ${skinTone}`,
        toneCodes,
        skinTone,
        variants: [],
        order: emojis.length,
        hash: { google: vg, twitter: vt },
      };
      base.variants.push(variant);
      emojis.push(variant);
    }
  }
  const versions: Record<string, string> = {};
  for (const p of ['emoji-datasource-google', 'emoji-datasource-twitter', 'emojibase-data']) {
    versions[p] = readJson<{ version: string }>(`${p}/package.json`).version;
  }
  return { emojis, excluded, versions };
}

/**
 * Groups base emojis that must share a split: a base with its variants, and bases whose
 * images are byte-identical in either vendor (territories sharing a flag, families drawn
 * alike), which would otherwise leak one answer across splits, and the extra links given
 * (bases that answer the same task-1 query). Returns the group key of each base.
 */
function splitGroups(emojis: Emoji[], links: [Emoji, Emoji][]): { groupOf: Map<Emoji, string>; merged: number } {
  const parent = new Map<Emoji, Emoji>();
  const find = (e: Emoji): Emoji => {
    let r = e;
    while (parent.get(r) !== r) r = parent.get(r)!;
    parent.set(e, r);
    return r;
  };
  const union = (a: Emoji, b: Emoji) => {
    const ra = find(a);
    const rb = find(b);
    if (ra !== rb) parent.set(ra.order < rb.order ? rb : ra, ra.order < rb.order ? ra : rb);
  };
  const bases = emojis.filter((e) => e.base === null);
  for (const b of bases) parent.set(b, b);
  const seen = new Map<string, Emoji>();
  let merged = 0;
  for (const e of emojis) {
    const b = e.base ?? e;
    for (const key of [`g${e.hash.google}`, `t${e.hash.twitter}`]) {
      const other = seen.get(key);
      if (other === undefined) seen.set(key, b);
      else if (find(other) !== find(b)) {
        union(other, b);
        merged++;
      }
    }
  }
  for (const [a, b] of links) {
    if (find(a.base ?? a) !== find(b.base ?? b)) {
      union(a.base ?? a, b.base ?? b);
      merged++;
    }
  }
  const groupOf = new Map<Emoji, string>();
  for (const b of bases) groupOf.set(b, find(b).unified);
  return { groupOf, merged };
}

// ---------------------------------------------------------------- phrasing

function joinList(items: string[], conj: 'and' | 'or'): string {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} ${conj} ${items[items.length - 1]}`;
}

/** "flag: Egypt" reads better in a sentence as "flag (Egypt)". */
function phraseName(label: string): string {
  const i = label.indexOf(': ');
  return i < 0 ? label : `${label.slice(0, i)} (${label.slice(i + 2)})`;
}

/** Keywords that share no word stem with the name (so they are a real paraphrase). */
export function nonNameKeywords(name: string, keywords: string[]): string[] {
  const stems = wordStems(name);
  return keywords.filter((k) => {
    const ks = wordStems(k);
    return ks.size > 0 && ![...ks].some((w) => stems.has(w));
  });
}

/** Words the task-1 templates add; the test for "no shared word with the answer" skips them. */
export const TASK1_TEMPLATE_WORDS = ['emoji', 'for', 'an', 'about', 'something', 'meaning', 'and', 'or'];

function textToImagePhrase(e: Emoji, seed: number): string {
  const rng = rngFor(seed, `t0:${e.unified}`);
  const n = phraseName(e.name);
  const kws = rng.shuffle(nonNameKeywords(e.name, e.keywords)).slice(0, 2);
  const templates = [
    () => `a picture of ${n}`,
    () => `an emoji of ${n}`,
    () => `the ${n} emoji`,
    () => `an icon showing ${n}`,
    () => (kws.length > 0 ? `${n}, as in ${joinList(kws, 'or')}` : `a drawing of ${n}`),
    () => (kws.length > 0 ? `an emoji of ${n} for ${joinList(kws, 'and')}` : `a small image of ${n}`),
  ];
  return rng.pick(templates)();
}

/**
 * Task 1's keywords for an emoji: up to three of its keywords that share no word with its
 * name, chosen so that as few other emojis as possible have them all (ideally none: the
 * query then has one answer). Among equally specific choices, more keywords, then a
 * seeded pick. `posting` maps a lower-case keyword to the emojis that have it.
 */
function task1Keywords(e: Emoji, seed: number, posting: Map<string, Emoji[]>): { kws: string[]; answers: Emoji[] } | null {
  const rng = rngFor(seed, `k1:${e.unified}`);
  const seen = new Set<string>();
  const kws = rng.shuffle(nonNameKeywords(e.name, e.keywords)).filter((k) => {
    const l = k.toLowerCase();
    if (seen.has(l)) return false;
    seen.add(l);
    return true;
  });
  if (kws.length === 0) return null;
  // The 12 rarest keywords bound the search (at most 298 subsets).
  const pool = kws.sort((a, b) => posting.get(a.toLowerCase())!.length - posting.get(b.toLowerCase())!.length).slice(0, 12);
  const subsets: string[][] = [];
  for (let i = 0; i < pool.length; i++) {
    subsets.push([pool[i]]);
    for (let j = i + 1; j < pool.length; j++) {
      subsets.push([pool[i], pool[j]]);
      for (let k = j + 1; k < pool.length; k++) subsets.push([pool[i], pool[j], pool[k]]);
    }
  }
  let best = { kws: [] as string[], answers: [] as Emoji[] };
  for (const subset of subsets) {
    let answers = posting.get(subset[0].toLowerCase())!;
    for (const k of subset.slice(1)) {
      const has = new Set(posting.get(k.toLowerCase())!);
      answers = answers.filter((x) => has.has(x));
    }
    // Every answer must be a paraphrase too: no keyword may echo any answer's name.
    if (answers.some((x) => nonNameKeywords(x.name, subset).length < subset.length)) continue;
    const better = best.kws.length === 0 || answers.length < best.answers.length || (answers.length === best.answers.length && subset.length > best.kws.length);
    if (better) best = { kws: subset, answers };
  }
  if (best.kws.length === 0) return null;
  // Phrase order: a seeded shuffle, so rarity does not always lead. The emoji itself is the first answer.
  return { kws: rng.shuffle(best.kws), answers: [e, ...best.answers.filter((x) => x !== e)] };
}

/** A task-1 query with more answers than this is too vague to keep. */
export const TASK1_MAX_ANSWERS = 3;

/** Task 1's phrasings of a keyword list (also the retriever's keyword pairs, train/retriever.ts). */
export const KEYWORD_TEMPLATES: readonly ((kws: string[]) => string)[] = [
  (kws) => `emoji for ${joinList(kws, 'and')}`,
  (kws) => `an emoji about ${joinList(kws, 'and')}`,
  (kws) => `something meaning ${joinList(kws, 'or')}`,
  (kws) => kws.join(', '),
];

function keywordPhrase(e: Emoji, kws: string[], seed: number): string {
  return rngFor(seed, `t1:${e.unified}`).pick(KEYWORD_TEMPLATES)(kws);
}

function modifierPhrase(v: Emoji, seed: number): string {
  const rng = rngFor(seed, `t6:${v.unified}`);
  const t = v.skinTone!;
  const templates = [() => t, () => `with ${t}`, () => `the same emoji with ${t}`, () => `make it ${t}`, () => `change to ${t}`];
  return rng.pick(templates)();
}

/** Task 3's text candidates: "name: keywords". */
function description(e: Emoji): string {
  const name = e.name.toLowerCase();
  const kws = e.keywords.filter((k) => k.toLowerCase() !== name).slice(0, 8);
  return kws.length > 0 ? `${e.name}: ${kws.join(', ')}` : e.name;
}

// ---------------------------------------------------------------- building

const did = {
  image: (e: Emoji) => `img:google:${e.code}`,
  desc: (e: Emoji) => `txt:desc:${e.code}`,
  name: (e: Emoji) => `txt:name:${e.code}`,
};

const TASK_META: Record<number, Omit<TaskMeta, 'pool_size' | 'pool_file'>> = {
  0: { name: TASKS[0], query: 'a phrase built from the emoji name (CLDR label) and its keywords', candidates: 'Google (Noto) images of emojis without skin tone' },
  1: { name: TASKS[1], query: 'up to three keywords of the emoji that share no word with its name, in a short phrase', candidates: 'emoji names (CLDR labels) of emojis without skin tone' },
  3: { name: TASKS[3], query: 'the Google image of an emoji without skin tone', candidates: 'text descriptions "name: keywords"' },
  4: { name: TASKS[4], query: 'the Twitter (Twemoji) image of an emoji, skin-tone variants included', candidates: 'Google images of every emoji and skin-tone variant' },
  6: { name: TASKS[6], query: 'the Google image of an emoji without skin tone + a modifier text naming a skin tone', candidates: 'Google images of every emoji and skin-tone variant' },
};

interface Cand {
  row: MbeirCandidate;
  emoji: Emoji;
  /** Equal content (identical image bytes or identical text) means interchangeable. */
  content: string;
  attr: EmojiAttributes;
}

interface QuerySpec {
  task: number;
  emoji: Emoji;
  /** The emoji whose candidate is the answer (task 6: the variant). */
  target: Emoji;
  txt: string | null;
  img: string | null;
  modality: Modality;
  content: string;
  /** The candidates that answer it (before adding look-alikes). */
  primaries: string[];
  modifier: string | null;
  vendor: 'google' | 'twitter' | null;
}

function pushTo<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

/** Builds the whole benchmark in memory; deterministic for a seed. */
export function buildEmojiBenchmark(opts: EmojiBenchmarkOptions = {}): EmojiBenchmark {
  const seed = opts.seed ?? 1;
  const H = opts.hardNegatives ?? 8;
  const fractions = opts.fractions ?? [0.8, 0.1, 0.1];
  const imageRoot = opts.imageRoot ?? defaultImageRoot();
  const { emojis, excluded, versions } = loadSources(imageRoot);
  const bases = emojis.filter((e) => e.base === null);

  // Task 1: a keyword query is answered by every emoji that has all its keywords (the
  // gendered forms of a profession share theirs); those emojis must share a split.
  const posting = new Map<string, Emoji[]>();
  for (const e of bases) {
    for (const k of new Set(e.keywords.map((k) => k.toLowerCase()))) pushTo(posting, k, e);
  }
  const task1 = new Map<Emoji, { kws: string[]; answers: Emoji[] }>();
  const links: [Emoji, Emoji][] = [];
  const task1Dropped = { task1_no_keywords: 0, task1_echoes_a_name: 0, task1_too_vague: 0 };
  for (const e of bases) {
    const t1 = task1Keywords(e, seed, posting);
    if (t1 === null) {
      if (nonNameKeywords(e.name, e.keywords).length === 0) task1Dropped.task1_no_keywords++;
      else task1Dropped.task1_echoes_a_name++;
      continue;
    }
    if (t1.answers.length > TASK1_MAX_ANSWERS) {
      task1Dropped.task1_too_vague++;
      continue;
    }
    task1.set(e, t1);
    for (const b of t1.answers) if (b !== e) links.push([e, b]);
  }
  const { groupOf, merged } = splitGroups(emojis, links);
  for (const e of emojis) e.split = splitOf(groupOf.get(e.base ?? e)!, seed, fractions);

  // ---- candidates
  const cands = new Map<string, Cand>();
  const attrOf = (id: string, kind: EmojiAttributes['kind'], e: Emoji): EmojiAttributes => ({
    did: id,
    kind,
    unified: e.unified,
    base: (e.base ?? e).unified,
    name: e.name,
    short_name: e.shortName,
    category: e.category,
    subcategory: e.subcategory,
    keywords: e.keywords,
    skin_tone: e.skinTone,
    tone_codes: e.toneCodes,
    vendor: kind === 'image' ? 'google' : null,
    split: e.split,
  });
  const addCand = (row: MbeirCandidate, e: Emoji, kind: EmojiAttributes['kind'], content: string) => {
    cands.set(row.did, { row, emoji: e, content, attr: attrOf(row.did, kind, e) });
  };
  for (const e of emojis) {
    addCand({ did: did.image(e), txt: null, img_path: vendorImagePath('google', e.image), modality: 'image' }, e, 'image', `image|${e.hash.google}`);
  }
  for (const e of bases) {
    const d = description(e);
    addCand({ did: did.desc(e), txt: d, img_path: null, modality: 'text' }, e, 'description', `text|${d}`);
    addCand({ did: did.name(e), txt: e.name, img_path: null, modality: 'text' }, e, 'name', `text|${e.name}`);
  }
  const taskPoolAll = new Map<number, string[]>([
    [0, bases.map(did.image)],
    [1, bases.map(did.name)],
    [3, bases.map(did.desc)],
    [4, emojis.map(did.image)],
    [6, emojis.map(did.image)],
  ]);

  // ---- query specs
  const specs: QuerySpec[] = [];
  const dropped = { ...task1Dropped, task6_tone_not_visible: 0 };
  for (const e of bases) {
    specs.push({ task: 0, emoji: e, target: e, txt: textToImagePhrase(e, seed), img: null, modality: 'text', content: '', primaries: [did.image(e)], modifier: null, vendor: null });
    const t1 = task1.get(e);
    if (t1 !== undefined) specs.push({ task: 1, emoji: e, target: e, txt: keywordPhrase(e, t1.kws, seed), img: null, modality: 'text', content: '', primaries: t1.answers.map(did.name), modifier: null, vendor: null });
    specs.push({ task: 3, emoji: e, target: e, txt: null, img: vendorImagePath('google', e.image), modality: 'image', content: `g${e.hash.google}`, primaries: [did.desc(e)], modifier: null, vendor: 'google' });
  }
  for (const e of emojis) {
    specs.push({ task: 4, emoji: e, target: e, txt: null, img: vendorImagePath('twitter', e.image), modality: 'image', content: `t${e.hash.twitter}`, primaries: [did.image(e)], modifier: null, vendor: 'twitter' });
  }
  for (const b of bases) {
    for (const v of b.variants) {
      // Some vendors draw a variant without visible skin (e.g. a snowboarder in a suit):
      // its image equals the base's, and the query has no answer to find.
      if (v.hash.google === b.hash.google) {
        dropped.task6_tone_not_visible++;
        continue;
      }
      const m = modifierPhrase(v, seed);
      specs.push({ task: 6, emoji: b, target: v, txt: m, img: vendorImagePath('google', b.image), modality: 'image,text', content: `g${b.hash.google}`, primaries: [did.image(v)], modifier: m, vendor: 'google' });
    }
  }
  for (const s of specs) s.content = `${s.modality}|${s.content}|${s.txt ?? ''}`;

  // ---- indices for positives and negatives, per task pool
  const poolIndex = new Map<number, { byContent: Map<string, string[]>; bySubSplit: Map<string, string[]> }>();
  for (const [task, dids] of taskPoolAll) {
    const byContent = new Map<string, string[]>();
    const bySubSplit = new Map<string, string[]>();
    for (const d of dids) {
      const c = cands.get(d)!;
      pushTo(byContent, c.content, d);
      pushTo(bySubSplit, `${c.emoji.subcategory}|${c.emoji.split}`, d);
    }
    poolIndex.set(task, { byContent, bySubSplit });
  }

  // ---- queries: identical queries within a task merge (their answers are interchangeable)
  const byTaskContent = new Map<string, QuerySpec[]>();
  for (const s of specs) pushTo(byTaskContent, `${s.task}|${s.content}`, s);
  const mergedQueries: Record<string, number> = {};
  const built: { q: MbeirQuery; spec: QuerySpec }[] = [];
  for (const group of byTaskContent.values()) {
    const s = group[0];
    const idx = poolIndex.get(s.task)!;
    if (group.length > 1) mergedQueries[s.task] = (mergedQueries[s.task] ?? 0) + group.length - 1;
    // Positives: each group member's answer and every candidate with the same content.
    const pos: string[] = [s.primaries[0]]; // the query's own answer first
    const posContent = new Set<string>();
    for (const m of group) {
      for (const p of m.primaries) {
        const c = cands.get(p)!;
        posContent.add(c.content);
        for (const d of idx.byContent.get(c.content)!) if (!pos.includes(d)) pos.push(d);
      }
    }
    // Hard negatives: same subcategory and split; the query emoji's own siblings first
    // (other skin tones, the untoned base); nothing interchangeable with a positive.
    const rng = rngFor(seed, `neg:${s.task}:${s.target.unified}`);
    const pool = idx.bySubSplit.get(`${s.target.subcategory}|${s.target.split}`) ?? [];
    const ok = (d: string) => !posContent.has(cands.get(d)!.content);
    const family = new Set([s.target.base ?? s.target, ...(s.target.base ?? s.target).variants]);
    const siblings = pool.filter((d) => ok(d) && family.has(cands.get(d)!.emoji));
    const others = rng.shuffle(pool.filter((d) => ok(d) && !family.has(cands.get(d)!.emoji)));
    const seenContent = new Set<string>();
    const neg: string[] = [];
    for (const d of [...siblings, ...others]) {
      const c = cands.get(d)!.content;
      if (seenContent.has(c)) continue; // one of each look-alike is enough
      seenContent.add(c);
      neg.push(d);
      if (neg.length >= H) break;
    }
    const qid = `${s.task}:${s.target.code}`;
    built.push({
      q: { qid, query_txt: s.txt, query_img_path: s.img, query_modality: s.modality, pos_cand_list: pos, neg_cand_list: neg, task_id: s.task },
      spec: s,
    });
  }

  // ---- splits, optional subsetting
  const perTaskSplit = new Map<string, { q: MbeirQuery; spec: QuerySpec }[]>();
  for (const b of built) {
    pushTo(perTaskSplit, `${b.spec.task}|${b.spec.target.split}`, b);
  }
  const queries: Record<Split, MbeirQuery[]> = { train: [], val: [], test: [] };
  const queryAttributes: EmojiQueryAttributes[] = [];
  const counts: Record<string, Record<Split, number>> = {};
  for (const task of EMOJI_TASK_IDS) {
    counts[task] = { train: 0, val: 0, test: 0 };
    for (const split of SPLITS) {
      let list = perTaskSplit.get(`${task}|${split}`) ?? [];
      if (opts.maxPerTask !== undefined && list.length > opts.maxPerTask) {
        const keep = new Set(rngFor(seed, `subset:${task}:${split}`).shuffle(list).slice(0, opts.maxPerTask));
        list = list.filter((b) => keep.has(b));
      }
      for (const { q, spec } of list) {
        queries[split].push(q);
        const t = spec.target;
        queryAttributes.push({
          qid: q.qid,
          task_id: task,
          split,
          unified: t.unified,
          base: (t.base ?? t).unified,
          name: t.name,
          category: t.category,
          subcategory: t.subcategory,
          skin_tone: t.skinTone,
          tone_codes: t.toneCodes,
          query_vendor: spec.vendor,
          modifier: spec.modifier,
        });
      }
      counts[task][split] = list.length;
    }
  }

  // ---- pool (pruned to what the queries use when subsetting)
  let keepDid: (d: string) => boolean = () => true;
  if (opts.maxPerTask !== undefined) {
    const used = new Set<string>();
    for (const split of SPLITS) for (const q of queries[split]) for (const d of [...q.pos_cand_list, ...q.neg_cand_list]) used.add(d);
    keepDid = (d) => used.has(d);
  }
  const pool: MbeirCandidate[] = [];
  const attributes: EmojiAttributes[] = [];
  for (const [d, c] of cands) {
    if (!keepDid(d)) continue;
    pool.push(c.row);
    attributes.push(c.attr);
  }
  const taskPools = new Map<number, string[]>();
  const tasks: Record<string, TaskMeta> = {};
  for (const task of EMOJI_TASK_IDS) {
    const dids = taskPoolAll.get(task)!.filter(keepDid);
    taskPools.set(task, dids);
    tasks[task] = { ...TASK_META[task], pool_file: taskPoolFile(task), pool_size: dids.length };
  }

  const basesPerSplit: Record<Split, number> = { train: 0, val: 0, test: 0 };
  for (const b of bases) basesPerSplit[b.split]++;
  const meta: BenchmarkMeta = {
    name: 'emoji-mbeir',
    version: EMOJI_BENCHMARK_VERSION,
    seed,
    image_root: imageRoot,
    counts,
    pool_size: pool.length,
    tasks,
    options: { max_per_task: opts.maxPerTask ?? null, hard_negatives: H, fractions },
    sources: versions,
    emojis: {
      bases: bases.length,
      skin_tone_variants: emojis.length - bases.length,
      bases_per_split: basesPerSplit,
      excluded_components: excluded.component,
      excluded_missing_images: excluded.noImages,
      split_group_unions: merged,
    },
    dropped: { ...dropped, merged_identical_queries: mergedQueries },
    files: [
      ...SPLITS.map((s) => `queries_${s}.jsonl`),
      'pool.jsonl',
      ...EMOJI_TASK_IDS.map(taskPoolFile),
      'attributes.jsonl',
      'query_attributes.jsonl',
      'meta.json',
      'DATASET.md',
    ],
  };
  return { queries, pool, taskPools, meta, attributes, queryAttributes, card: datasetCard(meta) };
}

/** Writes the benchmark directory (see meta.files) and returns nothing; atomic per file. */
export async function writeEmojiBenchmark(out: string, bench: EmojiBenchmark): Promise<void> {
  await writeBenchmarkDir(out, bench, {
    jsonl: { 'attributes.jsonl': bench.attributes, 'query_attributes.jsonl': bench.queryAttributes },
    text: { 'DATASET.md': bench.card },
  });
}

/**
 * Loads a benchmark directory (ours or any in the same layout) with validation. When the
 * recorded image root does not exist here (the data moved to another machine), the
 * emoji benchmark falls back to this project's node_modules.
 */
export async function loadBenchmark(dir: string, opts: LoadBenchmarkOptions = {}): Promise<LoadedBenchmark> {
  if (opts.imageRoot === undefined) {
    try {
      const meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8')) as BenchmarkMeta;
      if (meta.name === 'emoji-mbeir' && !existsSync(meta.image_root)) opts = { ...opts, imageRoot: defaultImageRoot() };
    } catch {
      // loadBenchmarkDir reports an unreadable meta.json with its path.
    }
  }
  return loadBenchmarkDir(dir, opts);
}

/** Reads a JSONL side table (attributes.jsonl, query_attributes.jsonl) keyed by `key`. */
export async function readSideTable<T extends object>(path: string, key: keyof T): Promise<Map<string, T>> {
  const out = new Map<string, T>();
  for await (const { line, value, error } of iterateJsonl(path)) {
    if (error !== undefined) throw new Error(`${path}:${line}: ${error}`);
    out.set(String((value as T)[key]), value as T);
  }
  return out;
}

// ---------------------------------------------------------------- dataset card

/** The dataset card (DATASET.md) for a built benchmark. */
export function datasetCard(meta: BenchmarkMeta): string {
  const em = meta.emojis as Record<string, unknown>;
  const dropped = meta.dropped as { task1_no_keywords: number; task1_echoes_a_name: number; task1_too_vague: number; task6_tone_not_visible: number; merged_identical_queries: Record<string, number> };
  const opt = meta.options as { max_per_task: number | null; hard_negatives: number; fractions: number[] };
  const src = meta.sources as Record<string, string>;
  const tasks = Object.keys(meta.tasks).map(Number).sort((a, b) => a - b);
  const total: Record<Split, number> = { train: 0, val: 0, test: 0 };
  const rows = tasks.map((t) => {
    const c = meta.counts[t];
    for (const s of SPLITS) total[s] += c[s];
    const m = meta.tasks[t];
    return `| ${t} | ${m.name} | ${c.train} | ${c.val} | ${c.test} | ${c.train + c.val + c.test} | ${m.pool_size} |`;
  });
  const taskLines = tasks.map((t) => `- **Task ${t} (${meta.tasks[t].name})**: query = ${meta.tasks[t].query}; candidates = ${meta.tasks[t].candidates} (\`${meta.tasks[t].pool_file}\`).`);
  const bps = em.bases_per_split as Record<Split, number>;
  const merged = Object.entries(dropped.merged_identical_queries).map(([t, n]) => `task ${t}: ${n}`).join(', ') || 'none';
  return `# emoji-mbeir: an emoji retrieval benchmark in the M-BEIR format

Generated by \`train/data/emoji-benchmark.ts\` (\`npm run build-data\`); do not edit by hand.
Version ${meta.version}, seed ${meta.seed}${opt.max_per_task !== null ? `, **subset: at most ${opt.max_per_task} queries per task and split**` : ''}.

## Counts

Queries per task and split, and the size of each task's local pool:

| task | type | train | val | test | total | pool |
|---:|---|---:|---:|---:|---:|---:|
${rows.join('\n')}
| | all | ${total.train} | ${total.val} | ${total.test} | ${total.train + total.val + total.test} | ${meta.pool_size} (pool.jsonl) |

Emojis: ${em.bases} without skin tone (train ${bps.train}, val ${bps.val}, test ${bps.test}) and ${em.skin_tone_variants} skin-tone variants.

## Files

- \`queries_{train,val,test}.jsonl\`: M-BEIR queries \`{qid, query_txt, query_img_path, query_modality, pos_cand_list, neg_cand_list, task_id}\`; qid = \`<task>:<unified code>\`.
- \`pool.jsonl\`: every candidate once \`{did, txt, img_path, modality}\` (M-BEIR's global pool). dids: \`img:google:<code>\`, \`txt:desc:<code>\`, \`txt:name:<code>\`.
- \`pool_task{N}.jsonl\`: the local pool of task N, a subset of pool.jsonl (M-BEIR's per-task pools). Evaluate each task against its local pool.
- \`attributes.jsonl\`: the true attributes of each candidate \`{did, kind, unified, base, name, short_name, category, subcategory, keywords, skin_tone, tone_codes, vendor, split}\`, from the source packages (nothing invented); reasoning traces are synthesised from them.
- \`query_attributes.jsonl\`: the same for each query (its emoji, the modifier text of task 6, the vendor of the query image).
- \`meta.json\`: image root, seed, options, counts, source versions.

Image paths are relative to the image root, the project's \`node_modules\` folder (its absolute path is in meta.json), e.g. \`emoji-datasource-google/img/google/64/1f44d.png\`: no image is copied.

## How it was built

- Sources: \`emoji-datasource-google\` ${src['emoji-datasource-google']} and \`emoji-datasource-twitter\` ${src['emoji-datasource-twitter']} (names, categories, subcategories, skin-tone variations, 64 px PNG images), \`emojibase-data\` ${src['emojibase-data']} (\`en/data.json\`: CLDR labels used as names, tags used as keywords, labels of skin-tone variants).
- Every emoji whose image exists for both vendors (\`has_img_google\` and \`has_img_twitter\`, and the file is there) is used; the ${em.excluded_components} "Component" entries (skin-tone swatches, hair parts) are left out${(em.excluded_missing_images as number) > 0 ? `, and ${em.excluded_missing_images} emojis without both images` : ''}.
${taskLines.join('\n')}
- Task 1 is not string matching: the keywords in a query share no word (nor a plural of one) with the name they must retrieve. They are chosen (up to three) so that as few emojis as possible have them all; every emoji that has them all is a positive (the gendered forms of a profession share their keywords). No keyword may echo the name of any answer. ${dropped.task1_no_keywords} emojis whose keywords all repeat their name, ${dropped.task1_echoes_a_name} whose keywords all echo the name of another emoji that has them, and ${dropped.task1_too_vague} whose best keywords still fit more than ${TASK1_MAX_ANSWERS} emojis have no task-1 query.
- Task 6: one query per skin-tone variant (single tones and two-person combinations); the modifier text names the tone(s) in CLDR words, in a few phrasings. ${dropped.task6_tone_not_visible} variants whose Google image equals the untoned image (no visible skin) have no query.
- Splits: by emoji group, ${opt.fractions.map((f) => Math.round(f * 100)).join('/')} train/val/test by a seeded hash of the group's base code point. A group is an emoji with all its skin-tone variants, merged with any emoji whose image (either vendor) is byte-identical (e.g. territories that share a flag) and with the other answers of its task-1 query (${em.split_group_unions} unions in all). No query, emoji or variant is shared between splits.
- Positives: the candidate of the same emoji, plus any candidate in the task's pool with identical content (byte-identical image or identical text), since those cannot be told apart. Identical queries within a task are merged into one (${merged}).
- Hard negatives (\`neg_cand_list\`, up to ${opt.hard_negatives} per query): candidates of the task's pool from the same subcategory and the same split (so no test emoji appears in training, even as a negative); the query emoji's other skin tones and its untoned form first, then a seeded shuffle of the rest; never a look-alike of a positive.
- The pools hold candidates of every split (the whole catalogue)${opt.max_per_task !== null ? '; in this subset they are pruned to the candidates the queries reference' : ''}; \`attributes.jsonl\` gives each candidate's split for split-local evaluation.
- Phrasings (task 0, 1 and 6 texts), negatives and subsets come from a generator seeded per item: the same seed gives the same files.

## Licenses

- \`emoji-datasource-google\` / \`emoji-datasource-twitter\` (data: names, categories, codes): MIT, Copyright (c) 2013 Cal Henderson.
- Google images: Noto Emoji, Apache License 2.0 (per the emoji-datasource README).
- Twitter images: Twemoji (jdecked fork), graphics under Creative Commons Attribution 4.0 (CC-BY 4.0; per the emoji-datasource README). Attribution: "Twemoji graphics by Twitter, Inc. and other contributors, licensed under CC-BY 4.0".
- \`emojibase-data\` (labels, tags): MIT, Copyright (c) 2017-2019 Miles Johnson. Its English labels and tags follow the Unicode CLDR annotations (the Unicode license), as the emojibase project describes; the package itself states only MIT.
- The benchmark files themselves hold only ids, texts derived from the above and relative image paths.
`;
}
