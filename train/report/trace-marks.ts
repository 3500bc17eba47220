// What a reasoning trace did, read from its text, for the report when only the text is at
// hand: inspected candidates (the <inspection-index-start>i<inspection-index-end> requests,
// in order, first time each, in range), the <answer>i</answer>, and the eliminated ones:
// candidates the trace names as `candidate 3 ("...")` or in a list `3 ("...")` (the
// wording of train/data/cot.ts, which the model learns) that it neither inspected nor
// chose. The inspection list of model/inspect.ts stays the authority when it is known.
export interface TraceMarks {
  inspections: number[];
  eliminated: number[];
  answer: number | null;
}

export const INSPECTION_RE = /<inspection-index-start>\s*(\d+)\s*<inspection-index-end>/g;

export function traceMarks(text: string, numCandidates: number): TraceMarks {
  const inRange = (i: number) => Number.isInteger(i) && i >= 0 && i < numCandidates;
  const inspections: number[] = [];
  for (const m of text.matchAll(INSPECTION_RE)) {
    const i = Number(m[1]);
    if (inRange(i) && !inspections.includes(i)) inspections.push(i);
  }
  const a = /<answer>\s*(\d+)\s*<\/answer>/.exec(text);
  const answer = a && inRange(Number(a[1])) ? Number(a[1]) : null;
  const body = text.replace(/<answer>[\s\S]*$/, '');
  const eliminated: number[] = [];
  for (const m of body.matchAll(/(\d+) \("/g)) {
    const i = Number(m[1]);
    if (inRange(i) && i !== answer && !inspections.includes(i) && !eliminated.includes(i)) eliminated.push(i);
  }
  return { inspections, eliminated, answer };
}
