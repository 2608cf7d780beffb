//! The store under what DynamoDB does under load and moto never does: transactions cancelled
//! with `TransactionConflict`, throttled writes, writes applied whose answer is lost, and
//! latency. The faults come from `wsfan dev --inject`'s DynamoDB proxy in front of moto,
//! seeded, so each run draws the same ones.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use harness::{s, TestTable};
use wsfan_local::dynamo_proxy::DynamoProxy;
use wsfan_local::faults::{DynamoFault, DynamoFaults};
use wsfan_shared::access::Role;
use wsfan_shared::channel::ChannelId;
use wsfan_shared::config::Retention;
use wsfan_shared::model::{Connection, Membership, Message};
use wsfan_shared::protocol::HistoryCursor;
use wsfan_shared::reactions::Reaction;
use wsfan_shared::reads::ReadCursor;
use wsfan_shared::store::{Connections, DynamoStore, Messages, StoreError};

/// The same table as `t`, reached through a fault proxy.
async fn through_faults(t: &TestTable, faults: DynamoFaults, seed: u64) -> (DynamoStore, DynamoProxy) {
    t.through_faults(faults, seed, Duration::from_secs(5)).await
}

fn connection(id: &str, user: &str) -> Connection {
    let now = wsfan_shared::clock::now_secs();
    Connection {
        connection_id: id.into(),
        user_id: Some(user.into()),
        role: Role::Member,
        channels: vec!["workspace:*".into()],
        connected_at: now * 1000,
        source_ip: None,
        domain_name: None,
        stage: None,
        expires_at: now + 3600,
        joined: Vec::new(),
        history: None,
        batch: false,
        token_exp: None,
    }
}

fn chat(channel: &ChannelId, sender: &str, client_msg_id: Option<String>) -> Message {
    wsfan_shared::publisher::chat_message(channel, sender, "hello", client_msg_id.as_deref(), 3600)
}

