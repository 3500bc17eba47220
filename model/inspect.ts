// Details inspection: while reasoning, the reranker may write
//   <inspection-index-start>i<inspection-index-end>
// and the generator then appends candidate i's FULL content (text and/or image rows, the
// same parts the uncompressed prompt holds for it, between <|cand_start|>i and
// <|cand_end|>) to that sequence through the KV cache, like a tool result; decoding then
// continues. The prefix is never recomputed.
//
// The same rules serve training: `traceLayout` replays a finished token sequence through
// the same tracker and splices the same parts at the same places, so an SFT example, a
// GRPO completion and an inference run see identical contexts (the spliced rows are
// inputs, never targets).
//
// Problems are never fatal; each is an event of the sample (the GRPO reward reads them):
//   inspect       a valid request: the candidate's content is spliced in
//   out_of_range  an index >= the number of candidates (nothing spliced)
//   repeat        a candidate already inspected (nothing spliced)
//   over_cap      a valid request beyond maxInspections (nothing spliced)
//   malformed     no digits or anything else between the markers, a start marker left
//                 open (by another start, a structural special token, a run of more than
//                 MAX_OPEN tokens, or the end of generation), or an end marker without a
//                 start
// `at` is the number of assistant tokens up to and including the one that settled the
// event (for `inspect`: the splice comes right after token at - 1).
//
// Batching: rerankGenerateBatch decodes many (query, candidates) prompts in one batch;
// a splice goes into its own sequence only, the others keep decoding in the same step.
import { type Tensor, noGrad, tidy } from '../runtime/index.ts';
import { type FinishReason, Session, decode } from './generate.ts';
import type { Mllm } from './mllm.ts';
import { type CandidateInput, type Part, type QueryInput, type RerankPromptOptions, type SequenceLayout, contentParts, rerankParts } from './sequence.ts';
import { SPECIAL, type Tokenizer } from './tokenizer.ts';

export type InspectEventKind = 'inspect' | 'out_of_range' | 'repeat' | 'over_cap' | 'malformed';

export interface InspectEvent {
  kind: InspectEventKind;
  /** The requested candidate index, when the request had one. */
  index?: number;
  /** Assistant tokens up to and including the one that settled the event. */
  at: number;
}

/** Tokens an open request may hold before it counts as malformed (indices are 1-3 tokens). */
export const MAX_OPEN = 8;

/**
 * The inspection state machine of one sample, fed the assistant's tokens one by one
 * (host side, no GPU). push() returns the candidate index to splice in, or null.
 */
export class InspectionTracker {
  readonly events: InspectEvent[] = [];
  /** Inspected candidates in order (N_ins = length). */
  readonly inspections: number[] = [];
  private open: number[] | null = null;
  private count = 0;
  private readonly start: number;
  private readonly end: number;

  constructor(
    private readonly tok: Tokenizer,
    readonly numCandidates: number,
    readonly maxInspections: number,
  ) {
    if (!Number.isInteger(maxInspections) || maxInspections < 0) throw new RangeError(`InspectionTracker: maxInspections must be a non-negative integer, got ${maxInspections}`);
    this.start = tok.specialIds.inspectStart;
    this.end = tok.specialIds.inspectEnd;
  }

  /** Assistant tokens seen so far. */
  get tokens(): number {
    return this.count;
  }

  push(token: number): number | null {
    this.count++;
    if (token === this.start) {
      if (this.open) this.malformed();
      this.open = [];
      return null;
    }
    if (token === this.end) {
      if (!this.open) {
        this.malformed();
        return null;
      }
      const body = this.open;
      this.open = null;
      return this.settle(body);
    }
    if (!this.open) return null;
    if (this.tok.isSpecial(token)) {
      // </think>, <answer>, <|im_end|>, ... inside a request: it was never closed.
      this.open = null;
      this.malformed();
      return null;
    }
    this.open.push(token);
    if (this.open.length > MAX_OPEN) {
      this.open = null;
      this.malformed();
    }
    return null;
  }

  /** End of the sample: a request still open is malformed. */
  finish(): void {
    if (this.open) {
      this.open = null;
      this.malformed();
    }
  }

  private malformed(index?: number): void {
    this.events.push(index === undefined ? { kind: 'malformed', at: this.count } : { kind: 'malformed', index, at: this.count });
  }

  private settle(body: number[]): number | null {
    const text = this.tok.decode(body);
    if (!/^\d{1,6}$/.test(text)) {
      this.malformed();
      return null;
    }
    const index = Number(text);
    const at = this.count;
    if (index >= this.numCandidates) this.events.push({ kind: 'out_of_range', index, at });
    else if (this.inspections.includes(index)) this.events.push({ kind: 'repeat', index, at });
    else if (this.inspections.length >= this.maxInspections) this.events.push({ kind: 'over_cap', index, at });
    else {
      this.events.push({ kind: 'inspect', index, at });
      this.inspections.push(index);
      return index;
    }
    return null;
  }
}

