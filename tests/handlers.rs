//! The four WebSocket handlers, driven by the fixtures in `events/` against a real DynamoDB API
//! (moto). Each test asserts on the route response and on the items it left in the table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest,
};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::iam::IamPolicyEffect;
use aws_sdk_dynamodb::types::AttributeValue;
use harness::{auth_config, dev_verifier, fixture, invocation_deadline, n, s, TestTable, DEV_SECRET};
use serde_json::{json, Value};
use ws_authorizer::Decision;
use wsfan_shared::auth::{Claims, JwtVerifier};
use wsfan_shared::config::{KeySource, Retention};
use wsfan_shared::limiter::DynamoLimiter;
use wsfan_shared::model::Connection;
use wsfan_shared::rate::RateLimit;
use wsfan_shared::store::{Connections, DynamoStore, StoreError};

const CONN: &str = "L0SM9cOFvHcCIhw=";

// ---------- helpers ----------

/// A fixture as JSON, edited, then read as the event type.
fn event(path: &str, edit: impl FnOnce(&mut Value)) -> ApiGatewayWebsocketProxyRequest {
    let mut value: Value = fixture(path);
    edit(&mut value);
    serde_json::from_value(value).expect("edited fixture is still an event")
}

fn ws(path: &str) -> ApiGatewayWebsocketProxyRequest {
    fixture(path)
}

/// The same route event, from another connection and identity, with another body.
fn as_caller(path: &str, connection: &str, authorizer: Value, body: Option<Value>) -> ApiGatewayWebsocketProxyRequest {
    event(path, |v| {
        v["requestContext"]["connectionId"] = json!(connection);
        v["requestContext"]["authorizer"] = authorizer;
        if let Some(body) = body {
            v["body"] = json!(body.to_string());
        }
    })
}

fn body(response: &ApiGatewayProxyResponse) -> Value {
    match &response.body {
        Some(Body::Text(t)) => serde_json::from_str(t).expect("route responses are JSON"),
        other => panic!("expected a text body, got {other:?}"),
    }
}

fn error_code(response: &ApiGatewayProxyResponse) -> String {
    assert_eq!(response.status_code, 200, "errors keep the socket open");
    let b = body(response);
    assert_eq!(b["type"], "error", "expected an error frame, got {b}");
    assert!(
        b["message"].as_str().is_some_and(|m| !m.is_empty()),
        "errors say why: {b}"
    );
    b["code"].as_str().unwrap().to_owned()
}

async fn connect(t: &TestTable, path: &str) -> ApiGatewayProxyResponse {
    connect_event(t, ws(path)).await
}

async fn connect_event(t: &TestTable, e: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
    ws_connect::handle(&t.store, &Retention::default(), e).await
}

async fn message(t: &TestTable, e: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
    let unlimited = DynamoLimiter::new(&t.store, RateLimit::OFF);
    let verifier = revocation_checked(t);
    ws_message::handle(&t.store, &unlimited, &verifier, &Retention::default(), e).await
}

/// The verifier ws-message's `auth` uses: the dev secret and this table's revocations.
fn revocation_checked(t: &TestTable) -> ws_authorizer::RevocationChecked<'static, DynamoStore> {
    let verifier: &'static JwtVerifier = Box::leak(Box::new(dev_verifier(None)));
    let store: &'static DynamoStore = Box::leak(Box::new(t.store.clone()));
    ws_authorizer::RevocationChecked {
        verifier,
        revocations: store,
    }
}

async fn run(t: &TestTable, path: &str) -> ApiGatewayProxyResponse {
    message(t, ws(path)).await
}

fn string_set(item: &HashMap<String, AttributeValue>, name: &str) -> Vec<String> {
    let mut v = item.get(name).and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default();
    v.sort();
    v
}

// ---------- ws-authorizer ----------

async fn authorize(path: &str, verifier: &JwtVerifier) -> ws_authorizer::Response {
    let e: ApiGatewayCustomAuthorizerRequestTypeRequest = fixture(path);
    ws_authorizer::handle(verifier, e).await
}

fn effect(r: &ws_authorizer::Response) -> IamPolicyEffect {
    r.policy_document.statement[0].effect.clone()
}

#[tokio::test]
async fn authorizer_allows_a_valid_token_with_its_identity_in_the_context() {
    let r = authorize("ws-authorizer/valid-token", &dev_verifier(None)).await;
    assert_eq!(effect(&r), IamPolicyEffect::Allow);
    assert_eq!(r.principal_id.as_deref(), Some("alice"));
    assert_eq!(r.context["userId"], "alice");
    assert_eq!(r.context["role"], "member");
    assert_eq!(r.context["channels"], "workspace:42,doc:report-1");
    let statement = &r.policy_document.statement[0];
    assert_eq!(statement.action, vec!["execute-api:Invoke"]);
    assert_eq!(
        statement.resource,
        vec!["arn:aws:execute-api:eu-west-1:123456789012:abc123def4/prod/$connect"]
    );
    // The shape API Gateway reads: camelCase keys, a flat context of strings.
    let wire = serde_json::to_value(&r).unwrap();
    assert_eq!(wire["policyDocument"]["Statement"][0]["Effect"], "Allow");
    assert!(wire["context"].as_object().unwrap().values().all(Value::is_string));
}

#[tokio::test]
async fn authorizer_denies_expired_forged_alg_none_and_missing_tokens() {
    let verifier = dev_verifier(None);
    for case in ["expired-token", "forged-token", "alg-none-token", "missing-token"] {
        let r = authorize(&format!("ws-authorizer/{case}"), &verifier).await;
        assert_eq!(effect(&r), IamPolicyEffect::Deny, "{case}");
        assert!(
            r.context.as_object().unwrap().is_empty(),
            "{case}: a Deny carries no identity"
        );
    }
}

#[tokio::test]
async fn authorizer_admits_anonymous_listeners_only_when_configured() {
    let r = authorize("ws-authorizer/missing-token", &dev_verifier(Some("doc:*"))).await;
    assert_eq!(effect(&r), IamPolicyEffect::Allow);
    assert_eq!(r.context["role"], "listener");
    assert_eq!(r.context["channels"], "doc:*");
    assert!(r.context.get("userId").is_none());
    // A bad token is still refused, even where anonymous listeners are welcome.
    let r = authorize("ws-authorizer/forged-token", &dev_verifier(Some("doc:*"))).await;
    assert_eq!(effect(&r), IamPolicyEffect::Deny);
}

#[tokio::test]
async fn authorizer_checks_nbf_audience_and_issuer() {
    let now = wsfan_shared::clock::now_secs();
    let claims = |aud: &str, iss: &str, nbf: Option<i64>| Claims {
        sub: "alice".into(),
        exp: now + 600,
        nbf,
        channels: vec!["workspace:42".into()],
        role: None,
        aud: Some(aud.into()),
        iss: Some(iss.into()),
    };
    let mut config = auth_config(KeySource::Secret(DEV_SECRET.into()), None);
    config.audience = Some(vec!["wsfan".into()]);
    config.issuer = Some(vec!["https://issuer.example".into()]);
    let verifier = JwtVerifier::new(config);
    let good = wsfan_shared::auth::mint_hs256(DEV_SECRET, &claims("wsfan", "https://issuer.example", None));
    assert!(matches!(
        ws_authorizer::decide(&verifier, Some(&good)).await,
        Decision::Allow(_)
    ));
    for bad in [
        claims("other", "https://issuer.example", None),
        claims("wsfan", "https://evil.example", None),
        claims("wsfan", "https://issuer.example", Some(now + 3600)),
    ] {
        let token = wsfan_shared::auth::mint_hs256(DEV_SECRET, &bad);
        assert!(
            matches!(ws_authorizer::decide(&verifier, Some(&token)).await, Decision::Deny(_)),
            "{bad:?}"
        );
    }
    // A token with an unknown role or a malformed channel pattern grants nothing.
    let mut odd = claims("wsfan", "https://issuer.example", None);
    odd.role = Some("superuser".into());
    let token = wsfan_shared::auth::mint_hs256(DEV_SECRET, &odd);
    assert!(matches!(
        ws_authorizer::decide(&verifier, Some(&token)).await,
        Decision::Deny(_)
    ));
}

