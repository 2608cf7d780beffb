// The demo page of `wsfan dev`, driven in headless Chromium: two people chat, see each other's
// presence, typing and reactions, and watch document progress bars fill (or fail).
//
// Needs: `cargo build --workspace --bins` (the wsfan binary and the Lambda binaries beside it),
// `npm ci` (playwright-core) and Debian's chromium; scripts/setup installs the last two.
// Run: node --test tests/browser/*.test.mjs   (screenshots and the stack's log land in tests/artifacts/)
// To work on the page without rebuilding wsfan, WSFAN_DEMO_FROM_DISK=1 makes the browser load
// local/demo/index.html from the work tree instead of the copy built into the binary.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { REPO, startStack } from '../support/stack.mjs';
import { connectionsOf, deleteConnection } from '../support/aws.mjs';

const ARTIFACTS = path.join(REPO, 'tests', 'artifacts');
const DEMO_HTML = path.join(REPO, 'local', 'demo', 'index.html');
const FROM_DISK = process.env.WSFAN_DEMO_FROM_DISK === '1';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const READY_TIMEOUT_MS = 120_000;
const STEP_TIMEOUT_MS = 30_000;

let stack = null; // the running `wsfan dev`
let browser = null;
let baseUrl = null;
let messageId = null; // alice's message, reacted to later
const pages = {}; // name -> page
const pageErrors = []; // uncaught errors and console errors of the pages

async function openAs(name) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') pageErrors.push(`${name} console: ${msg.text()}`);
  });
  await page.goto(`${baseUrl}/`);
  // Replaced in place rather than intercepted, so the page keeps its loopback origin (Chromium's
  // local network access checks block a fulfilled page's WebSocket to 127.0.0.1).
  if (FROM_DISK) await page.setContent(readFileSync(DEMO_HTML, 'utf8'));
  await page.fill('#name', name);
  await page.click('#join');
  await page.locator('#status[data-state="online"]').waitFor();
  await page.locator('#message:enabled').waitFor(); // enabled once the channel is joined
  pages[name] = page;
  return page;
}

let screenshotsTaken = false;
async function screenshots() {
  screenshotsTaken = true;
  for (const name of ['alice', 'bob']) {
    if (!pages[name]) continue;
    await pages[name].screenshot({ path: path.join(ARTIFACTS, `demo-${name}.png`), fullPage: true })
      .catch((e) => console.error(`screenshot of ${name} failed: ${e.message}`));
  }
}

const messageWithText = (page, text) => page.locator('.message[data-message-id]', { hasText: text });

