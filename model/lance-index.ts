// The same index interface backed by LanceDB embedded (@lancedb/lancedb): for pools that
// do not fit on the GPU (the real M-BEIR pool has 5.6M candidates). The embeddings go to
// a local Lance table `pool` (columns id: utf8, vector: fixed_size_list<f32>[dim]) in a
// folder, written in blocks as the pool is embedded, so the pool never has to fit in GPU
// or host memory at once; `lance-index.json` beside it records the dimension, the row
// count and whether an ANN index was built.
//
// ANN threshold: an IVF-PQ index (cosine) is built only when the pool has at least
// `annThreshold` rows (default 100,000). IVF-PQ trains k-means partitions (default
// sqrt(rows) of them) and 256-centroid PQ codebooks per sub-vector, which needs far more
// rows than partitions x 256 codes to be meaningful, and below ~100k rows LanceDB's flat
// scan is fast anyway. Under the threshold every search is an exact flat scan. With an
// index, searches probe `nprobes` partitions and re-rank `refineFactor` x k rows by their
// exact distances; `exact: true` bypasses the index.
//
// Scores are cosine similarities (1 - LanceDB's cosine distance). Exact ties come back in
// LanceDB's order, which is not specified.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as lancedb from '@lancedb/lancedb';
import { createRequire } from 'node:module';
import type { Table as ArrowTable } from 'apache-arrow';
import { type Tensor, shapeStr } from '../runtime/index.ts';
import { type EmbedPoolOptions, type PoolItem, type SearchResult, type VectorIndex, embedPool } from './corpus-index.ts';
import type { Embedder } from './retriever.ts';

// LanceDB is CommonJS and checks `instanceof` against the CommonJS build of apache-arrow:
// tables made with the ESM build lose their nested data, so build them with its copy.
const arrow = createRequire(import.meta.url)('apache-arrow') as typeof import('apache-arrow');

// Lance logs routine events (e.g. creating a new dataset) as warnings; keep errors only
// unless the user asked for more.
process.env.LANCEDB_LOG ??= 'error';

const TABLE = 'pool';
const META = 'lance-index.json';
/** Rows buffered on the host before each append to the table (few, large fragments). */
const WRITE_ROWS = 16384;
/** Queries run concurrently against the table. */
const CONCURRENCY = 16;

export const DEFAULT_ANN_THRESHOLD = 100_000;

export interface LanceIndexOptions {
  /** Build an IVF-PQ index when the pool has at least this many rows (default 100,000). */
  annThreshold?: number;
  /** IVF partitions (default: LanceDB's, sqrt(rows)). */
  numPartitions?: number;
  /** PQ sub-vectors (default: LanceDB's, dim / 16 or dim / 8). */
  numSubVectors?: number;
}

export interface LanceSearchOptions {
  /** Partitions probed with an ANN index (default 20). */
  nprobes?: number;
  /** Rows re-ranked exactly = refineFactor * k (default 10). */
  refineFactor?: number;
  /** Skip the ANN index: an exact flat scan. */
  exact?: boolean;
}

interface LanceMeta {
  dim: number;
  size: number;
  ann: boolean;
}

/** An Arrow table of ids and vectors [n, dim] (row-major). */
function arrowRows(ids: readonly string[], vectors: Float32Array, dim: number): ArrowTable {
  const n = ids.length;
  const child = arrow.makeData({ type: new arrow.Float32(), length: n * dim, data: vectors });
  const type = new arrow.FixedSizeList(dim, new arrow.Field('item', new arrow.Float32(), true));
  const vector = arrow.makeVector(arrow.makeData({ type, length: n, nullCount: 0, child }));
  return new arrow.Table({ id: arrow.vectorFromArray([...ids], new arrow.Utf8()), vector });
}

/** Builds a table in `dir` by appending blocks of rows, then the ANN index when warranted. */
class LanceWriter {
  private table: lancedb.Table | null = null;
  private ids: string[] = [];
  private vecs: Float32Array[] = [];
  private rows = 0;
  size = 0;
  private readonly seen = new Set<string>();

  constructor(
    private readonly db: lancedb.Connection,
    readonly dim: number,
  ) {}

  async push(ids: readonly string[], vectors: Float32Array): Promise<void> {
    if (vectors.length !== ids.length * this.dim) throw new RangeError(`LanceIndex: ${vectors.length} values for ${ids.length} ids of dim ${this.dim}`);
    for (const id of ids) {
      if (this.seen.has(id)) throw new Error(`LanceIndex: duplicate id '${id}'`);
      this.seen.add(id);
    }
    this.ids.push(...ids);
    this.vecs.push(vectors);
    this.rows += ids.length;
    if (this.rows >= WRITE_ROWS) await this.write();
  }

  async write(): Promise<void> {
    if (!this.rows) return;
    const all = new Float32Array(this.rows * this.dim);
    let at = 0;
    for (const v of this.vecs) (all.set(v, at), (at += v.length));
    const data = arrowRows(this.ids, all, this.dim);
    if (!this.table) this.table = await this.db.createTable(TABLE, data, { mode: 'overwrite' });
    else await this.table.add(data);
    this.size += this.rows;
    this.ids = [];
    this.vecs = [];
    this.rows = 0;
  }

  async finish(opts: LanceIndexOptions): Promise<{ table: lancedb.Table; ann: boolean }> {
    await this.write();
    if (!this.table) throw new Error('LanceIndex: the pool is empty');
    const threshold = opts.annThreshold ?? DEFAULT_ANN_THRESHOLD;
    const ann = this.size >= threshold;
    if (ann) {
      await this.table.createIndex('vector', {
        config: lancedb.Index.ivfPq({ distanceType: 'cosine', numPartitions: opts.numPartitions, numSubVectors: opts.numSubVectors }),
        replace: true,
      });
    }
    return { table: this.table, ann };
  }
}

