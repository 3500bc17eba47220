// M-BEIR JSONL: schema round trip (our rows and rows shaped like the real release), every
// validation message naming file:line, bad lines skipped and counted, positives absent
// from the pool, missing or corrupt images, streaming of a multi-MB file, atomic writes.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import type { MbeirCandidate, MbeirQuery } from '../../train/data/mbeir-types.ts';
import {
  checkImages,
  formatIssue,
  loadBenchmarkDir,
  loadMbeirFiles,
  readPool,
  readQueries,
  resolveAgainstPool,
  summarizeLoad,
  validateCandidate,
  validateQuery,
  writeBenchmarkDir,
  writeJsonl,
} from '../../train/data/mbeir.ts';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'mbeir-test-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const q = (over: Partial<MbeirQuery> = {}): MbeirQuery => ({
  qid: '9:1',
  query_txt: 'a dog on a beach',
  query_img_path: null,
  query_modality: 'text',
  pos_cand_list: ['9:10'],
  neg_cand_list: [],
  task_id: 0,
  ...over,
});
const c = (over: Partial<MbeirCandidate> = {}): MbeirCandidate => ({ did: '9:10', txt: null, img_path: 'mbeir_images/mscoco_images/val2014/x.jpg', modality: 'image', ...over });

function pngBytes(w: number, h: number): Buffer {
  const p = new PNG({ width: w, height: h });
  p.data.fill(200);
  return PNG.sync.write(p);
}

describe('schema round trip', () => {
  it('queries and candidates shaped like the real M-BEIR come back unchanged', async () => {
    const queries: MbeirQuery[] = [
      q(),
      // Real release: image-only query with null or "" text, image path with subfolders, src content kept.
      q({ qid: '9:123', query_txt: null, query_img_path: 'mbeir_images/mscoco_images/val2014/COCO_val2014_000000391895.jpg', query_modality: 'image', pos_cand_list: ['9:2', '9:3'], task_id: 3, query_src_content: null }),
      q({ qid: '7:5', query_txt: '', query_img_path: 'mbeir_images/cirr_images/dev/dev-1.png', query_modality: 'image', task_id: 4, query_src_content: '{"id": 5}' }),
      q({ qid: '7:6', query_txt: 'is shinier', query_img_path: 'a/b/c.png', query_modality: 'image,text', neg_cand_list: ['9:2'], task_id: 7 }),
    ];
    const pool: MbeirCandidate[] = [c(), c({ did: '9:2', txt: 'A man riding a motorcycle.', img_path: null, modality: 'text', src_content: null }), c({ did: '9:3', txt: 'two', img_path: 'x/y.jpg', modality: 'image,text' })];
    await writeJsonl(join(dir, 'rt_q.jsonl'), queries);
    await writeJsonl(join(dir, 'rt_p.jsonl'), pool);
    const lq = await readQueries(join(dir, 'rt_q.jsonl'));
    const lp = await readPool(join(dir, 'rt_p.jsonl'));
    expect(lq.rows).toEqual(queries);
    expect(lp.rows).toEqual(pool);
    expect(lq.lines).toEqual([1, 2, 3, 4]);
    expect(lq.skipped + lp.skipped).toBe(0);
    expect(lq.issues.filter((i) => i.level === 'error')).toEqual([]);
  });

  it('random valid queries survive write and read (property)', async () => {
    const id = fc.stringMatching(/^[0-9a-z:_-]{1,12}$/);
    const text = fc.string({ maxLength: 30 }).filter((s) => s.trim() !== '');
    const query = fc
      .record({
        qid: id,
        txt: fc.option(text, { nil: null }),
        img: fc.option(fc.stringMatching(/^[a-z0-9_/]{1,20}\.(png|jpg)$/), { nil: null }),
        pos: fc.array(id, { minLength: 1, maxLength: 4 }),
        neg: fc.array(id, { maxLength: 4 }),
        task: fc.integer({ min: 0, max: 15 }),
      })
      .filter((r) => r.txt !== null || r.img !== null)
      .map((r): MbeirQuery => ({
        qid: r.qid,
        query_txt: r.txt,
        query_img_path: r.img,
        query_modality: r.img === null ? 'text' : r.txt === null ? 'image' : 'image,text',
        pos_cand_list: r.pos,
        neg_cand_list: r.neg,
        task_id: r.task,
      }));
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(query, { selector: (x) => x.qid, minLength: 1, maxLength: 8 }), async (rows) => {
        const path = join(dir, `prop_${n++}.jsonl`);
        await writeJsonl(path, rows);
        const back = await readQueries(path);
        expect(back.rows).toEqual(rows);
        expect(back.skipped).toBe(0);
      }),
      { numRuns: 25 },
    );
  });
});