/** What an inspection splices in: the candidate exactly as the uncompressed prompt lists it. */
export function inspectionParts(candidate: CandidateInput, index: number): Part[] {
  return [{ text: `${SPECIAL.candStart}${index} ` }, ...contentParts(candidate), { text: SPECIAL.candEnd }];
}

/** A layout's positions as M-RoPE rows, shifted by `start`. */
function positionRows(l: SequenceLayout, start: number): number[][] {
  return [0, 1, 2].map((r) => Array.from(l.positions.subarray(r * l.length, (r + 1) * l.length), (p) => p + start));
}

/**
 * The rows to append for an inspection (embeddings [n, D], on the caller to dispose) and
 * their M-RoPE positions continuing from `start` (the sequence's next position).
 */
export function inspectionInput(model: Mllm, candidate: CandidateInput, index: number, start: number): { embeds: Tensor; positions: number[][]; length: number } {
  const l = model.layout(inspectionParts(candidate, index));
  const embeds = noGrad(() => tidy(() => model.embed(l)));
  return { embeds, positions: positionRows(l, start), length: l.length };
}

export interface TraceLayout {
  layout: SequenceLayout;
  /** 1 at every position holding an assistant token (not the prompt, not spliced rows). */
  traceMask: Uint8Array;
  /** Prompt positions (the trace starts here). */
  promptLength: number;
  events: InspectEvent[];
  inspections: number[];
  /** Where each splice sits in the layout [start, end) and after how many assistant tokens. */
  splices: { index: number; at: number; start: number; end: number }[];
}

/**
 * The full context of a reranking sample as one layout: the prompt parts, then the
 * assistant tokens with each valid inspection's candidate content spliced in right after
 * its <inspection-index-end> (the tracker decides, exactly as during generation). Spans:
 * the prompt's marks, plus "trace" over each run of assistant tokens and "inspect:i" over
 * each splice.
 */
export function traceLayout(
  model: Mllm,
  prompt: { parts: Part[]; marks: { at: number; label: string; until: number }[] },
  candidates: readonly CandidateInput[],
  traceIds: readonly number[],
  maxInspections: number,
): TraceLayout {
  const tracker = new InspectionTracker(model.tokenizer, candidates.length, maxInspections);
  const parts = [...prompt.parts];
  const marks = [...prompt.marks];
  const cuts: { at: number; index: number }[] = [];
  traceIds.forEach((id) => {
    const i = tracker.push(id);
    if (i !== null) cuts.push({ at: tracker.tokens, index: i });
  });
  tracker.finish();
  let from = 0;
  const pushRun = (to: number) => {
    marks.push({ at: parts.length, label: 'trace', until: parts.length + 1 });
    parts.push({ ids: traceIds.slice(from, to) });
    from = to;
  };
  for (const c of cuts) {
    pushRun(c.at);
    const body = inspectionParts(candidates[c.index], c.index);
    marks.push({ at: parts.length, label: `inspect:${c.index}`, until: parts.length + body.length });
    parts.push(...body);
  }
  pushRun(traceIds.length);
  const layout = model.layout(parts, marks);
  const traceMask = new Uint8Array(layout.length);
  for (const s of layout.spans) if (s.label === 'trace') traceMask.fill(1, s.start, s.end);
  const promptLength = layout.spans.find((s) => s.label === 'trace')!.start;
  const inspectSpans = layout.spans.filter((s) => s.label.startsWith('inspect:'));
  return {
    layout,
    traceMask,
    promptLength,
    events: tracker.events,
    inspections: tracker.inspections,
    splices: cuts.map((c, k) => ({ index: c.index, at: c.at, start: inspectSpans[k].start, end: inspectSpans[k].end })),
  };
}

/** Next-token targets over a layout: position t - 1 predicts ids[t] wherever mask[t] is 1; -100 elsewhere. */
export function maskedTargets(layout: SequenceLayout, mask: Uint8Array, T = layout.length): Int32Array {
  const targets = new Int32Array(T).fill(-100);
  for (let t = 1; t < layout.length; t++) if (mask[t]) targets[t - 1] = layout.ids[t];
  return targets;
}

/** The answer index in `<answer>i</answer>` (the last one), or null when absent, malformed or out of range. */
export function parseAnswer(tok: Tokenizer, ids: readonly number[], numCandidates: number): number | null {
  const { answerStart, answerEnd } = tok.specialIds;
  const s = ids.lastIndexOf(answerStart);
  if (s < 0) return null;
  const e = ids.indexOf(answerEnd, s + 1);
  if (e < 0) return null;
  const text = tok.decode(ids.slice(s + 1, e));
  if (!/^\d{1,6}$/.test(text)) return null;
  const i = Number(text);
  return i < numCandidates ? i : null;
}

