// The client against the real stack (`wsfan dev`: the gateway, the real Lambda binaries, moto):
// a receiver whose socket is cut again and again, in each of the three ways a socket dies on API
// Gateway, still ends with every message exactly once and in order.
//
// Needs: `cargo build --workspace --bins` and `npm ci` (the `ws` package: Node 20 has no
// WebSocket of its own). Run: node --test clients/js/test/*.test.mjs

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import WebSocket from 'ws';
import { connect } from '../src/index.js';
import { startStack, tail, WSFAN, REPO } from '../../../tests/support/stack.mjs';
import { connectionsOf, deleteConnection, progressSnapshot } from '../../../tests/support/aws.mjs';

const MESSAGES = 500;
const SEND_EVERY_MS = 40; // 500 messages over 20 s
const MAX_CONNECTION_SECS = 4; // the gateway's maximum connection time, shortened
const CUT_AFTER_MS = 1_500; // how long the receiver stays connected before the cutter strikes
const OTHER_SENDS = 25;
const SETTLE_TIMEOUT_MS = 300_000;
const QUIET_MS = 20_000;

let stack = null;

async function tokenFor(sub) {
  const res = await fetch(`${stack.baseUrl}/dev/token?sub=${encodeURIComponent(sub)}`);
  if (!res.ok) throw new Error(`GET /dev/token answered ${res.status}`);
  return (await res.json()).token;
}

/** A TCP proxy in front of the gateway that can reset its connections: RST, no close frame. */
async function startProxy(target) {
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    const pair = { client, upstream };
    pairs.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      s.on('error', end);
      s.on('close', end);
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    /** Resets every proxied connection at once, both ways; returns how many. */
    reset() {
      const n = pairs.size;
      for (const { client, upstream } of [...pairs]) {
        client.resetAndDestroy();
        upstream.resetAndDestroy();
      }
      pairs.clear();
      return n;
    },
    close: () => new Promise((resolve) => {
      for (const { client, upstream } of pairs) { client.destroy(); upstream.destroy(); }
      server.close(resolve);
    }),
  };
}

