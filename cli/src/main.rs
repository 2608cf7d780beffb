//! `wsfan`: the command line for people and backends.
//!
//! - `wsfan publish message|progress|started|complete|error`: what a backend or a document
//!   processor sends, with no WebSocket of its own.
//! - `wsfan token`: a dev JWT signed with the HS256 secret, to connect by hand.
//! - `wsfan revoke`: take a user out of a channel, or close all their connections and refuse their
//!   current tokens; or refuse one token.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use wsfan_local::options::StackArgs;
use wsfan_shared::auth::{mint_hs256, Claims};
use wsfan_shared::channel::ChannelId;
use wsfan_shared::config::Retention;
use wsfan_shared::progress::ProgressEvent;
use wsfan_shared::publish::PublishRequest;
use wsfan_shared::publisher::{ChannelPublisher, ProgressPublisher, PublishQueue};
use wsfan_shared::store::DynamoStore;

#[derive(Parser)]
#[command(name = "wsfan", version, about = "Real-time fanout for API Gateway WebSocket APIs")]
struct Cli {
    /// Send AWS calls here instead of AWS (a local emulator such as moto).
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish to channels and documents.
    #[command(subcommand)]
    Publish(Publish),
    /// Mint a dev JWT with the HS256 secret.
    Token(TokenArgs),
    /// Take a user out: remove them from a channel (--channel), or close all their connections on
    /// every device and refuse every token issued before now; or refuse one token (--token).
    Revoke(RevokeArgs),
    /// Run the whole pipeline locally: moto, the real Lambda binaries, a WebSocket endpoint,
    /// @connections, the stream and queue pollers, and a demo page.
    Dev(DevArgs),
    /// Invoke one function once with an event file, like `sam local invoke` without Docker.
    Invoke(InvokeArgs),
}

#[derive(Args)]
struct DevArgs {
    #[command(flatten)]
    stack: StackArgs,
    /// The WebSocket and HTTP port (0: any free port).
    #[arg(long, default_value_t = 3001)]
    port: u16,
    /// Close connections idle this long (API Gateway: 600).
    #[arg(long, default_value_t = 600)]
    idle_timeout_secs: u64,
    /// Close connections this old (API Gateway: 7200).
    #[arg(long, default_value_t = 7200)]
    max_connection_secs: u64,
    /// Channel patterns anonymous listeners may read (default: anonymous connections are refused).
    #[arg(long)]
    anonymous_channels: Option<String>,
    /// Make @connections answer faults at these rates, drawn per request, and add latency:
    /// '429=0.2,500=0.05,410=0.01,latency=20ms'. Statuses: 410, 429, 500, 502, 503, 504; the
    /// fractions add up to at most 1. A 410 also closes that connection, as it is gone.
    /// The functions' DynamoDB calls too: 'ddb-conflict=0.05,ddb-throttle=0.02,ddb-latency=10ms'
    /// cancels that share of transactions with TransactionConflict, throttles that share of
    /// writes, and adds latency; 'ddb-lost=F' applies a write and answers 500 instead;
    /// 'ddb-stall=F' leaves that share of all calls unanswered past any operation timeout.
    /// 'upgrade-delay=300ms' holds every upgrade that long after $connect returns, answering 410
    /// to posts to that connection meanwhile, as API Gateway does before the handshake is done.
    #[arg(long, value_name = "SPEC")]
    inject: Option<wsfan_local::faults::Faults>,
    /// The seed of the fault draws (default: a random one, printed), to repeat a run's faults.
    #[arg(long, requires = "inject")]
    inject_seed: Option<u64>,
    /// The limit per connection instead of the template's: frames per second and the burst,
    /// 'PER_SECOND:BURST' ('0:1' turns it off, as for a benchmark's soak).
    #[arg(long, value_name = "PER_SECOND:BURST", value_parser = parse_rate_limit)]
    rate_limit: Option<wsfan_shared::rate::RateLimit>,
    /// Run the template's scheduled functions (the expiry sweep) every this many milliseconds
    /// instead of at their rate (a minute): a test sees a token expire in seconds.
    #[arg(long, value_name = "MS")]
    schedule_every_ms: Option<u64>,
}