#[tokio::test]
async fn authorizer_refuses_contexts_over_api_gateways_limit() {
    let claims = Claims {
        sub: "alice".into(),
        exp: wsfan_shared::clock::now_secs() + 600,
        nbf: None,
        channels: (0..1000).map(|i| format!("workspace:{i:06}")).collect(),
        role: None,
        aud: None,
        iss: None,
    };
    let token = wsfan_shared::auth::mint_hs256(DEV_SECRET, &claims);
    match ws_authorizer::decide(&dev_verifier(None), Some(&token)).await {
        Decision::Deny(reason) => assert!(reason.contains("8192"), "{reason}"),
        other => panic!("expected Deny, got {other:?}"),
    }
}

fn token_for(sub: &str) -> String {
    let claims = Claims {
        sub: sub.into(),
        exp: wsfan_shared::clock::now_secs() + 600,
        nbf: None,
        channels: vec!["workspace:42".into()],
        role: None,
        aud: None,
        iss: None,
    };
    wsfan_shared::auth::mint_hs256(DEV_SECRET, &claims)
}

/// The `$connect` authorizer event of the fixture, carrying `token` instead.
fn authorizer_event(token: &str) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let mut value: Value = fixture("ws-authorizer/valid-token");
    value["queryStringParameters"]["token"] = json!(token);
    value["multiValueQueryStringParameters"]["token"] = json!([token]);
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn authorizer_denies_subs_that_cannot_name_a_user_channel() {
    let verifier = dev_verifier(None);
    let long = "x".repeat(129);
    let huge = "x".repeat(1100);
    for sub in ["", "a#b", "a/b", "a\0b", "a b", "auth0|123", "\u{1f600}", &long, &huge] {
        let token = token_for(sub);
        match ws_authorizer::decide(&verifier, Some(&token)).await {
            Decision::Deny(reason) => assert!(reason.contains("sub must be 1-128 characters"), "{sub:?}: {reason}"),
            other => panic!("{sub:?}: expected Deny, got {other:?}"),
        }
        let r = ws_authorizer::handle(&verifier, authorizer_event(&token)).await;
        assert_eq!(effect(&r), IamPolicyEffect::Deny, "{sub:?}");
        assert!(r.context.as_object().unwrap().is_empty(), "{sub:?}");
    }
}

/// Every sub the authorizer admits, up to the longest, connects with its `user:<sub>` membership,
/// and its presence and dedupe keys fit DynamoDB's limits (moto enforces them as AWS does).
#[tokio::test]
async fn every_admitted_sub_gets_its_user_channel_presence_and_dedupe_keys() {
    let verifier = dev_verifier(None);
    let longest = "x".repeat(128);
    let at_limit = format!("{}@example.com", "a".repeat(116));
    for sub in [
        "a",
        "alice@example.com",
        "0f6e5d9c-4a44-4fd2-9a36-2f1e6c4b8a11",
        "A.b_c-D",
        &longest,
        &at_limit,
    ] {
        let t = TestTable::new().await;
        let r = ws_authorizer::handle(&verifier, authorizer_event(&token_for(sub))).await;
        assert_eq!(effect(&r), IamPolicyEffect::Allow, "{sub:?}");
        // API Gateway hands the authorizer's context to every route of the connection.
        let mut context = r.context.clone();
        context["principalId"] = json!(r.principal_id.clone().unwrap());
        let e = as_caller("ws-connect/connect", CONN, context.clone(), None);
        assert_eq!(
            ws_connect::handle(&t.store, &Retention::default(), e).await.status_code,
            200,
            "{sub:?}"
        );
        let user_channel = format!("CHAN#user:{sub}");
        assert!(
            t.item(&user_channel, &format!("CONN#{CONN}")).await.is_some(),
            "{sub:?}: membership"
        );
        assert!(
            t.item(&user_channel, &format!("USER#{sub}")).await.is_some(),
            "{sub:?}: presence"
        );

        let joined = body(&message(&t, as_caller("ws-message/join", CONN, context.clone(), None)).await);
        assert_eq!(joined["type"], "joined", "{sub:?}: {joined}");
        assert_eq!(joined["present"], json!([sub]));
        let client_msg_id = "c".repeat(wsfan_shared::protocol::MAX_CLIENT_MSG_ID_LEN);
        let frame =
            json!({"action": "sendMessage", "channel": "workspace:42", "body": "hi", "clientMsgId": client_msg_id});
        let ack = body(&message(&t, as_caller("ws-message/send-message", CONN, context, Some(frame))).await);
        assert_eq!(ack["type"], "ack", "{sub:?}: {ack}");
        let dedupe = format!("DEDUPE#{sub}#{client_msg_id}");
        assert!(
            t.item("CHAN#workspace:42", &dedupe).await.is_some(),
            "{sub:?}: dedupe item"
        );
    }
}

/// Serves `tests/keys/jwks.json` on loopback and counts the fetches.
async fn jwks_server() -> (String, Arc<AtomicUsize>) {
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(harness::repo_root().join("tests/keys/jwks.json")).unwrap())
            .unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

