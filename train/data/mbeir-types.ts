// The M-BEIR JSONL schema, as is (UniIR's M-BEIR release): one query per line in a
// queries file, one candidate per line in a pool file. Image paths are relative to an
// image root given separately.

/** M-BEIR modalities. */
export type Modality = 'text' | 'image' | 'image,text';

export interface MbeirQuery {
  qid: string;
  query_txt: string | null;
  query_img_path: string | null;
  query_modality: Modality;
  /** dids of the relevant candidates. */
  pos_cand_list: string[];
  /** dids of known hard negatives (may be empty). */
  neg_cand_list: string[];
  task_id: number;
}

export interface MbeirCandidate {
  did: string;
  txt: string | null;
  img_path: string | null;
  modality: Modality;
}

/** M-BEIR task ids used here (UniIR numbering). */
export const TASKS: Record<number, string> = {
  0: 'text -> image',
  1: 'text -> text',
  3: 'image -> text',
  4: 'image -> image',
  6: 'image + text -> image',
};

/** Every valid modality string, for validation. */
export const MODALITIES: readonly Modality[] = ['text', 'image', 'image,text'];

// Additive: the real M-BEIR release also carries the source record of each query and
// candidate as a JSON string (often null). Kept when present so a round trip loses nothing.
export interface MbeirQuery {
  query_src_content?: string | null;
}
export interface MbeirCandidate {
  src_content?: string | null;
}
