//! `wsfan-bench fanout`: the broadcaster against our @connections server on loopback, with the
//! server in a process of its own (pinned to its own core by scripts/bench), and the baseline
//! most deployments run today: a Python Lambda calling boto3's post_to_connection in a loop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{cpu_time, cpu_time_of, peak_rss_kib, sole_core};
use wsfan_shared::broadcaster::{Broadcast, BroadcastConfig, Broadcaster, GoneCleanup};

/// Benchmarks have no table: a 410 is only counted.
struct CountOnly;

impl GoneCleanup for CountOnly {
    async fn connection_gone(&self, _connection_id: &str) -> wsfan_shared::broadcaster::Gone {
        wsfan_shared::broadcaster::Gone::Removed
    }
}

/// A `wsfan serve-connections` child process.
struct Server {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    endpoint: String,
}

/// What the server answered, as it reports when it stops.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Answered {
    pub requests: u64,
    pub delivered: u64,
    pub throttled: u64,
}

impl Server {
    fn start(args: &[String], core: Option<&str>) -> Result<Server, String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = match core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.args(["-c", core]).arg(me);
                c
            }
            None => Command::new(me),
        };
        let mut child = command
            .arg("serve-connections")
            .args(args)
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the @connections server: {e}"))?;
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let port = line
            .trim()
            .strip_prefix("READY ")
            .ok_or(format!("server said {line:?}"))?;
        Ok(Server {
            child,
            stdout,
            endpoint: format!("http://127.0.0.1:{port}/bench"),
        })
    }

    fn cpu(&self) -> Duration {
        cpu_time_of(&self.child.id().to_string())
    }

    /// Stops the server and returns what it answered.
    fn finish(mut self) -> Result<Answered, String> {
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let stats = line
            .trim()
            .strip_prefix("STATS ")
            .ok_or(format!("the server's last words were {line:?}"))?;
        serde_json::from_str(stats).map_err(|e| format!("{e}: {stats}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn recipients(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("Conn{i:08}AAA=")).collect()
}

pub struct Options {
    pub python: PathBuf,
    /// Posts in flight; `None`: the broadcaster's default.
    pub concurrency: Option<usize>,
    pub server_core: Option<String>,
    pub recipients: usize,
    pub baseline_recipients: usize,
    /// Rounds of the throughput run; the median is reported.
    pub rounds: usize,
    /// Recipients of the throttled run: enough that the bucket runs dry.
    pub throttled_recipients: usize,
    /// The throttled run's token bucket: refill per second, and its size.
    pub bucket_rate: f64,
    pub bucket_burst: f64,
    /// Stop after the throughput rounds.
    pub throughput_only: bool,
}

struct Run {
    wall: Duration,
    cpu: Duration,
    delivered: u64,
    failed: u64,
    retried: u64,
}

/// `rounds` deliveries to `n` recipients, through one broadcaster. `wsfan-bench fanout` runs on a
/// current-thread runtime, as the fanout Lambdas do, so the figures are theirs.
async fn run(
    endpoint: &str,
    n: usize,
    payload: &[u8],
    warm: bool,
    concurrency: Option<usize>,
    rounds: usize,
) -> Vec<Run> {
    let mut config = BroadcastConfig::new(endpoint);
    if let Some(c) = concurrency {
        config.concurrency = c;
    }
    // Local credentials and region, as for moto; the broadcaster sets its own endpoint.
    let sdk = wsfan_local::moto::sdk_config(endpoint).await;
    let broadcaster = Broadcaster::new(&sdk, config, CountOnly);
    if warm {
        // Open the connection pool and resolve credentials once, as a warm Lambda has.
        let _ = broadcaster.deliver(recipients(256), payload).await;
    }
    let mut runs = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let ids = recipients(n);
        let (cpu0, t0) = (cpu_time(), Instant::now());
        let report = broadcaster
            .deliver(ids, payload)
            .await
            .expect("payload under the limit");
        runs.push(Run {
            wall: t0.elapsed(),
            cpu: cpu_time() - cpu0,
            delivered: report.counters.delivered,
            failed: report.counters.failed,
            retried: report.counters.retried,
        });
    }
    runs
}

/// The median round's CPU per post, read back from [`fanout`]'s report.
pub fn reported_cpu_us(report: &str) -> Option<f64> {
    let line = report.lines().find(|l| l.starts_with("wsfan broadcaster:"))?;
    let (before, _) = line.split_once(" µs CPU/post")?;
    before.rsplit(' ').next()?.parse().ok()
}

fn cpu_us(r: &Run) -> f64 {
    r.cpu.as_secs_f64() * 1e6 / r.delivered.max(1) as f64
}

/// The throughput rounds against a server of their own (pinned to `core`): the rounds, least
/// CPU per post first, and the server's CPU per post.
async fn throughput_rounds(o: &Options, payload: &[u8], core: Option<&str>) -> Result<(Vec<Run>, f64), String> {
    let server = Server::start(&[], core)?;
    let server_cpu0 = server.cpu();
    let mut runs = run(
        &server.endpoint,
        o.recipients,
        payload,
        true,
        o.concurrency,
        o.rounds.max(1),
    )
    .await;
    let delivered: u64 = runs.iter().map(|r| r.delivered).sum();
    let server_cpu_us = (server.cpu() - server_cpu0).as_secs_f64() * 1e6 / delivered.max(1) as f64;
    runs.sort_by(|a, b| cpu_us(a).total_cmp(&cpu_us(b)));
    Ok((runs, server_cpu_us))
}

pub async fn fanout(o: Options) -> Result<String, String> {
    let payload = {
        let frame = serde_json::json!({"type": "message", "channel": "workspace:bench", "body": "x".repeat(900)});
        let mut p = frame.to_string().into_bytes();
        p.resize(1024, b' ');
        p
    };
    let core = o.server_core.as_deref();
    let mut out = format!(
        "posts in flight: {}\n",
        o.concurrency.unwrap_or_else(|| BroadcastConfig::new("").concurrency)
    );
    let rss_at_start = peak_rss_kib();

    // 1. Throughput and CPU per post: the median of several rounds, as one round on a VM varies
    // by a fifth from run to run.
    let (runs, server_cpu_us) = throughput_rounds(&o, &payload, core).await?;
    let rss_after_throughput = peak_rss_kib();
    let median = &runs[runs.len() / 2];
    out += &throughput_line(&o, &runs, server_cpu_us);
    if o.throughput_only {
        return Ok(out);
    }
    out += &server_on_the_same_core(&o, &payload, core).await?;
    out += &format!(
        "peak RSS after the {}-recipient run: {:.1} MB\n",
        o.recipients,
        rss_after_throughput as f64 / 1024.0
    );
    // 2. The boto3 loop; 3. 1,000 recipients through latency; 4. behind a token bucket.
    out += &boto3_baseline(&o, core, median)?;
    out += &through_latency(&o, &payload, core).await?;
    let (throttled, shortfalls) = behind_a_bucket(&o, &payload, core).await?;
    out += &throttled;
    out += &format!(
        "peak RSS of the broadcaster process: {:.1} MB (before the first post, binary and runtime: {:.1} MB)\n",
        peak_rss_kib() as f64 / 1024.0,
        rss_at_start as f64 / 1024.0
    );
    if shortfalls.is_empty() {
        Ok(out)
    } else {
        Err(format!("{out}NOT SHOWN: {}", shortfalls.join("; ")))
    }
}

/// The throughput rounds' line (`wsfan broadcaster: …`, which [`reported_cpu_us`] reads back).
fn throughput_line(o: &Options, runs: &[Run], server_cpu_us: f64) -> String {
    let rounds: Vec<String> = runs.iter().map(|r| format!("{:.0}", cpu_us(r))).collect();
    let r = &runs[runs.len() / 2];
    format!(
        "wsfan broadcaster: {} recipients, 1 KB, median of {} rounds: {:.0} posts/s, {:.1} µs CPU/post \
         (rounds: {} µs), wall {:.3} s, failed {} (the @connections server used {:.1} µs CPU per post on its own core)\n",
        o.recipients,
        runs.len(),
        r.delivered as f64 / r.wall.as_secs_f64(),
        cpu_us(r),
        rounds.join(", "),
        r.wall.as_secs_f64(),
        runs.iter().map(|r| r.failed).sum::<u64>(),
        server_cpu_us
    )
}

/// The control for `bench channel`'s per-core figure: there the functions share two cores with
/// moto and the @connections server, here the broadcaster has a core of its own. The same rounds
/// with the server moved onto the broadcaster's core show what sharing alone costs. Nothing when
/// the broadcaster is not pinned to a core other than the server's.
async fn server_on_the_same_core(o: &Options, payload: &[u8], core: Option<&str>) -> Result<String, String> {
    let Some(own) = core.and(sole_core()).filter(|own| Some(own.as_str()) != core) else {
        return Ok(String::new());
    };
    let (shared, _) = throughput_rounds(o, payload, Some(&own)).await?;
    let r = &shared[shared.len() / 2];
    Ok(format!(
        "  the same with the server on the broadcaster's core {own}: {:.0} posts/s, {:.1} µs CPU/post, failed {}\n",
        r.delivered as f64 / r.wall.as_secs_f64(),
        cpu_us(r),
        shared.iter().map(|r| r.failed).sum::<u64>(),
    ))
}

/// The boto3 loop, on the same kind of server, against the broadcaster's `median` round.
fn boto3_baseline(o: &Options, core: Option<&str>, median: &Run) -> Result<String, String> {
    let server = Server::start(&[], core)?;
    let script = std::env::current_dir()
        .map_err(|e| e.to_string())?
        .join("scripts/bench_boto3.py");
    let baseline = Command::new(&o.python)
        .arg(script)
        .args([
            "--endpoint",
            &server.endpoint,
            "--recipients",
            &o.baseline_recipients.to_string(),
        ])
        .output()
        .map_err(|e| format!("running the boto3 baseline: {e}"))?;
    drop(server);
    if !baseline.status.success() {
        return Err(format!(
            "boto3 baseline failed: {}",
            String::from_utf8_lossy(&baseline.stderr)
        ));
    }
    let b: serde_json::Value = serde_json::from_slice(&baseline.stdout).map_err(|e| e.to_string())?;
    let boto_rate = b["posts_per_s"].as_f64().unwrap_or(0.0);
    let boto_cpu_us = b["cpu_us_per_post"].as_f64().unwrap_or(0.0);
    let rust_rate = median.delivered as f64 / median.wall.as_secs_f64();
    let rust_cpu_us = cpu_us(median);
    Ok(format!(
        "boto3 post_to_connection loop: {} recipients, 1 KB: {:.0} posts/s, {:.1} µs CPU/post\n\
         ratio: {:.1}x the posts/s, {:.1}x less CPU per post\n",
        o.baseline_recipients,
        boto_rate,
        boto_cpu_us,
        rust_rate / boto_rate.max(f64::MIN_POSITIVE),
        boto_cpu_us / rust_cpu_us.max(f64::MIN_POSITIVE)
    ))
}

/// Time to reach 1,000 recipients through 20 ms of latency.
async fn through_latency(o: &Options, payload: &[u8], core: Option<&str>) -> Result<String, String> {
    let server = Server::start(&["--latency-ms".into(), "20".into()], core)?;
    let r = run(&server.endpoint, 1000, payload, true, o.concurrency, 1)
        .await
        .remove(0);
    drop(server);
    Ok(format!(
        "1,000 recipients at 20 ms latency: {:.3} s (delivered {}, failed {})\n",
        r.wall.as_secs_f64(),
        r.delivered,
        r.failed
    ))
}

/// Behind a token bucket that answers 429. The figure shows throttling only if the bucket ran
/// dry: the shortfalls (which fail the run) say so when no 429 was answered, or a recipient was
/// lost.
async fn behind_a_bucket(o: &Options, payload: &[u8], core: Option<&str>) -> Result<(String, Vec<String>), String> {
    let server = Server::start(
        &[
            "--bucket-rate".into(),
            o.bucket_rate.to_string(),
            "--bucket-burst".into(),
            o.bucket_burst.to_string(),
        ],
        core,
    )?;
    let r = run(
        &server.endpoint,
        o.throttled_recipients,
        payload,
        false,
        o.concurrency,
        1,
    )
    .await
    .remove(0);
    let answered = server.finish()?;
    let lost = o.throttled_recipients as u64 - r.delivered;
    let line = format!(
        "{} recipients behind a {}/s token bucket of {}: delivered {}, lost {}, {:.3} s; \
         the server answered {} posts: {} delivered, {} with 429; the broadcaster ran {} retries\n",
        o.throttled_recipients,
        o.bucket_rate,
        o.bucket_burst,
        r.delivered,
        lost,
        r.wall.as_secs_f64(),
        answered.requests,
        answered.delivered,
        answered.throttled,
        r.retried
    );
    let mut shortfalls = Vec::new();
    if answered.throttled == 0 {
        shortfalls.push(format!(
            "no 429 was answered, so the throttled figure shows nothing: lower --bucket-rate ({}) or \
             --bucket-burst ({}), or raise --throttled-recipients ({})",
            o.bucket_rate, o.bucket_burst, o.throttled_recipients
        ));
    }
    if lost > 0 {
        shortfalls.push(format!("{lost} recipients were lost behind the bucket"));
    }
    Ok((line, shortfalls))
}

/// `wsfan serve-connections`: the @connections server as a process of its own.
pub async fn serve(latency_ms: u64, bucket: Option<(f64, f64)>) -> Result<String, String> {
    let server = wsfan_local::connections::ConnectionsServer::start("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    if latency_ms > 0 {
        server.set_latency(Duration::from_millis(latency_ms));
    }
    if let Some((rate, burst)) = bucket {
        server.set_token_bucket(rate, burst);
    }
    server.keep_nothing();
    // The boto3 loop signs with keys of its own, and this core should measure serving posts.
    server.trust_signatures();
    println!("READY {}", server.addr().port());
    // Serve until the parent closes our stdin, then say what was answered.
    let _ = tokio::task::spawn_blocking(|| std::io::read_to_string(std::io::stdin())).await;
    let stats = server.stats();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok(format!(
        "STATS {}",
        serde_json::json!({
            "requests": count(&stats.requests),
            "delivered": count(&stats.delivered),
            "throttled": count(&stats.throttled),
        })
    ))
}