/**
 * Whether the assistant's tokens have the trace format: `<think>` first, one `</think>`,
 * then `<answer>i</answer>` with a valid index, then nothing but an optional <|im_end|>.
 */
export function formatOk(tok: Tokenizer, ids: readonly number[], numCandidates: number): boolean {
  const sp = tok.specialIds;
  if (ids[0] !== sp.thinkStart) return false;
  const close = ids.indexOf(sp.thinkEnd);
  if (close < 0 || ids.indexOf(sp.thinkEnd, close + 1) >= 0 || ids.indexOf(sp.thinkStart, 1) >= 0) return false;
  if (ids[close + 1] !== sp.answerStart) return false;
  const end = ids.indexOf(sp.answerEnd, close + 2);
  if (end < 0) return false;
  const rest = ids.slice(end + 1);
  if (rest.length > 1 || (rest.length === 1 && rest[0] !== sp.imEnd)) return false;
  const text = tok.decode(ids.slice(close + 2, end));
  return /^\d{1,6}$/.test(text) && Number(text) < numCandidates;
}

/** A prompt's query and candidate list, as a compress factory sees them. */
export interface CompressPrompt {
  query: QueryInput;
  candidates: readonly CandidateInput[];
}

/**
 * Builds the ICM hook of one prompt: given the query and its candidates, a function that
 * turns candidate i into its compressed rows (or null to keep its full tokens). `many`,
 * where a factory has it, builds the hooks of several prompts in one pass (the same rows).
 */
export type CompressFactory = ((query: QueryInput, candidates: readonly CandidateInput[]) => RerankPromptOptions['compress']) & {
  many?: (prompts: readonly CompressPrompt[]) => RerankPromptOptions['compress'][];
};

/**
 * The hooks of a batch of prompts: through `many` when the factory has it, so that a
 * training step compresses every list in one vision batch and one ICM pass instead of one
 * per prompt (fewer dispatches; an SFT step at batch 32 on an H200 went 1.23x faster).
 */
export function compressPrompts(factory: CompressFactory | undefined, prompts: readonly CompressPrompt[]): RerankPromptOptions['compress'][] {
  if (!factory) return prompts.map(() => undefined);
  return factory.many ? factory.many(prompts) : prompts.map((p) => factory(p.query, p.candidates));
}

export interface RerankRequest {
  query: QueryInput;
  candidates: readonly CandidateInput[];
  /** The ICM hook for this prompt (see rerankParts); absent = full tokens for every candidate. */
  compress?: RerankPromptOptions['compress'];
}

export interface RerankGenerateOptions {
  compress?: RerankPromptOptions['compress'];
  maxNewTokens: number;
  /** 0 = greedy. */
  temperature: number;
  seed: number;
  /** Cap on spliced inspections per sample (0 disables inspection). */
  maxInspections: number;
  topP?: number;
  system?: string;
  /**
   * Assistant tokens forced before sampling (e.g. [<think>]); they pass through the
   * inspection tracker like sampled ones and count among the returned tokens.
   */
  prefix?: readonly number[];
  /** Default: </answer>, <|im_end|>, <|endoftext|>. */
  stopTokens?: readonly number[];
  /** Also return the log-probabilities of the sampled tokens (untempered). */
  returnLogProbs?: boolean;
}

export interface RerankResult {
  /** The assistant's tokens as text (special tokens included; spliced content not). */
  text: string;
  /** The index in <answer>i</answer> when valid, else null. */
  answer: number | null;
  /** Inspected candidates in order; N_ins = inspections.length. */
  inspections: number[];
  events: InspectEvent[];
  /** Prompt length in LLM positions (compressed candidates count their rows). */
  promptTokens: number;
  /** The positions of the prompt that hold candidate content (what the ICM compresses). */
  candidateTokens: number;
  /** The assistant's tokens: the forced prefix, then the sampled ones. */
  tokens: number[];
  /** Log-probabilities of the sampled tokens (with returnLogProbs; the prefix has none). */
  logProbs?: number[];
  /** Rows spliced in by inspections. */
  insertedTokens: number;
  /** Where each splice went: after `at` assistant tokens, `rows` rows of candidate `index`. */
  splices: { index: number; at: number; rows: number }[];
  finishReason: FinishReason;
  formatOk: boolean;
}

/** Reranks one query: see rerankGenerateBatch. */
export async function rerankGenerate(model: Mllm, query: QueryInput, candidates: readonly CandidateInput[], opts: RerankGenerateOptions): Promise<RerankResult> {
  const [r] = await rerankGenerateBatch(model, [{ query, candidates, compress: opts.compress }], opts);
  return r;
}

