// The client's bookkeeping, driven frame by frame through a scripted socket: what it delivers,
// what it asks for, and in which order. (recovery.test.mjs runs it against the real stack.)

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect, handshake, tokenExpiry } from '../src/index.js';

/** A WebSocket whose far end is the test: it records what is sent and is told what arrives. */
class ScriptedSocket {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    ScriptedSocket.all.push(this);
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close() { this.readyState = 3; }
  // The test's side:
  accept() { this.readyState = 1; this.onopen?.(); }
  push(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
  drop(code = 1006) { this.readyState = 3; this.onclose?.({ code, reason: '' }); }
  /** The clientMsgIds of the sendMessage frames sent so far, in order. */
  sends() { return this.sent.filter((f) => f.action === 'sendMessage').map((f) => f.clientMsgId); }
  take(action) {
    const i = this.sent.findIndex((f) => f.action === action);
    assert.ok(i >= 0, `expected a ${action} frame; sent: ${JSON.stringify(this.sent)}`);
    return this.sent.splice(i, 1)[0];
  }
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A JWT-shaped token with this `exp` (the client reads it; only the server verifies). */
function jwt(exp) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: 'alice', exp })}.sig`;
}

async function nextSocket(count) {
  for (let i = 0; i < 200 && ScriptedSocket.all.length < count; i++) await tick();
  assert.equal(ScriptedSocket.all.length, count, 'a new socket');
  return ScriptedSocket.all[count - 1];
}

function chat(seq, extra = {}) {
  return { type: 'message', channel: 'workspace:1', messageId: `m${seq}`, seq, senderId: 'bob', body: `b${seq}`, sentAt: seq, ...extra };
}

async function started(options = {}) {
  ScriptedSocket.all = [];
  const client = connect('ws://test/local', { WebSocket: ScriptedSocket, token: () => 'tok', backoffBaseMs: 1, backoffMaxMs: 2, ...options });
  const socket = await nextSocket(1);
  // The token travels in the subprotocol offer, not the URL; the URL asks for batch frames
  // unless told not to.
  assert.equal(socket.url, options.batch === false ? 'ws://test/local' : 'ws://test/local?batch=1');
  assert.deepEqual(socket.protocols, ['wsfan.v1', 'bearer.tok']);
  socket.accept();
  const delivered = [];
  const resets = [];
  client.on('message', (m) => delivered.push(m.seq));
  client.on('reset', (r) => resets.push(r));
  return { client, socket, delivered, resets };
}

/** A started client that has joined workspace:1, an empty channel. */
async function joinedOne() {
  const run = await started();
  run.client.join('workspace:1');
  run.socket.take('join');
  run.socket.push({ type: 'joined', channel: 'workspace:1', head: 0, present: [] });
  return run;
}

describe('the wsfan client', () => {
  it('puts the token in the subprotocol offer, or in the URL when asked or when it cannot go there', () => {
    const jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig-_';
    assert.deepEqual(handshake('ws://h/s', jwt), { url: 'ws://h/s', protocols: ['wsfan.v1', `bearer.${jwt}`] });
    assert.deepEqual(handshake('ws://h/s?channels=a:1', jwt, 'query'), { url: `ws://h/s?channels=a:1&token=${jwt}`, protocols: undefined });
    // '=' and '/' are not subprotocol characters: such an opaque token goes in the URL.
    assert.deepEqual(handshake('ws://h/s', 'a/b='), { url: 'ws://h/s?token=a%2Fb%3D', protocols: undefined });
    assert.deepEqual(handshake('ws://h/s', ''), { url: 'ws://h/s', protocols: undefined });
  });

  it('delivers each seq once and in order, and fills a gap from history while connected', async () => {
    const { client, socket, delivered } = await started();
    const joined = client.join('workspace:1');
    socket.take('join');
    socket.push({ type: 'joined', channel: 'workspace:1', head: 5, present: ['alice'] });
    await joined;
    socket.push(chat(4)); // before the join point: not ours to deliver
    socket.push(chat(6));
    socket.push(chat(6)); // a fanout retry
    socket.push(chat(8)); // 7 went missing
    assert.deepEqual(delivered, [6]);
    assert.equal(client.state, 'recovering');
    const ask = socket.take('history');
    assert.deepEqual(ask, { action: 'history', channel: 'workspace:1', after: 6, limit: 100 });
    socket.push(chat(9)); // arrives during the recovery: held back
    socket.push({ type: 'history', channel: 'workspace:1', messages: [chat(7), chat(8)], complete: true });
    await tick();
    assert.deepEqual(delivered, [6, 7, 8, 9]);
    socket.push(chat(8));
    assert.deepEqual(delivered, [6, 7, 8, 9]);
    assert.equal(client.state, 'connected');
    client.close();
  });

  it('passes on the read cursors, sends a receipt with its seq, and delivers receipts and reactions as they come', async () => {
    const { client, socket, delivered } = await started();
    const joins = [];
    const receipts = [];
    const reactions = [];
    client.on('joined', (j) => joins.push(j));
    client.on('receipt', (r) => receipts.push(r.readSeq));
    client.on('reaction', (r) => reactions.push(r.reactions));
    const joined = client.join('workspace:1');
    socket.take('join');
    socket.push({ type: 'joined', channel: 'workspace:1', head: 5, present: ['alice'], reads: { alice: 5, bob: 3 } });
    await joined;
    assert.deepEqual(joins[0].reads, { alice: 5, bob: 3 });
    socket.push(chat(6));
    const read = client.read('workspace:1', 'm6', 6);
    assert.deepEqual(socket.take('read'), { action: 'read', channel: 'workspace:1', messageId: 'm6', seq: 6 });
    socket.push({ type: 'ack', action: 'read', channel: 'workspace:1', messageId: 'r1', seq: 6, duplicate: false });
    assert.equal((await read).seq, 6);
    // Neither takes a seq: each is delivered at once, and the channel's sequence goes on.
    socket.push({ type: 'receipt', channel: 'workspace:1', messageId: 'r2', senderId: 'bob', targetId: 'm6', readSeq: 6, sentAt: 1 });
    const summary = { '👍': { count: 1, users: ['bob'] } };
    socket.push({ type: 'reaction', channel: 'workspace:1', messageId: 'x1', senderId: 'bob', targetId: 'm6', emoji: '👍', reactions: summary, sentAt: 1 });
    socket.push(chat(7));
    assert.deepEqual(receipts, [6]);
    assert.deepEqual(reactions, [summary]);
    assert.deepEqual(delivered, [6, 7]);
    assert.equal(client.state, 'connected');
    client.close();
  });

  it('unpacks a batch frame in order, as if its frames had come one by one', async () => {
    const { client, socket, delivered } = await started();
    const presence = [];
    client.on('presence', (p) => presence.push(p.userId));
    const joined = client.join('workspace:1');
    socket.take('join');
    socket.push({ type: 'joined', channel: 'workspace:1', head: 5, present: [] });
    await joined;
    socket.push({
      type: 'batch',
      frames: [chat(6), { type: 'presence', channel: 'workspace:1', userId: 'cat', state: 'join' }, chat(7), chat(7), chat(8)],
    });
    assert.deepEqual(delivered, [6, 7, 8]);
    assert.deepEqual(presence, ['cat']);
    client.close();
  });

  it('delivers each entry of a receipts frame as a receipt event, in order', async () => {
    const { client, socket, delivered } = await started();
    const receipts = [];
    client.on('receipt', (r) => receipts.push([r.type, r.channel, r.senderId, r.readSeq, r.messageId]));
    const joined = client.join('workspace:1');
    socket.take('join');
    socket.push({ type: 'joined', channel: 'workspace:1', head: 5, present: [] });
    await joined;
    const entry = (senderId, readSeq, messageId) => ({ channel: 'workspace:1', messageId, senderId, targetId: 'm5', readSeq, sentAt: 1 });
    socket.push({ type: 'batch', frames: [chat(6), { type: 'receipts', channel: 'workspace:1', receipts: [entry('bob', 5, 'r1'), entry('cat', 6, 'r2')] }] });
    socket.push({ type: 'receipts', channel: 'workspace:1', receipts: [entry('dan', 6, 'r3'), entry('eve', 4, 'r4')] });
    // A channel this client is not in: nothing.
    socket.push({ type: 'receipts', channel: 'workspace:2', receipts: [{ ...entry('fay', 1, 'r5'), channel: 'workspace:2' }] });
    assert.deepEqual(receipts, [
      ['receipt', 'workspace:1', 'bob', 5, 'r1'],
      ['receipt', 'workspace:1', 'cat', 6, 'r2'],
      ['receipt', 'workspace:1', 'dan', 6, 'r3'],
      ['receipt', 'workspace:1', 'eve', 4, 'r4'],
    ]);
    assert.deepEqual(delivered, [6]);
    client.close();
  });

  it('does not ask for batches when told not to', async () => {
    const { client } = await started({ batch: false });
    client.close();
  });

  it('after a reconnect it rejoins, recovers after the last seq page by page, and resends the outbox', async () => {
    const { client, socket, delivered } = await joinedOne();
    socket.push(chat(1));
    const sent = client.send('workspace:1', 'hello', { clientMsgId: 'c-1' });
    assert.equal(socket.take('sendMessage').clientMsgId, 'c-1');
    const states = [];
    client.on('state', ({ state }) => states.push(state));
    socket.drop(1006); // no ack came

    const again = await nextSocket(2);
    again.accept();
    again.take('join');
    again.push({ type: 'joined', channel: 'workspace:1', head: 4, present: ['alice', 'bob'] });
    assert.equal(again.take('sendMessage').clientMsgId, 'c-1', 'the same clientMsgId, so it is stored once');
    assert.equal(again.take('history').after, 1);
    again.push({ type: 'history', channel: 'workspace:1', messages: [chat(2), chat(3)], after: 3, complete: true });
    await tick();
    assert.equal(again.take('history').after, 3);
    again.push({ type: 'history', channel: 'workspace:1', messages: [chat(4, { senderId: 'me', clientMsgId: 'c-1' })], complete: true });
    again.push({ type: 'ack', action: 'sendMessage', channel: 'workspace:1', messageId: 'm4', clientMsgId: 'c-1', seq: 4, duplicate: true });
    assert.equal((await sent).messageId, 'm4');
    await tick();
    assert.deepEqual(delivered, [1, 2, 3, 4]);
    assert.deepEqual(states, ['offline', 'connecting', 'recovering', 'connected']);
    client.close();
  });

  it('reports a recovery that cannot be exact, and still delivers what is left in order', async () => {
    const { client, socket, delivered, resets } = await started();
    client.join('workspace:1', { after: 2 }); // a point saved before a page reload
    socket.take('join');
    socket.push({ type: 'joined', channel: 'workspace:1', head: 7, present: [] });
    assert.equal(socket.take('history').after, 2);
    socket.push({ type: 'history', channel: 'workspace:1', messages: [chat(6), chat(7)], complete: false });
    await tick();
    assert.deepEqual(resets.map((r) => r.reason), ['expired']);
    assert.deepEqual(delivered, [6, 7]);
    client.close();
  });

  it('holds its sends after rate_limited, then sends the unacknowledged ones again with their ids', async () => {
    const { client, socket } = await joinedOne();
    const errors = [];
    client.on('error', (e) => errors.push(e));
    const first = client.send('workspace:1', 'one', { clientMsgId: 'c-1' });
    assert.equal(socket.take('sendMessage').clientMsgId, 'c-1');
    socket.push({ type: 'error', code: 'rate_limited', message: 'slow down', retryAfterMs: 40 });
    assert.deepEqual(errors.map((e) => [e.code, e.retryAfterMs]), [['rate_limited', 40]]);
    const second = client.send('workspace:1', 'two', { clientMsgId: 'c-2' });
    await tick();
    assert.deepEqual(socket.sends(), [], 'nothing goes out during the wait');
    await sleep(60);
    assert.deepEqual(socket.sends(), ['c-1'], 'the limited send again, and the next behind it');
    socket.push({ type: 'ack', action: 'sendMessage', channel: 'workspace:1', messageId: 'm1', clientMsgId: 'c-1', seq: 1, duplicate: false });
    assert.deepEqual(socket.sends(), ['c-1', 'c-2']);
    socket.push({ type: 'ack', action: 'sendMessage', channel: 'workspace:1', messageId: 'm2', clientMsgId: 'c-2', seq: 2, duplicate: false });
    assert.deepEqual([(await first).messageId, (await second).messageId], ['m1', 'm2']);
    client.close();
  });

  it('ends the hold when its timer fires, even if the wall clock reads earlier than the timer', async () => {
    // Timers and Date.now() round differently, and a wall clock can be stepped back: a hold that
    // compared Date.now() with its deadline could find itself early and never send again.
    const { client, socket } = await joinedOne();
    const sent = client.send('workspace:1', 'one', { clientMsgId: 'c-1' });
    socket.take('sendMessage');
    const realNow = Date.now;
    try {
      socket.push({ type: 'error', code: 'rate_limited', message: 'slow down', retryAfterMs: 20 });
      Date.now = () => realNow() - 1000;
      await sleep(60);
    } finally {
      Date.now = realNow;
    }
    assert.deepEqual(socket.sends(), ['c-1']);
    socket.push({ type: 'ack', action: 'sendMessage', channel: 'workspace:1', messageId: 'm1', clientMsgId: 'c-1', seq: 1, duplicate: false });
    assert.equal((await sent).messageId, 'm1');
    client.close();
  });

  it('keeps the longer hold when a second rate_limited asks for less', async () => {
    const { client, socket } = await joinedOne();
    client.send('workspace:1', 'one', { clientMsgId: 'c-1' }).catch(() => {});
    socket.take('sendMessage');
    socket.push({ type: 'error', code: 'rate_limited', message: 'slow down', retryAfterMs: 200 });
    socket.push({ type: 'error', code: 'rate_limited', message: 'slow down', retryAfterMs: 10 });
    await sleep(60);
    assert.deepEqual(socket.sends(), [], 'still held after 60 ms of 200');
    await sleep(200);
    assert.deepEqual(socket.sends(), ['c-1']);
    client.close();
  });

  it('sends one message per channel at a time, in order, and a window across channels', async () => {
    const { client, socket } = await started({ maxInFlight: 2 });
    const channels = ['workspace:1', 'workspace:2', 'workspace:3'];
    for (const c of channels) client.join(c);
    for (const c of channels) assert.equal(socket.take('join').channel, c);
    const acks = [
      client.send('workspace:1', 'a', { clientMsgId: 'a' }),
      client.send('workspace:1', 'b', { clientMsgId: 'b' }),
      client.send('workspace:2', 'c', { clientMsgId: 'c' }),
      client.send('workspace:3', 'd', { clientMsgId: 'd' }),
    ];
    for (const c of channels) socket.push({ type: 'joined', channel: c, head: 0, present: [] });
    // b waits for a's ack (API Gateway does not keep a connection's frames in order); c fills the window.
    assert.deepEqual(socket.sent.map((f) => f.clientMsgId), ['a', 'c']);
    socket.push({ type: 'ack', action: 'sendMessage', channel: 'workspace:1', messageId: 'm1', clientMsgId: 'a', seq: 1, duplicate: false });
    assert.deepEqual(socket.sent.map((f) => f.clientMsgId), ['a', 'c', 'b']);
    socket.push({ type: 'ack', action: 'sendMessage', channel: 'workspace:2', messageId: 'm2', clientMsgId: 'c', seq: 1, duplicate: false });
    assert.deepEqual(socket.sent.map((f) => f.clientMsgId), ['a', 'c', 'b', 'd']);
    client.close();
    const outcomes = await Promise.allSettled(acks);
    assert.deepEqual(outcomes.map((o) => o.status), ['fulfilled', 'rejected', 'fulfilled', 'rejected'], 'close rejects what is unacknowledged');
  });

  it('moves a progress bar only forward, through snapshots and replays', async () => {
    const { client, socket } = await started();
    const seen = [];
    client.on('progress', (e) => seen.push(`${e.type}:${e.pagesProcessed ?? ''}`));
    client.subscribe('d1');
    assert.equal(socket.take('subscribe').docId, 'd1');
    const p = (type, pages) => ({ type, docId: 'd1', pagesProcessed: pages, totalPages: 10 });
    socket.push(p('progress', 4));
    socket.push({ type: 'subscribed', docId: 'd1', snapshot: p('progress', 2) }); // older: ignored
    socket.push(p('progress', 4)); // a redelivery
    socket.push(p('progress', 6));
    socket.drop();
    const again = await nextSocket(2);
    again.accept();
    assert.equal(again.take('subscribe').docId, 'd1', 'resubscribed after the reconnect');
    again.push({ type: 'subscribed', docId: 'd1', snapshot: p('processing_complete', 10) });
    again.push(p('progress', 8)); // late
    assert.deepEqual(seen, ['progress:4', 'progress:6', 'processing_complete:10']);
    client.close();
  });

  it('refreshes its token through the token function ahead of exp, on the same socket, and drops what the new token left', async () => {
    ScriptedSocket.all = [];
    const now = Math.floor(Date.now() / 1000);
    const tokens = [jwt(now + 2), jwt(now + 3600)];
    let calls = 0;
    const client = connect('ws://test/local', {
      WebSocket: ScriptedSocket, token: () => tokens[Math.min(calls++, 1)], backoffBaseMs: 1, backoffMaxMs: 2,
    });
    const socket = await nextSocket(1);
    assert.deepEqual(socket.protocols, ['wsfan.v1', `bearer.${tokens[0]}`]);
    socket.accept();
    const left = [];
    client.on('left', (l) => left.push(l));
    client.join('workspace:1');
    client.join('doc:plan');
    socket.push({ type: 'joined', channel: 'workspace:1', head: 0, present: [] });
    socket.push({ type: 'joined', channel: 'doc:plan', head: 0, present: [] });
    const unsent = client.send('workspace:1', 'hold on');
    // A 2-second token is refreshed at half its life; waiting for the exp would be too late.
    for (let i = 0; i < 300 && !socket.sent.some((f) => f.action === 'auth'); i++) await sleep(10);
    assert.equal(socket.take('auth').token, tokens[1], 'a fresh token from the token function');
    socket.push({ type: 'authed', userId: 'alice', role: 'member', channels: ['doc:*'], exp: now + 3600, left: ['workspace:1'] });
    assert.deepEqual(left, [{ channel: 'workspace:1', reason: 'token' }]);
    await assert.rejects(unsent, /does not allow workspace:1/);
    assert.equal(ScriptedSocket.all.length, 1, 'no reconnect: the connection goes on');
    // After a reconnect only what the new token allows is rejoined.
    socket.drop();
    const again = await nextSocket(2);
    again.accept();
    assert.deepEqual(again.sent.filter((f) => f.action === 'join').map((f) => f.channel), ['doc:plan']);
    client.close();
  });

  it('reconnects at once, with a fresh token, when the server says token_expired', async () => {
    ScriptedSocket.all = [];
    const now = Math.floor(Date.now() / 1000);
    const tokens = [jwt(now + 3600), jwt(now + 7200)];
    let calls = 0;
    // A backoff this long would show: the reconnect for a fresh token does not wait for one.
    const client = connect('ws://test/local', {
      WebSocket: ScriptedSocket, token: () => tokens[Math.min(calls++, 1)], backoffBaseMs: 60_000, backoffMaxMs: 60_000,
    });
    const socket = await nextSocket(1);
    socket.accept();
    const errors = [];
    client.on('error', (e) => errors.push(e.code));
    socket.push({ type: 'error', code: 'token_expired', message: 'the token expired' });
    const again = await nextSocket(2);
    assert.deepEqual(again.protocols, ['wsfan.v1', `bearer.${tokens[1]}`]);
    assert.deepEqual(errors, ['token_expired'], 'the app hears why');
    client.close();
  });

  it('reads a token\'s exp, and nothing from what is no JWT', () => {
    assert.equal(tokenExpiry(jwt(1_900_000_000)), 1_900_000_000_000);
    assert.equal(tokenExpiry('tok'), null);
    assert.equal(tokenExpiry('a.!!!.c'), null);
  });
});

