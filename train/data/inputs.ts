// Turns M-BEIR rows into model inputs (text and preprocessed images) and into the items
// the trivial baselines compare, loading each image once.
import { join } from 'node:path';
import { type Preprocessed, type RgbaImage, loadImage, preprocess } from '../../model/image.ts';
import type { QueryInput } from '../../model/sequence.ts';
import { type BaselineCandidate, type BaselineQuery, meanColour } from '../eval/recall.ts';
import type { MbeirCandidate, MbeirQuery } from './mbeir-types.ts';

export interface ImageSettings {
  root: string;
  patchSize: number;
  mergeSize: number;
  /** Pixels per side after resizing. */
  size: number;
}

/** Loads and caches images and their preprocessed forms by relative path. */
export class ImageStore {
  private raw = new Map<string, RgbaImage>();
  private pre = new Map<string, Preprocessed>();
  constructor(readonly settings: ImageSettings) {}

  rgba(path: string): RgbaImage {
    let img = this.raw.get(path);
    if (!img) {
      img = loadImage(join(this.settings.root, path));
      this.raw.set(path, img);
    }
    return img;
  }

  preprocessed(path: string): Preprocessed {
    let p = this.pre.get(path);
    if (!p) {
      const s = this.settings;
      p = preprocess(this.rgba(path), { patchSize: s.patchSize, mergeSize: s.mergeSize, targetSize: s.size });
      this.pre.set(path, p);
    }
    return p;
  }
}

export function queryInput(q: MbeirQuery, images: ImageStore): QueryInput {
  return {
    text: q.query_txt ? q.query_txt : undefined,
    image: q.query_img_path ? images.preprocessed(q.query_img_path) : undefined,
  };
}

export function candidateInput(c: MbeirCandidate, images: ImageStore): QueryInput {
  return {
    text: c.txt ? c.txt : undefined,
    image: c.img_path ? images.preprocessed(c.img_path) : undefined,
  };
}

export function baselineQuery(q: MbeirQuery, images: ImageStore): BaselineQuery {
  return { qid: q.qid, text: q.query_txt || null, rgb: q.query_img_path ? meanColour(images.rgba(q.query_img_path).rgba) : null };
}

export function baselineCandidate(c: MbeirCandidate, images: ImageStore): BaselineCandidate {
  return { id: c.did, text: c.txt || null, rgb: c.img_path ? meanColour(images.rgba(c.img_path).rgba) : null };
}
