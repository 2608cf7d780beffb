// Refresh and expiry against the real stack (`wsfan dev`, its expiry sweep every half second
// instead of every minute): a client whose token function hands out short-lived tokens stays on
// one connection across their expiries; one that does not refresh is told `token_expired`, closed,
// and connected again with a fresh token.
//
// Needs: `cargo build --workspace --bins` and `npm ci` (the `ws` package).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { connect, tokenExpiry } from '../src/index.js';
import { startStack, tail } from '../../../tests/support/stack.mjs';

let stack = null;

/** A token function: `ttl` seconds for the first token, `then` for the ones after. */
function tokens(sub, ttl, then = ttl) {
  let n = 0;
  const issued = [];
  const fn = async () => {
    const res = await fetch(`${stack.baseUrl}/dev/token?sub=${sub}&ttl=${n++ === 0 ? ttl : then}`);
    if (!res.ok) throw new Error(`GET /dev/token answered ${res.status}`);
    const { token } = await res.json();
    issued.push(token);
    return token;
  };
  return { fn, issued };
}

function until(what, check, timeoutMs = 30_000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const timer = setInterval(() => {
      const v = check();
      if (v) { clearInterval(timer); resolve(v); }
      else if (Date.now() - started > timeoutMs) {
        clearInterval(timer);
        reject(new Error(`${what} within ${timeoutMs} ms; stack log:\n${tail(stack.log())}`));
      }
    }, 50);
  });
}

describe('refresh and expiry on the real stack', () => {
  before(async () => { stack = await startStack(['--schedule-every-ms', '500']); });
  after(async () => { await stack?.stop(); });

  it('stays on one connection across the expiries of its tokens, refreshing each ahead of time', async () => {
    // 8 s: refreshed at half its life, a token leaves 4 s for the fetch and the `auth` before
    // the sweep; 4 s tokens left 1.5 s, too little on a loaded machine.
    const { fn, issued } = tokens('erin', 8);
    const client = connect(stack.wsUrl, { WebSocket, token: fn, refreshAheadMs: 60_000 });
    const dropped = [];
    client.on('offline', (why) => dropped.push(why));
    try {
      await client.join('workspace:refresh');
      const firstExp = tokenExpiry(issued[0]);
      // Three tokens' worth of life: each refreshed at half its life, on the same socket.
      await until('three refreshes', () => issued.length >= 4, 30_000);
      assert.ok(Date.now() > firstExp + 1000, 'past the first token\'s exp');
      const ack = await client.send('workspace:refresh', 'still here');
      assert.equal(ack.type, 'ack');
      assert.deepEqual(dropped, [], 'never offline, never reconnected');
    } finally {
      client.close();
    }
  });

  it('without a refresh, is told token_expired, closed, and connected again with a fresh token', async () => {
    const { fn, issued } = tokens('fred', 3, 3600);
    const client = connect(stack.wsUrl, { WebSocket, token: fn, refresh: false });
    const events = [];
    client.on('error', (e) => events.push([e.code, Date.now()]));
    client.on('connected', () => events.push(['connected', Date.now()]));
    try {
      await client.join('workspace:expiry');
      const exp = tokenExpiry(issued[0]);
      await until('token_expired, then connected again', () => {
        const told = events.findIndex(([e]) => e === 'token_expired');
        return told >= 0 && events.slice(told).some(([e]) => e === 'connected');
      });
      const told = events.find(([e]) => e === 'token_expired')[1];
      const back = events.filter(([e, at]) => e === 'connected' && at >= told)[0][1];
      assert.ok(told >= exp, 'not before exp');
      assert.equal(issued.length, 2, 'a fresh token for the new connection');
      console.log(`told token_expired ${told - exp} ms after exp; connected again ${back - told} ms later`);
      const ack = await client.send('workspace:expiry', 'back');
      assert.equal(ack.type, 'ack');
    } finally {
      client.close();
    }
  });
});
