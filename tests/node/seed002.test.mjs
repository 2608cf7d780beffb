// Seed 002's chat page, unchanged, against `wsfan dev`: it connects with
// `?type=chat&booking_id=…&token=…`, never asks for history, and loads it from the `history`
// frame it is sent. 100 connects in a row, every other one sending at once on open; each must
// get its booking's history, once, in order. Every upgrade is held 300 ms after `$connect`
// returns (`--inject upgrade-delay=300ms`), during which posts to the connection are answered
// 410, as on API Gateway before the handshake is done: the history push races the upgrade on
// every connect, and must still arrive.
//
// Needs: `cargo build --workspace --bins` and `npm ci` (ws). Run: node --test tests/node/*.test.mjs

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import WebSocket from 'ws';
import { startStack, tail, WSFAN, REPO } from '../support/stack.mjs';

const CONNECTS = 100;
const UPGRADE_DELAY = '300ms';
const DEV_SECRET = 'wsfan-local-dev-secret'; // wsfan_local::dev::DEV_SECRET
const BOOKING = `b-${Date.now().toString(36)}`;
const SEEDED = ['Hi, is the room still free?', 'Yes, from the 3rd.', 'Great, booking now.'];

/**
 * The seed's page, as it is: the socket, and what it does with each frame. (Its DOM updates
 * become calls of `show`.)
 */
function seedPage(WS_URL, bookingId, token, show, { sendAtOnce = false } = {}) {
  const ws = new WebSocket(`${WS_URL}?type=chat&booking_id=${bookingId}&token=${token}`);
  ws.onopen = () => {
    if (sendAtOnce) ws.send(JSON.stringify({ action: 'sendMessage', body: 'hello from the page' }));
  };
  ws.onmessage = (event) => {
    const data = JSON.parse(event.data);
    if (data.type === 'history') {
      // Load chat history
      show('history', data.messages);
    } else if (data.type === 'message') {
      show('message', data);
    }
  };
  return ws;
}

describe('seed 002: the chat page gets its booking history on connect', { timeout: 600_000 }, () => {
  let stack = null;
  before(async () => { stack = await startStack(['--inject', `upgrade-delay=${UPGRADE_DELAY}`]); }, { timeout: 150_000 });
  after(async () => { if (stack) await stack.stop(); });

  it(`${CONNECTS} of ${CONNECTS} connects in a row get the history, including those that send at once`, async () => {
    const env = { ...process.env, AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_REGION: 'us-east-1' };
    for (const body of SEEDED) {
      execFileSync(WSFAN, ['publish', 'message', '--endpoint-url', stack.env.moto, '--table', stack.env.table,
        '--channel', `booking:${BOOKING}`, '--body', body, '--sender', 'host'], { cwd: REPO, env });
    }
    const token = execFileSync(WSFAN, ['token', '--sub', 'guest', '--channels', 'booking:*', '--secret', DEV_SECRET],
      { cwd: REPO, encoding: 'utf8' }).trim();

    const missed = [];
    for (let i = 0; i < CONNECTS; i++) {
      const histories = [];
      const ws = seedPage(stack.wsUrl, BOOKING, token, (what, value) => { if (what === 'history') histories.push(value); },
        { sendAtOnce: i % 2 === 1 });
      const deadline = Date.now() + 10_000;
      while (histories.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, histories.length ? 50 : 0)); // a second one would be here by now
      ws.close();
      if (histories.length !== 1) { missed.push(`connect ${i}: ${histories.length} history frames`); continue; }
      const messages = histories[0];
      // The last 50: the seeded three until the pages' own messages push them out of the window.
      assert.ok(messages.length >= SEEDED.length && messages.length <= 50, `connect ${i}: ${messages.length} messages`);
      if (messages[0].seq === 1) {
        assert.deepEqual(messages.slice(0, SEEDED.length).map((m) => m.body), SEEDED, `connect ${i}: the booking's history, oldest first`);
      }
      const seqs = messages.map((m) => m.seq);
      assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `connect ${i}: in order`);
    }
    // The window happened: posts reached connections whose upgrade was held (the summary of
    // injected faults, printed every 5 s, counts them).
    const counts = [...stack.log().matchAll(/upgrade-410=(\d+)/g)].map((m) => Number(m[1]));
    const refused = counts.length ? counts[counts.length - 1] : 0;
    console.log(`seed 002: ${CONNECTS - missed.length} of ${CONNECTS} connects got their history ` +
      `(upgrades held ${UPGRADE_DELAY}; ${refused} posts answered 410 meanwhile)`);
    assert.deepEqual(missed, [], `stack log:\n${tail(stack.log())}`);
    assert.ok(refused > 0, 'no post reached a held upgrade: the test did not make the race happen');
  });
});