export class LanceIndex implements VectorIndex {
  private constructor(
    readonly dir: string,
    private readonly db: lancedb.Connection,
    private readonly table: lancedb.Table,
    private readonly meta: LanceMeta,
    /** Defaults for search(). */
    readonly searchOptions: LanceSearchOptions = {},
  ) {}

  get size(): number {
    return this.meta.size;
  }
  get dim(): number {
    return this.meta.dim;
  }
  /** Whether an ANN (IVF-PQ) index was built. */
  get ann(): boolean {
    return this.meta.ann;
  }

  /** Writes ids and their vectors [n, dim] (host, row-major) to a new table in `dir` (replacing one there). */
  static async create(dir: string, ids: readonly string[], vectors: Float32Array, dim: number, opts: LanceIndexOptions = {}): Promise<LanceIndex> {
    return LanceIndex.fill(dir, dim, opts, async (w) => {
      for (let i = 0; i < ids.length; i += WRITE_ROWS) {
        const end = Math.min(ids.length, i + WRITE_ROWS);
        await w.push(ids.slice(i, end), vectors.subarray(i * dim, end * dim));
      }
    });
  }

  /** Embeds a pool with `model` straight into a table in `dir`, block by block. */
  static async build(model: Embedder, items: readonly PoolItem[], dir: string, opts: EmbedPoolOptions & LanceIndexOptions = {}): Promise<LanceIndex> {
    return LanceIndex.fill(dir, model.embedDim, opts, (w) =>
      embedPool(model, items, async (ids, emb) => {
        try {
          await w.push(ids, (await emb.toArray()) as Float32Array);
        } finally {
          emb.dispose();
        }
      }, { ...opts, role: 'candidate' }),
    );
  }

  private static async fill(dir: string, dim: number, opts: LanceIndexOptions, write: (w: LanceWriter) => Promise<void>): Promise<LanceIndex> {
    if (!Number.isInteger(dim) || dim < 1) throw new RangeError(`LanceIndex: dim must be a positive integer, got ${dim}`);
    mkdirSync(dir, { recursive: true });
    rmSync(join(dir, META), { force: true });
    const db = await lancedb.connect(dir);
    const w = new LanceWriter(db, dim);
    await write(w);
    const { table, ann } = await w.finish(opts);
    const meta: LanceMeta = { dim, size: w.size, ann };
    const tmp = join(dir, `.${META}.${process.pid}.tmp`);
    writeFileSync(tmp, JSON.stringify(meta, null, 2) + '\n');
    renameSync(tmp, join(dir, META));
    return new LanceIndex(dir, db, table, meta);
  }

  /** Opens a folder written by create() or build(). */
  static async open(dir: string, searchOptions: LanceSearchOptions = {}): Promise<LanceIndex> {
    const path = join(dir, META);
    if (!existsSync(path)) throw new Error(`LanceIndex.open: ${dir} has no ${META} (not a finished index)`);
    const meta = JSON.parse(readFileSync(path, 'utf8')) as LanceMeta;
    if (!Number.isInteger(meta.dim) || !Number.isInteger(meta.size)) throw new Error(`LanceIndex.open: ${path} is malformed`);
    const db = await lancedb.connect(dir);
    const table = await db.openTable(TABLE);
    return new LanceIndex(dir, db, table, meta, searchOptions);
  }

  async search(queries: Tensor, k: number, opts: LanceSearchOptions = this.searchOptions): Promise<SearchResult> {
    if (queries.rank !== 2 || queries.shape[1] !== this.dim) {
      throw new RangeError(`LanceIndex.search: queries have shape ${shapeStr(queries.shape)}, expected [Q, ${this.dim}]`);
    }
    return this.searchHost((await queries.toArray()) as Float32Array, queries.shape[0], k, opts);
  }

  /** Search with host query vectors [Q, dim] (row-major). */
  async searchHost(queries: Float32Array, Q: number, k: number, opts: LanceSearchOptions = this.searchOptions): Promise<SearchResult> {
    if (!Number.isInteger(k) || k < 1) throw new RangeError(`LanceIndex.search: k must be a positive integer, got ${k}`);
    if (queries.length !== Q * this.dim) throw new RangeError(`LanceIndex.search: ${queries.length} values for ${Q} queries of dim ${this.dim}`);
    const kk = Math.min(k, this.size);
    const out: SearchResult = { ids: new Array(Q), scores: new Array(Q) };
    const one = async (q: number) => {
      let query = this.table
        .vectorSearch(queries.subarray(q * this.dim, (q + 1) * this.dim))
        .distanceType('cosine')
        .select(['id', '_distance'])
        .limit(kk);
      if (this.meta.ann) query = opts.exact ? query.bypassVectorIndex() : query.nprobes(opts.nprobes ?? 20).refineFactor(opts.refineFactor ?? 10);
      const rows = (await query.toArray()) as { id: string; _distance: number }[];
      out.ids[q] = rows.map((r) => r.id);
      out.scores[q] = rows.map((r) => 1 - r._distance);
    };
    for (let q0 = 0; q0 < Q; q0 += CONCURRENCY) {
      const batch: Promise<void>[] = [];
      for (let q = q0; q < Math.min(Q, q0 + CONCURRENCY); q++) batch.push(one(q));
      await Promise.all(batch);
    }
    return out;
  }

  dispose(): void {
    this.table.close();
    this.db.close();
  }
}
