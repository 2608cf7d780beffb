//! Logging: JSON lines in Lambda (so CloudWatch's JSON log format and Logs Insights can read the
//! fields), plain text when a person runs a binary by hand with `WSFAN_LOG_FORMAT=text`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(lambda_level()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let text = std::env::var("WSFAN_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    let _ = if text {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    };
}

/// Lambda's advanced logging controls set AWS_LAMBDA_LOG_LEVEL; honour it.
fn lambda_level() -> String {
    std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .map(|l| l.to_lowercase())
        .unwrap_or_else(|_| "info".into())
}
