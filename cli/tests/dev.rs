//! `wsfan dev` end to end: the real `wsfan` binary starts the stack (moto, the real Lambda
//! binaries behind an emulated Runtime API, the WebSocket endpoint, @connections, the pollers)
//! on free ports, and real WebSocket clients drive it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use wsfan_shared::auth::{mint_hs256, Claims};

const DEV_SECRET: &str = "wsfan-local-dev-secret";

fn repo() -> PathBuf {
    harness::repo_root()
}

fn require_lambda_binaries() {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_wsfan"))
        .parent()
        .unwrap()
        .to_path_buf();
    for bin in harness::FUNCTIONS {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
            dir.join(bin).display()
        );
    }
}

struct Stack {
    child: Child,
    http: String,
    ws: String,
    moto: String,
    table: String,
    queue: String,
    dlq: String,
}

impl Stack {
    fn start(extra: &[&str]) -> Stack {
        require_lambda_binaries();
        let log = std::env::temp_dir().join(format!("wsfan-dev-{}.log", ulid::Ulid::generate()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsfan"))
            .args(["dev", "--port", "0", "--moto-port", "0", "--verbose", "--repo"])
            .arg(repo())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting wsfan dev");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next().and_then(Result::ok).unwrap_or_default();
        let env = lines.next().and_then(Result::ok).unwrap_or_default();
        let words: Vec<&str> = ready.split_whitespace().collect();
        assert!(
            ready.starts_with("wsfan dev ready:"),
            "wsfan dev did not start; it said {ready:?}; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let field = |name: &str| {
            env.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_default()
                .to_owned()
        };
        Stack {
            http: words[3].to_owned(),
            ws: words[4].to_owned(),
            moto: field("moto"),
            table: field("table"),
            queue: field("queue"),
            dlq: field("dlq"),
            child,
        }
    }

    fn token(&self, sub: &str) -> String {
        mint_hs256(
            DEV_SECRET,
            &Claims {
                sub: sub.into(),
                exp: wsfan_shared::clock::now_secs() + 600,
                nbf: None,
                channels: vec!["workspace:*".into(), "doc:*".into()],
                role: None,
                aud: None,
                iss: None,
            },
        )
    }

    async fn client(&self, sub: &str) -> Client {
        Client::connect(&format!("{}?token={}", self.ws, self.token(sub)))
            .await
            .expect("connecting")
    }

    async fn sdk(&self) -> aws_config::SdkConfig {
        wsfan_local::moto::sdk_config(&self.moto).await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    socket: Socket,
    /// Frames received but not yet asked for.
    inbox: Vec<Value>,
}

const WAIT: Duration = Duration::from_secs(15);

impl Client {
    async fn connect(url: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (socket, _) = tokio_tungstenite::connect_async(url.into_client_request()?).await?;
        Ok(Client {
            socket,
            inbox: Vec::new(),
        })
    }

    async fn send(&mut self, frame: Value) {
        self.socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("sending");
    }

    /// The first frame (already received or arriving within WAIT) that `matches`.
    async fn expect(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.inbox.iter().position(&matches) {
            return self.inbox.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.socket.next()).await;
            match next {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let frame: Value = serde_json::from_str(t.as_str()).expect("frames are JSON");
                    if matches(&frame) {
                        return frame;
                    }
                    self.inbox.push(frame);
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("waiting for {what}: {other:?}; inbox {:?}", self.inbox),
            }
        }
    }

    /// Sends a request frame and waits for the answer of `answer_type`.
    async fn ask(&mut self, frame: Value, answer_type: &str) -> Value {
        self.send(frame).await;
        self.expect(answer_type, |f| f["type"] == answer_type || f["type"] == "error")
            .await
    }

    async fn join(&mut self, channel: &str) {
        let answer = self.ask(json!({"action": "join", "channel": channel}), "joined").await;
        assert_eq!(answer["type"], "joined", "{answer}");
    }
}

fn of_type<'a>(frames: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == kind).collect()
}

#[tokio::test]
async fn two_users_chat_and_see_presence_and_typing_and_a_second_tab_adds_no_join() {
    let stack = Stack::start(&[]);
    let mut bob = stack.client("bob").await;
    bob.join("workspace:demo").await;
    let mut alice = stack.client("alice").await;
    let joined = alice
        .ask(json!({"action": "join", "channel": "workspace:demo"}), "joined")
        .await;
    assert_eq!(
        joined["present"],
        json!(["alice", "bob"]),
        "a newcomer learns who is already there"
    );

    let join = bob.expect("alice's presence", |f| f["type"] == "presence").await;
    assert_eq!(
        join,
        json!({"type": "presence", "channel": "workspace:demo", "userId": "alice", "state": "join"})
    );

    let ack = alice
        .ask(
            json!({"action": "sendMessage", "channel": "workspace:demo", "body": "hi bob", "clientMsgId": "m1"}),
            "ack",
        )
        .await;
    assert_eq!(ack["duplicate"], false);
    let got = bob.expect("alice's message", |f| f["type"] == "message").await;
    assert_eq!(got["body"], "hi bob");
    assert_eq!(got["senderId"], "alice");
    assert_eq!(got["messageId"], ack["messageId"]);

    bob.send(json!({"action": "sendMessage", "channel": "workspace:demo", "body": "hi alice"}))
        .await;
    let got = alice
        .expect("bob's message", |f| f["type"] == "message" && f["senderId"] == "bob")
        .await;
    assert_eq!(got["body"], "hi alice");

    alice
        .send(json!({"action": "typing", "channel": "workspace:demo"}))
        .await;
    let typing = bob.expect("alice typing", |f| f["type"] == "typing").await;
    assert_eq!(typing["senderId"], "alice");

    // Alice's second tab joins, then says something: bob sees the message and no second join.
    let mut tab2 = stack.client("alice").await;
    tab2.join("workspace:demo").await;
    tab2.send(json!({"action": "sendMessage", "channel": "workspace:demo", "body": "from tab 2"}))
        .await;
    bob.expect("tab 2's message", |f| f["body"] == "from tab 2").await;
    assert!(
        of_type(&bob.inbox, "presence").is_empty(),
        "no second join: {:?}",
        bob.inbox
    );

    // Closing one tab announces nothing; closing the last announces alice's leave.
    drop(tab2);
    bob.send(json!({"action": "sendMessage", "channel": "workspace:demo", "body": "still there?"}))
        .await;
    bob.expect("own message", |f| f["body"] == "still there?").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.socket.close(None).await.unwrap();
    let leave = bob.expect("alice's leave", |f| f["type"] == "presence").await;
    assert_eq!(leave["state"], "leave");
    assert_eq!(leave["userId"], "alice");
    assert!(
        of_type(&bob.inbox, "presence").is_empty(),
        "exactly one leave: {:?}",
        bob.inbox
    );
}

#[tokio::test]
async fn history_pages_back() {
    let stack = Stack::start(&[]);
    let mut alice = stack.client("alice").await;
    alice.join("workspace:history").await;
    for i in 0..5 {
        let ack = alice
            .ask(
                json!({"action": "sendMessage", "channel": "workspace:history", "body": format!("m{i}")}),
                "ack",
            )
            .await;
        assert_eq!(ack["type"], "ack");
    }
    let page = alice
        .ask(
            json!({"action": "history", "channel": "workspace:history", "limit": 2}),
            "history",
        )
        .await;
    let bodies = |p: &Value| {
        p["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(bodies(&page), vec!["m3", "m4"]);
    let page = alice
        .ask(
            json!({"action": "history", "channel": "workspace:history", "limit": 2, "before": page["before"]}),
            "history",
        )
        .await;
    assert_eq!(bodies(&page), vec!["m1", "m2"]);
    let page = alice
        .ask(
            json!({"action": "history", "channel": "workspace:history", "limit": 2, "before": page["before"]}),
            "history",
        )
        .await;
    assert_eq!(bodies(&page), vec!["m0"]);
    assert!(page.get("before").is_none());
}

#[tokio::test]
async fn wsfan_publish_progress_reaches_subscribers_and_a_late_subscriber_gets_the_snapshot() {
    let stack = Stack::start(&[]);
    let mut sam = stack.client("sam").await;
    let answer = sam
        .ask(json!({"action": "subscribe", "docId": "report-7"}), "subscribed")
        .await;
    assert_eq!(answer["snapshot"], Value::Null);

    let publish = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wsfan"))
            .args(["publish"])
            .args(args)
            .args([
                "--endpoint-url",
                &stack.moto,
                "--queue-url",
                &stack.queue,
                "--doc-id",
                "report-7",
            ])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    publish(&["started", "--total-pages", "10"]);
    sam.expect("started", |f| f["type"] == "processing_started").await;
    publish(&["progress", "--pages-processed", "4", "--total-pages", "10"]);
    let progress = sam.expect("progress", |f| f["type"] == "progress").await;
    assert_eq!(
        progress,
        json!({"type": "progress", "docId": "report-7", "pagesProcessed": 4, "totalPages": 10})
    );

    // The documented subscribe form, late: the snapshot says where the document is.
    let mut late = stack.client("lara").await;
    let answer = late
        .ask(json!({"action": "progress", "docId": "report-7"}), "subscribed")
        .await;
    assert_eq!(answer["snapshot"]["pagesProcessed"], 4);
    publish(&["complete", "--total-pages", "10"]);
    for client in [&mut sam, &mut late] {
        client.expect("complete", |f| f["type"] == "processing_complete").await;
    }
}

#[tokio::test]
async fn a_bad_token_is_refused_at_the_upgrade() {
    let stack = Stack::start(&[]);
    for url in [
        format!("{}?token=not-a-jwt", stack.ws),
        format!(
            "{}?token={}",
            stack.ws,
            mint_hs256(
                "wrong-secret",
                &Claims {
                    sub: "mallory".into(),
                    exp: wsfan_shared::clock::now_secs() + 600,
                    nbf: None,
                    channels: vec!["*".into()],
                    role: Some("admin".into()),
                    aud: None,
                    iss: None,
                }
            )
        ),
        stack.ws.clone(),
    ] {
        match Client::connect(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403, "{url}"),
            Err(other) => panic!("{url}: expected an HTTP refusal, got {other}"),
            Ok(_) => panic!("{url}: the upgrade should have been refused"),
        }
    }
    // Nothing was written for the refused connections.
    let client = aws_sdk_dynamodb::Client::new(&stack.sdk().await);
    let items = client.scan().table_name(&stack.table).send().await.unwrap();
    assert_eq!(items.count, 0);
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_socket_stays_open() {
    let stack = Stack::start(&[]);
    let mut alice = stack.client("alice").await;
    for (frame, code) in [
        ("{", "bad_json"),
        (r#"{"action":"dance"}"#, "unknown_action"),
        (r#"{"action":"join","channel":"team:1"}"#, "invalid_channel"),
        (
            r#"{"action":"sendMessage","channel":"workspace:1","body":"x"}"#,
            "not_member",
        ),
    ] {
        alice.socket.send(Message::Text(frame.into())).await.unwrap();
        let error = alice.expect(code, |f| f["type"] == "error").await;
        assert_eq!(error["code"], code, "{frame}");
    }
    let pong = alice.ask(json!({"action": "ping"}), "pong").await;
    assert_eq!(pong["type"], "pong");
    // The page itself and the dev token endpoint answer on the same port.
    let page = reqwest::get(&stack.http).await.unwrap().text().await.unwrap();
    assert!(page.to_lowercase().contains("<html") || page.to_lowercase().contains("<!doctype html"));
    let token: Value = reqwest::get(format!("{}dev/token?sub=zoe", stack.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut zoe = Client::connect(token["url"].as_str().unwrap()).await.unwrap();
    zoe.join("workspace:demo").await;
}

#[tokio::test]
async fn frames_over_32_kb_close_the_socket_with_1009() {
    let stack = Stack::start(&[]);
    let mut alice = stack.client("alice").await;
    let big = json!({"action": "ping", "pad": "x".repeat(40 * 1024)}).to_string();
    let _ = alice.socket.send(Message::Text(big.into())).await;
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), alice.socket.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), 1009);
                break;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a 1009 close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let stack = Stack::start(&["--idle-timeout-secs", "2"]);
    let mut alice = stack.client("alice").await;
    match tokio::time::timeout(WAIT, alice.socket.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_that_vanished_is_cleaned_up_on_the_first_410() {
    let stack = Stack::start(&[]);
    let mut bob = stack.client("bob").await;
    bob.join("workspace:ghosts").await;
    // A connection whose $disconnect never ran: its items are there, its socket is not.
    let client = aws_sdk_dynamodb::Client::new(&stack.sdk().await);
    let store = wsfan_shared::store::DynamoStore::new(client.clone(), &stack.table, Default::default());
    let now = wsfan_shared::clock::now_millis();
    use wsfan_shared::store::Store;
    store
        .connect(
            &wsfan_shared::model::Connection {
                connection_id: "Gh0stConn000AA=".into(),
                user_id: Some("casper".into()),
                role: wsfan_shared::access::Role::Member,
                channels: vec![],
                connected_at: now,
                source_ip: None,
                domain_name: None,
                stage: None,
                expires_at: now / 1000 + 3600,
                joined: vec![],
                history: None,
            },
            &[],
        )
        .await
        .unwrap();
    store
        .join(&wsfan_shared::model::Membership {
            channel: "workspace:ghosts".parse().unwrap(),
            connection_id: "Gh0stConn000AA=".into(),
            user_id: Some("casper".into()),
            role: wsfan_shared::access::Role::Member,
            joined_at: now,
            expires_at: now / 1000 + 3600,
            history: None,
        })
        .await
        .unwrap();
    bob.expect("casper's presence", |f| {
        f["type"] == "presence" && f["userId"] == "casper"
    })
    .await;

    bob.send(json!({"action": "sendMessage", "channel": "workspace:ghosts", "body": "boo"}))
        .await;
    bob.expect("own message", |f| f["body"] == "boo").await;
    let deadline = Instant::now() + WAIT;
    // The 410 removes the connection item first, then each membership.
    while store.connection("Gh0stConn000AA=").await.unwrap().is_some()
        || !store.memberships_of("Gh0stConn000AA=").await.unwrap().is_empty()
    {
        assert!(Instant::now() < deadline, "the ghost connection was not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.memberships_of("Gh0stConn000AA=").await.unwrap().is_empty());
    assert!(store.connection("Gh0stConn000AA=").await.unwrap().is_none());
    // Its leave is announced like any other.
    let leave = bob
        .expect("casper's leave", |f| f["type"] == "presence" && f["state"] == "leave")
        .await;
    assert_eq!(leave["userId"], "casper");
}

#[tokio::test]
async fn a_poison_progress_message_lands_in_the_dlq() {
    let stack = Stack::start(&[]);
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk().await);
    sqs.send_message()
        .queue_url(&stack.queue)
        .message_body("{not a progress event")
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = sqs.receive_message().queue_url(&stack.dlq).send().await.unwrap();
        if let Some(m) = out.messages.unwrap_or_default().first() {
            assert_eq!(m.body.as_deref(), Some("{not a progress event"));
            break;
        }
        assert!(Instant::now() < deadline, "the poison message never reached the DLQ");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
