// Types of the wsfan client (src/index.js).

/** connecting → recovering (rejoining, fetching what was missed) → connected; offline between. */
export type ConnectionState = 'connecting' | 'recovering' | 'connected' | 'offline';

export interface ClientOptions {
  /**
   * The JWT, or a function returning it (or a promise of it), called before every (re)connect
   * and, ahead of the token's `exp`, to refresh the open connection (`auth`).
   */
  token?: string | (() => string | Promise<string>);
  /** Refresh the token this long before its `exp` (default 60 s; a short-lived one at half its life). */
  refreshAheadMs?: number;
  /** false: never refresh; the connection ends at the token's exp and reconnects (default true). */
  refresh?: boolean;
  /**
   * Where the token travels: 'protocol' (default) sends `Sec-WebSocket-Protocol: wsfan.v1,
   * bearer.<token>`, out of the URL; 'query' sends `?token=` (stacks older than wsfan.v1).
   */
  tokenIn?: 'protocol' | 'query';
  /** A WebSocket constructor where there is no global one (Node < 22: the `ws` package). */
  WebSocket?: unknown;
  /** Reconnect delays: full jitter, random(0, min(backoffMaxMs, backoffBaseMs * 2^attempt)). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** A ping this often keeps API Gateway's 10-minute idle timeout away (default 4 minutes). */
  keepaliveMs?: number;
  /** No pong this long after a ping: the connection is dead; reconnect (default 20 s). */
  pongTimeoutMs?: number;
  /** Reconnect on our own terms before API Gateway's 2-hour limit (default 110 minutes). */
  maxConnectionMs?: number;
  /** How long to wait for the answer to a join, history page, reaction (default 15 s). */
  answerTimeoutMs?: number;
  /** Resend an unacknowledged message (same clientMsgId) after this long (default 10 s). */
  resendAfterMs?: number;
  /**
   * Sends awaiting an ack at once, across channels (default 20); later ones wait in the outbox. A
   * channel has one at a time, so that its messages are stored in the order they were sent.
   */
  maxInFlight?: number;
  /** Messages per recovery page (1-100, default 100). */
  historyPageSize?: number;
  /**
   * Ask for several frames in one post when many are due at once (`?batch=1`, default true): the
   * client unpacks them, so listeners see the same frames either way.
   */
  batch?: boolean;
}

interface ChatBase {
  channel: string;
  /** Unique; what at-least-once delivery repeats. */
  messageId: string;
  /**
   * The channel's sequence number: gapless, in commit order. Absent only on an item a backend
   * wrote to the table itself (pushed live, outside the sequence: not in history or recovery).
   */
  seq?: number;
  senderId: string;
  sentAt: number;
}

/** A message's reactions per emoji: how many users (exact), and who (sorted, at most 100 listed). */
export type ReactionSummary = Record<string, { count: number; users: string[] }>;

export interface ChatMessage extends ChatBase {
  type: 'message';
  body: string;
  clientMsgId?: string;
  /** In `history` pages: the message's reactions, when it has any. */
  reactions?: ReactionSummary;
}

/**
 * One user's reaction. `messageId` is the reaction's own id, `targetId` the message's. Reactions
 * take no `seq` (only those stored before they left the sequence have one): each is delivered
 * as it comes, with the message's whole summary after it in `reactions`.
 */
export interface Reaction extends ChatBase {
  type: 'reaction';
  targetId: string;
  emoji: string;
  reactions?: ReactionSummary;
}

/**
 * Someone's read cursor moved: they have read up to `readSeq` (the message `targetId`). No `seq`.
 * A server `receipts` frame (several users' cursors at once) is emitted as one of these each.
 */
export interface Receipt extends ChatBase {
  type: 'receipt';
  targetId: string;
  readSeq?: number;
}

export interface Typing {
  type: 'typing';
  channel: string;
  messageId: string;
  senderId: string;
  sentAt: number;
}

export interface Presence {
  type: 'presence';
  channel: string;
  userId: string;
  state: 'join' | 'leave';
}

export interface Joined {
  channel: string;
  /** Everyone in the channel now (the caller included): replace the list with it. */
  present: string[];
  /** The channel's last sequence number when the join committed. */
  head: number;
  /** Each user's read cursor: user id to the `seq` they have read up to; `receipt` events move them. */
  reads: Record<string, number>;
}

export interface Progress {
  type: 'processing_started' | 'progress' | 'processing_complete' | 'error';
  docId: string;
  pagesProcessed?: number;
  totalPages?: number;
  errorCode?: string;
  message?: string;
  recoverable?: boolean;
}

