//! A local API Gateway WebSocket endpoint that behaves as API Gateway does: a REQUEST authorizer
//! and `$connect` before the upgrade, route selection on `$request.body.action` with `$default` as
//! fallback, route responses back to the caller, `$disconnect` on close, the 128 KB message and
//! 32 KB frame limits (close 1009), and the idle and maximum connection times. The subprotocol
//! of the handshake's answer is the one `$connect`'s response headers name, as on API Gateway:
//! a client that offered some and gets none back fails the handshake.

mod handshake;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::connections::Sink;
use crate::logs::{Logs, Outcome};
use crate::runtime::LambdaFunction;

/// API Gateway's limits, shortened in tests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    pub max_connection: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 128 * 1024,
            max_frame_bytes: 32 * 1024,
            idle_timeout: Duration::from_secs(10 * 60),
            max_connection: Duration::from_secs(2 * 3600),
        }
    }
}

pub struct Routes {
    pub authorizer: Option<Arc<LambdaFunction>>,
    /// Route key to function: `$connect`, `$disconnect`, `$default` and the custom actions.
    pub by_key: HashMap<String, Arc<LambdaFunction>>,
}

enum Outgoing {
    Text(String),
    Close(u16, String),
}

/// The open sockets, by connection id; the @connections server delivers through this.
#[derive(Default)]
pub struct Sockets {
    open: Mutex<HashMap<String, mpsc::UnboundedSender<Outgoing>>>,
    /// Connections `$connect` accepted whose upgrade `upgrade-delay` holds.
    upgrading: Mutex<std::collections::HashSet<String>>,
}

impl Sink for Sockets {
    fn send(&self, connection_id: &str, data: Bytes) -> bool {
        let text = String::from_utf8_lossy(&data).into_owned();
        self.open
            .lock()
            .unwrap()
            .get(connection_id)
            .is_some_and(|tx| tx.send(Outgoing::Text(text)).is_ok())
    }

    fn close(&self, connection_id: &str) -> bool {
        self.open
            .lock()
            .unwrap()
            .get(connection_id)
            .is_some_and(|tx| tx.send(Outgoing::Close(1000, "closed by @connections".into())).is_ok())
    }

    fn exists(&self, connection_id: &str) -> bool {
        self.open.lock().unwrap().contains_key(connection_id)
    }

    fn drop_gone(&self, connection_id: &str) {
        if let Some(tx) = self.open.lock().unwrap().get(connection_id) {
            let _ = tx.send(Outgoing::Close(1001, "Going away: @connections answered 410".into()));
        }
    }

    fn upgrading(&self, connection_id: &str) -> bool {
        self.upgrading.lock().unwrap().contains(connection_id)
    }
}

pub struct Gateway {
    pub routes: Routes,
    pub sockets: Arc<Sockets>,
    pub limits: Limits,
    pub stage: String,
    pub domain: String,
    pub logs: Logs,
    /// How long each upgrade is held after `$connect` returns (`--inject upgrade-delay=…`).
    pub upgrade_delay: Duration,
}

/// What API Gateway knows about one connection.
#[derive(Clone)]
struct Connection {
    id: String,
    connected_at: i64,
    source_ip: String,
    user_agent: String,
    authorizer: Map<String, Value>,
    /// The `Sec-WebSocket-Protocol` of `$connect`'s response, passed on to the client.
    protocol: Option<String>,
}

/// A connection that `$connect` accepted and whose upgrade has not yet taken it: dropped
/// unclaimed (the client left during `$connect`), it runs `$disconnect`, so that no connection
/// item or membership is left behind.
struct Unclaimed(Option<(Arc<Gateway>, Connection)>);

impl Unclaimed {
    fn claim(&mut self) -> Connection {
        self.0.take().expect("claimed once").1
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        let Some((gateway, connection)) = self.0.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { gateway.abandon(connection, "the client left during $connect").await });
        }
    }
}

