// React bindings for wsfan, on top of @wsfan/client: one connection per provider, shared by
// every hook below it. The client orders, deduplicates and recovers; these hooks keep what it
// delivers as React state, shared per channel and per document, so two components showing the
// same channel join it once and see the same list.

import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from 'react';
import {
  connect,
  type Ack,
  type ChatMessage,
  type ClientOptions,
  type ConnectionState,
  type HistoryPage,
  type Progress,
  type WsfanClient,
} from '@wsfan/client';

export type { Ack, ChatMessage, ClientOptions, ConnectionState, Progress, WsfanClient };

/** How long someone shows as typing after their last typing event (the client sends one every few seconds while typing). */
export const TYPING_SHOWN_MS = 5_000;
/** How often `notifyTyping` actually sends, however often it is called. */
export const TYPING_SEND_EVERY_MS = 2_500;

// ------------------------------------------------------------------ shared stores

type Listener = () => void;

/** A value components read with useSyncExternalStore: replaced, never mutated, on change. */
class Store<T> {
  private listeners = new Set<Listener>();
  constructor(public value: T) {}
  set(value: T): void {
    this.value = value;
    for (const l of [...this.listeners]) l();
  }
  subscribe = (listener: Listener): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };
  get = (): T => this.value;
}

export interface ChannelView {
  /** Chat messages, oldest first, each once: the recent history, then what arrives. */
  messages: ChatMessage[];
  /** Users in the channel now. */
  present: string[];
  /** Users typing now. */
  typing: string[];
  /** Joined on the current connection (false while offline or rejoining). */
  joined: boolean;
  /** Set when recovery could not be exact and the list was reloaded from history. */
  resets: number;
}

const EMPTY_CHANNEL: ChannelView = { messages: [], present: [], typing: [], joined: false, resets: 0 };

interface ChannelEntry {
  refs: number;
  store: Store<ChannelView>;
  typingTimers: Map<string, ReturnType<typeof setTimeout>>;
  release: ReturnType<typeof setTimeout> | null;
  historyLoaded: boolean;
}

interface DocEntry {
  refs: number;
  store: Store<Progress | null>;
  stop: () => void;
  release: ReturnType<typeof setTimeout> | null;
}

export interface RegistryOptions {
  /** Recent messages fetched when a channel is first shown (1-100, default 50; 0: none). */
  history?: number;
  /** Messages kept per channel; the oldest go first (default 1000). */
  maxMessages?: number;
}

/**
 * What a provider shares: the channels and documents its components show, each joined or
 * subscribed once however many components use it, and left when the last one unmounts. The
 * leave waits a tick, so StrictMode's unmount-and-mount again does not leave and rejoin.
 */
class Registry {
  private channels = new Map<string, ChannelEntry>();
  private docs = new Map<string, DocEntry>();
  private off: Array<() => void> = [];
  readonly state: Store<ConnectionState>;

  constructor(readonly client: WsfanClient, private options: Required<RegistryOptions>) {
    this.state = new Store(client.state);
    const c = client;
    this.off.push(
      c.on('state', ({ state }) => this.state.set(state)),
      c.on('message', (m) => this.update(m.channel, (v) => ({ ...v, messages: this.merge(v.messages, [m]), typing: v.typing.filter((u) => u !== m.senderId) }))),
      c.on('joined', (j) => {
        this.update(j.channel, (v) => ({ ...v, present: [...new Set(j.present)], joined: true }));
        const entry = this.channels.get(j.channel);
        if (entry && !entry.historyLoaded) {
          entry.historyLoaded = true;
          void this.loadHistory(j.channel);
        }
      }),
      c.on('presence', (p) => this.update(p.channel, (v) => {
        const others = v.present.filter((u) => u !== p.userId);
        return { ...v, present: p.state === 'join' ? [...others, p.userId] : others };
      })),
      c.on('typing', (t) => this.onTyping(t.channel, t.senderId)),
      c.on('reset', (r) => {
        // Recovery could not be exact: what is shown may have holes. Reload the recent history.
        this.update(r.channel, (v) => ({ ...v, messages: [], resets: v.resets + 1 }));
        void this.loadHistory(r.channel);
      }),
      c.on('offline', () => {
        for (const [name] of this.channels) this.update(name, (v) => ({ ...v, joined: false }));
      }),
      c.on('progress', (p) => this.docs.get(p.docId)?.store.set(p)),
    );
  }

