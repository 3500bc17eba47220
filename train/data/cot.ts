// Synthetic retrieval chains of thought, built from the benchmark's ground truth.
//
// The paper had a 72B model write traces in four steps; we write them from the true
// attributes (attributes.jsonl, query_attributes.jsonl), so every sentence is true:
//   (a) describe the query and the ideal result (its name, skin tone, keywords);
//   (b) eliminate clearly wrong candidates, each with its true name ("is not X");
//   (c) inspect the hard ones (other skin tones of the same emoji, same subcategory) with
//       <inspection-index-start>i<inspection-index-end> and compare details;
//   (d) answer with the index.
// Format: `<think> ... </think><answer>i</answer>`. The inspected content is NOT in the
// text: at training time it is spliced in after each <inspection-index-end>, exactly as
// at inference (model/inspect.ts traceLayout).
//
// Sentence forms (tests re-derive every claim from the attributes):
//   - a candidate is named as `candidate 3 ("cat face")` (lists: `3 ("a"), 4 ("b")`; nameless: `candidate 3`);
//     any other quoted string is the target's name, the base emoji of a task-6 query image,
//     or (in a sentence about keywords) a keyword of the target;
//   - a skin tone is claimed as `candidate 3 ("...") has T` or `the target has T` /
//     `asks for T` / `request for T` / `should have T`;
//   - sentences that reject candidates carry a negation (not / rule out / wrong / but),
//     sentences that accept one carry none.
// Wording is drawn from several templates per step with a seeded generator; the number of
// inspections varies (0..3, more when hard negatives are present).
//
// The styles. `full` names every candidate it rules out and varies its wording: about 640
// tokens at K = 16 with the tiny tokenizer. `brief` keeps the four steps in fixed, short
// forms: `Target: "name".`, one sentence ruling out every clearly wrong candidate by index
// (`Candidates 0, 2 and 5 are wrong.`: wrong because not the target, true by
// construction; other skin tones of the target's emoji included unless inspected), the
// inspected ones by name (skin tones compared as in `full`), and the
// <answer> tag as step (d): about 160 tokens, a quarter, so a training step and a
// generated answer cost a quarter too. `open` is `brief` whose elimination names only the
// clearly wrong candidates (neither the target's emoji in another tone nor of its
// subcategory); hard negatives it does not inspect go unmentioned, so the trace does not
// give the answer away unless it inspects it, and the answer stays a decision.
// `nameless` is `open` without names: the target is described only by what the query
// shows or says (its skin tone), candidates are `Candidate 3`, and only skin tones are
// compared. A small model cannot name an emoji it never saw named (every validation and
// test emoji), and a trace that starts from a wrong name derails everything after it;
// this style asks only for what it can see: tones, and which candidate matches.
// `answer` has no trace at all, `<think></think><answer>i</answer>`: the pointing warm-up
// (train/pipeline.ts `pointing`), since a 2-layer model learns to point at the match only
// when nothing stands between the prompt and the answer (README, "the SFT table").
// `pointed` keeps that pointing and adds the look: nameless, no elimination list; the
// candidates that show the target's emoji in another skin tone are taken in list order
// (the first stage's, at test time) up to the answer, each inspected and its tone
// compared, and the answer is inspected last and accepted (at most maxInspections looks:
// the first siblings, then the answer). Without inspection the same comparisons are made
// without a look. Its first index is a pointing decision (the first candidate showing the
// target's emoji), so a pointing model starts it right. `looks` is `pointed` without a
// word: the inspection markers alone, then the answer, so nothing is copied but indices
// (without inspection it is the answer style). `verify` is pointing with one optional look:
// the answer's index first, inspected in about half of the traces (seeded per draw), then
// accepted and answered: `<think><inspection-index-start>3<inspection-index-end> Candidate
// 3 matches the query.</think><answer>3</answer>`. The decision is the first index, where
// a pointing model already puts it; the rest is one short copy, and whether to look is left
// for GRPO's inspection penalty to settle. `glance` is `verify` without the sentence:
// `<think><inspection-index-start>3<inspection-index-end></think><answer>3</answer>` or,
// without the look, the answer style itself, so the answer copies the index across the
// spliced tokens alone.
import type { MbeirQuery } from './mbeir-types.ts';
import type { EmojiAttributes, EmojiQueryAttributes } from './emoji-benchmark.ts';
import { type SeededRng, type Split, rngFor } from './seeded.ts';