fn request_time(millis: i64) -> String {
    let format = time::macros::format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
    time::OffsetDateTime::from_unix_timestamp(millis / 1000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// The close code for a socket that failed: a text frame that is not UTF-8 is 1007, a frame or
/// message over the limits 1009, and anything else a lost connection.
fn close_for(error: &axum::Error) -> (u16, String) {
    let text = error.to_string();
    if text.contains("UTF-8") {
        (1007, "Invalid frame payload data".to_owned())
    } else if text.contains("too long") || text.contains("Space limit") || text.contains("size") {
        (1009, "Message too big".to_owned())
    } else {
        (1006, text)
    }
}

impl Gateway {
    fn context(&self, c: &Connection, route: &str, event_type: &str) -> Value {
        let now = wsfan_shared::clock::now_millis();
        let request_id = ulid::Ulid::generate().to_string();
        let mut ctx = json!({
            "routeKey": route,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": request_time(now),
            "messageDirection": "IN",
            "stage": self.stage,
            "connectedAt": c.connected_at,
            "requestTimeEpoch": now,
            "identity": {"sourceIp": c.source_ip, "userAgent": c.user_agent},
            "requestId": request_id,
            "domainName": self.domain,
            "connectionId": c.id,
            "apiId": "local",
        });
        if event_type == "MESSAGE" {
            ctx["messageId"] = json!(ulid::Ulid::generate().to_string());
        }
        if !c.authorizer.is_empty() {
            ctx["authorizer"] = Value::Object(c.authorizer.clone());
        }
        ctx
    }

    /// The upgrade request: authorizer, then `$connect`, then the socket.
    ///
    /// The handshake runs in a task of its own, so that a client that goes away meanwhile cannot
    /// cancel it half-way; a connection that `$connect` accepted but that never opens (the
    /// client left during `$connect`, or the upgrade failed) gets its `$disconnect`, so that no
    /// connection item or membership is left behind.
    pub async fn upgrade(
        self: Arc<Self>,
        ws: WebSocketUpgrade,
        query: HashMap<String, String>,
        headers: HeaderMap,
        peer: SocketAddr,
    ) -> Response {
        let (answer, handshake) = tokio::sync::oneshot::channel();
        let gateway = self.clone();
        tokio::spawn(async move {
            let outcome = gateway.handshake(query, headers, peer).await;
            if let Ok(connection) = &outcome {
                gateway.hold_upgrade(&connection.id).await;
            }
            // Unclaimed, not a bare Connection: hyper may drop this request's future after the
            // answer is sent and before it is read, and the answer's drop must still disconnect.
            let _ = answer.send(outcome.map(|connection| Unclaimed(Some((gateway.clone(), connection)))));
        });
        let connection = match handshake.await {
            Ok(Ok(mut unclaimed)) => unclaimed.claim(),
            Ok(Err(refusal)) => return refusal,
            Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error").into_response(),
        };
        let limits = self.limits;
        let protocol = connection.protocol.clone();
        let (gateway, failed) = (self.clone(), connection.clone());
        let mut response = ws
            .max_frame_size(limits.max_frame_bytes)
            .max_message_size(limits.max_message_bytes)
            .on_failed_upgrade(move |e| {
                tokio::spawn(async move { gateway.abandon(failed, &format!("the upgrade failed: {e}")).await });
            })
            .on_upgrade(move |socket| self.serve(socket, connection));
        // Whatever the integration chose goes out as is, offered or not, as API Gateway does.
        if let Some(value) = protocol.and_then(|p| axum::http::HeaderValue::from_str(&p).ok()) {
            response
                .headers_mut()
                .insert(axum::http::header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        response
    }

    /// Holds the upgrade of a connection `$connect` accepted for `upgrade_delay`, during which
    /// `@connections` answers 410 for it, as API Gateway does until the handshake is finished.
    async fn hold_upgrade(&self, connection_id: &str) {
        if self.upgrade_delay.is_zero() {
            return;
        }
        self.sockets.upgrading.lock().unwrap().insert(connection_id.to_owned());
        self.logs.upgrade_held(connection_id, self.upgrade_delay);
        tokio::time::sleep(self.upgrade_delay).await;
        self.sockets.upgrading.lock().unwrap().remove(connection_id);
    }

    /// `$disconnect` for a connection that `$connect` accepted but that never opened.
    async fn abandon(&self, connection: Connection, why: &str) {
        self.logs
            .warn(&format!("{}: {why}; running $disconnect", connection.id));
        self.disconnect(&connection, 1006, why).await;
    }

    async fn serve(self: Arc<Self>, socket: WebSocket, connection: Connection) {
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.sockets
            .open
            .lock()
            .unwrap()
            .insert(connection.id.clone(), tx.clone());
        let writer = tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let result = match out {
                    Outgoing::Text(t) => sink.send(Message::Text(t.into())).await,
                    Outgoing::Close(code, reason) => {
                        // After the client's close this send is refused, and the close below
                        // flushes the echo the WebSocket queued instead.
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code,
                                reason: reason.into(),
                            })))
                            .await;
                        let _ = sink.close().await;
                        break;
                    }
                };
                if result.is_err() {
                    break;
                }
            }
        });

        let deadline = tokio::time::Instant::now() + self.limits.max_connection;
        let mut in_flight = tokio::task::JoinSet::new();
        let (status, reason) = loop {
            let next = tokio::select! {
                next = tokio::time::timeout(self.limits.idle_timeout, stream.next()) => next,
                _ = tokio::time::sleep_until(deadline) => break (1001, "Going away: maximum connection duration".to_owned()),
            };
            let message = match next {
                Err(_) => break (1001, "Going away: idle timeout".to_owned()),
                Ok(None) => break (1006, "connection lost".to_owned()),
                Ok(Some(Err(e))) => break close_for(&e),
                Ok(Some(Ok(m))) => m,
            };
            match message {
                // API Gateway invokes the integration for each frame as it arrives, without waiting
                // for the last one's answer, so a connection's frames run at once and may finish
                // out of order. Running them one after another would hide a flood from the rate
                // limit (one frame in flight) and give order promises API Gateway does not.
                Message::Text(text) => {
                    let (gateway, connection, tx) = (self.clone(), connection.clone(), tx.clone());
                    in_flight.spawn(async move {
                        if let Some(answer) = gateway.route(&connection, text.as_str()).await {
                            let _ = tx.send(Outgoing::Text(answer));
                        }
                    });
                    // Reap what has finished, so a long connection does not hold every task.
                    while in_flight.try_join_next().is_some() {}
                }
                Message::Binary(_) => {
                    let _ = tx.send(Outgoing::Text(
                        json!({"type": "error", "code": "bad_json", "message": "binary frames are not supported; send JSON text"})
                            .to_string(),
                    ));
                }
                Message::Close(frame) => {
                    break frame
                        .map(|f| (f.code, f.reason.to_string()))
                        .unwrap_or((1005, "closed by the client".to_owned()))
                }
                Message::Ping(_) | Message::Pong(_) => {}
            }
        };
        // Every way out but a lost connection ends with a close frame. For a client's close this
        // sends the echo RFC 6455 asks for (the WebSocket queued it when the close arrived, and
        // sends it on this flush instead of a frame of ours).
        if status != 1006 {
            let _ = tx.send(Outgoing::Close(status, reason.clone()));
        }
        self.sockets.open.lock().unwrap().remove(&connection.id);
        // The frames still running finish before $disconnect, as their invocations would; their
        // answers have no socket to go to.
        while in_flight.join_next().await.is_some() {}
        drop(tx);
        let _ = writer.await;
        self.disconnect(&connection, status, &reason).await;
    }

    async fn disconnect(&self, connection: &Connection, status: u16, reason: &str) {
        let Some(function) = self.routes.by_key.get("$disconnect") else {
            return;
        };
        let mut ctx = self.context(connection, "$disconnect", "DISCONNECT");
        ctx["disconnectStatusCode"] = json!(status);
        ctx["disconnectReason"] = json!(reason);
        let event = json!({"headers": {}, "multiValueHeaders": {}, "requestContext": ctx, "isBase64Encoded": false});
        let started = Instant::now();
        let outcome = function.invoke(&event).await;
        let detail = format!("{} ({status})", connection.id);
        match outcome {
            Ok(_) => self
                .logs
                .invocation(function.name(), "$disconnect", started.elapsed(), Outcome::Ok(&detail)),
            Err(e) => self.logs.invocation(
                function.name(),
                "$disconnect",
                started.elapsed(),
                Outcome::Failed(&e.to_string()),
            ),
        }
    }

    /// Route selection on `$request.body.action`, then the integration; returns the route
    /// response body, if any.
    async fn route(&self, connection: &Connection, body: &str) -> Option<String> {
        let action = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("action").and_then(Value::as_str).map(str::to_owned));
        // `$connect`, `$disconnect` and `$default` are never chosen by the selection expression:
        // a frame naming one goes to `$default` like any other unknown action.
        let custom = action.as_deref().filter(|a| !a.starts_with('$'));
        let (key, function) = match custom.and_then(|a| self.routes.by_key.get_key_value(a)) {
            Some((k, f)) => (k.clone(), f.clone()),
            None => match self.routes.by_key.get("$default") {
                Some(f) => ("$default".to_owned(), f.clone()),
                // API Gateway's own answer when no route matches and there is no $default.
                None => return Some(json!({"message": "Forbidden", "connectionId": connection.id}).to_string()),
            },
        };
        let event = json!({
            "requestContext": self.context(connection, &key, "MESSAGE"),
            "body": body,
            "isBase64Encoded": false,
        });
        let started = Instant::now();
        match function.invoke(&event).await {
            Ok(response) => {
                let answer = response["body"].as_str().filter(|b| !b.is_empty()).map(str::to_owned);
                let refused = answer
                    .as_deref()
                    .and_then(|b| serde_json::from_str::<Value>(b).ok())
                    .filter(|v| v["type"] == "error")
                    .map(|v| {
                        format!(
                            "{}: {}",
                            v["code"].as_str().unwrap_or(""),
                            v["message"].as_str().unwrap_or("")
                        )
                    });
                match refused {
                    Some(why) => self
                        .logs
                        .invocation(function.name(), &key, started.elapsed(), Outcome::Refused(&why)),
                    None => self
                        .logs
                        .invocation(function.name(), &key, started.elapsed(), Outcome::Ok("")),
                }
                answer
            }
            Err(e) => {
                self.logs.invocation(
                    function.name(),
                    &key,
                    started.elapsed(),
                    Outcome::Failed(&e.to_string()),
                );
                // API Gateway answers a failed integration like this.
                Some(json!({"message": "Internal server error", "connectionId": connection.id}).to_string())
            }
        }
    }
}
