// Synthetic chains of thought: every sentence is re-checked against the attributes (names,
// skin tones, keywords, subcategories, vendors, accept/reject), the answer is a positive,
// inspections are well formed, the answer takes every position, and wording and
// inspection counts vary.
import { describe, expect, it } from 'vitest';
import { type Trace, type TraceStyle, candidateList, emojiIndex, synthesizeTrace } from '../../train/data/cot.ts';
import { type EmojiAttributes, type EmojiQueryAttributes, buildEmojiBenchmark } from '../../train/data/emoji-benchmark.ts';
import type { MbeirQuery } from '../../train/data/mbeir-types.ts';

const bench = buildEmojiBenchmark({ seed: 1, maxPerTask: 60 });
const attrs = new Map(bench.attributes.map((a) => [a.did, a]));
const qattrs = new Map(bench.queryAttributes.map((a) => [a.qid, a]));
const emojis = emojiIndex(bench.attributes);
const train = bench.queries.train.filter((q) => q.pos_cand_list.length);
const K = 4;

const TONE = '(?:light|medium-light|medium|medium-dark|dark) skin tone';
const TONE_RE = new RegExp(`(${TONE}(?:, ${TONE})*|no skin tone)`, 'g');
const NEGATION = /\b(not|rule out|wrong|but)\b/i;
const ACCEPT = /\b(matches|right one|exactly what)\b/;

function makeTrace(q: MbeirQuery, draw = 0, maxInspections = 3, style: TraceStyle = 'full'): { cands: string[]; trace: Trace } {
  // draw 1: no hard negatives given, so the lists hold random same-split items (mostly easy).
  if (draw === 1) q = { ...q, neg_cand_list: [] };
  const cands = candidateList(q, { K, seed: 3, draw, pool: bench.taskPools.get(q.task_id)!, attributes: attrs });
  return { cands, trace: synthesizeTrace(q, qattrs.get(q.qid)!, cands, attrs, emojis, { seed: 3, draw, maxInspections, style }) };
}

/**
 * Re-derives every claim of a trace from the attributes; returns the list of violations.
 * open: hard negatives may go unmentioned (the open style leaves the uninspected ones out).
 * named: candidates are written `candidate 3 ("name")`; false (nameless): `candidate 3`.
 * everyNegative: every negative outside open's exception is discussed (false: the pointed style, which discusses only tones).
 */
