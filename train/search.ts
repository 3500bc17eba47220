// `retrv search`: one query (text, optionally an image) against an M-BEIR pool. The first
// stage embeds the pool once (cached beside the retriever, keyed by the pool file's path,
// size and time) and returns the top K; the reasoning model reranks them and its trace is
// printed: which candidates it ruled out, which it inspected, what it answered.
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { init, noGrad, tidyAsync } from '../runtime/index.ts';
import { CorpusIndex } from '../model/corpus-index.ts';
import { Icm, icmCompress } from '../model/icm.ts';
import { rerankGenerate } from '../model/inspect.ts';
import { Mllm } from '../model/mllm.ts';
import { Retriever } from '../model/retriever.ts';
import { ImageStore, candidateInput, queryInput } from './data/inputs.ts';
import { formatIssue, readPool } from './data/mbeir.ts';
import type { MbeirQuery } from './data/mbeir-types.ts';
import { startProgress } from './progress.ts';
import { traceMarks } from './report/index.ts';

export interface SearchOptions {
  text: string;
  /** Absolute path of a query image. */
  image?: string;
  pool: string;
  imageRoot: string;
  ckpt: string;
  retriever: string;
  K: number;
  top: number;
  maxNewTokens?: number;
  log?: (line: string) => void;
}

export interface SearchOutcome {
  /** Reranked dids, best first (the answer, then the first-stage order). */
  ranked: string[];
  firstStage: string[];
  answer: number | null;
  inspections: number[];
  trace: string;
}

export async function search(o: SearchOptions): Promise<SearchOutcome> {
  const log = o.log ?? console.log;
  await init();
  const load = await readPool(o.pool);
  for (const i of load.issues.slice(0, 3)) log(formatIssue(i));
  if (load.skipped) log(`${o.pool}: ${load.skipped} line(s) skipped`);
  const pool = load.rows;
  if (!pool.length) throw new Error(`--pool ${o.pool}: no valid candidates`);
  const byDid = new Map(pool.map((c) => [c.did, c]));
  const retriever = await Retriever.load(o.retriever);
  const model = await Mllm.load(o.ckpt);
  const v = model.config.vision;
  const images = new ImageStore({ root: o.imageRoot, patchSize: v.patchSize, mergeSize: v.mergeSize, size: model.config.imageSize });
  const rv = retriever.mllm.config.vision;
  const rImages = new ImageStore({ root: o.imageRoot, patchSize: rv.patchSize, mergeSize: rv.mergeSize, size: retriever.mllm.config.imageSize });

  // The pool's index, cached per pool file version.
  const st = statSync(o.pool);
  const key = createHash('sha1').update(`${resolve(o.pool)}|${st.size}|${st.mtimeMs}|${resolve(o.imageRoot)}`).digest('hex').slice(0, 12);
  const indexDir = join(o.retriever, 'index', key);
  let index: CorpusIndex;
  if (existsSync(join(indexDir, 'ids.json'))) {
    index = await CorpusIndex.load(indexDir);
  } else {
    const p = startProgress({ label: 'embedding the pool', total: pool.length });
    index = await CorpusIndex.build(
      retriever,
      pool.map((c) => ({ id: c.did, input: () => candidateInput(c, rImages) })),
      { batchSize: 64, onProgress: (done: number) => p.update(done) },
    );
    p.stop();
    await index.save(indexDir);
  }

  // The query as an M-BEIR row (an absolute image path is read as is).
  const q: MbeirQuery = { qid: 'search', query_txt: o.text, query_img_path: o.image ?? null, query_modality: o.image ? 'image,text' : 'text', pos_cand_list: [], neg_cand_list: [], task_id: -1 };
  const qStore = o.image ? new ImageStore({ ...rImages.settings, root: '/' }) : rImages;
  const emb = noGrad(() => retriever.embed([queryInput(q, qStore)], 'query'));
  const hits = await index.search(emb, o.K);
  emb.dispose();
  const firstStage = hits.ids[0];

  const icm = await Icm.load(o.ckpt);
  const mStore = o.image ? new ImageStore({ ...images.settings, root: '/' }) : images;
  const query = queryInput(q, mStore);
  const candidates = firstStage.map((d) => candidateInput(byDid.get(d)!, images));
  const r = await tidyAsync(() =>
    rerankGenerate(model, query, candidates, {
      compress: icm ? noGrad(() => icmCompress(model, icm)(query, candidates)) : undefined,
      maxNewTokens: o.maxNewTokens ?? 256,
      temperature: 0,
      seed: 1,
      maxInspections: 3,
    }),
  );
  const answerId = r.answer === null ? null : firstStage[r.answer];
  const ranked = answerId ? [answerId, ...firstStage.filter((d) => d !== answerId)] : [...firstStage];
  const marks = traceMarks(r.text, firstStage.length);
  const label = (d: string) => {
    const c = byDid.get(d)!;
    return c.txt ?? c.img_path ?? d;
  };
  log(`query: ${o.text}${o.image ? ` + image ${o.image}` : ''}`);
  log(`\nfirst stage top ${firstStage.length}:`);
  firstStage.forEach((d, i) => {
    const tags = [r.inspections.includes(i) ? 'inspected' : '', marks.eliminated.includes(i) ? 'eliminated' : '', r.answer === i ? 'ANSWER' : ''].filter(Boolean).join(', ');
    log(`  [${i}] ${d}  ${label(d)}${tags ? `  (${tags})` : ''}`);
  });
  log(`\nreasoning trace (${r.tokens.length} tokens, ${r.inspections.length} inspection${r.inspections.length === 1 ? '' : 's'}):\n${r.text}`);
  log(`\ntop ${Math.min(o.top, ranked.length)} after reranking:`);
  ranked.slice(0, o.top).forEach((d, i) => log(`  ${i + 1}. ${d}  ${label(d)}`));
  if (r.answer === null) log('(the model gave no valid answer: the first-stage order is kept)');
  retriever.dispose();
  model.dispose();
  icm?.dispose();
  index.dispose();
  return { ranked, firstStage, answer: r.answer, inspections: r.inspections, trace: r.text };
}