  dispose(): void {
    for (const off of this.off) off();
    for (const entry of this.channels.values()) {
      for (const t of entry.typingTimers.values()) clearTimeout(t);
      if (entry.release) clearTimeout(entry.release);
    }
    for (const entry of this.docs.values()) if (entry.release) clearTimeout(entry.release);
  }

  // ---- channels

  channel(name: string): Store<ChannelView> {
    return this.channels.get(name)?.store ?? DETACHED;
  }

  acquireChannel(name: string): () => void {
    let entry = this.channels.get(name);
    if (!entry) {
      entry = { refs: 0, store: new Store(EMPTY_CHANNEL), typingTimers: new Map(), release: null, historyLoaded: false };
      this.channels.set(name, entry);
      this.client.join(name).catch(() => { /* rejoined after the next reconnect */ });
    }
    const held = entry;
    return hold(held, () => {
      if (this.channels.get(name) !== held) return;
      this.channels.delete(name);
      for (const t of held.typingTimers.values()) clearTimeout(t);
      void this.client.leave(name);
    });
  }

  private update(name: string, change: (v: ChannelView) => ChannelView): void {
    const entry = this.channels.get(name);
    if (entry) entry.store.set(change(entry.store.value));
  }

  /**
   * Adds messages to a list: each messageId once, in seq order, at most maxMessages. A message
   * without a seq (a backend's item written to the table directly: pushed live, never in
   * history) goes where it arrived.
   */
  private merge(list: ChatMessage[], more: ChatMessage[]): ChatMessage[] {
    const fresh = more.filter((m) => m.type === 'message' && !list.some((x) => x.messageId === m.messageId));
    if (fresh.length === 0) return list;
    const numbered = (m: ChatMessage) => typeof m.seq === 'number';
    const lastSeq = list.reduce((n, m) => (numbered(m) ? Math.max(n, m.seq as number) : n), 0);
    let merged: ChatMessage[];
    if (fresh.every((m) => !numbered(m) || (m.seq as number) > lastSeq)) {
      merged = [...list, ...fresh]; // the usual case: live, newer than everything shown
    } else {
      // History that arrived after live messages: put each numbered message in seq order; an
      // unnumbered one stays after the numbered message it followed.
      const all = [...list, ...fresh];
      let key = 0;
      const keyed = all.map((m) => ({ m, key: numbered(m) ? (key = m.seq as number) : key + 0.5 }));
      merged = keyed.sort((a, b) => a.key - b.key).map((k) => k.m);
    }
    return merged.length > this.options.maxMessages ? merged.slice(-this.options.maxMessages) : merged;
  }

  private async loadHistory(name: string): Promise<void> {
    if (this.options.history <= 0) return;
    let page: HistoryPage;
    try {
      page = await this.client.history(name, { limit: this.options.history });
    } catch {
      const entry = this.channels.get(name);
      if (entry) entry.historyLoaded = false; // try again on the next join
      return;
    }
    const messages = page.messages.filter((m): m is ChatMessage => m.type === 'message');
    this.update(name, (v) => ({ ...v, messages: this.merge(v.messages, messages) }));
  }

  private onTyping(name: string, user: string): void {
    const entry = this.channels.get(name);
    if (!entry) return;
    const old = entry.typingTimers.get(user);
    if (old) clearTimeout(old);
    entry.typingTimers.set(user, setTimeout(() => {
      entry.typingTimers.delete(user);
      this.update(name, (v) => ({ ...v, typing: v.typing.filter((u) => u !== user) }));
    }, TYPING_SHOWN_MS));
    this.update(name, (v) => (v.typing.includes(user) ? v : { ...v, typing: [...v.typing, user] }));
  }

  // ---- documents

  doc(docId: string): Store<Progress | null> {
    return this.docs.get(docId)?.store ?? NO_PROGRESS;
  }