fn sign(alg: jsonwebtoken::Algorithm, kid: &str, key: &str, claims: &Claims) -> String {
    let pem = std::fs::read(harness::repo_root().join("tests/keys").join(key)).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[tokio::test]
async fn authorizer_verifies_rs256_and_es256_from_a_cached_jwks() {
    let (url, hits) = jwks_server().await;
    let verifier = JwtVerifier::new(auth_config(KeySource::Jwks(url), None));
    let claims = Claims {
        sub: "carol".into(),
        exp: wsfan_shared::clock::now_secs() + 600,
        nbf: None,
        channels: vec!["doc:*".into()],
        role: Some("listener".into()),
        aud: None,
        iss: None,
    };
    let rs = sign(jsonwebtoken::Algorithm::RS256, "rsa-1", "rsa-private.pem", &claims);
    let es = sign(jsonwebtoken::Algorithm::ES256, "ec-1", "ec-private.pem", &claims);
    for token in [&rs, &es, &rs] {
        match ws_authorizer::decide(&verifier, Some(token)).await {
            Decision::Allow(id) => assert_eq!(id.user_id.as_deref(), Some("carol")),
            other => panic!("expected Allow, got {other:?}"),
        }
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the JWKS is fetched once and cached");

    // The right key under the wrong kid, an HS256 token, and an expired one are all refused.
    let swapped = sign(jsonwebtoken::Algorithm::RS256, "ec-1", "rsa-private.pem", &claims);
    let hs = wsfan_shared::auth::mint_hs256("whatever", &claims);
    let mut old = claims.clone();
    old.exp = 1_000_000;
    let expired = sign(jsonwebtoken::Algorithm::ES256, "ec-1", "ec-private.pem", &old);
    for token in [&swapped, &hs, &expired] {
        assert!(matches!(
            ws_authorizer::decide(&verifier, Some(token)).await,
            Decision::Deny(_)
        ));
    }
}

/// The authorizer event of a fixture with this `Sec-WebSocket-Protocol` (and the fixture's query).
fn authorizer_with_protocols(path: &str, protocols: &str) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let mut value: Value = fixture(path);
    value["headers"]["Sec-WebSocket-Protocol"] = json!(protocols);
    value["multiValueHeaders"]["Sec-WebSocket-Protocol"] = json!([protocols]);
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn authorizer_reads_the_token_from_the_subprotocol_offer_and_never_from_a_bad_one() {
    let verifier = dev_verifier(None);
    let r = authorize("ws-authorizer/subprotocol-token", &verifier).await;
    assert_eq!(effect(&r), IamPolicyEffect::Allow);
    assert_eq!(r.context["userId"], "alice");
    // The header wins over the URL: a forged token in the header is refused even with a good one
    // in the query.
    let forged = token_for("alice").replace('.', ".x");
    let r = ws_authorizer::handle(
        &verifier,
        authorizer_with_protocols("ws-authorizer/valid-token", &format!("wsfan.v1, bearer.{forged}")),
    )
    .await;
    assert_eq!(effect(&r), IamPolicyEffect::Deny);
    // A malformed offer is refused rather than passed over for the URL's token.
    for bad in [
        "bearer.abc",
        "wsfan.v1, bearer.",
        "wsfan.v1, bearer.a, bearer.b",
        "wsfan.v1,,",
    ] {
        let r = ws_authorizer::handle(&verifier, authorizer_with_protocols("ws-authorizer/valid-token", bad)).await;
        assert_eq!(effect(&r), IamPolicyEffect::Deny, "{bad}");
    }
    // An offer of the version alone leaves the token in the URL, for older clients.
    let r = ws_authorizer::handle(
        &verifier,
        authorizer_with_protocols("ws-authorizer/valid-token", "wsfan.v1"),
    )
    .await;
    assert_eq!(effect(&r), IamPolicyEffect::Allow);
}

// ---------- ws-connect ----------

#[tokio::test]
async fn connect_writes_the_connection_and_its_personal_membership() {
    let t = TestTable::new().await;
    let r = connect(&t, "ws-connect/connect").await;
    assert_eq!(r.status_code, 200);
    assert!(r.body.is_none());

    let conn = t.item(&format!("CONN#{CONN}"), "META").await.expect("connection item");
    assert_eq!(s(&conn, "userId"), "alice");
    assert_eq!(s(&conn, "role"), "member");
    assert_eq!(s(&conn, "sourceIp"), "203.0.113.7");
    assert_eq!(s(&conn, "stage"), "prod");
    assert_eq!(s(&conn, "domainName"), "abc123def4.execute-api.eu-west-1.amazonaws.com");
    assert_eq!(n(&conn, "connectedAt"), 1_795_305_600_000);
    // TTL past API Gateway's 2-hour limit, because $disconnect is best effort.
    assert!(n(&conn, "expiresAt") > 1_795_305_600 + 2 * 3600);

    let member = t
        .item("CHAN#user:alice", &format!("CONN#{CONN}"))
        .await
        .expect("user:alice membership");
    assert_eq!(s(&member, "connectionId"), CONN);
    assert_eq!(s(&member, "channel"), "user:alice");
    assert_eq!(n(&member, "expiresAt"), n(&conn, "expiresAt"));
    let presence = t.item("CHAN#user:alice", "USER#alice").await.expect("presence item");
    assert_eq!(string_set(&presence, "connections"), vec![CONN.to_owned()]);
}

#[tokio::test]
async fn connect_joins_the_channels_named_in_the_url_and_asks_for_their_history() {
    let t = TestTable::new().await;
    // ?type=chat&booking_id=1&history=50, as the booking chat clients connect.
    let r = connect(&t, "ws-connect/connect-booking-chat").await;
    assert_eq!(r.status_code, 200);
    let member = t
        .item("CHAN#booking:1", &format!("CONN#{CONN}"))
        .await
        .expect("booking:1 membership");
    assert_eq!(s(&member, "userId"), "alice");
    assert_eq!(
        n(&member, "history"),
        50,
        "the fanout answers this with a history frame"
    );
    let presence = t.item("CHAN#booking:1", "USER#alice").await.expect("presence item");
    assert_eq!(string_set(&presence, "connections"), vec![CONN.to_owned()]);
    let conn = t.item(&format!("CONN#{CONN}"), "META").await.unwrap();
    assert_eq!(string_set(&conn, "joined"), vec!["booking:1"], "its default channel");
    // The personal channel is joined as before, without a history request.
    let personal = t.item("CHAN#user:alice", &format!("CONN#{CONN}")).await.unwrap();
    assert!(!personal.contains_key("history"));

    // Its frames without a channel go to booking:1.
    let booking_chat: Value = fixture("ws-connect/connect-booking-chat");
    let frame = as_caller(
        "ws-message/message-without-action",
        CONN,
        booking_chat["requestContext"]["authorizer"].clone(),
        None,
    );
    let r = body(&message(&t, frame).await);
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(r["channel"], "booking:1");
}

#[tokio::test]
async fn connect_refuses_a_channel_the_token_does_not_allow_and_takes_the_personal_one_in_stride() {
    let t = TestTable::new().await;
    // ?workspaceId=43 with a token for workspace:42 only.
    assert_eq!(
        connect(&t, "ws-connect/connect-forbidden-channel").await.status_code,
        403
    );
    assert!(t.items().await.is_empty());
    let own = event("ws-connect/connect", |v| {
        v["queryStringParameters"]["channels"] = json!("user:alice,workspace:42");
    });
    let r = ws_connect::handle(&t.store, &Retention::default(), own).await;
    assert_eq!(r.status_code, 200, "naming the personal channel too is no error");
    let conn = t.item(&format!("CONN#{CONN}"), "META").await.unwrap();
    assert_eq!(string_set(&conn, "joined"), vec!["workspace:42"]);
    let t = TestTable::new().await;
    let bad = event("ws-connect/connect", |v| {
        v["queryStringParameters"]["channels"] = json!("team:1");
    });
    let r = ws_connect::handle(&t.store, &Retention::default(), bad).await;
    assert_eq!(r.status_code, 400);
    assert!(t.items().await.is_empty());
}

#[tokio::test]
async fn frames_without_a_channel_go_to_the_one_joined_channel_and_nowhere_else() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    // No channel joined yet (user:alice is no conversation): refused, with what to do.
    let r = run(&t, "ws-message/message-without-action").await;
    assert_eq!(error_code(&r), "no_default_channel");
    assert!(t.partition("CHAN#workspace:42").await.is_empty());

    run(&t, "ws-message/join").await;
    let ack = body(&run(&t, "ws-message/message-without-action").await);
    assert_eq!(ack["channel"], "workspace:42", "{ack}");
    let message_id = ack["messageId"].as_str().unwrap().to_owned();
    let stored = t.message("CHAN#workspace:42", &message_id).await.unwrap();
    assert_eq!(s(&stored, "body"), "Hello!");

    let frame = |body: Value| {
        as_caller(
            "ws-message/message-without-action",
            CONN,
            fixture::<Value>("ws-message/message-without-action")["requestContext"]["authorizer"].clone(),
            Some(body),
        )
    };
    let r = body(
        &message(
            &t,
            frame(json!({"type": "reaction", "emoji": "❤️", "message_id": message_id})),
        )
        .await,
    );
    assert_eq!(
        (r["type"].as_str(), r["action"].as_str()),
        (Some("ack"), Some("react")),
        "{r}"
    );
    let r = message(&t, frame(json!({"type": "reaction", "emoji": "❤️", "message_id": 123}))).await;
    assert_eq!(error_code(&r), "invalid_field");
    let r = body(&message(&t, frame(json!({"action": "presence"}))).await);
    assert_eq!(
        r,
        json!({"type": "present", "channel": "workspace:42", "present": ["alice"]})
    );
    let r = message(&t, frame(json!({"action": "typing"}))).await;
    assert!(r.body.is_none(), "typing answers nothing");

    // A second channel makes a frame without one ambiguous; leaving it makes it plain again.
    let r = body(&message(&t, frame(json!({"action": "join", "channel": "session:s1"}))).await);
    assert_eq!(r["type"], "joined");
    let r = message(&t, frame(json!({"body": "to whom?"}))).await;
    assert_eq!(error_code(&r), "no_default_channel");
    assert!(body(&r)["message"]
        .as_str()
        .unwrap()
        .contains("session:s1, workspace:42"));
    // Subscribing to a document adds no conversation.
    body(&message(&t, frame(json!({"action": "leave", "channel": "session:s1"}))).await);
    body(&message(&t, frame(json!({"action": "subscribe", "docId": "report-1"}))).await);
    let r = body(&message(&t, frame(json!({"body": "back to one"}))).await);
    assert_eq!(r["channel"], "workspace:42", "{r}");
}

#[tokio::test]
async fn connect_of_an_anonymous_listener_writes_only_the_connection() {
    let t = TestTable::new().await;
    assert_eq!(connect(&t, "ws-connect/connect-anonymous").await.status_code, 200);
    let items = t.items().await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(s(&items[0], "role"), "listener");
    assert!(!items[0].contains_key("userId"));
}

#[tokio::test]
async fn connect_without_authorizer_context_is_refused_and_writes_nothing() {
    let t = TestTable::new().await;
    assert_eq!(
        connect(&t, "ws-connect/connect-without-authorizer").await.status_code,
        403
    );
    assert!(t.items().await.is_empty());
}

/// A context with a user id that cannot name `user:<sub>` (not one our authorizer makes) is refused
/// rather than connected without its personal channel.
#[tokio::test]
async fn connect_with_a_bad_user_id_is_refused_and_writes_nothing() {
    let t = TestTable::new().await;
    for user in ["a#b", &"x".repeat(1100)] {
        let e = event("ws-connect/connect", |v| {
            v["requestContext"]["authorizer"]["userId"] = json!(user)
        });
        assert_eq!(connect_event(&t, e).await.status_code, 403, "{user:?}");
        let connection = Connection {
            connection_id: CONN.into(),
            user_id: Some(user.to_owned()),
            role: wsfan_shared::access::Role::Member,
            channels: vec![],
            connected_at: 1,
            source_ip: None,
            domain_name: None,
            stage: None,
            expires_at: 2,
            joined: vec![],
            history: None,
            batch: false,
            token_exp: None,
        };
        assert!(
            matches!(
                t.store.connect(&connection, &[]).await,
                Err(StoreError::InvalidUserId(_))
            ),
            "{user:?}"
        );
    }
    assert!(t.items().await.is_empty());
}

#[tokio::test]
async fn connect_fails_loudly_when_the_write_fails() {
    let t = TestTable::new().await;
    let broken = DynamoStore::new(t.client.clone(), "no-such-table", Retention::default());
    let r = ws_connect::handle(&broken, &Retention::default(), ws("ws-connect/connect")).await;
    assert_eq!(r.status_code, 500);
}

/// DynamoDB that accepts connections and never answers: the handler gets a clear timeout error
/// from the store within its operation timeout, instead of hanging until Lambda kills it.
#[tokio::test]
async fn a_silent_store_gives_a_timeout_error_not_a_hung_handler() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    let sdk = wsfan_local::moto::sdk_config(&endpoint).await;
    let client = wsfan_shared::store::client_with_timeout(&sdk, std::time::Duration::from_millis(300));
    let store = DynamoStore::new(client, "silent", Retention::default());
    // A bound so that a missing timeout fails this test instead of hanging it.
    let bound = std::time::Duration::from_secs(60);
    let outcome = tokio::time::timeout(bound, store.connection(CONN))
        .await
        .expect("the store timed out by itself");
    match outcome {
        Err(StoreError::Timeout(why)) => assert!(why.contains("timeout"), "{why}"),
        other => panic!("expected a timeout error, got {other:?}"),
    }
    let r = tokio::time::timeout(
        bound,
        ws_connect::handle(&store, &Retention::default(), ws("ws-connect/connect")),
    )
    .await
    .expect("ws-connect answered by itself");
    assert_eq!(r.status_code, 500);
    assert!(
        accepted.load(Ordering::SeqCst) >= 2,
        "the requests reached the silent server"
    );
}

