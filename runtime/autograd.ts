// Reverse-mode autograd over a tape of GradNodes.
//
// An op that has an input requiring grad attaches a GradNode to its output: the inputs,
// the tensors its backward needs (saved as aliases, so disposing the caller's handle
// cannot free them), and the backward rule, written beside the forward in the op's
// file. `backward(loss)` walks the nodes in reverse topological order, accumulates
// gradients of leaves into `.grad` (summing across calls) and releases every node
// it passed, so intermediate buffers go back to the pool.
import { Tensor, shapeStr } from './tensor.ts';
import { keep } from './scope.ts';

export type BackwardFn = (grad: Tensor, saved: Tensor[]) => (Tensor | null | undefined)[];

export class GradNode {
  private saved: Tensor[];
  /** Spent: saved tensors freed (after backward, or when nothing references the node). */
  private released = false;
  /** Owners: the output tensor's handle plus every downstream node that reads it. */
  private refs = 1;
  /** The nodes that produced each input (null for leaves and constants), each retained. */
  readonly parents: (GradNode | null)[];
  constructor(
    readonly op: string,
    readonly inputs: Tensor[],
    saved: Tensor[],
    readonly backwardFn: BackwardFn,
  ) {
    this.saved = saved;
    this.parents = inputs.map((t) => {
      t.node?.retain();
      return t.node;
    });
  }
  get savedTensors(): Tensor[] {
    if (this.released) throw new Error(`backward through ${this.op} twice: its graph was already released`);
    return this.saved;
  }
  retain(): void {
    this.refs++;
  }
  /** Drops one owner; the last one frees the saved tensors and lets go of the parents. */
  unref(): void {
    if (--this.refs > 0) return;
    this.release();
    for (const p of this.parents) p?.unref();
  }
  /** Frees the saved tensors now (backward has used them). */
  release(): void {
    if (this.released) return;
    this.released = true;
    for (const t of this.saved) t.dispose();
    this.saved = [];
  }
}

let gradEnabled = true;

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs fn without recording a graph (inference, optimizer updates, backward itself). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** A view of t that keeps its storage alive for a backward pass, outside any tidy scope. */
export function saveForBackward(t: Tensor): Tensor {
  return keep(t.view(t.shape, t.strides, t.offset));
}

/**
 * Attaches a node to `out` when grad is enabled and some input requires grad.
 * `save` lists tensors the backward rule reads; they reach it as `saved`.
 */
export function record(out: Tensor, op: string, inputs: Tensor[], backward: BackwardFn, save: Tensor[] = []): Tensor {
  if (!gradEnabled || !inputs.some((t) => t.requiresGrad)) return out;
  out.requiresGrad = true;
  out.node = new GradNode(op, inputs, save.map(saveForBackward), backward);
  return out;
}

/** Marks a tensor as a leaf that receives gradients. */
export function requireGrad<T extends Tensor>(t: T, on = true): T {
  if (on && t.dtype !== 'f32' && t.dtype !== 'f16') throw new TypeError(`only float tensors can require grad, got ${t.dtype}`);
  t.requiresGrad = on;
  return t;
}

/** A tensor that shares storage but has no graph: gradients stop here. */
export function detach(t: Tensor): Tensor {
  return t.view(t.shape, t.strides, t.offset);
}

// Hooks filled in by ops (to avoid an import cycle): gradient accumulation and ones-like.
export const gradHooks: {
  add: ((a: Tensor, b: Tensor) => Tensor) | null;
  onesLike: ((t: Tensor) => Tensor) | null;
} = { add: null, onesLike: null };

/**
 * Back-propagates from `root` (a scalar unless `grad` is given). Leaf gradients
 * accumulate into `.grad`; the graph is released afterwards.
 */
export function backward(root: Tensor, grad?: Tensor): void {
  if (!root.requiresGrad || !root.node) throw new Error(`backward: ${root} does not require grad (no op on a parameter produced it)`);
  if (!grad && root.size !== 1) throw new RangeError(`backward: root has shape ${shapeStr(root.shape)}; pass a gradient for non-scalar roots`);
  if (grad && grad.size !== root.size) throw new RangeError(`backward: gradient shape ${shapeStr(grad.shape)} does not match ${shapeStr(root.shape)}`);
  const { add, onesLike } = gradHooks;
  if (!add || !onesLike) throw new Error('autograd hooks not installed: import the runtime through runtime/index.ts');

  // Gradients are keyed by the node that produced a tensor, or by the leaf tensor itself,
  // so disposing an intermediate handle never cuts the path (the node holds its parents).
  type Key = GradNode | Tensor;
  const keyOf = (node: GradNode, j: number): Key | null => node.parents[j] ?? (node.inputs[j].requiresGrad ? node.inputs[j] : null);

  // Topological order of nodes reachable from the root.
  const order: GradNode[] = [];
  const seen = new Set<GradNode>([root.node]);
  const stack: [GradNode, number][] = [[root.node, 0]];
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [n, i] = top;
    if (i < n.parents.length) {
      top[1]++;
      const p = n.parents[i];
      if (p && !seen.has(p)) {
        seen.add(p);
        stack.push([p, 0]);
      }
    } else {
      stack.pop();
      order.push(n);
    }
  }

  const prev = gradEnabled;
  gradEnabled = false;
  const grads = new Map<Key, Tensor>();
  try {
    grads.set(root.node, grad ? detach(grad) : onesLike(root));
    for (let k = order.length - 1; k >= 0; k--) {
      const node = order[k];
      const g = grads.get(node);
      if (!g) continue;
      grads.delete(node);
      // A rule may pass `g` through or return one tensor twice: give each slot its own handle.
      const used = new Set<Tensor>([g]);
      const gi = node.backwardFn(g, node.savedTensors).map((x) => {
        if (!x) return x;
        if (used.has(x)) return detach(x);
        used.add(x);
        return x;
      });
      g.dispose();
      node.inputs.forEach((inp, j) => {
        const gj = gi[j];
        if (!gj) return;
        const key = keyOf(node, j);
        if (!key) {
          gj.dispose();
          return;
        }
        if (gj.shape.length !== inp.shape.length || gj.shape.some((d, q) => d !== inp.shape[q])) {
          throw new Error(`backward of ${node.op}: gradient ${shapeStr(gj.shape)} for input ${j} of shape ${shapeStr(inp.shape)}`);
        }
        const prevG = grads.get(key);
        if (prevG) {
          grads.set(key, add(prevG, gj));
          prevG.dispose();
          gj.dispose();
        } else grads.set(key, gj);
      });
      node.release();
    }
    // What is left are the leaves: accumulate into .grad, which outlives every scope.
    for (const [key, g] of grads) {
      if (key instanceof GradNode) continue;
      const t = key;
      grads.delete(key);
      if (t.grad) {
        const sum = add(t.grad, g);
        t.grad.dispose();
        g.dispose();
        t.grad = keep(sum);
      } else t.grad = keep(g);
    }
  } finally {
    gradEnabled = prev;
    for (const g of grads.values()) g.dispose();
  }
}
