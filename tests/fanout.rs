//! The fanout: the broadcaster, stream-fanout and progress-fanout, against moto (table, stream,
//! queues) and our @connections server, plus the producers backends use.

use std::time::Duration;

use aws_lambda_events::dynamodb::Event as DynamoDbEvent;
use aws_lambda_events::sqs::SqsEvent;
use harness::{fixture, n, s, sqs_failures, Rig, TestQueue};
use serde_json::{json, Value};
use wsfan_shared::access::Role;
use wsfan_shared::broadcaster::{Broadcast, BroadcastError, RecipientOutcome, MAX_PAYLOAD_BYTES};
use wsfan_shared::channel::ChannelId;
use wsfan_shared::config::Retention;
use wsfan_shared::model::{Connection, Membership, Message};
use wsfan_shared::progress::ProgressEvent;
use wsfan_shared::protocol::HistoryCursor;
use wsfan_shared::publisher::{ChannelPublisher, ProgressPublisher};
use wsfan_shared::store::{Connections, DynamoStore, Members, Messages, Progress};

// ---------- helpers ----------

async fn connect(rig: &Rig, connection: &str, user: Option<&str>) {
    connect_at(rig, connection, user, wsfan_shared::clock::now_millis() - 60_000).await;
}

/// A connection `$connect` stored at `connected_at` (ms).
async fn connect_at(rig: &Rig, connection: &str, user: Option<&str>, connected_at: i64) {
    let now = wsfan_shared::clock::now_millis();
    let c = Connection {
        connection_id: connection.into(),
        user_id: user.map(Into::into),
        role: Role::Member,
        channels: vec!["*".into()],
        connected_at,
        source_ip: None,
        domain_name: None,
        stage: None,
        expires_at: now / 1000 + 3600,
        joined: vec![],
        history: None,
        batch: false,
        token_exp: None,
    };
    rig.table.store.connect(&c, &[]).await.unwrap();
}

async fn join(rig: &Rig, connection: &str, user: Option<&str>, channel: &str) {
    join_taking_batches(rig, connection, user, channel, false).await;
}

/// [`join`], for a connection that takes batch frames (`?batch=1`) or not.
async fn join_taking_batches(rig: &Rig, connection: &str, user: Option<&str>, channel: &str, batch: bool) {
    let m = Membership {
        channel: channel.parse().unwrap(),
        connection_id: connection.into(),
        user_id: user.map(Into::into),
        role: Role::Member,
        joined_at: wsfan_shared::clock::now_millis(),
        expires_at: wsfan_shared::clock::now_secs() + 3600,
        history: None,
        batch,
    };
    rig.table.store.join(&m).await.unwrap();
}

async fn member(rig: &Rig, connection: &str, user: &str, channel: &str) {
    connect(rig, connection, Some(user)).await;
    join(rig, connection, Some(user), channel).await;
}

fn chat(channel: &str, sender: &str, body: &str) -> Message {
    wsfan_shared::publisher::chat_message(&channel.parse().unwrap(), sender, body, None, 3600)
}

/// The messages `connection_id` was posted, in the order it got them.
fn bodies(rig: &Rig, connection_id: &str) -> Vec<String> {
    rig.frames(connection_id)
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["body"].as_str().unwrap().to_owned())
        .collect()
}

fn of_type<'a>(frames: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == kind).collect()
}

fn failures(r: &aws_lambda_events::streams::DynamoDbEventResponse) -> Vec<String> {
    let mut v: Vec<String> = r
        .batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect();
    v.sort();
    v
}

// ---------- stream-fanout over the real stream ----------

#[tokio::test]
async fn a_message_reaches_every_member_of_its_channel_and_no_one_else() {
    let mut rig = Rig::new().await;
    member(&rig, "a1", "alice", "workspace:42").await;
    member(&rig, "a2", "alice", "workspace:42").await; // alice's second tab
    member(&rig, "b1", "bob", "workspace:42").await;
    member(&rig, "c1", "carol", "workspace:7").await;
    rig.run_stream_fanout().await;
    rig.server.reset();

    let message = chat("workspace:42", "alice", "hello");
    rig.table.store.post(&message, Some("a1")).await.unwrap();
    let response = rig.run_stream_fanout().await;
    assert!(response.batch_item_failures.is_empty());

    for connection in ["a1", "a2", "b1"] {
        let frames = rig.frames(connection);
        assert_eq!(frames.len(), 1, "{connection}: {frames:?}");
        assert_eq!(frames[0]["type"], "message");
        assert_eq!(frames[0]["body"], "hello");
        assert_eq!(frames[0]["channel"], "workspace:42");
        assert_eq!(frames[0]["messageId"], message.message_id.as_str());
        assert_eq!(frames[0]["senderId"], "alice");
    }
    assert!(rig.frames("c1").is_empty(), "carol is not in workspace:42");
    assert_eq!(rig.server.recipients(), vec!["a1", "a2", "b1"]);
}

#[tokio::test]
async fn presence_counts_users_not_tabs() {
    let mut rig = Rig::new().await;
    member(&rig, "b1", "bob", "workspace:42").await;
    rig.run_stream_fanout().await;
    rig.server.reset();

    // Alice opens two tabs: one join.
    member(&rig, "a1", "alice", "workspace:42").await;
    member(&rig, "a2", "alice", "workspace:42").await;
    rig.run_stream_fanout().await;
    let joins = of_type(&rig.frames("b1"), "presence")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(
        joins,
        vec![json!({"type": "presence", "channel": "workspace:42", "userId": "alice", "state": "join"})]
    );

    // Closing one tab announces nothing; closing the last announces the leave.
    rig.server.reset();
    rig.table.store.disconnect("a1").await.unwrap();
    rig.run_stream_fanout().await;
    assert!(of_type(&rig.frames("b1"), "presence").is_empty());
    rig.table.store.disconnect("a2").await.unwrap();
    rig.run_stream_fanout().await;
    let leaves = rig.frames("b1");
    assert_eq!(
        leaves,
        vec![json!({"type": "presence", "channel": "workspace:42", "userId": "alice", "state": "leave"})]
    );
}

#[tokio::test]
async fn a_410_from_a_connection_still_connecting_keeps_it() {
    let mut rig = Rig::new().await;
    member(&rig, "a1", "alice", "workspace:42").await;
    rig.run_stream_fanout().await;
    // Dan's $connect has just written his connection and membership; API Gateway has not
    // established the connection yet, so a post to it is answered 410.
    connect_at(&rig, "d1", Some("dan"), wsfan_shared::clock::now_millis()).await;
    join(&rig, "d1", Some("dan"), "workspace:42").await;
    rig.server.reset();
    rig.server.fail("d1", 410, Some(1));
    rig.table
        .store
        .post(&chat("workspace:42", "alice", "early"), Some("a1"))
        .await
        .unwrap();
    assert!(rig.run_stream_fanout().await.batch_item_failures.is_empty());
    assert!(rig.frames("d1").is_empty());
    // Kept: once connected, dan gets what comes next.
    assert!(
        rig.table.store.connection("d1").await.unwrap().is_some(),
        "dan's connection item stays"
    );
    let channels: Vec<String> = rig
        .table
        .store
        .memberships_of("d1")
        .await
        .unwrap()
        .iter()
        .map(|m| m.channel.to_string())
        .collect();
    assert!(
        channels.contains(&"workspace:42".to_owned()),
        "and his membership: {channels:?}"
    );
    rig.table
        .store
        .post(&chat("workspace:42", "alice", "later"), Some("a1"))
        .await
        .unwrap();
    rig.run_stream_fanout().await;
    let frames = rig.frames("d1");
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["body"], "later");
}