#[tokio::test]
async fn connect_answers_with_the_subprotocol_it_was_offered() {
    let t = TestTable::new().await;
    let protocol = |r: &ApiGatewayProxyResponse| {
        r.headers
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let r = connect(&t, "ws-connect/connect-subprotocol").await;
    assert_eq!(r.status_code, 200);
    // The version only: the bearer entry (the token) is never echoed.
    assert_eq!(protocol(&r).as_deref(), Some("wsfan.v1"));
    assert!(t.item(&format!("CONN#{CONN}"), "META").await.is_some());
    // No offer (a client with ?token=): no subprotocol in the answer.
    let r = connect(&t, "ws-connect/connect").await;
    assert_eq!((r.status_code, protocol(&r)), (200, None));
    // An offer without ours would fail in the browser with no reason; it is refused with one.
    let t = TestTable::new().await;
    let r = connect_event(
        &t,
        event("ws-connect/connect", |v| {
            v["headers"]["Sec-WebSocket-Protocol"] = json!("graphql-ws");
            v["multiValueHeaders"]["Sec-WebSocket-Protocol"] = json!(["graphql-ws"]);
        }),
    )
    .await;
    assert_eq!(r.status_code, 400);
    assert!(t.items().await.is_empty());
}

// ---------- ws-disconnect ----------

#[tokio::test]
async fn disconnect_removes_the_connection_and_every_membership_idempotently() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    assert_eq!(body(&run(&t, "ws-message/join").await)["type"], "joined");
    assert_eq!(body(&run(&t, "ws-message/subscribe").await)["type"], "subscribed");
    // Another connection in the same channel must survive.
    let other = as_caller(
        "ws-message/join",
        "OtherConn000AA=",
        json!({"userId": "bob", "role": "member", "channels": "workspace:42"}),
        None,
    );
    let mut bob_connect = ws("ws-connect/connect");
    bob_connect.request_context.connection_id = Some("OtherConn000AA=".into());
    bob_connect.request_context.authorizer = other.request_context.authorizer.clone();
    ws_connect::handle(&t.store, &Retention::default(), bob_connect).await;
    message(&t, other).await;
    assert_eq!(t.store.memberships_of(CONN).await.unwrap().len(), 3);

    for _ in 0..2 {
        let r = ws_disconnect::handle(&t.store, ws("ws-disconnect/disconnect"), invocation_deadline()).await;
        assert_eq!(r.status_code, 200);
    }
    let items = t.items().await;
    assert!(
        items
            .iter()
            .all(|i| !s(i, "pk").contains(CONN) && !s(i, "sk").contains(CONN)),
        "nothing of the connection is left: {items:?}"
    );
    assert!(t.item("CHAN#workspace:42", "CONN#OtherConn000AA=").await.is_some());
    let alice = t.item("CHAN#workspace:42", "USER#alice").await.unwrap();
    assert!(string_set(&alice, "connections").is_empty(), "alice's presence is gone");
    let bob = t.item("CHAN#workspace:42", "USER#bob").await.unwrap();
    assert_eq!(string_set(&bob, "connections"), vec!["OtherConn000AA=".to_owned()]);
}

#[tokio::test]
async fn disconnect_of_an_unknown_connection_succeeds_quietly() {
    let t = TestTable::new().await;
    let r = ws_disconnect::handle(&t.store, ws("ws-disconnect/disconnect"), invocation_deadline()).await;
    assert_eq!(r.status_code, 200);
    assert!(t.items().await.is_empty());
}

// ---------- ws-message: writes ----------

#[tokio::test]
async fn join_and_leave_write_and_delete_the_membership() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    let r = body(&run(&t, "ws-message/join").await);
    assert_eq!(
        r,
        json!({"type": "joined", "channel": "workspace:42", "head": 0, "present": ["alice"], "reads": {}})
    );
    let m = t
        .item("CHAN#workspace:42", &format!("CONN#{CONN}"))
        .await
        .expect("membership");
    assert_eq!(s(&m, "userId"), "alice");
    assert_eq!(s(&m, "role"), "member");
    assert!(n(&m, "joinedAt") > 0);
    assert_eq!(n(&m, "expiresAt"), 1_795_305_600 + Retention::default().connection_secs);

    let r = body(&run(&t, "ws-message/leave").await);
    assert_eq!(r, json!({"type": "left", "channel": "workspace:42", "wasMember": true}));
    assert!(t.item("CHAN#workspace:42", &format!("CONN#{CONN}")).await.is_none());
    let r = body(&run(&t, "ws-message/leave").await);
    assert_eq!(r["wasMember"], false);
}

