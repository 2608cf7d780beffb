// wsfan's client: one WebSocket that stays connected, rejoins its channels, recovers what it
// missed while away (in order, each message once), resends unacknowledged sends, and keeps
// document progress moving forward. No dependencies; runs in browsers and in Node (pass a
// WebSocket implementation, e.g. the `ws` package, where there is no global one).
//
// Protocol: README.md ("Recovery") in the wsfan repository. Every message, reaction and read
// receipt carries its channel's sequence number `seq`: gapless and in commit order. The client
// remembers the last `seq` it delivered per channel; a gap (while connected or after a
// reconnect) is filled with `history` `after` that point before anything later is delivered.

/** @typedef {import('./index.d.ts').ClientOptions} ClientOptions */
/** @typedef {import('./index.d.ts').ConnectionState} ConnectionState */

const DEFAULTS = {
  backoffBaseMs: 500,
  backoffMaxMs: 30_000,
  // API Gateway closes a connection after 10 minutes without a frame.
  keepaliveMs: 4 * 60_000,
  pongTimeoutMs: 20_000,
  // API Gateway closes every connection after 2 hours: reconnect first, on our own terms.
  maxConnectionMs: 110 * 60_000,
  answerTimeoutMs: 15_000,
  resendAfterMs: 10_000,
  // Sends awaiting their ack on one connection; the rest wait in the outbox. A cut connection
  // loses what it had not processed, so a small window keeps the resend after a reconnect small.
  maxInFlight: 20,
  historyPageSize: 100,
  // Refresh the token (`auth`) this long before it expires; a short-lived token at half its life.
  refreshAheadMs: 60_000,
};

const CHAT_TYPES = new Set(['message', 'reaction', 'receipt']);
const PROGRESS_TYPES = new Set(['processing_started', 'progress', 'processing_complete']);

function newClientMsgId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

/** Where a progress event is in a document's life; mirrors the server's ProgressEvent::position. */
function progressPosition(ev) {
  const pages = typeof ev.pagesProcessed === 'number' ? ev.pagesProcessed : 0;
  switch (ev.type) {
    case 'processing_started': return [0, pages, 0];
    case 'progress': return [1, pages, 0];
    case 'processing_complete': return [2, pages, 0];
    case 'error': return ev.recoverable ? [1, pages, 1] : [2, pages, 1];
    default: return [-1, 0, 0];
  }
}

function comparePositions(a, b) {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

export const SUBPROTOCOL = 'wsfan.v1';
// RFC 7230 token characters: what a subprotocol may contain. A JWT (base64url and dots) fits.
const SUBPROTOCOL_TOKEN = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;

/**
 * Where the token travels. By default in `Sec-WebSocket-Protocol` (`wsfan.v1, bearer.<token>`),
 * out of the URL that proxies, load balancers and browser tooling record; `tokenIn: 'query'`, or a
 * token a subprotocol cannot carry, puts it in `?token=` as older wsfan stacks expect.
 */
export function handshake(base, token, tokenIn = 'protocol') {
  if (!token) return { url: base, protocols: undefined };
  if (tokenIn !== 'query' && SUBPROTOCOL_TOKEN.test(token)) {
    return { url: base, protocols: [SUBPROTOCOL, `bearer.${token}`] };
  }
  return { url: `${base}${base.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`, protocols: undefined };
}

/**
 * A JWT's `exp` in epoch milliseconds, read without checking it (the server checks); null when
 * the token is no JWT or has no `exp`.
 */
export function tokenExpiry(token) {
  try {
    const payload = String(token).split('.')[1];
    if (!payload) return null;
    const b64 = payload.replace(/-/g, '+').replace(/_/g, '/');
    const json = typeof atob === 'function'
      ? atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4))
      : Buffer.from(b64, 'base64').toString('binary');
    const exp = JSON.parse(json).exp;
    return typeof exp === 'number' ? exp * 1000 : null;
  } catch (_) {
    return null;
  }
}

class Timeout extends Error {
  constructor(what) {
    super(`no answer to ${what}`);
    this.code = 'timeout';
  }
}

