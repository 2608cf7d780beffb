// `scripts/bench expiry`: the issue-21 figure for a token that expires without a refresh, with
// the template's own schedule (the sweep every minute; nothing shortened). Clients of the JS
// client, their refresh off, connect with tokens that expire a few seconds later, spread over a
// minute so that their `exp` falls at different points of the sweep's cycle; the run records,
// per client, when the server told it `token_expired` (the sweep's push, just before its close)
// after `exp`, and how long after that it was connected again with a fresh token.
//
// The clients send nothing after joining, so only the sweep can tell them (a frame sent after
// `exp` would be answered `token_expired` at once). Options: --clients N (default 6).

import WebSocket from 'ws';
import { connect, tokenExpiry } from '../clients/js/src/index.js';
import { startStack } from '../tests/support/stack.mjs';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const CLIENTS = arg('clients', 6);
const TTL_SECS = 5;

const stack = await startStack([]);
const results = [];
try {
  const runs = [];
  for (let i = 0; i < CLIENTS; i++) {
    runs.push((async () => {
      // Spread over the sweep's minute.
      await new Promise((r) => setTimeout(r, (i * 60_000) / CLIENTS));
      let n = 0;
      let first = null;
      const token = async () => {
        const ttl = n++ === 0 ? TTL_SECS : 3600;
        const res = await fetch(`${stack.baseUrl}/dev/token?sub=expiry${i}&ttl=${ttl}`);
        const { token: t } = await res.json();
        if (first === null) first = t;
        return t;
      };
      const client = connect(stack.wsUrl, { WebSocket, token, refresh: false });
      await client.join(`workspace:expiry${i}`);
      const exp = tokenExpiry(first);
      const told = await new Promise((resolve) => client.on('error', (e) => e.code === 'token_expired' && resolve(Date.now())));
      const back = await new Promise((resolve) => client.on('connected', () => resolve(Date.now())));
      client.close();
      results.push({ client: i, toldAfterExpMs: told - exp, connectedAgainAfterMs: back - told });
    })());
  }
  await Promise.all(runs);
} finally {
  await stack.stop();
}
results.sort((a, b) => a.client - b.client);
for (const r of results) {
  console.log(`client ${r.client}: token_expired ${(r.toldAfterExpMs / 1000).toFixed(1)} s after exp; connected again ${(r.connectedAgainAfterMs / 1000).toFixed(2)} s later`);
}
const max = (k) => Math.max(...results.map((r) => r[k]));
console.log(`worst: told ${(max('toldAfterExpMs') / 1000).toFixed(1)} s after exp (template: within 60 s), connected again ${(max('connectedAgainAfterMs') / 1000).toFixed(2)} s after that (issue: within 5 s)`);