describe('validation', () => {
  it('every message names file and line; bad lines are skipped and counted', async () => {
    const good = (i: number) => JSON.stringify(q({ qid: `g${i}` }));
    // line -> [content, expected fragment of the message or null for a good line]
    const lines: [string, string | null][] = [
      [good(1), null],
      ['{"qid": "x1", "query_txt": "a", ', 'invalid JSON'],
      [JSON.stringify({ ...q({ qid: 'x2' }), pos_cand_list: 'nope' }), 'pos_cand_list must be an array of strings'],
      [JSON.stringify({ ...q({ qid: 'x3' }), pos_cand_list: [1.5, { a: 1 }] }), 'pos_cand_list must be an array of strings'],
      ['', null], // blank lines are ignored, not counted
      [JSON.stringify({ ...q({ qid: 'x4' }), query_modality: 'audio' }), 'query_modality must be one of'],
      [JSON.stringify({ ...q({ qid: 'x5' }), task_id: 'zero' }), 'task_id must be a non-negative integer'],
      [JSON.stringify({ ...q({ qid: 'x6' }), query_modality: 'image', query_img_path: null }), 'query_img_path is null'],
      [JSON.stringify({ ...q({ qid: 'x7' }), query_txt: '' }), 'query_txt is empty'],
      [JSON.stringify({ ...q({ qid: 'x8' }), pos_cand_list: [] }), 'pos_cand_list is empty'],
      ['[1, 2]', 'must be a JSON object'],
      [JSON.stringify({ ...q({ qid: 'g1' }) }), 'duplicate qid "g1" (first on line 1)'],
      [JSON.stringify({ ...q(), qid: undefined }), 'qid is missing'],
      [good(2), null],
      [JSON.stringify({ ...q({ qid: 'x9' }), query_txt: 42 }), 'query_txt must be a string or null'],
      [JSON.stringify({ ...q({ qid: 'x10' }), neg_cand_list: 'a,b' }), 'neg_cand_list must be an array of strings'],
      [JSON.stringify({ ...q({ qid: 'x11' }), pos_cand_list: 7 }), 'pos_cand_list must be an array of strings'],
      [good(3), null],
    ];
    const path = join(dir, 'queries.jsonl');
    writeFileSync(path, lines.map((l) => l[0]).join('\n') + '\n');
    const load = await readQueries(path, { label: 'queries.jsonl' });
    expect(load.rows.map((r) => r.qid)).toEqual(['g1', 'g2', 'g3']);
    expect(load.lines).toEqual([1, 14, 18]);
    const bad = lines.map(([, m], i) => ({ m, line: i + 1 })).filter((x) => x.m !== null);
    expect(load.total).toBe(lines.length - 1); // the blank line is not counted
    expect(load.skipped).toBe(bad.length);
    for (const { m, line } of bad) {
      const msgs = load.issues.filter((i) => i.line === line).map(formatIssue);
      expect(msgs.length, `line ${line}`).toBeGreaterThan(0);
      expect(msgs.some((s) => s.startsWith(`queries.jsonl:${line}: `) && s.includes(m!)), `line ${line}: ${msgs.join(' | ')}`).toBe(true);
    }
    // The example from the issue, verbatim.
    expect(load.issues.map(formatIssue)).toContain('queries.jsonl:17: pos_cand_list must be an array of strings, got the number 7; line skipped');
    // No message for the good lines.
    expect(load.issues.filter((i) => [1, 14, 18].includes(i.line))).toEqual([]);
    expect(summarizeLoad(load)).toContain(`skipped ${bad.length} of ${lines.length - 1} lines`);
  });

  it('lenient where the real release needs it: numeric ids and task ids, "text,image", extra fields', () => {
    const v = validateQuery({ qid: 12, query_txt: null, query_img_path: 'a.jpg', query_modality: 'text, image', pos_cand_list: [3, '4'], task_id: '2', extra: 1, query_src_content: { k: 1 } });
    expect(v.errors).toEqual([]);
    expect(v.value).toEqual({ qid: '12', query_txt: null, query_img_path: 'a.jpg', query_modality: 'image,text', pos_cand_list: ['3', '4'], neg_cand_list: [], task_id: 2, query_src_content: '{"k":1}' });
    expect(v.warnings.length).toBeGreaterThanOrEqual(4);
    const cnd = validateCandidate({ did: '1:2', txt: '', img_path: 'p/q.png', modality: 'image' });
    expect(cnd.errors).toEqual([]);
    expect(validateCandidate({ did: '1:3', txt: null, img_path: null, modality: 'text' }).errors[0]).toMatch(/modality is "text" but txt is null/);
  });

  it('pool lines: errors name file:line, duplicates skipped', async () => {
    const path = join(dir, 'pool_bad.jsonl');
    writeFileSync(path, [JSON.stringify(c()), JSON.stringify(c({ did: '9:11', modality: 'image', img_path: null })), JSON.stringify(c()), 'not json', JSON.stringify(c({ did: '9:12' }))].join('\r\n'));
    const load = await readPool(path, { label: 'pool.jsonl' });
    expect(load.rows.map((r) => r.did)).toEqual(['9:10', '9:12']);
    expect(load.skipped).toBe(3);
    const msgs = load.issues.map(formatIssue);
    expect(msgs.some((m) => m.startsWith('pool.jsonl:2: modality is "image" but img_path is null'))).toBe(true);
    expect(msgs.some((m) => m.startsWith('pool.jsonl:3: duplicate did "9:10"'))).toBe(true);
    expect(msgs.some((m) => m.startsWith('pool.jsonl:4: invalid JSON'))).toBe(true);
  });

  it('a positive id absent from the pool: reported with file:line, query skipped', async () => {
    const path = join(dir, 'q_missing.jsonl');
    await writeJsonl(path, [q({ qid: 'a' }), q({ qid: 'b', pos_cand_list: ['9:10', '9:404'] }), q({ qid: 'c', neg_cand_list: ['9:10', 'gone'] })]);
    const load = resolveAgainstPool(await readQueries(path, { label: 'q.jsonl' }), new Set(['9:10']), { poolLabel: 'pool.jsonl' });
    expect(load.rows.map((r) => r.qid)).toEqual(['a', 'c']);
    expect(load.rows[1].neg_cand_list).toEqual(['9:10']);
    expect(load.skipped).toBe(1);
    const msgs = load.issues.map(formatIssue);
    expect(msgs).toContain('q.jsonl:2: qid "b": positive id "9:404" not in pool.jsonl; query skipped');
    expect(msgs.some((m) => m.startsWith('q.jsonl:3: warning: qid "c": 1 negative id(s) not in pool.jsonl'))).toBe(true);
  });

  it('files in the real release layout load, with bad rows skipped and counted', async () => {
    const root = join(dir, 'M-BEIR');
    mkdirSync(join(root, 'query', 'test'), { recursive: true });
    mkdirSync(join(root, 'cand_pool', 'local'), { recursive: true });
    mkdirSync(join(root, 'mbeir_images', 'mscoco_images', 'val2014'), { recursive: true });
    writeFileSync(join(root, 'mbeir_images', 'mscoco_images', 'val2014', 'COCO_1.jpg'), pngBytes(3, 3)); // PNG bytes, .jpg name: decoded by magic
    // Lines as the release writes them (key order, nulls, src content, numeric task_id).
    writeFileSync(
      join(root, 'cand_pool', 'local', 'mbeir_mscoco_task3_cand_pool.jsonl'),
      [
        '{"txt": "A man riding on the back of a motorcycle down a road.", "img_path": null, "modality": "text", "did": "9:2", "src_content": null}',
        '{"txt": null, "img_path": "mbeir_images/mscoco_images/val2014/COCO_1.jpg", "modality": "image", "did": "9:1", "src_content": null}',
      ].join('\n') + '\n',
    );
    writeFileSync(
      join(root, 'query', 'test', 'mbeir_mscoco_task3_test.jsonl'),
      [
        '{"qid": "9:6", "query_txt": null, "query_img_path": "mbeir_images/mscoco_images/val2014/COCO_1.jpg", "query_modality": "image", "query_src_content": null, "pos_cand_list": ["9:2"], "neg_cand_list": [], "task_id": 3}',
        '{"qid": "9:7", "query_txt": "", "query_img_path": "mbeir_images/mscoco_images/val2014/COCO_404.jpg", "query_modality": "image", "query_src_content": null, "pos_cand_list": ["9:2"], "neg_cand_list": [], "task_id": 3}',
        '{"qid": "9:8", "query_txt": "a cat", "query_img_path": null, "query_modality": "text", "query_src_content": null, "pos_cand_list": ["9:999"], "neg_cand_list": [], "task_id": 0}',
      ].join('\n') + '\n',
    );
    const got = await loadMbeirFiles({
      queryFiles: [join(root, 'query', 'test', 'mbeir_mscoco_task3_test.jsonl')],
      poolFiles: [join(root, 'cand_pool', 'local', 'mbeir_mscoco_task3_cand_pool.jsonl'), join(root, 'cand_pool', 'local', 'mbeir_mscoco_task3_cand_pool.jsonl')],
      imageRoot: root,
      checkImages: true,
    });
    expect(got.pool.map((c) => c.did)).toEqual(['9:2', '9:1']);
    expect(got.queries.map((x) => x.qid)).toEqual(['9:6']);
    expect(got.skipped).toBe(2);
    const msgs = got.issues.map(formatIssue);
    expect(msgs.some((m) => /mbeir_mscoco_task3_test\.jsonl:2: qid "9:7": image .*COCO_404\.jpg does not exist/.test(m))).toBe(true);
    expect(msgs.some((m) => /mbeir_mscoco_task3_test\.jsonl:3: qid "9:8": positive id "9:999" not in the pool files/.test(m))).toBe(true);
    expect(got.summary.at(-1)).toMatch(/skipped 2 of 3 lines/);
  });

  it('a missing file is an error naming it', async () => {
    await expect(readQueries(join(dir, 'nope.jsonl'))).rejects.toThrow(/nope\.jsonl: cannot read/);
  });
});