export const INSPECT_START = '<inspection-index-start>';
export const INSPECT_END = '<inspection-index-end>';

/** Name and keywords of an emoji, by unified code (from attributes.jsonl). */
export interface EmojiInfo {
  name: string;
  keywords: string[];
}

export function emojiIndex(attributes: Iterable<EmojiAttributes>): Map<string, EmojiInfo> {
  const out = new Map<string, EmojiInfo>();
  for (const a of attributes) if (!out.has(a.unified)) out.set(a.unified, { name: a.name, keywords: a.keywords });
  return out;
}

export interface CandidateListOptions {
  /** Candidates per query (default 16). */
  K?: number;
  seed: number;
  /** First-stage rankings (qid -> dids, best first): the top K are used when the query has one. */
  firstStage?: ReadonlyMap<string, readonly string[]>;
  /** The dids random fillers are drawn from (the task's pool). */
  pool: readonly string[];
  attributes: ReadonlyMap<string, EmojiAttributes>;
  /** Fillers come from this split only (default: the split of the query's first positive). */
  split?: Split;
  /** Make sure a positive is in the list (training). Default true. */
  includePositive?: boolean;
  /** Shuffle the list, so the answer takes every position (training). Default true. */
  shuffle?: boolean;
  /** Mixed into the seed (e.g. the training step, for new draws each epoch). */
  draw?: number;
  /**
   * Without a first-stage ranking: take the query's hard negatives (default true); false
   * fills the list with random pool items only, an easier list for the start of training.
   */
  hardNegatives?: boolean;
}

/**
 * The K candidates of a query: the first-stage top-K when available, else the first
 * positive, the hard negatives (unless hardNegatives is false) and random pool items of
 * the same split. With includePositive, a list without a positive gets the first positive
 * in its last slot.
 */
export function candidateList(q: MbeirQuery, o: CandidateListOptions): string[] {
  const K = o.K ?? 16;
  if (!Number.isInteger(K) || K < 1) throw new RangeError(`candidateList: K must be a positive integer, got ${K}`);
  const rng = rngFor(o.seed, `cands:${q.qid}:${o.draw ?? 0}`);
  const pos = new Set(q.pos_cand_list);
  const includePositive = o.includePositive ?? true;
  if (includePositive && !q.pos_cand_list.length) throw new Error(`candidateList: query ${q.qid} has no positive`);
  const ranked = o.firstStage?.get(q.qid);
  let list: string[];
  if (ranked) {
    list = [...new Set(ranked)].slice(0, K);
    if (includePositive && !list.some((d) => pos.has(d))) {
      if (list.length === K) list.pop();
      list.push(q.pos_cand_list[0]);
    }
  } else {
    list = [];
    if (includePositive) list.push(q.pos_cand_list[0]);
    if (o.hardNegatives ?? true) for (const d of q.neg_cand_list) if (list.length < K && !list.includes(d)) list.push(d);
  }
  if (list.length < K) {
    const split = o.split ?? o.attributes.get(q.pos_cand_list[0])?.split;
    const have = new Set(list);
    const fill = o.pool.filter((d) => !have.has(d) && !pos.has(d) && (split === undefined || o.attributes.get(d)?.split === split));
    // A partial Fisher-Yates draw: only the slots needed.
    for (let i = 0; i < fill.length && list.length < K; i++) {
      const j = i + rng.int(fill.length - i);
      [fill[i], fill[j]] = [fill[j], fill[i]];
      list.push(fill[i]);
    }
  }
  return (o.shuffle ?? true) ? rng.shuffle(list) : list;
}