/**
 * Reranks a batch of queries in one decoding batch (one sampled token per sequence per
 * step, one readback per step); each sequence inspects on its own. A request's own
 * `compress` wins over opts.compress. Sampling draws each row independently from (seed,
 * step, row), so the same request repeated in a batch gives different samples (a GRPO
 * group).
 */
export async function rerankGenerateBatch(model: Mllm, requests: readonly RerankRequest[], opts: RerankGenerateOptions): Promise<RerankResult[]> {
  const B = requests.length;
  if (!B) return [];
  const tok = model.tokenizer;
  const sp = tok.specialIds;
  const prefix = opts.prefix ?? [];
  const trackers = requests.map((r) => new InspectionTracker(tok, r.candidates.length, opts.maxInspections));
  const splices: { index: number; at: number; rows: number }[][] = requests.map(() => []);
  const pending: Tensor[] = [];
  const flush = () => {
    for (const t of pending.splice(0)) t.dispose();
  };

  // Prompts: laid out and embedded one by one (images through the vision encoder, the
  // compressed candidates through the hook), prefilled together.
  // (The hook runs inside the scope: its intermediates are freed, and the layout's
  // compressed rows are only read through the returned embeddings.)
  const prompts = requests.map((r) => {
    let layout: SequenceLayout | null = null;
    const embeds = noGrad(() =>
      tidy(() => {
        const { parts, marks } = rerankParts(r.query, r.candidates, { system: opts.system, compress: r.compress ?? opts.compress });
        layout = model.layout(parts, marks);
        return model.embed(layout);
      }),
    );
    return { layout: layout! as SequenceLayout, embeds };
  });
  const maxPrompt = Math.max(...prompts.map((p) => p.layout.length));
  const session = new Session(model.llm, B, { capacity: maxPrompt + prefix.length + opts.maxNewTokens + 8 });
  const splice = (b: number, index: number): { embeds: Tensor; positions: number[][] } => {
    const input = inspectionInput(model, requests[b].candidates[index], index, session.nextPosition[b]);
    pending.push(input.embeds);
    splices[b].push({ index, at: trackers[b].tokens, rows: input.length });
    return input;
  };
  try {
    session.prefill(prompts.map((p) => ({ embeds: p.embeds, positions: positionRows(p.layout, 0) })));
    for (const p of prompts) p.embeds.dispose();

    // The forced prefix, token runs per sequence, cut by splices.
    if (prefix.length) {
      for (let b = 0; b < B; b++) {
        let run: number[] = [];
        const inputs = (x: unknown) => requests.map((_, k) => (k === b ? x : null)) as Parameters<Session['append']>[0];
        for (const id of prefix) {
          run.push(id);
          const i = trackers[b].push(id);
          if (i === null) continue;
          session.append(inputs(run));
          run = [];
          session.append(inputs(splice(b, i)));
          flush();
        }
        if (run.length) session.append(inputs(run));
      }
    }

    const stopTokens = opts.stopTokens ?? [sp.answerEnd, sp.imEnd, sp.endOfText];
    const res = await decode(session, {
      maxNewTokens: opts.maxNewTokens,
      temperature: opts.temperature,
      topP: opts.topP,
      seed: opts.seed,
      stopTokens,
      returnLogProbs: opts.returnLogProbs,
      onToken: (e) => {
        flush(); // the previous step's splices have been appended by now
        const last = e.step + 1 >= opts.maxNewTokens;
        let any = false;
        const out = e.tokens.map((t, b) => {
          if (t === null) return null;
          const i = trackers[b].push(t);
          // On the last step nothing follows: the request counts, nothing is appended.
          if (i === null || last || !e.active[b]) return null;
          any = true;
          return splice(b, i);
        });
        return any ? out : undefined;
      },
    });
    flush();
    return requests.map((r, b) => {
      trackers[b].finish();
      const ids = [...prefix, ...res.tokens[b]];
      const K = r.candidates.length;
      return {
        text: tok.decode(ids),
        answer: parseAnswer(tok, ids, K),
        inspections: [...trackers[b].inspections],
        events: [...trackers[b].events],
        promptTokens: prompts[b].layout.length,
        candidateTokens: prompts[b].layout.spans.reduce((a, s) => a + (s.label.startsWith('cand:') ? s.end - s.start : 0), 0),
        tokens: ids,
        logProbs: res.logProbs?.[b],
        insertedTokens: splices[b].reduce((a, s) => a + s.rows, 0),
        splices: splices[b],
        finishReason: res.finishReason[b],
        formatOk: formatOk(tok, ids, K),
      };
    });
  } finally {
    flush();
    for (const p of prompts) if (!p.embeds.disposed) p.embeds.dispose();
    session.dispose();
  }
}
