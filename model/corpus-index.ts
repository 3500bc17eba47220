// The corpus index: a candidate pool embedded once and searched by cosine similarity.
//
// `VectorIndex` is the interface every index shares; `CorpusIndex` is the GPU one: the
// [P, E] embeddings (unit rows) stay on the GPU, split into chunks of at most
// `chunkRows` rows (one GPU buffer each), and a search is, per block of queries and per
// chunk, one matmul (scores [Q, c]) and one top-k on the GPU; the chunks' top-Ks are
// concatenated and a second top-k merges them. Only the final [Q, k] values and ids come
// back to the host: no host-side sort of scores.
//
// Ties are broken by the lower pool index (topk keeps the lower index first, and the
// chunks are concatenated in pool order), so results are deterministic.
//
// On disk (save/load): `embeddings.safetensors` with one tensor per chunk
// (`embeddings.0`, `embeddings.1`, ... [rows, E] f32) and `ids.json` (the pool ids in
// row order). Pools that do not fit on the GPU go to LanceIndex (lance-index.ts).
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  type Tensor,
  concat,
  contiguous,
  gather,
  getEngine,
  keep,
  loadSafetensors,
  matmul,
  noGrad,
  saveSafetensors,
  shapeStr,
  slice,
  tidy,
  topk,
} from '../runtime/index.ts';
import { type Embedder, type EmbedRole, l2Normalize } from './retriever.ts';
import type { QueryInput } from './sequence.ts';

/** Top-k results: per query, candidate ids and cosine scores, best first. */
export interface SearchResult {
  ids: string[][];
  scores: number[][];
}

/** What every index offers: a pool of `size` unit vectors of `dim` searched by cosine. */
export interface VectorIndex {
  readonly size: number;
  readonly dim: number;
  /** Top-k (k clamped to the pool size) for queries [Q, dim] (normalised here). */
  search(queries: Tensor, k: number): Promise<SearchResult>;
  dispose(): void;
}

/** One pool entry: its id and its content (or a function that loads it when its batch comes). */
export interface PoolItem {
  id: string;
  input: QueryInput | (() => QueryInput);
}

