//! `wsfan bench channel`: one message to a large channel over the real path, end to end: the
//! member items in moto, one stream record, the real stream-fanout binary, shards on the FIFO
//! delivery queue, the real deliver binaries in several environments at once, and our
//! `@connections` server behind a token bucket answering 429. Meanwhile a small channel on the
//! same stream gets a message every 200 ms, and the time from its write to each of its members'
//! posts is measured (head-of-line blocking). Every post is counted per connection: lost and
//! duplicated deliveries are counts, not estimates.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use wsfan_local::connections::{ConnectionsServer, Sink, SERVER_THREAD};
use wsfan_shared::access::Role;
use wsfan_shared::channel::ChannelId;
use wsfan_shared::model::{keys, Membership, Message, MessageKind};
use wsfan_shared::store::{DynamoStore, Store};

#[derive(clap::Args)]
pub struct ChannelBench {
    #[command(flatten)]
    stack: crate::StackArgs,
    /// Members of the large channel.
    #[arg(long, default_value_t = 100_000)]
    members: usize,
    /// The @connections bucket's refill, posts per second (the account default is 10,000).
    #[arg(long, default_value_t = 10_000.0)]
    bucket_rate: f64,
    /// The bucket's size (the account default burst is 5,000).
    #[arg(long, default_value_t = 5_000.0)]
    bucket_burst: f64,
    /// No bucket at all (the 1,000,000-member run: sharding's own cost).
    #[arg(long)]
    no_bucket: bool,
    /// FANOUT_MAX_RPS for the run (default: the bucket's rate; without a bucket, no governor
    /// limit worth the name).
    #[arg(long)]
    max_rps: Option<u64>,
    /// Members of the small channel whose latency is measured during the broadcast.
    #[arg(long, default_value_t = 10)]
    small_members: usize,
    /// Give up waiting for the broadcast after this long.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Fail (exit 1) unless this many 429s were answered: a throttled run must be throttled.
    #[arg(long, default_value_t = 0)]
    require_throttled: u64,
}

/// Counts each post per connection, and when the small channel's posts arrived.
#[derive(Default)]
struct Counter {
    big: Mutex<HashMap<u32, u32>>,
    big_posts: AtomicU64,
    /// When the broadcast's first post arrived.
    first_big: std::sync::OnceLock<Instant>,
    /// (connection, message body) -> arrival.
    small: Mutex<Vec<(String, String, Instant)>>,
}

impl Sink for Counter {
    fn send(&self, connection_id: &str, data: Bytes) -> bool {
        if let Some(n) = big_index(connection_id) {
            // Only the broadcast's frame counts (presence etc. never reach here: no records).
            *self.big.lock().unwrap().entry(n).or_default() += 1;
            self.first_big.get_or_init(Instant::now);
            self.big_posts.fetch_add(1, Ordering::Relaxed);
        } else if connection_id.starts_with("small-") {
            let frame: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
            let body = frame["body"].as_str().unwrap_or_default().to_owned();
            self.small
                .lock()
                .unwrap()
                .push((connection_id.to_owned(), body, Instant::now()));
        }
        true
    }
    fn close(&self, _connection_id: &str) -> bool {
        true
    }
    fn exists(&self, _connection_id: &str) -> bool {
        true
    }
}

/// The large channel's member `i`: its id starts with a character of the base64 alphabet in
/// turn, as API Gateway's ids do, so the members spread over every delivery group.
fn big_id(i: usize) -> String {
    const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    format!("{}big-{i:07}", char::from(BASE64[i % BASE64.len()]))
}

fn big_index(connection_id: &str) -> Option<u32> {
    connection_id.get(1..)?.strip_prefix("big-")?.parse().ok()
}

fn membership(channel: &ChannelId, connection_id: String) -> Membership {
    Membership {
        channel: channel.clone(),
        user_id: Some(format!("u-{connection_id}")),
        connection_id,
        role: Role::Member,
        joined_at: wsfan_shared::clock::now_millis(),
        expires_at: wsfan_shared::clock::now_secs() + 7200,
        history: None,
    }
}

