// @wsfan/react in headless Chromium against `wsfan dev`: the example app (example/app.tsx, in
// StrictMode) bundled with esbuild, two people chatting through it, one cut off and recovered,
// a component unmounted, and a document's progress bar.
//
// Needs: `cargo build --workspace --bins`, `npm ci` and Debian's chromium (scripts/setup).
// Run: node --test clients/react/test/*.test.mjs

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { chromium } from 'playwright-core';
import { REPO, startStack, tail } from '../../../tests/support/stack.mjs';
import { connectionsOf, deleteConnection } from '../../../tests/support/aws.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const EXAMPLE = path.join(HERE, '..', 'example');
const ARTIFACTS = path.join(REPO, 'tests', 'artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const CHANNEL = `workspace:react-${Date.now().toString(36)}`;

let stack = null;
let browser = null;
let server = null;
let appUrl = null;
const pages = {};
const sockets = {}; // name -> WebSockets the page opened
const pageErrors = [];
const tokenRequests = {}; // sub -> how many times a page asked: once per connection made

/** The example app, bundled: React, react-dom, @wsfan/react (its source) and @wsfan/client. */
async function bundle() {
  const out = await esbuild.build({
    entryPoints: [path.join(EXAMPLE, 'app.tsx')],
    bundle: true,
    format: 'esm',
    write: false,
    jsx: 'automatic',
    define: { 'process.env.NODE_ENV': '"development"' }, // development React: StrictMode double-mounts
    alias: { '@wsfan/react': path.join(HERE, '..', 'src', 'index.ts') },
    logLevel: 'silent',
  });
  return out.outputFiles[0].text;
}

/** The README's first example, rendered by a few lines of ours, bundled the same way. */
async function bundleReadme() {
  const readme = readFileSync(path.join(HERE, '..', 'README.md'), 'utf8');
  const example = readme.split('```tsx\n')[1].split('```')[0];
  const entry = `import { createRoot } from 'react-dom/client';
import { createElement } from 'react';
import { App } from './readme-example.tsx';
const q = new URLSearchParams(location.search);
const token = async () => (await (await fetch('/token?sub=' + q.get('user'))).json()).token;
createRoot(document.getElementById('root')).render(createElement(App, { url: q.get('ws'), token }));`;
  const out = await esbuild.build({
    stdin: { contents: entry, resolveDir: HERE, loader: 'tsx' },
    bundle: true,
    format: 'esm',
    write: false,
    jsx: 'automatic',
    define: { 'process.env.NODE_ENV': '"development"' },
    alias: { '@wsfan/react': path.join(HERE, '..', 'src', 'index.ts') },
    plugins: [{
      name: 'readme',
      setup(build) {
        build.onResolve({ filter: /readme-example/ }, () => ({ path: 'readme-example.tsx', namespace: 'readme' }));
        build.onLoad({ filter: /.*/, namespace: 'readme' }, () => ({ contents: example, loader: 'tsx', resolveDir: HERE }));
      },
    }],
    logLevel: 'silent',
  });
  return out.outputFiles[0].text;
}

async function serve(js) {
  const html = readFileSync(path.join(EXAMPLE, 'index.html'), 'utf8');
  server = createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/token') {
      // The stack's token endpoint, through this origin.
      const sub = url.searchParams.get('sub');
      tokenRequests[sub] = (tokenRequests[sub] ?? 0) + 1;
      const r = await fetch(`${stack.baseUrl}/dev/token?sub=${encodeURIComponent(url.searchParams.get('sub'))}`);
      res.writeHead(r.status, { 'content-type': 'application/json' }).end(await r.text());
    } else if (url.pathname === '/app.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(url.searchParams.has('readme') ? js.readme : js.app);
    } else {
      const page = url.searchParams.has('readme') ? html.replace('./app.js', './app.js?readme') : html;
      res.writeHead(200, { 'content-type': 'text/html' }).end(page);
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${server.address().port}/`;
}

async function openAs(name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(`${name} console: ${m.text()}`); });
  sockets[name] = [];
  page.on('websocket', (ws) => sockets[name].push(ws));
  await page.goto(`${appUrl}?ws=${encodeURIComponent(stack.wsUrl)}&user=${name}&channel=${encodeURIComponent(CHANNEL)}`);
  await page.locator('#chat[data-joined="true"]').waitFor();
  pages[name] = page;
  return page;
}

const texts = (page) => page.locator('#messages .message').allInnerTexts();
const seqs = async (page) => (await page.locator('#messages .message').evaluateAll((els) => els.map((e) => Number(e.dataset.seq))));

async function say(page, text) {
  await page.fill('#draft', text);
  await page.click('#send');
}

describe('@wsfan/react in Chromium', { timeout: 240_000 }, () => {
  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    const [app, readme, started] = await Promise.all([bundle(), bundleReadme(), startStack()]);
    stack = started;
    appUrl = await serve({ app, readme });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  }, { timeout: 180_000 });

  after(async () => {
    for (const [name, page] of Object.entries(pages)) {
      await page.screenshot({ path: path.join(ARTIFACTS, `react-${name}.png`) }).catch(() => {});
    }
    if (browser) await browser.close().catch(() => {});
    if (server) server.close();
    if (stack) await stack.stop();
  });

  it('StrictMode makes one connection per provider, and two people see each other', async () => {
    const alice = await openAs('alice');
    const bob = await openAs('bob');
    await alice.locator('#present [data-user="bob"]').waitFor();
    await bob.locator('#present [data-user="alice"]').waitFor();
    await alice.locator('#status[data-state="connected"]').waitFor();
    assert.equal(sockets.alice.length, 1, 'StrictMode mounted twice, but one WebSocket');
    assert.equal(sockets.bob.length, 1);
    // Not even a connection begun and dropped: the token is asked for once.
    assert.deepEqual([tokenRequests.alice, tokenRequests.bob], [1, 1]);
  });

  it('messages arrive in order, once, and components on one channel share them', async () => {
    const { alice, bob } = pages;
    await alice.fill('#draft', 'h');
    await bob.locator('#typing', { hasText: 'alice typing' }).waitFor();
    for (let i = 1; i <= 5; i++) await say(alice, `hello ${i}`);
    await bob.locator('.message', { hasText: 'hello 5' }).waitFor();
    const got = await texts(bob);
    assert.deepEqual(got.map((t) => t.replace(/^alice\s+/, '')), [1, 2, 3, 4, 5].map((i) => `hello ${i}`));
    const s = await seqs(bob);
    assert.deepEqual(s, [...s].sort((a, b) => a - b));
    assert.equal(await bob.locator('#count').innerText(), '5', 'the second component sees the same list');
    // A message ends its sender's typing.
    await bob.waitForFunction(() => document.querySelector('#typing').textContent === '', null, { timeout: 10_000 });
  });

  it('a page that reloads gets the recent history; one cut off recovers what it missed', async () => {
    const { alice } = pages;
    const carol = await openAs('carol');
    await carol.locator('.message', { hasText: 'hello 5' }).waitFor();
    assert.equal((await texts(carol)).length, 5, 'the recent history on mount');

    // Cut carol through @connections, and talk while she is away.
    const [id] = await connectionsOf(stack.env, CHANNEL, 'carol');
    assert.equal(await deleteConnection(stack.baseUrl, new URL(stack.wsUrl).pathname.slice(1), id), 204);
    await carol.locator('#status:not([data-state="connected"])').waitFor();
    for (let i = 6; i <= 10; i++) await say(alice, `hello ${i}`);
    await carol.locator('.message', { hasText: 'hello 10' }).waitFor();
    await carol.locator('#status[data-state="connected"]').waitFor();
    const got = await texts(carol);
    assert.deepEqual(got.map((t) => t.replace(/^alice\s+/, '')), Array.from({ length: 10 }, (_, i) => `hello ${i + 1}`), 'each once, in order');
    assert.equal(sockets.carol.length, 2, 'one reconnect');
  });

  it('unmounting the channel\'s components leaves it; the others see the person go', async () => {
    const { alice, bob } = pages;
    await bob.click('#toggle');
    await alice.locator('#present [data-user="bob"]').waitFor({ state: 'detached' });
    await bob.click('#toggle');
    await alice.locator('#present [data-user="bob"]').waitFor();
    await bob.locator('.message', { hasText: 'hello 10' }).waitFor();
    assert.equal(sockets.bob.length, 1, 'the connection stayed');
  });

  it("a document's progress bar fills, never moves back, and ends complete", async () => {
    const { alice } = pages;
    const { docId } = await (await fetch(`${stack.baseUrl}/dev/docs`, { method: 'POST' })).json();
    await alice.evaluate((id) => window.watch(id), docId);
    await alice.locator(`.bar[data-doc="${docId}"][data-done="true"]`).waitFor({ timeout: 30_000 });
    assert.equal(await alice.locator(`.bar[data-doc="${docId}"]`).getAttribute('data-percent'), '100');
    const shown = await alice.evaluate((id) => window.bars[id], docId);
    for (let i = 1; i < shown.length; i++) assert.ok(shown[i] >= shown[i - 1], `never backwards: ${shown}`);
    assert.deepEqual(pageErrors, []);
  });

  it("the README's first example posts and shows a message", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(`readme: ${e.message}`));
    await page.goto(`${appUrl}?readme&ws=${encodeURIComponent(stack.wsUrl)}&user=dana`);
    // Its channel is workspace:42; the button works once the channel is joined.
    for (let i = 0; i < 50 && !(await page.locator('p', { hasText: 'dana: hi' }).count()); i++) {
      await page.click('button');
      await page.waitForTimeout(300);
    }
    await page.locator('p', { hasText: 'dana: hi' }).first().waitFor();
    assert.deepEqual(pageErrors, []);
  });

  after(() => {
    if (pageErrors.length) console.error(`page errors:\n${pageErrors.join('\n')}\nstack log:\n${tail(stack.log())}`);
  });
});