export interface EmbedPoolOptions {
  /** Inputs per forward pass (default 32). */
  batchSize?: number;
  /** What the inputs are, for models that embed queries and candidates differently (model/retriever.ts EmbedRole). */
  role?: EmbedRole;
  /** Called after each batch with the number embedded so far and the total. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Embeds a pool batch by batch (no gradients), handing each batch's ids and embeddings
 * [b, E] to `sink` (which owns the tensor). Returns when all are embedded.
 */
export async function embedPool(model: Embedder, items: readonly PoolItem[], sink: (ids: string[], emb: Tensor) => void | Promise<void>, opts: EmbedPoolOptions = {}): Promise<void> {
  const bs = opts.batchSize ?? 32;
  if (!Number.isInteger(bs) || bs < 1) throw new RangeError(`embedPool: batchSize must be a positive integer, got ${bs}`);
  for (let i = 0; i < items.length; i += bs) {
    const part = items.slice(i, i + bs);
    const inputs = part.map((it) => (typeof it.input === 'function' ? it.input() : it.input));
    const emb = noGrad(() => tidy(() => model.embed(inputs, opts.role)));
    if (emb.rank !== 2 || emb.shape[0] !== part.length) {
      emb.dispose();
      throw new RangeError(`embedPool: the model returned shape ${shapeStr(emb.shape)} for ${part.length} inputs`);
    }
    await sink(part.map((it) => it.id), emb);
    opts.onProgress?.(Math.min(i + bs, items.length), items.length);
  }
}

/** Default rows per chunk: at most 64 MiB of embeddings, within the GPU's buffer limit. */
function defaultChunkRows(dim: number): number {
  const limits = getEngine().ctx.limits;
  const maxBytes = Math.min(64 * 2 ** 20, limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  return Math.max(1, Math.floor(maxBytes / (4 * dim)));
}

/** Most score elements held at once per (query block, chunk): 32M floats = 128 MiB. */
const SCORE_BUDGET = 2 ** 25;

export interface CorpusIndexOptions {
  /** Rows per GPU chunk (default: 64 MiB of embeddings). */
  chunkRows?: number;
}

export class CorpusIndex implements VectorIndex {
  readonly chunkRows: number;
  private chunks: Tensor[] = [];
  private pending: Tensor[] = [];
  private pendingRows = 0;
  private readonly idList: string[] = [];
  private readonly idSet = new Set<string>();

  constructor(
    readonly dim: number,
    opts: CorpusIndexOptions = {},
  ) {
    if (!Number.isInteger(dim) || dim < 1) throw new RangeError(`CorpusIndex: dim must be a positive integer, got ${dim}`);
    this.chunkRows = opts.chunkRows ?? defaultChunkRows(dim);
    if (!Number.isInteger(this.chunkRows) || this.chunkRows < 1) throw new RangeError(`CorpusIndex: chunkRows must be a positive integer, got ${this.chunkRows}`);
  }

  get size(): number {
    return this.idList.length;
  }

  get ids(): readonly string[] {
    return this.idList;
  }

  /** Embeds a pool with `model` and indexes it. */
  static async build(model: Embedder, items: readonly PoolItem[], opts: EmbedPoolOptions & CorpusIndexOptions = {}): Promise<CorpusIndex> {
    const index = new CorpusIndex(model.embedDim, opts);
    try {
      await embedPool(model, items, (ids, emb) => {
        index.add(ids, emb);
        emb.dispose();
      }, { ...opts, role: 'candidate' });
    } catch (e) {
      index.dispose();
      throw e;
    }
    index.flush();
    return index;
  }

  /**
   * Appends rows: ids (unique) and their embeddings [n, dim], normalised here unless
   * `normalized` says they already are (the caller keeps ownership of `emb`).
   */
  add(ids: readonly string[], emb: Tensor, normalized = false): void {
    if (emb.rank !== 2 || emb.shape[0] !== ids.length || emb.shape[1] !== this.dim) {
      throw new RangeError(`CorpusIndex.add: embeddings have shape ${shapeStr(emb.shape)}, expected [${ids.length}, ${this.dim}] for ${ids.length} ids`);
    }
    for (const id of ids) {
      if (this.idSet.has(id)) throw new Error(`CorpusIndex.add: duplicate id '${id}'`);
      this.idSet.add(id);
      this.idList.push(id);
    }
    if (!ids.length) return;
    this.pending.push(keep(noGrad(() => (normalized ? contiguous(emb) : l2Normalize(emb)))));
    this.pendingRows += ids.length;
    while (this.pendingRows >= this.chunkRows) this.cut(this.chunkRows);
  }

  /** Moves the pending rows into full chunks (the last one may be short). */
  flush(): void {
    if (this.pendingRows > 0) this.cut(this.pendingRows);
  }

  /** Makes one chunk of the first `rows` pending rows. */
  private cut(rows: number): void {
    noGrad(() => {
      const all = this.pending.length === 1 ? this.pending[0] : concat(this.pending, 0);
      const chunk = keep(contiguous(slice(all, 0, 0, rows)));
      const restRows = this.pendingRows - rows;
      const rest = restRows > 0 ? keep(contiguous(slice(all, 0, rows, this.pendingRows))) : null;
      for (const t of this.pending) t.dispose();
      if (all !== this.pending[0]) all.dispose();
      this.chunks.push(chunk);
      this.pending = rest ? [rest] : [];
      this.pendingRows = restRows;
    });
  }

  /** The row embeddings [P, dim] on the host (row order = ids order). */
  async embeddings(): Promise<Float32Array> {
    this.flush();
    const out = new Float32Array(this.size * this.dim);
    let at = 0;
    for (const c of this.chunks) {
      out.set((await c.toArray()) as Float32Array, at);
      at += c.size;
    }
    return out;
  }

  async search(queries: Tensor, k: number): Promise<SearchResult> {
    this.flush();
    if (queries.rank !== 2 || queries.shape[1] !== this.dim) {
      throw new RangeError(`CorpusIndex.search: queries have shape ${shapeStr(queries.shape)}, expected [Q, ${this.dim}]`);
    }
    if (!Number.isInteger(k) || k < 1) throw new RangeError(`CorpusIndex.search: k must be a positive integer, got ${k}`);
    const Q = queries.shape[0];
    const kk = Math.min(k, this.size);
    const out: SearchResult = { ids: [], scores: [] };
    if (Q === 0 || kk === 0) {
      for (let q = 0; q < Q; q++) (out.ids.push([]), out.scores.push([]));
      return out;
    }
    const qBlock = Math.max(1, Math.floor(SCORE_BUDGET / Math.min(this.chunkRows, this.size)));
    const starts: number[] = [];
    for (let s = 0, c = 0; c < this.chunks.length; c++) (starts.push(s), (s += this.chunks[c].shape[0]));
    for (let q0 = 0; q0 < Q; q0 += qBlock) {
      const nq = Math.min(qBlock, Q - q0);
      const { values, positions, local, widths } = noGrad(() =>
        tidy(() => {
          const qn = l2Normalize(slice(queries, 0, q0, q0 + nq));
          const vals: Tensor[] = [];
          const idxs: Tensor[] = [];
          const widths: number[] = [];
          for (const c of this.chunks) {
            const kc = Math.min(kk, c.shape[0]);
            const r = topk(matmul(qn, c, { transposeB: true }), kc);
            vals.push(r.values);
            idxs.push(r.indices);
            widths.push(kc);
          }
          if (vals.length === 1) return { values: vals[0], positions: null, local: idxs[0], widths };
          // Merge: the k best of the chunks' top-Ks, then each pick's chunk-local index.
          const merged = topk(concat(vals, 1), kk);
          return { values: merged.values, positions: merged.indices, local: gather(concat(idxs, 1), 1, merged.indices), widths };
        }),
      );
      const [v, p, l] = await Promise.all([values.toArray(), positions ? positions.toArray() : Promise.resolve(null), local.toArray()]);
      values.dispose();
      positions?.dispose();
      local.dispose();
      // Column offsets of the chunks in the concatenation, to find each pick's chunk.
      const colStart: number[] = [];
      for (let s = 0, c = 0; c < widths.length; c++) (colStart.push(s), (s += widths[c]));
      for (let q = 0; q < nq; q++) {
        const ids: string[] = [];
        const scores: number[] = [];
        for (let j = 0; j < kk; j++) {
          let chunk = 0;
          if (p) {
            const col = p[q * kk + j];
            while (chunk + 1 < colStart.length && colStart[chunk + 1] <= col) chunk++;
          }
          ids.push(this.idList[starts[chunk] + l[q * kk + j]]);
          scores.push(v[q * kk + j]);
        }
        out.ids.push(ids);
        out.scores.push(scores);
      }
    }
    return out;
  }

  /** Writes embeddings.safetensors and ids.json into `dir` (created if needed). */
  async save(dir: string): Promise<void> {
    this.flush();
    mkdirSync(dir, { recursive: true });
    const tensors: Record<string, Tensor> = {};
    this.chunks.forEach((c, i) => (tensors[`embeddings.${i}`] = c));
    await saveSafetensors(join(dir, 'embeddings.safetensors'), tensors, { dim: String(this.dim), count: String(this.size) });
    const tmp = join(dir, `.ids.json.${process.pid}.tmp`);
    writeFileSync(tmp, JSON.stringify(this.idList));
    renameSync(tmp, join(dir, 'ids.json'));
  }

  /** Reads a folder written by save(); chunks keep their saved sizes unless chunkRows is given. */
  static async load(dir: string, opts: CorpusIndexOptions = {}): Promise<CorpusIndex> {
    const idsPath = join(dir, 'ids.json');
    const embPath = join(dir, 'embeddings.safetensors');
    if (!existsSync(idsPath) || !existsSync(embPath)) throw new Error(`CorpusIndex.load: ${dir} needs ids.json and embeddings.safetensors`);
    let ids: unknown;
    try {
      ids = JSON.parse(readFileSync(idsPath, 'utf8'));
    } catch (e) {
      throw new Error(`CorpusIndex.load: ${idsPath} is not valid JSON (${(e as Error).message})`);
    }
    if (!Array.isArray(ids) || ids.some((x) => typeof x !== 'string')) throw new Error(`CorpusIndex.load: ${idsPath} must hold an array of strings`);
    const { tensors } = await loadSafetensors(embPath, { dtype: 'f32' });
    const names = Object.keys(tensors);
    const order = names.map((n) => /^embeddings\.(\d+)$/.exec(n)).map((m, i) => {
      if (!m) {
        for (const t of Object.values(tensors)) t.dispose();
        throw new Error(`CorpusIndex.load: unexpected tensor '${names[i]}' in ${embPath}`);
      }
      return { i: Number(m[1]), t: tensors[names[i]] };
    });
    order.sort((a, b) => a.i - b.i);
    const parts = order.map((o) => o.t);
    const fail = (msg: string): never => {
      for (const t of parts) t.dispose();
      throw new Error(`CorpusIndex.load: ${embPath}: ${msg}`);
    };
    if (!parts.length) fail('no embeddings');
    const dim = parts[0].shape[1];
    if (parts.some((t) => t.rank !== 2 || t.shape[1] !== dim)) fail(`chunks have shapes ${parts.map((t) => shapeStr(t.shape)).join(', ')}; expected [rows, ${dim}]`);
    const rows = parts.reduce((a, t) => a + t.shape[0], 0);
    if (rows !== (ids as string[]).length) fail(`${rows} rows but ${(ids as string[]).length} ids in ids.json`);
    const chunkRows = opts.chunkRows ?? Math.max(...parts.map((t) => t.shape[0]));
    const index = new CorpusIndex(dim, { chunkRows });
    let at = 0;
    try {
      for (const t of parts) {
        index.add((ids as string[]).slice(at, at + t.shape[0]), t, true);
        at += t.shape[0];
        t.dispose();
      }
    } catch (e) {
      for (const t of parts) t.dispose();
      index.dispose();
      throw e;
    }
    index.flush();
    return index;
  }

  dispose(): void {
    for (const t of [...this.chunks, ...this.pending]) t.dispose();
    this.chunks = [];
    this.pending = [];
    this.pendingRows = 0;
  }
}

/**
 * Embeds queries in batches and searches an index: the top-k ids and scores per query.
 */
export async function retrieve(model: Embedder, index: VectorIndex, queries: readonly QueryInput[], k: number, opts: EmbedPoolOptions = {}): Promise<SearchResult> {
  const out: SearchResult = { ids: [], scores: [] };
  const items = queries.map((input, i) => ({ id: String(i), input }));
  await embedPool(model, items, async (_ids, emb) => {
    try {
      const r = await index.search(emb, k);
      out.ids.push(...r.ids);
      out.scores.push(...r.scores);
    } finally {
      emb.dispose();
    }
  }, { ...opts, role: 'query' });
  return out;
}