fn parse_rate_limit(s: &str) -> Result<wsfan_shared::rate::RateLimit, String> {
    let (rate, burst) = s.split_once(':').ok_or("expected PER_SECOND:BURST, e.g. 25:50")?;
    let lookup = |name: &str| match name {
        "RATE_LIMIT_PER_SECOND" => Some(rate.to_owned()),
        "RATE_LIMIT_BURST" => Some(burst.to_owned()),
        _ => None,
    };
    <wsfan_shared::rate::RateLimit as wsfan_shared::config::FromEnv>::from_lookup(lookup).map_err(|e| e.to_string())
}

#[derive(Args)]
struct InvokeArgs {
    /// The function: its logical id in the template (WsMessageFunction) or its binary (ws-message).
    function: String,
    /// The event file, e.g. events/ws-message/join.json.
    #[arg(long, short)]
    event: PathBuf,
    #[command(flatten)]
    stack: StackArgs,
}

/// A seed for fault draws when none is given: different each run, printed so it can be repeated.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[derive(Args)]
struct RevokeArgs {
    #[arg(long, env = "TABLE_NAME")]
    table: String,
    /// The stage's Management API (the `ConnectionsUrl` output; locally http://127.0.0.1:3001/local).
    #[arg(long, env = "CONNECTIONS_ENDPOINT")]
    connections_url: Option<String>,
    /// The user (a token's `sub`).
    #[arg(long, required_unless_present = "token")]
    user: Option<String>,
    /// Only this channel: the user's memberships of it are removed, their connections stay.
    #[arg(long, requires = "user")]
    channel: Option<ChannelId>,
    /// Refuse this one token (by its `jti`) until it expires.
    #[arg(long, conflicts_with = "user", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Publish {
    /// Post a message to any channel (e.g. user:<sub> to notify one person on every device).
    // The text is `wsfan publish --help`'s, where `<sub>` reads as a placeholder, not HTML.
    #[allow(rustdoc::invalid_html_tags)]
    Message(MessageArgs),
    /// Report pages processed.
    Progress(ProgressArgs),
    /// Report that processing started.
    Started(StartedArgs),
    /// Report that processing completed.
    Complete(StartedArgs),
    /// Report a processing error.
    Error(ErrorArgs),
}

#[derive(Args)]
struct MessageArgs {
    /// The publish queue (PublishQueueUrl): its function numbers the message; needs only
    /// sqs:SendMessage. Prints the queued message's id.
    #[arg(
        long,
        env = "PUBLISH_QUEUE_URL",
        required_unless_present = "table",
        conflicts_with = "table"
    )]
    queue_url: Option<String>,
    /// The table (TableName): post the numbered message directly, as the function does. Prints
    /// its seq.
    #[arg(long, env = "TABLE_NAME")]
    table: Option<String>,
    #[arg(long)]
    channel: ChannelId,
    #[arg(long)]
    body: String,
    /// Shown to clients as the sender.
    #[arg(long, default_value = "system")]
    sender: String,
    /// Makes a retried publish idempotent.
    #[arg(long)]
    client_msg_id: Option<String>,
}

#[derive(Args)]
struct Queue {
    #[arg(long, env = "PROGRESS_QUEUE_URL")]
    queue_url: String,
    #[arg(long)]
    doc_id: String,
}

#[derive(Args)]
struct ProgressArgs {
    #[command(flatten)]
    queue: Queue,
    #[arg(long)]
    pages_processed: u32,
    #[arg(long)]
    total_pages: u32,
}

#[derive(Args)]
struct StartedArgs {
    #[command(flatten)]
    queue: Queue,
    #[arg(long)]
    total_pages: Option<u32>,
}

#[derive(Args)]
struct ErrorArgs {
    #[command(flatten)]
    queue: Queue,
    #[arg(long)]
    error_code: String,
    #[arg(long)]
    message: String,
    /// The processor will carry on (the progress bar stays).
    #[arg(long)]
    recoverable: bool,
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long)]
    sub: String,
    /// Channel patterns, comma-separated: workspace:42,doc:*
    #[arg(long, default_value = "")]
    channels: String,
    /// member, listener or admin.
    #[arg(long)]
    role: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: String,
}

