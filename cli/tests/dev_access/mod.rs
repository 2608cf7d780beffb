//! Access for the life of a connection (issue 21), end to end through `wsfan dev` with real
//! WebSocket clients: the token in `Sec-WebSocket-Protocol`, the limit per connection,
//! revocation, refresh and expiry. A module of dev.rs, so that it shares its `Stack` and `Client`.

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::{Client, Stack};

impl Client {
    /// Connects with the token in the subprotocol offer (`wsfan.v1, bearer.<token>`), as the JS
    /// client does; returns the subprotocol the server chose, too.
    async fn connect_offering(
        url: &str,
        protocols: &str,
    ) -> Result<(Client, Option<String>), tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_str(protocols).unwrap());
        let (socket, response) = tokio_tungstenite::connect_async(request).await?;
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        Ok((
            Client {
                socket,
                inbox: Vec::new(),
                seen: Vec::new(),
            },
            chosen,
        ))
    }

    /// Writes `count` pings at once, none waiting for an answer: a flood.
    async fn flood_pings(&mut self, count: usize) {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        for i in 0..count {
            let frame = json!({"action": "ping", "n": i}).to_string();
            self.socket.send(Message::Text(frame.into())).await.unwrap();
        }
    }

    /// Reads the answers to `count` flooded pings: how many were answered `pong`, and the
    /// `retryAfterMs` of each answered `rate_limited` (any other answer fails the test).
    async fn flood_answers(&mut self, count: usize) -> (usize, Vec<u64>) {
        let (mut pongs, mut limited) = (0, Vec::new());
        while pongs + limited.len() < count {
            let f = self
                .expect("an answer to each flood frame", |f| {
                    f["type"] == "pong" || f["type"] == "error"
                })
                .await;
            if f["type"] == "pong" {
                pongs += 1;
            } else {
                assert_eq!(f["code"], "rate_limited", "{f}");
                limited.push(f["retryAfterMs"].as_u64().expect("retryAfterMs"));
            }
        }
        (pongs, limited)
    }
}

#[tokio::test]
async fn the_token_in_the_subprotocol_offer_connects_and_the_server_chooses_wsfan_v1() {
    let stack = Stack::start(&[]);
    let token = stack.token("alice");
    let offer = format!("wsfan.v1, bearer.{token}");
    let (mut alice, chosen) = Client::connect_offering(&stack.ws, &offer).await.expect("connecting");
    // Without `wsfan.v1` in the answer the client (tungstenite here, a browser alike) fails the
    // handshake: the gateway passes $connect's choice on as API Gateway does.
    assert_eq!(chosen.as_deref(), Some("wsfan.v1"));
    alice.join("workspace:1").await;
    let mut bob = stack.client("bob").await;
    bob.join("workspace:1").await;
    let ack = alice
        .ask(
            json!({"action": "sendMessage", "channel": "workspace:1", "body": "hi"}),
            "ack",
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = bob.expect("alice's message", |f| f["type"] == "message").await;
    assert_eq!(got["senderId"], "alice");

    // A forged token in the offer is refused at the upgrade, like one in the URL.
    let forged = format!("wsfan.v1, bearer.{}x", stack.token("mallory"));
    let refused = Client::connect_offering(&stack.ws, &forged)
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("403"), "{refused}");
    // An offer without our version is refused with a reason in the log, not by the browser.
    let url = format!("{}?token={}", stack.ws, stack.token("carol"));
    let refused = Client::connect_offering(&url, "graphql-ws")
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("400"), "{refused}");
    // The token never reaches a log line.
    let log = std::fs::read_to_string(&stack.log).unwrap();
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "a token's signature is in the log");
    stack.check_contract(&[&alice, &bob]);
}