export type TraceStyle = 'full' | 'brief' | 'open' | 'nameless' | 'answer' | 'pointed' | 'looks' | 'verify' | 'glance';
export const TRACE_STYLES: readonly TraceStyle[] = ['full', 'brief', 'open', 'nameless', 'answer', 'pointed', 'looks', 'verify', 'glance'];

export interface TraceOptions {
  seed: number;
  /** Wording (see the opening comment); default full. */
  style?: TraceStyle;
  /** At most this many inspections (default 3; 0 = a trace without inspection). */
  maxInspections?: number;
  /** Mixed into the seed (e.g. the training step). */
  draw?: number;
}

export interface Trace {
  /** `<think> ... </think><answer>i</answer>` */
  text: string;
  answer: number;
  /** Inspected candidates in order. */
  inspections: number[];
  /** Hard negatives among the candidates (same base emoji, or same subcategory). */
  hard: number[];
  /** The think body as sentences and inspection markers; joined with ' ' they are the body. */
  sentences: string[];
}

const q = (s: string) => `"${s}"`;
// A candidate by index and name; by index only when the name is left out (nameless style).
const cand = (i: number, name?: string) => (name === undefined ? `candidate ${i}` : `candidate ${i} (${q(name)})`);
const cap = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

function listOf(items: string[]): string {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}`;
}

const toneOf = (t: string | null) => t ?? 'no skin tone';

interface Info {
  i: number;
  a: EmojiAttributes;
  positive: boolean;
  sameBase: boolean;
  hard: boolean;
}

/** Step (a): what the query is, and what the ideal result is. */
function describe(rng: SeededRng, qa: EmojiQueryAttributes, target: EmojiInfo | undefined, base: EmojiInfo | undefined, toneMatters: boolean): string[] {
  const N = q(qa.name);
  const T = toneOf(qa.skin_tone);
  const out: string[] = [];
  switch (qa.task_id) {
    case 0:
      out.push(rng.pick([`The query describes ${N}.`, `The query text is about ${N}.`]));
      out.push(rng.pick([`The ideal result is an image of ${N}.`, `I need the picture that shows ${N}.`, `The best candidate would be an image of ${N}.`]));
      break;
    case 1:
      out.push(rng.pick([`The query gives clues to ${N}.`, `The query lists words that describe ${N}.`]));
      out.push(rng.pick([`The ideal result is the name ${N}.`, `I am looking for the name ${N}.`]));
      break;
    case 3:
      out.push(rng.pick([`The query image shows ${N}.`, `The query is a Google image of ${N}.`]));
      out.push(rng.pick([`The ideal result is a description of ${N}.`, `I need the text that describes ${N}.`]));
      break;
    case 4:
      out.push(rng.pick([`The query is a Twitter image of ${N}.`, `The query image shows ${N} in the Twitter style.`]));
      out.push(rng.pick([`The ideal result is the Google image of ${N}.`, `I need the same emoji, ${N}, drawn by Google.`]));
      break;
    case 6:
      out.push(
        base
          ? rng.pick([`The query image shows ${q(base.name)}, and the text asks for ${T}.`, `The query is an image of ${q(base.name)} with a request for ${T}.`])
          : rng.pick([`The query image shows an emoji without skin tone, and the text asks for ${T}.`]),
      );
      out.push(rng.pick([`The ideal result is ${N}.`, `So I need ${N}.`]));
      break;
    default:
      out.push(`The ideal result is ${N}.`);
  }
  const kws = target ? rng.shuffle([...new Set(target.keywords)]).slice(0, 1 + rng.int(3)) : [];
  if (kws.length && rng.next() < 0.6) {
    const k = listOf(kws.map(q));
    out.push(rng.pick([`Its keywords include ${k}.`, `It goes with the keywords ${k}.`, `Keywords of the target: ${k}.`]));
  }
  if (toneMatters && qa.task_id !== 6) {
    out.push(qa.skin_tone ? rng.pick([`The target has ${T}.`, `It should have ${T}.`]) : `The target has no skin tone.`);
  }
  return out;
}

/** Step (b): quick eliminations, in groups of 1-4 candidates. */
function eliminate(rng: SeededRng, items: Info[], targetName: string): string[] {
  const N = q(targetName);
  const out: string[] = [];
  let rest = rng.shuffle(items);
  while (rest.length) {
    const n = Math.min(rest.length, 1 + rng.int(4));
    const group = rest.slice(0, n).sort((x, y) => x.i - y.i);
    rest = rest.slice(n);
    if (group.length === 1) {
      const c = cand(group[0].i, group[0].a.name);
      out.push(rng.pick([`${cap(c)} is not ${N}.`, `Rule out ${c}: it is not ${N}.`, `${cap(c)} does not match ${N}.`]));
    } else {
      const L = `candidates ${listOf(group.map((g) => `${g.i} (${q(g.a.name)})`))}`;
      out.push(rng.pick([`${cap(L)} are not ${N}.`, `Rule out ${L}: none of them is ${N}.`, `${cap(L)} are other emojis, not ${N}.`, `Not a match: ${L}.`]));
    }
  }
  return out;
}

/** A hard negative compared in detail (after an inspection, or without one). */
function compare(rng: SeededRng, c: Info, qa: EmojiQueryAttributes, named = true): string {
  const C = cap(cand(c.i, named ? c.a.name : undefined));
  const N = q(qa.name);
  if (c.sameBase && c.a.skin_tone !== qa.skin_tone) {
    const ct = toneOf(c.a.skin_tone);
    if (!qa.skin_tone) return rng.pick([`${C} has ${ct}, but the target has no skin tone.`, `${C} has ${ct}; wrong tone, the target has no skin tone.`]);
    return rng.pick([`${C} has ${ct}, but the query asks for ${qa.skin_tone}.`, `${C} has ${ct}, but the target has ${qa.skin_tone}.`, `${C} has ${ct}; wrong tone, the query asks for ${qa.skin_tone}.`]);
  }
  const same = c.a.subcategory === qa.subcategory ? [`${C} is from the same subcategory (${qa.subcategory}), but it is not ${N}.`] : [];
  return rng.pick([...same, `${C} looks close, but it is a different emoji from ${N}.`, `${C} is similar, but not ${N}.`]);
}

/** Accepting a positive (no negation words). */
function accept(rng: SeededRng, c: Info, qa: EmojiQueryAttributes, also = false, named = true): string {
  const C = cap(cand(c.i, named ? c.a.name : undefined));
  if (also) return `${C} also matches the query.`;
  if (qa.skin_tone && c.a.skin_tone) return rng.pick([`${C} has ${c.a.skin_tone}, as the query asks.`, `${C} has ${c.a.skin_tone} and matches the query.`]);
  return rng.pick([`${C} matches the query.`, `${C} is exactly what the query asks for.`, `${C} is the right one.`]);
}

/** Brief step (a): the ideal result, by name. */
const briefDescribe = (qa: EmojiQueryAttributes) => `Target: ${q(qa.name)}.`;

/** Brief step (b): every clearly wrong candidate by index, in one sentence. */
function briefEliminate(items: Info[]): string[] {
  if (!items.length) return [];
  const idx = items.map((c) => c.i).sort((x, y) => x - y);
  return [idx.length === 1 ? `Candidate ${idx[0]} is wrong.` : `Candidates ${listOf(idx.map(String))} are wrong.`];
}

/** Brief step (c): a hard negative after a look (a different tone is named, anything else is just wrong). */
function briefCompare(rng: SeededRng, c: Info, qa: EmojiQueryAttributes, named = true): string {
  if (c.sameBase && c.a.skin_tone !== qa.skin_tone) return compare(rng, c, qa, named);
  return `${cap(cand(c.i, named ? c.a.name : undefined))} is wrong.`;
}

/** Nameless step (a): the ideal result as the query gives it, with the tone when it matters. */
function namelessDescribe(qa: EmojiQueryAttributes, toneMatters: boolean): string[] {
  const target: Record<number, string> = {
    0: 'Target: the emoji that the query text describes.',
    1: 'Target: the name of the emoji that the query words describe.',
    3: 'Target: the text that describes the query image.',
    4: 'Target: the same emoji as the query image.',
    6: `Target: the emoji of the query image; the text asks for ${toneOf(qa.skin_tone)}.`,
  };
  const out = [target[qa.task_id] ?? 'Target: the candidate that matches the query.'];
  if (toneMatters && qa.task_id !== 6) out.push(`The target has ${toneOf(qa.skin_tone)}.`);
  return out;
}

/** The pointed style (see the opening comment): the target's other tones up to the answer, in list order, then the answer. */
function pointedTrace(qa: EmojiQueryAttributes, infos: Info[], ans: Info, hard: Info[], maxIns: number): Trace {
  const siblings = infos.filter((c) => c.sameBase && c.i < ans.i && c.a.skin_tone !== qa.skin_tone);
  const looked = maxIns > 0 ? [...siblings.slice(0, maxIns - 1), ans] : [...siblings, ans];
  const sentences = namelessDescribe(qa, siblings.length > 0);
  for (const c of looked) {
    if (maxIns > 0) sentences.push(`${INSPECT_START}${c.i}${INSPECT_END}`);
    const C = cap(cand(c.i));
    if (c !== ans) sentences.push(`${C} has ${toneOf(c.a.skin_tone)}, but the ${qa.task_id === 6 ? 'query asks for' : 'target has'} ${toneOf(qa.skin_tone)}.`);
    else sentences.push(siblings.length ? `${C} has ${toneOf(c.a.skin_tone)} and matches the query.` : `${C} matches the query.`);
  }
  const text = `<think>${sentences.join(' ')}</think><answer>${ans.i}</answer>`;
  return { text, answer: ans.i, inspections: maxIns > 0 ? looked.map((c) => c.i) : [], hard: hard.map((c) => c.i), sentences };
}

/**
 * A trace for query `query` over `candidates` (dids, in prompt order). Throws when no
 * candidate is a positive or a candidate has no attributes.
 */
export function synthesizeTrace(
  query: MbeirQuery,
  qa: EmojiQueryAttributes,
  candidates: readonly string[],
  attributes: ReadonlyMap<string, EmojiAttributes>,
  emojis: ReadonlyMap<string, EmojiInfo>,
  opts: TraceOptions,
): Trace {
  if (qa.qid !== query.qid) throw new Error(`synthesizeTrace: query ${query.qid} got the attributes of ${qa.qid}`);
  const rng = rngFor(opts.seed, `trace:${query.qid}:${opts.draw ?? 0}:${candidates.join(',')}`);
  const maxIns = opts.maxInspections ?? 3;
  const style = opts.style ?? 'full';
  if (!TRACE_STYLES.includes(style)) throw new RangeError(`synthesizeTrace: unknown style '${style}' (${TRACE_STYLES.join(', ')})`);
  const brief = style !== 'full';
  const named = style === 'full' || style === 'brief' || style === 'open';
  const pos = new Set(query.pos_cand_list);
  const infos: Info[] = candidates.map((d, i) => {
    const a = attributes.get(d);
    if (!a) throw new Error(`synthesizeTrace: candidate ${d} of query ${query.qid} has no attributes`);
    const positive = pos.has(d);
    const sameBase = !positive && a.base === qa.base;
    return { i, a, positive, sameBase, hard: !positive && (sameBase || a.subcategory === qa.subcategory) };
  });
  const primary = candidates.indexOf(query.pos_cand_list[0]);
  const answer = primary >= 0 ? primary : infos.findIndex((c) => c.positive);
  if (answer < 0) throw new Error(`synthesizeTrace: none of the ${candidates.length} candidates of query ${query.qid} is a positive`);
  const ans = infos[answer];
  const hard = infos.filter((c) => c.hard);
  if (style === 'answer') return { text: `<think></think><answer>${answer}</answer>`, answer, inspections: [], hard: hard.map((c) => c.i), sentences: [] };
  if (style === 'verify' || style === 'glance') {
    const look = maxIns > 0 && rng.next() < 0.5;
    const sentences = [...(look ? [`${INSPECT_START}${answer}${INSPECT_END}`] : []), ...(style === 'verify' ? [`${cap(cand(answer))} matches the query.`] : [])];
    return { text: `<think>${sentences.join(' ')}</think><answer>${answer}</answer>`, answer, inspections: look ? [answer] : [], hard: hard.map((c) => c.i), sentences };
  }
  if (style === 'pointed' || style === 'looks') {
    const t = pointedTrace(qa, infos, ans, hard, maxIns);
    if (style === 'pointed') return t;
    const sentences = t.sentences.filter((x) => x.startsWith(INSPECT_START));
    return { ...t, sentences, text: `<think>${sentences.join(' ')}</think><answer>${t.answer}</answer>` };
  }
  // Same base first (skin tones are the details that need a look), then the rest in a seeded order.
  const hardOrder = [...hard.filter((c) => c.sameBase), ...rng.shuffle(hard.filter((c) => !c.sameBase))];

  // How many inspections, and of which candidates.
  let n = 0;
  if (maxIns > 0) n = hard.length ? Math.min(maxIns, 1 + rng.int(Math.min(3, hard.length + 1))) : rng.pick([0, 0, 1]);
  const inspectAnswer = n > 0 && (!hard.length || n > hard.length || rng.next() < 0.5);
  const inspected: Info[] = hardOrder.slice(0, inspectAnswer ? n - 1 : n);
  if (inspectAnswer) inspected.splice(rng.int(inspected.length + 1), 0, ans);

  const toneMatters = infos.some((c) => c.sameBase && c.a.skin_tone !== qa.skin_tone);
  const sentences = !named ? namelessDescribe(qa, toneMatters) : brief ? [briefDescribe(qa)] : describe(rng, qa, emojis.get(qa.unified), qa.task_id === 6 ? emojis.get(qa.base) : undefined, toneMatters);

  // (b) the clearly wrong ones, by name; other skin tones of the target's emoji that are
  // not inspected are compared on their tone without a look.
  const notInspected = (c: Info) => !c.positive && !inspected.includes(c);
  // Brief: every negative that is not inspected goes in the one list (other tones too);
  // open and nameless: only those that are not hard.
  if (brief) sentences.push(...briefEliminate(infos.filter((c) => notInspected(c) && (style === 'brief' || !c.hard))));
  else {
    sentences.push(...eliminate(rng, infos.filter((c) => notInspected(c) && !c.sameBase), qa.name));
    for (const c of infos.filter((c) => notInspected(c) && c.sameBase)) sentences.push(compare(rng, c, qa));
  }

  // (c) inspections.
  for (const c of inspected) {
    const intro = brief ? '' : rng.pick([`${cap(`candidate ${c.i}`)} needs a closer look.`, `Let me inspect candidate ${c.i}.`, `I will check the details of candidate ${c.i}.`, '']);
    if (intro) sentences.push(intro);
    sentences.push(`${INSPECT_START}${c.i}${INSPECT_END}`);
    sentences.push(c.positive ? accept(rng, c, qa, false, named) : brief ? briefCompare(rng, c, qa, named) : compare(rng, c, qa));
  }

  // (d) the answer.
  for (const c of infos) if (c.positive && c !== ans) sentences.push(accept(rng, c, qa, true, named));
  if (!brief && !inspected.includes(ans) && rng.next() < 0.7) sentences.push(accept(rng, ans, qa));
  // Brief: the <answer> tag alone states step (d).
  if (!brief) sentences.push(rng.pick([`So the answer is candidate ${answer}.`, `The best match is candidate ${answer}.`, `Candidate ${answer} is the best match.`, `Therefore I choose candidate ${answer}.`]));

  const text = `<think>${sentences.join(' ')}</think><answer>${answer}</answer>`;
  return { text, answer, inspections: inspected.map((c) => c.i), hard: hard.map((c) => c.i), sentences };
}
