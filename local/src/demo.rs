//! The HTTP side of `wsfan dev` beside `@connections`: the stage's WebSocket endpoint, and the
//! demo page with what it calls (its dev token, a simulated document, the client module, stats).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use wsfan_shared::auth::{mint_hs256, Claims};
use wsfan_shared::progress::ProgressEvent;
use wsfan_shared::publisher::ProgressPublisher;

use crate::connections::ConnectionsServer;
use crate::dev::DEV_SECRET;
use crate::environment::Environment;
use crate::gateway::Gateway;
use crate::logs::Logs;

const DEMO_PAGE: &str = include_str!("../demo/index.html");
/// The JS client (clients/js), which the demo page imports as a module.
const CLIENT_MODULE: &str = include_str!("../../clients/js/src/index.js");

/// What the handlers share.
pub(crate) struct App {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) connections: ConnectionsServer,
    pub(crate) environment: Arc<Environment>,
    pub(crate) logs: Logs,
    pub(crate) ws_url: String,
}

/// Serves the stage, the demo page and `@connections` on `listener`, until the process ends.
pub(crate) fn serve(listener: tokio::net::TcpListener, app: App) {
    let connections = app.connections.router();
    let router = Router::new()
        .route("/", get(index))
        .route("/{stage}", get(websocket))
        .route("/wsfan-client.js", get(client_module))
        .route("/dev/token", get(token))
        .route("/dev/docs", post(simulate_document))
        .route("/dev/stats", get(connections_stats))
        .with_state(Arc::new(app))
        .merge(connections);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            eprintln!("wsfan dev: the HTTP server stopped: {e}");
        }
    });
}

/// `GET /` and `GET /{stage}`: a WebSocket upgrade goes to the gateway, a browser gets the demo.
async fn page_or_socket(
    app: Arc<App>,
    stage_ok: bool,
    peer: SocketAddr,
    query: HashMap<String, String>,
    request: Request,
) -> Response {
    let upgrade = request
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return Html(DEMO_PAGE).into_response();
    }
    if !stage_ok {
        return (
            StatusCode::FORBIDDEN,
            format!("unknown stage; use /{}", app.gateway.stage),
        )
            .into_response();
    }
    let (mut parts, _) = request.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => app.gateway.clone().upgrade(ws, query, parts.headers, peer).await,
        Err(rejection) => rejection.into_response(),
    }
}

async fn index(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    page_or_socket(app, true, peer, query, request).await
}

async fn client_module() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CLIENT_MODULE,
    )
        .into_response()
}

async fn websocket(
    State(app): State<Arc<App>>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let stage_ok = stage == app.gateway.stage;
    page_or_socket(app, stage_ok, peer, query, request).await
}

/// A dev token for the demo page: any name, the demo's channels; `ttl` (seconds, default 12 h)
/// for a short-lived one, to see refresh and expiry.
async fn token(State(app): State<Arc<App>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let sub = query.get("sub").map(String::as_str).unwrap_or("");
    let ttl = match query.get("ttl").map(|t| t.parse::<i64>()) {
        None => 12 * 3600,
        Some(Ok(t)) if (1..=12 * 3600).contains(&t) => t,
        Some(_) => {
            let message = "ttl must be whole seconds from 1 to 43200";
            return (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response();
        }
    };
    let claims = Claims {
        sub: sub.to_owned(),
        exp: wsfan_shared::clock::now_secs() + ttl,
        nbf: None,
        channels: vec!["workspace:*".into(), "doc:*".into(), "session:*".into()],
        role: None,
        aud: None,
        iss: None,
    };
    let valid = sub.len() <= 64 && wsfan_shared::channel::ChannelId::user(sub).is_ok();
    if !valid {
        let message = "sub must be 1-64 characters of A-Z a-z 0-9 _ . @ -";
        return (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response();
    }
    let token = mint_hs256(DEV_SECRET, &claims);
    Json(json!({"token": token, "url": format!("{}?token={token}", app.ws_url)})).into_response()
}

/// What @connections answered: totals, and per second for the last few minutes (benchmarks read
/// the budget used in each second from here). Beside `/dev/token`, off API Gateway's own paths.
async fn connections_stats(State(app): State<Arc<App>>) -> Response {
    Json(app.connections.stats_json()).into_response()
}

/// Publishes a simulated document's progress to the local queue over about three seconds.
async fn simulate_document(State(app): State<Arc<App>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let fail = query.get("fail").is_some_and(|v| v == "true" || v == "1");
    let doc_id = format!("doc-{}", ulid::Ulid::generate().to_string().to_lowercase());
    let Some((url, _)) = app.environment.queue_feeding("progress-fanout").cloned() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "the template has no progress queue"})),
        )
            .into_response();
    };
    let publisher = ProgressPublisher::new(aws_sdk_sqs::Client::new(&app.environment.sdk), url);
    let (logs, id) = (app.logs.clone(), doc_id.clone());
    tokio::spawn(async move {
        let total = 20;
        let mut events = vec![ProgressEvent::started(&id, Some(total))];
        let last = if fail { 12 } else { total };
        events.extend((1..=last / 2).map(|i| ProgressEvent::progress(&id, i * 2, total)));
        events.push(if fail {
            let mut e = ProgressEvent::error(&id, "PAGE_UNREADABLE", "page 13 could not be read", false);
            e.pages_processed = Some(last);
            e
        } else {
            ProgressEvent::complete(&id, Some(total))
        });
        for event in events {
            if let Err(e) = publisher.send(std::slice::from_ref(&event)).await {
                logs.warn(&format!("simulated document {id}: {e}"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Json(json!({"docId": doc_id})).into_response()
}