/// Writes the members with BatchWriteItem, 25 at a time, several requests at once.
async fn write_members(client: &aws_sdk_dynamodb::Client, table: &str, members: Vec<Membership>) -> Result<(), String> {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let chunks: Vec<Vec<Membership>> = members.chunks(25).map(<[Membership]>::to_vec).collect();
    let results: Vec<Result<(), String>> = stream::iter(chunks)
        .map(|chunk| async move {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|m| {
                    let key = (
                        keys::channel(&m.channel),
                        format!("{}{}", keys::CONN_PREFIX, m.connection_id),
                    );
                    let item = wsfan_shared::store::to_item(key, m).expect("memberships serialise");
                    let put = PutRequest::builder().set_item(Some(item)).build().expect("item set");
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            while !requests.is_empty() {
                let out = client
                    .batch_write_item()
                    .request_items(table, requests)
                    .send()
                    .await
                    .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string())?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(table))
                    .unwrap_or_default();
            }
            Ok(())
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

fn chat(channel: &ChannelId, body: String) -> Message {
    let now = wsfan_shared::clock::now_millis();
    Message {
        kind: MessageKind::Message,
        channel: channel.clone(),
        message_id: ulid::Ulid::generate().to_string(),
        seq: None,
        sender_id: "bench".into(),
        body: Some(body),
        client_msg_id: None,
        target_id: None,
        emoji: None,
        sent_at: now,
        expires_at: now / 1000 + 3600,
    }
}

/// The running processes whose executable is `bin_dir/<name>`: (name, pid).
fn function_processes(bin_dir: &std::path::Path, names: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.filter_map(Result::ok) {
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        if let Some(name) = names.iter().find(|n| exe == bin_dir.join(n)) {
            out.push((name.to_string(), entry.file_name().to_string_lossy().into_owned()));
        }
    }
    out.sort();
    out
}

/// Peak RSS (VmHWM, KB) of each running process of these functions.
fn peak_rss(bin_dir: &std::path::Path, names: &[&str]) -> Vec<(String, u64)> {
    function_processes(bin_dir, names)
        .into_iter()
        .map(|(name, pid)| (name, crate::bench::peak_rss_kib_of(&pid)))
        .filter(|(_, kb)| *kb > 0)
        .collect()
}

/// CPU time of the @connections server's thread (ConnectionsServer::start_on_own_thread).
fn server_thread_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == SERVER_THREAD))
        .map(|t| crate::bench::cpu_time_of(&format!("self/task/{}", t.file_name().to_string_lossy())))
        .sum()
}

/// CPU time (user + system) of every running process of these functions, by pid.
fn cpu_by_process(bin_dir: &std::path::Path, names: &[&str]) -> HashMap<String, (String, Duration)> {
    function_processes(bin_dir, names)
        .into_iter()
        .map(|(name, pid)| {
            let cpu = crate::bench::cpu_time_of(&pid);
            (pid, (name, cpu))
        })
        .collect()
}

/// The CPU each function spent between two readings (processes started since count whole).
fn cpu_spent(
    before: &HashMap<String, (String, Duration)>,
    after: &HashMap<String, (String, Duration)>,
) -> Vec<(String, Duration)> {
    let mut by_name: std::collections::BTreeMap<String, Duration> = Default::default();
    for (pid, (name, cpu)) in after {
        let earlier = before.get(pid).map(|(_, c)| *c).unwrap_or_default();
        *by_name.entry(name.clone()).or_default() += cpu.saturating_sub(earlier);
    }
    by_name.into_iter().collect()
}