  acquireDoc(docId: string): () => void {
    let entry = this.docs.get(docId);
    if (!entry) {
      entry = { refs: 0, store: new Store<Progress | null>(null), stop: () => {}, release: null };
      this.docs.set(docId, entry);
      entry.stop = this.client.subscribe(docId);
    }
    const held = entry;
    return hold(held, () => {
      if (this.docs.get(docId) !== held) return;
      this.docs.delete(docId);
      held.stop();
    });
  }
}

/**
 * Counts one more holder of `entry`; the function it returns lets go (once). When the last holder
 * lets go, `drop` runs a tick later, unless someone took the entry again meanwhile: StrictMode's
 * unmount-and-mount again, or a component replaced by another showing the same channel.
 */
function hold(entry: { refs: number; release: ReturnType<typeof setTimeout> | null }, drop: () => void): () => void {
  if (entry.release) { clearTimeout(entry.release); entry.release = null; }
  entry.refs += 1;
  let released = false;
  return () => {
    if (released) return;
    released = true;
    entry.refs -= 1;
    if (entry.refs > 0) return;
    entry.release = setTimeout(() => {
      entry.release = null;
      if (entry.refs === 0) drop();
    }, 0);
  };
}

const DETACHED = new Store<ChannelView>(EMPTY_CHANNEL);
const NO_PROGRESS = new Store<Progress | null>(null);

// ------------------------------------------------------------------ the provider

const Context = createContext<Registry | null>(null);

export interface WsfanProviderProps extends RegistryOptions {
  /** The WebSocket endpoint; a new url is a new connection. */
  url?: string;
  /** For `connect()`; read when the connection is made. Pass `token` as a function to refresh it on every reconnect. */
  options?: ClientOptions;
  /** A client you made and close yourself, instead of `url`. */
  client?: WsfanClient;
  children?: ReactNode;
}

/**
 * Makes one connection (or shares `client`) for every hook below it. Closed when the provider
 * unmounts; StrictMode's unmount-and-mount again keeps the same connection.
 */
