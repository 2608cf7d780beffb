//! `wsfan-bench`: the benchmarks, run through `scripts/bench` (which builds them and pins the
//! processes to cores). They drive the user's `wsfan` (its `dev` stack, from the same build) and
//! the real Lambda binaries; BENCHMARKS.md has their figures and the commands that took them.

mod budget;
mod channel;
mod client;
mod dev_log;
mod dev_process;
mod fanout;
mod figures;
mod hot;
mod lambdas;
mod local;
mod process;
mod receipts;
mod sends;
mod stack_stats;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wsfan-bench",
    version,
    about = "wsfan's benchmarks (run them through scripts/bench)"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// The broadcaster against the boto3 loop, latency, throttling and memory.
    Fanout {
        /// The venv's python, with boto3.
        #[arg(long, default_value = ".venv/bin/python")]
        python: PathBuf,
        /// Pin the @connections server to this core (taskset -c).
        #[arg(long)]
        server_core: Option<String>,
        #[arg(long, default_value_t = 10_000)]
        recipients: usize,
        #[arg(long, default_value_t = 10_000)]
        baseline_recipients: usize,
        /// Posts in flight (default: the broadcaster's, as FANOUT_CONCURRENCY would set it).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Rounds of the throughput run; the median is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Recipients of the throttled run: at the broadcaster's pace, 10,000 fit in the bucket's
        /// burst and refill without a single 429.
        #[arg(long, default_value_t = 50_000)]
        throttled_recipients: usize,
        /// The throttled run's token bucket refill, in posts per second (API Gateway's account
        /// default is 10,000). The run fails if the bucket never answers 429.
        #[arg(long, default_value_t = 10_000.0)]
        bucket_rate: f64,
        /// The throttled run's bucket size (API Gateway's account default burst is 5,000).
        #[arg(long, default_value_t = 5_000.0)]
        bucket_burst: f64,
        /// Only the throughput rounds (the single-channel CPU per post): what `bench channel`
        /// runs beside its broadcast as the figure to compare with.
        #[arg(long)]
        throughput_only: bool,
    },
    /// `wsfan dev` under load: real WebSocket clients join one channel, some send at a steady
    /// rate, and every delivery is counted; then an optional soak and a large channel's read.
    Local(local::LocalBench),
    /// One busy channel through `wsfan dev` with the template's defaults: members x messages
    /// per second, every delivery counted, the budget used in each second, timeouts, and the
    /// cost of a million deliveries.
    Hot(hot::HotBench),
    /// Every member of one channel sends a read receipt for the same message at once, through
    /// `wsfan dev`: each ack's time, and what the receipts wrote to DynamoDB by operation.
    Receipts(receipts::ReceiptsBench),
    /// Committed sends per second on one channel, closed loop, with 1, 10 and 100 concurrent
    /// senders through `wsfan dev`: acks, errors, DynamoDB calls per send, every message delivered.
    Sends(sends::SendsBench),
    /// Each real Lambda binary's cold start (time to its first `/next`) and peak RSS then, and
    /// stream-fanout's CPU per stream record (decode, classify, build the frame).
    Lambdas(lambdas::LambdasBench),
    /// One message to a large channel over the real path (stream-fanout, shards, deliver in
    /// several environments, a throttling @connections), with a small channel's latency meanwhile.
    Channel(channel::ChannelBench),
    /// The @connections server as a process of its own (`fanout` starts it).
    #[command(hide = true)]
    ServeConnections(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    #[arg(long, requires = "bucket_burst")]
    bucket_rate: Option<f64>,
    #[arg(long)]
    bucket_burst: Option<f64>,
}

async fn run(bench: Bench) -> Result<String, String> {
    match bench {
        Bench::Fanout {
            python,
            server_core,
            recipients,
            baseline_recipients,
            concurrency,
            rounds,
            throttled_recipients,
            bucket_rate,
            bucket_burst,
            throughput_only,
        } => {
            fanout::fanout(fanout::Options {
                python,
                concurrency,
                server_core,
                recipients,
                baseline_recipients,
                rounds,
                throttled_recipients,
                bucket_rate,
                bucket_burst,
                throughput_only,
            })
            .await
        }
        Bench::Local(bench) => local::run(bench).await,
        Bench::Hot(bench) => hot::run(bench).await,
        Bench::Receipts(bench) => receipts::run(bench).await,
        Bench::Sends(bench) => sends::run(bench).await,
        Bench::Lambdas(bench) => lambdas::run(bench).await,
        Bench::Channel(bench) => channel::run(bench).await,
        Bench::ServeConnections(a) => fanout::serve(a.latency_ms, a.bucket_rate.zip(a.bucket_burst)).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The broadcaster is measured as the fanout Lambdas run it: on one thread.
    let runtime = match cli.bench {
        Bench::Fanout { .. } | Bench::ServeConnections(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    wsfan_local::options::run_to_exit("wsfan-bench", runtime, run(cli.bench))
}