describe('images', () => {
  it('checkImages reports missing and corrupt images with file:line, passes good ones', async () => {
    const root = join(dir, 'imgroot');
    mkdirSync(join(root, 'sub', 'dir'), { recursive: true });
    writeFileSync(join(root, 'sub', 'dir', 'ok.png'), pngBytes(4, 3));
    const full = pngBytes(8, 8);
    writeFileSync(join(root, 'sub', 'trunc.png'), full.subarray(0, full.length - 20));
    writeFileSync(join(root, 'sub', 'junk.jpg'), Buffer.from('this is not an image'));
    writeFileSync(join(root, 'sub', 'bad.jpg'), Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 16, 1, 2, 3]));
    const pool: MbeirCandidate[] = [
      c({ did: 'ok', img_path: 'sub/dir/ok.png' }),
      c({ did: 'gone', img_path: 'sub/missing.png' }),
      c({ did: 'trunc', img_path: 'sub/trunc.png' }),
      c({ did: 'txt', txt: 'text only', img_path: null, modality: 'text' }),
      c({ did: 'junk', img_path: 'sub/junk.jpg' }),
      c({ did: 'ok2', img_path: 'sub/dir/ok.png' }),
      c({ did: 'badjpeg', img_path: 'sub/bad.jpg' }),
    ];
    const path = join(dir, 'pool_img.jsonl');
    await writeJsonl(path, pool);
    const load = await readPool(path, { label: 'pool.jsonl' });
    const chk = await checkImages(load, root);
    expect(chk.checked).toBe(5); // ok.png decoded once for two rows
    expect(chk.bad).toBe(4);
    expect([...chk.badRows].sort()).toEqual([1, 2, 4, 6]);
    const msgs = chk.issues.map(formatIssue);
    expect(msgs[0]).toMatch(/^pool\.jsonl:2: did "gone": image sub\/missing\.png does not exist/);
    expect(msgs[1]).toMatch(/^pool\.jsonl:3: did "trunc": .*corrupt or truncated PNG/);
    expect(msgs[2]).toMatch(/^pool\.jsonl:5: did "junk": .*unknown image format/);
    expect(msgs[3]).toMatch(/^pool\.jsonl:7: did "badjpeg": .*corrupt or truncated JPEG/);
    // Plain arrays of queries work too, lines counted from 1.
    const qs = [q({ qid: 'i1', query_img_path: 'sub/missing.png', query_modality: 'image', query_txt: null })];
    const qc = await checkImages(qs, root, { file: 'queries.jsonl' });
    expect(qc.issues.map(formatIssue)[0]).toMatch(/^queries\.jsonl:1: qid "i1": image sub\/missing\.png does not exist/);
  });
});

