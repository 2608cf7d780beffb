#!/usr/bin/env node
// The npm packages as users get them: `npm pack` of clients/js and clients/react into DIR, then
// each tarball must hold what its package.json points at (main, types, exports, files) and its
// README, and the unpacked packages must import in Node (@wsfan/react with the repo's react).
//
//   node scripts/packs.mjs DIR

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const dir = path.resolve(process.argv[2] || path.join(root, 'target', 'npm-packs'));
const WORKSPACES = ['clients/js', 'clients/react'];

rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
const out = execFileSync('npm', ['pack', ...WORKSPACES.flatMap((w) => ['--workspace', w]), '--pack-destination', dir, '--json'],
  { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
const packs = JSON.parse(out);
const problems = [];
for (const pack of packs) {
  const manifest = JSON.parse(readFileSync(path.join(root, WORKSPACES[packs.indexOf(pack)], 'package.json'), 'utf8'));
  const files = new Set(pack.files.map((f) => f.path));
  const wanted = new Set(['package.json', 'README.md', manifest.main, manifest.types,
    ...Object.values(manifest.exports || {}).flatMap((e) => Object.values(e))].filter(Boolean).map((f) => path.normalize(f)));
  for (const f of wanted) if (!files.has(f)) problems.push(`${pack.name}: ${pack.filename} lacks ${f}`);
  for (const f of files) if (/(^|\/)test\//.test(f) || f.endsWith('.test.mjs')) problems.push(`${pack.name}: ships its test ${f}`);
  // Unpacked where Node resolves it first: DIR/node_modules/<name>.
  const target = path.join(dir, 'node_modules', pack.name);
  mkdirSync(target, { recursive: true });
  execFileSync('tar', ['xzf', path.join(dir, pack.filename), '-C', target, '--strip-components=1']);
  console.log(`${pack.filename}: ${[...files].sort().join(' ')}`);
}
if (problems.length === 0) {
  // Imported from inside DIR, so @wsfan/* are the unpacked tarballs, not the workspace links.
  execFileSync('node', ['--input-type=module', '-e', `
    const client = await import('@wsfan/client');
    const react = await import('@wsfan/react');
    const want = { client: ['connect', 'WsfanClient'], react: ['WsfanProvider', 'useChannel', 'usePresence', 'useTyping', 'useDocumentProgress'] };
    for (const [name, mod] of Object.entries({ client, react })) for (const f of want[name]) if (typeof mod[f] !== 'function') throw new Error(name + ' has no ' + f);
  `], { cwd: dir, stdio: 'inherit' });
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log('packs: both packages hold their entry points and types, and import');
