// Letter trigrams, hashed into a fixed number of buckets: the "word hashing" of DSSM (Huang
// et al., 2013), the first neural text retriever. Each word, lowercased and marked at both
// ends ("#smile#"), contributes its letter trigrams ("#sm", "smi", "mil", "ile", "le#"); a
// text is the count of each trigram's bucket. The retriever learns an embedding row per
// bucket (model/retriever.ts), which reaches what its byte-level BPE hides from a model
// trained on a few thousand names: that "smiling" and "smile" share most of their letters.

/** 32-bit FNV-1a of a string's UTF-16 code units (stable across runs and machines). */
export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** The letter trigrams of a text, in order, repeats kept (words are runs of letters and digits). */
export function letterTrigrams(text: string): string[] {
  const out: string[] = [];
  for (const word of text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? []) {
    const w = `#${word}#`;
    for (let i = 0; i + 3 <= w.length; i++) out.push(w.slice(i, i + 3));
  }
  return out;
}

/** Row b of the result counts the trigrams of texts[b] per bucket: [texts.length, buckets], row-major. */
export function trigramCounts(texts: readonly string[], buckets: number): Float32Array {
  if (!Number.isInteger(buckets) || buckets < 1) throw new RangeError(`trigram buckets must be a positive integer, got ${buckets}`);
  const out = new Float32Array(texts.length * buckets);
  texts.forEach((t, b) => {
    for (const g of letterTrigrams(t)) out[b * buckets + (fnv1a32(g) % buckets)] += 1;
  });
  return out;
}