export function WsfanProvider(props: WsfanProviderProps) {
  const { url, client: given, history = 50, maxMessages = 1000, children } = props;
  const optionsRef = useRef(props.options);
  optionsRef.current = props.options;
  const held = useRef<{ registry: Registry; owned: boolean; key: unknown; closing: ReturnType<typeof setTimeout> | null } | null>(null);
  const [registry, setRegistry] = useState<Registry | null>(null);

  useEffect(() => {
    const key = given ?? url;
    let h = held.current;
    if (h && h.closing) { clearTimeout(h.closing); h.closing = null; }
    if (!h || h.key !== key) {
      if (h) shut(h);
      if (!given && !url) throw new Error('WsfanProvider needs a url or a client');
      const client = given ?? connect(url as string, optionsRef.current);
      h = { registry: new Registry(client, { history, maxMessages }), owned: !given, key, closing: null };
      held.current = h;
    }
    setRegistry(h.registry);
    const mine = h;
    return () => {
      // A real unmount closes on the next tick; StrictMode's remount comes first and cancels it.
      mine.closing = setTimeout(() => {
        if (held.current === mine) held.current = null;
        shut(mine);
      }, 0);
    };
    // history and maxMessages apply to the connection made with them.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [url, given]);

  return createElement(Context.Provider, { value: registry }, children);
}

function shut(h: { registry: Registry; owned: boolean }): void {
  h.registry.dispose();
  if (h.owned) h.registry.client.close();
}

function useRegistry(): Registry | null {
  return useContext(Context);
}

/** The provider's client (null before its first effect ran): for anything the hooks do not cover. */
export function useWsfanClient(): WsfanClient | null {
  return useRegistry()?.client ?? null;
}

const OFFLINE = new Store<ConnectionState>('offline');

/** connecting, recovering, connected or offline. */
export function useConnectionState(): ConnectionState {
  const store = useRegistry()?.state ?? OFFLINE;
  return useSyncExternalStore(store.subscribe, store.get, store.get);
}

function useChannelView(channel: string | null | undefined): [ChannelView, Registry | null] {
  const registry = useRegistry();
  // Re-read the store after acquiring: the entry (and its store) exists from then on.
  const [, rerender] = useState(0);
  useEffect(() => {
    if (!registry || !channel) return;
    const release = registry.acquireChannel(channel);
    rerender((n) => n + 1);
    return release;
  }, [registry, channel]);
  const store = registry && channel ? registry.channel(channel) : DETACHED;
  return [useSyncExternalStore(store.subscribe, store.get, store.get), registry];
}

export interface UseChannel {
  /** Oldest first, each message once, in the channel's sequence order; recovered after reconnects. */
  messages: ChatMessage[];
  joined: boolean;
  /** Sends now or after the reconnect; resolves with the ack (the message's seq). */
  send: (body: string, options?: { clientMsgId?: string }) => Promise<Ack>;
  /** How many times recovery could not be exact and the list was reloaded. */
  resets: number;
}

/** Joins `channel` while mounted (shared with every other component showing it). */
export function useChannel(channel: string | null | undefined): UseChannel {
  const [view, registry] = useChannelView(channel);
  const send = useCallback((body: string, options?: { clientMsgId?: string }) => {
    if (!registry || !channel) return Promise.reject(new Error('not connected to a wsfan provider yet'));
    return registry.client.send(channel, body, options);
  }, [registry, channel]);
  return { messages: view.messages, joined: view.joined, send, resets: view.resets };
}

/** The users in `channel` now (joins it while mounted). */
export function usePresence(channel: string | null | undefined): string[] {
  return useChannelView(channel)[0].present;
}

export interface UseTyping {
  /** Users typing in the channel now (each shown for TYPING_SHOWN_MS after their last event). */
  typing: string[];
  /** Call on every keystroke: sends a typing event at most every TYPING_SEND_EVERY_MS. */
  notifyTyping: () => void;
}

export function useTyping(channel: string | null | undefined): UseTyping {
  const [view, registry] = useChannelView(channel);
  const lastSent = useRef(0);
  const notifyTyping = useCallback(() => {
    if (!registry || !channel) return;
    const now = Date.now();
    if (now - lastSent.current < TYPING_SEND_EVERY_MS) return;
    if (registry.client.typing(channel)) lastSent.current = now;
  }, [registry, channel]);
  return { typing: view.typing, notifyTyping };
}

export interface DocumentProgress {
  /** The latest event; it only ever moves forward. null before the first. */
  event: Progress | null;
  pagesProcessed: number | null;
  totalPages: number | null;
  /** 0-100, or null while the total is unknown. */
  percent: number | null;
  /** Complete, or failed for good. */
  done: boolean;
  /** The error, recoverable or not, if the latest event is one. */
  error: { code: string; message: string; recoverable: boolean } | null;
}

/** Follows a document's progress while mounted (one subscription, however many components). */
export function useDocumentProgress(docId: string | null | undefined): DocumentProgress {
  const registry = useRegistry();
  const [, rerender] = useState(0);
  useEffect(() => {
    if (!registry || !docId) return;
    const release = registry.acquireDoc(docId);
    rerender((n) => n + 1);
    return release;
  }, [registry, docId]);
  const store = registry && docId ? registry.doc(docId) : NO_PROGRESS;
  const event = useSyncExternalStore(store.subscribe, store.get, store.get);
  return describe(event);
}

function describe(event: Progress | null): DocumentProgress {
  if (!event) return { event, pagesProcessed: null, totalPages: null, percent: null, done: false, error: null };
  const total = event.totalPages ?? null;
  const complete = event.type === 'processing_complete';
  const pages = event.pagesProcessed ?? (complete ? total : null);
  const percent = complete ? 100 : total && pages !== null ? Math.floor((100 * pages) / total) : null;
  const error = event.type === 'error'
    ? { code: event.errorCode ?? '', message: event.message ?? '', recoverable: event.recoverable === true }
    : null;
  return { event, pagesProcessed: pages, totalPages: total, percent, done: complete || (error !== null && !error.recoverable), error };
}
