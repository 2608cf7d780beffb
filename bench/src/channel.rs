//! `wsfan-bench channel`: one message to a large channel over the real path, end to end: the
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

use crate::process::{cores_of, Pin};
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use wsfan_local::connections::{ConnectionsServer, Sink, SERVER_THREAD};
use wsfan_local::per_second::Second;
use wsfan_shared::access::Role;
use wsfan_shared::channel::ChannelId;
use wsfan_shared::model::{keys, Membership, Message, MessageKind};
use wsfan_shared::store::{DynamoStore, Messages};

#[derive(clap::Args)]
pub struct ChannelBench {
    #[command(flatten)]
    stack: wsfan_local::options::StackArgs,
    /// Members of the large channel (of all of them, with --channels).
    #[arg(long, default_value_t = 100_000)]
    members: usize,
    /// Large channels to split the members among, each sent one message at the same moment:
    /// busy channels at once, whose environments all lease from one FANOUT_MAX_RPS.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    channels: u16,
    /// Fail unless the broadcast's whole seconds (its first and last are partial) posted at
    /// least this share of FANOUT_MAX_RPS on average (e.g. 0.9: one busy channel alone uses
    /// nearly all the budget). A second over FANOUT_MAX_RPS fails the run in any case.
    #[arg(long)]
    require_budget_share: Option<f64>,
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
    /// Pin the functions (every stream-fanout and deliver environment, and this process, which
    /// runs their Runtime API) to this core, as `bench fanout` pins its broadcaster. On AWS a
    /// Lambda environment shares its CPU with no emulator: with --aws-core, the functions' CPU per
    /// post is measured as the single-channel figure is. Pair it with --concurrency 1: on AWS
    /// each environment has a CPU of its own, and four on one core only take turns.
    #[arg(long, requires = "aws_core")]
    functions_core: Option<String>,
    /// Pin the emulated AWS side (moto, every thread, and the @connections server's thread) to
    /// this core.
    #[arg(long, requires = "functions_core")]
    aws_core: Option<String>,
    /// Recipients of each round of the single-channel figure a pinned run takes beside its
    /// broadcast (`bench fanout`'s default).
    #[arg(long, default_value_t = 10_000)]
    single_channel_recipients: usize,
}

/// Counts each post per connection, and when the small channel's posts arrived.
#[derive(Default)]
struct Counter {
    big: Mutex<HashMap<u32, u32>>,
    big_posts: AtomicU64,
    /// When the broadcast's first post arrived.
    first_big: std::sync::OnceLock<Instant>,
    /// The unix seconds of the broadcast's first and last posts, for @connections' per-second
    /// counts (`u64::MAX` / 0 until a post arrives).
    first_big_unix: AtomicU64,
    last_big_unix: AtomicU64,
    /// (connection, message body) -> arrival.
    small: Mutex<Vec<(String, String, Instant)>>,
}