#[tokio::test]
async fn a_flooding_connection_gets_rate_limited_with_a_retry_hint_and_others_do_not() {
    use std::time::{Duration, Instant};

    // 5 frames a second, bursts of 10: tight enough that a flood shows in a second or two.
    let stack = Stack::start(&["--rate-limit", "5:10"]);
    let mut flooder = stack.client("mallory").await;
    let mut other = stack.client("alice").await;
    let started = Instant::now();
    const FLOOD: usize = 60;
    flooder.flood_pings(FLOOD).await;
    // Meanwhile the other connection's frames are all answered.
    for _ in 0..3 {
        let pong = other.ask(json!({"action": "ping"}), "pong").await;
        assert_eq!(pong["type"], "pong", "{pong}");
    }
    let (pongs, limited) = flooder.flood_answers(FLOOD).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(!limited.is_empty(), "{pongs} pongs and no refusal in {elapsed:.1} s");
    // The burst, then the rate: never more, whichever environment served a frame.
    assert!(
        pongs as f64 <= 10.0 + 5.0 * elapsed + 1.0,
        "{pongs} admitted in {elapsed:.1} s"
    );
    // At 5 a second a frame is admitted again within 200 ms.
    assert!(limited.iter().all(|ms| (1..=200).contains(ms)), "{limited:?}");
    // The hint is checked on a refusal that nothing was admitted after: a flood frame admitted
    // after the flood's last refusal takes the refill that refusal's hint points to. Pings one
    // at a time outrun 5 a second against a bucket the flood left all but empty, so one is
    // refused within a few.
    let mut hint = None;
    for _ in 0..20 {
        let answer = flooder.ask(json!({"action": "ping"}), "pong").await;
        if answer["code"] == "rate_limited" {
            hint = answer["retryAfterMs"].as_u64();
            break;
        }
        assert_eq!(answer["type"], "pong", "{answer}");
    }
    let hint = hint.expect("20 pings one at a time, and none refused at 5 a second");
    assert!((1..=200).contains(&hint), "{hint}");
    tokio::time::sleep(Duration::from_millis(hint)).await;
    let pong = flooder.ask(json!({"action": "ping"}), "pong").await;
    assert_eq!(pong["type"], "pong", "after the wait the frame is admitted: {pong}");
    stack.check_contract(&[&flooder, &other]);
}

#[tokio::test]
async fn a_connection_s_frames_run_at_once_as_api_gateway_runs_them_so_a_flood_meets_the_default_limit() {
    // The template's limit (25 a second, bursts of 50). Every DynamoDB call takes 100 ms, so a
    // gateway that ran a connection's frames one after another would pass at most 10 a second,
    // under the limit, and no flood would ever be refused. API Gateway invokes the integration for
    // each frame as it arrives; with room to scale out, 100 frames at once are over the burst.
    let stack = Stack::start(&["--inject", "ddb-latency=100ms", "--concurrency", "32"]);
    let mut flooder = stack.client("mallory").await;
    const FLOOD: usize = 100;
    flooder.flood_pings(FLOOD).await;
    let (pongs, limited) = flooder.flood_answers(FLOOD).await;
    assert!(
        !limited.is_empty(),
        "{pongs} pongs and no refusal: the frames ran one after another"
    );
    stack.check_contract(&[&flooder]);
}

impl Stack {
    /// `wsfan revoke` against this stack; its JSON answer.
    fn revoke(&self, args: &[&str]) -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsfan"))
            .arg("revoke")
            .args(args)
            .args(["--endpoint-url", &self.moto, "--table", &self.table])
            .args(["--connections-url", &format!("{}local", self.http)])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("revoke prints JSON")
    }

    async fn memberships_of(&self, channel: &str) -> Vec<String> {
        let client = aws_sdk_dynamodb::Client::new(&self.sdk().await);
        let out = client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :conn)")
            .expression_attribute_values(
                ":pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("CHAN#{channel}")),
            )
            .expression_attribute_values(":conn", aws_sdk_dynamodb::types::AttributeValue::S("CONN#".into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        out.items()
            .iter()
            .filter_map(|i| i.get("userId")?.as_s().ok().cloned())
            .collect()
    }
}

impl Client {
    /// Waits for `user`'s presence leave of `channel`, and checks that no membership of theirs
    /// is left in it.
    async fn sees_leave(&mut self, stack: &Stack, user: &str, channel: &str) {
        let leave = self
            .expect("a leave", |f| {
                f["type"] == "presence" && f["userId"] == user && f["state"] == "leave"
            })
            .await;
        assert_eq!(leave["channel"], channel);
        assert!(!stack.memberships_of(channel).await.contains(&user.to_owned()));
    }

    /// Waits for the server to close this socket; its close code and reason.
    async fn closed(&mut self) -> (u16, String) {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = std::time::Instant::now() + super::WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match tokio::time::timeout(left, self.socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string()))
                }
                Ok(Some(Ok(Message::Text(t)))) => self.seen.push(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Some(Ok(_))) => {}
                Ok(None) | Ok(Some(Err(_))) => return (1006, String::new()),
                Err(_) => panic!("the socket was not closed within {:?}", super::WAIT),
            }
        }
    }
}