export interface Ack {
  type: 'ack';
  action: 'sendMessage' | 'react' | 'read';
  channel: string;
  messageId: string;
  clientMsgId?: string;
  seq?: number;
  duplicate: boolean;
}

/** The answer to `auth` (`refresh()`): the connection's identity from now on. */
export interface Authed {
  type: 'authed';
  userId?: string;
  role: 'member' | 'listener' | 'admin';
  /** The channel patterns the new token allows. */
  channels: string[];
  /** The new token's expiry, epoch seconds. */
  exp: number;
  /** Channels left because the new token does not allow them. */
  left: string[];
}

export interface HistoryPage {
  type: 'history';
  channel: string;
  /** Oldest first. */
  messages: Array<ChatMessage | Reaction | Receipt>;
  /** Pass as `before` for the page before this one; absent on the oldest page. */
  before?: number;
}

export interface ClientError {
  code: string;
  message: string;
  /**
   * `rate_limited`: the connection went over its limit of frames per second; the client holds its
   * sends this long, then sends the unacknowledged ones again (same clientMsgId).
   */
  retryAfterMs?: number;
}

/** Recovery could not be exact: messages expired past the retention, or the point is unknown. Reload the channel. */
export interface Reset {
  channel: string;
  reason: 'expired' | 'unknown';
  lastSeq: number | null;
  head?: number;
}

export interface StateChange {
  state: ConnectionState;
  attempt?: number;
  closed?: boolean;
  code?: number;
  reason?: string;
}

export interface Events {
  message: ChatMessage;
  reaction: Reaction;
  receipt: Receipt;
  typing: Typing;
  presence: Presence;
  joined: Joined;
  progress: Progress;
  reset: Reset;
  error: ClientError;
  state: StateChange;
  connecting: { attempt?: number };
  recovering: Record<string, never>;
  connected: Record<string, never>;
  /** Why: the close code and reason (1006: the connection dropped without a close frame). */
  offline: { closed?: boolean; code?: number; reason?: string };
  reconnecting: { attempt: number; delay: number };
  /** A channel left because a refreshed token no longer allows it. */
  left: { channel: string; reason: 'token' };
}

export class WsfanClient {
  constructor(url: string, options?: ClientOptions);
  readonly state: ConnectionState;
  on<E extends keyof Events>(event: E, listener: (value: Events[E]) => void): () => void;
  off<E extends keyof Events>(event: E, listener: (value: Events[E]) => void): void;
  open(): Promise<void>;
  close(): void;
  /** Sends a fresh token from the token function now (`auth`); null when it was refused. */
  refresh(): Promise<Authed | null>;
  /** Drops the connection and reconnects (recovering what it misses meanwhile). */
  reconnect(reason?: string): void;
  /** Joins and keeps rejoining. `after`: a `seq` saved earlier, to recover from there. */
  join(channel: string, options?: { after?: number }): Promise<Joined>;
  leave(channel: string): Promise<void>;
  /** The last `seq` delivered for a channel. */
  lastSeq(channel: string): number | null;
  /** Sent now or after the next reconnect, resent until acknowledged, stored once. */
  send(channel: string, body: string, options?: { clientMsgId?: string }): Promise<Ack>;
  /** Sends not acknowledged yet. */
  pending(): Array<{ action: 'sendMessage'; channel: string; body: string; clientMsgId: string }>;
  react(channel: string, messageId: string, emoji: string): Promise<Ack>;
  /** Moves your read cursor to this message; pass its `seq` (from the message frame). */
  read(channel: string, messageId: string, seq?: number): Promise<Ack>;
  typing(channel: string): boolean;
  history(channel: string, options?: { before?: number; limit?: number }): Promise<HistoryPage>;
  /** Sends one raw protocol frame now; false when not connected. Answers arrive as events. */
  transmit(frame: object): boolean;
  /** Follows a document's progress, which only moves forward; returns a function that stops. */
  subscribe(docId: string): () => void;
}

export function connect(url: string, options?: ClientOptions): WsfanClient;

/** The URL and subprotocols a connection opens with (the token in one of them). */
export function handshake(
  base: string,
  token: string | undefined,
  tokenIn?: 'protocol' | 'query',
): { url: string; protocols: string[] | undefined };
export const SUBPROTOCOL: 'wsfan.v1';

/** A JWT's `exp` in epoch milliseconds, read without verifying it; null for anything else. */
export function tokenExpiry(token: string): number | null;