function check(q: MbeirQuery, qa: EmojiQueryAttributes, cands: string[], t: Trace, open = false, named = true, everyNegative = true): string[] {
  const bad: string[] = [];
  const fail = (s: string, why: string) => bad.push(`${q.qid}: ${why}: «${s}»`);
  const pos = new Set(q.pos_cand_list);
  const A = (i: number): EmojiAttributes => attrs.get(cands[i])!;
  const toneOf = (x: string | null) => x ?? 'no skin tone';
  if (t.text !== `<think>${t.sentences.join(' ')}</think><answer>${t.answer}</answer>`) bad.push(`${q.qid}: text is not the sentences`);
  if (!pos.has(cands[t.answer])) bad.push(`${q.qid}: the answer ${t.answer} is not a positive`);
  const mentioned = new Set<number>();
  t.sentences.forEach((s, k) => {
    const marker = /^<inspection-index-start>(\d+)<inspection-index-end>$/.exec(s);
    if (marker) {
      const i = Number(marker[1]);
      if (!(i < K)) fail(s, 'inspection out of range');
      if (!new RegExp(`^[Cc]andidate ${i}${named ? ' \\(' : '\\b'}`).test(t.sentences[k + 1] ?? '')) fail(s, 'the sentence after an inspection does not discuss that candidate');
      return;
    }
    if (/inspection-index/.test(s)) fail(s, 'marker inside a sentence');
    // Candidate names.
    const pairs = [...s.matchAll(/(\d+) \("([^"]+)"\)/g)].map((m) => ({ i: Number(m[1]), name: m[2] }));
    if (!named && pairs.length) fail(s, 'a nameless trace names a candidate');
    // Nameless: a candidate by index alone, `Candidate 3 has ...`.
    const bareNamed = named ? [] : [...s.matchAll(/[Cc]andidate (\d+)\b(?! \()/g)].map((m) => Number(m[1]));
    for (const i of bareNamed) mentioned.add(i);
    for (const p of pairs) {
      mentioned.add(p.i);
      if (!(p.i < K)) fail(s, `candidate ${p.i} out of range`);
      else if (A(p.i).name !== p.name) fail(s, `candidate ${p.i} is "${A(p.i).name}", not "${p.name}"`);
    }
    for (const m of s.matchAll(/[Cc]andidates? (\d+)/g)) if (!(Number(m[1]) < K)) fail(s, 'index out of range');
    // Candidates by index only (the brief style): "Candidates 0, 2 and 5 are wrong.".
    const bareList = /^Candidates? ((?:\d+, )*\d+(?: and \d+)?) (?:is|are) (?:not|wrong)\b/.exec(s);
    if (bareList) {
      for (const i of bareList[1].split(/, | and /).map(Number)) {
        mentioned.add(i);
        if (!(i < K)) fail(s, `candidate ${i} out of range`);
        else if (pos.has(cands[i]) || A(i).name === qa.name) fail(s, `candidate ${i} is rejected but matches`);
      }
    }
    // Other quoted strings: keywords, or the target (task 6: also the base in the query image).
    const rest = s.replace(/(\d+) \("([^"]+)"\)/g, '#');
    for (const m of rest.matchAll(/"([^"]+)"/g)) {
      if (/keyword/i.test(s)) {
        if (!emojis.get(qa.unified)!.keywords.includes(m[1])) fail(s, `"${m[1]}" is not a keyword of ${qa.name}`);
      } else if (m[1] !== qa.name && !(qa.task_id === 6 && /image/.test(s) && m[1] === emojis.get(qa.base)?.name)) fail(s, `"${m[1]}" is not the target`);
    }
    // Skin tones, outside quotes: each belongs to a candidate or to the target.
    const bare = s.replace(/"[^"]*"/g, '""');
    for (const m of bare.matchAll(TONE_RE)) {
      const before = bare.slice(0, m.index);
      const c = (named ? /[Cc]andidate (\d+) \(""\) has $/ : /[Cc]andidate (\d+) has $/).exec(before);
      if (c) {
        if (toneOf(A(Number(c[1])).skin_tone) !== m[1]) fail(s, `candidate ${c[1]} does not have ${m[1]}`);
      } else if (/(asks for|request for|target has|should have) $/.test(before)) {
        if (toneOf(qa.skin_tone) !== m[1]) fail(s, `the target does not have ${m[1]}`);
      } else fail(s, `tone "${m[1]}" belongs to nobody`);
    }
    // Rejections name negatives only; acceptances positives only.
    // (names such as "sad but relieved face" do not count.)
    if (NEGATION.test(bare)) {
      for (const i of [...pairs.map((p) => p.i), ...bareNamed]) if (pos.has(cands[i]) || A(i).name === qa.name) fail(s, `candidate ${i} is rejected but matches`);
    } else if (ACCEPT.test(bare)) {
      for (const i of [...pairs.map((p) => p.i), ...bareNamed]) if (!pos.has(cands[i])) fail(s, `candidate ${i} is accepted but is a negative`);
    }
    const sub = /same subcategory \(([^)]+)\)/.exec(s);
    if (sub && (sub[1] !== qa.subcategory || pairs.some((p) => A(p.i).subcategory !== sub[1]))) fail(s, 'wrong subcategory');
    if (/Twitter/.test(s) && !(/query/.test(s) && qa.query_vendor === 'twitter')) fail(s, 'Twitter');
    if (/Google/.test(s) && !((/query/.test(s) && qa.query_vendor === 'google') || (/ideal|need/.test(s) && A(t.answer).vendor === 'google'))) fail(s, 'Google');
    const ans = /(?:answer is|best match is|choose) candidate (\d+)|[Cc]andidate (\d+) is the best match/.exec(s);
    if (ans && Number(ans[1] ?? ans[2]) !== t.answer) fail(s, 'wrong answer sentence');
  });
  for (let i = 0; i < K; i++) if (everyNegative && !mentioned.has(i) && !pos.has(cands[i]) && !(open && t.hard.includes(i))) bad.push(`${q.qid}: negative candidate ${i} is never discussed`);
  if (t.inspections.length > 3) bad.push(`${q.qid}: ${t.inspections.length} inspections`);
  if (new Set(t.inspections).size !== t.inspections.length) bad.push(`${q.qid}: repeated inspection`);
  return bad;
}