async fn sdk(endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

async fn revoke(endpoint: Option<&str>, r: RevokeArgs) -> Result<String, String> {
    use wsfan_shared::revocation::Revoker;
    let sdk = sdk(endpoint).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &r.table, Retention::default());
    let mut connections_config = aws_sdk_apigatewaymanagement::config::Builder::from(&sdk);
    connections_config.set_endpoint_url(r.connections_url.clone());
    let connections_config = connections_config.build();
    let revoker = Revoker::new(
        store,
        aws_sdk_apigatewaymanagement::Client::from_conf(connections_config),
    );
    if let Some(token) = &r.token {
        let facts = wsfan_shared::auth::unverified_facts(token)
            .ok_or("--token is not a JWT (three base64url parts with a JSON payload)")?;
        let jti = facts
            .jti
            .as_deref()
            .ok_or("the token has no jti; revoke its user instead (--user)")?;
        revoker.revoke_token(jti, facts.exp).await.map_err(|e| e.to_string())?;
        return Ok(serde_json::json!({"revokedJti": jti, "until": facts.exp}).to_string());
    }
    let user = r.user.as_deref().expect("clap requires --user without --token");
    if r.channel.is_none() && r.connections_url.is_none() {
        return Err("closing a user's connections needs --connections-url (the ConnectionsUrl output)".into());
    }
    let revoked = revoker
        .revoke_user(user, r.channel.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "user": user,
        "channel": r.channel.as_ref().map(ToString::to_string),
        "closed": revoked.closed,
        "membershipsRemoved": revoked.memberships_removed,
    })
    .to_string())
}

async fn send_progress(endpoint: Option<&str>, queue: &Queue, event: ProgressEvent) -> Result<String, String> {
    let client = aws_sdk_sqs::Client::new(&sdk(endpoint).await);
    ProgressPublisher::new(client, &queue.queue_url)
        .send(std::slice::from_ref(&event))
        .await
        .map_err(|e| e.to_string())?;
    Ok(serde_json::to_string(&event).expect("events serialise"))
}

/// A dev token: refused here when the authorizer would deny it.
fn token(t: TokenArgs) -> Result<String, String> {
    let claims = Claims {
        sub: t.sub,
        exp: wsfan_shared::clock::now_secs() + t.ttl,
        nbf: None,
        channels: t
            .channels
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(Into::into)
            .collect(),
        role: t.role,
        aud: None,
        iss: None,
    };
    // Refuse to mint a token the authorizer would deny.
    claims.identity().map_err(|e| e.to_string())?;
    Ok(mint_hs256(&t.secret, &claims))
}

/// `wsfan dev`: starts the stack, says where it is, and runs it until Ctrl-C, SIGTERM or moto's end.
async fn dev(d: DevArgs) -> Result<String, String> {
    let mut config = d.stack.config(d.port)?;
    config.limits.idle_timeout = std::time::Duration::from_secs(d.idle_timeout_secs);
    config.limits.max_connection = std::time::Duration::from_secs(d.max_connection_secs);
    config.anonymous_channels = d.anonymous_channels;
    config.rate_limit = d.rate_limit;
    config.schedule_every = d.schedule_every_ms.map(std::time::Duration::from_millis);
    config.inject = d
        .inject
        .map(|faults| (faults, d.inject_seed.unwrap_or_else(random_seed)));
    let stack = wsfan_local::dev::start(config).await.map_err(|e| e.to_string())?;
    announce(&stack);
    let moto_died = tokio::select! {
        _ = shutdown_signal() => None,
        status = stack.moto_exited() => Some(status),
    };
    stack.log_injected();
    match moto_died {
        None => {
            eprintln!("wsfan dev: stopping");
            stack.shutdown().await;
            Ok(String::new())
        }
        Some(status) => {
            stack.shutdown().await;
            Err(format!(
                "moto exited ({status}) and took the table, the stream and the queues with it; \
                 wsfan dev stopped. Start it again for a fresh stack (clients must reconnect)."
            ))
        }
    }
}