const USERS: usize = 8;
const SENDS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connects_joins_sends_leaves_and_disconnects_ride_out_conflicts_throttles_and_lost_answers() {
    let t = TestTable::new().await;
    let faults = DynamoFaults {
        conflict: 0.25,
        throttle: 0.1,
        lost: 0.1,
        latency: Duration::from_millis(1),
        ..DynamoFaults::default()
    };
    let (store, proxy) = through_faults(&t, faults, 20).await;
    let workspace: ChannelId = "workspace:42".parse().unwrap();
    let room: ChannelId = "workspace:7".parse().unwrap();

    // Every user connects (joining the workspace at connect), joins a room, and sends
    // concurrently: half the sends with a clientMsgId, half without.
    let sent = futures::future::join_all((0..USERS).map(|u| {
        let store = store.clone();
        let (workspace, room) = (workspace.clone(), room.clone());
        async move {
            let (id, user) = (format!("conn-{u}"), format!("user{u}"));
            store
                .connect(&connection(&id, &user), std::slice::from_ref(&workspace))
                .await
                .unwrap_or_else(|e| panic!("connect {id}: {e}"));
            let membership = Membership {
                channel: room.clone(),
                connection_id: id.clone(),
                user_id: Some(user.clone()),
                role: Role::Member,
                joined_at: 0,
                expires_at: wsfan_shared::clock::now_secs() + 3600,
                history: None,
                batch: false,
            };
            store
                .join(&membership)
                .await
                .unwrap_or_else(|e| panic!("join {id}: {e}"));
            let mut outcomes = Vec::new();
            for i in 0..SENDS {
                let cmid = (i % 2 == 0).then(|| format!("c-{u}-{i}"));
                let message = chat(&workspace, &user, cmid);
                let outcome = store
                    .post(&message, Some(&id))
                    .await
                    .unwrap_or_else(|e| panic!("send {i} of {id}: {e}"));
                // Each send is the first of its clientMsgId: never answered as a duplicate,
                // even when its own first try committed and only the answer was lost.
                assert!(!outcome.duplicate, "send {i} of {id} answered as a duplicate");
                assert_eq!(outcome.message_id, message.message_id);
                outcomes.push((message, outcome));
            }
            outcomes
        }
    }))
    .await;
    let sent: Vec<_> = sent.into_iter().flatten().collect();

    // Every send committed exactly once, at the number it was answered with, with no gaps.
    let partition = t.partition("CHAN#workspace:42").await;
    let stored: HashMap<String, u64> = partition
        .iter()
        .filter(|(sk, _)| sk.starts_with("MSG#"))
        .map(|(sk, i)| (s(i, "messageId").to_owned(), sk[4..].parse().unwrap()))
        .collect();
    assert_eq!(stored.len(), USERS * SENDS, "a message stored twice or not at all");
    for (message, outcome) in &sent {
        assert_eq!(
            stored.get(&message.message_id),
            outcome.seq.as_ref(),
            "{}",
            message.message_id
        );
    }
    let seqs: BTreeSet<u64> = stored.values().copied().collect();
    assert_eq!(seqs, (1..=(USERS * SENDS) as u64).collect());
    assert_eq!(store.head(&workspace).await.unwrap(), (USERS * SENDS) as u64);

    // A retried send is still a duplicate of the first, through the faults.
    for (message, outcome) in sent.iter().filter(|(m, _)| m.client_msg_id.is_some()) {
        let mut again = message.clone();
        again.message_id = ulid::Ulid::generate().to_string();
        let retry = store
            .post(&again, Some(&format!("conn-{}", &message.sender_id[4..])))
            .await
            .unwrap();
        assert!(retry.duplicate);
        assert_eq!(
            (retry.message_id.as_str(), retry.seq),
            (message.message_id.as_str(), outcome.seq)
        );
    }

    // Leaves answer that they left (a lost answer's retry included); disconnects clean up.
    for u in 0..USERS {
        let (id, user) = (format!("conn-{u}"), format!("user{u}"));
        assert!(store.leave(&room, &id, Some(&user)).await.unwrap(), "leave of {id}");
        let cleanup = store.disconnect(&id).await.unwrap();
        assert_eq!(cleanup.memberships_removed, 2, "{id}: user channel and workspace");
    }

    // No orphans: no connection, membership or presence connection left.
    for item in t.items().await {
        let (pk, sk) = (s(&item, "pk"), s(&item, "sk"));
        assert!(!pk.starts_with("CONN#"), "connection left: {pk}");
        assert!(!sk.starts_with("CONN#"), "membership left: {pk} {sk}");
        assert!(!item.contains_key("connections"), "presence left: {pk} {sk}");
    }

    // The faults did happen, and were all ridden out above.
    let injected = proxy.injected();
    for fault in [DynamoFault::Conflict, DynamoFault::Throttle, DynamoFault::Lost] {
        assert!(
            injected.get(&fault).copied().unwrap_or(0) > 0,
            "no {fault:?} injected: {injected:?}"
        );
    }
}

#[tokio::test]
async fn a_store_that_keeps_failing_gives_up_within_its_budget() {
    let t = TestTable::new().await;
    let every_write = DynamoFaults {
        throttle: 1.0,
        ..DynamoFaults::default()
    };
    let (store, proxy) = through_faults(&t, every_write, 1).await;
    // 1.5 s: room for five tries even when each round trip to moto is slow on a loaded machine;
    // MAX_ATTEMPTS still bounds them.
    let store = store.with_budget(Duration::from_millis(1500));
    let refused = store.connect(&connection("c1", "alice"), &[]).await;
    assert!(refused.is_err(), "every write is throttled");
    // It tried again while the budget allowed (the first four pauses are at most 175 ms
    // together), more than the SDK's three attempts, and then stopped.
    let tries = proxy.injected()[&DynamoFault::Throttle];
    assert!(
        (5..=wsfan_shared::store::MAX_ATTEMPTS as u64).contains(&tries),
        "{tries} tries"
    );
    assert!(t.items().await.is_empty());
}