#[tokio::test]
async fn revoking_a_user_closes_every_device_and_refuses_their_old_tokens() {
    let stack = Stack::start(&[]);
    let old = stack.token("alice");
    let offer = format!("wsfan.v1, bearer.{old}");
    let mut devices = Vec::new();
    for _ in 0..2 {
        devices.push(Client::connect_offering(&stack.ws, &offer).await.unwrap().0);
    }
    devices.push(
        super::Client::connect(&format!("{}?token={old}", stack.ws))
            .await
            .unwrap(),
    );
    for d in &mut devices {
        d.join("workspace:1").await;
    }
    let mut bob = stack.client("bob").await;
    bob.join("workspace:1").await;
    assert_eq!(
        stack
            .memberships_of("workspace:1")
            .await
            .iter()
            .filter(|u| *u == "alice")
            .count(),
        3
    );

    let started = std::time::Instant::now();
    let answer = stack.revoke(&["--user", "alice"]);
    assert_eq!(answer["closed"].as_array().map(Vec::len), Some(3), "{answer}");
    for d in &mut devices {
        d.closed().await;
    }
    eprintln!(
        "revoke closed 3 connections in {:?} (to the last close seen)",
        started.elapsed()
    );
    bob.sees_leave(&stack, "alice", "workspace:1").await;

    // The old token is refused, by header and by URL.
    let refused = Client::connect_offering(&stack.ws, &offer)
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("403"), "{refused}");
    assert!(super::Client::connect(&format!("{}?token={old}", stack.ws))
        .await
        .is_err());
    // A token issued after the revocation connects (iat is in seconds: a second later).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (mut alice, _) = Client::connect_offering(&stack.ws, &format!("wsfan.v1, bearer.{}", stack.token("alice")))
        .await
        .expect("a new token connects");
    alice.join("workspace:1").await;

    // Out of one channel only: the membership goes, the connection stays.
    let answer = stack.revoke(&["--user", "bob", "--channel", "workspace:1"]);
    assert_eq!(answer["membershipsRemoved"], 1, "{answer}");
    alice
        .expect("bob's leave", |f| {
            f["type"] == "presence" && f["userId"] == "bob" && f["state"] == "leave"
        })
        .await;
    assert!(!stack.memberships_of("workspace:1").await.contains(&"bob".to_owned()));
    let pong = bob.ask(json!({"action": "ping"}), "pong").await;
    assert_eq!(pong["type"], "pong");
    stack.check_contract(&[&bob, &alice]);
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_another_of_the_same_user_is_not() {
    let stack = Stack::start(&[]);
    let (stolen, other) = (stack.token("carol"), stack.token("carol"));
    let _before = super::Client::connect(&format!("{}?token={stolen}", stack.ws))
        .await
        .unwrap();
    let answer = stack.revoke(&["--token", &stolen]);
    assert!(answer["revokedJti"].is_string(), "{answer}");
    assert!(super::Client::connect(&format!("{}?token={stolen}", stack.ws))
        .await
        .is_err());
    let mut fine = super::Client::connect(&format!("{}?token={other}", stack.ws))
        .await
        .expect("another token of carol's");
    let pong = fine.ask(json!({"action": "ping"}), "pong").await;
    assert_eq!(pong["type"], "pong");
}

impl Stack {
    /// A token for `sub` that expires at `exp` (epoch seconds).
    fn token_until(&self, sub: &str, channels: &[&str], exp: i64) -> String {
        wsfan_shared::auth::mint_hs256(
            super::DEV_SECRET,
            &wsfan_shared::auth::Claims {
                sub: sub.into(),
                exp,
                nbf: None,
                channels: channels.iter().map(|c| c.to_string()).collect(),
                role: None,
                aud: None,
                iss: None,
            },
        )
    }
}

impl Stack {
    /// A client whose token expires at `exp`.
    async fn client_until(&self, sub: &str, channels: &[&str], exp: i64) -> super::Client {
        super::Client::connect(&format!("{}?token={}", self.ws, self.token_until(sub, channels, exp)))
            .await
            .expect("connecting")
    }
}