describe('wsfan dev demo page', { timeout: 180_000 }, () => {
  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    stack = await startStack();
    baseUrl = stack.baseUrl;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  }, { timeout: READY_TIMEOUT_MS + 30_000 });

  after(async () => {
    try {
      if (!screenshotsTaken) await screenshots(); // what the pages showed when something failed
      if (browser) await browser.close().catch(() => {});
    } finally {
      if (stack) {
        await stack.stop();
        // What the stack logged (the last part), to read when a step failed.
        writeFileSync(path.join(ARTIFACTS, 'wsfan-dev.log'), stack.log());
      }
    }
  });

  it('serves the demo page', async () => {
    const res = await fetch(`${baseUrl}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/html/);
    if (!FROM_DISK) {
      assert.ok((await res.text()) === readFileSync(DEMO_HTML, 'utf8'),
        'the page wsfan serves is not local/demo/index.html: rebuild (cargo build --workspace --bins)');
    }
  });

  it('two people join and see each other', async () => {
    const bob = await openAs('bob');
    const alice = await openAs('alice');
    // Presence is pushed to those already in the channel: bob, who joined first, sees alice.
    await bob.locator('#presence .presence-user[data-user-id="alice"]').waitFor();
    await alice.locator('#presence .presence-user[data-user-id="alice"]').waitFor(); // herself
    // Alice joined after bob: the joined answer's present list shows him at once.
    await alice.locator('#presence .presence-user[data-user-id="bob"]').waitFor();
  });

  it('a message reaches the other person, once for its sender', async () => {
    const { alice, bob } = pages;
    const text = `hello from alice ${Date.now().toString(36)}`;
    await alice.fill('#message', text);
    await alice.click('#send');
    await messageWithText(bob, text).waitFor();
    const id = await messageWithText(bob, text).getAttribute('data-message-id');
    assert.match(id, /^[0-9A-Za-z]+$/);
    await bob.locator(`.message[data-message-id="${id}"] .sender`, { hasText: 'alice' }).waitFor();
    // Alice's own copy: the pending one became the message (ack and push), never two.
    await alice.locator(`.message[data-message-id="${id}"]:not(.pending)`).waitFor();
    await bob.waitForTimeout(300); // let any duplicate push land before counting
    assert.equal(await messageWithText(alice, text).count(), 1);
    assert.equal(await alice.locator('.message', { hasText: text }).count(), 1);
    assert.equal(await messageWithText(bob, text).count(), 1);
    messageId = id;
  });

  it('a reply reaches the first sender', async () => {
    const { alice, bob } = pages;
    await bob.fill('#message', 'hi alice 👋');
    await bob.press('#message', 'Enter');
    await alice.locator('.message[data-message-id][data-sender="bob"]', { hasText: 'hi alice' }).waitFor();
  });

  it('typing shows on the other page, then goes away', async () => {
    const { alice, bob } = pages;
    await bob.locator('#message').pressSequentially('typing…', { delay: 20 });
    await alice.locator('#typing', { hasText: 'bob is typing' }).waitFor();
    await alice.locator('#typing:empty').waitFor({ timeout: 10_000 }); // 3 s after the last one
    await bob.fill('#message', '');
  });

  it('a reaction is counted on the other page', async () => {
    const { alice, bob } = pages;
    const id = messageId;
    await alice.click(`.message[data-message-id="${id}"] .react-btn`);
    await bob.locator(`.message[data-message-id="${id}"] .reaction[data-emoji="👍"][data-count="1"]`).waitFor();
    await alice.locator(`.message[data-message-id="${id}"] .reaction.mine[data-count="1"]`).waitFor();
  });

  it('a latecomer gets the message and its reaction from history', async () => {
    const id = messageId;
    const carol = await openAs('carol');
    await carol.locator(`.message[data-message-id="${id}"] .reaction[data-emoji="👍"][data-count="1"]`).waitFor();
    await carol.context().close();
    delete pages.carol;
    // Carol leaving is pushed as presence to those who saw her join.
    await pages.bob.locator('#presence .presence-user[data-user-id="carol"]').waitFor({ state: 'detached' });
  });

  it('a document fills its progress bar and completes', async () => {
    const { alice } = pages;
    const before = await alice.locator('.doc-progress').count();
    await alice.click('#process-doc');
    await alice.locator('.doc-progress').nth(before).waitFor();
    const bar = alice.locator('.doc-progress').first(); // newest first
    const docId = await bar.getAttribute('data-doc-id');
    assert.ok(docId, 'the bar names its document');
    const done = alice.locator(`.doc-progress[data-doc-id="${docId}"][data-state="complete"][data-percent="100"]`);
    await done.waitFor();
    assert.match(await done.textContent(), /complete/);
  });

  it('a failing document ends in an error', async () => {
    const { alice } = pages;
    const known = new Set(await alice.locator('.doc-progress').evaluateAll((els) => els.map((e) => e.dataset.docId)));
    await alice.click('#process-failing-doc');
    const failed = alice.locator('.doc-progress[data-state="error"]');
    await failed.first().waitFor();
    const docId = await failed.first().getAttribute('data-doc-id');
    assert.ok(!known.has(docId), 'the failed bar is the new document');
    const percent = Number(await failed.first().getAttribute('data-percent'));
    assert.ok(Number.isInteger(percent) && percent >= 0 && percent < 100, `data-percent ${percent}`);
    assert.notEqual((await failed.first().locator('.doc-error').textContent()).trim(), '');
  });

  it('shows a protocol error in the banner, and the socket stays open', async () => {
    const { bob } = pages;
    // A channel that is not <kind>:<id> is bad input: the server answers with an error frame.
    await bob.evaluate(() => window.wsfanDemo.send({ action: 'join', channel: 'not-a-channel' }));
    await bob.locator('#error:visible', { hasText: 'invalid_channel' }).waitFor();
    await bob.click('#error-dismiss');
    await bob.locator('#error').waitFor({ state: 'hidden' });
    assert.equal(await bob.locator('#status').getAttribute('data-state'), 'online');
  });

  it('left no errors on the pages', async () => {
    assert.equal(await pages.alice.locator('#error').isVisible(), false);
    assert.deepEqual(pageErrors, []);
    await screenshots(); // before the paging test fills the channel
  });

  it('"Load older" pages back through history', async () => {
    // 21 more messages: with alice's and bob's, the channel holds 23 (a reaction is its
    // message's summary, not an item of history), so a newcomer's first page (20) leaves alice's
    // message, with its reaction, to the older page.
    const dave = await openAs('dave');
    await dave.evaluate(() => {
      for (let i = 1; i <= 21; i++) {
        window.wsfanDemo.send({ action: 'sendMessage', channel: 'workspace:demo', body: `bulk ${i}`, clientMsgId: `bulk-${i}` });
      }
    });
    await dave.locator('.message[data-message-id][data-sender="dave"]', { hasText: 'bulk 21' }).waitFor();
    await dave.waitForFunction(() => document.querySelectorAll('.message[data-message-id]').length >= 23);
    // The 21 frames run at once, as API Gateway runs a connection's frames, so they commit in any
    // order: the newest is the one with the highest sequence number, not necessarily 'bulk 21'.
    const newest = await dave.locator('.message[data-message-id]').evaluateAll((els) =>
      els.reduce((a, b) => (Number(a.dataset.seq) > Number(b.dataset.seq) ? a : b)).dataset.messageId);
    const erin = await openAs('erin');
    await erin.locator(`.message[data-message-id="${newest}"]`).waitFor();
    assert.equal(await erin.locator('.message[data-message-id]').count(), 20);
    assert.equal(await erin.locator(`.message[data-message-id="${messageId}"]`).count(), 0);
    await erin.click('#load-older');
    await erin.locator(`.message[data-message-id="${messageId}"] .reaction[data-emoji="👍"][data-count="1"]`).waitFor();
    await erin.locator('#load-older').waitFor({ state: 'hidden' }); // that was the oldest page
    assert.equal(await erin.locator('.message[data-message-id]').count(), 23);
    // The messages are in the order they were stored (the channel's sequence), oldest first.
    const seqs = await erin.locator('.message[data-message-id]').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    assert.equal(new Set(seqs).size, 23);
  });

  it('alice cut off from the server gets everything bob sent meanwhile, once, and who is here', async () => {
    const { alice, bob } = pages;
    const frank = await openAs('frank'); // leaves while alice is away
    await alice.locator('#presence .presence-user[data-user-id="frank"]').waitFor();
    // Hold alice's reconnect at its token request until bob has sent everything.
    let release;
    const gate = new Promise((resolve) => { release = resolve; });
    await alice.route('**/dev/token**', async (route) => { await gate; await route.continue(); });

    const [connectionId] = await connectionsOf(stack.env, 'workspace:demo', 'alice');
    assert.ok(connectionId, "alice's connection is in the table");
    assert.equal(await deleteConnection(baseUrl, 'local', connectionId), 204);
    await alice.locator('#status:not([data-state="online"])').waitFor();

    // Meanwhile: more than a page of messages (the latest page alone would miss some), frank
    // leaves and grace arrives.
    const away = Array.from({ length: 25 }, (_, i) => `while alice was away (${i + 1})`);
    await bob.evaluate((bodies) => {
      bodies.forEach((body, i) => window.wsfanDemo.send({ action: 'sendMessage', channel: 'workspace:demo', body, clientMsgId: `away-${i}` }));
    }, away);
    await messageWithText(bob, away[away.length - 1]).waitFor();
    await frank.context().close();
    delete pages.frank;
    await bob.locator('#presence .presence-user[data-user-id="frank"]').waitFor({ state: 'detached' });
    const grace = await openAs('grace');
    await bob.locator('#presence .presence-user[data-user-id="grace"]').waitFor();
    assert.equal(await messageWithText(alice, away[0]).count(), 0, 'alice is really away');

    release(); // the route lets every later token request through too
    await alice.locator('#status[data-state="online"]').waitFor();
    await messageWithText(alice, away[away.length - 1]).waitFor();
    await alice.waitForTimeout(300); // let any duplicate push land before counting
    for (const body of away) {
      assert.equal(await messageWithText(alice, body).count(), 1, body);
    }
    const order = await alice.locator('.message[data-message-id]').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    assert.deepEqual(order, [...order].sort((a, b) => a - b), 'in sequence order');
    const present = await alice.locator('#presence .presence-user').evaluateAll((els) => els.map((e) => e.dataset.userId));
    assert.deepEqual([...present].sort(), ['alice', 'bob', 'dave', 'erin', 'grace']);
    await grace.context().close();
    delete pages.grace;
  });
});