#[tokio::test]
async fn join_after_disconnect_is_refused() {
    let t = TestTable::new().await;
    assert_eq!(error_code(&run(&t, "ws-message/join").await), "not_connected");
    assert!(t.items().await.is_empty(), "no orphan membership");
}

#[tokio::test]
async fn send_writes_one_message_and_a_retry_does_not_duplicate_it() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    run(&t, "ws-message/join").await;
    let first = body(&run(&t, "ws-message/send-message").await);
    assert_eq!(first["type"], "ack");
    assert_eq!(first["action"], "sendMessage");
    assert_eq!(first["clientMsgId"], "c-7f3a");
    assert_eq!(first["duplicate"], false);
    let id = first["messageId"].as_str().unwrap().to_owned();
    assert!(ulid::Ulid::from_string(&id).is_ok());

    let item = t.message("CHAN#workspace:42", &id).await.expect("message item");
    assert_eq!(s(&item, "kind"), "message");
    assert_eq!(s(&item, "body"), "Hello, team!");
    assert_eq!(s(&item, "senderId"), "alice");
    assert_eq!(s(&item, "clientMsgId"), "c-7f3a");
    assert!(n(&item, "sentAt") > 0 && n(&item, "expiresAt") > n(&item, "sentAt") / 1000);

    let retry = body(&run(&t, "ws-message/send-message").await);
    assert_eq!(retry["messageId"], id.as_str());
    assert_eq!(retry["duplicate"], true);
    let messages = t.partition("CHAN#workspace:42").await;
    assert_eq!(messages.iter().filter(|(sk, _)| sk.starts_with("MSG#")).count(), 1);
}

#[tokio::test]
async fn send_to_a_channel_not_joined_is_refused() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    let before = t.items().await;
    assert_eq!(error_code(&run(&t, "ws-message/send-message").await), "not_member");
    assert_eq!(t.items().await, before);
}

#[tokio::test]
async fn a_connection_id_in_the_body_is_ignored() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    // Someone else's connection is a member; alice's is not.
    let mut other = ws("ws-connect/connect");
    other.request_context.connection_id = Some("SomeoneElse0AA=".into());
    ws_connect::handle(&t.store, &Retention::default(), other).await;
    message(
        &t,
        event("ws-message/join", |v| {
            v["requestContext"]["connectionId"] = json!("SomeoneElse0AA=")
        }),
    )
    .await;
    let before = t.items().await;
    assert_eq!(
        error_code(&run(&t, "ws-message/send-spoofed-connection").await),
        "not_member"
    );
    assert_eq!(t.items().await, before);
}

#[tokio::test]
async fn react_typing_and_read_write_their_items() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    run(&t, "ws-message/join").await;

    let react = body(&run(&t, "ws-message/react").await);
    assert_eq!(react["action"], "react");
    assert_eq!(react["duplicate"], false);
    // A reaction changes its message's summary: no item of its own, no sequence number.
    assert!(react.get("seq").is_none(), "{react}");
    let item = t
        .item("CHAN#workspace:42", "REACT#01JDB2X5Q0E7M3V9K4T8N6R2WA")
        .await
        .expect("the message's reaction summary");
    assert_eq!(string_set(&item, "reactions"), vec!["alice 👍"]);
    assert_eq!(s(&item, "messageId"), react["messageId"].as_str().unwrap());
    assert_eq!(s(&item, "targetId"), "01JDB2X5Q0E7M3V9K4T8N6R2WA");
    assert!(n(&item, "expiresAt") > wsfan_shared::clock::now_secs() + Retention::default().event_secs);
    assert!(
        t.item("CHAN#workspace:42", "HEAD").await.is_none(),
        "the head never moved"
    );
    // The same reaction again (a retry, a double click) counts once and says so.
    let again = body(&run(&t, "ws-message/react").await);
    assert_eq!(again["duplicate"], true, "{again}");
    let item = t
        .item("CHAN#workspace:42", "REACT#01JDB2X5Q0E7M3V9K4T8N6R2WA")
        .await
        .unwrap();
    assert_eq!(string_set(&item, "reactions"), vec!["alice 👍"]);

    let typing = run(&t, "ws-message/typing").await;
    assert_eq!(typing.status_code, 200);
    assert!(typing.body.is_none(), "typing is not acknowledged");
    let read = body(&run(&t, "ws-message/read").await);
    assert_eq!(read["action"], "read");
    // A receipt moves the user's read cursor: one item per user, no sequence number of its own.
    assert_eq!(
        (read["seq"].as_u64(), read["duplicate"].as_bool()),
        (Some(1), Some(false)),
        "{read}"
    );
    let cursor = t
        .item("CHAN#workspace:42", "READ#alice")
        .await
        .expect("alice's read cursor");
    assert_eq!(n(&cursor, "seq"), 1);
    assert_eq!(s(&cursor, "targetId"), "01JDB2X5Q0E7M3V9K4T8N6R2WA");
    assert_eq!(s(&cursor, "messageId"), read["messageId"].as_str().unwrap());
    assert!(
        t.item("CHAN#workspace:42", "HEAD").await.is_none(),
        "the head never moved"
    );
    // The same receipt again, or one for an earlier message, leaves the cursor where it is.
    let again = body(&run(&t, "ws-message/read").await);
    assert_eq!(
        (again["seq"].as_u64(), again["duplicate"].as_bool()),
        (Some(1), Some(true)),
        "{again}"
    );
    let on = json!({"action": "read", "channel": "workspace:42", "messageId": "01JDB2X5Q0E7M3V9K4T8N6R2WB", "seq": 4});
    assert_eq!(ask(&t, &Retention::default(), on).await["seq"], 4);
    let back =
        json!({"action": "read", "channel": "workspace:42", "messageId": "01JDB2X5Q0E7M3V9K4T8N6R2WA", "seq": 2});
    let back = ask(&t, &Retention::default(), back).await;
    assert_eq!(
        (back["seq"].as_u64(), back["duplicate"].as_bool()),
        (Some(4), Some(true)),
        "{back}"
    );
    let cursor = t.item("CHAN#workspace:42", "READ#alice").await.unwrap();
    assert_eq!(n(&cursor, "seq"), 4);
    // Without seq, a message the channel does not have among its latest cannot be placed.
    let unknown = json!({"action": "read", "channel": "workspace:42", "messageId": "01JDB2X5Q0E7M3V9K4T8N6R2WA"});
    let unknown = ask(&t, &Retention::default(), unknown).await;
    assert_eq!(unknown["code"], "invalid_field", "{unknown}");
    assert!(unknown["message"].as_str().unwrap().contains("\"seq\""), "{unknown}");
    assert!(t
        .partition("CHAN#workspace:42")
        .await
        .iter()
        .all(|(sk, _)| !sk.starts_with("MSG#")));

    let events: Vec<_> = t
        .partition("CHAN#workspace:42")
        .await
        .into_iter()
        .filter(|(sk, _)| sk.starts_with("EVT#"))
        .map(|(_, i)| i)
        .collect();
    let kinds: Vec<&str> = events.iter().map(|i| s(i, "kind")).collect();
    assert_eq!(kinds, vec!["typing"]);
    let now = wsfan_shared::clock::now_secs();
    for e in &events {
        // Short-lived: typing expires within minutes, not days, and takes no sequence number.
        assert!(n(e, "expiresAt") <= now + Retention::default().event_secs + 5);
        assert!(!e.contains_key("seq"));
    }
}