#[tokio::test]
async fn a_refreshed_token_narrows_the_connection_and_leaves_what_it_no_longer_allows() {
    let stack = Stack::start(&[]);
    let mut alice = stack.client("alice").await;
    alice.join("workspace:1").await;
    alice.join("doc:plan").await;
    let mut bob = stack.client("bob").await;
    bob.join("workspace:1").await;

    let exp = wsfan_shared::clock::now_secs() + 900;
    let narrow = stack.token_until("alice", &["doc:*"], exp);
    let authed = alice.ask(json!({"action": "auth", "token": narrow}), "authed").await;
    assert_eq!(authed["type"], "authed", "{authed}");
    assert_eq!(authed["exp"], exp);
    assert_eq!(authed["channels"], json!(["doc:*"]));
    assert_eq!(
        authed["left"],
        json!(["workspace:1"]),
        "only what the new token no longer allows"
    );
    bob.sees_leave(&stack, "alice", "workspace:1").await;
    assert!(stack.memberships_of("doc:plan").await.contains(&"alice".to_owned()));

    // Every later frame acts with the new identity, not the one API Gateway fixed at $connect.
    let refused = alice
        .ask(
            json!({"action": "sendMessage", "channel": "workspace:1", "body": "still here?"}),
            "ack",
        )
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = alice
        .ask(json!({"action": "join", "channel": "workspace:2"}), "joined")
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let ack = alice
        .ask(
            json!({"action": "sendMessage", "channel": "doc:plan", "body": "ok"}),
            "ack",
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // Refused like at $connect, and the connection keeps the identity it has.
    let other_user = stack.token_until("bob", &["workspace:*"], exp);
    let forged = format!("{}x", stack.token_until("alice", &["workspace:*"], exp));
    let revoked = stack.token_until("alice", &["workspace:*"], exp);
    let answer = stack.revoke(&["--token", &revoked]);
    assert!(answer["revokedJti"].is_string(), "{answer}");
    for (what, token) in [
        ("another user's", other_user),
        ("a forged", forged),
        ("a revoked", revoked),
    ] {
        let refused = alice.ask(json!({"action": "auth", "token": token}), "authed").await;
        assert_eq!(refused["code"], "unauthorized", "{what} token: {refused}");
    }
    let refused = alice
        .ask(json!({"action": "join", "channel": "workspace:1"}), "joined")
        .await;
    assert_eq!(refused["code"], "forbidden", "a refused auth widens nothing: {refused}");
    stack.check_contract(&[&alice, &bob]);
}

#[tokio::test]
async fn a_token_that_expires_without_a_refresh_is_told_token_expired_and_closed_and_a_refreshed_one_is_not() {
    // The sweep every half second instead of every minute: the same sweep, sooner.
    let stack = Stack::start(&["--schedule-every-ms", "500"]);
    // 6 s: dave must connect, join and refresh before his first token expires, and on a loaded
    // 2-core machine those invocations can take seconds. He goes first, so that carol's token
    // is the one that runs out.
    let soon = wsfan_shared::clock::now_secs() + 6;
    let channels = ["workspace:*"];
    let mut kept = stack.client_until("dave", &channels, soon).await;
    kept.join("workspace:exp").await;
    let later = wsfan_shared::clock::now_secs() + 600;
    let authed = kept
        .ask(
            json!({"action": "auth", "token": stack.token_until("dave", &channels, later)}),
            "authed",
        )
        .await;
    assert_eq!(authed["exp"], later, "{authed}");
    let mut stale = stack.client_until("carol", &channels, soon).await;
    stale.join("workspace:exp").await;

    let (code, _) = stale.closed().await;
    let closed_at = wsfan_shared::clock::now_secs();
    let told = stale.seen.iter().find(|f| f["code"] == "token_expired");
    assert!(
        told.is_some(),
        "the client is told why before the close ({code}): {:?}",
        stale.seen
    );
    eprintln!("closed {} s after exp (sweep every 0.5 s)", closed_at - soon);
    // Its memberships went with it: the others see carol leave (dave first sees her join).
    let leave = kept
        .expect("carol's leave", |f| {
            f["type"] == "presence" && f["userId"] == "carol" && f["state"] == "leave"
        })
        .await;
    assert_eq!(leave["state"], "leave");
    // The refreshed connection outlives its first token's exp.
    let pong = kept.ask(json!({"action": "ping"}), "pong").await;
    assert_eq!(pong["type"], "pong", "{pong}");
    stack.check_contract(&[&stale, &kept]);
}