pub async fn run(b: ChannelBench) -> Result<String, String> {
    let counter = Arc::new(Counter::default());
    // On a thread of its own, and trusting signatures (tests check them), as bench fanout's
    // server runs: the CPU it saves is the functions' to use.
    let server = ConnectionsServer::start_on_own_thread("127.0.0.1:0", Some(counter.clone() as Arc<dyn Sink>))
        .map_err(|e| format!("starting @connections: {e}"))?;
    server.keep_nothing();
    server.trust_signatures();
    if !b.no_bucket {
        server.set_token_bucket(b.bucket_rate, b.bucket_burst);
    }
    let config = b.stack.config(0)?;
    // Absolute, as /proc/<pid>/exe is.
    let bin_dir: PathBuf = config.bin_dir.canonicalize().unwrap_or_else(|_| config.bin_dir.clone());
    // Each environment takes FANOUT_MAX_RPS / FANOUT_SHARES; here the environments that can post
    // are deliver's and stream-fanout's, at most --concurrency each.
    let max_rps = b
        .max_rps
        .unwrap_or(if b.no_bucket { 10_000_000 } else { b.bucket_rate as u64 });
    let shares = config.concurrency as u64 + 1;
    let overrides = vec![
        ("FANOUT_MAX_RPS".to_owned(), max_rps.to_string()),
        ("FANOUT_SHARES".to_owned(), shares.to_string()),
    ];
    let (environment, _functions) =
        wsfan_local::dev::start_pipeline(&config, &server.endpoint(&config.stage), &overrides)
            .await
            .map_err(|e| e.to_string())?;
    let dynamodb = aws_sdk_dynamodb::Client::new(&environment.sdk);
    let store = DynamoStore::new(
        dynamodb.clone(),
        &environment.table_name,
        wsfan_shared::config::Retention::default(),
    );

    let big: ChannelId = "workspace:bench-big".parse().expect("channel");
    let small: ChannelId = "workspace:bench-small".parse().expect("channel");
    let started = Instant::now();
    let mut members: Vec<Membership> = (0..b.small_members)
        .map(|i| membership(&small, format!("small-{i:02}")))
        .collect();
    members.extend((0..b.members).map(|i| membership(&big, big_id(i))));
    write_members(&dynamodb, &environment.table_name, members).await?;
    eprintln!(
        "bench channel: {} + {} members written in {:.1} s",
        b.members,
        b.small_members,
        started.elapsed().as_secs_f64()
    );
    // Let the stream poller pass the membership records (filtered out, but read).
    tokio::time::sleep(Duration::from_secs(3)).await;

    const FUNCTIONS: &[&str] = &["stream-fanout", "deliver"];
    let cpu_before = cpu_by_process(&bin_dir, FUNCTIONS);
    // What else ran on the same two cores meanwhile: the emulated AWS side.
    let moto_pid = environment.moto.pid().to_string();
    let others_before = (crate::bench::cpu_time_of(&moto_pid), server_thread_cpu());
    let throttled_before = server.stats().throttled.load(Ordering::Relaxed);
    let requests_before = server.stats().requests.load(Ordering::Relaxed);
    let sent = Instant::now();
    store
        .post(&chat(&big, "broadcast".into()), None)
        .await
        .map_err(|e| e.to_string())?;
    // The small channel, every 200 ms during the broadcast.
    let mut small_sent: HashMap<String, Instant> = HashMap::new();
    let deadline = sent + Duration::from_secs(b.timeout_secs);
    let mut n = 0;
    let done_at = loop {
        let reached = counter.big.lock().unwrap().len();
        if reached >= b.members {
            break Some(sent.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        let body = format!("small-{n}");
        small_sent.insert(body.clone(), Instant::now());
        store.post(&chat(&small, body), None).await.map_err(|e| e.to_string())?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cpu = cpu_spent(&cpu_before, &cpu_by_process(&bin_dir, FUNCTIONS));
    let (moto_cpu, server_cpu) = (
        crate::bench::cpu_time_of(&moto_pid).saturating_sub(others_before.0),
        server_thread_cpu().saturating_sub(others_before.1),
    );
    // Late duplicates and the last small messages have time to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = peak_rss(&bin_dir, FUNCTIONS);

    let counts = counter.big.lock().unwrap().clone();
    let reached = counts.len();
    let duplicated: u64 = counts.values().map(|c| u64::from(c.saturating_sub(1))).sum();
    let lost = b.members - reached;
    let small_posts = counter.small.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = small_posts
        .iter()
        .filter_map(|(_, body, at)| Some(at.duration_since(*small_sent.get(body)?)))
        .collect();
    latencies.sort();
    // The slowest messages, by when they were sent: where a high p99 comes from.
    let mut slowest: Vec<(Duration, Duration)> = small_posts
        .iter()
        .filter_map(|(_, body, at)| {
            let sent_at = *small_sent.get(body)?;
            Some((at.duration_since(sent_at), sent_at.duration_since(sent)))
        })
        .collect();
    slowest.sort_by(|a, b| b.cmp(a));
    slowest.dedup_by_key(|(_, offset)| *offset);
    slowest.truncate(3);
    let p = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map(|d| d.as_millis())
            .unwrap_or(0)
    };
    let small_expected = small_sent.len() * b.small_members;
    let throttled = server.stats().throttled.load(Ordering::Relaxed) - throttled_before;
    let requests = server.stats().requests.load(Ordering::Relaxed) - requests_before;
    let first_attempts = (reached + small_posts.len()) as u64;
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench channel: {} members, bucket {}",
        b.members,
        if b.no_bucket {
            "none".to_owned()
        } else {
            format!("{}/s burst {}", b.bucket_rate, b.bucket_burst)
        }
    );
    let _ = writeln!(
        out,
        "  FANOUT_MAX_RPS {max_rps}, FANOUT_SHARES {shares}, environments per function {}",
        config.concurrency
    );
    let first_post = counter
        .first_big
        .get()
        .map_or(0.0, |at| at.duration_since(sent).as_secs_f64());
    match done_at {
        Some(t) => _ = writeln!(
            out,
            "  all reached in {:.2} s (write of the message to the last member's post; the first post after {first_post:.2} s)",
            t.as_secs_f64()
        ),
        None => _ = writeln!(out, "  NOT all reached within {} s", b.timeout_secs),
    }
    let _ = writeln!(
        out,
        "  lost {lost}, duplicated {duplicated}, posts {}",
        counter.big_posts.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "  429s answered {throttled}, requests {requests}, retries run {}",
        requests.saturating_sub(first_attempts)
    );
    let _ = writeln!(
        out,
        "  small channel ({} members, {} messages during the broadcast): {} of {small_expected} deliveries, p50 {} ms, p99 {} ms, max {} ms",
        b.small_members,
        small_sent.len(),
        latencies.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
    let _ = writeln!(
        out,
        "    slowest: {}",
        slowest
            .iter()
            .map(|(latency, offset)| format!("{} ms (sent {:.1} s in)", latency.as_millis(), offset.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let function_cpu: Duration = cpu.iter().map(|(_, c)| *c).sum();
    let big_posts = counter.big_posts.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "  functions' CPU during the broadcast: {} = {:.2} s; {:.0} posts per CPU-second ({:.1} µs per post of the broadcast)",
        cpu.iter()
            .map(|(n, c)| format!("{n} {:.2} s", c.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        function_cpu.as_secs_f64(),
        big_posts as f64 / function_cpu.as_secs_f64().max(1e-9),
        function_cpu.as_secs_f64() * 1e6 / (big_posts.max(1) as f64)
    );
    let _ = writeln!(
        out,
        "  on the same cores meanwhile: moto {:.2} s, the @connections server {:.2} s ({:.1} µs per post)",
        moto_cpu.as_secs_f64(),
        server_cpu.as_secs_f64(),
        server_cpu.as_secs_f64() * 1e6 / (big_posts.max(1) as f64)
    );
    for (name, kb) in &rss {
        let _ = writeln!(out, "  peak RSS {name}: {:.1} MB", *kb as f64 / 1024.0);
    }
    environment.moto.stop();
    let ok = lost == 0 && latencies.len() == small_expected && throttled >= b.require_throttled;
    if !ok {
        return Err(format!(
            "{out}bench channel failed: lost {lost}, small deliveries {} of {small_expected}, 429s {throttled} (required {})",
            latencies.len(),
            b.require_throttled
        ));
    }
    Ok(out)
}
