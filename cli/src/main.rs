//! `wsfan`: the command line for people and backends.
//!
//! - `wsfan publish message|progress|started|complete|error`: what a backend or a document
//!   processor sends, with no WebSocket of its own.
//! - `wsfan token`: a dev JWT signed with the HS256 secret, to connect by hand.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use wsfan_shared::auth::{mint_hs256, Claims};
use wsfan_shared::channel::ChannelId;
use wsfan_shared::config::Retention;
use wsfan_shared::progress::ProgressEvent;
use wsfan_shared::publisher::{ChannelPublisher, ProgressPublisher};
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
}

#[derive(Subcommand)]
enum Publish {
    /// Post a message to any channel (e.g. user:<sub> to notify one person on every device).
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
    #[arg(long, env = "TABLE_NAME")]
    table: String,
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

async fn send_progress(endpoint: Option<&str>, queue: &Queue, event: ProgressEvent) -> Result<String, String> {
    let client = aws_sdk_sqs::Client::new(&sdk(endpoint).await);
    ProgressPublisher::new(client, &queue.queue_url)
        .send(std::slice::from_ref(&event))
        .await
        .map_err(|e| e.to_string())?;
    Ok(serde_json::to_string(&event).expect("events serialise"))
}

async fn run(cli: Cli) -> Result<String, String> {
    let endpoint = cli.endpoint_url.as_deref();
    match cli.command {
        Command::Token(t) => {
            let role = t.role.clone();
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
                role,
                aud: None,
                iss: None,
            };
            // Refuse to mint a token the authorizer would deny.
            claims.identity().map_err(|e| e.to_string())?;
            Ok(mint_hs256(&t.secret, &claims))
        }
        Command::Publish(Publish::Message(m)) => {
            let store = DynamoStore::new(
                aws_sdk_dynamodb::Client::new(&sdk(endpoint).await),
                &m.table,
                Retention::default(),
            );
            let outcome = ChannelPublisher::new(store, Retention::default())
                .publish(&m.channel, &m.body, &m.sender, m.client_msg_id.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            Ok(serde_json::json!({"messageId": outcome.message_id, "duplicate": outcome.duplicate}).to_string())
        }
        Command::Publish(Publish::Progress(p)) => {
            let event = ProgressEvent::progress(&p.queue.doc_id, p.pages_processed, p.total_pages);
            send_progress(endpoint, &p.queue, event).await
        }
        Command::Publish(Publish::Started(p)) => {
            send_progress(
                endpoint,
                &p.queue,
                ProgressEvent::started(&p.queue.doc_id, p.total_pages),
            )
            .await
        }
        Command::Publish(Publish::Complete(p)) => {
            send_progress(
                endpoint,
                &p.queue,
                ProgressEvent::complete(&p.queue.doc_id, p.total_pages),
            )
            .await
        }
        Command::Publish(Publish::Error(p)) => {
            let event = ProgressEvent::error(&p.queue.doc_id, &p.error_code, &p.message, p.recoverable);
            send_progress(endpoint, &p.queue, event).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wsfan: {e}");
            ExitCode::FAILURE
        }
    }
}