/** A second writer in its own process: the CLI's publisher runs the same Store::post as ws-message. */
function publishFromAnotherProcess(channel, body, clientMsgId) {
  return new Promise((resolve, reject) => {
    const child = spawn(WSFAN, ['publish', 'message', '--endpoint-url', stack.env.moto, '--table', stack.env.table,
      '--channel', channel, '--body', body, '--sender', 'other', '--client-msg-id', clientMsgId], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_REGION: 'us-east-1' },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => { out += c; });
    child.stderr.on('data', (c) => { err += c; });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`publish failed (${code}): ${err}`))));
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what, condition, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe('the JS client against wsfan dev', { timeout: 900_000 }, () => {
  const clients = [];
  let proxy = null;

  before(async () => {
    stack = await startStack(['--max-connection-secs', String(MAX_CONNECTION_SECS)]);
  }, { timeout: 150_000 });

  after(async () => {
    for (const c of clients) c.close();
    if (proxy) await proxy.close();
    if (stack) await stack.stop();
  });

  it('a receiver cut off again and again ends with every message once, in send order', async () => {
    const channel = `workspace:recovery-${Date.now().toString(36)}`;
    const options = (sub) => ({ token: () => tokenFor(sub), WebSocket, backoffBaseMs: 100, backoffMaxMs: 1000 });
    const gateway = new URL(stack.wsUrl);
    proxy = await startProxy(gateway);
    const receiverUrl = `ws://127.0.0.1:${proxy.port}${gateway.pathname}`;

    const receiver = connect(receiverUrl, options('receiver'));
    clients.push(receiver);
    const received = [];
    const cuts = { delete: 0, maxConnection: 0, reset: 0, other: [] };
    const errors = [];
    let resets = 0;
    let lastArrival = Date.now();
    receiver.on('message', (m) => { received.push(m); lastArrival = Date.now(); });
    receiver.on('reset', () => { resets += 1; });
    receiver.on('error', (e) => errors.push(e));
    receiver.on('offline', ({ code, reason }) => {
      if (code === 1000 && /@connections/.test(reason)) cuts.delete += 1;
      else if (code === 1001 && /maximum connection/.test(reason)) cuts.maxConnection += 1;
      else if (code === 1006) cuts.reset += 1;
      else cuts.other.push(`${code} ${reason}`);
    });
    await receiver.join(channel);

    const sender = connect(stack.wsUrl, options('sender'));
    clients.push(sender);
    let senderCuts = 0; // the maximum connection time cuts the sender too: its outbox resends
    sender.on('offline', () => { senderCuts += 1; });
    await sender.join(channel);

    // The cutter: while messages flow, alternately delete the receiver's connection through
    // @connections and reset its TCP connection; the gateway's maximum connection time cuts too.
    let sending = true;
    let deleted = 0;
    let reset = 0;
    const cutter = (async () => {
      const connected = () => until('the receiver to reconnect', () => !sending || receiver.state === 'connected', 60_000);
      // One round: an @connections DELETE, a TCP reset, then the maximum connection time.
      while (sending) {
        await connected();
        await sleep(CUT_AFTER_MS);
        if (!sending) break;
        const [id] = await connectionsOf(stack.env, channel, 'receiver');
        if (id && (await deleteConnection(stack.baseUrl, gateway.pathname.slice(1), id)) === 204) deleted += 1;
        await connected();
        await sleep(CUT_AFTER_MS);
        if (!sending) break;
        reset += proxy.reset();
        await connected();
        const expired = cuts.maxConnection;
        await until('the maximum connection time to cut', () => !sending || cuts.maxConnection > expired, 60_000);
      }
    })();

    // A second writer in another process, interleaving with the first.
    const others = (async () => {
      const acks = [];
      for (let i = 0; i < OTHER_SENDS; i++) {
        acks.push(await publishFromAnotherProcess(channel, `other ${i}`, `o-${i}`));
        await sleep(300);
      }
      return acks;
    })();

    let acked = 0;
    const progress = setInterval(() => {
      console.log(`sent ${acks.length} acked ${acked} pending ${sender.pending().length} sender ${sender.state} ` +
        `receiver ${receiver.state} has ${received.length} (seq ${receiver.lastSeq(channel)}) cuts ${JSON.stringify(cuts)}`);
    }, 10_000);
    const acks = [];
    for (let i = 0; i < MESSAGES; i++) {
      acks.push(sender.send(channel, `m ${i}`, { clientMsgId: `s-${i}` }).then((a) => { acked += 1; return a; }));
      await sleep(SEND_EVERY_MS);
    }
    const senderAcks = await Promise.all(acks);
    const otherAcks = await others;
    sending = false;
    await cutter;

    const total = MESSAGES + OTHER_SENDS;
    // Caught up, or nothing new for a while (then the counts below say what is missing).
    await until(`the receiver to catch up to ${total}`, () => (receiver.lastSeq(channel) === total &&
      receiver.state === 'connected') || Date.now() - lastArrival > QUIET_MS, SETTLE_TIMEOUT_MS)
      .catch((e) => { throw new Error(`${e.message} (has ${received.length})\nstack log:\n${tail(stack.log())}`); });
    await sleep(500); // let any late duplicate push land before counting
    clearInterval(progress);

    const ids = received.map((m) => m.messageId);
    assert.equal(new Set(ids).size, ids.length, 'no message twice');
    assert.equal(received.length, total, `every message (cuts: ${JSON.stringify(cuts)})`);
    assert.deepEqual(received.map((m) => m.seq), Array.from({ length: total }, (_, i) => i + 1), 'in sequence order');
    const mine = received.filter((m) => m.senderId === 'sender').map((m) => m.body);
    assert.deepEqual(mine, Array.from({ length: MESSAGES }, (_, i) => `m ${i}`), 'in send order');
    const theirs = received.filter((m) => m.senderId === 'other').map((m) => m.body);
    assert.deepEqual(theirs, Array.from({ length: OTHER_SENDS }, (_, i) => `other ${i}`));
    assert.equal(resets, 0, 'recovery was exact every time');
    assert.deepEqual(errors, []);
    const seqs = [...senderAcks, ...otherAcks].map((a) => a.seq).sort((a, b) => a - b);
    assert.deepEqual(seqs, Array.from({ length: total }, (_, i) => i + 1), 'every message took one number');

    const report = { ...cuts, deleted, tcpResets: reset, senderCuts, duplicateAcks: senderAcks.filter((a) => a.duplicate).length };
    console.log(`cuts: ${JSON.stringify(report)}`);
    assert.ok(cuts.delete >= 1, `an @connections DELETE cut the receiver: ${JSON.stringify(report)}`);
    assert.ok(cuts.maxConnection >= 1, `the maximum connection time cut the receiver: ${JSON.stringify(report)}`);
    assert.ok(cuts.reset >= 1, `a TCP reset cut the receiver: ${JSON.stringify(report)}`);
    assert.ok(cuts.delete + cuts.maxConnection + cuts.reset >= 5, `at least 5 cuts: ${JSON.stringify(report)}`);
    assert.deepEqual(cuts.other, []);
  });

  it("a document's progress survives a reconnect: the snapshot catches the bar up, never back", async () => {
    let hold = null; // while set, reconnects wait at their token
    const watcher = connect(stack.wsUrl, {
      token: async () => { if (hold) await hold; return tokenFor('watcher'); },
      WebSocket, backoffBaseMs: 50, backoffMaxMs: 200,
    });
    clients.push(watcher);
    await until('the watcher to connect', () => watcher.state === 'connected', 30_000);
    let docId = null;
    let events = [];
    watcher.on('progress', (e) => { if (e.docId === docId) events.push(e); });
    // The cut must come while the document still has events to send. Should all 12 have come
    // before it (a slow moment can hold them back and then deliver them at once), a new
    // document is tried, up to three times.
    let seenBefore = 12;
    for (let attempt = 0; attempt < 3 && seenBefore >= 12; attempt++) {
      const res = await fetch(`${stack.baseUrl}/dev/docs`, { method: 'POST' });
      ({ docId } = await res.json());
      events = [];
      watcher.subscribe(docId);
      await until('the first progress event', () => events.some((e) => e.type === 'progress'), 30_000);

      // Cut from the server side, and stay away until the document is done.
      let release;
      hold = new Promise((resolve) => { release = resolve; });
      const [id] = await connectionsOf(stack.env, `doc:${docId}`, 'watcher');
      assert.equal(await deleteConnection(stack.baseUrl, new URL(stack.wsUrl).pathname.slice(1), id), 204);
      await until('the watcher to notice', () => watcher.state !== 'connected', 30_000);
      for (let snapshot = null; snapshot !== 'processing_complete';) {
        snapshot = await progressSnapshot(stack.env, docId);
        await sleep(100);
      }
      seenBefore = events.length;
      hold = null;
      release();

      await until('the bar to complete', () => events.at(-1)?.type === 'processing_complete', 30_000);
      await sleep(300); // anything late or replayed would land now
      assert.equal(events.at(-1).type, 'processing_complete', 'complete, not frozen');
    }
    assert.ok(seenBefore < 12, `some events were missed while away (${seenBefore} of 12 seen)`);
    // started < progress by pages < complete: each event strictly further than the one before.
    const phase = { processing_started: 0, progress: 1, processing_complete: 2 };
    const rank = (e) => phase[e.type] * 1000 + (e.pagesProcessed ?? 0);
    for (let i = 1; i < events.length; i++) {
      assert.ok(rank(events[i]) > rank(events[i - 1]), `never backwards or repeated: ${JSON.stringify(events)}`);
    }
  });
});