#[tokio::test]
async fn a_disconnect_whose_dynamodb_calls_go_unanswered_still_leaves_nothing_behind() {
    // API Gateway invokes $disconnect once and never retries a failed one: a cleanup cut off by
    // one operation's timeout (as on a saturated table during a mass leave) must try again
    // within the invocation, or the connection's items stay until TTL.
    let t = TestTable::new().await;
    let conn = "L0SM9cOFvHcCIhw="; // the fixture's
    let channels: Vec<ChannelId> = ["workspace:1", "workspace:2", "workspace:3"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    // With a token, so that it also has an expiry bucket item (`EXP#<minute>` / `CONN#<id>`).
    let alice = Connection {
        token_exp: Some(wsfan_shared::clock::now_secs() + 3600),
        ..connection(conn, "alice")
    };
    t.store.connect(&alice, &channels).await.expect("connect");
    let mine = |i: &wsfan_shared::store::Item| harness::s(i, "pk").contains(conn) || harness::s(i, "sk").contains(conn);
    assert!(t
        .items()
        .await
        .iter()
        .any(|i| harness::s(i, "pk").starts_with("EXP#") && mine(i)));
    // A quarter of the calls get no answer; each operation gives up after 300 ms.
    let stalls = DynamoFaults {
        stall: 0.25,
        ..DynamoFaults::default()
    };
    let (store, proxy) = t.through_faults(stalls, 5, Duration::from_millis(300)).await;
    let stop_at = tokio::time::Instant::now() + Duration::from_secs(15);
    let answer = ws_disconnect::handle(&store, harness::fixture("ws-disconnect/disconnect"), stop_at).await;
    // A stall always costs its operation, and with it the round: a cleanup that succeeds after
    // one is one that tried again.
    let stalled = proxy.injected().get(&DynamoFault::Stall).copied().unwrap_or(0);
    assert!(stalled > 0, "no call stalled: {:?}", proxy.operations());
    assert_eq!(answer.status_code, 200, "after {stalled} stalled calls");
    let left: Vec<_> = t.items().await.into_iter().filter(mine).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// How many DynamoDB calls `what` made through `proxy`.
async fn calls<T>(proxy: &DynamoProxy, what: impl std::future::Future<Output = T>) -> (T, u64) {
    let before = proxy.requests();
    let out = what.await;
    (out, proxy.requests() - before)
}

#[tokio::test]
async fn a_send_is_one_round_trip_when_the_remembered_head_is_current() {
    let t = TestTable::new().await;
    let (store, proxy) = through_faults(&t, DynamoFaults::default(), 0).await;
    let channel: ChannelId = "workspace:42".parse().unwrap();
    store
        .connect(&connection("c1", "alice"), std::slice::from_ref(&channel))
        .await
        .unwrap();
    let send = |store: DynamoStore, cmid: &str| {
        let message = chat(&channel, "alice", Some(cmid.to_owned()));
        async move { store.post(&message, Some("c1")).await.unwrap() }
    };

    // The first send of this environment reads the head; every later one is one transaction.
    let (first, n) = calls(&proxy, send(store.clone(), "m0")).await;
    assert_eq!((first.seq, n), (Some(1), 2), "a read of the head and the transaction");
    for i in 1..5 {
        let (sent, n) = calls(&proxy, send(store.clone(), &format!("m{i}"))).await;
        assert_eq!((sent.seq, n), (Some(i + 1), 1), "send {i}");
    }

    // Another environment sends: this one's remembered head is stale, and the cancellation
    // tells the current one (two transactions, no read).
    let (store_b, _proxy_b) = through_faults(&t, DynamoFaults::default(), 0).await;
    assert_eq!(send(store_b, "b0").await.seq, Some(6));
    let (sent, n) = calls(&proxy, send(store.clone(), "m5")).await;
    assert_eq!((sent.seq, n), (Some(7), 2));

    // A retried send is answered from the cancellation too: one call, the first's id.
    let (again, n) = calls(&proxy, send(store.clone(), "m5")).await;
    assert!(again.duplicate);
    assert_eq!((again.message_id, again.seq, n), (sent.message_id, Some(7), 1));
}

/// `count` members of `channel`, connected through `t`'s own store (not counted by any proxy).
async fn members(t: &TestTable, channel: &ChannelId, count: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..count {
        let (id, user) = (format!("c{i:03}"), format!("u{i:03}"));
        t.store
            .connect(&connection(&id, &user), std::slice::from_ref(channel))
            .await
            .unwrap();
        out.push((id, user));
    }
    out
}

/// A channel of members with one message, and a store that counts its calls (the members' own
/// writes are not counted).
struct Crowd {
    t: TestTable,
    channel: ChannelId,
    /// (connection id, user id)
    members: Vec<(String, String)>,
    posted: wsfan_shared::store::PostOutcome,
    store: DynamoStore,
    proxy: DynamoProxy,
}

impl Crowd {
    async fn new(count: usize) -> Crowd {
        let t = TestTable::new().await;
        let channel: ChannelId = "workspace:42".parse().unwrap();
        let members = members(&t, &channel, count).await;
        let posted = t.store.post(&chat(&channel, "u000", None), Some("c000")).await.unwrap();
        let (store, proxy) = through_faults(&t, DynamoFaults::default(), 0).await;
        Crowd {
            t,
            channel,
            members,
            posted,
            store,
            proxy,
        }
    }
}

fn reaction(channel: &ChannelId, target: &str, user: &str, emoji: &str) -> Reaction {
    let now = wsfan_shared::clock::now_millis();
    Reaction {
        channel: channel.clone(),
        target_id: target.into(),
        message_id: ulid::Ulid::generate().to_string(),
        sender_id: user.into(),
        emoji: emoji.into(),
        sent_at: now,
        expires_at: now / 1000 + 3600,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_members_reacting_to_one_message_take_no_head_transaction() {
    let Crowd {
        t,
        channel,
        members,
        posted,
        store,
        proxy,
    } = Crowd::new(100).await;

    let reactions = futures::future::join_all(members.iter().map(|(id, user)| {
        let (store, r) = (store.clone(), reaction(&channel, &posted.message_id, user, "👍"));
        async move { store.react(&r, id).await.unwrap() }
    }))
    .await;
    assert!(reactions.iter().all(|r| !r.duplicate && r.seq.is_none()));
    // Per reaction: a read of the membership and one update of the message's summary. Nothing
    // is a transaction, nothing touches the head, and nothing was retried for contention.
    let calls = proxy.operations();
    assert_eq!(calls.get("TransactWriteItems"), None, "{calls:?}");
    assert_eq!(calls.get("UpdateItem"), Some(&100), "{calls:?}");
    assert_eq!(calls.get("GetItem"), Some(&100), "{calls:?}");
    assert_eq!(t.store.head(&channel).await.unwrap(), 1, "no sequence number was taken");

    // A retried reaction counts once; another emoji is another tally.
    let again = store
        .react(&reaction(&channel, &posted.message_id, "u007", "👍"), "c007")
        .await
        .unwrap();
    assert!(again.duplicate);
    store
        .react(&reaction(&channel, &posted.message_id, "u007", "🎉"), "c007")
        .await
        .unwrap();
    let page = t.store.history(&channel, HistoryCursor::Latest, 10).await.unwrap();
    let summary = &page.reactions[&posted.message_id];
    assert_eq!(summary["👍"].count, 100);
    assert_eq!(summary["🎉"].users, vec!["u007".to_owned()]);
    // A connection outside the channel cannot react.
    let outsider = store
        .react(&reaction(&channel, &posted.message_id, "eve", "👍"), "nobody")
        .await;
    assert!(matches!(outsider, Err(StoreError::NotMember)), "{outsider:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_members_reading_one_message_write_a_cursor_each_and_never_the_head() {
    let Crowd {
        t,
        channel,
        members,
        posted,
        store,
        proxy,
    } = Crowd::new(100).await;
    let cursor = |user: &str, seq: u64| {
        let now = wsfan_shared::clock::now_millis();
        ReadCursor {
            channel: channel.clone(),
            user_id: user.into(),
            seq,
            target_id: posted.message_id.clone(),
            message_id: ulid::Ulid::generate().to_string(),
            sent_at: now,
            expires_at: now / 1000 + 3600,
        }
    };

    let acks = futures::future::join_all(members.iter().map(|(id, user)| {
        let (store, c) = (store.clone(), cursor(user, 1));
        async move { store.read(&c, id).await.unwrap() }
    }))
    .await;
    assert!(acks.iter().all(|a| !a.duplicate && a.seq == Some(1)));
    // Per receipt: a read of the membership and one put of the user's own cursor. No
    // transaction, no head, no retry for contention.
    let calls = proxy.operations();
    assert_eq!(calls.get("TransactWriteItems"), None, "{calls:?}");
    assert_eq!(calls.get("PutItem"), Some(&100), "{calls:?}");
    assert_eq!(calls.get("GetItem"), Some(&100), "{calls:?}");
    assert_eq!(t.store.head(&channel).await.unwrap(), 1, "no sequence number was taken");

    // Many receipts of one user coalesce into one item that only moves forward.
    for seq in [3, 2, 3, 5, 4] {
        store.read(&cursor("u007", seq), "c007").await.unwrap();
    }
    let reads = t.store.reads(&channel, 500).await.unwrap();
    assert_eq!(reads.len(), 100);
    assert_eq!(reads["u007"], 5);
    assert_eq!(reads["u008"], 1);
    assert_eq!(
        t.store.reads(&channel, 10).await.unwrap().len(),
        10,
        "at most the limit"
    );
    let cursors = t
        .items()
        .await
        .into_iter()
        .filter(|i| s(i, "sk").starts_with("READ#"))
        .count();
    assert_eq!(cursors, 100, "one item per user");
    let outsider = store.read(&cursor("eve", 1), "nobody").await;
    assert!(matches!(outsider, Err(StoreError::NotMember)), "{outsider:?}");
}

/// A frame from member `user` on connection `id`, as API Gateway hands it to ws-message.
fn route_event(
    id: &str,
    user: &str,
    body: serde_json::Value,
) -> aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest {
    let mut event: serde_json::Value = harness::fixture("ws-message/read");
    event["requestContext"]["connectionId"] = serde_json::json!(id);
    event["requestContext"]["authorizer"]["principalId"] = serde_json::json!(user);
    event["requestContext"]["authorizer"]["userId"] = serde_json::json!(user);
    event["requestContext"]["authorizer"]["channels"] = serde_json::json!("workspace:*");
    event["body"] = serde_json::json!(body.to_string());
    serde_json::from_value(event).unwrap()
}

/// Every member at once, each sending the frame `frame(user)` through ws-message: the answers,
/// and the DynamoDB calls by operation.
async fn all_at_once(
    store: &DynamoStore,
    proxy: &DynamoProxy,
    members: &[(String, String)],
    frame: impl Fn(&str) -> serde_json::Value,
) -> (Vec<serde_json::Value>, std::collections::BTreeMap<String, u64>) {
    let before = proxy.operations();
    let limiter = wsfan_shared::limiter::DynamoLimiter::new(store, wsfan_shared::rate::RateLimit::OFF);
    // These frames carry no token: the verifier (for `auth`) is never asked.
    let verifier = harness::dev_verifier(None);
    let answers = futures::future::join_all(members.iter().map(|(id, user)| {
        let (limiter, verifier, event) = (&limiter, &verifier, route_event(id, user, frame(user)));
        async move {
            let response = ws_message::handle(store, limiter, verifier, &Retention::default(), event).await;
            match response.body {
                Some(aws_lambda_events::encodings::Body::Text(t)) => serde_json::from_str(&t).unwrap(),
                other => panic!("expected an answer, got {other:?}"),
            }
        }
    }))
    .await;
    let mut calls = proxy.operations();
    for (operation, n) in before {
        *calls.get_mut(&operation).unwrap() -= n;
    }
    calls.retain(|_, n| *n > 0);
    (answers, calls)
}

/// The figure in BENCHMARKS.md ("Receipts and reactions of a big channel"): what 100 members
/// reading and reacting to one message at once cost, by DynamoDB operation, through ws-message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_members_reading_and_reacting_through_ws_message_write_no_sequenced_item() {
    let Crowd {
        t,
        channel,
        members,
        posted,
        store,
        proxy,
    } = Crowd::new(100).await;

    let (acks, reads) = all_at_once(
        &store,
        &proxy,
        &members,
        |_| serde_json::json!({"action": "read", "channel": "workspace:42", "messageId": posted.message_id, "seq": 1}),
    )
    .await;
    let (reacted, reactions) = all_at_once(&store, &proxy, &members, |_| {
        serde_json::json!({"type": "reaction", "emoji": "❤️", "message_id": posted.message_id, "channel": "workspace:42"})
    })
    .await;
    println!("FIGURE 100 receipts: {reads:?}; 100 reactions: {reactions:?}");
    for ack in acks.iter().chain(&reacted) {
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    // Neither takes a sequence number or a transaction: the channel's sequenced writes do not grow
    // with its members.
    assert_eq!(
        t.store.head(&channel).await.unwrap(),
        1,
        "the head stays at the message"
    );
    assert_eq!(reads.get("TransactWriteItems"), None, "{reads:?}");
    assert_eq!(reactions.get("TransactWriteItems"), None, "{reactions:?}");
    assert_eq!(
        reads.get("PutItem"),
        Some(&100),
        "one cursor write per receipt: {reads:?}"
    );
    assert_eq!(
        reactions.get("UpdateItem"),
        Some(&100),
        "one summary update per reaction: {reactions:?}"
    );
    let summary = &t
        .store
        .history(&channel, HistoryCursor::Latest, 1)
        .await
        .unwrap()
        .reactions[&posted.message_id];
    assert_eq!(summary["❤️"].count, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reactions_and_receipts_ride_out_throttles_and_lost_answers_and_count_once() {
    let Crowd {
        t,
        channel,
        members,
        posted,
        ..
    } = Crowd::new(20).await;
    let faults = DynamoFaults {
        throttle: 0.2,
        lost: 0.3,
        ..DynamoFaults::default()
    };
    let (store, proxy) = through_faults(&t, faults, 7).await;
    let now = wsfan_shared::clock::now_millis();
    let outcomes = futures::future::join_all(members.iter().map(|(id, user)| {
        let store = store.clone();
        let reacted = reaction(&channel, &posted.message_id, user, "👍");
        let read = ReadCursor {
            channel: channel.clone(),
            user_id: user.clone(),
            seq: 1,
            target_id: posted.message_id.clone(),
            message_id: ulid::Ulid::generate().to_string(),
            sent_at: now,
            expires_at: now / 1000 + 3600,
        };
        async move {
            let r = store.react(&reacted, id).await.unwrap();
            let c = store.read(&read, id).await.unwrap();
            (r, c)
        }
    }))
    .await;
    let injected = proxy.injected();
    assert!(injected.get(&DynamoFault::Lost).is_some_and(|n| *n > 0), "{injected:?}");
    // A write applied whose answer was lost is retried, finds itself, and is no duplicate.
    for (reacted, read) in &outcomes {
        assert!(!reacted.duplicate && !read.duplicate, "{reacted:?} {read:?}");
        assert_eq!(read.seq, Some(1));
    }
    let summary = &t
        .store
        .history(&channel, HistoryCursor::Latest, 1)
        .await
        .unwrap()
        .reactions[&posted.message_id];
    assert_eq!(summary["👍"].count, 20);
    assert_eq!(t.store.reads(&channel, 100).await.unwrap().len(), 20);
    assert_eq!(t.store.head(&channel).await.unwrap(), 1);
}
