// Initialises the GPU once for the worker (every test file shares it).
import { init } from '../runtime/index.ts';

await init();