#[tokio::test]
async fn subscribe_joins_the_doc_channel_and_returns_the_snapshot() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    for path in ["ws-message/subscribe", "ws-message/progress-subscribe"] {
        let r = body(&run(&t, path).await);
        assert_eq!(
            r,
            json!({"type": "subscribed", "docId": "report-1", "snapshot": null}),
            "{path}"
        );
    }
    assert!(t.item("CHAN#doc:report-1", &format!("CONN#{CONN}")).await.is_some());

    let snapshot = HashMap::from([
        ("pk".to_owned(), AttributeValue::S("DOC#report-1".into())),
        ("sk".to_owned(), AttributeValue::S("PROGRESS".into())),
        ("type".to_owned(), AttributeValue::S("progress".into())),
        ("docId".to_owned(), AttributeValue::S("report-1".into())),
        ("pagesProcessed".to_owned(), AttributeValue::N("50".into())),
        ("totalPages".to_owned(), AttributeValue::N("100".into())),
    ]);
    t.put(snapshot).await;
    let r = body(&run(&t, "ws-message/subscribe").await);
    assert_eq!(
        r["snapshot"],
        json!({"type": "progress", "docId": "report-1", "pagesProcessed": 50, "totalPages": 100})
    );
}

#[tokio::test]
async fn history_pages_back_through_messages_only() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    run(&t, "ws-message/join").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let e = event("ws-message/send-message", |v| {
            v["body"] =
                json!(json!({"action": "sendMessage", "channel": "workspace:42", "body": format!("m{i}")}).to_string())
        });
        ids.push(body(&message(&t, e).await)["messageId"].as_str().unwrap().to_owned());
        run(&t, "ws-message/typing").await; // not history
    }
    let page = body(&run(&t, "ws-message/history").await);
    assert_eq!(page["type"], "history");
    let bodies: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["m1", "m2"], "newest page, oldest first");
    assert_eq!(
        page["before"], 2,
        "the cursor is the oldest sequence number of the page"
    );
    for (m, seq) in page["messages"].as_array().unwrap().iter().zip([2, 3]) {
        assert_eq!(m["type"], "message", "history entries carry their type: {m}");
        assert_eq!(m["seq"], seq);
    }
    assert_eq!(page["messages"][0]["messageId"], ids[1].as_str());
    assert!(
        page.get("complete").is_none(),
        "only recovery says whether it is complete"
    );

    let older = event("ws-message/history", |v| {
        v["body"] = json!(json!({"action": "history", "channel": "workspace:42", "limit": 2, "before": 2}).to_string())
    });
    let page = body(&message(&t, older).await);
    let bodies: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["m0"]);
    assert!(page.get("before").is_none(), "last page has no cursor");
}

/// A route frame from the fixture's caller (alice, a member of workspace:42).
async fn ask(t: &TestTable, retention: &Retention, frame: Value) -> Value {
    let e = event("ws-message/send-message", |v| v["body"] = json!(frame.to_string()));
    let unlimited = DynamoLimiter::new(&t.store, RateLimit::OFF);
    body(&ws_message::handle(&t.store, &unlimited, &revocation_checked(t), retention, e).await)
}

async fn say(t: &TestTable, text: &str) -> Value {
    let frame = json!({"action": "sendMessage", "channel": "workspace:42", "body": text});
    ask(t, &Retention::default(), frame).await
}

async fn recover(t: &TestTable, after: u64, limit: u32) -> Value {
    let frame = json!({"action": "history", "channel": "workspace:42", "after": after, "limit": limit});
    ask(t, &Retention::default(), frame).await
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn recovery_returns_everything_after_a_point_oldest_first_paged_and_typed() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    let joined = body(&run(&t, "ws-message/join").await);
    assert_eq!(joined["head"], 0, "an empty channel's head");
    let mut ids = Vec::new();
    for i in 1..=6 {
        let ack = say(&t, &format!("m{i}")).await;
        assert_eq!(ack["seq"], i, "{ack}");
        ids.push(ack["messageId"].as_str().unwrap().to_owned());
    }
    // Typing is not history: it takes no number and is never recovered.
    run(&t, "ws-message/typing").await;
    // A reaction takes no number either: it comes back as its message's summary.
    let react = json!({"action": "react", "channel": "workspace:42", "messageId": ids[3], "emoji": "👍"});
    let react = ask(&t, &Retention::default(), react).await;
    assert_eq!(react["action"], "react", "{react}");
    assert!(react.get("seq").is_none(), "{react}");
    // Nor does a receipt: it moves alice's cursor, which joined and recovery carry. Without seq
    // the message is found among the latest.
    let read = json!({"action": "read", "channel": "workspace:42", "messageId": ids[4]});
    let read = ask(&t, &Retention::default(), read).await;
    assert_eq!(
        (read["seq"].as_u64(), read["duplicate"].as_bool()),
        (Some(5), Some(false)),
        "{read}"
    );
    let again = body(&run(&t, "ws-message/join").await);
    assert_eq!(again["head"], 6, "a rejoin learns where the channel is");
    assert_eq!(again["reads"], json!({"alice": 5}));

    // The client saw up to m2: pages of 2 bring back 3..6, oldest first, each typed.
    let first = recover(&t, 2, 2).await;
    assert_eq!(first["type"], "history");
    assert_eq!(seqs(&first), vec![3, 4]);
    assert_eq!(first["complete"], true);
    assert_eq!(first["after"], 4, "the cursor for the next page");
    assert_eq!(first["reads"], json!({"alice": 5}), "recovery carries the read cursors");
    assert_eq!(first["messages"][0]["messageId"], ids[2].as_str());
    assert_eq!(first["messages"][0]["body"], "m3");
    assert!(first["messages"][0].get("reactions").is_none(), "{first}");
    assert_eq!(
        first["messages"][1]["reactions"],
        json!({"👍": {"count": 1, "users": ["alice"]}}),
        "m4 comes back with its reactions"
    );
    let last = recover(&t, 4, 2).await;
    assert_eq!(seqs(&last), vec![5, 6]);
    assert!(
        last.get("after").is_none(),
        "the newest page has no next cursor: {last}"
    );
    assert_eq!(last["complete"], true);
    let types: Vec<&str> = [&first, &last]
        .iter()
        .flat_map(|p| p["messages"].as_array().unwrap().iter())
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["message"; 4]);
    // A page that is not recovery has no cursors.
    let latest = ask(
        &t,
        &Retention::default(),
        json!({"action": "history", "channel": "workspace:42"}),
    )
    .await;
    assert!(latest.get("reads").is_none(), "{latest}");

    // Up to date: nothing to recover, and that is complete.
    let none = recover(&t, 6, 50).await;
    assert_eq!(seqs(&none), Vec::<u64>::new());
    assert_eq!(none["complete"], true);
    // A retried send takes no new number and answers with the first one's.
    let frame = json!({"action": "sendMessage", "channel": "workspace:42", "body": "x", "clientMsgId": "once"});
    let sent = ask(&t, &Retention::default(), frame.clone()).await;
    let retried = ask(&t, &Retention::default(), frame).await;
    assert_eq!((sent["seq"].as_u64(), retried["seq"].as_u64()), (Some(7), Some(7)));
    assert_eq!(retried["duplicate"], true);
    assert_eq!(seqs(&recover(&t, 6, 50).await), vec![7]);
}

#[tokio::test]
async fn recovery_from_an_expired_or_unknown_point_is_incomplete() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    run(&t, "ws-message/join").await;
    // Two messages already past their retention (the TTL sweep has not run yet), then two kept.
    let expired = Retention {
        message_secs: 0,
        ..Retention::default()
    };
    for text in ["old 1", "old 2"] {
        let frame = json!({"action": "sendMessage", "channel": "workspace:42", "body": text});
        assert_eq!(ask(&t, &expired, frame).await["type"], "ack");
    }
    say(&t, "kept 3").await;
    say(&t, "kept 4").await;

    let from_start = recover(&t, 0, 50).await;
    assert_eq!(from_start["complete"], false, "1 and 2 are gone: {from_start}");
    assert_eq!(seqs(&from_start), vec![3, 4], "what is left still comes back");
    let from_one = recover(&t, 1, 50).await;
    assert_eq!(from_one["complete"], false);
    let from_two = recover(&t, 2, 50).await;
    assert_eq!(from_two["complete"], true, "nothing after 2 is missing");
    assert_eq!(seqs(&from_two), vec![3, 4]);

    // The TTL sweep removed message 3: a client that saw 2 can no longer recover exactly.
    t.client
        .delete_item()
        .table_name(&t.name)
        .key("pk", AttributeValue::S("CHAN#workspace:42".into()))
        .key("sk", AttributeValue::S("MSG#00000000000000000003".into()))
        .send()
        .await
        .unwrap();
    let after_sweep = recover(&t, 2, 50).await;
    assert_eq!(after_sweep["complete"], false, "{after_sweep}");
    assert_eq!(seqs(&after_sweep), vec![4]);
    assert_eq!(recover(&t, 3, 50).await["complete"], true);

    // A point the channel never reached (another channel's number, a reset store) is unknown.
    let unknown = recover(&t, 99, 50).await;
    assert_eq!(unknown["complete"], false, "{unknown}");
    assert_eq!(seqs(&unknown), Vec::<u64>::new());
}

