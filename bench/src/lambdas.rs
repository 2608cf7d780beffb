//! `wsfan-bench lambdas`: what each real Lambda binary costs before and around its handler.
//!
//! - Cold start: the time from spawning the binary to its first `GET /next` against a Runtime API
//!   of ours, which is what Lambda's Init phase bills for, and the peak RSS at that moment.
//! - The size of each binary as built here (the release profile strips symbols); the arm64
//!   `bootstrap` sizes that `sam build` makes come from `scripts/package`.
//! - The CPU cost of one stream record in stream-fanout: decode the event's JSON, decide what the
//!   record means (`classify`), and build the frame's JSON, the work done before any post.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use stream_fanout::{classify, Work};

#[derive(clap::Args)]
pub struct LambdasBench {
    /// The repository (for sam/template.yaml and events/).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Where the Lambda binaries are; by default beside this wsfan binary.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Cold starts per function; the median and the slowest are reported.
    #[arg(long, default_value_t = 20)]
    starts: usize,
    /// Stream records decoded and classified for the CPU figure.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
}

/// The stream fixtures whose records the CPU figure cycles through: what a chat channel's
/// stream carries (messages, reactions, typing, presence).
const RECORD_FIXTURES: &[&str] = &[
    "events/stream-fanout/message-insert.json",
    "events/stream-fanout/reaction-insert.json",
    "events/stream-fanout/typing-insert.json",
    "events/stream-fanout/presence-join.json",
    "events/stream-fanout/presence-leave.json",
];

/// Records per stream event, as the template's mapping batches them.
const BATCH: usize = 100;

pub async fn run(b: LambdasBench) -> Result<String, String> {
    let bin_dir = wsfan_local::options::lambda_bin_dir(b.bin_dir.as_ref())?;
    let build = if bin_dir.ends_with("release") {
        "release"
    } else {
        "debug"
    };
    let template =
        wsfan_local::template::Template::load(&b.repo.join("sam/template.yaml")).map_err(|e| e.to_string())?;
    let mut out = format!("wsfan-bench lambdas ({build} build, {} cold starts each)\n", b.starts);
    out += &format!(
        "{:<18} {:>12} {:>12} {:>14}\n",
        "function", "median", "slowest", "peak RSS"
    );
    let mut result = serde_json::Map::new();
    for function in &template.functions {
        let binary = bin_dir.join(&function.binary);
        let bytes = std::fs::metadata(&binary)
            .map_err(|e| format!("{}: {e}", binary.display()))?
            .len();
        let env: Vec<(String, String)> = function
            .env
            .iter()
            .map(|(name, value)| (name.clone(), placeholder(name, value.as_deref())))
            .collect();
        let mut starts = Vec::with_capacity(b.starts);
        let mut peak_kib = 0;
        for _ in 0..b.starts.max(1) {
            let (took, kib) = cold_start(&binary, &function.binary, &env).await?;
            starts.push(took);
            peak_kib = peak_kib.max(kib);
        }
        starts.sort();
        let median = starts[starts.len() / 2];
        let slowest = starts[starts.len() - 1];
        out += &format!(
            "{:<18} {:>9.2} ms {:>9.2} ms {:>11.1} MB {:>11.2} MiB\n",
            function.binary,
            ms(median),
            ms(slowest),
            peak_kib as f64 / 1024.0,
            bytes as f64 / 1048576.0
        );
        result.insert(
            function.binary.clone(),
            serde_json::json!({
                "coldStartMs": {"median": ms(median), "slowest": ms(slowest)},
                "initPeakRssMb": peak_kib as f64 / 1024.0,
                "binaryBytes": bytes,
            }),
        );
    }

    let (per_record, pushes, bytes) = record_cost(&b.repo, b.records)?;
    out += &format!(
        "stream-fanout, per stream record (decode, classify, build the frame), {} records in \
         batches of {BATCH}: {:.2} µs CPU ({} frames built, {:.0} bytes each on average)\n",
        b.records,
        per_record,
        pushes,
        bytes as f64 / pushes.max(1) as f64
    );
    result.insert("streamRecordCpuMicros".into(), serde_json::json!(per_record));
    out += &format!("RESULT {}", serde_json::Value::Object(result));
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Values that let a function initialise without AWS: its clients are built at init, and no call
/// is made before the first invocation.
fn placeholder(name: &str, template_value: Option<&str>) -> String {
    match name {
        "TABLE_NAME" => "wsfan-bench".into(),
        "CONNECTIONS_ENDPOINT" => "http://127.0.0.1:9/bench".into(),
        "JWT_SECRET" => "bench-secret".into(),
        "FAILURE_QUEUE_URL" => "http://127.0.0.1:9/000000000000/failures".into(),
        "DELIVERY_QUEUE_URL" => "http://127.0.0.1:9/000000000000/delivery.fifo".into(),
        "DELIVERY_DLQ_URL" => "http://127.0.0.1:9/000000000000/delivery-dlq.fifo".into(),
        "JWKS_URL" | "JWT_AUDIENCE" | "JWT_ISSUER" | "ANONYMOUS_CHANNELS" => String::new(),
        _ => template_value.unwrap_or_default().to_owned(),
    }
}

/// Spawns `binary` against a Runtime API that notes the first `/next` and never answers it;
/// returns the time to that request and the process's peak RSS then.
async fn cold_start(binary: &std::path::Path, name: &str, env: &[(String, String)]) -> Result<(Duration, u64), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let api = listener.local_addr().map_err(|e| e.to_string())?.to_string();
    let (asked, mut first_next) = tokio::sync::mpsc::channel::<Instant>(1);
    let app = Router::new().route(
        "/2018-06-01/runtime/invocation/next",
        get(move || {
            let asked = asked.clone();
            async move {
                let _ = asked.try_send(Instant::now());
                // Never answered: the process is measured and killed while it waits.
                std::future::pending::<()>().await
            }
        }),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", &api)
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let outcome = tokio::select! {
        at = first_next.recv() => match at {
            Some(at) => {
                let kib = child.id().map(|pid| crate::process::peak_rss_kib_of(&pid.to_string())).unwrap_or(0);
                Ok((at - started, kib))
            }
            None => Err(format!("{name}: the Runtime API went away")),
        },
        status = child.wait() => {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut e, &mut stderr).await;
            }
            Err(format!("{name} exited before asking for an invocation ({status:?}): {stderr}"))
        }
        _ = tokio::time::sleep(Duration::from_secs(10)) => Err(format!("{name} did not ask for an invocation within 10 s")),
    };
    let _ = child.kill().await;
    server.abort();
    outcome
}