#[tokio::test]
async fn a_gone_recipient_is_deleted_with_its_memberships_and_only_that_one() {
    let mut rig = Rig::new().await;
    member(&rig, "a1", "alice", "workspace:42").await;
    member(&rig, "b1", "bob", "workspace:42").await;
    join(&rig, "b1", Some("bob"), "doc:report-1").await;
    member(&rig, "c1", "carol", "workspace:42").await;
    rig.run_stream_fanout().await;
    rig.server.reset();
    rig.server.gone("b1");

    // Alice (the sender) posts; bob's connection is the stale one.
    rig.table
        .store
        .post(&chat("workspace:42", "alice", "anyone there?"), Some("a1"))
        .await
        .unwrap();
    let response = rig.run_stream_fanout().await;
    assert!(
        response.batch_item_failures.is_empty(),
        "a 410 is handled, not a failure"
    );

    assert!(
        rig.table.store.connection("b1").await.unwrap().is_none(),
        "bob's connection item is gone"
    );
    assert!(
        rig.table.store.memberships_of("b1").await.unwrap().is_empty(),
        "and every membership"
    );
    for alive in ["a1", "c1"] {
        assert!(
            rig.table.store.connection(alive).await.unwrap().is_some(),
            "{alive} stays"
        );
        assert_eq!(rig.frames(alive).len(), 1, "{alive} got the message");
    }
    assert_eq!(
        rig.table
            .store
            .members(&"workspace:42".parse().unwrap())
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_until_delivered() {
    let rig = Rig::new().await;
    rig.server.fail("b1", 429, Some(3));
    rig.server.fail("c1", 500, Some(2));
    let report = rig
        .broadcaster
        .deliver(
            vec!["a1".into(), "b1".into(), "c1".into()],
            b"{\"type\":\"pong\",\"at\":1}",
        )
        .await
        .unwrap();
    for id in ["a1", "b1", "c1"] {
        assert_eq!(rig.server.received(id).len(), 1, "{id} got exactly one copy");
    }
    assert!(
        report.outcomes.iter().all(|(_, d)| *d == RecipientOutcome::Delivered),
        "{report:?}"
    );
    assert_eq!(report.counters.delivered, 3);
    assert_eq!(report.counters.retried, 5);
    assert_eq!(report.counters.throttled, 3, "b1's three 429s, not c1's 500s");
    assert_eq!(report.counters.failed, 0);
}

#[tokio::test]
async fn retries_stop_at_the_deadline_and_count_the_failure() {
    let rig = Rig::new().await;
    let mut config = rig.broadcaster.config().clone();
    config.deadline = Duration::from_millis(300);
    let sdk = harness::moto::shared().sdk_config().await;
    let broadcaster = wsfan_shared::broadcaster::Broadcaster::new(&sdk, config, rig.table.store.clone());
    rig.server.fail("stuck", 500, None);
    let report = broadcaster
        .deliver(vec!["stuck".into(), "fine".into()], b"{}")
        .await
        .unwrap();
    assert_eq!(report.counters.failed, 1);
    assert_eq!(report.counters.delivered, 1);
    assert!(report.counters.retried > 0);
    let failed: Vec<_> = report.undelivered().collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "stuck");
    assert!(failed[0].1.contains("500"), "{}", failed[0].1);
}

#[tokio::test]
async fn payloads_over_the_limit_are_refused_before_any_call() {
    let rig = Rig::new().await;
    let big = vec![b'x'; MAX_PAYLOAD_BYTES + 1];
    let err = rig.broadcaster.deliver(vec!["a1".into()], &big).await.unwrap_err();
    assert_eq!(err, BroadcastError::PayloadTooLarge(MAX_PAYLOAD_BYTES + 1));
    assert_eq!(
        rig.server.stats().requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Exactly at the limit is fine.
    let report = rig.broadcaster.deliver(vec!["a1".into()], &big[1..]).await.unwrap();
    assert_eq!(report.counters.delivered, 1);
}

#[tokio::test]
async fn the_broadcaster_signs_its_requests_and_survives_a_stage_less_endpoint() {
    let rig = Rig::new().await;
    let sdk = harness::moto::shared().sdk_config().await;
    let config = wsfan_shared::broadcaster::BroadcastConfig::new(format!("http://{}", rig.server.addr()));
    let broadcaster = wsfan_shared::broadcaster::Broadcaster::new(&sdk, config, rig.table.store.clone());
    let report = broadcaster.deliver(vec!["x1".into()], b"hi").await.unwrap();
    assert_eq!(report.counters.delivered, 1);
    assert_eq!(rig.server.received("x1"), vec!["hi"]);
    assert_eq!(
        rig.server.stats().unsigned.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// The broadcaster signs with its own cached-key SigV4 scheme; the server recomputes every
/// signature with aws-sigv4, so these posts pass only if the signatures are right.
#[tokio::test]
async fn the_server_checks_signatures_and_the_broadcasters_are_right() {
    use aws_credential_types::Credentials;
    use std::sync::atomic::Ordering::Relaxed;
    let rig = Rig::new().await;
    let with = |creds: Credentials| {
        let sdk = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(creds))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let config = wsfan_shared::broadcaster::BroadcastConfig::new(rig.server.endpoint("prod"));
        wsfan_shared::broadcaster::Broadcaster::new(&sdk, config, rig.table.store.clone())
    };

    // Temporary credentials: the session token is signed too.
    rig.server.verify_signatures_with("ASIAEXAMPLE", "secret/with+chars");
    let session = with(Credentials::new(
        "ASIAEXAMPLE",
        "secret/with+chars",
        Some("tok//en==".into()),
        None,
        "t",
    ));
    let ids: Vec<String> = ["L0SM9cOFvHcCIhw=", "a-b_c~d", "x1"].map(String::from).to_vec();
    let report = session.deliver(ids.clone(), b"{\"type\":\"message\"}").await.unwrap();
    assert_eq!(report.counters.delivered, 3, "{report:?}");
    for id in &ids {
        assert_eq!(rig.server.received(id).len(), 1, "{id}");
    }

    // The SDK's own signer passes the same check, so the check is SigV4's and not ours.
    let sdk_signed = management_client(
        &rig,
        "eu-west-1",
        Credentials::new("ASIAEXAMPLE", "secret/with+chars", None, None, "t"),
    );
    sdk_signed
        .post_to_connection()
        .connection_id("sdk1")
        .data(aws_sdk_apigatewaymanagement::primitives::Blob::new("hi"))
        .send()
        .await
        .expect("the SDK's signature is accepted");
    assert_eq!(rig.server.stats().bad_signatures.load(Relaxed), 0);

    // A wrong secret is refused, and the broadcaster does not retry a 403.
    let wrong = with(Credentials::new("ASIAEXAMPLE", "not-the-secret", None, None, "t"));
    let report = wrong.deliver(vec!["x2".into()], b"{}").await.unwrap();
    assert_eq!(report.counters.failed, 1, "{report:?}");
    assert_eq!(report.counters.retried, 0);
    let (_, why) = report.undelivered().next().unwrap();
    assert!(why.contains("403"), "{why}");
    assert_eq!(rig.server.stats().bad_signatures.load(Relaxed), 1);
    assert!(rig.server.received("x2").is_empty());
}

#[tokio::test]
async fn batch_item_failures_list_exactly_the_failed_records() {
    let mut rig = Rig::new().await;
    member(&rig, "a1", "alice", "workspace:42").await;
    member(&rig, "d1", "dave", "workspace:13").await;
    rig.run_stream_fanout().await;
    rig.server.reset();

    let response = rig
        .stream_fanout(fixture::<DynamoDbEvent>("stream-fanout/mixed-batch-with-poison"))
        .await;
    // The poison record (200, a message item without a body) can never be used: it went to
    // the failure destination at once, so it is not retried, and the record behind it in its
    // channel (300) went on.
    assert_eq!(failures(&response), Vec::<String>::new());
    let bodies: Vec<Value> = rig.frames("a1").iter().map(|f| f["body"].clone()).collect();
    assert_eq!(bodies, vec![json!("first"), json!("second")], "workspace:42 in order");
    let parked = rig.parked().await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["record"]["dynamodb"]["SequenceNumber"], "200");
    assert!(
        parked[0]["reason"].as_str().unwrap().contains("needs body"),
        "{}",
        parked[0]["reason"]
    );
    let d1: Vec<Value> = rig.frames("d1").iter().map(|f| f["body"].clone()).collect();
    assert_eq!(d1, vec![json!("after the poison")]);
}

#[tokio::test]
async fn records_of_one_channel_keep_their_order() {
    let mut rig = Rig::new().await;
    member(&rig, "a1", "alice", "workspace:42").await;
    member(&rig, "b1", "bob", "workspace:9").await;
    rig.run_stream_fanout().await;
    rig.server.reset();
    rig.server.set_latency(Duration::from_millis(2));
    for i in 0..20 {
        let channel = if i % 2 == 0 { "workspace:42" } else { "workspace:9" };
        rig.table
            .store
            .post(&chat(channel, "x", &format!("{i}")), None)
            .await
            .unwrap();
    }
    assert!(rig.run_stream_fanout().await.batch_item_failures.is_empty());
    let got = |c: &str| {
        rig.frames(c)
            .iter()
            .map(|f| f["body"].as_str().unwrap().parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(got("a1"), (0..20).step_by(2).collect::<Vec<_>>());
    assert_eq!(got("b1"), (1..20).step_by(2).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_small_channel_with_more_work_than_fits_before_the_hand_off_goes_to_deliver_in_order() {
    // 50 members that take one frame a post, 100 messages waiting: 5,000 posts. Before a hand-off
    // 300 ms away, one environment makes at most 4,200 (shard::ENVIRONMENT_POSTS_PER_SECOND), so
    // the batch goes to deliver's parallel groups at once, though the channel is small.
    let mut rig = Rig::new().await;
    let channel = "workspace:busy";
    // Ids over four groups of the delivery queue, as API Gateway's spread over all of them.
    let members: Vec<String> = (0..50)
        .map(|i| format!("{}{i:03}", ["A", "K", "U", "f"][i % 4]))
        .collect();
    for id in &members {
        member(&rig, id, &format!("user-{id}"), channel).await;
    }
    // One member takes batch frames: a post or two for all of it, so it stays on this path.
    connect(&rig, "zbatch", Some("zed")).await;
    join_taking_batches(&rig, "zbatch", Some("zed"), channel, true).await;
    rig.run_stream_fanout().await;
    rig.server.reset();
    for i in 0..100 {
        rig.table
            .store
            .post(&chat(channel, "x", &format!("{i}")), None)
            .await
            .unwrap();
    }
    let batch = rig.stream_batch().await;
    let stop_at = std::time::Instant::now() + Duration::from_millis(300);
    let response = rig.stream_fanout_until(batch, Some(stop_at)).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    // stream-fanout posted none of the one-frame members' 5,000 frames itself...
    let posted: usize = members.iter().map(|id| rig.server.received(id).len()).sum();
    assert_eq!(posted, 0, "stream-fanout posted {posted} frames itself");
    // ...and the batching member's 100 frames in one post.
    let zed = rig.frames("zbatch");
    assert_eq!(zed.len(), 1, "{zed:?}");
    assert_eq!(zed[0]["frames"].as_array().map(Vec::len), Some(100));
    // deliver posts the rest, each member's in stream order, nobody twice.
    rig.drain_deliveries(&rig.broadcaster).await;
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    for id in &members {
        assert_eq!(bodies(&rig, id), expected, "{id}");
    }
    assert_eq!(rig.frames("zbatch").len(), 1, "the batching member got nothing again");
}

#[tokio::test]
async fn a_channel_of_ten_thousand_members_is_read_across_pages() {
    let rig = Rig::new().await;
    let channel: ChannelId = "workspace:big".parse().unwrap();
    // Batch-write memberships directly: the point is the paginated read, not 10,000 joins.
    let items: Vec<_> = (0..10_000)
        .map(|i| {
            let m = Membership {
                channel: channel.clone(),
                connection_id: format!("conn-{i:05}"),
                user_id: Some(format!("user-{i}")),
                role: Role::Member,
                joined_at: 1,
                expires_at: 2_000_000_000,
                history: None,
                batch: false,
            };
            wsfan_shared::store::to_item(m.key(), &m).unwrap()
        })
        .collect();
    for chunk in items.chunks(25) {
        let requests = chunk
            .iter()
            .map(|item| {
                aws_sdk_dynamodb::types::WriteRequest::builder()
                    .put_request(
                        aws_sdk_dynamodb::types::PutRequest::builder()
                            .set_item(Some(item.clone()))
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect();
        rig.table
            .client
            .batch_write_item()
            .request_items(&rig.table.name, requests)
            .send()
            .await
            .unwrap();
    }
    let mut members: Vec<String> = rig
        .table
        .store
        .members(&channel)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.connection_id)
        .collect();
    members.sort();
    assert_eq!(members.len(), 10_000);
    assert_eq!(members[0], "conn-00000");
    assert_eq!(members[9_999], "conn-09999");
}

// ---------- stream-fanout fixtures ----------

async fn run_stream_fixture(rig: &Rig, name: &str) -> aws_lambda_events::streams::DynamoDbEventResponse {
    rig.stream_fanout(fixture(&format!("stream-fanout/{name}"))).await
}

#[tokio::test]
async fn stream_fixtures_push_what_they_describe() {
    let mut rig = Rig::new().await;
    member(&rig, "A1iceConn000AA=", "alice", "workspace:42").await;
    member(&rig, "C4rolConn000AA=", "carol", "workspace:42").await;
    rig.run_stream_fanout().await;

    let cases: [(&str, Option<Value>); 9] = [
        (
            "message-insert",
            Some(
                json!({"type": "message", "channel": "workspace:42", "messageId": "01JDB2X5Q0E7M3V9K4T8N6R2WA",
                "senderId": "alice", "body": "Hello, team!", "clientMsgId": "c-7f3a", "sentAt": 1795305605000_i64}),
            ),
        ),
        (
            "reaction-insert",
            Some(
                json!({"type": "reaction", "channel": "workspace:42", "messageId": "01JDB2X6A1B2C3D4E5F6G7H8J9",
                "senderId": "alice", "targetId": "01JDB2X5Q0E7M3V9K4T8N6R2WA", "emoji": "👍", "sentAt": 1795305605000_i64}),
            ),
        ),
        // A second user's reaction: the latest reaction, with the message's whole summary.
        (
            "reaction-summary-modify",
            Some(
                json!({"type": "reaction", "channel": "workspace:42", "messageId": "01JDB2X8B1C2D3E4F5G6H7J8K9",
                "senderId": "bob", "targetId": "01JDB2X5Q0E7M3V9K4T8N6R2WA", "emoji": "👍", "sentAt": 1795305606000_i64,
                "reactions": {"👍": {"count": 2, "users": ["alice", "bob"]}}}),
            ),
        ),
        // Bob's read cursor moved from 9 to 12: a receipt, without seq, with the cursor.
        (
            "read-cursor-modify",
            Some(
                json!({"type": "receipt", "channel": "workspace:42", "messageId": "01JDB2X9C1D2E3F4G5H6J7K8M9",
                "senderId": "bob", "targetId": "01JDB2X5Q0E7M3V9K4T8N6R2WA", "readSeq": 12, "sentAt": 1795305607000_i64}),
            ),
        ),
        (
            "typing-insert",
            Some(
                json!({"type": "typing", "channel": "workspace:42", "messageId": "01JDB2X7K8M9N0P1Q2R3S4T5V6",
                "senderId": "alice", "sentAt": 1795305605000_i64}),
            ),
        ),
        (
            "presence-join",
            Some(json!({"type": "presence", "channel": "workspace:42", "userId": "bob", "state": "join"})),
        ),
        (
            "presence-leave",
            Some(json!({"type": "presence", "channel": "workspace:42", "userId": "bob", "state": "leave"})),
        ),
        (
            "presence-ttl-remove",
            Some(json!({"type": "presence", "channel": "workspace:42", "userId": "bob", "state": "leave"})),
        ),
        // A membership record is not presence by itself (the presence item is): nothing is sent.
        ("membership-insert", None),
    ];
    for (name, expected) in cases {
        rig.server.reset();
        let response = run_stream_fixture(&rig, name).await;
        assert!(response.batch_item_failures.is_empty(), "{name}");
        for connection in ["A1iceConn000AA=", "C4rolConn000AA="] {
            let frames = rig.frames(connection);
            match &expected {
                Some(frame) => assert_eq!(frames, vec![frame.clone()], "{name} to {connection}"),
                None => assert!(frames.is_empty(), "{name} sends nothing: {frames:?}"),
            }
        }
    }
}

/// A batch of read-cursor moves: `moves` (user, seq, receipt id) after the fixture's own (bob to 12).
fn cursor_moves(moves: &[(&str, u64, &str)]) -> Value {
    let mut event: Value = fixture("stream-fanout/read-cursor-modify");
    let first = event["Records"][0].clone();
    let mut records = vec![first.clone()];
    for (n, (user, seq, id)) in moves.iter().enumerate() {
        let mut r = first.clone();
        r["eventID"] = json!(format!("cursor-{n}"));
        r["dynamodb"]["SequenceNumber"] = json!(format!("{}", 200 + n));
        r["dynamodb"]["Keys"]["sk"]["S"] = json!(format!("READ#{user}"));
        r["dynamodb"]["OldImage"] = r["dynamodb"]["NewImage"].clone();
        let image = &mut r["dynamodb"]["NewImage"];
        image["sk"]["S"] = json!(format!("READ#{user}"));
        image["userId"]["S"] = json!(user);
        image["seq"]["N"] = json!(seq.to_string());
        image["messageId"]["S"] = json!(id);
        records.push(r);
    }
    event["Records"] = json!(records);
    event
}

#[tokio::test]
async fn the_read_cursor_moves_of_a_batch_are_pushed_as_one_frame_with_each_users_last() {
    let mut rig = Rig::new().await;
    member(&rig, "A1iceConn000AA=", "alice", "workspace:42").await;
    rig.run_stream_fanout().await;
    rig.server.reset();
    // Bob's cursor moves 9 -> 12 -> 15, carol's to 4 and dave's to 5, all in one batch.
    let event = cursor_moves(&[
        ("carol", 4, "01JDB2XA000000000000000001"),
        ("bob", 15, "01JDB2XA000000000000000002"),
        ("dave", 5, "01JDB2XA000000000000000003"),
    ]);
    let response = rig.stream_fanout(serde_json::from_value(event).unwrap()).await;
    assert!(response.batch_item_failures.is_empty());
    let frames = rig.frames("A1iceConn000AA=");
    assert_eq!(frames.len(), 1, "one frame for every cursor: {frames:?}");
    assert_eq!(frames[0]["type"], "receipts");
    assert_eq!(frames[0]["channel"], "workspace:42");
    let receipts: Vec<(&str, u64, &str)> = frames[0]["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["senderId"].as_str().unwrap(),
                r["readSeq"].as_u64().unwrap(),
                r["messageId"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        receipts,
        vec![
            ("carol", 4, "01JDB2XA000000000000000001"),
            ("bob", 15, "01JDB2XA000000000000000002"),
            ("dave", 5, "01JDB2XA000000000000000003"),
        ]
    );
}

#[tokio::test]
async fn cursor_moves_waiting_for_a_later_one_are_retried_when_the_batch_stops_before_it() {
    let mut rig = Rig::new().await;
    member(&rig, "A1iceConn000AA=", "alice", "workspace:42").await;
    rig.run_stream_fanout().await;
    // Carol's cursor moves (200), then a record that can never be used and cannot be parked
    // (the failure destination is a queue that does not exist), then bob's (202). Carol's move
    // waited to go out with bob's: it must be retried with them, not counted as done.
    let mut event = cursor_moves(&[
        ("carol", 4, "01JDB2XA000000000000000001"),
        ("bob", 15, "01JDB2XA000000000000000002"),
    ]);
    let mut poison: Value = fixture::<Value>("stream-fanout/mixed-batch-with-poison")["Records"][1].clone();
    assert_eq!(
        poison["dynamodb"]["SequenceNumber"], "200",
        "the fixture's poison record"
    );
    poison["dynamodb"]["Keys"]["pk"]["S"] = json!("CHAN#workspace:42");
    poison["dynamodb"]["NewImage"]["pk"]["S"] = json!("CHAN#workspace:42");
    poison["dynamodb"]["SequenceNumber"] = json!("201");
    let records = event["Records"].as_array_mut().unwrap();
    records.remove(0); // only carol's and bob's moves
    records[1]["dynamodb"]["SequenceNumber"] = json!("202");
    records.insert(1, poison);
    let sdk = harness::moto::shared().sdk_config().await;
    let gone = wsfan_shared::publisher::FailureQueue::new(
        aws_sdk_sqs::Client::new(&sdk),
        format!("{}-gone", rig.failures_url),
    );
    let response = stream_fanout::handle(
        &rig.table.store,
        &rig.broadcaster,
        &gone,
        &rig.shards,
        serde_json::from_value(event).unwrap(),
        None,
    )
    .await;
    assert_eq!(failures(&response), vec!["200", "201", "202"]);
}

#[tokio::test]
async fn a_burst_of_one_users_receipts_in_a_batch_is_pushed_once_as_a_receipt() {
    let mut rig = Rig::new().await;
    member(&rig, "A1iceConn000AA=", "alice", "workspace:42").await;
    rig.run_stream_fanout().await;
    rig.server.reset();
    // Bob's cursor moves 9 -> 12 -> 15: one user, so the frame every client knows.
    let event = cursor_moves(&[("bob", 15, "01JDB2XA000000000000000002")]);
    let response = rig.stream_fanout(serde_json::from_value(event).unwrap()).await;
    assert!(response.batch_item_failures.is_empty());
    let frames = rig.frames("A1iceConn000AA=");
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "receipt");
    assert_eq!(frames[0]["senderId"], "bob");
    assert_eq!(frames[0]["readSeq"], 15);
}

#[tokio::test]
async fn every_fanout_fixture_is_run_by_a_test_here() {
    harness::assert_every_fixture_named_in(
        "tests/fanout.rs",
        include_str!("fanout.rs"),
        &["stream-fanout", "progress-fanout"],
    );
}

// ---------- progress-fanout ----------

#[tokio::test]
async fn progress_reaches_doc_subscribers_and_the_snapshot_never_moves_back() {
    let rig = Rig::new().await;
    member(&rig, "s1", "sam", "doc:report-1").await;
    member(&rig, "o1", "olga", "doc:other").await;
    let queue = TestQueue::new(false, 3).await;
    let publisher = ProgressPublisher::new(queue.client.clone(), &queue.url);

    // Through the queue and the handler, as Lambda's event source mapping would.
    let deliver = async |events: &[ProgressEvent]| {
        publisher.send(events).await.unwrap();
        let (event, messages) = queue.receive_event().await;
        assert_eq!(event.records.len(), events.len());
        let response = progress_fanout::handle(&rig.table.store, &rig.broadcaster, &rig.shards, event).await;
        assert!(response.batch_item_failures.is_empty());
        queue.settle(&messages, &[]).await;
    };
    deliver(&[
        ProgressEvent::started("report-1", Some(100)),
        ProgressEvent::progress("report-1", 50, 100),
    ])
    .await;
    // A late event (30 after 50) and a duplicate (50 again) change nothing and reach nobody.
    deliver(&[ProgressEvent::progress("report-1", 30, 100)]).await;
    deliver(&[ProgressEvent::progress("report-1", 50, 100)]).await;

    let frames = rig.frames("s1");
    assert_eq!(
        frames,
        vec![
            json!({"type": "processing_started", "docId": "report-1", "totalPages": 100}),
            json!({"type": "progress", "docId": "report-1", "pagesProcessed": 50, "totalPages": 100}),
        ]
    );
    assert!(rig.frames("o1").is_empty());
    let snapshot = rig.table.store.progress("report-1").await.unwrap().unwrap();
    assert_eq!(snapshot["pagesProcessed"], 50);
    assert_eq!(snapshot["type"], "progress");
    assert!(snapshot.get("position").is_none(), "internal ordering is not shown");
}

#[tokio::test]
async fn a_malformed_message_fails_alone_and_ends_in_the_dlq() {
    let rig = Rig::new().await;
    member(&rig, "s1", "sam", "doc:report-1").await;
    let queue = TestQueue::new(false, 2).await;
    let send = |body: &str| {
        queue
            .client
            .send_message()
            .queue_url(&queue.url)
            .message_body(body)
            .send()
    };
    send(r#"{"type":"progress","docId":"report-1","pagesProcessed":1,"totalPages":4}"#)
        .await
        .unwrap();
    send("{not json").await.unwrap();
    send(r#"{"type":"progress","docId":"report-1","pagesProcessed":2,"totalPages":4}"#)
        .await
        .unwrap();

    let (event, messages) = queue.receive_event().await;
    let poison_id = messages
        .iter()
        .find(|m| m.body.as_deref() == Some("{not json"))
        .unwrap()
        .message_id
        .clone()
        .unwrap();
    let response = progress_fanout::handle(&rig.table.store, &rig.broadcaster, &rig.shards, event).await;
    let failed = sqs_failures(&response);
    assert_eq!(failed, vec![poison_id.clone()], "only the malformed message");
    assert_eq!(rig.frames("s1").len(), 2, "the rest of the batch was delivered");
    queue.settle(&messages, &failed).await;

    // Lambda keeps failing it; after maxReceiveCount the redrive policy moves it to the DLQ.
    for _ in 0..3 {
        let (event, messages) = queue.receive_event().await;
        if messages.is_empty() {
            break;
        }
        let failed =
            sqs_failures(&progress_fanout::handle(&rig.table.store, &rig.broadcaster, &rig.shards, event).await);
        assert_eq!(failed, vec![poison_id.clone()]);
        queue.settle(&messages, &failed).await;
    }
    let dlq = queue
        .client
        .receive_message()
        .queue_url(&queue.dlq_url)
        .send()
        .await
        .unwrap();
    let dead = dlq.messages.unwrap_or_default();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body.as_deref(), Some("{not json"));
    assert_eq!(queue.count(&queue.url).await, 0, "nothing left retrying");
}

#[tokio::test]
async fn a_fifo_queue_keeps_each_documents_events_in_order() {
    let rig = Rig::new().await;
    member(&rig, "s1", "sam", "doc:report-1").await;
    member(&rig, "s2", "sue", "doc:report-9").await;
    let queue = TestQueue::new(true, 3).await;
    let publisher = ProgressPublisher::new(queue.client.clone(), &queue.url);
    let events: Vec<ProgressEvent> = (1..=4)
        .flat_map(|i| {
            [
                ProgressEvent::progress("report-1", i, 4),
                ProgressEvent::progress("report-9", i, 4),
            ]
        })
        .collect();
    publisher.send(&events).await.unwrap();
    let (event, messages) = queue.receive_event().await;
    assert_eq!(event.records.len(), 8);
    assert!(event
        .records
        .iter()
        .all(|r| r.attributes.contains_key("MessageGroupId")));
    let response = progress_fanout::handle(&rig.table.store, &rig.broadcaster, &rig.shards, event).await;
    assert!(response.batch_item_failures.is_empty());
    queue.settle(&messages, &[]).await;
    for connection in ["s1", "s2"] {
        let pages: Vec<i64> = rig
            .frames(connection)
            .iter()
            .map(|f| f["pagesProcessed"].as_i64().unwrap())
            .collect();
        assert_eq!(pages, vec![1, 2, 3, 4], "{connection}");
    }
}

async fn run_progress_fixture(rig: &Rig, name: &str) -> aws_lambda_events::sqs::SqsBatchResponse {
    progress_fanout::handle(
        &rig.table.store,
        &rig.broadcaster,
        &rig.shards,
        fixture::<SqsEvent>(&format!("progress-fanout/{name}")),
    )
    .await
}

#[tokio::test]
async fn progress_fixtures_push_and_fail_what_they_should() {
    let rig = Rig::new().await;
    member(&rig, "s1", "sam", "doc:report-1").await;
    member(&rig, "s3", "sid", "doc:report-3").await;

    let response = run_progress_fixture(&rig, "progress-batch").await;
    assert!(response.batch_item_failures.is_empty());
    let kinds: Vec<Value> = rig.frames("s1").iter().map(|f| f["type"].clone()).collect();
    assert_eq!(
        kinds,
        vec![
            json!("processing_started"),
            json!("progress"),
            json!("processing_complete")
        ]
    );
    assert_eq!(
        rig.table.store.progress("report-1").await.unwrap().unwrap()["type"],
        "processing_complete"
    );

    // After completion, the FIFO batch's events are all late: nothing moves, nobody is told.
    rig.server.reset();
    let response = run_progress_fixture(&rig, "fifo-batch").await;
    assert!(response.batch_item_failures.is_empty());
    assert!(rig.frames("s1").is_empty());

    let response = run_progress_fixture(&rig, "malformed-body").await;
    assert_eq!(
        sqs_failures(&response),
        vec![
            "9e8d7c6b-0002-4a5b-8c9d-000000000002",
            "9e8d7c6b-0003-4a5b-8c9d-000000000003"
        ]
    );
    assert_eq!(
        rig.frames("s3"),
        vec![json!({"type": "progress", "docId": "report-3", "pagesProcessed": 1, "totalPages": 10})]
    );
}

#[tokio::test]
async fn the_fifo_fixture_applies_in_order_on_a_fresh_document() {
    let rig = Rig::new().await;
    member(&rig, "s1", "sam", "doc:report-1").await;
    let response = run_progress_fixture(&rig, "fifo-batch").await;
    assert!(response.batch_item_failures.is_empty());
    let frames = rig.frames("s1");
    let kinds: Vec<(&str, i64)> = frames
        .iter()
        .map(|f| (f["type"].as_str().unwrap(), f["pagesProcessed"].as_i64().unwrap()))
        .collect();
    assert_eq!(kinds, vec![("progress", 10), ("error", 10), ("progress", 20)]);
    assert_eq!(frames[1]["recoverable"], true);
}

// ---------- producers ----------

#[tokio::test]
async fn a_backend_notifies_one_user_on_every_device_with_one_write() {
    let mut rig = Rig::new().await;
    connect(&rig, "phone", Some("alice")).await;
    connect(&rig, "laptop", Some("alice")).await;
    connect(&rig, "other", Some("bob")).await;
    rig.run_stream_fanout().await;
    rig.server.reset();

    let publisher = ChannelPublisher::new(rig.table.store.clone(), Retention::default());
    let channel = ChannelId::user("alice").unwrap();
    let first = publisher
        .publish(&channel, "Your booking is confirmed", "bookings", Some("b-17"))
        .await
        .unwrap();
    let again = publisher
        .publish(&channel, "Your booking is confirmed", "bookings", Some("b-17"))
        .await
        .unwrap();
    assert_eq!(first.message_id, again.message_id);
    assert!(again.duplicate);
    let item = rig.table.message("CHAN#user:alice", &first.message_id).await.unwrap();
    assert_eq!(s(&item, "senderId"), "bookings");
    assert!(n(&item, "expiresAt") > 0);

    rig.run_stream_fanout().await;
    for device in ["phone", "laptop"] {
        let frames = rig.frames(device);
        assert_eq!(frames.len(), 1, "{device}: {frames:?}");
        assert_eq!(frames[0]["body"], "Your booking is confirmed");
    }
    assert!(rig.frames("other").is_empty());
}

#[tokio::test]
async fn the_progress_publisher_refuses_invalid_events_before_sending_any() {
    let queue = TestQueue::new(false, 3).await;
    let publisher = ProgressPublisher::new(queue.client.clone(), &queue.url);
    let events = [
        ProgressEvent::progress("report-1", 1, 10),
        ProgressEvent::progress("report-1", 11, 10),
    ];
    assert!(publisher.send(&events).await.is_err());
    assert_eq!(queue.count(&queue.url).await, 0);
    // Batches of more than ten go out in several calls.
    let many: Vec<_> = (1..=25).map(|i| ProgressEvent::progress("report-1", i, 25)).collect();
    publisher.send(&many).await.unwrap();
    let mut seen = 0;
    loop {
        let (event, messages) = queue.receive_event().await;
        if messages.is_empty() {
            break;
        }
        seen += event.records.len();
        queue.settle(&messages, &[]).await;
    }
    assert_eq!(seen, 25);
}

#[tokio::test]
async fn concurrent_retries_of_one_send_store_one_message() {
    let rig = Rig::new().await;
    member(&rig, "a1", "alice", "workspace:42").await;
    let store = &rig.table.store;
    // Several rounds, since a race that breaks the dedupe only shows some of the time.
    for round in 0..10 {
        let client_msg_id = format!("same-{round}");
        let attempts = (0..8).map(|_| {
            let mut m = chat("workspace:42", "alice", &client_msg_id);
            m.client_msg_id = Some(client_msg_id.clone());
            m
        });
        let outcomes =
            futures::future::join_all(attempts.map(|m| async move { store.post(&m, Some("a1")).await.unwrap() })).await;
        let first = &outcomes[0].message_id;
        assert!(outcomes.iter().all(|o| &o.message_id == first), "{outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| !o.duplicate).count(), 1, "{outcomes:?}");
    }
    let stored = rig.table.partition("CHAN#workspace:42").await;
    assert_eq!(stored.iter().filter(|(sk, _)| sk.starts_with("MSG#")).count(), 10);
}

#[tokio::test]
async fn concurrent_sends_from_two_writers_take_every_sequence_number_once_in_commit_order() {
    let mut rig = Rig::new().await;
    member(&rig, "a1", "alice", "workspace:42").await;
    member(&rig, "b1", "bob", "workspace:42").await;
    // Membership records do nothing in stream-fanout: skip them.
    while !rig.stream_batch().await.records.is_empty() {}
    // Two stores with their own SDK clients: two ws-message Lambdas racing for the channel head.
    let sdk = harness::moto::shared().sdk_config().await;
    let other = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &rig.table.name,
        Retention::default(),
    );
    let sends = (0..24).map(|i| {
        let (store, sender, connection) = if i % 2 == 0 {
            (&rig.table.store, "alice", "a1")
        } else {
            (&other, "bob", "b1")
        };
        let message = chat("workspace:42", sender, &format!("m{i}"));
        async move { store.post(&message, Some(connection)).await.unwrap() }
    });
    let outcomes = futures::future::join_all(sends).await;
    let mut numbers: Vec<u64> = outcomes.iter().map(|o| o.seq.unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, (1..=24).collect::<Vec<u64>>(), "gapless, each once");

    // The stream (what the fanout pushes) carries the messages in sequence order.
    let batch = rig.stream_batch().await;
    let streamed: Vec<u64> = batch
        .records
        .iter()
        .filter_map(|r| match r.change.new_image.get("seq") {
            Some(serde_dynamo::AttributeValue::N(n))
                if r.change.keys.get("sk") != Some(&serde_dynamo::AttributeValue::S("HEAD".into())) =>
            {
                n.parse().ok()
            }
            _ => None,
        })
        .collect();
    assert_eq!(streamed, (1..=24).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_message_with_an_older_id_that_commits_later_is_still_recovered() {
    // Two Lambdas mint ids, then commit in the opposite order: "everything after id X" would miss
    // the older id; "everything after sequence number n" cannot.
    let rig = Rig::new().await;
    member(&rig, "a1", "alice", "workspace:42").await;
    let store = &rig.table.store;
    let mut minted_first = chat("workspace:42", "alice", "minted first, committed second");
    let mut minted_second = chat("workspace:42", "alice", "minted second, committed first");
    // A millisecond apart: ULIDs of one millisecond are random, not ordered.
    let now = wsfan_shared::clock::now_millis() as u64;
    minted_first.message_id = ulid::Ulid::from_parts(now, 7).to_string();
    minted_second.message_id = ulid::Ulid::from_parts(now + 1, 3).to_string();
    assert!(minted_first.message_id < minted_second.message_id);
    let seen = store.post(&minted_second, Some("a1")).await.unwrap();
    let late = store.post(&minted_first, Some("a1")).await.unwrap();
    assert_eq!((seen.seq, late.seq), (Some(1), Some(2)));

    let channel: ChannelId = "workspace:42".parse().unwrap();
    let page = store.history(&channel, HistoryCursor::After(1), 50).await.unwrap();
    let ids: Vec<&str> = page.messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, vec![minted_first.message_id.as_str()]);
    assert_eq!(page.complete, Some(true));
}

#[tokio::test]
async fn cancelled_transactions_leave_no_stream_records_and_later_writes_still_arrive() {
    // Guards the local emulator (scripts/moto_server.py) against moto's rollback, which would
    // otherwise show writes that never happened and hide everything written after.
    let mut rig = Rig::new().await;
    member(&rig, "a1", "alice", "workspace:42").await;
    rig.stream_batch().await;
    let ghost = Membership {
        channel: "workspace:42".parse().unwrap(),
        connection_id: "never-connected".into(),
        user_id: Some("ghost".into()),
        role: Role::Member,
        joined_at: 1,
        expires_at: 2_000_000_000,
        history: None,
        batch: false,
    };
    assert!(matches!(
        rig.table.store.join(&ghost).await,
        Err(wsfan_shared::store::StoreError::NotConnected)
    ));
    let message = chat("workspace:42", "alice", "after the cancelled one");
    rig.table.store.post(&message, Some("a1")).await.unwrap();
    let batch = rig.stream_batch().await;
    let keys: Vec<String> = batch
        .records
        .iter()
        .map(|r| match r.change.keys.get("sk") {
            Some(serde_dynamo::AttributeValue::S(sk)) => sk.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    // The message, numbered 1, and nothing of the cancelled join. (The channel's head is also
    // written; moto reports an update that creates an item as two records. No fanout reads it.)
    let keys: Vec<String> = keys.into_iter().filter(|k| k != "HEAD").collect();
    assert_eq!(keys, vec!["MSG#00000000000000000001".to_owned()]);
}

/// The SDK's own @connections client (its signer, not ours), pointed at the rig's server.
fn management_client(
    rig: &Rig,
    region: &'static str,
    credentials: aws_credential_types::Credentials,
) -> aws_sdk_apigatewaymanagement::Client {
    aws_sdk_apigatewaymanagement::Client::from_conf(
        aws_sdk_apigatewaymanagement::config::Builder::new()
            .behavior_version(aws_sdk_apigatewaymanagement::config::BehaviorVersion::latest())
            .region(aws_sdk_apigatewaymanagement::config::Region::new(region))
            .credentials_provider(credentials)
            .endpoint_url(rig.server.endpoint("prod"))
            .build(),
    )
}

#[tokio::test]
async fn a_post_over_128_kb_is_refused_with_413_as_api_gateway_does() {
    use aws_credential_types::Credentials;
    let rig = Rig::new().await;
    let client = management_client(&rig, "us-east-1", Credentials::new("test", "test", None, None, "t"));
    let post = |size: usize| {
        client
            .post_to_connection()
            .connection_id("c1")
            .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(vec![b'x'; size]))
            .send()
    };
    post(128 * 1024).await.expect("exactly 128 KB is delivered");
    let error = post(128 * 1024 + 1).await.expect_err("one byte more is refused");
    let service = error.into_service_error();
    assert!(service.is_payload_too_large_exception(), "{service:?}");
    assert_eq!(
        rig.server.received("c1").len(),
        1,
        "the oversized post was not delivered"
    );
}

// ---------- items written by backends, history on connect, progress end states ----------

fn put(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), aws_sdk_dynamodb::types::AttributeValue::S(v.to_string())))
        .collect()
}

#[tokio::test]
async fn a_backends_bare_put_item_reaches_the_channel_and_an_unusable_one_goes_to_the_failure_destination() {
    let mut rig = Rig::new().await;
    member(&rig, "a1", "alice", "workspace:42").await;
    rig.run_stream_fanout().await;
    rig.server.reset();

    // The contract's minimum: keys, senderId, body. Everything else comes from the keys.
    let id = ulid::Ulid::generate();
    let sk = format!("MSG#{id}");
    rig.table
        .put(put(&[
            ("pk", "CHAN#workspace:42"),
            ("sk", &sk),
            ("senderId", "billing"),
            ("body", "Invoice ready"),
        ]))
        .await;
    // Unusable: a channel that contradicts the key, an id that is no ULID, no senderId.
    let other = format!("MSG#{}", ulid::Ulid::generate());
    rig.table
        .put(put(&[
            ("pk", "CHAN#workspace:42"),
            ("sk", &other),
            ("channel", "workspace:9"),
            ("senderId", "billing"),
            ("body", "x"),
        ]))
        .await;
    rig.table
        .put(put(&[
            ("pk", "CHAN#workspace:42"),
            ("sk", "MSG#123"),
            ("senderId", "billing"),
            ("body", "x"),
        ]))
        .await;
    let nameless = format!("MSG#{}", ulid::Ulid::generate());
    rig.table
        .put(put(&[("pk", "CHAN#workspace:42"), ("sk", &nameless), ("body", "x")]))
        .await;

    let response = rig.run_stream_fanout().await;
    assert_eq!(failures(&response), Vec::<String>::new(), "nothing is retried");
    let frames = rig.frames("a1");
    assert_eq!(
        frames,
        vec![json!({
            "type": "message",
            "channel": "workspace:42",
            "messageId": id.to_string(),
            "senderId": "billing",
            "body": "Invoice ready",
            "sentAt": id.timestamp_ms(),
        })]
    );
    let mut reasons: Vec<String> = rig
        .parked()
        .await
        .iter()
        .map(|p| p["reason"].as_str().unwrap().to_owned())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("channel is")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("not a ULID")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("senderId")), "{reasons:?}");
}

#[tokio::test]
async fn a_membership_written_with_history_sends_it_to_that_connection_only() {
    let mut rig = Rig::new().await;
    member(&rig, "a1", "alice", "booking:1").await;
    for body in ["one", "two", "three"] {
        rig.table
            .store
            .post(&chat("booking:1", "alice", body), None)
            .await
            .unwrap();
    }
    rig.run_stream_fanout().await;
    rig.server.reset();

    let now = wsfan_shared::clock::now_millis();
    let bob = Connection {
        connection_id: "b1".into(),
        user_id: Some("bob".into()),
        role: Role::Member,
        channels: vec![],
        connected_at: now,
        source_ip: None,
        domain_name: None,
        stage: None,
        expires_at: now / 1000 + 3600,
        joined: vec![],
        history: Some(2),
        batch: false,
        token_exp: None,
    };
    rig.table
        .store
        .connect(&bob, &["booking:1".parse().unwrap()])
        .await
        .unwrap();
    assert!(rig.run_stream_fanout().await.batch_item_failures.is_empty());
    let got = rig.frames("b1");
    let history = of_type(&got, "history");
    assert_eq!(history.len(), 1, "{got:?}");
    assert_eq!(history[0]["channel"], "booking:1");
    let bodies: Vec<&Value> = history[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["body"])
        .collect();
    assert_eq!(bodies, vec!["two", "three"], "the last two, oldest first");
    assert!(history[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["type"] == "message"));
    let alice = rig.frames("a1");
    assert!(of_type(&alice, "history").is_empty(), "{alice:?}");
    assert_eq!(
        of_type(&alice, "presence").len(),
        1,
        "alice hears bob arrive: {alice:?}"
    );
}

/// Alice in `channel`, which holds `bodies`, all pushed; then bob's `$connect` asks for its
/// history (b1, stored just now: API Gateway has not finished his upgrade yet).
async fn bob_connecting_to(rig: &mut Rig, channel: &str, bodies: &[&str]) {
    member(rig, "a1", "alice", channel).await;
    for body in bodies {
        rig.table.store.post(&chat(channel, "alice", body), None).await.unwrap();
    }
    rig.run_stream_fanout().await;
    rig.server.reset();
    let now = wsfan_shared::clock::now_millis();
    let bob = Connection {
        connection_id: "b1".into(),
        user_id: Some("bob".into()),
        role: Role::Member,
        channels: vec![],
        connected_at: now,
        source_ip: None,
        domain_name: None,
        stage: None,
        expires_at: now / 1000 + 3600,
        joined: vec![],
        history: Some(5),
        batch: false,
        token_exp: None,
    };
    rig.table
        .store
        .connect(&bob, &[channel.parse().unwrap()])
        .await
        .unwrap();
}

/// The 410s the server has answered so far.
fn answered_gone(rig: &Rig) -> u64 {
    rig.server.stats().gone.load(std::sync::atomic::Ordering::Relaxed)
}

/// The bodies of each history page `connection_id` was posted.
fn history_pages(rig: &Rig, connection_id: &str) -> Vec<Vec<String>> {
    rig.frames(connection_id)
        .iter()
        .filter(|f| f["type"] == "history")
        .map(|f| {
            f["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["body"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn a_history_page_answered_410_while_its_connection_is_connecting_is_posted_again_until_it_lands() {
    let mut rig = Rig::new().await;
    bob_connecting_to(&mut rig, "booking:2", &["one", "two"]).await;
    // Bob's upgrade finishes after three posts to him: each is answered 410 until then.
    rig.server.fail("b1", 410, Some(3));
    let gone_before = answered_gone(&rig);
    assert!(rig.run_stream_fanout().await.batch_item_failures.is_empty());
    assert_eq!(history_pages(&rig, "b1"), vec![vec!["one", "two"]], "once, whole");
    assert_eq!(answered_gone(&rig) - gone_before, 3);
    assert!(
        rig.table.store.connection("b1").await.unwrap().is_some(),
        "bob's connection stays"
    );
}

#[tokio::test]
async fn a_history_page_for_a_connection_that_never_opens_is_posted_a_bounded_number_of_times() {
    let mut rig = Rig::new().await;
    bob_connecting_to(&mut rig, "booking:4", &[]).await;
    // Left during his upgrade: 410 for good, and his $disconnect has not run yet.
    rig.server.gone("b1");
    let gone_before = answered_gone(&rig);
    assert!(rig.run_stream_fanout().await.batch_item_failures.is_empty());
    assert_eq!(
        answered_gone(&rig) - gone_before,
        1 + stream_fanout::UPGRADE_BACKOFF.len() as u64,
        "the first post and one after each wait, then no more"
    );
    assert!(history_pages(&rig, "b1").is_empty());
    assert!(
        rig.table.store.connection("b1").await.unwrap().is_some(),
        "kept: its $disconnect or TTL removes it"
    );
}

#[tokio::test]
async fn a_history_page_still_refused_at_the_hand_off_goes_to_the_delivery_queue() {
    let mut rig = Rig::new().await;
    bob_connecting_to(&mut rig, "booking:3", &["one"]).await;
    // Still upgrading when the invocation must hand on.
    rig.server.gone("b1");
    let batch = rig.stream_batch().await;
    // 1 s to the hand-off leaves room for the reads before the first post on a loaded machine;
    // UPGRADE_BACKOFF's 3 s of retries would run well past it and its 1 s of slack.
    let stop_at = std::time::Instant::now() + Duration::from_secs(1);
    let response = rig.stream_fanout_until(batch, Some(stop_at)).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert!(
        std::time::Instant::now() < stop_at + Duration::from_secs(1),
        "the retries did not run past the hand-off"
    );
    assert!(history_pages(&rig, "b1").is_empty());
    // Bob is open now; deliver posts the page from the queue.
    rig.server.reset();
    rig.drain_deliveries(&rig.broadcaster).await;
    assert_eq!(history_pages(&rig, "b1"), vec![vec!["one"]]);
    assert!(rig.server.received("a1").is_empty(), "nobody else's frames again");
}

#[tokio::test]
async fn a_redelivered_progress_message_is_pushed_again_and_a_new_duplicate_is_not() {
    let rig = Rig::new().await;
    member(&rig, "s1", "sam", "doc:d10").await;
    let event = ProgressEvent::progress("d10", 4, 10);
    let apply = |id| progress_fanout::apply_delivery(&rig.table.store, &rig.broadcaster, &rig.shards, &event, Some(id));
    assert!(matches!(
        apply("m1").await.unwrap(),
        progress_fanout::Applied::Pushed(_)
    ));
    // The same message again, as after the function died mid-push: pushed again, not stale,
    // or the subscribers it had not reached would never get it.
    assert!(matches!(
        apply("m1").await.unwrap(),
        progress_fanout::Applied::Pushed(_)
    ));
    // Another message with the same event is a duplicate.
    assert_eq!(apply("m2").await.unwrap(), progress_fanout::Applied::Stale);
    assert_eq!(rig.frames("s1").len(), 2);
    let snapshot = rig.table.store.progress("d10").await.unwrap().unwrap();
    assert!(snapshot.get("delivery").is_none(), "internal: {snapshot}");
}

#[tokio::test]
async fn complete_without_counts_keeps_all_pages_and_a_late_error_changes_nothing() {
    let rig = Rig::new().await;
    connect(&rig, "s1", Some("sam")).await;
    join(&rig, "s1", Some("sam"), "doc:d9").await;
    for event in [
        ProgressEvent::started("d9", Some(10)),
        ProgressEvent::progress("d9", 4, 10),
        ProgressEvent::complete("d9", None),
    ] {
        progress_fanout::apply(&rig.table.store, &rig.broadcaster, &rig.shards, &event)
            .await
            .unwrap();
    }
    let late = ProgressEvent::error("d9", "OCR_FAILED", "page 3", false);
    let applied = progress_fanout::apply(&rig.table.store, &rig.broadcaster, &rig.shards, &late)
        .await
        .unwrap();
    assert_eq!(applied, progress_fanout::Applied::Stale);
    let snapshot = rig.table.store.progress("d9").await.unwrap().unwrap();
    assert_eq!(snapshot["type"], "processing_complete");
    assert_eq!(
        (snapshot["pagesProcessed"].as_u64(), snapshot["totalPages"].as_u64()),
        (Some(10), Some(10))
    );
    let pushed = rig.frames("s1");
    let complete = of_type(&pushed, "processing_complete");
    assert_eq!(complete.len(), 1);
    assert_eq!(complete[0]["pagesProcessed"], 10, "subscribers hear all pages too");
    assert!(of_type(&pushed, "error").is_empty());
}

/// The real store, counting how often the fanout reads a channel's members.
struct CountingMemberReads<'a> {
    store: &'a DynamoStore,
    reads: std::sync::atomic::AtomicUsize,
}

// stream-fanout reads messages (a join's history) and members, and nothing else of the table.
impl Messages for CountingMemberReads<'_> {
    async fn post(
        &self,
        m: &Message,
        member: Option<&str>,
    ) -> Result<wsfan_shared::store::PostOutcome, wsfan_shared::store::StoreError> {
        self.store.post(m, member).await
    }
    async fn history(
        &self,
        c: &ChannelId,
        cursor: HistoryCursor,
        limit: u32,
    ) -> Result<wsfan_shared::store::HistoryPage, wsfan_shared::store::StoreError> {
        self.store.history(c, cursor, limit).await
    }
    async fn head(&self, c: &ChannelId) -> Result<u64, wsfan_shared::store::StoreError> {
        self.store.head(c).await
    }
    async fn react(
        &self,
        r: &wsfan_shared::reactions::Reaction,
        member: &str,
    ) -> Result<wsfan_shared::store::PostOutcome, wsfan_shared::store::StoreError> {
        self.store.react(r, member).await
    }
    async fn read(
        &self,
        c: &wsfan_shared::reads::ReadCursor,
        member: &str,
    ) -> Result<wsfan_shared::store::PostOutcome, wsfan_shared::store::StoreError> {
        self.store.read(c, member).await
    }
    async fn reads(
        &self,
        c: &ChannelId,
        limit: usize,
    ) -> Result<wsfan_shared::reads::Reads, wsfan_shared::store::StoreError> {
        self.store.reads(c, limit).await
    }
    async fn seq_of(&self, c: &ChannelId, id: &str) -> Result<Option<u64>, wsfan_shared::store::StoreError> {
        self.store.seq_of(c, id).await
    }
}

impl Members for CountingMemberReads<'_> {
    async fn present(&self, c: &ChannelId, limit: usize) -> Result<Vec<String>, wsfan_shared::store::StoreError> {
        self.store.present(c, limit).await
    }
    async fn members(
        &self,
        c: &ChannelId,
    ) -> Result<Vec<wsfan_shared::store::Member>, wsfan_shared::store::StoreError> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.store.members(c).await
    }
    async fn members_page(
        &self,
        c: &ChannelId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<wsfan_shared::store::MembersPage, wsfan_shared::store::StoreError> {
        if after.is_none() {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.store.members_page(c, after, limit).await
    }
    async fn group_page(
        &self,
        c: &ChannelId,
        group: u32,
        except_user: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<wsfan_shared::store::MembersPage, wsfan_shared::store::StoreError> {
        self.store.group_page(c, group, except_user, after, limit).await
    }
}

#[tokio::test]
async fn a_batch_reads_each_channels_members_once_and_delivers_in_order() {
    // A join storm: most records of a batch are presence and messages of one channel.
    let mut rig = Rig::new().await;
    for (i, user) in ["ann", "ben", "cat"].iter().enumerate() {
        member(&rig, &format!("c{i}"), user, "workspace:storm").await;
    }
    member(&rig, "o1", "oli", "workspace:other").await;
    rig.stream_batch().await;
    for (i, user) in ["dan", "eve"].iter().enumerate() {
        member(&rig, &format!("late{i}"), user, "workspace:storm").await;
    }
    for n in 0..4 {
        rig.table
            .store
            .post(&chat("workspace:storm", "ann", &format!("m{n}")), None)
            .await
            .unwrap();
    }
    rig.table
        .store
        .post(&chat("workspace:other", "oli", "elsewhere"), None)
        .await
        .unwrap();
    let batch = rig.stream_batch().await;
    let counting = CountingMemberReads {
        store: &rig.table.store,
        reads: Default::default(),
    };
    let response = stream_fanout::handle(&counting, &rig.broadcaster, &rig.failures, &rig.shards, batch, None).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    // Two joins and four messages in one channel, one message in another: one read each.
    assert_eq!(counting.reads.load(std::sync::atomic::Ordering::Relaxed), 2);
    for id in ["c0", "c1", "c2", "late0", "late1"] {
        assert_eq!(bodies(&rig, id), ["m0", "m1", "m2", "m3"], "{id}");
    }
    assert_eq!(bodies(&rig, "o1"), ["elsewhere"]);
    // ann, ben and cat heard both joins; dan heard eve's (eve joined after him).
    let joins = |id: &str| rig.frames(id).iter().filter(|f| f["type"] == "presence").count();
    assert_eq!([joins("c0"), joins("c1"), joins("c2")], [2, 2, 2]);
}

// ---------- sharded delivery, no silent loss, the governor ----------

/// Writes `n` membership items of `channel` (connection `"<prefix><i>"`) as join would, one
/// put each: join's transaction also writes presence, which a thousand members do not need here.
async fn many_members(rig: &Rig, channel: &str, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i:05}")).collect();
    members_with_ids(rig, channel, ids).await
}

/// `n` members whose ids start with every character of the base64 alphabet in turn, as API
/// Gateway's do: they fall in every delivery group.
async fn spread_members(rig: &Rig, channel: &str, n: usize) -> Vec<String> {
    const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let ids = (0..n)
        .map(|i| format!("{}m{i:05}", char::from(BASE64[i % BASE64.len()])))
        .collect();
    members_with_ids(rig, channel, ids).await
}

async fn members_with_ids(rig: &Rig, channel: &str, ids: Vec<String>) -> Vec<String> {
    use futures::stream::{self, StreamExt};
    let channel: ChannelId = channel.parse().unwrap();
    stream::iter(ids.clone())
        .for_each_concurrent(8, |id| {
            let m = Membership {
                channel: channel.clone(),
                connection_id: id.clone(),
                user_id: Some(format!("u-{id}")),
                role: Role::Member,
                joined_at: wsfan_shared::clock::now_millis(),
                expires_at: wsfan_shared::clock::now_secs() + 3600,
                history: None,
                batch: false,
            };
            async move {
                let key = (
                    wsfan_shared::model::keys::channel(&m.channel),
                    format!("{}{}", wsfan_shared::model::keys::CONN_PREFIX, m.connection_id),
                );
                rig.table.put(wsfan_shared::store::to_item(key, &m).unwrap()).await;
            }
        })
        .await;
    ids
}

/// A broadcaster on the rig's server, configured as `tune` leaves it.
fn broadcaster_with(
    rig: &Rig,
    sdk: &aws_config::SdkConfig,
    tune: impl FnOnce(&mut wsfan_shared::broadcaster::BroadcastConfig),
) -> wsfan_shared::broadcaster::Broadcaster<DynamoStore> {
    let mut config = wsfan_shared::broadcaster::BroadcastConfig::new(rig.server.endpoint("prod"));
    tune(&mut config);
    wsfan_shared::broadcaster::Broadcaster::new(sdk, config, rig.table.store.clone())
}

#[tokio::test]
async fn a_large_channel_goes_out_as_a_shard_per_group_and_every_member_gets_each_frame_once_in_order() {
    use wsfan_shared::shard::{Shard, DIRECT_MAX_MEMBERS, GROUPS};
    let mut rig = Rig::new().await;
    let members = spread_members(&rig, "workspace:big", DIRECT_MAX_MEMBERS + 300).await;
    rig.stream_batch().await;

    for body in ["first", "second"] {
        rig.table
            .store
            .post(&chat("workspace:big", "alice", body), None)
            .await
            .unwrap();
    }
    let response = rig.run_stream_fanout().await;
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}",
        response.batch_item_failures
    );
    // stream-fanout posted to nobody itself, and listed nobody: each message is one shard per
    // group on the queue, and deliver reads the group's members.
    assert_eq!(
        rig.server.stats().requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(rig.delivery.waiting().await, 2 * GROUPS as usize);
    for body in rig.delivery.peek().await {
        let shard = Shard::from_body(&body).unwrap();
        assert!(shard.recipients.is_empty() && shard.read.is_some(), "{shard:?}");
    }

    rig.drain_deliveries(&rig.broadcaster).await;
    for m in &members {
        assert_eq!(bodies(&rig, m), ["first", "second"], "{m}");
    }
    assert!(rig.parked_shards().await.is_empty());
}

#[tokio::test]
async fn a_group_too_large_for_one_invocation_goes_on_in_the_next_shard_and_reaches_everyone_once() {
    use wsfan_shared::ports::ShardQueue;
    use wsfan_shared::shard::{group_of, group_shards};
    let rig = Rig::new().await;
    // Every id starts with 'b': one group of 2,500, three pages of deliver's.
    let mut members = many_members(&rig, "workspace:skewed", "big-", 2500).await;
    assert!(members.iter().all(|m| group_of(m) == group_of("big-")));
    let channel: ChannelId = "workspace:skewed".parse().unwrap();
    // An anonymous listener (no user) is never the user left out.
    let anonymous = Membership {
        channel: channel.clone(),
        connection_id: "big-anonymous".into(),
        user_id: None,
        role: Role::Member,
        joined_at: wsfan_shared::clock::now_millis(),
        expires_at: wsfan_shared::clock::now_secs() + 3600,
        history: None,
        batch: false,
    };
    let key = (
        wsfan_shared::model::keys::channel(&channel),
        wsfan_shared::model::keys::connection(&anonymous.connection_id),
    );
    rig.table
        .put(wsfan_shared::store::to_item(key, &anonymous).unwrap())
        .await;
    members.push(anonymous.connection_id);
    let frame = r#"{"type":"message","body":"hello"}"#;
    // A presence frame's subject is left out: here the user of the member "big-00007".
    let shards = group_shards(&channel, frame, "origin-1", Some("u-big-00007"));
    rig.shards.enqueue(shards).await.unwrap();

    // Each invocation may read one page of a group: the group goes on in two more shards.
    let batches = rig
        .drain_deliveries_with(&rig.broadcaster, deliver::ReadBudget::pages(1))
        .await;
    assert!(batches >= 3, "{batches} batches");
    for m in &members {
        let expected: &[&str] = if m == "big-00007" { &[] } else { &["hello"] };
        assert_eq!(bodies(&rig, m), expected, "{m}");
    }
    assert!(rig.parked_shards().await.is_empty());
}

#[tokio::test]
async fn a_slow_recipient_holds_back_nobody_on_the_next_page_of_its_group() {
    use wsfan_shared::ports::ShardQueue;
    use wsfan_shared::shard::group_shards;
    let rig = Rig::new().await;
    // One group of 1,500 (every id starts with 'b'): two of deliver's pages, in id order.
    let members = many_members(&rig, "workspace:paged", "big-", 1500).await;
    let (slow, second_page) = (&members[0], &members[deliver::READ_PAGE..]);
    // The group's first member answers 500 24 times, and this broadcaster waits up to 400 ms
    // after each: 4.8 s on average and rarely under 3.5 s (well inside the 20 s deadline),
    // against a second or so for everyone else even on a loaded machine.
    rig.server.fail(slow, 500, Some(24));
    let sdk = harness::moto::shared().sdk_config().await;
    let broadcaster = broadcaster_with(&rig, &sdk, |c| {
        c.first_backoff = Duration::from_millis(400);
        c.max_backoff = Duration::from_millis(400);
    });
    let channel: ChannelId = "workspace:paged".parse().unwrap();
    rig.shards
        .enqueue(group_shards(
            &channel,
            r#"{"type":"message","body":"hello"}"#,
            "origin-1",
            None,
        ))
        .await
        .unwrap();

    // When the slow member finally has the frame, most of the second page has it already.
    let watch = async {
        loop {
            if !rig.server.received(slow).is_empty() {
                return second_page
                    .iter()
                    .filter(|m| !rig.server.received(m).is_empty())
                    .count();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let (_, ahead) = tokio::join!(rig.drain_deliveries(&broadcaster), watch);
    assert!(
        ahead > second_page.len() / 2,
        "only {ahead} of the second page's {} were reached before the first page's slow member",
        second_page.len()
    );
    for m in &members {
        assert_eq!(bodies(&rig, m), ["hello"], "{m}");
    }
    assert!(rig.parked_shards().await.is_empty());
}

#[tokio::test]
async fn deliver_fixtures_post_to_what_they_name_and_fail_only_the_malformed_shard() {
    let rig = Rig::new().await;
    // Group 23 is the ids that start with 'L'; the others are members of other groups.
    let members = [
        "L0SM9cOFvHcCIhw=",
        "LcvYzeVqoAMCEcw=",
        "d8mKweAqIAMCJPQ=",
        "g3SM9cOFvHcCIhw=",
    ];
    members_with_ids(&rig, "workspace:42", members.iter().map(|m| m.to_string()).collect()).await;
    let run = |name: &str| {
        deliver::handle(
            &rig.table.store,
            &rig.broadcaster,
            &rig.shards,
            fixture::<SqsEvent>(&format!("deliver/{name}")),
            deliver::ReadBudget::pages(usize::MAX),
        )
    };

    let response = run("group-shard").await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(bodies(&rig, "L0SM9cOFvHcCIhw="), ["hello, everyone"]);
    assert_eq!(bodies(&rig, "LcvYzeVqoAMCEcw="), ["hello, everyone"]);
    assert!(rig.frames("d8mKweAqIAMCJPQ=").is_empty());
    assert!(rig.frames("g3SM9cOFvHcCIhw=").is_empty());

    rig.server.reset();
    let response = run("retry-and-malformed").await;
    assert_eq!(sqs_failures(&response), ["7a1b2c3d-0003-4e5f-8a9b-000000000003"]);
    // The retry names its recipient: only that one is posted to.
    assert_eq!(bodies(&rig, "g3SM9cOFvHcCIhw="), ["hello, everyone"]);
    assert!(rig.frames("L0SM9cOFvHcCIhw=").is_empty());
}

#[tokio::test]
async fn a_shard_with_no_time_left_is_given_back_untouched_and_delivered_on_the_next_receive() {
    use wsfan_shared::ports::ShardQueue;
    use wsfan_shared::shard::group_shards;
    let rig = Rig::new().await;
    let members = spread_members(&rig, "workspace:late", 64).await;
    let channel: ChannelId = "workspace:late".parse().unwrap();
    let frame = r#"{"type":"message","body":"late"}"#;
    rig.shards
        .enqueue(group_shards(&channel, frame, "origin-2", None))
        .await
        .unwrap();

    // An invocation whose deadline has come: every shard it received fails, and nobody is posted.
    let (event, messages) = rig.delivery.receive_event().await;
    assert!(!messages.is_empty());
    let now_ms = u64::try_from(wsfan_shared::clock::now_millis()).unwrap();
    let response = deliver::handle(
        &rig.table.store,
        &rig.broadcaster,
        &rig.shards,
        event,
        deliver::ReadBudget::from_deadline_ms(now_ms),
    )
    .await;
    assert_eq!(response.batch_item_failures.len(), messages.len());
    assert_eq!(
        rig.server.stats().requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    rig.delivery.settle(&messages, &sqs_failures(&response)).await;

    rig.drain_deliveries(&rig.broadcaster).await;
    for m in &members {
        assert_eq!(bodies(&rig, m), ["late"], "{m}");
    }
}

#[tokio::test]
async fn a_recipient_failing_past_the_deadline_is_retried_then_parked_and_a_gone_one_only_removed() {
    let mut rig = Rig::new().await;
    for (c, u) in [("ok1", "ann"), ("bad1", "bob"), ("gone1", "gil"), ("flaky1", "fay")] {
        member(&rig, c, u, "workspace:loss").await;
    }
    rig.run_stream_fanout().await;
    rig.drain_deliveries(&rig.broadcaster).await;
    let sdk = harness::moto::shared().sdk_config().await;
    // Gives up on a recipient after 60 ms.
    let short = broadcaster_with(&rig, &sdk, |c| {
        c.first_backoff = Duration::from_millis(5);
        c.max_backoff = Duration::from_millis(20);
        c.deadline = Duration::from_millis(60);
    });
    rig.server.reset();
    rig.server.fail("bad1", 500, None);
    rig.server.gone("gone1");
    // Fails through the first attempt's deadline, then recovers: the retry reaches it.
    rig.server.fail("flaky1", 503, Some(1000));

    rig.table
        .store
        .post(&chat("workspace:loss", "ann", "hello"), None)
        .await
        .unwrap();
    let batch = rig.stream_batch().await;
    let response = stream_fanout::handle(&rig.table.store, &short, &rig.failures, &rig.shards, batch, None).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(rig.server.received("ok1").len(), 1);

    // flaky1 recovers; the others stay as they were. (reset also forgets what was received.)
    rig.server.reset();
    rig.server.fail("bad1", 500, None);
    rig.server.gone("gone1");
    rig.drain_deliveries(&short).await;

    // The one that never answered is parked, alone, with the frame; nobody else is.
    let parked = rig.parked_shards().await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].recipients, ["bad1"]);
    assert_eq!(parked[0].attempt, wsfan_shared::shard::MAX_ATTEMPTS + 1);
    let frame: Value = serde_json::from_str(&parked[0].frame).unwrap();
    assert_eq!(frame["body"], "hello");
    // The flaky one got it from a retry, the live one was not posted to again, the gone one
    // was removed and never retried.
    assert_eq!(rig.server.received("flaky1").len(), 1);
    assert!(rig.server.received("ok1").is_empty());
    assert!(rig.server.received("gone1").is_empty());
    assert!(rig.table.item("CHAN#workspace:loss", "CONN#gone1").await.is_none());
    assert!(rig.table.item("CHAN#workspace:loss", "CONN#bad1").await.is_some());
}

#[tokio::test]
async fn the_governor_keeps_posts_under_the_budget_and_backs_off_on_429() {
    use std::sync::atomic::Ordering::Relaxed;
    let rig = Rig::new().await;
    let sdk = harness::moto::shared().sdk_config().await;
    let ids: Vec<String> = (0..100).map(|i| format!("g{i}")).collect();
    let governed = |max_rps: u64| {
        broadcaster_with(&rig, &sdk, |c| {
            c.first_backoff = Duration::from_millis(5);
            c.max_backoff = Duration::from_millis(50);
            c.max_rps = Some(max_rps);
        })
    };

    // A budget well under the bucket: no 429 at all, though 100 posts go out at once.
    rig.server.set_token_bucket(400.0, 40.0);
    let report = governed(200).deliver(ids.clone(), b"x").await.unwrap();
    assert_eq!(report.counters.delivered, 100);
    assert_eq!(rig.server.stats().throttled.load(Relaxed), 0);
    assert_eq!(report.counters.posts, 100);
    assert!(report.counters.paced_ms > 0);

    // A budget above the bucket: the 429s make it back off, and everyone is still reached.
    rig.server.reset();
    rig.server.set_token_bucket(100.0, 5.0);
    let before = rig.server.stats().throttled.load(Relaxed);
    let report = governed(4000).deliver(ids, b"x").await.unwrap();
    assert_eq!(report.counters.delivered, 100);
    assert!(rig.server.stats().throttled.load(Relaxed) > before);
    assert!(report.counters.backoffs > 0, "{:?}", report.counters);
    assert_eq!(report.counters.posts, 100 + report.counters.retried);
}

// ---------- busy channels: one ordered stream per member, batches, the hand-off, the budget ----------

/// Lets the joins' records go by, forgets what they pushed, then has `sender` post messages
/// "0".."count" to `channel`.
async fn settled_then_posts(rig: &mut Rig, channel: &str, sender: &str, count: usize) {
    rig.run_stream_fanout().await;
    rig.server.reset();
    for i in 0..count {
        rig.table
            .store
            .post(&chat(channel, sender, &format!("{i}")), None)
            .await
            .unwrap();
    }
}

/// A member whose connection asked for batch frames (`?batch=1`).
async fn batch_member(rig: &Rig, connection: &str, user: &str, channel: &str) {
    connect(rig, connection, Some(user)).await;
    let m = Membership {
        channel: channel.parse().unwrap(),
        connection_id: connection.into(),
        user_id: Some(user.into()),
        role: Role::Member,
        joined_at: wsfan_shared::clock::now_millis(),
        expires_at: wsfan_shared::clock::now_secs() + 3600,
        history: None,
        batch: true,
    };
    rig.table.store.join(&m).await.unwrap();
}

/// Every frame a connection got, batches unpacked, in order; and how many posts carried them.
fn unpacked(rig: &Rig, connection_id: &str) -> (Vec<Value>, usize) {
    let posts = rig.frames(connection_id);
    let count = posts.len();
    let frames = posts
        .into_iter()
        .flat_map(|f| match f["type"].as_str() {
            Some("batch") => f["frames"].as_array().cloned().unwrap(),
            _ => vec![f],
        })
        .collect();
    (frames, count)
}

#[tokio::test]
async fn a_busy_channels_records_reach_each_member_in_order_and_batch_members_in_few_posts() {
    let mut rig = Rig::new().await;
    batch_member(&rig, "bat1", "ann", "workspace:busy").await;
    member(&rig, "one1", "bob", "workspace:busy").await;
    settled_then_posts(&mut rig, "workspace:busy", "cat", 30).await;
    let response = rig.run_stream_fanout().await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let expected: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    // The seed-style member: one frame a post, every one, in order, none a batch.
    assert_eq!(bodies(&rig, "one1"), expected);
    assert!(rig.frames("one1").iter().all(|f| f["type"] == "message"));
    // The batching member: the same frames in the same order, in one post.
    let (frames, posts) = unpacked(&rig, "bat1");
    let got: Vec<&str> = frames.iter().map(|f| f["body"].as_str().unwrap()).collect();
    assert_eq!(got, expected);
    assert_eq!(posts, 1, "30 small frames fit in one post");
    let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[tokio::test]
async fn a_batch_never_exceeds_one_post_and_a_lone_frame_is_not_wrapped() {
    use std::sync::Arc;
    use wsfan_shared::broadcaster::{pack, BATCH_OPEN};
    let big: Arc<str> = format!(r#"{{"type":"message","body":"{}"}}"#, "x".repeat(50_000)).into();
    let small: Arc<str> = r#"{"type":"typing"}"#.into();
    let frames = vec![big.clone(), big.clone(), small.clone(), big.clone()];
    let posts = pack(&frames, true);
    let counts: Vec<usize> = posts.iter().map(|(_, n)| *n).collect();
    // Two 50 KB frames and the small one fit in 128 KB; a third 50 KB does not, and goes alone.
    assert_eq!(counts, [3, 1]);
    for (body, _) in &posts {
        assert!(body.len() <= MAX_PAYLOAD_BYTES);
    }
    let first: Value = serde_json::from_slice(&posts[0].0).unwrap();
    assert_eq!(first["type"], "batch");
    assert_eq!(first["frames"].as_array().unwrap().len(), 3);
    assert_eq!(posts[1].0, big.as_bytes());
    assert_eq!(
        pack(std::slice::from_ref(&small), true),
        vec![(small.as_bytes().to_vec(), 1)]
    );
    assert!(
        !String::from_utf8(pack(std::slice::from_ref(&small), true)[0].0.clone())
            .unwrap()
            .starts_with(BATCH_OPEN)
    );
    // Without batch: a post a frame, as they are.
    assert_eq!(pack(&frames, false).len(), 4);
}

#[tokio::test]
async fn past_the_hand_off_no_post_starts_and_the_rest_goes_to_the_delivery_queue_once() {
    let mut rig = Rig::new().await;
    for (c, u) in [("ok1", "ann"), ("slow1", "sam")] {
        member(&rig, c, u, "workspace:handoff").await;
    }
    batch_member(&rig, "bat1", "bea", "workspace:handoff").await;
    settled_then_posts(&mut rig, "workspace:handoff", "ann", 5).await;
    // slow1 answers 500 to everything until the hand-off has passed.
    rig.server.fail("slow1", 500, None);
    let batch = rig.stream_batch().await;
    // 1.5 s to the hand-off: ok1's posts must start before it even when the reads are slow.
    // Without a hand-off, slow1's retries would run to the 20 s deadline.
    let stop_at = std::time::Instant::now() + Duration::from_millis(1500);
    let response = rig.stream_fanout_until(batch, Some(stop_at)).await;
    // Nothing to replay: what was delivered is not sent again, and the rest was handed on.
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert!(
        std::time::Instant::now() < stop_at + Duration::from_secs(2),
        "the invocation ended near its hand-off"
    );
    let expected: Vec<String> = (0..5).map(|i| i.to_string()).collect();
    assert_eq!(bodies(&rig, "ok1"), expected);
    assert!(rig.server.received("slow1").is_empty());

    // slow1 recovers; deliver posts its frames from the queue, in order, and nobody else's again.
    rig.server.reset();
    rig.drain_deliveries(&rig.broadcaster).await;
    assert_eq!(bodies(&rig, "slow1"), expected);
    assert!(rig.server.received("ok1").is_empty());
    assert!(rig.server.received("bat1").is_empty());
}

#[tokio::test]
async fn a_channel_not_started_before_the_hand_off_is_given_back_to_lambda_whole() {
    let mut rig = Rig::new().await;
    member(&rig, "a1", "ann", "workspace:late").await;
    settled_then_posts(&mut rig, "workspace:late", "ann", 3).await;
    let batch = rig.stream_batch().await;
    // The three messages (the head and dedupe items' records ask for nothing).
    let records = batch
        .records
        .iter()
        .filter(|r| stream_fanout::classify(r).is_ok_and(|w| w.is_some()))
        .count();
    assert_eq!(records, 3);
    let response = stream_fanout::handle(
        &rig.table.store,
        &rig.broadcaster,
        &rig.failures,
        &rig.shards,
        batch,
        Some(std::time::Instant::now()),
    )
    .await;
    assert_eq!(failures(&response).len(), records);
    assert!(rig.server.received("a1").is_empty());
}

#[tokio::test]
async fn leases_of_one_second_never_add_up_past_the_cap_and_the_last_gets_what_is_left() {
    use wsfan_shared::store::BudgetLedger;
    let rig = Rig::new().await;
    let store = &rig.table.store;
    let second = wsfan_shared::clock::now_secs() as u64;
    // 40 environments asking for 30 each, at once, of a cap of 1,000.
    let grants = futures::future::join_all((0..40).map(|_| store.lease(second, 30, 1000))).await;
    let granted: u64 = grants.into_iter().map(Result::unwrap).sum();
    assert_eq!(granted, 1000);
    assert_eq!(store.lease(second, 5, 1000).await.unwrap(), 0);
    // Another second is a counter of its own.
    assert_eq!(store.lease(second + 1, 600, 1000).await.unwrap(), 600);
    assert_eq!(store.lease(second + 1, 600, 1000).await.unwrap(), 400);
}

#[tokio::test]
async fn a_broadcaster_alone_takes_nearly_all_of_the_shared_budget_and_two_together_never_more() {
    use std::collections::HashMap;
    let rig = Rig::new().await;
    let sdk = harness::moto::shared().sdk_config().await;
    let leased =
        |max_rps: u64| broadcaster_with(&rig, &sdk, |c| c.max_rps = Some(max_rps)).with_budget(rig.table.store.clone());
    // 900 posts at a budget of 300/s: three seconds alone, whatever the old share would allow.
    let alone = leased(300);
    let ids: Vec<String> = (0..900).map(|i| format!("s{i}")).collect();
    let started = std::time::Instant::now();
    let report = alone.deliver(ids, b"x").await.unwrap();
    assert_eq!(report.counters.delivered, 900);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "the budget held it to 300/s: {took:?}");
    let (leases, granted) = alone.leases();
    assert!(leases > 0 && granted >= 900, "{leases} leases, {granted} posts");
    // Two broadcasters at once draw from the same counters: per second, never past the cap.
    let (a, b) = (leased(300), leased(300));
    let ids = |p: &str| (0..450).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    let (ra, rb) = tokio::join!(a.deliver(ids("a"), b"x"), b.deliver(ids("b"), b"x"));
    assert_eq!(ra.unwrap().counters.delivered + rb.unwrap().counters.delivered, 900);
    let mut per_second: HashMap<String, u64> = HashMap::new();
    for (sk, item) in rig.table.partition(wsfan_shared::store::BUDGET_PK).await {
        let used: u64 = item["used"].as_n().unwrap().parse().unwrap();
        assert!(used <= 300, "{sk}: {used} leased of 300");
        per_second.insert(sk, used);
    }
    assert!(per_second.len() >= 3, "{per_second:?}");
}

#[tokio::test]
async fn a_channel_still_at_work_at_the_cut_goes_back_to_lambda_before_the_timeout() {
    let mut rig = Rig::new().await;
    member(&rig, "c0", "ann", "workspace:stalled").await;
    rig.run_stream_fanout().await;
    rig.table
        .store
        .post(&chat("workspace:stalled", "ann", "m0"), None)
        .await
        .unwrap();
    let batch = rig.stream_batch().await;
    // The table stops answering this invocation: each of its calls holds its whole 20 s budget,
    // as on a table saturated by a mass leave.
    let stalls = wsfan_local::faults::DynamoFaults {
        stall: 1.0,
        ..Default::default()
    };
    let (stalled, _proxy) = rig.table.through_faults(stalls, 1, Duration::from_secs(20)).await;
    let started = std::time::Instant::now();
    let (stop_at, cut_at) = (
        started + Duration::from_millis(200),
        started + Duration::from_millis(600),
    );
    let response = stream_fanout::handle_until(
        &stalled,
        &rig.broadcaster,
        &rig.failures,
        &rig.shards,
        batch,
        stream_fanout::Bounds {
            stop_at: Some(stop_at),
            cut_at: Some(cut_at),
            cadence: None,
        },
    )
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the invocation took {took:?}");
    // The message's record goes back to Lambda, whose next invocation delivers it.
    assert_eq!(failures(&response).len(), 1, "{response:?}");
    assert!(rig.server.received("c0").is_empty());
}

#[tokio::test]
async fn a_busy_channels_batch_holds_its_lane_so_that_the_next_brings_its_records_in_one_post() {
    use std::sync::Mutex;
    use wsfan_shared::cadence::Cadence;
    let mut rig = Rig::new().await;
    for i in 0..20 {
        batch_member(&rig, &format!("hot{i}"), &format!("u{i}"), "workspace:hot").await;
    }
    // Busy from 20 frames a second, so that 20 members make a busy channel here; a 2 s window at
    // most, so that two messages a second (a slow debug run) still gather the four a hold needs.
    let cadence = Mutex::new(Cadence::new(Duration::from_secs(2)).busy_from(20.0));
    let mut took = Vec::new();
    let mut at: Vec<std::time::Instant> = Vec::new();
    for round in 0..2 {
        if round == 0 {
            settled_then_posts(&mut rig, "workspace:hot", "cat", 8).await;
        } else {
            // Eight more messages 1.6 s or more after the first eight: at most 5 a second by
            // their sequence numbers and times, so the window that gathers eight is 1.6 s or
            // more, and the second batch must be held at least that long.
            tokio::time::sleep_until((at[0] + Duration::from_millis(1600)).into()).await;
            for i in 8..16 {
                rig.table
                    .store
                    .post(&chat("workspace:hot", "cat", &i.to_string()), None)
                    .await
                    .unwrap();
            }
        }
        let batch = rig.stream_batch().await;
        let started = std::time::Instant::now();
        let bounds = stream_fanout::Bounds {
            cadence: Some(&cadence),
            ..Default::default()
        };
        let response = stream_fanout::handle_until(
            &rig.table.store,
            &rig.broadcaster,
            &rig.failures,
            &rig.shards,
            batch,
            bounds,
        )
        .await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        took.push(started.elapsed());
        at.push(started);
    }
    let interval = at[1] - at[0];
    assert!(
        interval < Duration::from_secs(4),
        "the test itself was too slow to be busy: {interval:?}"
    );
    // The second batch is held for the whole window, and no longer than the longest.
    assert!(
        took[1] >= Duration::from_millis(1590),
        "the busy batch ended after {:?}",
        took[1]
    );
    assert!(
        took[1] < Duration::from_secs(4),
        "held past the longest window: {took:?}"
    );
    let expected: Vec<String> = (0..16).map(|i| i.to_string()).collect();
    for i in 0..20 {
        let (frames, posts) = unpacked(&rig, &format!("hot{i}"));
        let bodies: Vec<String> = frames.iter().map(|f| f["body"].as_str().unwrap().to_owned()).collect();
        assert_eq!(bodies, expected);
        assert_eq!(posts, 2, "each batch's eight frames in one post");
    }
}