#[tokio::test]
async fn history_refuses_fields_it_does_not_know_instead_of_ignoring_them() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    run(&t, "ws-message/join").await;
    let id = say(&t, "m1").await["messageId"].as_str().unwrap().to_owned();
    let cases = [
        (json!({"since": 1}), "since"),
        (json!({"after": id}), "after"),
        (json!({"before": id}), "before"),
        (json!({"after": -1}), "after"),
        (json!({"after": 1, "before": 3}), "after"),
        (json!({"cursor": "x"}), "cursor"),
    ];
    for (extra, field) in cases {
        let mut frame = json!({"action": "history", "channel": "workspace:42"});
        frame
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let e = event("ws-message/history", |v| v["body"] = json!(frame.to_string()));
        let answer = message(&t, e).await;
        assert_eq!(error_code(&answer), "invalid_field", "{frame}");
        let text = body(&answer)["message"].as_str().unwrap().to_owned();
        assert!(text.contains(&format!("\"{field}\"")), "{frame}: {text}");
    }
}

#[tokio::test]
async fn ping_answers_pong_and_legacy_register_joins_the_session() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    let pong = body(&run(&t, "ws-message/ping").await);
    assert_eq!(pong["type"], "pong");
    assert!(pong["at"].as_i64().unwrap() > 0);

    let r = body(&run(&t, "ws-message/legacy-register").await);
    assert_eq!(
        r,
        json!({"type": "joined", "channel": "session:s-2026-abc", "head": 0, "present": ["alice"], "reads": {}})
    );
    assert!(t
        .item("CHAN#session:s-2026-abc", &format!("CONN#{CONN}"))
        .await
        .is_some());
}

// ---------- ws-message: bad input ----------

#[tokio::test]
async fn bad_input_gets_an_error_frame_and_leaves_the_table_untouched() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    let before = t.items().await;
    for (path, code) in [
        ("bad-json", "bad_json"),
        ("unknown-action", "unknown_action"),
        ("missing-field", "missing_field"),
        ("invalid-channel", "invalid_channel"),
        ("too-large", "too_large"),
        ("forbidden-channel", "forbidden"),
    ] {
        assert_eq!(
            error_code(&run(&t, &format!("ws-message/{path}")).await),
            code,
            "{path}"
        );
    }
    assert_eq!(t.items().await, before);
}

#[tokio::test]
async fn every_fixture_is_covered_by_a_test_here() {
    harness::assert_every_fixture_named_in(
        "tests/handlers.rs",
        include_str!("handlers.rs"),
        &["ws-authorizer", "ws-connect", "ws-disconnect", "ws-message"],
    );
}

// ---------- ws-message: the limit per connection ----------

#[tokio::test]
async fn the_limit_per_connection_is_shared_by_every_environment_and_leaves_others_alone() {
    use wsfan_shared::limiter::FrameLimiter;
    use wsfan_shared::rate::Verdict;
    let t = TestTable::new().await;
    let limit = RateLimit {
        per_second: 10,
        burst: 4,
    };
    // Two execution environments of ws-message: two limiters, one table.
    let (one, two) = (DynamoLimiter::new(&t.store, limit), DynamoLimiter::new(&t.store, limit));
    let now = 1_800_000_000_000_000;
    let mut admitted = 0;
    for i in 0..8 {
        let env = if i % 2 == 0 { &one } else { &two };
        if let Verdict::Admit { .. } = env.admit("flooder", now).await.unwrap() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4, "the burst, once, across both environments");
    match two.admit("flooder", now).await.unwrap() {
        Verdict::Limited { retry_after_ms } => assert_eq!(retry_after_ms, 100),
        other => panic!("{other:?}"),
    }
    // Another connection has its own bucket.
    assert!(matches!(one.admit("quiet", now).await.unwrap(), Verdict::Admit { .. }));
    // The retry hint holds: one frame is admitted then, and only one.
    let later = now + 100_000;
    assert!(matches!(
        one.admit("flooder", later).await.unwrap(),
        Verdict::Admit { .. }
    ));
    assert!(matches!(
        two.admit("flooder", later).await.unwrap(),
        Verdict::Limited { .. }
    ));
    // The state is one item per connection, out of every stream filter's way.
    let item = t.item("CONN#flooder", "RATE").await.expect("the bucket's item");
    assert!(n(&item, "expiresAt") > later / 1_000_000);
}

#[tokio::test]
async fn a_frame_over_the_limit_gets_rate_limited_and_changes_nothing() {
    let t = TestTable::new().await;
    connect(&t, "ws-connect/connect").await;
    let limiter = DynamoLimiter::new(
        &t.store,
        RateLimit {
            per_second: 1,
            burst: 2,
        },
    );
    let join = || {
        event("ws-message/send-message", |v| {
            v["body"] = json!(json!({"action": "join", "channel": "workspace:42"}).to_string());
        })
    };
    for i in 0..2 {
        let r = ws_message::handle(
            &t.store,
            &limiter,
            &revocation_checked(&t),
            &Retention::default(),
            join(),
        )
        .await;
        assert_eq!(body(&r)["type"], "joined", "{i}");
    }
    let before = t.items().await;
    let leave = event("ws-message/send-message", |v| {
        v["body"] = json!(json!({"action": "leave", "channel": "workspace:42"}).to_string());
    });
    let r = ws_message::handle(
        &t.store,
        &limiter,
        &revocation_checked(&t),
        &Retention::default(),
        leave,
    )
    .await;
    assert_eq!(error_code(&r), "rate_limited");
    let retry = body(&r)["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!((1..=1000).contains(&retry), "{retry}");
    assert_eq!(t.items().await, before, "a refused frame writes nothing");
}

// ---------- authorization matrix ----------

#[derive(Clone, Copy, Debug)]
enum Caller {
    Owner,
    OtherUser,
    Listener,
    Anonymous,
}

impl Caller {
    fn authorizer(self) -> Value {
        match self {
            Caller::Owner => json!({"userId": "alice", "role": "member", "channels": "workspace:42,doc:report-1"}),
            Caller::OtherUser => json!({"userId": "bob", "role": "member", "channels": "workspace:42,doc:report-1"}),
            Caller::Listener => json!({"userId": "lena", "role": "listener", "channels": "workspace:42,doc:report-1"}),
            Caller::Anonymous => json!({"role": "listener", "channels": "workspace:42,doc:report-1"}),
        }
    }

    /// A channel this caller's token does not cover. For the other user, that is alice's own
    /// personal channel, which no pattern of bob's can open.
    fn forbidden_channel(self) -> &'static str {
        match self {
            Caller::OtherUser => "user:alice",
            _ => "workspace:99",
        }
    }
}

