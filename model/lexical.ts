// TF-IDF over character trigrams: the lexical half of a hybrid retriever, and the text side
// of the trivial baseline (train/eval/recall.ts). A text's vector holds, for each trigram,
// its count times its inverse document frequency, unit-normed; two texts' cosine is the dot
// product of their vectors. The vocabulary and the document frequencies come from a corpus
// (the candidate pool's texts), as a BM25 index's statistics do.

/** Character trigrams of a text (lower-cased, spaces collapsed, padded with a space). */
export function charNgrams(text: string, n = 3): string[] {
  const core = text.toLowerCase().replace(/\s+/g, ' ').trim();
  if (!core) return [];
  const chars = [...` ${core} `];
  const out: string[] = [];
  for (let i = 0; i + n <= chars.length; i++) out.push(chars.slice(i, i + n).join(''));
  if (!out.length) out.push(chars.join(''));
  return out;
}

/** What a checkpoint stores of a fitted TF-IDF (lexical.json). */
export interface TfIdfJson {
  /** Texts of the corpus that had any trigram. */
  docs: number;
  /** The vocabulary, in the order of the dense vector's columns. */
  grams: string[];
  /** Documents holding each gram, in the same order. */
  df: number[];
}

export class TfIdf {
  /** Column of each gram in a dense vector. */
  private readonly column: Map<string, number>;

  private constructor(
    readonly docs: number,
    readonly grams: readonly string[],
    readonly df: readonly number[],
  ) {
    if (grams.length !== df.length) throw new RangeError(`tf-idf: ${grams.length} grams but ${df.length} document frequencies`);
    if (!(Number.isInteger(docs) && docs >= 0)) throw new RangeError(`tf-idf: the document count must be a whole number, got ${docs}`);
    this.column = new Map(grams.map((g, i) => [g, i]));
    if (this.column.size !== grams.length) throw new RangeError('tf-idf: the vocabulary repeats a gram');
    df.forEach((d, i) => {
      if (!(Number.isInteger(d) && d >= 1 && d <= docs)) throw new RangeError(`tf-idf: gram '${grams[i]}' has document frequency ${d}, outside 1..${docs}`);
    });
  }

  /** Vocabulary and document frequencies of a corpus (empty texts count for nothing). */
  static fit(texts: readonly (string | null | undefined)[]): TfIdf {
    const df = new Map<string, number>();
    let docs = 0;
    for (const t of texts) {
      const grams = t ? charNgrams(t) : [];
      if (!grams.length) continue;
      docs++;
      for (const g of new Set(grams)) df.set(g, (df.get(g) ?? 0) + 1);
    }
    const grams = [...df.keys()].sort();
    return new TfIdf(docs, grams, grams.map((g) => df.get(g)!));
  }

  static fromJSON(j: TfIdfJson): TfIdf {
    if (!j || !Array.isArray(j.grams) || !Array.isArray(j.df) || typeof j.docs !== 'number') throw new Error('tf-idf: lexical.json needs docs, grams and df');
    return new TfIdf(j.docs, j.grams, j.df);
  }

  toJSON(): TfIdfJson {
    return { docs: this.docs, grams: [...this.grams], df: [...this.df] };
  }

  /** The vocabulary's size: a dense vector's width. */
  get size(): number {
    return this.grams.length;
  }

  /** Smoothed IDF: ln((1 + N) / (1 + df)) + 1; a gram outside the corpus has df 0. */
  idf(gram: string): number {
    const c = this.column.get(gram);
    return Math.log((1 + this.docs) / (1 + (c === undefined ? 0 : this.df[c]))) + 1;
  }

  /**
   * The unit-norm weights of a text's grams. Grams outside the vocabulary count in the norm
   * (so a query's cosine with a candidate is the same as with the query's own vocabulary)
   * and are kept here; dense vectors drop them, as no candidate can share them.
   */
  weights(text: string): Map<string, number> {
    const tf = new Map<string, number>();
    for (const g of charNgrams(text)) tf.set(g, (tf.get(g) ?? 0) + 1);
    let norm = 0;
    for (const [g, c] of tf) {
      const w = c * this.idf(g);
      tf.set(g, w);
      norm += w * w;
    }
    norm = Math.sqrt(norm);
    if (norm > 0) for (const [g, w] of tf) tf.set(g, w / norm);
    return tf;
  }

  /** Row i is the vector of texts[i] over the vocabulary ([texts.length, size], row-major); a text without trigrams is a zero row. */
  dense(texts: readonly string[]): Float32Array {
    const V = this.size;
    const out = new Float32Array(texts.length * V);
    texts.forEach((t, i) => {
      for (const [g, w] of this.weights(t)) {
        const c = this.column.get(g);
        if (c !== undefined) out[i * V + c] = w;
      }
    });
    return out;
  }
}
