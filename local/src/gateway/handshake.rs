//! The handshake of a WebSocket upgrade, as API Gateway makes it: the REQUEST authorizer, then
//! `$connect`; either can refuse the upgrade, and `$connect` names its subprotocol.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::{Connection, Gateway};
use crate::logs::Outcome;
use crate::runtime::LambdaFunction;

/// What the authorizer and `$connect` are both told of an upgrade request, as API Gateway
/// writes it in their events.
struct UpgradeRequest {
    headers: Value,
    multi_value_headers: Value,
    query: HashMap<String, String>,
    multi_value_query: Map<String, Value>,
}

impl UpgradeRequest {
    fn new(headers: &HeaderMap, query: HashMap<String, String>) -> Self {
        let mut single = Map::new();
        let mut multi: Map<String, Value> = Map::new();
        for (name, value) in headers {
            let value = value.to_str().unwrap_or_default().to_owned();
            single.insert(name.as_str().to_owned(), json!(value));
            multi
                .entry(name.as_str().to_owned())
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .expect("always an array")
                .push(json!(value));
        }
        UpgradeRequest {
            headers: Value::Object(single),
            multi_value_headers: Value::Object(multi),
            multi_value_query: query.iter().map(|(k, v)| (k.clone(), json!([v]))).collect(),
            query,
        }
    }
}

impl Gateway {
    /// The authorizer, then `$connect`: the connection to open, or the answer to the upgrade.
    pub(super) async fn handshake(
        &self,
        query: HashMap<String, String>,
        headers: HeaderMap,
        peer: SocketAddr,
    ) -> Result<Connection, Response> {
        let mut connection = Connection {
            id: new_connection_id(),
            connected_at: wsfan_shared::clock::now_millis(),
            source_ip: peer.ip().to_string(),
            user_agent: headers
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            authorizer: Map::new(),
            protocol: None,
        };
        let upgrade = UpgradeRequest::new(&headers, query);
        if let Some(authorizer) = &self.routes.authorizer {
            self.authorize(authorizer, &upgrade, &mut connection).await?;
        }
        if let Some(connect) = self.routes.by_key.get("$connect") {
            self.connect(connect, &upgrade, &mut connection).await?;
        }
        Ok(connection)
    }

    /// The `$connect` authorizer: on Allow, its context becomes the connection's; on Deny the
    /// upgrade is answered 403, and 500 when the authorizer failed.
    async fn authorize(
        &self,
        authorizer: &Arc<LambdaFunction>,
        upgrade: &UpgradeRequest,
        connection: &mut Connection,
    ) -> Result<(), Response> {
        let event = json!({
            "type": "REQUEST",
            "methodArn": format!("arn:aws:execute-api:us-east-1:000000000000:local/{}/$connect", self.stage),
            "headers": upgrade.headers, "multiValueHeaders": upgrade.multi_value_headers,
            "queryStringParameters": upgrade.query, "multiValueQueryStringParameters": upgrade.multi_value_query,
            "stageVariables": {},
            "requestContext": self.context(connection, "$connect", "CONNECT"),
        });
        let started = Instant::now();
        let answer = authorizer.invoke(&event).await;
        let allowed = match &answer {
            Ok(r) => r["policyDocument"]["Statement"][0]["Effect"] == "Allow",
            Err(_) => false,
        };
        match (&answer, allowed) {
            (Ok(r), true) => {
                let mut context = r["context"].as_object().cloned().unwrap_or_default();
                context.insert("principalId".into(), r["principalId"].clone());
                context.insert("integrationLatency".into(), json!(started.elapsed().as_millis() as u64));
                connection.authorizer = context;
                self.logs
                    .invocation(authorizer.name(), "$connect", started.elapsed(), Outcome::Ok("Allow"));
                Ok(())
            }
            (Ok(_), false) => {
                self.logs.invocation(
                    authorizer.name(),
                    "$connect",
                    started.elapsed(),
                    Outcome::Refused("Deny: 403"),
                );
                Err((StatusCode::FORBIDDEN, "Forbidden").into_response())
            }
            (Err(e), _) => {
                self.logs.invocation(
                    authorizer.name(),
                    "$connect",
                    started.elapsed(),
                    Outcome::Failed(&e.to_string()),
                );
                Err((StatusCode::INTERNAL_SERVER_ERROR, "Internal server error").into_response())
            }
        }
    }

    /// The `$connect` route: a status other than 200 refuses the upgrade with that status; the
    /// subprotocol it answers with is the connection's.
    async fn connect(
        &self,
        connect: &Arc<LambdaFunction>,
        upgrade: &UpgradeRequest,
        connection: &mut Connection,
    ) -> Result<(), Response> {
        let event = json!({
            "headers": upgrade.headers, "multiValueHeaders": upgrade.multi_value_headers,
            "queryStringParameters": upgrade.query, "multiValueQueryStringParameters": upgrade.multi_value_query,
            "requestContext": self.context(connection, "$connect", "CONNECT"),
            "isBase64Encoded": false,
        });
        let started = Instant::now();
        let status = match connect.invoke(&event).await {
            Ok(r) => {
                connection.protocol = protocol_of(&r);
                r["statusCode"].as_u64().unwrap_or(200) as u16
            }
            Err(e) => {
                self.logs.invocation(
                    connect.name(),
                    "$connect",
                    started.elapsed(),
                    Outcome::Failed(&e.to_string()),
                );
                return Err((StatusCode::INTERNAL_SERVER_ERROR, "Internal server error").into_response());
            }
        };
        if status != 200 {
            let detail = format!("upgrade refused with {status}");
            self.logs
                .invocation(connect.name(), "$connect", started.elapsed(), Outcome::Refused(&detail));
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err((code, "Connection refused").into_response());
        }
        self.logs.invocation(
            connect.name(),
            "$connect",
            started.elapsed(),
            Outcome::Ok(&connection.id),
        );
        Ok(())
    }
}

/// The `Sec-WebSocket-Protocol` header of an integration's response (its names in any case).
fn protocol_of(response: &Value) -> Option<String> {
    let headers = response["headers"].as_object()?;
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .and_then(|(_, v)| v.as_str())
        .map(str::to_owned)
}

fn new_connection_id() -> String {
    // API Gateway's ids are 12 random bytes in base64, e.g. "L0SM9cOFvHcCIhw=".
    let bytes: Vec<u8> = (0..10).map(|_| fastrand::u8(..)).collect();
    aws_smithy_types::base64::encode(bytes)
}
