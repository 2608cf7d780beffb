//! A WebSocket client of the stack, as the benchmarks' members are: a dev token, connecting and
//! joining a channel, and a send that waits for its ack.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wsfan_shared::auth::{mint_hs256, Claims};

pub(crate) fn token(sub: &str) -> String {
    let claims = Claims {
        sub: sub.into(),
        exp: wsfan_shared::clock::now_secs() + 6 * 3600,
        nbf: None,
        channels: vec!["workspace:*".into()],
        role: None,
        aud: None,
        iss: None,
    };
    mint_hs256(wsfan_local::dev::DEV_SECRET, &claims)
}

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a socket and joins `channel`, asking for batch frames if `batch`; returns the socket
/// once `joined` came back.
pub(crate) async fn connect_and_join(
    url: &str,
    sub: &str,
    channel: &str,
    batch: bool,
) -> Result<(Socket, Duration), String> {
    connect_and_join_with(url, sub, channel, if batch { "&batch=1" } else { "" }).await
}

/// [`connect_and_join`] with more query parameters on the upgrade (`&batch=1`).
pub(crate) async fn connect_and_join_with(
    url: &str,
    sub: &str,
    channel: &str,
    query: &str,
) -> Result<(Socket, Duration), String> {
    let started = Instant::now();
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{url}?token={}{query}", token(sub)))
        .await
        .map_err(|e| format!("{sub}: connecting: {e}"))?;
    let connected = started.elapsed();
    let join = json!({"action": "join", "channel": channel}).to_string();
    socket
        .send(Message::Text(join.into()))
        .await
        .map_err(|e| format!("{sub}: {e}"))?;
    let answer = next_answer(&mut socket, "joined", Duration::from_secs(60))
        .await
        .map_err(|other| format!("{sub}: waiting for joined: {other}"))?;
    if answer["type"] == "error" {
        return Err(format!("{sub}: join refused: {answer}"));
    }
    Ok((socket, connected))
}

/// Sends `frame` and waits, 30 s at most, for its ack, passing over other frames; the time from
/// the send to the ack. `what` names the send in errors; an `error` answer is one.
pub(crate) async fn send_until_ack(
    sink: &mut futures::stream::SplitSink<Socket, Message>,
    stream: &mut futures::stream::SplitStream<Socket>,
    frame: &Value,
    what: &str,
) -> Result<Duration, String> {
    let sent = Instant::now();
    sink.send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let answer = next_answer(stream, "ack", Duration::from_secs(30))
        .await
        .map_err(|other| format!("{what}: no ack: {other}"))?;
    if answer["type"] == "error" {
        return Err(format!("{what} refused: {answer}"));
    }
    Ok(sent.elapsed())
}

/// The next text frame of type `wanted` or `error`, passing over any other, each within `limit`.
/// Err: what came instead (the stream's end, a read error, or the time running out), for the
/// caller's message.
async fn next_answer<S>(stream: &mut S, wanted: &str, limit: Duration) -> Result<Value, String>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(limit, stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                if frame["type"] == wanted || frame["type"] == "error" {
                    return Ok(frame);
                }
            }
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("{other:?}")),
        }
    }
}
