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

use harness::DEV_SECRET;

#[path = "dev_access/mod.rs"]
mod access;

fn repo() -> PathBuf {
    harness::repo_root()
}

fn require_lambda_binaries() {
    harness::require_lambda_binaries(std::path::Path::new(env!("CARGO_BIN_EXE_wsfan")));
}

struct Stack {
    child: Child,
    /// What `wsfan dev` wrote to stderr: its invocation log.
    log: PathBuf,
    http: String,
    ws: String,
    moto: String,
    table: String,
    queue: String,
    dlq: String,
    failures: String,
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
            failures: field("failures"),
            child,
            log,
        }
    }

    fn token(&self, sub: &str) -> String {
        self.token_for(sub, &["workspace:*", "doc:*"])
    }

    fn token_for(&self, sub: &str, channels: &[&str]) -> String {
        mint_hs256(
            DEV_SECRET,
            &Claims {
                sub: sub.into(),
                exp: wsfan_shared::clock::now_secs() + 600,
                nbf: None,
                channels: channels.iter().map(|c| c.to_string()).collect(),
                role: None,
                aud: None,
                iss: None,
            },
        )
    }

    /// A client connecting as the older clients do: their own query string, then the token.
    async fn client_with(&self, sub: &str, channels: &[&str], query: &str) -> Client {
        Client::connect(&format!("{}?{query}&token={}", self.ws, self.token_for(sub, channels)))
            .await
            .expect("connecting")
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

impl Stack {
    /// Every frame these clients received matches its schema in docs/asyncapi.yaml.
    fn check_contract(&self, clients: &[&Client]) {
        let frames: Vec<String> = clients.iter().flat_map(|c| &c.seen).map(Value::to_string).collect();
        assert!(!frames.is_empty(), "no frames to check");
        let file = std::env::temp_dir().join(format!("wsfan-dev-frames-{}.jsonl", ulid::Ulid::generate()));
        std::fs::write(&file, frames.join("\n")).unwrap();
        assert!(
            repo().join("node_modules/@asyncapi/parser").exists(),
            "node_modules/@asyncapi/parser is missing: run scripts/setup (npm ci)"
        );
        let out = Command::new("node")
            .arg(repo().join("scripts/contract.mjs"))
            .args(["frames", file.to_str().unwrap()])
            .output()
            .expect("running node");
        let _ = std::fs::remove_file(&file);
        assert!(
            out.status.success(),
            "frames the server sent break docs/asyncapi.yaml:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
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
    /// Every frame received, for the contract check.
    seen: Vec<Value>,
}

const WAIT: Duration = Duration::from_secs(15);

impl Client {
    async fn connect(url: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (socket, _) = tokio_tungstenite::connect_async(url.into_client_request()?).await?;
        Ok(Client {
            socket,
            inbox: Vec::new(),
            seen: Vec::new(),
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
                    self.seen.push(frame.clone());
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

    /// Reads what arrives within `quiet` of the last frame into the inbox, so that a check of
    /// the inbox also sees frames still on their way.
    async fn read_for(&mut self, quiet: Duration) {
        while let Ok(Some(Ok(message))) = tokio::time::timeout(quiet, self.socket.next()).await {
            if let Message::Text(t) = message {
                let frame: Value = serde_json::from_str(t.as_str()).expect("frames are JSON");
                self.seen.push(frame.clone());
                self.inbox.push(frame);
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
    bob.read_for(Duration::from_millis(500)).await;
    assert!(
        of_type(&bob.inbox, "presence").is_empty(),
        "exactly one leave: {:?}",
        bob.inbox
    );
    stack.check_contract(&[&alice, &bob]);
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
    stack.check_contract(&[&alice]);
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
    stack.check_contract(&[&sam, &late]);
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
    stack.check_contract(&[&alice, &zoe]);
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
    use wsfan_shared::store::Connections;
    store
        .connect(
            &wsfan_shared::model::Connection {
                connection_id: "Gh0stConn000AA=".into(),
                user_id: Some("casper".into()),
                role: wsfan_shared::access::Role::Member,
                channels: vec![],
                // Connected a minute ago: a 410 within $connect's time may mean "not yet".
                connected_at: now - 60_000,
                source_ip: None,
                domain_name: None,
                stage: None,
                expires_at: now / 1000 + 3600,
                joined: vec![],
                history: None,
                batch: false,
                token_exp: None,
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
            batch: false,
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
    stack.check_contract(&[&bob]);
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

// ---------- the clients of the backends wsfan replaces, with their own frames ----------

#[tokio::test]
async fn booking_chat_clients_get_history_on_connect_then_each_others_messages_and_reactions() {
    let stack = Stack::start(&[]);
    let url = "type=chat&booking_id=1&history=50";
    let mut guest = stack.client_with("guest", &["booking:1"], url).await;
    let history = guest.expect("history on connect", |f| f["type"] == "history").await;
    assert_eq!(
        history,
        json!({"type": "history", "channel": "booking:1", "messages": []})
    );
    guest.send(json!({"body": "Hello!"})).await;
    let ack = guest
        .expect("ack", |f| f["type"] == "ack" || f["type"] == "error")
        .await;
    assert_eq!(ack["channel"], "booking:1", "{ack}");

    // The host's client connects the same way and finds the guest's message in its history.
    let mut host = stack.client_with("host", &["booking:1"], url).await;
    let history = host.expect("history on connect", |f| f["type"] == "history").await;
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{history}");
    assert_eq!(messages[0]["type"], "message");
    assert_eq!(messages[0]["body"], "Hello!");
    assert_eq!(messages[0]["messageId"], ack["messageId"]);
    // Only the newcomer got a history frame.
    host.send(json!({"body": "Welcome"})).await;
    let welcome = guest
        .expect("the host's message", |f| {
            f["type"] == "message" && f["senderId"] == "host"
        })
        .await;
    assert_eq!(
        (welcome["senderId"].as_str(), welcome["body"].as_str()),
        (Some("host"), Some("Welcome"))
    );
    assert!(of_type(&guest.inbox, "history").is_empty(), "{:?}", guest.inbox);

    guest
        .send(json!({"type": "reaction", "emoji": "❤️", "message_id": welcome["messageId"]}))
        .await;
    let reaction = host.expect("the guest's reaction", |f| f["type"] == "reaction").await;
    assert_eq!(reaction["emoji"], "❤️");
    assert_eq!(reaction["targetId"], welcome["messageId"]);
    assert_eq!(reaction["senderId"], "guest");
    assert_eq!(reaction["reactions"], json!({"❤️": {"count": 1, "users": ["guest"]}}));
    assert!(reaction.get("seq").is_none(), "a reaction takes no number: {reaction}");
    // The host answers in kind: the guest sees the summary grow; a newcomer's history has it.
    host.send(json!({"type": "reaction", "emoji": "❤️", "message_id": welcome["messageId"]}))
        .await;
    let second = guest
        .expect("the host's reaction", |f| {
            f["type"] == "reaction" && f["senderId"] == "host"
        })
        .await;
    let both = json!({"❤️": {"count": 2, "users": ["guest", "host"]}});
    assert_eq!(second["reactions"], both);
    // The guest reads the host's message: the host sees the guest's cursor move, and the cursor
    // comes with a join.
    let read = json!({"action": "read", "messageId": welcome["messageId"], "seq": welcome["seq"]});
    guest.send(read).await;
    let ack = guest
        .expect("the read's ack", |f| f["action"] == "read" || f["type"] == "error")
        .await;
    assert_eq!(
        (ack["action"].as_str(), ack["seq"].as_u64()),
        (Some("read"), welcome["seq"].as_u64()),
        "{ack}"
    );
    let receipt = host.expect("the guest's receipt", |f| f["type"] == "receipt").await;
    assert_eq!(
        (receipt["senderId"].as_str(), &receipt["targetId"], &receipt["readSeq"]),
        (Some("guest"), &welcome["messageId"], &welcome["seq"])
    );
    assert!(receipt.get("seq").is_none(), "a receipt takes no number: {receipt}");
    let mut newcomer = stack.client_with("cleaner", &["booking:1"], url).await;
    let history = newcomer.expect("history on connect", |f| f["type"] == "history").await;
    let welcomed = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["messageId"] == welcome["messageId"])
        .cloned()
        .unwrap_or_else(|| panic!("the host's message is in the history: {history}"));
    assert_eq!(welcomed["reactions"], both, "{history}");
    let joined = newcomer
        .ask(json!({"action": "join", "channel": "booking:1"}), "joined")
        .await;
    assert_eq!(joined["reads"], json!({"guest": welcome["seq"]}), "{joined}");

    // The old clients' numeric ids cannot name a message: a clear error, and the socket stays.
    guest
        .send(json!({"type": "reaction", "emoji": "❤️", "message_id": 123}))
        .await;
    let error = guest.expect("error", |f| f["type"] == "error").await;
    assert_eq!(error["code"], "invalid_field");
    assert!(error["message"].as_str().unwrap().contains("messageId"), "{error}");
    stack.check_contract(&[&guest, &host, &newcomer]);
}

#[tokio::test]
async fn many_members_reading_one_message_at_once_get_their_cursors_in_few_frames() {
    const READERS: usize = 12;
    let stack = Stack::start(&[]);
    let channel = "workspace:reads";
    let mut listener = stack.client("listener").await;
    listener.join(channel).await;
    let mut readers = Vec::new();
    for i in 0..READERS {
        let mut reader = stack.client(&format!("reader-{i}")).await;
        reader.join(channel).await;
        readers.push(reader);
    }
    let sent = listener
        .ask(
            json!({"action": "sendMessage", "channel": channel, "body": "read me"}),
            "ack",
        )
        .await;
    let (id, seq) = (sent["messageId"].clone(), sent["seq"].clone());
    assert!(seq.is_u64(), "{sent}");
    // Everyone reads it at once; each is acked.
    for reader in &mut readers {
        reader
            .send(json!({"action": "read", "channel": channel, "messageId": id, "seq": seq}))
            .await;
    }
    for reader in &mut readers {
        let ack = reader
            .expect("the read's ack", |f| f["action"] == "read" || f["type"] == "error")
            .await;
        assert_eq!(ack["seq"], seq, "{ack}");
    }
    // The listener learns every reader's cursor, from far fewer frames than receipts.
    let mut cursors = std::collections::BTreeMap::new();
    let mut frames = Vec::new();
    while cursors.len() < READERS {
        let frame = listener
            .expect("the readers' cursors", |f| {
                f["type"] == "receipt" || f["type"] == "receipts"
            })
            .await;
        let entries = match frame["type"].as_str() {
            Some("receipts") => frame["receipts"].as_array().unwrap().clone(),
            _ => vec![frame.clone()],
        };
        for r in entries {
            assert_eq!((&r["channel"], &r["targetId"]), (&json!(channel), &id), "{frame}");
            cursors.insert(r["senderId"].as_str().unwrap().to_owned(), r["readSeq"].clone());
        }
        frames.push(frame);
    }
    let expected: std::collections::BTreeMap<String, Value> =
        (0..READERS).map(|i| (format!("reader-{i}"), seq.clone())).collect();
    assert_eq!(cursors, expected);
    assert!(
        frames.len() < READERS && frames.iter().any(|f| f["type"] == "receipts"),
        "{READERS} receipts written within a few stream polls came as {} frames: {frames:?}",
        frames.len()
    );
    let joined = listener
        .ask(json!({"action": "join", "channel": channel}), "joined")
        .await;
    for (user, read) in &expected {
        assert_eq!(&joined["reads"][user], read, "{joined}");
    }
    stack.check_contract(&[&listener]);
}

#[tokio::test]
async fn workspace_chat_clients_use_message_typing_and_presence() {
    let stack = Stack::start(&[]);
    let mut ann = stack.client_with("ann", &["workspace:*"], "workspaceId=W").await;
    let mut ben = stack.client_with("ben", &["workspace:*"], "workspaceId=W").await;
    ann.expect("ben's arrival", |f| f["type"] == "presence" && f["userId"] == "ben")
        .await;

    let ack = ann.ask(json!({"action": "message", "body": "standup?"}), "ack").await;
    assert_eq!(ack["channel"], "workspace:W", "{ack}");
    let got = ben.expect("ann's message", |f| f["type"] == "message").await;
    assert_eq!(got["body"], "standup?");

    ben.send(json!({"action": "typing"})).await;
    let typing = ann.expect("ben typing", |f| f["type"] == "typing").await;
    assert_eq!(
        (typing["senderId"].as_str(), typing["channel"].as_str()),
        (Some("ben"), Some("workspace:W"))
    );

    let present = ben.ask(json!({"action": "presence"}), "present").await;
    assert_eq!(
        present,
        json!({"type": "present", "channel": "workspace:W", "present": ["ann", "ben"]})
    );

    // A second channel makes frames without one ambiguous: told, not guessed.
    ben.join("workspace:X").await;
    let error = ben.ask(json!({"action": "message", "body": "which?"}), "ack").await;
    assert_eq!(error["code"], "no_default_channel", "{error}");
    stack.check_contract(&[&ann, &ben]);
}

#[tokio::test]
async fn register_by_message_and_by_url_share_a_session() {
    let stack = Stack::start(&[]);
    let mut viewer = stack.client_with("viewer", &["session:*"], "session_id=live-7").await;
    let mut presenter = stack.client_with("presenter", &["session:*"], "x=1").await;
    let joined = presenter
        .ask(json!({"type": "register", "sessionID": "live-7"}), "joined")
        .await;
    assert_eq!(joined["channel"], "session:live-7", "{joined}");
    presenter.send(json!({"body": "slide 2"})).await;
    let got = viewer
        .expect("the presenter's message", |f| f["type"] == "message")
        .await;
    assert_eq!(
        (got["channel"].as_str(), got["body"].as_str()),
        (Some("session:live-7"), Some("slide 2"))
    );

    // A channel the token does not allow refuses the upgrade.
    match Client::connect(&format!(
        "{}?workspaceId=W&token={}",
        stack.ws,
        stack.token_for("viewer", &["session:*"])
    ))
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        Err(other) => panic!("expected a 403, got {other}"),
        Ok(_) => panic!("a channel the token does not allow must refuse the upgrade"),
    }
    stack.check_contract(&[&viewer, &presenter]);
}

#[tokio::test]
async fn progress_clients_subscribe_with_action_progress_and_a_late_error_does_not_undo_complete() {
    let stack = Stack::start(&[]);
    let mut viewer = stack.client("viewer").await;
    let answer = viewer
        .ask(json!({"action": "progress", "docId": "scan-1"}), "subscribed")
        .await;
    assert_eq!(
        answer,
        json!({"type": "subscribed", "docId": "scan-1", "snapshot": null})
    );
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk().await);
    let send = |body: Value| {
        let sqs = sqs.clone();
        let queue = stack.queue.clone();
        async move {
            sqs.send_message()
                .queue_url(queue)
                .message_body(body.to_string())
                .send()
                .await
                .unwrap();
        }
    };
    send(json!({"type": "processing_started", "docId": "scan-1", "totalPages": 8})).await;
    viewer.expect("started", |f| f["type"] == "processing_started").await;
    send(json!({"type": "progress", "docId": "scan-1", "pagesProcessed": 3, "totalPages": 8})).await;
    viewer.expect("progress", |f| f["type"] == "progress").await;
    send(json!({"type": "processing_complete", "docId": "scan-1"})).await;
    let done = viewer.expect("complete", |f| f["type"] == "processing_complete").await;
    assert_eq!(
        done,
        json!({"type": "processing_complete", "docId": "scan-1", "pagesProcessed": 8, "totalPages": 8})
    );
    send(json!({"type": "error", "docId": "scan-1", "errorCode": "LATE", "message": "late", "recoverable": false}))
        .await;
    // The late error is stale: a later subscriber still finds the document complete, all pages.
    let mut late = stack.client("late").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = late
            .ask(json!({"action": "progress", "docId": "scan-1"}), "subscribed")
            .await;
        assert_eq!(answer["snapshot"]["type"], "processing_complete", "{answer}");
        assert_eq!(answer["snapshot"]["pagesProcessed"], 8);
        // Wait until the error was handled (it went to the queue after the complete).
        let sqs_empty = sqs
            .get_queue_attributes()
            .queue_url(&stack.queue)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("ApproximateNumberOfMessages"))
            .all(|(_, v)| v == "0");
        if sqs_empty {
            break;
        }
        assert!(Instant::now() < deadline, "the late error was never handled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    viewer.read_for(Duration::from_millis(300)).await;
    assert!(of_type(&viewer.inbox, "error").is_empty(), "{:?}", viewer.inbox);
    stack.check_contract(&[&viewer, &late]);
}

#[tokio::test]
async fn a_backends_bare_put_item_reaches_the_channel_and_an_unusable_one_is_parked_at_once() {
    let stack = Stack::start(&[]);
    let mut ops = stack.client("ops").await;
    ops.join("workspace:alerts").await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.sdk().await);
    let s = |v: &str| aws_sdk_dynamodb::types::AttributeValue::S(v.to_owned());
    let id = ulid::Ulid::generate();
    // The README's example put_item: keys, senderId, body.
    dynamodb
        .put_item()
        .table_name(&stack.table)
        .item("pk", s("CHAN#workspace:alerts"))
        .item("sk", s(&format!("MSG#{id}")))
        .item("senderId", s("monitor"))
        .item("body", s("disk 91% full"))
        .send()
        .await
        .unwrap();
    let got = ops.expect("the backend's message", |f| f["type"] == "message").await;
    assert_eq!(
        got,
        json!({"type": "message", "channel": "workspace:alerts", "messageId": id.to_string(),
               "senderId": "monitor", "body": "disk 91% full", "sentAt": id.timestamp_ms()})
    );
    // No body: unusable. It lands in the failure queue from the function itself, not after
    // the mapping's retries ran out.
    dynamodb
        .put_item()
        .table_name(&stack.table)
        .item("pk", s("CHAN#workspace:alerts"))
        .item("sk", s(&format!("MSG#{}", ulid::Ulid::generate())))
        .item("senderId", s("monitor"))
        .send()
        .await
        .unwrap();
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk().await);
    let deadline = Instant::now() + WAIT;
    let parked = loop {
        let out = sqs.receive_message().queue_url(&stack.failures).send().await.unwrap();
        if let Some(m) = out.messages.unwrap_or_default().first() {
            break serde_json::from_str::<Value>(m.body.as_deref().unwrap()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the unusable item never reached the failure queue"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(parked["condition"], "UnusableRecord", "{parked}");
    assert!(parked["reason"].as_str().unwrap().contains("needs body"), "{parked}");
    // And the channel goes on.
    dynamodb
        .put_item()
        .table_name(&stack.table)
        .item("pk", s("CHAN#workspace:alerts"))
        .item("sk", s(&format!("MSG#{}", ulid::Ulid::generate())))
        .item("senderId", s("monitor"))
        .item("body", s("disk 60% full"))
        .send()
        .await
        .unwrap();
    ops.expect("the next message", |f| f["body"] == "disk 60% full").await;
    stack.check_contract(&[&ops]);
}

#[tokio::test]
async fn an_oversized_item_is_parked_at_once_and_one_the_queue_refuses_arrives_after_its_retries() {
    let stack = Stack::start(&[]);
    let mut ops = stack.client("ops").await;
    ops.join("workspace:big").await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.sdk().await);
    let s = |v: &str| aws_sdk_dynamodb::types::AttributeValue::S(v.to_owned());
    let put = |body: String| {
        dynamodb
            .put_item()
            .table_name(&stack.table)
            .item("pk", s("CHAN#workspace:big"))
            .item("sk", s(&format!("MSG#{}", ulid::Ulid::generate())))
            .item("senderId", s("batch-job"))
            .item("body", s(&body))
            .send()
    };
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk().await);
    let next_failure = || async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = sqs.receive_message().queue_url(&stack.failures).send().await.unwrap();
            if let Some(m) = out.messages.unwrap_or_default().into_iter().next() {
                sqs.delete_message()
                    .queue_url(&stack.failures)
                    .receipt_handle(m.receipt_handle.unwrap())
                    .send()
                    .await
                    .unwrap();
                break serde_json::from_str::<Value>(&m.body.unwrap()).unwrap();
            }
            assert!(Instant::now() < deadline, "nothing reached the failure queue");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // 150 KB: no frame can carry it, so it is parked at once, record and reason.
    put("x".repeat(150 * 1024)).await.unwrap();
    let parked = next_failure().await;
    assert_eq!(parked["condition"], "UnusableRecord", "{}", parked["reason"]);
    assert!(parked["reason"]
        .as_str()
        .unwrap()
        .contains("@connections takes at most"));
    // When the failure queue refuses the function's message (here: too big for it), the record
    // is retried; when its retries run out, the poller sends where it was, as Lambda does.
    sqs.set_queue_attributes()
        .queue_url(&stack.failures)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize, "1024")
        .send()
        .await
        .unwrap();
    put("y".repeat(150 * 1024)).await.unwrap();
    let exhausted = next_failure().await;
    assert_eq!(
        exhausted["requestContext"]["condition"],
        "RetryAttemptsExhausted",
        "{}",
        exhausted.get("condition").unwrap_or(&Value::Null)
    );
    assert!(
        exhausted["DDBStreamBatchInfo"]["startSequenceNumber"].is_string(),
        "{exhausted}"
    );
    // And the channel goes on.
    put("small".into()).await.unwrap();
    ops.expect("the next message", |f| f["body"] == "small").await;
    stack.check_contract(&[&ops]);
}

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

#[tokio::test]
async fn stopping_wsfan_dev_ends_every_process_it_started() {
    for (signal, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGKILL, "SIGKILL"),
    ] {
        let mut stack = Stack::start(&[]);
        // A client makes the stack do some work first: authorizer, $connect, a write in moto.
        let mut alice = stack.client("alice").await;
        alice.join("workspace:lifecycle").await;
        let processes = wsfan_local::children::descendants(stack.child.id());
        // moto and one process per function of the template.
        assert!(processes.len() >= 7, "{name}: {processes:?}");
        // moto is busy when the stack stops: a long poll holds one of its request threads, as
        // a slow call did when a stopped stack left a 7 GB moto behind.
        let sqs = aws_sdk_sqs::Client::new(&stack.sdk().await);
        let queue = stack.queue.clone();
        tokio::spawn(async move {
            let _ = sqs
                .receive_message()
                .queue_url(queue)
                .wait_time_seconds(20)
                .send()
                .await;
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // SAFETY: kill(2) with a pid of our own child.
        assert_eq!(unsafe { libc::kill(stack.child.id() as i32, signal) }, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while stack.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{name}: wsfan dev still runs after 5 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            let left: Vec<u32> = processes.iter().copied().filter(|p| running(*p)).collect();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: {left:?} outlived wsfan dev by 5 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_client_close_is_echoed_and_the_socket_ends_cleanly() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let stack = Stack::start(&[]);
    let mut alice = stack.client("alice").await;
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    alice.socket.send(Message::Close(Some(close))).await.unwrap();
    match tokio::time::timeout(WAIT, alice.socket.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected the close to be echoed, got {other:?}"),
    }
    match tokio::time::timeout(WAIT, alice.socket.next()).await {
        Ok(None) => {}
        other => panic!("expected a clean end after the close handshake, got {other:?}"),
    }
}

#[tokio::test]
async fn reserved_route_keys_in_a_frame_go_to_default() {
    let stack = Stack::start(&[]);
    let mut alice = stack.client("alice").await;
    alice.join("workspace:reserved").await;
    for action in ["$disconnect", "$connect", "$default"] {
        let answer = alice.ask(json!({"action": action}), "error").await;
        assert_eq!(answer["code"], "unknown_action", "{action}: {answer}");
    }
    // $disconnect did not run: the connection and its membership are still there.
    let ack = alice
        .ask(
            json!({"action": "sendMessage", "channel": "workspace:reserved", "body": "still here"}),
            "ack",
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    alice.expect("own message", |f| f["body"] == "still here").await;
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let stack = Stack::start(&[]);
    let mut alice = stack.client("alice").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    alice.socket.send(Message::Frame(frame)).await.unwrap();
    match tokio::time::timeout(WAIT, alice.socket.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(u16::from(frame.code), 1007),
        other => panic!("expected a 1007 close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_that_leaves_during_connect_leaves_nothing_behind() {
    use tokio::io::AsyncWriteExt;
    let stack = Stack::start(&[]);
    let authority = stack
        .ws
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // Upgrade requests whose clients hang up after 0 to 450 ms, so that some leave while the
    // authorizer runs, some while ws-connect writes, and some as `$connect` returns (its answer
    // handed over while hyper drops the request: the race that once left a connection behind).
    let users: Vec<String> = (0..16).map(|i| format!("leaver{i}")).collect();
    for (i, user) in users.iter().enumerate() {
        let mut tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let request = format!(
            "GET /local?token={} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            stack.token(user)
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30 * i as u64)).await;
        drop(tcp);
    }
    // Nothing of theirs may stay: no connection item, no membership, no connection in a
    // presence item (which itself stays, empty, until its TTL: docs/DESIGN-NOTES.md).
    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.sdk().await);
    let leftovers = || async {
        let items = dynamodb
            .scan()
            .table_name(&stack.table)
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        let left: Vec<String> = items
            .into_iter()
            .filter(|item| {
                let user = item
                    .get("userId")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                let sk = item.get("sk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                let emptied_presence = sk.starts_with("USER#") && !item.contains_key("connections");
                users.contains(&user) && !emptied_presence
            })
            .map(|item| {
                let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                format!("{} / {} ({})", text("pk"), text("sk"), text("userId"))
            })
            .collect();
        left
    };
    // Let every handshake finish first: an item may appear only after the client left.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let left = leftovers().await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} items of clients that left during $connect remain: {left:?}; log: {}",
            left.len(),
            std::fs::read_to_string(&stack.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(&stack.log).unwrap_or_default();
    assert!(
        log.contains("during $connect") || log.contains("the upgrade failed"),
        "the clean-up is logged: {log}"
    );
}

// ---------- chaos: injected faults, functions killed mid-batch, moto gone ----------

/// The seed of the fault draws; `WSFAN_CHAOS_SEED` repeats a failing run's faults.
fn chaos_seed() -> String {
    let seed = std::env::var("WSFAN_CHAOS_SEED").unwrap_or_else(|_| "2611".into());
    eprintln!("chaos seed {seed}: WSFAN_CHAOS_SEED={seed} repeats this run's faults");
    seed
}

/// A client that only listens: every frame it got, and how its socket ended (`None`: open).
struct Listener {
    user: String,
    frames: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    ended: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Listener {
    fn spawn(user: &str, client: Client) -> Listener {
        let (frames, ended) = (
            std::sync::Arc::new(std::sync::Mutex::new(client.seen.clone())),
            std::sync::Arc::new(std::sync::Mutex::new(None)),
        );
        let (f, e) = (frames.clone(), ended.clone());
        let mut socket = client.socket;
        tokio::spawn(async move {
            let how = loop {
                match socket.next().await {
                    Some(Ok(Message::Text(t))) => f.lock().unwrap().push(serde_json::from_str(t.as_str()).unwrap()),
                    Some(Ok(Message::Close(frame))) => break format!("closed {:?}", frame.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => {}
                    Some(Err(err)) => break format!("lost: {err}"),
                    None => break "ended".to_owned(),
                }
            };
            *e.lock().unwrap() = Some(how);
        });
        Listener {
            user: user.to_owned(),
            frames,
            ended,
        }
    }

    fn is_open(&self) -> bool {
        self.ended.lock().unwrap().is_none()
    }

    /// The value of `field` of every frame of `kind` received, duplicates included.
    fn field_of(&self, kind: &str, field: &str) -> Vec<String> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f["type"] == kind)
            .map(|f| f[field].to_string())
            .collect()
    }

    /// The users this client was told have joined a channel.
    fn joined_users(&self) -> std::collections::BTreeSet<String> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f["type"] == "presence" && f["state"] == "join")
            .filter_map(|f| f["userId"].as_str().map(str::to_owned))
            .collect()
    }

    /// The users this client was told have left a channel.
    fn left_users(&self) -> std::collections::BTreeSet<String> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f["type"] == "presence" && f["state"] == "leave")
            .filter_map(|f| f["userId"].as_str().map(str::to_owned))
            .collect()
    }
}

/// The process ids of `wsfan dev`'s children whose executable is `name` (a function's binary).
fn processes_named(stack: &Stack, name: &str) -> Vec<u32> {
    wsfan_local::children::descendants(stack.child.id())
        .into_iter()
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            exe.file_name().is_some_and(|f| f == name) || cmdline.contains(name)
        })
        .collect()
}

/// Lines of the dev log that contain `needle`.
fn log_lines(stack: &Stack, needle: &str) -> Vec<String> {
    std::fs::read_to_string(&stack.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// The connections the dev log says got an injected 410.
fn injected_gone(stack: &Stack) -> std::collections::BTreeSet<String> {
    log_lines(stack, "injected 410 ")
        .iter()
        .filter_map(|l| l.split("@connections/").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The sum of one counter over the fanouts' EMF lines in the dev log (`pushed delivered=...`).
fn pushed(stack: &Stack, counter: &str) -> u64 {
    log_lines(stack, "pushed delivered=")
        .iter()
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.strip_prefix(&format!("{counter}=")))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    deadline: Duration,
    mut done: impl FnMut() -> F,
) {
    let end = Instant::now() + deadline;
    while !done().await {
        assert!(Instant::now() < end, "{what}: still not so after {deadline:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Seed 002's connect form (`?type=chat&booking_id=…`, no `history`) with every upgrade held
/// after `$connect` (`--inject upgrade-delay=…`): the history push reaches `@connections` while
/// the connection is still connecting and is answered 410, as on API Gateway. It is posted again
/// until the socket is open, so every connect gets its history, once, including those that send
/// at once.
#[tokio::test]
async fn with_upgrades_held_every_seed_002_connect_still_gets_its_history_once() {
    // 1.5 s: long enough that a history push reaches a held upgrade even when the stream poll
    // and stream-fanout are slow, and within what UPGRADE_BACKOFF's 3 s of retries cover.
    let stack = Stack::start(&["--inject", "upgrade-delay=1500ms"]);
    let query = "type=chat&booking_id=22";
    let mut host = stack.client_with("host", &["booking:22"], query).await;
    host.expect("the host's history", |f| f["type"] == "history").await;
    let ack = host.ask(json!({"body": "Is the room free?"}), "ack").await;
    assert_eq!(ack["type"], "ack", "{ack}");

    for i in 0..6 {
        let mut guest = stack.client_with("guest", &["booking:22"], query).await;
        let sends_at_once = i % 2 == 1;
        if sends_at_once {
            guest.send(json!({"body": format!("hello {i}")})).await;
        }
        let history = guest
            .expect(&format!("connect {i}'s history"), |f| f["type"] == "history")
            .await;
        let messages = history["messages"].as_array().unwrap();
        assert_eq!(messages[0]["body"], "Is the room free?", "connect {i}: {history}");
        if sends_at_once {
            // Its own message comes after its membership in the channel's stream, so after
            // the history: by then a second history push would have come too.
            guest
                .expect(&format!("connect {i}'s own message"), |f| {
                    f["type"] == "message" && f["body"] == format!("hello {i}")
                })
                .await;
        } else {
            guest.read_for(Duration::from_millis(500)).await;
        }
        assert!(
            of_type(&guest.inbox, "history").is_empty(),
            "connect {i}: a second history frame: {:?}",
            guest.inbox
        );
    }
    // The window happened: history pushes were answered 410 while their upgrade was held.
    let refused = log_lines(&stack, "injected upgrade-410 POST");
    assert!(!refused.is_empty(), "no post reached a held upgrade");
    eprintln!("{} posts answered 410 during held upgrades", refused.len());
}

/// A fanout under 429, 500 and 410 drawn per request: every live client gets every message,
/// and each injected 410 removes exactly that connection, its socket and its items.
#[tokio::test]
async fn a_fanout_under_injected_faults_loses_no_live_recipient_and_a_410_removes_exactly_its_connection() {
    let seed = chaos_seed();
    let stack = Stack::start(&["--inject", "429=0.2,500=0.05,410=0.01", "--inject-seed", &seed]);
    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.sdk().await);
    let store = wsfan_shared::store::DynamoStore::new(dynamodb, &stack.table, Default::default());
    use wsfan_shared::store::Connections;

    // Clients join at connect (the workspace clients' form): while one connects, the fanouts
    // post to it before it is established, and get API Gateway's 410 for that, which must not
    // remove it. Each one's connection id is read back from its connection item.
    let mut listeners = Vec::new();
    let mut connection_of = std::collections::BTreeMap::new();
    for i in 0..24 {
        let user = format!("chaos{i:02}");
        let client = stack.client_with(&user, &["workspace:*"], "workspaceId=chaos").await;
        let items = aws_sdk_dynamodb::Client::new(&stack.sdk().await)
            .scan()
            .table_name(&stack.table)
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        let id = items
            .iter()
            .filter(|item| item.get("sk").and_then(|v| v.as_s().ok()).is_some_and(|s| s == "META"))
            .filter(|item| item.get("userId").and_then(|v| v.as_s().ok()) == Some(&user))
            .find_map(|item| item.get("connectionId").and_then(|v| v.as_s().ok()).cloned())
            .unwrap_or_else(|| panic!("no connection item for {user}"));
        connection_of.insert(id, user.clone());
        listeners.push(Listener::spawn(&user, client));
    }

    let publisher = wsfan_shared::publisher::ChannelPublisher::new(store.clone(), Default::default());
    let channel: wsfan_shared::channel::ChannelId = "workspace:chaos".parse().unwrap();
    let mut sent = std::collections::BTreeSet::new();
    for i in 0..20 {
        let outcome = publisher
            .publish(&channel, &format!("m{i}"), "backend", None)
            .await
            .unwrap();
        sent.insert(Value::String(outcome.message_id).to_string());
    }

    // Every client ends with every message, or closed.
    let has_all = |l: &Listener| {
        let got: std::collections::BTreeSet<String> = l.field_of("message", "messageId").into_iter().collect();
        sent.is_subset(&got)
    };
    wait_until("every open client has every message", Duration::from_secs(90), || {
        let done = listeners.iter().all(|l| !l.is_open() || has_all(l));
        async move { done }
    })
    .await;
    // A 410 closes a socket, whose $disconnect announces a leave, whose posts may draw another
    // 410: wait until that has settled, then check the settled state. Settled means every open
    // client has heard every gone user leave (the leave is fanned out from the stream after
    // $disconnect has deleted the items, so deleted items alone do not say the posts are over),
    // and neither the faults drawn nor the fanouts' reports changed since the last look.
    let mut last = None;
    wait_until("the 410s settle", Duration::from_secs(60), || {
        let gone = injected_gone(&stack);
        let snapshot = (
            gone.clone(),
            log_lines(&stack, "injected ").len(),
            log_lines(&stack, "pushed delivered=").len(),
        );
        let closed: std::collections::BTreeSet<&str> = listeners
            .iter()
            .filter(|l| !l.is_open())
            .map(|l| l.user.as_str())
            .collect();
        let gone_users: std::collections::BTreeSet<&str> = gone
            .iter()
            .filter_map(|id| connection_of.get(id))
            .map(String::as_str)
            .collect();
        // Every injected 429 and 500 was retried (the fanouts' EMF lines say so once written).
        let (log, retried) = (log_lines(&stack, "injected "), pushed(&stack, "retried"));
        let errors = log
            .iter()
            .filter(|l| l.contains("injected 429 ") || l.contains("injected 500 "))
            .count();
        // A client hears the leave of every gone user it heard join. One that joined after a user
        // had already gone never knew of that user (joining at connect brings no present list),
        // and a 410 can come while the later clients are still connecting. The first client
        // heard every join, so it must hear every leave.
        let heard_leaves = listeners.iter().filter(|l| l.is_open()).all(|l| {
            let (joined, left) = (l.joined_users(), l.left_users());
            gone_users
                .iter()
                .filter(|u| joined.contains(**u))
                .all(|u| left.contains(*u))
        });
        let stable =
            last.as_ref() == Some(&snapshot) && closed == gone_users && heard_leaves && retried >= errors as u64;
        last = Some(snapshot);
        let store = store.clone();
        async move {
            if !stable {
                return false;
            }
            for id in &gone {
                if store.connection(id).await.unwrap().is_some() || !store.memberships_of(id).await.unwrap().is_empty()
                {
                    return false;
                }
            }
            true
        }
    })
    .await;

    let gone = injected_gone(&stack);
    let log = log_lines(&stack, "injected ");
    let count = |status: &str| {
        log.iter()
            .filter(|l| l.contains(&format!("injected {status} ")))
            .count()
    };
    let (throttled, errors) = (count("429"), count("500"));
    eprintln!(
        "injected 429={throttled} 500={errors} 410={}; {} of {} clients gone; retried {} throttled {} failed {} delivered {}",
        count("410"),
        gone.len(),
        listeners.len(),
        pushed(&stack, "retried"),
        pushed(&stack, "throttled"),
        pushed(&stack, "failed"),
        pushed(&stack, "delivered"),
    );
    // The faults happened, and the fanouts rode them out.
    assert!(
        throttled > 0 && errors > 0 && !gone.is_empty(),
        "seed {seed}: too few faults to test anything"
    );
    assert_eq!(
        count("410"),
        gone.len(),
        "seed {seed}: a gone connection is answered 410 without a new draw"
    );
    // Each injected 429 or 500 was retried once, and nothing else was.
    assert_eq!(pushed(&stack, "retried"), (throttled + errors) as u64, "seed {seed}");
    assert_eq!(pushed(&stack, "throttled"), throttled as u64, "seed {seed}");
    assert_eq!(pushed(&stack, "failed"), 0, "seed {seed}: a post was given up");

    let live: Vec<&Listener> = listeners.iter().filter(|l| l.is_open()).collect();
    assert!(!live.is_empty(), "seed {seed}: every client was made gone");
    let mut duplicates = 0;
    for l in &listeners {
        let id = connection_of
            .iter()
            .find(|(_, u)| **u == l.user)
            .map(|(id, _)| id.clone())
            .unwrap();
        if gone.contains(&id) {
            // Made gone: its socket was closed, its connection item and memberships deleted.
            assert!(!l.is_open(), "seed {seed}: {} got a 410 but its socket is open", l.user);
            assert!(
                store.connection(&id).await.unwrap().is_none(),
                "seed {seed}: {}",
                l.user
            );
            assert!(
                store.memberships_of(&id).await.unwrap().is_empty(),
                "seed {seed}: {}",
                l.user
            );
        } else {
            // Live: nothing of it removed, and it has every message.
            assert!(
                l.is_open(),
                "seed {seed}: {} was closed without a 410: {:?}",
                l.user,
                l.ended.lock().unwrap()
            );
            assert!(
                store.connection(&id).await.unwrap().is_some(),
                "seed {seed}: {} lost its connection item",
                l.user
            );
            let channels: Vec<String> = store
                .memberships_of(&id)
                .await
                .unwrap()
                .iter()
                .map(|m| m.channel.to_string())
                .collect();
            assert!(
                channels.contains(&"workspace:chaos".to_owned()),
                "seed {seed}: {}: {channels:?}",
                l.user
            );
            let got = l.field_of("message", "messageId");
            let unique: std::collections::BTreeSet<String> = got.iter().cloned().collect();
            assert_eq!(unique, sent, "seed {seed}: {} missed messages", l.user);
            duplicates += got.len() - unique.len();
        }
    }
    eprintln!(
        "{} live clients got all {} messages; {duplicates} duplicates",
        live.len(),
        sent.len()
    );
}

/// moto holds the table, the stream and the queues in memory: when it dies they are gone, and
/// `wsfan dev` says so and stops (every process it started with it) instead of running on,
/// failing every call.
#[tokio::test]
async fn when_moto_dies_wsfan_dev_says_so_and_stops() {
    let mut stack = Stack::start(&[]);
    let mut alice = stack.client("alice").await;
    alice.join("workspace:moto").await;
    let processes = wsfan_local::children::descendants(stack.child.id());
    let moto = processes_named(&stack, "moto_server.py");
    assert_eq!(moto.len(), 1, "one moto: {moto:?}");
    // SAFETY: kill(2) with the pid of a process of our own child's.
    assert_eq!(unsafe { libc::kill(moto[0] as i32, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = stack.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "wsfan dev still runs 20 s after moto died; log: {}",
            std::fs::read_to_string(&stack.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "{status}");
    let said = log_lines(&stack, "wsfan: moto exited");
    assert_eq!(
        said.len(),
        1,
        "{}",
        std::fs::read_to_string(&stack.log).unwrap_or_default()
    );
    assert!(said[0].contains("signal: 9"), "{}", said[0]);
    assert!(said[0].contains("Start it again"), "{}", said[0]);
    loop {
        let left: Vec<u32> = processes.iter().copied().filter(|p| running(*p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{left:?} outlived wsfan dev");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client learns it too: its socket ends.
    match tokio::time::timeout(WAIT, alice.socket.next()).await {
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {}
        other => panic!("the socket should have ended, got {other:?}"),
    }
}

/// SIGKILLs every process of `function` (the runtime starts a new one, as Lambda would).
fn kill_function(stack: &Stack, function: &str) -> usize {
    let pids = processes_named(stack, function);
    for pid in &pids {
        // SAFETY: kill(2) with the pid of a process of our own child's.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    pids.len()
}

/// The records of the batches of `function` whose invocation failed, as the dev log names them
/// after "retrying " (`seq A..B` or `messages id,id`).
fn retried_batches(stack: &Stack, function: &str) -> Vec<String> {
    log_lines(stack, function)
        .iter()
        .filter(|l| l.contains("FAILED"))
        .filter_map(|l| l.split("retrying ").nth(1))
        .map(|r| r.trim().to_owned())
        .collect()
}

/// Kills `function` when `moment` has come, until the dev log shows a batch cut and retried, at
/// most three times: a kill that lands between batches cuts nothing, and proves nothing.
async fn kill_mid_batch(stack: &Stack, function: &str, mut moment: impl AsyncFnMut()) {
    for _ in 0..3 {
        moment().await;
        assert!(kill_function(stack, function) > 0, "no {function} process");
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !retried_batches(stack, function).is_empty() {
            return;
        }
    }
}

/// How often each value occurs.
fn tally(values: Vec<String>) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for v in values {
        *counts.entry(v).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn stream_fanout_killed_mid_batch_loses_nothing_and_repeats_only_the_retried_batch() {
    // Slow posts keep a batch in flight long enough to kill it: one channel's records are pushed
    // one after another.
    let stack = Stack::start(&["--inject", "latency=200ms"]);
    let mut listeners = Vec::new();
    for user in ["kim", "lee", "max"] {
        let mut client = stack.client(user).await;
        client.join("workspace:kill").await;
        listeners.push(Listener::spawn(user, client));
    }
    // The joins' presence records are handled before the messages are written, so that the
    // batches that follow hold only messages.
    wait_until("kim sees lee and max arrive", WAIT, || {
        // Distinct users: delivery is at least once, so a join may come twice.
        let users: std::collections::BTreeSet<String> =
            listeners[0].field_of("presence", "userId").into_iter().collect();
        async move { users.len() == 2 }
    })
    .await;
    let ok_batches = |stack: &Stack| -> Vec<usize> {
        log_lines(stack, "stream-fanout")
            .iter()
            .filter(|l| l.trim_end().ends_with(" ok"))
            .filter_map(|l| l.split("batch of ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let before = ok_batches(&stack).len();
    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.sdk().await);
    let store = wsfan_shared::store::DynamoStore::new(dynamodb.clone(), &stack.table, Default::default());
    let publisher = wsfan_shared::publisher::ChannelPublisher::new(store, Default::default());
    let channel: wsfan_shared::channel::ChannelId = "workspace:kill".parse().unwrap();
    let mut sent = std::collections::BTreeSet::new();
    for i in 0..24 {
        let outcome = publisher
            .publish(&channel, &format!("k{i}"), "backend", None)
            .await
            .unwrap();
        sent.insert(Value::String(outcome.message_id).to_string());
    }
    // Records of one channel are pushed in order, so once kim has two more messages than the
    // finished batches held, the batch in flight has pushed two and, unless those were its last,
    // has more to go. A kill that lands just after a batch's last push waits for a new arrival.
    let mut seen_at_kill = 0;
    kill_mid_batch(&stack, "stream-fanout", async || {
        wait_until("a batch is half-way", Duration::from_secs(30), || {
            let finished: usize = ok_batches(&stack).iter().skip(before).sum();
            let n = listeners[0].field_of("message", "messageId").len();
            async move { n >= finished + 2 && n > seen_at_kill && n < 24 }
        })
        .await;
        seen_at_kill = listeners[0].field_of("message", "messageId").len();
    })
    .await;
    wait_until("every client has every message", Duration::from_secs(60), || {
        let done = listeners.iter().all(|l| {
            let got: std::collections::BTreeSet<String> = l.field_of("message", "messageId").into_iter().collect();
            got == sent
        });
        async move { done }
    })
    .await;

    // Which batch was cut, by the log; which record holds which message, by the stream.
    let retried: Vec<(u128, u128)> = retried_batches(&stack, "stream-fanout")
        .iter()
        .filter_map(|r| r.strip_prefix("seq "))
        .filter_map(|r| r.split_once(".."))
        .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
        .collect();
    assert!(
        !retried.is_empty(),
        "no batch was in flight when stream-fanout was killed"
    );
    let arn = dynamodb
        .describe_table()
        .table_name(&stack.table)
        .send()
        .await
        .unwrap()
        .table
        .and_then(|t| t.latest_stream_arn)
        .unwrap();
    let mut reader =
        wsfan_local::sources::StreamReader::new(aws_sdk_dynamodbstreams::Client::new(&stack.sdk().await), &arn, true);
    let mut sequence_of = std::collections::HashMap::new();
    for _ in 0..3 {
        for record in reader.poll(1000).await.unwrap() {
            let change = record.dynamodb.unwrap();
            let id = change
                .new_image
                .as_ref()
                .and_then(|i| i.get("messageId"))
                .and_then(|v| v.as_s().ok());
            if let (Some(id), Some(seq)) = (id, change.sequence_number) {
                sequence_of.insert(Value::String(id.clone()).to_string(), seq.parse::<u128>().unwrap());
            }
        }
    }
    let mut duplicates = 0;
    for l in &listeners {
        for (id, n) in tally(l.field_of("message", "messageId")) {
            if n > 1 {
                duplicates += n - 1;
                let seq = sequence_of[&id];
                assert!(
                    retried.iter().any(|(a, b)| (*a..=*b).contains(&seq)),
                    "{}: message {id} (seq {seq}) came {n} times but was in no retried batch {retried:?}",
                    l.user
                );
            }
        }
    }
    eprintln!(
        "stream-fanout killed: retried batches {retried:?}; {} clients got all {} messages; {duplicates} duplicates, all in the retried batch",
        listeners.len(),
        sent.len()
    );
}

#[tokio::test]
async fn progress_fanout_killed_mid_batch_loses_nothing_and_repeats_only_the_retried_batch() {
    // One event for each of 30 documents: a batch of ten is pushed at once, and slow posts keep
    // it in flight long enough to kill it.
    let stack = Stack::start(&["--inject", "latency=1500ms"]);
    let docs: Vec<String> = (0..30).map(|i| format!("kill-{i:02}")).collect();
    let mut listeners = Vec::new();
    for user in ["pam", "roy"] {
        let mut client = stack.client(user).await;
        for doc in &docs {
            let answer = client
                .ask(json!({"action": "subscribe", "docId": doc}), "subscribed")
                .await;
            assert_eq!(answer["type"], "subscribed", "{answer}");
        }
        listeners.push(Listener::spawn(user, client));
    }
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk().await);
    let mut doc_of_message = std::collections::HashMap::new();
    for doc in &docs {
        let out = sqs
            .send_message()
            .queue_url(&stack.queue)
            .message_body(json!({"type": "processing_started", "docId": doc, "totalPages": 10}).to_string())
            .send()
            .await
            .unwrap();
        doc_of_message.insert(out.message_id.unwrap(), Value::String(doc.clone()).to_string());
    }
    // The first batches hold one event each (the pollers take what has arrived so far), and as
    // each ends its poller receives a full one. The kill comes half the injected latency after an
    // arrival is seen, when those batches are half-way through their posts: killing at the
    // arrival itself can fall between batches, and did on a slow CI machine.
    let (arrived, total) = (
        || listeners[0].field_of("processing_started", "docId").len(),
        docs.len(),
    );
    kill_mid_batch(&stack, "progress-fanout", async || {
        let seen = arrived();
        wait_until("another event arrives", Duration::from_secs(30), || {
            let n = arrived();
            async move { n > seen || n == total }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(750)).await;
    })
    .await;
    let all: std::collections::BTreeSet<String> = doc_of_message.values().cloned().collect();
    wait_until(
        "every client has every document's event",
        Duration::from_secs(60),
        || {
            let done = listeners.iter().all(|l| {
                let got: std::collections::BTreeSet<String> =
                    l.field_of("processing_started", "docId").into_iter().collect();
                got == all
            });
            async move { done }
        },
    )
    .await;

    let retried: Vec<String> = retried_batches(&stack, "progress-fanout")
        .iter()
        .filter_map(|r| r.strip_prefix("messages "))
        .flat_map(|ids| ids.split(','))
        .map(|id| doc_of_message[id].clone())
        .collect();
    assert!(
        !retried.is_empty(),
        "no batch was in flight when progress-fanout was killed"
    );
    let mut duplicates = 0;
    for l in &listeners {
        for (doc, n) in tally(l.field_of("processing_started", "docId")) {
            if n > 1 {
                duplicates += n - 1;
                assert!(
                    retried.contains(&doc),
                    "{}: {doc} came {n} times but was in no retried batch",
                    l.user
                );
            }
        }
    }
    eprintln!(
        "progress-fanout killed: {} events retried; {} clients got all {} events; {duplicates} duplicates, all in the retried batch",
        retried.len(),
        listeners.len(),
        all.len()
    );
}

/// The items of the local table, read from moto directly (not through the fault proxy).
async fn table_items(stack: &Stack) -> Vec<wsfan_shared::store::Item> {
    harness::scan(&aws_sdk_dynamodb::Client::new(&stack.sdk().await), &stack.table).await
}

/// Clients that connect, send and leave while DynamoDB cancels transactions for conflicts,
/// throttles writes and loses answers to writes it applied: no connect is refused, no send is
/// answered with an error, every acked message reaches every member, and nothing is left behind.
#[tokio::test]
async fn clients_ride_out_dynamodb_conflicts_throttles_and_lost_answers() {
    const CLIENTS: usize = 8;
    const SENDS: usize = 6;
    let seed = chaos_seed();
    let stack = Stack::start(&[
        "--inject",
        "ddb-conflict=0.05,ddb-throttle=0.02,ddb-lost=0.02,ddb-latency=10ms",
        "--inject-seed",
        &seed,
    ]);

    // Each joins at connect: $connect's transaction writes the connection, its user channel
    // and the workspace, each with presence.
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let user = format!("ddb{i}");
        let url = format!(
            "{}?workspaceId=ddbchaos&token={}",
            stack.ws,
            stack.token_for(&user, &["workspace:*"])
        );
        let client = Client::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("the connect of {user} was refused: {e}"));
        clients.push((user, client));
    }

    // They all send at once, each its messages one after another, waiting for each answer.
    let sent = futures::future::join_all(clients.into_iter().map(|(user, mut client)| async move {
        let mut acked = Vec::new();
        for i in 0..SENDS {
            let answer = client
                .ask(
                    json!({"action": "sendMessage", "channel": "workspace:ddbchaos", "body": format!("{user} {i}"),
                           "clientMsgId": format!("{user}-{i}")}),
                    "ack",
                )
                .await;
            assert_eq!(answer["type"], "ack", "send {i} of {user} was answered {answer}");
            assert_eq!(answer["duplicate"], false, "send {i} of {user}: {answer}");
            acked.push(answer["messageId"].as_str().unwrap().to_owned());
        }
        (user, client, acked)
    }))
    .await;
    let acked: std::collections::BTreeSet<String> = sent.iter().flat_map(|(_, _, a)| a.clone()).collect();
    assert_eq!(acked.len(), CLIENTS * SENDS);

    // Every member gets every acked message; a second copy only from a retried batch.
    let mut clients = Vec::new();
    for (user, mut client, _) in sent {
        let received = |client: &Client| {
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            // `seen` has every frame received (`inbox` only those not yet asked for).
            for f in of_type(&client.seen, "message") {
                *counts
                    .entry(f["messageId"].as_str().unwrap_or_default().to_owned())
                    .or_default() += 1;
            }
            counts
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !acked.iter().all(|id| received(&client).contains_key(id)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, client.socket.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => client.seen.push(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Some(Ok(_))) => {}
                other => panic!(
                    "{user} is missing {:?}: {other:?}",
                    acked
                        .iter()
                        .filter(|id| !received(&client).contains_key(*id))
                        .collect::<Vec<_>>()
                ),
            }
        }
        let twice: Vec<_> = received(&client).into_iter().filter(|(_, n)| *n > 1).collect();
        assert!(
            twice.is_empty() || !log_lines(&stack, "retrying seq").is_empty(),
            "{user} got {twice:?} more than once, and no batch was retried"
        );
        clients.push(client);
    }

    // Closing every socket leaves no connection, membership or presence of theirs behind.
    for client in &mut clients {
        client.socket.close(None).await.unwrap();
    }
    wait_until("every $disconnect has cleaned up", Duration::from_secs(60), || async {
        table_items(&stack).await.iter().all(|item| {
            let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
            !text("pk").starts_with("CONN#") && !text("sk").starts_with("CONN#") && !item.contains_key("connections")
        })
    })
    .await;

    // Faults were drawn, and every one was retried by the function that met it. The fanout of
    // the leaves may still be running: a fault drawn just now has its retry logged a moment
    // later, so the count is given time to catch up.
    let counts = || {
        let injected = log_lines(&stack, "injected ddb-").len();
        let retried = log_lines(&stack, "DynamoDB: retrying").len();
        (injected, retried)
    };
    wait_until(
        "a retry logged for every injected fault",
        Duration::from_secs(10),
        || {
            let (injected, retried) = counts();
            async move { retried >= injected }
        },
    )
    .await;
    let (injected, retried) = counts();
    eprintln!("{injected} DynamoDB faults injected, {retried} retries");
    assert!(injected > 0, "no DynamoDB fault was injected");
    assert!(log_lines(&stack, "DynamoDB: giving up").is_empty());
    assert!(log_lines(&stack, "store failure").is_empty());
}
