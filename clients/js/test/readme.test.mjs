// The README's first example, run as written against `wsfan dev`: only the endpoint is replaced,
// and the functions it leaves to the app (its token endpoint, showStatus, render, ...) are ours.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import WebSocket from 'ws';
import { startStack, REPO } from '../../../tests/support/stack.mjs';

const PLACEHOLDER_URL = 'wss://abc123.execute-api.eu-west-1.amazonaws.com/prod';

describe("the client README's first example", { timeout: 120_000 }, () => {
  let stack = null;
  before(async () => { stack = await startStack(); }, { timeout: 150_000 });
  after(async () => { if (stack) await stack.stop(); });

  it('connects, joins, sends, and renders its own message', async () => {
    const readme = readFileSync(path.join(REPO, 'clients', 'js', 'README.md'), 'utf8');
    const example = readme.split('```js\n')[1].split('```')[0];
    assert.ok(example.includes(PLACEHOLDER_URL), 'the example names the placeholder endpoint');
    // Under the repository, so that '@wsfan/client' resolves as it does for a user.
    const dir = path.join(REPO, 'target', 'readme-example');
    mkdirSync(dir, { recursive: true });
    const file = path.join(dir, 'client-readme.mjs');
    // Exported as well, so that the test can close it when done.
    writeFileSync(file, `${example.replace(PLACEHOLDER_URL, stack.wsUrl)}\nexport { client };\n`);

    const seen = { states: [], rendered: [], here: [] };
    const realFetch = globalThis.fetch;
    Object.assign(globalThis, {
      WebSocket, // Node 20 has no WebSocket of its own
      fetch: async (url, init) => (url === '/api/wsfan-token'
        ? new Response((await (await realFetch(`${stack.baseUrl}/dev/token?sub=readme`)).json()).token)
        : realFetch(url, init)),
      showStatus: (s) => seen.states.push(s),
      render: (m) => seen.rendered.push(m),
      setWhoIsHere: (p) => seen.here.push(p),
      updateWhoIsHere: () => {},
      reloadLatestPage: () => {},
    });
    let running = null;
    try {
      running = await import(pathToFileURL(file).href); // top-level await: resolves once the send is acked
      for (let i = 0; i < 100 && !seen.rendered.length; i++) await new Promise((r) => setTimeout(r, 100));
    } finally {
      running?.client.close();
      globalThis.fetch = realFetch;
    }
    assert.deepEqual(seen.rendered.map((m) => [m.channel, m.body, m.senderId]), [['workspace:42', 'Hello!', 'readme']]);
    assert.ok(seen.states.includes('connected'), JSON.stringify(seen.states));
    assert.ok(seen.here.some((p) => p.includes('readme')), JSON.stringify(seen.here));
  });
});
