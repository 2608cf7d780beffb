// A small chat room on @wsfan/react: messages, who is here, who is typing, and a document's
// progress bar. tests/react.test.mjs (clients/react/test) drives it in Chromium; `tsc --noEmit`
// checks it against the packages' types.
//
// The page takes ?ws=<WebSocket url>&user=<name>&channel=<channel>; tokens come from /token?sub=.

import { StrictMode, useEffect, useState, type FormEvent } from 'react';
import { createRoot } from 'react-dom/client';
import {
  WsfanProvider,
  useChannel,
  useConnectionState,
  useDocumentProgress,
  usePresence,
  useTyping,
} from '@wsfan/react';

const params = new URLSearchParams(location.search);
const user = params.get('user') ?? 'guest';
const wsUrl = params.get('ws') ?? `${location.origin.replace(/^http/, 'ws')}/local`;
const room = params.get('channel') ?? 'workspace:react-example';

async function token(): Promise<string> {
  const res = await fetch(`/token?sub=${encodeURIComponent(user)}`);
  if (!res.ok) throw new Error(`GET /token answered ${res.status}`);
  return ((await res.json()) as { token: string }).token;
}

function Messages({ channel }: { channel: string }) {
  const { messages, joined, send } = useChannel(channel);
  const { typing, notifyTyping } = useTyping(channel);
  const [draft, setDraft] = useState('');
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (!draft) return;
    void send(draft);
    setDraft('');
  };
  const others = typing.filter((u) => u !== user);
  return (
    <section id="chat" data-joined={joined}>
      <ol id="messages">
        {messages.map((m) => (
          <li key={m.messageId} className="message" data-seq={m.seq} data-message-id={m.messageId}>
            <b>{m.senderId}</b> {m.body}
          </li>
        ))}
      </ol>
      <p id="typing">{others.length ? `${others.join(', ')} typing…` : ''}</p>
      <form onSubmit={submit}>
        <input id="draft" value={draft} disabled={!joined}
          onChange={(e) => { setDraft(e.target.value); notifyTyping(); }} />
        <button id="send" disabled={!joined}>Send</button>
      </form>
    </section>
  );
}

/** A second component on the same channel: the provider joins it once for both. */
function Count({ channel }: { channel: string }) {
  const { messages } = useChannel(channel);
  return <span id="count">{messages.length}</span>;
}

function Present({ channel }: { channel: string }) {
  const present = usePresence(channel);
  return <ul id="present">{[...present].sort().map((u) => <li key={u} data-user={u}>{u}</li>)}</ul>;
}

function Bar({ docId }: { docId: string }) {
  const { percent, done, error } = useDocumentProgress(docId);
  useEffect(() => {
    // What the bar showed, in order, for the test to check it never went back.
    if (percent !== null) ((window as unknown as { bars: Record<string, number[]> }).bars[docId] ??= []).push(percent);
  }, [docId, percent]);
  return (
    <div className="bar" data-doc={docId} data-percent={percent ?? ''} data-done={done} data-error={error?.code ?? ''}>
      <div style={{ width: `${percent ?? 0}%`, background: error ? 'crimson' : 'seagreen', height: 8 }} />
    </div>
  );
}

function Documents() {
  const [docs, setDocs] = useState<string[]>([]);
  useEffect(() => {
    (window as unknown as { watch: (id: string) => void }).watch = (id) => setDocs((d) => [...d, id]);
  }, []);
  return <section id="docs">{docs.map((d) => <Bar key={d} docId={d} />)}</section>;
}

function Status() {
  return <p id="status" data-state={useConnectionState()}>{useConnectionState()}</p>;
}

function App() {
  const [shown, setShown] = useState(true);
  return (
    <WsfanProvider url={wsUrl} options={{ token }}>
      <Status />
      <button id="toggle" onClick={() => setShown((s) => !s)}>{shown ? 'Leave' : 'Join'}</button>
      {shown && (
        <>
          <Present channel={room} />
          <Messages channel={room} />
          <Count channel={room} />
        </>
      )}
      <Documents />
    </WsfanProvider>
  );
}

(window as unknown as { bars: Record<string, number[]> }).bars = {};
createRoot(document.getElementById('root') as HTMLElement).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