#[tokio::test]
async fn authorization_matrix() {
    use Caller::*;
    let t = TestTable::new().await;
    // (caller, action, allowed channel?, expected: "ok" or the error code)
    let expectations = [
        (Owner, "join", true, "ok"),
        (Owner, "send", true, "ok"),
        (Owner, "subscribe", true, "ok"),
        (Owner, "join", false, "forbidden"),
        (Owner, "send", false, "forbidden"),
        (Owner, "subscribe", false, "forbidden"),
        (OtherUser, "join", true, "ok"),
        (OtherUser, "send", true, "ok"),
        (OtherUser, "subscribe", true, "ok"),
        (OtherUser, "join", false, "forbidden"),
        (OtherUser, "send", false, "forbidden"),
        (OtherUser, "subscribe", false, "forbidden"),
        (Listener, "join", true, "ok"),
        (Listener, "send", true, "read_only"),
        (Listener, "subscribe", true, "ok"),
        (Listener, "join", false, "forbidden"),
        (Listener, "send", false, "read_only"),
        (Listener, "subscribe", false, "forbidden"),
        (Anonymous, "join", true, "ok"),
        (Anonymous, "send", true, "read_only"),
        (Anonymous, "subscribe", true, "ok"),
        (Anonymous, "join", false, "forbidden"),
        (Anonymous, "send", false, "read_only"),
        (Anonymous, "subscribe", false, "forbidden"),
    ];
    for (i, (caller, action, allowed, expected)) in expectations.into_iter().enumerate() {
        let connection = format!("Matrix{i:02}Conn0AA=");
        let mut connect_event = ws("ws-connect/connect");
        connect_event.request_context.connection_id = Some(connection.clone());
        connect_event.request_context.authorizer = as_caller("ws-message/join", &connection, caller.authorizer(), None)
            .request_context
            .authorizer;
        assert_eq!(
            ws_connect::handle(&t.store, &Retention::default(), connect_event)
                .await
                .status_code,
            200
        );

        let channel = if allowed {
            "workspace:42"
        } else {
            caller.forbidden_channel()
        };
        let doc = if allowed { "report-1" } else { "report-2" };
        let (fixture_path, frame) = match action {
            "join" => ("ws-message/join", json!({"action": "join", "channel": channel})),
            "send" => (
                "ws-message/send-message",
                json!({"action": "sendMessage", "channel": channel, "body": "hello"}),
            ),
            _ => ("ws-message/subscribe", json!({"action": "subscribe", "docId": doc})),
        };
        if action == "send" {
            // Join first where the caller may, so the send is judged on its own.
            let join = as_caller(
                "ws-message/join",
                &connection,
                caller.authorizer(),
                Some(json!({"action": "join", "channel": channel})),
            );
            message(&t, join).await;
        }
        let before = t.items().await;
        let r = message(
            &t,
            as_caller(fixture_path, &connection, caller.authorizer(), Some(frame)),
        )
        .await;
        let got = body(&r);
        if expected == "ok" {
            assert_ne!(got["type"], "error", "{caller:?} {action} allowed={allowed}: {got}");
            assert_ne!(t.items().await, before, "{caller:?} {action}: an allowed action writes");
        } else {
            assert_eq!(got["code"], expected, "{caller:?} {action} allowed={allowed}: {got}");
            assert_eq!(
                t.items().await,
                before,
                "{caller:?} {action}: a refused action writes nothing"
            );
        }
    }
}

// ---------- refresh and expiry (the store's side) ----------

fn expiring(id: &str, user: &str, exp: i64) -> Connection {
    let now = wsfan_shared::clock::now_secs();
    Connection {
        connection_id: id.into(),
        user_id: Some(user.into()),
        role: wsfan_shared::access::Role::Member,
        channels: vec!["workspace:*".into()],
        connected_at: now * 1000,
        source_ip: None,
        domain_name: None,
        stage: None,
        expires_at: now + 3600,
        joined: Vec::new(),
        history: None,
        batch: false,
        token_exp: Some(exp),
    }
}

/// The sweep finds what expired and nothing else; a refresh moves a connection out of its reach;
/// a claim is taken once; `$disconnect` leaves no bucket behind; the cursor never moves back.
#[tokio::test]
async fn expiry_buckets_are_claimed_once_moved_by_a_refresh_and_removed_with_the_connection() {
    use wsfan_shared::access::{parse_patterns, Identity, Role};
    let t = TestTable::new().await;
    let now = wsfan_shared::clock::now_secs();
    t.store
        .connect(&expiring("gone-1", "ann", now - 90), &[])
        .await
        .unwrap();
    t.store.connect(&expiring("gone-2", "ben", now - 5), &[]).await.unwrap();
    t.store
        .connect(&expiring("later", "cat", now + 600), &[])
        .await
        .unwrap();
    t.store
        .connect(&expiring("refreshed", "dan", now - 5), &[])
        .await
        .unwrap();
    t.store.connect(&expiring("closed", "eve", now - 5), &[]).await.unwrap();

    // dan refreshes (before the sweep gets to him); eve's connection closes.
    let fresh = Identity {
        user_id: Some("dan".into()),
        role: Role::Member,
        channels: parse_patterns("doc:*").unwrap(),
        expires: Some(now + 3600),
    };
    t.store
        .refresh("refreshed", &fresh, now + 3600, Some(now - 5))
        .await
        .unwrap();
    t.store.disconnect("closed").await.unwrap();

    let due = t.store.due_expiries(now).await.unwrap();
    let mut ids: Vec<&str> = due.expired.iter().map(|e| e.connection_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["gone-1", "gone-2"], "{due:?}");
    for e in &due.expired {
        assert!(
            t.store.claim_expiry(e).await.unwrap(),
            "first claim of {}",
            e.connection_id
        );
        assert!(
            !t.store.claim_expiry(e).await.unwrap(),
            "a second sweep skips {}",
            e.connection_id
        );
    }
    // A refresh whose old bucket the sweep took is told so, and changes nothing.
    let late = Identity {
        user_id: Some("ann".into()),
        ..fresh.clone()
    };
    assert!(matches!(
        t.store.refresh("gone-1", &late, now + 3600, Some(now - 90)).await,
        Err(StoreError::TokenClaimed)
    ));
    let ann = t.store.connection("gone-1").await.unwrap().unwrap();
    assert_eq!(ann.token_exp, Some(now - 90), "a refused refresh writes nothing");

    // The refreshed identity is on the connection, and what remains to sweep is only later.
    let dan = t.store.connection("refreshed").await.unwrap().unwrap();
    assert_eq!(
        (dan.token_exp, dan.channels.clone()),
        (Some(now + 3600), vec!["doc:*".to_owned()])
    );
    t.store.advance_sweep(due.next_minute).await.unwrap();
    t.store.advance_sweep(due.next_minute - 5).await.unwrap();
    assert!(t.store.due_expiries(now).await.unwrap().expired.is_empty());
    let due = t.store.due_expiries(now + 3600).await.unwrap();
    let mut ids: Vec<&str> = due.expired.iter().map(|e| e.connection_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["later", "refreshed"]);
    let buckets = t
        .items()
        .await
        .into_iter()
        .filter(|i| s(i, "pk").starts_with("EXP#"))
        .count();
    assert_eq!(
        buckets, 2,
        "eve's went with her connection, the claimed ones with the claims"
    );
}

/// The `auth` fixture: a token of the same user that allows only `doc:*` replaces the
/// connection's identity, and the channel it no longer allows (`workspace:42`, joined) is left
/// and named in the answer. On a table without the connection, the token verifies and the
/// connection is unknown.
#[tokio::test]
async fn auth_narrows_a_connection_to_its_new_token_and_leaves_what_it_no_longer_allows() {
    let t = TestTable::new().await;
    let unknown = body(&run(&t, "ws-message/auth").await);
    assert_eq!(unknown["code"], "not_connected", "{unknown}");

    connect(&t, "ws-connect/connect").await;
    assert_eq!(body(&run(&t, "ws-message/join").await)["type"], "joined");
    let authed = body(&run(&t, "ws-message/auth").await);
    assert_eq!(authed["type"], "authed", "{authed}");
    assert_eq!(authed["channels"], json!(["doc:*"]), "{authed}");
    let left: Vec<&str> = authed["left"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(left.contains(&"workspace:42"), "{authed}");
    assert!(left.iter().all(|c| !c.starts_with("doc:")), "{authed}");
}
