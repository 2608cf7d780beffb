//! `wsfan-bench channel`: one message to a large channel over the real path, end to end: the
//! member items in moto, one stream record, the real stream-fanout binary, shards on the FIFO
//! delivery queue, the real deliver binaries in several environments at once, and our
//! `@connections` server behind a token bucket answering 429. Meanwhile a small channel on the
//! same stream gets a message every 200 ms, and the time from its write to each of its members'
//! posts is measured (head-of-line blocking). Every post is counted per connection: lost and
//! duplicated deliveries are counts, not estimates.

mod counter;
mod members;
mod pinning;
mod processes;
mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::process::Pin;
use wsfan_local::connections::{ConnectionsServer, Sink, SERVER_THREAD};
use wsfan_shared::channel::ChannelId;
use wsfan_shared::model::{Membership, Message};
use wsfan_shared::store::{DynamoStore, Messages};

use counter::{big_id, Counter};
use members::{membership, write_members};
use processes::{cpu_by_process, cpu_spent, function_processes, peak_rss, server_thread_cpu, threads_named};

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

fn chat(channel: &ChannelId, body: String) -> Message {
    wsfan_shared::publisher::chat_message(channel, "bench", &body, None, 3600)
}

/// The functions whose processes are measured.
const FUNCTIONS: &[&str] = &["stream-fanout", "deliver"];

pub async fn run(b: ChannelBench) -> Result<String, String> {
    // Before anything is spawned: threads and processes started later inherit the core.
    if let Some(core) = &b.functions_core {
        crate::process::pin(Pin::Process(&std::process::id().to_string()), core)?;
    }
    let counter = Arc::new(Counter {
        first_big_unix: AtomicU64::new(u64::MAX),
        ..Counter::default()
    });
    let server = start_connections(&b, counter.clone())?;
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

    let moto_pid = environment.moto.pid().to_string();
    let channels = Channels {
        big: &big,
        small: &small,
    };
    let broadcast = broadcast(&b, &bin_dir, &moto_pid, &store, &server, &counter, channels).await?;
    let out = report::Report {
        bench: &b,
        concurrency: config.concurrency,
        max_rps,
        counter: &counter,
        server: &server,
        broadcast: &broadcast,
    }
    .write();
    environment.moto.stop();
    out
}

/// The @connections server, counting every post in `counter`: on a thread of its own (pinned to
/// --aws-core), behind the token bucket unless --no-bucket.
fn start_connections(b: &ChannelBench, counter: Arc<Counter>) -> Result<ConnectionsServer, String> {
    // On a thread of its own, and trusting signatures (tests check them), as bench fanout's
    // server runs: the CPU it saves is the functions' to use.
    let server = ConnectionsServer::start_on_own_thread("127.0.0.1:0", Some(counter as Arc<dyn Sink>))
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
    Ok(server)
}

/// The large channels, each sent one message, and the small one whose latency is measured.
struct Channels<'a> {
    big: &'a [ChannelId],
    small: &'a ChannelId,
}

/// What was measured around the broadcast.
struct Broadcast {
    /// When its messages were written.
    sent: Instant,
    /// From then until the last member was reached (`None`: not within --timeout-secs).
    done_at: Option<Duration>,
    /// The small channel's messages by body, and when each was written.
    small_sent: HashMap<String, Instant>,
    /// The CPU each function spent.
    cpu: Vec<(String, Duration)>,
    /// The pinning read back (pinned runs only).
    pinned: Option<String>,
    /// The CPU the emulated AWS side spent meanwhile: moto, the @connections server's thread.
    moto_cpu: Duration,
    server_cpu: Duration,
    /// Peak RSS (KB) of each function process.
    rss: Vec<(String, u64)>,
    /// The single-channel figure just before and just after (pinned runs only), µs per post.
    single: (Option<f64>, Option<f64>),
    /// @connections' 429s and requests before the broadcast.
    throttled_before: u64,
    requests_before: u64,
}

/// Sends each large channel its message at once and, every 200 ms until every member is reached
/// (or the time is up), a message to the small channel; measures the CPU around it.
async fn broadcast(
    b: &ChannelBench,
    bin_dir: &std::path::Path,
    moto_pid: &str,
    store: &DynamoStore,
    server: &ConnectionsServer,
    counter: &Counter,
    channels: Channels<'_>,
) -> Result<Broadcast, String> {
    let single_before = match &b.aws_core {
        Some(core) => Some(pinning::single_channel(core, b.single_channel_recipients).await?),
        None => None,
    };
    let cpu_before = cpu_by_process(bin_dir, FUNCTIONS);
    // What else ran on the same two cores meanwhile: the emulated AWS side.
    let others_before = (crate::process::cpu_time_of(moto_pid), server_thread_cpu());
    let throttled_before = server.stats().throttled.load(Ordering::Relaxed);
    let requests_before = server.stats().requests.load(Ordering::Relaxed);
    let sent = Instant::now();
    let messages: Vec<Message> = channels
        .big
        .iter()
        .map(|channel| chat(channel, "broadcast".into()))
        .collect();
    let posted = futures::future::join_all(messages.iter().map(|message| store.post(message, None))).await;
    for result in posted {
        result.map_err(|e| e.to_string())?;
    }
    let (done_at, small_sent) = small_channel_until_reached(b, store, counter, channels.small, sent).await?;
    let cpu = cpu_spent(&cpu_before, &cpu_by_process(bin_dir, FUNCTIONS));
    // Checked while every process of the run is still there.
    let pinned = match (&b.functions_core, &b.aws_core) {
        (Some(functions), Some(aws)) => Some(pinning::check_pinned(
            &function_processes(bin_dir, FUNCTIONS),
            moto_pid,
            functions,
            aws,
        )?),
        _ => None,
    };
    let (moto_cpu, server_cpu) = (
        crate::process::cpu_time_of(moto_pid).saturating_sub(others_before.0),
        server_thread_cpu().saturating_sub(others_before.1),
    );
    // Late duplicates and the last small messages have time to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = peak_rss(bin_dir, FUNCTIONS);
    let single_after = match &b.aws_core {
        Some(core) => Some(pinning::single_channel(core, b.single_channel_recipients).await?),
        None => None,
    };
    Ok(Broadcast {
        sent,
        done_at,
        small_sent,
        cpu,
        pinned,
        moto_cpu,
        server_cpu,
        rss,
        single: (single_before, single_after),
        throttled_before,
        requests_before,
    })
}

/// The small channel, every 200 ms during the broadcast: the time from `sent` until every large
/// channel member was reached (`None`: not within --timeout-secs), and each small message's
/// body and when it was written.
async fn small_channel_until_reached(
    b: &ChannelBench,
    store: &DynamoStore,
    counter: &Counter,
    small: &ChannelId,
    sent: Instant,
) -> Result<(Option<Duration>, HashMap<String, Instant>), String> {
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
        store.post(&chat(small, body), None).await.map_err(|e| e.to_string())?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    Ok((done_at, small_sent))
}