impl Sink for Counter {
    fn send(&self, connection_id: &str, data: Bytes) -> bool {
        if let Some(n) = big_index(connection_id) {
            // Only the broadcast's frame counts (presence etc. never reach here: no records).
            *self.big.lock().unwrap().entry(n).or_default() += 1;
            self.first_big.get_or_init(Instant::now);
            let unix = wsfan_shared::clock::now_secs().max(0) as u64;
            self.first_big_unix.fetch_min(unix, Ordering::Relaxed);
            self.last_big_unix.fetch_max(unix, Ordering::Relaxed);
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
        batch: false,
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

/// This bench's own running processes whose executable is `bin_dir/<name>`: (name, pid). Only
/// its children: another stack on the machine (a `wsfan dev`, a test) runs the same binaries.
fn function_processes(bin_dir: &std::path::Path, names: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let me = std::process::id().to_string();
    for entry in procs.filter_map(Result::ok) {
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        let parent = std::fs::read_to_string(entry.path().join("status")).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .map(|p| p.trim().to_owned())
        });
        if parent.as_deref() != Some(me.as_str()) {
            continue;
        }
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
        .map(|(name, pid)| (name, crate::process::peak_rss_kib_of(&pid)))
        .filter(|(_, kb)| *kb > 0)
        .collect()
}

/// CPU time of the @connections server's thread (ConnectionsServer::start_on_own_thread).
fn server_thread_cpu() -> Duration {
    threads_named(SERVER_THREAD)
        .iter()
        .map(|tid| crate::process::cpu_time_of(&format!("self/task/{tid}")))
        .sum()
}

/// CPU time (user + system) of every running process of these functions, by pid.
fn cpu_by_process(bin_dir: &std::path::Path, names: &[&str]) -> HashMap<String, (String, Duration)> {
    function_processes(bin_dir, names)
        .into_iter()
        .map(|(name, pid)| {
            let cpu = crate::process::cpu_time_of(&pid);
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

/// The task ids of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The cores each thread of a process may run on, one entry per thread.
fn thread_cores(pid: &str) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| cores_of(&format!("{pid}/task/{}", t.file_name().to_string_lossy())))
        .collect()
}

/// Reads the pinning back from /proc: every thread of every function process on the functions'
/// core, every thread of moto and the @connections thread on the other, so that a figure
/// labelled "pinned" was measured pinned.
fn check_pinned(
    functions: &[(String, String)],
    moto_pid: &str,
    functions_core: &str,
    aws_core: &str,
) -> Result<String, String> {
    let mut threads = 0;
    for (name, pid) in functions {
        let cores = thread_cores(pid);
        if let Some(other) = cores.iter().find(|c| *c != functions_core) {
            return Err(format!(
                "{name} ({pid}) may run on cores {other}, not only {functions_core}"
            ));
        }
        threads += cores.len();
    }
    let moto = thread_cores(moto_pid);
    if moto.is_empty() || moto.iter().any(|c| c != aws_core) {
        return Err(format!("moto's threads may run on cores {moto:?}, not only {aws_core}"));
    }
    let server: Vec<String> = threads_named(SERVER_THREAD)
        .iter()
        .filter_map(|tid| cores_of(&format!("self/task/{tid}")))
        .collect();
    if server.is_empty() || server.iter().any(|c| c != aws_core) {
        return Err(format!(
            "the @connections thread may run on cores {server:?}, not only {aws_core}"
        ));
    }
    Ok(format!(
        "pinned: the functions on core {functions_core} ({} processes, {threads} threads), \
         moto ({} threads) and the @connections server's thread on core {aws_core}",
        functions.len(),
        moto.len()
    ))
}

/// The single-channel figure on the same cores: `bench fanout`'s throughput rounds (the
/// broadcaster in a process on this one's core, its server on `aws_core`), run beside the
/// broadcast, as a figure taken minutes apart on a VM can differ by a fifth. CPU µs per post.
async fn single_channel(aws_core: &str, recipients: usize) -> Result<f64, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = tokio::process::Command::new(me)
        .args(["fanout", "--server-core", aws_core, "--throughput-only"])
        .arg(format!("--recipients={recipients}"))
        .output()
        .await
        .map_err(|e| format!("bench fanout: {e}"))?;
    let report = String::from_utf8_lossy(&out.stdout);
    crate::fanout::reported_cpu_us(&report)
        .filter(|_| out.status.success())
        .ok_or_else(|| format!("bench fanout: {report}{}", String::from_utf8_lossy(&out.stderr)))
}

pub async fn run(b: ChannelBench) -> Result<String, String> {
    // Before anything is spawned: threads and processes started later inherit the core.
    if let Some(core) = &b.functions_core {
        crate::process::pin(Pin::Process(&std::process::id().to_string()), core)?;
    }
    let counter = Arc::new(Counter {
        first_big_unix: AtomicU64::new(u64::MAX),
        ..Counter::default()
    });
    // On a thread of its own, and trusting signatures (tests check them), as bench fanout's
    // server runs: the CPU it saves is the functions' to use.
    let server = ConnectionsServer::start_on_own_thread("127.0.0.1:0", Some(counter.clone() as Arc<dyn Sink>))
        .map_err(|e| format!("starting @connections: {e}"))?;
    server.keep_nothing();
    server.trust_signatures();
    if let Some(core) = &b.aws_core {
        // The thread names itself once it runs.
        let named_by = Instant::now() + Duration::from_secs(2);
        while threads_named(SERVER_THREAD).is_empty() && Instant::now() < named_by {
            std::thread::sleep(Duration::from_millis(1));
        }
        for tid in threads_named(SERVER_THREAD) {
            crate::process::pin(Pin::Thread(&tid), core)?;
        }
    }
    if !b.no_bucket {
        server.set_token_bucket(b.bucket_rate, b.bucket_burst);
    }
    let config = b.stack.config(0)?;
    // Absolute, as /proc/<pid>/exe is.
    let bin_dir: PathBuf = config.bin_dir.canonicalize().unwrap_or_else(|_| config.bin_dir.clone());
    // Every environment leases its posts from one per-second FANOUT_MAX_RPS (crate::budget).
    let max_rps = b
        .max_rps
        .unwrap_or(if b.no_bucket { 10_000_000 } else { b.bucket_rate as u64 });
    let overrides = vec![("FANOUT_MAX_RPS".to_owned(), max_rps.to_string())];
    let (environment, _functions) =
        wsfan_local::dev::start_pipeline(&config, &server.endpoint(&config.stage), &overrides)
            .await
            .map_err(|e| e.to_string())?;
    if let Some(core) = &b.aws_core {
        // moto makes a thread per request; those inherit the core from its accepting thread.
        crate::process::pin(Pin::Process(&environment.moto.pid().to_string()), core)?;
    }
    let dynamodb = aws_sdk_dynamodb::Client::new(&environment.sdk);
    let store = DynamoStore::new(
        dynamodb.clone(),
        &environment.table_name,
        wsfan_shared::config::Retention::default(),
    );

    let big: Vec<ChannelId> = match b.channels {
        1 => vec!["workspace:bench-big".parse().expect("channel")],
        n => (0..n)
            .map(|k| format!("workspace:bench-big-{k}").parse().expect("channel"))
            .collect(),
    };
    let small: ChannelId = "workspace:bench-small".parse().expect("channel");
    let started = Instant::now();
    let mut members: Vec<Membership> = (0..b.small_members)
        .map(|i| membership(&small, format!("small-{i:02}")))
        .collect();
    members.extend((0..b.members).map(|i| membership(&big[i % big.len()], big_id(i))));
    write_members(&dynamodb, &environment.table_name, members).await?;
    eprintln!(
        "bench channel: {} + {} members written in {:.1} s",
        b.members,
        b.small_members,
        started.elapsed().as_secs_f64()
    );
    // Let the stream poller pass the membership records (filtered out, but read).
    tokio::time::sleep(Duration::from_secs(3)).await;

    let single_before = match &b.aws_core {
        Some(core) => Some(single_channel(core, b.single_channel_recipients).await?),
        None => None,
    };
    const FUNCTIONS: &[&str] = &["stream-fanout", "deliver"];
    let cpu_before = cpu_by_process(&bin_dir, FUNCTIONS);
    // What else ran on the same two cores meanwhile: the emulated AWS side.
    let moto_pid = environment.moto.pid().to_string();
    let others_before = (crate::process::cpu_time_of(&moto_pid), server_thread_cpu());
    let throttled_before = server.stats().throttled.load(Ordering::Relaxed);
    let requests_before = server.stats().requests.load(Ordering::Relaxed);
    let sent = Instant::now();
    let messages: Vec<Message> = big.iter().map(|channel| chat(channel, "broadcast".into())).collect();
    let posted = futures::future::join_all(messages.iter().map(|message| store.post(message, None))).await;
    for result in posted {
        result.map_err(|e| e.to_string())?;
    }
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
    // Checked while every process of the run is still there.
    let pinned = match (&b.functions_core, &b.aws_core) {
        (Some(functions), Some(aws)) => Some(check_pinned(
            &function_processes(&bin_dir, FUNCTIONS),
            &moto_pid,
            functions,
            aws,
        )?),
        _ => None,
    };
    let (moto_cpu, server_cpu) = (
        crate::process::cpu_time_of(&moto_pid).saturating_sub(others_before.0),
        server_thread_cpu().saturating_sub(others_before.1),
    );
    // Late duplicates and the last small messages have time to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = peak_rss(&bin_dir, FUNCTIONS);
    let single_after = match &b.aws_core {
        Some(core) => Some(single_channel(core, b.single_channel_recipients).await?),
        None => None,
    };

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
        "bench channel: {} members{}, bucket {}",
        b.members,
        match b.channels {
            1 => String::new(),
            n => format!(" in {n} channels, one message each at once"),
        },
        if b.no_bucket {
            "none".to_owned()
        } else {
            format!("{}/s burst {}", b.bucket_rate, b.bucket_burst)
        }
    );
    let _ = writeln!(
        out,
        "  FANOUT_MAX_RPS {max_rps} (leased per second from the table), environments per function {}",
        config.concurrency
    );
    if let Some(pinned) = &pinned {
        let _ = writeln!(out, "  {pinned}");
    }
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
    let per_post_us = function_cpu.as_secs_f64() * 1e6 / (big_posts.max(1) as f64);
    let _ = writeln!(
        out,
        "  functions' CPU during the broadcast: {} = {:.2} s, {:.0}% of its wall time; {:.0} posts per CPU-second ({:.1} µs per post of the broadcast)",
        cpu.iter()
            .map(|(n, c)| format!("{n} {:.2} s", c.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        function_cpu.as_secs_f64(),
        100.0 * function_cpu.as_secs_f64() / done_at.unwrap_or(sent.elapsed()).as_secs_f64().max(1e-9),
        big_posts as f64 / function_cpu.as_secs_f64().max(1e-9),
        per_post_us
    );
    let _ = writeln!(
        out,
        "  on {} meanwhile: moto {:.2} s, the @connections server {:.2} s ({:.1} µs per post)",
        match &b.aws_core {
            Some(core) => format!("core {core}"),
            None => "the same cores".to_owned(),
        },
        moto_cpu.as_secs_f64(),
        server_cpu.as_secs_f64(),
        server_cpu.as_secs_f64() * 1e6 / (big_posts.max(1) as f64)
    );
    if let (Some(before), Some(after)) = (single_before, single_after) {
        let single = (before + after) / 2.0;
        let _ = writeln!(
            out,
            "  the single channel on the same cores (bench fanout --throughput-only), just before and just after: \
             {before:.1} and {after:.1} µs per post; this run's posts per CPU-second are {:.0}% of their mean's",
            100.0 * single / per_post_us.max(1e-9)
        );
    }
    for (name, kb) in &rss {
        let _ = writeln!(out, "  peak RSS {name}: {:.1} MB", *kb as f64 / 1024.0);
    }
    let budget = BudgetUse::of(
        &server.per_second(),
        counter.first_big_unix.load(Ordering::Relaxed),
        counter.last_big_unix.load(Ordering::Relaxed),
        max_rps,
    );
    for line in &budget.lines {
        let _ = writeln!(out, "  {line}");
    }
    environment.moto.stop();
    let share_met = b.require_budget_share.is_none_or(|share| budget.whole_share >= share);
    let ok = lost == 0
        && latencies.len() == small_expected
        && throttled >= b.require_throttled
        && budget.seconds_over == 0
        && share_met;
    if !ok {
        return Err(format!(
            "{out}bench channel failed: lost {lost}, small deliveries {} of {small_expected}, 429s {throttled} (required {}), \
             seconds over FANOUT_MAX_RPS {}, whole seconds' share of it {:.1}% (required {})",
            latencies.len(),
            b.require_throttled,
            budget.seconds_over,
            100.0 * budget.whole_share,
            b.require_budget_share
                .map_or("none".to_owned(), |s| format!("{:.1}%", 100.0 * s))
        ));
    }
    Ok(out)
}

/// How the broadcast used FANOUT_MAX_RPS, from @connections' own per-second counts: every
/// second from its first post to its last (the small channel's posts in them count too: the
/// budget is the whole fanout's).
struct BudgetUse {
    lines: Vec<String>,
    seconds_over: usize,
    /// The mean share of FANOUT_MAX_RPS posted in the seconds wholly inside the broadcast
    /// (0 when it took under three seconds, as then none is whole).
    whole_share: f64,
}

impl BudgetUse {
    fn of(seconds: &[Second], first: u64, last: u64, max_rps: u64) -> Self {
        let mut during: Vec<Second> = seconds
            .iter()
            .filter(|s| s.unix >= first && s.unix <= last)
            .copied()
            .collect();
        during.sort_by_key(|s| s.unix);
        let (report, mut lines) = crate::budget::budget_report(&during, max_rps);
        let whole: Vec<u64> = during
            .iter()
            .filter(|s| s.unix > first && s.unix < last)
            .map(|s| s.posts)
            .collect();
        let mean = whole.iter().sum::<u64>() as f64 / whole.len().max(1) as f64;
        let whole_share = mean / max_rps as f64;
        lines.push(format!(
            "  whole seconds of the broadcast: {}, posts per second mean {mean:.0} ({:.1}% of {max_rps}), min {}; each second: {}",
            whole.len(),
            100.0 * whole_share,
            whole.iter().min().copied().unwrap_or(0),
            during.iter().map(|s| s.posts.to_string()).collect::<Vec<_>>().join(" ")
        ));
        BudgetUse {
            lines,
            seconds_over: report["secondsOver"].as_u64().unwrap_or(0) as usize,
            whole_share,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BudgetUse;
    use wsfan_local::per_second::Second;

    fn second(unix: u64, posts: u64) -> Second {
        Second {
            unix,
            requests: posts,
            posts,
            ..Second::default()
        }
    }

    #[test]
    fn the_budget_share_counts_only_the_broadcasts_whole_seconds() {
        // Seconds 10 and 14 are the broadcast's partial first and last; 9 and 15 are outside it.
        let seconds = [
            second(9, 5000),
            second(10, 300),
            second(11, 4600),
            second(12, 4800),
            second(13, 4700),
            second(14, 100),
            second(15, 5001),
        ];
        let used = BudgetUse::of(&seconds, 10, 14, 5000);
        assert_eq!(used.seconds_over, 0, "second 15 is after the broadcast");
        assert!((used.whole_share - 0.94).abs() < 1e-9, "{}", used.whole_share);
        let over = BudgetUse::of(&[second(1, 10), second(2, 5001), second(3, 10)], 1, 3, 5000);
        assert_eq!(over.seconds_over, 1);
        assert!(BudgetUse::of(&[second(1, 10), second(2, 10)], 1, 2, 5000).whole_share == 0.0);
    }
}
