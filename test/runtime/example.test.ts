import { describe, it } from 'vitest';
import * as T from '../../runtime/index.ts';
import { checkOp, randArray } from '../helpers.ts';

describe('pattern', () => {
  it('add broadcasts and its gradient sums back', async () => {
    await checkOp({
      inputs: [
        { data: randArray(6, 1), shape: [2, 3] },
        { data: randArray(3, 2), shape: [3] },
      ],
      gpu: ([a, b]) => T.mul(T.add(a, b), a),
      cpu: ([a, b]) => Float64Array.from(a, (v, i) => (v + b[i % 3]) * v),
    });
  });
});