class Disconnected extends Error {
  constructor() {
    super('the connection closed before the answer came');
    this.code = 'disconnected';
  }
}

export class WsfanClient {
  /**
   * @param {string} url the WebSocket endpoint, e.g. wss://abc.execute-api.eu-west-1.amazonaws.com/prod
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    this.options = { ...DEFAULTS, ...options };
    // Several frames in one post when many are due at once: fewer posts, the same frames.
    this.url = this.options.batch === false || /[?&]batch=/.test(url) ? url : `${url}${url.includes('?') ? '&' : '?'}batch=1`;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new Error('no WebSocket implementation: pass options.WebSocket');
    /** @type {ConnectionState} */
    this.state = 'offline';
    this.listeners = new Map();
    this.channels = new Map(); // name -> channel state
    this.docs = new Map(); // docId -> { last, done }
    this.outbox = new Map(); // clientMsgId -> { channel, frame, resolve, reject, sentOn, sentAt }, in send order
    this.connectionNo = 0;
    this.waiters = new Map(); // answer key -> [{ resolve, reject, timer }]
    this.socket = null;
    this.attempt = 0;
    this.closed = false;
    this.timers = {};
  }

  // ---------- events ----------

  /** Adds a listener; returns a function that removes it. */
  on(event, listener) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this.listeners.get(event)?.delete(listener);
  }

  emit(event, value) {
    for (const listener of [...(this.listeners.get(event) || [])]) {
      try {
        listener(value);
      } catch (e) {
        if (event !== 'error') this.emit('error', { code: 'listener', message: String(e && e.message || e) });
      }
    }
  }

  setState(state, detail = {}) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', { state, ...detail });
    this.emit(state, detail);
  }

  // ---------- connection ----------

  /** Opens the connection (connect() calls this). */
  async open() {
    if (this.closed || this.socket) return;
    clearTimeout(this.timers.reconnect);
    this.setState('connecting', { attempt: this.attempt });
    let url;
    let protocols;
    try {
      const token = typeof this.options.token === 'function' ? await this.options.token() : this.options.token;
      this.tokenExpiresAt = token ? tokenExpiry(token) : null;
      ({ url, protocols } = handshake(this.url, token, this.options.tokenIn));
    } catch (e) {
      this.emit('error', { code: 'token', message: String(e && e.message || e) });
      this.scheduleReconnect();
      return;
    }
    if (this.closed || this.socket) return;
    let ws;
    try {
      ws = protocols ? new this.WebSocket(url, protocols) : new this.WebSocket(url);
    } catch (e) {
      this.emit('error', { code: 'connect', message: String(e && e.message || e) });
      this.scheduleReconnect();
      return;
    }
    this.socket = ws;
    ws.onopen = () => this.onOpen(ws);
    ws.onmessage = (ev) => this.onFrame(ws, ev.data);
    ws.onclose = (ev) => this.onClose(ws, ev);
    ws.onerror = () => {}; // a close follows
  }

  /** Closes for good: no reconnect; unsent messages are rejected. */
  close() {
    this.closed = true;
    for (const t of Object.values(this.timers)) { clearTimeout(t); clearInterval(t); }
    const ws = this.socket;
    this.detach();
    if (ws) try { ws.close(1000, 'client closed'); } catch (_) { /* already closed */ }
    for (const [id, entry] of this.outbox) {
      this.outbox.delete(id);
      entry.reject(new Error('the client was closed before the message was acknowledged'));
    }
    this.setState('offline', { closed: true });
  }

  /** Drops the socket now, without waiting for a closing handshake, and reconnects. */
  reconnect(reason = 'reconnect') {
    const ws = this.socket;
    if (!ws) return;
    this.detach();
    try { ws.close(1000, reason); } catch (_) { /* already closed */ }
    // A planned reconnect, or one for a fresh token, is not a failure to back off from.
    this.afterClose(reason === 'planned' || reason === 'token_expired' ? 0 : null, { reason });
  }

  detach() {
    const ws = this.socket;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this.socket = null;
  }

  onOpen(ws) {
    if (ws !== this.socket) return;
    this.setState('recovering');
    const o = this.options;
    clearInterval(this.timers.keepalive);
    this.timers.keepalive = setInterval(() => this.ping(), o.keepaliveMs);
    clearTimeout(this.timers.planned);
    this.timers.planned = setTimeout(() => this.reconnect('planned'), o.maxConnectionMs);
    clearInterval(this.timers.resend);
    this.timers.resend = setInterval(() => this.resendStale(), Math.max(1000, Math.floor(o.resendAfterMs / 2)));
    this.lastAckAt = Date.now();
    this.connectionNo += 1;
    this.scheduleRefresh();
    for (const ch of this.channels.values()) this.rejoin(ch);
    for (const [docId, doc] of this.docs) if (!doc.done) this.transmit({ action: 'subscribe', docId });
    this.updateState();
  }

  onClose(ws, ev) {
    if (ws !== this.socket) return;
    this.detach();
    this.afterClose(null, { code: ev && ev.code, reason: ev && ev.reason });
  }

  afterClose(delay, why = {}) {
    for (const t of ['keepalive', 'pong', 'planned', 'resend', 'limited', 'refresh']) { clearTimeout(this.timers[t]); clearInterval(this.timers[t]); }
    this.held = false; // the limit is the connection's; a new one starts unheld
    for (const ch of this.channels.values()) { ch.joined = false; ch.recovering = false; }
    for (const [key, list] of this.waiters) {
      this.waiters.delete(key);
      for (const w of list) { clearTimeout(w.timer); w.reject(new Disconnected()); }
    }
    if (this.closed) return;
    this.setState('offline', why);
    this.scheduleReconnect(delay);
  }

  /** Full-jitter exponential backoff: a random delay up to base * 2^attempt, capped. */
  scheduleReconnect(delay = null) {
    if (this.closed) return;
    const o = this.options;
    const wait = delay ?? Math.floor(Math.random() * Math.min(o.backoffMaxMs, o.backoffBaseMs * 2 ** this.attempt));
    this.attempt += 1;
    clearTimeout(this.timers.reconnect);
    this.emit('reconnecting', { attempt: this.attempt, delay: wait });
    this.timers.reconnect = setTimeout(() => this.open(), wait);
  }

  // ---------- token refresh ----------

  /**
   * Before the token expires, a fresh one from the token function goes to the server (`auth`),
   * so the connection stays open; without a function there is nothing to refresh with, and the
   * server's `token_expired` makes the client reconnect.
   */
  scheduleRefresh() {
    clearTimeout(this.timers.refresh);
    if (this.options.refresh === false || typeof this.options.token !== 'function' || !this.tokenExpiresAt) return;
    const left = this.tokenExpiresAt - Date.now();
    const ahead = Math.min(this.options.refreshAheadMs, Math.max(0, left / 2));
    this.timers.refresh = setTimeout(() => this.refresh(), Math.max(0, left - ahead));
  }

  /** Fetches a fresh token and sends it; resolves with the `authed` answer. */
  async refresh() {
    const ws = this.socket;
    let token;
    try {
      token = await this.options.token();
    } catch (e) {
      this.emit('error', { code: 'token', message: String(e && e.message || e) });
      return null;
    }
    if (ws !== this.socket || !token) return null;
    try {
      const authed = await this.request({ action: 'auth', token }, 'authed');
      this.tokenExpiresAt = typeof authed.exp === 'number' ? authed.exp * 1000 : tokenExpiry(token);
      this.scheduleRefresh();
      return authed;
    } catch (e) {
      // Refused or unanswered: the current token holds until its exp; try once more halfway.
      if (ws === this.socket && this.tokenExpiresAt && this.tokenExpiresAt - Date.now() > 1000) {
        this.timers.refresh = setTimeout(() => this.refresh(), (this.tokenExpiresAt - Date.now()) / 2);
      }
      return null;
    }
  }

  /** The answer to `auth`: channels and documents the new token no longer allows were left. */
  onAuthed(f) {
    for (const name of Array.isArray(f.left) ? f.left : []) {
      if (name.startsWith('doc:')) this.docs.delete(name.slice(4));
      if (!this.channels.delete(name)) continue;
      for (const [id, entry] of this.outbox) {
        if (entry.channel !== name) continue;
        this.outbox.delete(id);
        entry.reject(new Error(`the new token does not allow ${name}; left it`));
      }
      this.emit('left', { channel: name, reason: 'token' });
    }
    this.answer('authed', f);
    this.updateState();
  }

  ping() {
    if (!this.transmit({ action: 'ping' })) return;
    clearTimeout(this.timers.pong);
    // No pong in time: the connection is dead without having said so (a half-open TCP).
    this.timers.pong = setTimeout(() => this.reconnect('no pong'), this.options.pongTimeoutMs);
  }

  transmit(frame) {
    const ws = this.socket;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  /** Sends a request and waits for the answer filed under `key`. */
  request(frame, key) {
    return new Promise((resolve, reject) => {
      if (!this.transmit(frame)) { reject(new Disconnected()); return; }
      const w = { resolve, reject, timer: null };
      w.timer = setTimeout(() => {
        const list = this.waiters.get(key) || [];
        const i = list.indexOf(w);
        if (i >= 0) list.splice(i, 1);
        reject(new Timeout(key));
      }, this.options.answerTimeoutMs);
      if (!this.waiters.has(key)) this.waiters.set(key, []);
      this.waiters.get(key).push(w);
    });
  }

  fail(key, f) {
    const list = this.waiters.get(key);
    const w = list && list.shift();
    if (!w) return;
    if (list.length === 0) this.waiters.delete(key);
    clearTimeout(w.timer);
    const e = new Error(f.message);
    e.code = f.code;
    w.reject(e);
  }

  answer(key, value) {
    const list = this.waiters.get(key);
    const w = list && list.shift();
    if (!w) return false;
    if (list.length === 0) this.waiters.delete(key);
    clearTimeout(w.timer);
    w.resolve(value);
    return true;
  }

  updateState() {
    if (!this.socket || this.socket.readyState !== 1) return;
    const busy = [...this.channels.values()].some((ch) => !ch.joined || ch.recovering);
    if (busy) {
      this.setState('recovering');
    } else {
      this.attempt = 0;
      this.setState('connected');
    }
  }

  // ---------- frames ----------

  onFrame(ws, data) {
    if (ws !== this.socket) return;
    let f;
    try {
      f = JSON.parse(String(data));
    } catch (_) {
      this.emit('error', { code: 'bad_frame', message: String(data).slice(0, 200) });
      return;
    }
    this.onParsed(f);
  }

  onParsed(f) {
    if (!f || typeof f !== 'object') return;
    switch (f.type) {
      // Frames coalesced into one post (?batch=1), in the order they were due.
      case 'batch':
        for (const inner of Array.isArray(f.frames) ? f.frames : []) this.onParsed(inner);
        break;
      // Several users' read cursors moved at once: each entry is a `receipt` without its type.
      case 'receipts':
        for (const r of Array.isArray(f.receipts) ? f.receipts : []) {
          if (r && typeof r === 'object') this.onParsed({ ...r, type: 'receipt', channel: f.channel });
        }
        break;
      case 'joined': this.onJoined(f); break;
      case 'left': this.answer(`left:${f.channel}`, f); break;
      case 'ack': this.onAck(f); break;
      case 'history':
        this.answer(f.complete === undefined ? `page:${f.channel}` : `recover:${f.channel}`, f);
        break;
      case 'subscribed':
        this.answer(`subscribed:${f.docId}`, f);
        if (f.snapshot) this.onProgress(f.snapshot);
        break;
      case 'pong': clearTimeout(this.timers.pong); break;
      case 'authed': this.onAuthed(f); break;
      case 'presence': this.emit('presence', f); break;
      case 'typing': this.emit('typing', f); break;
      case 'error':
        // Progress errors name a document; protocol errors carry a code.
        if (f.docId !== undefined && f.code === undefined) this.onProgress(f);
        else {
          if (f.code === 'rate_limited') this.onRateLimited(f.retryAfterMs);
          // The server closes this connection next: reconnect now, with a fresh token.
          if (f.code === 'token_expired') queueMicrotask(() => this.reconnect('token_expired'));
          // A refused `auth` fails its request now rather than at the answer timeout.
          if (f.code === 'unauthorized' && this.waiters.has('authed')) this.fail('authed', f);
          this.emit('error', { code: f.code, message: f.message, retryAfterMs: f.retryAfterMs });
        }
        break;
      default:
        if (CHAT_TYPES.has(f.type)) this.onChat(f);
        else if (PROGRESS_TYPES.has(f.type)) this.onProgress(f);
        break;
    }
  }

  // ---------- channels ----------

  /**
   * Joins a channel (and rejoins it after every reconnect). Resolves with the first `joined`.
   * `after`: the last `seq` this client saw of the channel (from storage), to recover from there.
   */
  join(channel, { after } = {}) {
    let ch = this.channels.get(channel);
    if (!ch) {
      ch = { name: channel, lastSeq: typeof after === 'number' ? after : null, joined: false, recovering: false, buffer: new Map(), firstJoin: null };
      ch.firstJoin = new Promise((resolve) => { ch.resolveFirstJoin = resolve; });
      this.channels.set(channel, ch);
      this.rejoin(ch);
    }
    return ch.firstJoin;
  }

  /** Leaves a channel: no more rejoins; unsent messages to it are rejected. */
  async leave(channel) {
    if (!this.channels.delete(channel)) return;
    for (const [id, entry] of this.outbox) {
      if (entry.channel !== channel) continue;
      this.outbox.delete(id);
      entry.reject(new Error(`left ${channel} before the message was acknowledged`));
    }
    await this.request({ action: 'leave', channel }, `left:${channel}`).catch(() => {});
    this.updateState();
  }

  /** The last sequence number delivered for a channel (store it to recover after a reload). */
  lastSeq(channel) {
    return this.channels.get(channel)?.lastSeq ?? null;
  }

  rejoin(ch) {
    if (!this.socket || this.socket.readyState !== 1) return;
    this.request({ action: 'join', channel: ch.name }, `joined:${ch.name}`).catch((e) => {
      if (e.code === 'timeout') this.emit('error', { code: 'timeout', message: `joining ${ch.name}: ${e.message}` });
    });
  }

  onJoined(f) {
    this.answer(`joined:${f.channel}`, f);
    const ch = this.channels.get(f.channel);
    if (!ch) return;
    ch.joined = true;
    const head = typeof f.head === 'number' ? f.head : 0;
    this.emit('joined', { channel: f.channel, present: f.present || [], head, reads: f.reads || {} });
    if (ch.resolveFirstJoin) { ch.resolveFirstJoin(f); ch.resolveFirstJoin = null; }
    if (ch.lastSeq === null) {
      // A first join starts from now; what came before is the app's to page through history.
      ch.lastSeq = head;
      this.drain(ch);
    } else if (head < ch.lastSeq) {
      // The channel is behind what we saw: its history was reset. Start again from here.
      this.emit('reset', { channel: ch.name, reason: 'unknown', lastSeq: ch.lastSeq, head });
      ch.lastSeq = head;
      ch.buffer.clear();
    } else if (head > ch.lastSeq) {
      this.recover(ch);
    }
    // Sends that waited for the channel (or whose ack was lost) go out again, same clientMsgId.
    this.pump();
    this.updateState();
  }

  onChat(f) {
    const ch = this.channels.get(f.channel);
    if (!ch) return;
    if (typeof f.seq !== 'number') {
      this.emit(f.type, f); // from a server without sequence numbers: nothing to order by
      return;
    }
    if (ch.lastSeq !== null && f.seq <= ch.lastSeq) return; // seen already (at-least-once delivery)
    if (ch.lastSeq === null || ch.recovering || f.seq !== ch.lastSeq + 1) {
      ch.buffer.set(f.seq, f);
      if (ch.lastSeq !== null && !ch.recovering) this.recover(ch);
      return;
    }
    this.deliver(ch, f);
    this.drain(ch);
  }

  deliver(ch, f) {
    ch.lastSeq = f.seq;
    this.emit(f.type, f);
  }

  drain(ch) {
    for (const seq of [...ch.buffer.keys()]) if (seq <= ch.lastSeq) ch.buffer.delete(seq);
    while (ch.buffer.has(ch.lastSeq + 1)) {
      const f = ch.buffer.get(ch.lastSeq + 1);
      ch.buffer.delete(f.seq);
      this.deliver(ch, f);
    }
  }

  /** Fetches everything after the last delivered `seq`, page by page, oldest first. */
  async recover(ch) {
    if (ch.recovering || !ch.joined) return;
    ch.recovering = true;
    this.updateState();
    let reported = false;
    try {
      for (;;) {
        const page = await this.request(
          { action: 'history', channel: ch.name, after: ch.lastSeq, limit: this.options.historyPageSize },
          `recover:${ch.name}`,
        );
        if (this.channels.get(ch.name) !== ch) return;
        if (page.complete === false && !reported) {
          // Part of what we missed is past the retention (or the point is unknown): the app
          // should reload the channel. What is still there is delivered below, in order.
          reported = true;
          this.emit('reset', { channel: ch.name, reason: 'expired', lastSeq: ch.lastSeq });
        }
        for (const m of page.messages || []) {
          if (typeof m.seq === 'number' && m.seq > ch.lastSeq) this.deliver(ch, m);
        }
        if (typeof page.after !== 'number') break;
      }
    } catch (e) {
      // The socket went away (the next connection recovers again) or no answer came.
      if (e.code === 'timeout') this.reconnect('recovery timed out');
      return;
    } finally {
      ch.recovering = false;
    }
    this.drain(ch);
    // Something newer than what history had is still waiting behind a gap: fetch again.
    if (ch.buffer.size > 0) this.recover(ch);
    this.updateState();
  }

  // ---------- sending ----------

  /**
   * Sends a chat message. Sent now if connected, else after the next (re)join; resent with the
   * same clientMsgId until acknowledged, so it is stored once. Resolves with the ack.
   */
  send(channel, body, { clientMsgId } = {}) {
    if (!this.channels.has(channel)) return Promise.reject(new Error(`join ${channel} before sending to it`));
    const id = clientMsgId || newClientMsgId();
    const existing = this.outbox.get(id);
    if (existing) return existing.promise;
    const entry = { channel, frame: { action: 'sendMessage', channel, body, clientMsgId: id }, sentOn: 0, sentAt: 0 };
    entry.promise = new Promise((resolve, reject) => { entry.resolve = resolve; entry.reject = reject; });
    this.outbox.set(id, entry);
    this.pump();
    return entry.promise;
  }

  /**
   * A frame went over the connection's limit and was not processed. The answer does not say which
   * one, so nothing new goes out until `retryAfterMs` has passed, and then every send still in
   * flight goes again: with the same clientMsgId, the server keeps each message once.
   */
  onRateLimited(retryAfterMs) {
    const wait = Math.max(0, Number(retryAfterMs) || 0);
    const now = performance.now(); // monotonic: only used to keep a later answer from shortening the hold
    this.heldUntil = Math.max(this.held ? this.heldUntil : 0, now + wait);
    this.held = true;
    clearTimeout(this.timers.limited);
    // The timer alone ends the hold. Compared with Date.now(), a timer that fires a millisecond
    // early (timers and Date.now() round differently) or a wall clock stepped back left the sends
    // held with nothing left to release them.
    this.timers.limited = setTimeout(() => {
      this.held = false;
      for (const entry of this.outbox.values()) if (entry.sentOn === this.connectionNo) entry.sentOn = 0;
      this.pump();
    }, this.heldUntil - now);
  }

  /**
   * Sends from the outbox, oldest first: one send per channel awaiting an ack on this connection,
   * and up to maxInFlight across channels. API Gateway runs a connection's frames at once and does
   * not keep their order, so a second send to the same channel waits for the first one's ack:
   * that is what makes a channel store someone's messages in the order they were sent.
   */
  pump() {
    if (!this.socket || this.socket.readyState !== 1) return;
    if (this.held) return;
    let inFlight = 0;
    // Channels with an older send in flight or held back: their later sends wait behind it.
    const waiting = new Set();
    for (const entry of this.outbox.values()) {
      if (entry.sentOn !== this.connectionNo) continue;
      inFlight += 1;
      waiting.add(entry.channel);
    }
    for (const entry of this.outbox.values()) {
      if (inFlight >= this.options.maxInFlight) break;
      if (waiting.has(entry.channel)) continue;
      waiting.add(entry.channel);
      if (!this.channels.get(entry.channel)?.joined) continue;
      if (!this.transmit(entry.frame)) break;
      entry.sentOn = this.connectionNo;
      entry.sentAt = Date.now();
      inFlight += 1;
    }
  }

  /** Unacknowledged sends still in the outbox. */
  pending() {
    return [...this.outbox.values()].map((e) => ({ ...e.frame }));
  }

  /**
   * A send whose answer never came on a connection that stays up (an `internal` error frame, a
   * lost route response). Only when no ack at all came for a while: acks still arriving mean the
   * server is working through a queue, and resending then would only lengthen it.
   */
  resendStale() {
    const now = Date.now();
    if (now - (this.lastAckAt || 0) < this.options.resendAfterMs) return;
    for (const entry of this.outbox.values()) {
      if (entry.sentOn === this.connectionNo && now - entry.sentAt >= this.options.resendAfterMs) entry.sentOn = 0;
    }
    this.pump();
  }

  onAck(f) {
    this.lastAckAt = Date.now();
    if (f.action === 'sendMessage' && f.clientMsgId) {
      const entry = this.outbox.get(f.clientMsgId);
      if (entry) {
        this.outbox.delete(f.clientMsgId);
        entry.resolve(f);
        this.pump();
      }
      return;
    }
    this.answer(`ack:${f.action}:${f.channel}`, f);
  }

  react(channel, messageId, emoji) {
    return this.request({ action: 'react', channel, messageId, emoji }, `ack:react:${channel}`);
  }

  /** Moves your read cursor to this message; pass its `seq` (from the message frame). */
  read(channel, messageId, seq) {
    const frame = { action: 'read', channel, messageId };
    if (typeof seq === 'number') frame.seq = seq;
    return this.request(frame, `ack:read:${channel}`);
  }

  /** Typing is fire-and-forget: dropped when not connected. */
  typing(channel) {
    return this.transmit({ action: 'typing', channel });
  }

  /** A page of history: the newest without `before`, older pages with the answer's `before`. */
  history(channel, { before, limit } = {}) {
    const frame = { action: 'history', channel };
    if (before !== undefined && before !== null) frame.before = before;
    if (limit !== undefined) frame.limit = limit;
    return this.request(frame, `page:${channel}`);
  }

  // ---------- documents ----------

  /**
   * Follows a document's progress; resubscribed after every reconnect, whose snapshot catches
   * the bar up. `progress` events only ever move forward. Returns a function that stops.
   */
  subscribe(docId) {
    if (!this.docs.has(docId)) {
      this.docs.set(docId, { last: null, done: false });
      this.transmit({ action: 'subscribe', docId });
    }
    return () => {
      if (this.docs.delete(docId)) this.transmit({ action: 'leave', channel: `doc:${docId}` });
    };
  }

  onProgress(ev) {
    const doc = this.docs.get(ev.docId);
    if (!doc || doc.done) return;
    const position = progressPosition(ev);
    // Late, duplicate or replayed (a snapshot we already passed): never move backwards.
    if (doc.last && comparePositions(position, doc.last) <= 0) return;
    doc.last = position;
    if (position[0] === 2) doc.done = true;
    this.emit('progress', ev);
  }
}

/**
 * Connects to a wsfan WebSocket endpoint and stays connected.
 * @param {string} url
 * @param {ClientOptions} [options]
 */
export function connect(url, options = {}) {
  const client = new WsfanClient(url, options);
  client.open();
  return client;
}