describe('files', () => {
  it('streams a multi-MB file and keeps line numbers', async () => {
    const path = join(dir, 'big.jsonl');
    const n = 40_000;
    await writeJsonl(
      path,
      (function* () {
        for (let i = 0; i < n; i++) yield c({ did: `5:${i}`, txt: `candidate number ${i} `.repeat(4), img_path: null, modality: 'text' });
      })(),
    );
    // Break one line in the middle.
    const text = readFileSync(path, 'utf8');
    expect(text.length).toBeGreaterThan(4_000_000);
    const lines = text.split('\n');
    lines[29_999] = '{"did": broken';
    writeFileSync(path, lines.join('\n'));
    const load = await readPool(path, { label: 'big.jsonl' });
    expect(load.total).toBe(n);
    expect(load.rows.length).toBe(n - 1);
    expect(load.skipped).toBe(1);
    expect(formatIssue(load.issues[0])).toMatch(/^big\.jsonl:30000: invalid JSON/);
    expect(load.lines[30_000]).toBe(30_002);
  });

  it('writeJsonl is atomic: no temp file left, a failed write keeps the old file', async () => {
    const sub = join(dir, 'atomic');
    const path = join(sub, 'out.jsonl');
    await writeJsonl(path, [q({ qid: 'old' })]);
    const before = readFileSync(path, 'utf8');
    const rows = [q({ qid: 'new' }), { bad: BigInt(1) }]; // JSON.stringify throws on BigInt
    await expect(writeJsonl(path, rows)).rejects.toThrow();
    expect(readFileSync(path, 'utf8')).toBe(before);
    expect(readdirSync(sub)).toEqual(['out.jsonl']);
    await writeJsonl(path, [q({ qid: 'new' })]);
    expect(JSON.parse(readFileSync(path, 'utf8')).qid).toBe('new');
    expect(readdirSync(sub)).toEqual(['out.jsonl']);
  });

  it('a benchmark directory loads back; broken lines and dangling positives are skipped and counted', async () => {
    const bdir = join(dir, 'bench');
    const root = join(bdir, 'img');
    mkdirSync(root, { recursive: true });
    writeFileSync(join(root, 'a.png'), pngBytes(2, 2));
    const pool = [c({ did: 'a', img_path: 'img/a.png' }), c({ did: 't', txt: 'hello', img_path: null, modality: 'text' }), c({ did: 'b', img_path: 'img/b.png' })];
    const queries = { train: [q({ qid: 'q1', pos_cand_list: ['a'] }), q({ qid: 'q2', pos_cand_list: ['b'] })], val: [q({ qid: 'q3', pos_cand_list: ['t'] })], test: [] };
    await writeBenchmarkDir(bdir, {
      queries,
      pool,
      taskPools: new Map([[0, ['a', 'b']]]),
      meta: { name: 'tiny', version: 1, seed: 0, image_root: '.', counts: {}, pool_size: 3, tasks: { 0: { name: 'text -> image', query: '', candidates: '', pool_file: 'pool_task0.jsonl', pool_size: 2 } } },
    });
    const ok = await loadBenchmarkDir(bdir);
    expect(ok.queries.train.map((x) => x.qid)).toEqual(['q1', 'q2']);
    expect(ok.taskPools.get(0)).toEqual(['a', 'b']);
    expect(ok.skipped).toBe(0);
    // With image checks, "b" (no file) leaves the pool, and so does q2, whose positive it was.
    const chk = await loadBenchmarkDir(bdir, { checkImages: true });
    expect(chk.pool.map((x) => x.did)).toEqual(['a', 't']);
    expect(chk.queries.train.map((x) => x.qid)).toEqual(['q1']);
    expect(chk.taskPools.get(0)).toEqual(['a']);
    const msgs = chk.issues.map(formatIssue);
    expect(msgs.some((m) => m.includes('pool.jsonl:3: did "b": image img/b.png does not exist'))).toBe(true);
    expect(msgs.some((m) => m.includes('queries_train.jsonl:2: qid "q2": positive id "b" not in pool.jsonl; query skipped'))).toBe(true);
    expect(chk.summary.some((s) => s.includes('queries_train.jsonl: skipped 1 of 2 lines'))).toBe(true);
    // A broken pool line.
    const text = readFileSync(join(bdir, 'pool.jsonl'), 'utf8').split('\n');
    text[1] = '{"did": "t", "txt": 5, "img_path": null, "modality": "text"}';
    writeFileSync(join(bdir, 'pool.jsonl'), text.join('\n'));
    const broken = await loadBenchmarkDir(bdir);
    expect(broken.pool.map((x) => x.did)).toEqual(['a', 'b']);
    expect(broken.queries.val).toEqual([]);
    expect(broken.issues.map(formatIssue).some((m) => m.includes('pool.jsonl:2: txt must be a string or null'))).toBe(true);
    expect(broken.skipped).toBe(2); // the pool line and q3
    // No meta.json: a clear error.
    await expect(loadBenchmarkDir(join(dir, 'nowhere'))).rejects.toThrow(/meta\.json: cannot read benchmark metadata/);
  });
});