describe('synthetic chains of thought', () => {
  it.each(['full', 'brief', 'open', 'nameless', 'pointed'] as const)('every sentence is true of the data and the answer is a positive (%s)', (style) => {
    const bad: string[] = [];
    let n = 0;
    for (const q of train) {
      for (const draw of [0, 1]) {
        const { cands, trace } = makeTrace(q, draw, 3, style);
        bad.push(...check(q, qattrs.get(q.qid)!, cands, trace, style === 'open' || style === 'nameless', style !== 'nameless' && style !== 'pointed', style !== 'pointed'));
        n++;
      }
    }
    expect(n).toBeGreaterThan(500);
    expect(bad.slice(0, 10)).toEqual([]);
  });

  it('the checker catches a false sentence', () => {
    const q = train.find((x) => x.task_id === 6)!;
    const { cands, trace } = makeTrace(q);
    const wrong = trace.answer === 0 ? 1 : 0;
    const lie = `Candidate ${trace.answer} ("${attrs.get(cands[wrong])!.name}") matches the query.`;
    const forged = { ...trace, sentences: [...trace.sentences, lie] };
    forged.text = `<think>${forged.sentences.join(' ')}</think><answer>${trace.answer}</answer>`;
    expect(check(q, qattrs.get(q.qid)!, cands, forged).length).toBeGreaterThan(0);
    const brief = makeTrace(q, 0, 3, 'brief').trace;
    const listed = { ...brief, sentences: [...brief.sentences, `Candidates ${trace.answer === 0 ? '1 and 0' : `0 and ${trace.answer}`} are wrong.`] };
    listed.text = `<think>${listed.sentences.join(' ')}</think><answer>${brief.answer}</answer>`;
    expect(check(q, qattrs.get(q.qid)!, cands, listed).some((b) => /rejected but matches/.test(b))).toBe(true);
    const tone = { ...trace, sentences: [...trace.sentences, `Candidate ${wrong} ("${attrs.get(cands[wrong])!.name}") has dark skin tone, but the query asks for light skin tone.`] };
    tone.text = `<think>${tone.sentences.join(' ')}</think><answer>${trace.answer}</answer>`;
    const qa = qattrs.get(q.qid)!;
    if (qa.skin_tone !== 'light skin tone' || attrs.get(cands[wrong])!.skin_tone !== 'dark skin tone') expect(check(q, qa, cands, tone).length).toBeGreaterThan(0);
    // Nameless lies: the answer rejected, a negative accepted, a name slipped in.
    const bare = makeTrace(q, 0, 3, 'nameless').trace;
    for (const lie of [`Candidate ${bare.answer} is wrong.`, `Candidate ${wrong} matches the query.`, `Candidate ${wrong} ("${attrs.get(cands[wrong])!.name}") is wrong.`]) {
      const f = { ...bare, sentences: [...bare.sentences, lie] };
      f.text = `<think>${f.sentences.join(' ')}</think><answer>${bare.answer}</answer>`;
      expect(check(q, qa, cands, f, true, false).length, lie).toBeGreaterThan(0);
    }
    expect(check(q, qa, cands, bare, true, false)).toEqual([]);
  });

  it('the answer takes every position; wording and inspection counts vary', () => {
    const at = new Array(K).fill(0);
    const answerForms = new Set<string>();
    const ins = { hard: [] as number[], easy: [] as number[] };
    for (const q of train) {
      const { trace } = makeTrace(q);
      at[trace.answer]++;
      answerForms.add(trace.sentences.at(-1)!.replace(/\d+/, '#'));
      for (const t of [trace, makeTrace(q, 1).trace]) (t.hard.length ? ins.hard : ins.easy).push(t.inspections.length);
    }
    for (const c of at) expect(c / train.length).toBeGreaterThan(0.15);
    for (const c of at) expect(c / train.length).toBeLessThan(0.35);
    expect(answerForms.size).toBeGreaterThanOrEqual(3);
    const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
    expect(ins.hard.length).toBeGreaterThan(50);
    expect(ins.easy.length).toBeGreaterThan(20);
    expect(mean(ins.hard)).toBeGreaterThan(mean(ins.easy));
    expect(new Set([...ins.hard, ...ins.easy])).toEqual(new Set([0, 1, 2, 3]));
    // Without inspection: no markers.
    for (const q of train.slice(0, 50)) expect(makeTrace(q, 0, 0).trace.text).not.toMatch(/inspection-index/);
  });

  it('the open style names only the clearly wrong; the answer is implied only when it is inspected', () => {
    let open = 0;
    for (const q of train) {
      const { cands, trace } = makeTrace(q, 0, 3, 'open');
      const brief = makeTrace(q, 0, 3, 'brief').trace;
      // Same draws: the same inspections and answer; the elimination drops the hard ones.
      expect(trace.inspections).toEqual(brief.inspections);
      expect(trace.answer).toBe(brief.answer);
      // The elimination sentence by index, then every index the trace names: eliminated or inspected.
      const list = trace.sentences.find((x) => /^Candidates? [0-9, and]+ (is|are) wrong\.$/.test(x)) ?? '';
      const named = new Set([...(list.match(/[0-9]+/g) ?? []).map(Number), ...trace.inspections]);
      for (const h of trace.hard) if (!trace.inspections.includes(h)) expect(named.has(h)).toBe(false);
      const unnamed = cands.map((_, i) => i).filter((i) => !named.has(i));
      if (unnamed.length > 1) open++;
    }
    // Lists with hard negatives leave more than one candidate standing for the answer.
    expect(open).toBeGreaterThan(train.length / 10);
  });

  it('the nameless style makes the open decisions without naming any emoji', () => {
    let toned = 0;
    for (const q of train) {
      for (const draw of [0, 1]) {
        const { cands, trace } = makeTrace(q, draw, 3, 'nameless');
        const open = makeTrace(q, draw, 3, 'open').trace;
        // Same draws and decisions: answer, inspections, the elimination list.
        expect({ answer: trace.answer, inspections: trace.inspections }).toEqual({ answer: open.answer, inspections: open.inspections });
        // (before the first inspection: after one, `Candidate 3 is wrong.` is a comparison)
        const list = (t: Trace) => {
          const first = t.sentences.findIndex((x) => x.startsWith('<inspection'));
          return t.sentences.slice(0, first < 0 ? undefined : first).find((x) => /^Candidates? [0-9, and]+ (is|are) wrong\.$/.test(x));
        };
        expect(list(trace)).toBe(list(open));
        // No quoted string, and no candidate's or the target's name (names of 5 letters or more,
        // so that a name like "cat" inside a template word does not count).
        expect(trace.text).not.toMatch(/"/);
        for (const name of [qattrs.get(q.qid)!.name, ...cands.map((d) => attrs.get(d)!.name)]) {
          if (name.length >= 5) expect(trace.text.toLowerCase()).not.toContain(name.toLowerCase());
        }
        if (/has (light|medium|dark|no skin)/.test(trace.text)) toned++;
      }
    }
    // Skin tones, the one detail it names, are compared in a fair share of the traces.
    expect(toned).toBeGreaterThan(train.length / 20);
  });

  it('the brief style states the same decisions in far fewer characters', () => {
    let full = 0;
    let brief = 0;
    for (const q of train.slice(0, 200)) {
      const a = makeTrace(q).trace;
      const b = makeTrace(q, 0, 3, 'brief').trace;
      // Same list, answer, hard negatives and inspections: only the wording differs.
      expect({ answer: b.answer, hard: b.hard, inspections: b.inspections }).toEqual({ answer: a.answer, hard: a.hard, inspections: a.inspections });
      expect(b.sentences[0]).toBe(`Target: "${qattrs.get(q.qid)!.name}".`);
      full += a.text.length;
      brief += b.text.length;
    }
    expect(brief).toBeLessThan(full * 0.6);
    expect(() => synthesizeTrace(train[0], qattrs.get(train[0].qid)!, makeTrace(train[0]).cands, attrs, emojis, { seed: 1, style: 'terse' as TraceStyle })).toThrow(/unknown style 'terse'/);
  });

  it('the pointed style looks at the target\'s other tones in list order up to the answer, then at the answer; the looks style is its looks alone', () => {
    let withSiblings = 0;
    for (const q of train) {
      const qa = qattrs.get(q.qid)!;
      const { cands, trace } = makeTrace(q, 0, 3, 'pointed');
      const other = (i: number) => attrs.get(cands[i])!.base === qa.base && !q.pos_cand_list.includes(cands[i]) && attrs.get(cands[i])!.skin_tone !== qa.skin_tone;
      const before = cands.map((_, i) => i).filter((i) => i < trace.answer && other(i));
      // The first two such candidates, then the answer, each inspected once, in that order.
      expect(trace.inspections).toEqual([...before.slice(0, 2), trace.answer]);
      if (before.length) withSiblings++;
      // The answer is the first positive in the list; no elimination list, no name.
      expect(trace.answer).toBe(cands.indexOf(q.pos_cand_list[0]));
      expect(trace.text).not.toMatch(/are wrong|"/);
      // Without inspection: the same sentences without the markers.
      const plain = makeTrace(q, 0, 0, 'pointed').trace;
      expect(plain.inspections).toEqual([]);
      if (before.length <= 2) expect(plain.sentences).toEqual(trace.sentences.filter((x) => !x.startsWith('<inspection')));
    }
    expect(withSiblings).toBeGreaterThan(train.length / 20);
    // The looks style: the same looks and answer, nothing else.
    for (const q of train.slice(0, 100)) {
      const p = makeTrace(q, 0, 3, 'pointed').trace;
      const l = makeTrace(q, 0, 3, 'looks').trace;
      expect(l.text).toBe(`<think>${p.inspections.map((i) => `<inspection-index-start>${i}<inspection-index-end>`).join(' ')}</think><answer>${p.answer}</answer>`);
      expect({ answer: l.answer, inspections: l.inspections }).toEqual({ answer: p.answer, inspections: p.inspections });
    }
  });

  it('the verify style points at the answer, looks at it in about half of the traces, and accepts it', () => {
    let looked = 0;
    const positions = new Set<number>();
    for (const q of train) {
      const qa = qattrs.get(q.qid)!;
      const { cands, trace } = makeTrace(q, 0, 3, 'verify');
      const a = makeTrace(q, 0, 3, 'answer').trace;
      expect(trace.answer).toBe(a.answer);
      positions.add(trace.answer);
      const claim = `Candidate ${trace.answer} matches the query.`;
      const marker = `<inspection-index-start>${trace.answer}<inspection-index-end>`;
      expect(trace.sentences).toEqual(trace.inspections.length ? [marker, claim] : [claim]);
      expect([[], [trace.answer]]).toContainEqual(trace.inspections);
      expect(check(q, qa, cands, trace, true, false, false)).toEqual([]);
      if (trace.inspections.length) looked++;
      // Without inspection it never looks; the claim and the answer stay.
      const plain = makeTrace(q, 0, 0, 'verify').trace;
      expect(plain.text).toBe(`<think>${claim}</think><answer>${trace.answer}</answer>`);
    }
    expect(looked / train.length).toBeGreaterThan(0.3);
    expect(looked / train.length).toBeLessThan(0.7);
    expect(positions.size).toBe(K);
  });

  it('the glance style is the verify style without its sentence: the same look or none, then the answer', () => {
    for (const q of train.slice(0, 100)) {
      const v = makeTrace(q, 0, 3, 'verify').trace;
      const g = makeTrace(q, 0, 3, 'glance').trace;
      expect({ answer: g.answer, inspections: g.inspections }).toEqual({ answer: v.answer, inspections: v.inspections });
      const look = g.inspections.map((i) => `<inspection-index-start>${i}<inspection-index-end>`).join('');
      expect(g.text).toBe(`<think>${look}</think><answer>${g.answer}</answer>`);
      expect(makeTrace(q, 0, 0, 'glance').trace.text).toBe(makeTrace(q, 0, 3, 'answer').trace.text);
    }
  });

  it('the answer style is the answer alone, the same answer and hard negatives as a traced one', () => {
    for (const q of train.slice(0, 100)) {
      const a = makeTrace(q).trace;
      const b = makeTrace(q, 0, 3, 'answer').trace;
      expect(b.text).toBe(`<think></think><answer>${a.answer}</answer>`);
      expect({ answer: b.answer, hard: b.hard, inspections: b.inspections, sentences: b.sentences }).toEqual({ answer: a.answer, hard: a.hard, inspections: [], sentences: [] });
    }
  });

  it('candidate lists: first-stage top-K with the positive ensured, or positives + hard negatives + same-split fillers', () => {
    const q = train.find((x) => x.neg_cand_list.length >= 2)!;
    const pool = bench.taskPools.get(q.task_id)!;
    const plain = candidateList(q, { K: 6, seed: 1, pool, attributes: attrs, shuffle: false });
    expect(plain[0]).toBe(q.pos_cand_list[0]);
    expect(plain.slice(1, 1 + Math.min(5, q.neg_cand_list.length))).toEqual(q.neg_cand_list.slice(0, 5));
    expect(new Set(plain).size).toBe(6);
    for (const d of plain) expect(attrs.get(d)!.split).toBe('train');
    const others = pool.filter((d) => !q.pos_cand_list.includes(d)).slice(0, 8);
    const fs = new Map([[q.qid, others]]);
    const top = candidateList(q, { K: 5, seed: 1, pool, attributes: attrs, firstStage: fs, shuffle: false });
    expect(top).toEqual([...others.slice(0, 4), q.pos_cand_list[0]]);
    expect(candidateList(q, { K: 5, seed: 1, pool, attributes: attrs, firstStage: fs, shuffle: false, includePositive: false })).toEqual(others.slice(0, 5));
    const shuffled = candidateList(q, { K: 5, seed: 1, pool, attributes: attrs, firstStage: fs });
    expect([...shuffled].sort()).toEqual([...top].sort());
  });

  it('candidate lists without hard negatives: the positive and random same-split fillers', () => {
    const q = train.find((x) => x.neg_cand_list.length >= 5)!;
    const pool = bench.taskPools.get(q.task_id)!;
    const hard = new Set(q.neg_cand_list);
    let hardInEasy = 0;
    for (let draw = 0; draw < 20; draw++) {
      const easy = candidateList(q, { K: 6, seed: 1, draw, pool, attributes: attrs, shuffle: false, hardNegatives: false });
      expect(easy[0]).toBe(q.pos_cand_list[0]);
      expect(new Set(easy).size).toBe(6);
      for (const d of easy) expect(attrs.get(d)!.split).toBe('train');
      hardInEasy += easy.filter((d) => hard.has(d)).length;
      // The default list of the same draw holds five hard negatives.
      expect(candidateList(q, { K: 6, seed: 1, draw, pool, attributes: attrs, shuffle: false }).filter((d) => hard.has(d))).toHaveLength(5);
    }
    // 100 random fillers from a pool of hundreds: a hard negative only by chance.
    expect(pool.length).toBeGreaterThan(200);
    expect(hardInEasy).toBeLessThan(5);
  });
});
