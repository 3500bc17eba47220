// onnxruntime-node running a one-node MatMul model, on its CPU execution provider (the
// native CPU ceiling: MLAS on every core) and on its WebGPU execution provider.
//
// The WebGPU EP is native code with its own Dawn linked into libonnxruntime: it cannot be
// handed retrv's GPUDevice, so it opens its own device. On a machine with one adapter
// (lavapipe, or one GPU) that is the same adapter. Inputs and outputs of
// session.run() live on the host, so every WebGPU run includes uploading A and B and
// reading C back; onnxruntime-node offers no way to keep them on the GPU.
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { setImmediate as plainSetImmediate } from 'node:timers';
import ort from 'onnxruntime-node';
import { type MatmulRunner, Skip } from '../suites/_lib.ts';
import { matmulModel } from './onnx-model.ts';

export type OrtEp = 'cpu' | 'webgpu';

export const ortVersion: string = ort.env.versions?.node ?? 'unknown';

function sessionOptions(ep: OrtEp): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: ep === 'webgpu' ? [{ name: 'webgpu', validationMode: 'wgpuOnly' }] : ['cpu'],
    graphOptimizationLevel: 'all',
  };
}

/**
 * Where onnxruntime placed the MatMul node with the WebGPU EP asked for. An EP that exists
 * but does not take the node falls back to CPU silently; only the verbose log says so,
 * and native logs cannot be captured in-process, so a child process creates the session.
 */
let placement: Promise<string> | null = null;
export function ortWebgpuPlacement(): Promise<string> {
  if (!placement) {
    placement = new Promise((resolve) => {
      const script = `
        const ort = require(${JSON.stringify(createRequire(import.meta.url).resolve('onnxruntime-node'))});
        const model = Buffer.from(process.argv[1], 'base64');
        ort.InferenceSession.create(new Uint8Array(model), { executionProviders: ['webgpu'], logSeverityLevel: 0, logVerbosityLevel: 1 })
          .then((s) => s.release()).catch((e) => { console.log('SESSION_ERROR ' + e.message); });`;
      const model = Buffer.from(matmulModel(8, 8, 8)).toString('base64');
      execFile(process.execPath, ['-e', script, model], { timeout: 60_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
        const log = `${stdout}\n${stderr}`;
        const placed = log.match(/All nodes placed on \[(\w+)\]/);
        const sessionErr = log.match(/SESSION_ERROR (.*)/);
        if (placed) resolve(placed[1]);
        else if (sessionErr) resolve(`error: ${sessionErr[1]}`);
        else if (/Node placements/.test(log)) resolve('mixed (some nodes not on WebGpuExecutionProvider)');
        else resolve(`unknown${err ? ` (${err.message.split('\n')[0]})` : ''}`);
      });
    });
  }
  return placement;
}

/**
 * session.run() schedules its (blocking, native) call with one global setImmediate.
 * runtime/device.ts throttles the global setImmediate to tame Dawn's poll loop, and would
 * mistake back-to-back runs for such a loop and delay every other one by ~1 ms. onnxruntime
 * does not poll, so its call gets Node's own setImmediate (it is made synchronously inside
 * session.run, before its first await).
 */
function runUnthrottled(session: ort.InferenceSession, feeds: ort.InferenceSession.FeedsType): Promise<ort.InferenceSession.ReturnType> {
  const g = globalThis as { setImmediate: typeof setImmediate };
  const current = g.setImmediate;
  g.setImmediate = plainSetImmediate;
  try {
    return session.run(feeds);
  } finally {
    g.setImmediate = current;
  }
}

export async function ortMatmul(ep: OrtEp, a: Float32Array, b: Float32Array, m: number, k: number, n: number): Promise<MatmulRunner> {
  if (ep === 'webgpu') {
    const where = await ortWebgpuPlacement();
    if (where !== 'WebGpuExecutionProvider') {
      throw new Skip(`onnxruntime-node ${ortVersion}: WebGPU EP not usable for MatMul (node placement: ${where})`);
    }
  }
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(matmulModel(m, k, n), sessionOptions(ep));
  } catch (e) {
    throw new Skip(`onnxruntime-node ${ortVersion}: cannot create a session on the ${ep} EP: ${(e as Error).message}`);
  }
  const feeds = { A: new ort.Tensor('float32', a, [m, k]), B: new ort.Tensor('float32', b, [k, n]) };
  const once = async (): Promise<Float32Array> => {
    const out = await runUnthrottled(session, feeds);
    const c = out.C;
    const data = c.data as Float32Array;
    c.dispose();
    return data;
  };
  return {
    // session.run resolves once the output is on the host, so the device work is done.
    async run() {
      await once();
    },
    async output() {
      return Float32Array.from(await once());
    },
    async dispose() {
      await session.release();
    },
  };
}
