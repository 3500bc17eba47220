// The `//#include "lib/<name>.wgsl"` expansion of shader sources (runtime/engine.ts):
// text substitution, one copy per file per shader, clear errors. No GPU needed.
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { expandIncludes, loadShader } from '../../runtime/engine.ts';

const shaderDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'shaders');

function reader(files: Record<string, string>): (path: string) => string | undefined {
  return (path) => files[path];
}

describe('shader includes', () => {
  it('replaces an include line by the file text, leaving other lines and defines alone', () => {
    const files = { 'lib/a.wgsl': 'fn a() -> u32 { return {{X}}u; }\n' };
    const code = 'const K = 1u;\n//#include "lib/a.wgsl"\nfn main() {}\n';
    expect(expandIncludes('s', code, reader(files))).toBe('const K = 1u;\nfn a() -> u32 { return {{X}}u; }\n\nfn main() {}\n');
  });

  it('includes each file once per shader, also through nested includes', () => {
    const files = {
      'lib/p.wgsl': 'fn p() {}\n',
      'lib/a.wgsl': '//#include "lib/p.wgsl"\nfn a() {}\n',
      'lib/b.wgsl': '//#include "lib/p.wgsl"\nfn b() {}\n',
    };
    const code = '//#include "lib/a.wgsl"\n//#include "lib/b.wgsl"\n  //#include "lib/a.wgsl"\n';
    const out = expandIncludes('s', code, reader(files));
    expect(out.match(/fn p\(/g)).toHaveLength(1);
    expect(out.match(/fn a\(/g)).toHaveLength(1);
    expect(out.match(/fn b\(/g)).toHaveLength(1);
    expect(out).not.toContain('#include');
    // p comes before a (it was included first, from inside a).
    expect(out.indexOf('fn p(')).toBeLessThan(out.indexOf('fn a('));
  });

  it('starts afresh for each shader', () => {
    const files = { 'lib/p.wgsl': 'fn p() {}\n' };
    const read = reader(files);
    expect(expandIncludes('s1', '//#include "lib/p.wgsl"\n', read)).toContain('fn p()');
    expect(expandIncludes('s2', '//#include "lib/p.wgsl"\n', read)).toContain('fn p()');
  });

  it('names the shader and the file when an include is missing', () => {
    const files = { 'lib/a.wgsl': '//#include "lib/gone.wgsl"\n' };
    expect(() => expandIncludes('mykernel', '//#include "lib/nope.wgsl"\n', reader(files))).toThrow(
      /shader mykernel: .*"lib\/nope\.wgsl" not found/,
    );
    expect(() => expandIncludes('mykernel', '//#include "lib/a.wgsl"\n', reader(files))).toThrow(
      /shader mykernel: .*"lib\/gone\.wgsl" not found/,
    );
    expect(() => loadShader('matmul_vec4')).not.toThrow();
  });

  it('rejects includes nested too deep and malformed include lines', () => {
    const chain: Record<string, string> = {};
    for (let i = 0; i < 8; i++) chain[`lib/c${i}.wgsl`] = `//#include "lib/c${i + 1}.wgsl"\nfn c${i}() {}\n`;
    chain['lib/c8.wgsl'] = 'fn c8() {}\n';
    expect(() => expandIncludes('deep', '//#include "lib/c0.wgsl"\n', reader(chain))).toThrow(/shader deep: .*nest deeper/);
    // Three levels are fine.
    const ok = { ...chain, 'lib/c2.wgsl': 'fn c2() {}\n' };
    expect(expandIncludes('deep', '//#include "lib/c0.wgsl"\n', reader(ok))).toContain('fn c2()');
    expect(() => expandIncludes('bad', '//#include lib/a.wgsl\n', reader({}))).toThrow(/shader bad: malformed include/);
    expect(() => expandIncludes('bad', '//#include "../x.wgsl"\n', reader({ '../x.wgsl': '' }))).toThrow(/not found/);
  });

  it('expands every shader in shaders/ with no include left and each helper defined once', () => {
    const names = readdirSync(shaderDir).filter((f) => f.endsWith('.wgsl')).map((f) => f.slice(0, -5));
    expect(names.length).toBeGreaterThan(0);
    for (const name of names) {
      const src = loadShader(name);
      expect(src, name).not.toMatch(/#include/);
      const fns = [...src.matchAll(/^\s*fn (\w+)/gm)].map((m) => m[1]);
      expect(new Set(fns).size, `${name}: ${fns.join(', ')}`).toBe(fns.length);
    }
  });
});