/// The CPU per record of decoding, classifying and building frames: returns µs per record, the
/// frames built and their total size.
fn record_cost(repo: &std::path::Path, records: usize) -> Result<(f64, usize, usize), String> {
    let mut pool = Vec::new();
    for fixture in RECORD_FIXTURES {
        let text = std::fs::read_to_string(repo.join(fixture)).map_err(|e| format!("{fixture}: {e}"))?;
        let event: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{fixture}: {e}"))?;
        pool.extend(event["Records"].as_array().cloned().unwrap_or_default());
    }
    if pool.is_empty() {
        return Err("the stream fixtures hold no records".into());
    }
    // Stream events as Lambda hands them over: JSON bytes of BATCH records each.
    let batches = records.div_ceil(BATCH).max(1);
    let events: Vec<Vec<u8>> = (0..batches)
        .map(|b| {
            let records: Vec<_> = (0..BATCH).map(|i| pool[(b * BATCH + i) % pool.len()].clone()).collect();
            serde_json::to_vec(&serde_json::json!({ "Records": records })).expect("JSON")
        })
        .collect();
    let (mut pushes, mut bytes, mut decided) = (0, 0, 0);
    let cpu0 = crate::process::cpu_time();
    for event in &events {
        let event: aws_lambda_events::dynamodb::Event =
            serde_json::from_slice(event).map_err(|e| format!("decoding a stream event: {e}"))?;
        for record in &event.records {
            decided += 1;
            if let Ok(Some(Work::Push(push))) = classify(record) {
                pushes += 1;
                bytes += push.frame.to_json().len();
            }
        }
    }
    let cpu = crate::process::cpu_time() - cpu0;
    if pushes == 0 {
        return Err("no fixture record made a frame: the figure would measure nothing".into());
    }
    Ok((cpu.as_secs_f64() * 1e6 / decided as f64, pushes, bytes))
}