/// Where the running stack is: for people on standard error, and for scripts and tests two lines
/// on standard output (`wsfan dev ready:` and `wsfan dev env:`, which they parse).
fn announce(stack: &wsfan_local::dev::DevStack) {
    let queue = stack
        .environment
        .queue_feeding("progress-fanout")
        .map(|(u, _)| u.clone())
        .unwrap_or_default();
    eprintln!("  demo page      {}", stack.http_url);
    eprintln!(
        "  WebSocket      {}?token=$(target/debug/wsfan token --sub you --channels 'workspace:*' --secret {})",
        stack.ws_url,
        wsfan_local::dev::DEV_SECRET
    );
    eprintln!(
        "  moto           {}  table {}",
        stack.environment.moto.endpoint, stack.environment.table_name
    );
    eprintln!("  progress queue {queue}");
    // moto accepts any credentials, but the SDK wants some.
    eprintln!(
        "  try            AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \\\n                   target/debug/wsfan publish progress --endpoint-url {} --queue-url {queue} \\\n                   --doc-id d1 --pages-processed 5 --total-pages 10   (subscribe to doc:d1 first)",
        stack.environment.moto.endpoint
    );
    let dlq = stack
        .environment
        .dead_letter_queue_of("progress-fanout")
        .unwrap_or_default();
    let failures = stack.environment.failure_queue_of("stream-fanout").unwrap_or_default();
    println!("wsfan dev ready: {} {}", stack.http_url, stack.ws_url);
    let publish = stack
        .environment
        .queue_feeding("publish")
        .map(|(u, _)| u.clone())
        .unwrap_or_default();
    println!(
        "wsfan dev env: moto={} table={} queue={queue} dlq={dlq} failures={failures} publish={publish}",
        stack.environment.moto.endpoint, stack.environment.table_name
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

async fn invoke(i: InvokeArgs) -> Result<String, String> {
    let text = std::fs::read_to_string(&i.event).map_err(|e| format!("reading {}: {e}", i.event.display()))?;
    let event: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", i.event.display()))?;
    let mut config = i.stack.config(0)?;
    config.moto_port = 0;
    let response = wsfan_local::dev::invoke_once(&config, &i.function, &event)
        .await
        .map_err(|e| e.to_string())?;
    Ok(serde_json::to_string_pretty(&response).expect("JSON serialises"))
}

/// A message through the publish queue (`--queue-url`), or straight into the table (`--table`).
async fn publish_message(endpoint: Option<&str>, m: MessageArgs) -> Result<String, String> {
    if m.queue_url.is_some() {
        let request = PublishRequest {
            channel: m.channel.to_string(),
            body: m.body,
            sender_id: m.sender,
            client_msg_id: m.client_msg_id,
        };
        let queue = PublishQueue::new(
            aws_sdk_sqs::Client::new(&sdk(endpoint).await),
            m.queue_url.unwrap_or_default(),
        );
        let id = queue.send(&request).await.map_err(|e| e.to_string())?;
        return Ok(serde_json::json!({"queued": true, "sqsMessageId": id, "channel": request.channel, "clientMsgId": request.client_msg_id}).to_string());
    }
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk(endpoint).await),
        m.table.as_deref().unwrap_or_default(),
        Retention::default(),
    );
    let outcome = ChannelPublisher::new(store, Retention::default())
        .publish(&m.channel, &m.body, &m.sender, m.client_msg_id.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    Ok(
        serde_json::json!({"messageId": outcome.message_id, "seq": outcome.seq, "duplicate": outcome.duplicate})
            .to_string(),
    )
}

async fn publish(endpoint: Option<&str>, p: Publish) -> Result<String, String> {
    let (event, queue) = match p {
        Publish::Message(m) => return publish_message(endpoint, m).await,
        Publish::Progress(p) => (
            ProgressEvent::progress(&p.queue.doc_id, p.pages_processed, p.total_pages),
            p.queue,
        ),
        Publish::Started(p) => (ProgressEvent::started(&p.queue.doc_id, p.total_pages), p.queue),
        Publish::Complete(p) => (ProgressEvent::complete(&p.queue.doc_id, p.total_pages), p.queue),
        Publish::Error(p) => (
            ProgressEvent::error(&p.queue.doc_id, &p.error_code, &p.message, p.recoverable),
            p.queue,
        ),
    };
    send_progress(endpoint, &queue, event).await
}

async fn run(cli: Cli) -> Result<String, String> {
    let endpoint = cli.endpoint_url.as_deref();
    match cli.command {
        Command::Token(t) => token(t),
        Command::Dev(d) => dev(d).await,
        Command::Invoke(i) => invoke(i).await,
        Command::Revoke(r) => revoke(endpoint, r).await,
        Command::Publish(p) => publish(endpoint, p).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    wsfan_local::options::run_to_exit("wsfan", runtime, run(cli))
}
