//! Readable local logs: one line per invocation (function, route or batch, duration, outcome),
//! and the functions' own JSON log lines condensed, so the classic failures stand out: a Deny,
//! a missing connection item, a 410, a failed batch record.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

#[derive(Clone)]
pub struct Logs {
    inner: Arc<Inner>,
}

struct Inner {
    colour: bool,
    /// Show the functions' own log lines, not only invocations.
    verbose: bool,
}

/// How an invocation ended, for the log line.
pub enum Outcome<'a> {
    Ok(&'a str),
    /// Worked as designed but said no (a Deny, an error frame, a 410).
    Refused(&'a str),
    Failed(&'a str),
}

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const CYAN: &str = "\x1b[36m";
const BOLD: &str = "\x1b[1m";

impl Logs {
    pub fn new(verbose: bool) -> Self {
        let colour = std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal();
        Logs {
            inner: Arc::new(Inner { colour, verbose }),
        }
    }

    fn paint(&self, colour: &str, text: &str) -> String {
        if self.inner.colour {
            format!("{colour}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    pub fn info(&self, text: &str) {
        eprintln!("{} {text}", self.paint(CYAN, "wsfan"));
    }

    pub fn warn(&self, text: &str) {
        eprintln!("{} {}", self.paint(CYAN, "wsfan"), self.paint(YELLOW, text));
    }

    pub fn invocation(&self, function: &str, what: &str, took: Duration, outcome: Outcome<'_>) {
        eprintln!("{}", self.invocation_line(function, what, took, outcome));
    }

    /// The line [`Logs::invocation`] writes (benchmarks read the durations and timeouts back).
    pub fn invocation_line(&self, function: &str, what: &str, took: Duration, outcome: Outcome<'_>) -> String {
        let (colour, mark, detail) = match outcome {
            Outcome::Ok(d) => (GREEN, "ok", d),
            Outcome::Refused(d) => (YELLOW, "refused", d),
            Outcome::Failed(d) => (RED, "FAILED", d),
        };
        format!(
            "{} {:<16} {:<14} {:>6} ms  {} {}",
            self.paint(BOLD, "▶"),
            self.paint(CYAN, function),
            what,
            took.as_millis(),
            self.paint(colour, mark),
            detail
        )
    }

    /// One fault `wsfan dev --inject` injected: one line each, so a run's faults can be counted
    /// (`grep -c 'injected 410'`) and matched with what the functions did about them.
    pub fn injected(&self, status: u16, method: &str, connection_id: &str) {
        let note = if status == 410 {
            " (the connection is gone: its socket is closed)"
        } else {
            ""
        };
        eprintln!(
            "{} injected {status} {method} @connections/{connection_id}{}",
            self.paint(YELLOW, "⚡"),
            self.paint(DIM, note)
        );
    }

    /// A request answered 410 because `upgrade-delay` holds the connection's upgrade.
    pub fn injected_upgrading(&self, method: &str, connection_id: &str) {
        eprintln!(
            "{} injected {} {method} @connections/{connection_id}{}",
            self.paint(YELLOW, "⚡"),
            crate::connections::UPGRADE_410,
            self.paint(DIM, " (its upgrade is held: still connecting; the socket stays)")
        );
    }

    /// An upgrade `upgrade-delay` holds after `$connect` returned.
    pub fn upgrade_held(&self, connection_id: &str, delay: Duration) {
        eprintln!(
            "{} injected upgrade-delay {}ms {connection_id}{}",
            self.paint(YELLOW, "⚡"),
            delay.as_millis(),
            self.paint(DIM, " ($connect returned; the socket opens after it)")
        );
    }

    /// One DynamoDB fault `wsfan dev --inject 'ddb-…'` injected into a function's call.
    pub fn dynamo_injected(&self, fault: &str, operation: &str) {
        eprintln!("{} injected ddb-{fault} DynamoDB {operation}", self.paint(YELLOW, "⚡"));
    }

    /// The DynamoDB faults injected so far, by kind, out of `requests` the functions made.
    pub fn dynamo_injected_summary(&self, injected: &[(&str, u64)], requests: u64) {
        let counts: Vec<String> = injected.iter().map(|(f, n)| format!("ddb-{f}={n}")).collect();
        let total: u64 = injected.iter().map(|(_, n)| n).sum();
        eprintln!(
            "{} injected so far: {} ({total} of {requests} DynamoDB requests)",
            self.paint(CYAN, "wsfan"),
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(" ")
            }
        );
    }

    /// The faults injected so far, by status, out of `requests` answered by @connections.
    pub fn injected_summary(&self, injected: &std::collections::BTreeMap<String, u64>, requests: u64) {
        let counts: Vec<String> = injected.iter().map(|(s, n)| format!("{s}={n}")).collect();
        let total: u64 = injected.values().sum();
        eprintln!(
            "{} injected so far: {} ({total} of {requests} @connections requests)",
            self.paint(CYAN, "wsfan"),
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(" ")
            }
        );
    }

    pub fn function_died(&self, function: &str, reason: &str) {
        eprintln!("{} {:<16} {}", self.paint(RED, "✖"), function, self.paint(RED, reason));
    }

    /// One line a function printed: JSON logs are condensed; EMF metrics are summarised.
    pub fn function_line(&self, function: &str, line: &str) {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else {
            if self.inner.verbose {
                eprintln!("  {} {}", self.paint(DIM, function), line);
            }
            return;
        };
        if fields.contains_key("_aws") {
            let count = |k: &str| fields.get(k).and_then(Value::as_u64).unwrap_or(0);
            // A 410, a retry or an undelivered post is worth a line even when not verbose.
            let colour = match (count("Failed"), count("Gone") + count("Retried")) {
                (0, 0) if !self.inner.verbose => return,
                (0, 0) => DIM,
                (0, _) => YELLOW,
                _ => RED,
            };
            eprintln!(
                "  {} {}",
                self.paint(DIM, function),
                self.paint(colour, &pushed_summary(&fields))
            );
            return;
        }
        let level = fields.get("level").and_then(Value::as_str).unwrap_or("INFO");
        // Warnings and errors always show: they are what a developer needs to see.
        if !self.inner.verbose && !matches!(level, "WARN" | "ERROR") {
            return;
        }
        let message = fields.get("message").and_then(Value::as_str).unwrap_or("");
        let rest: Vec<String> = fields
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "timestamp" | "level" | "message" | "target"))
            .map(|(k, v)| format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
            .collect();
        let colour = match level {
            "ERROR" => RED,
            "WARN" => YELLOW,
            _ => DIM,
        };
        eprintln!(
            "  {} {} {message} {}",
            self.paint(DIM, function),
            self.paint(colour, level),
            self.paint(DIM, &rest.join(" "))
        );
    }
}

/// The counters of one EMF document, as the dev log shows them.
fn pushed_summary(fields: &serde_json::Map<String, Value>) -> String {
    let counts: Vec<String> = [
        "Delivered",
        "Gone",
        "Retried",
        "Throttled",
        "Failed",
        "Posts",
        "PacedMs",
        "Backoffs",
    ]
    .iter()
    .map(|k| {
        format!(
            "{}={}",
            k.to_lowercase(),
            fields.get(*k).and_then(Value::as_u64).unwrap_or(0)
        )
    })
    .collect();
    format!("pushed {}", counts.join(" "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_emf_summary_shows_every_counter_the_fanouts_emit() {
        let counters = wsfan_shared::broadcaster::Counters {
            delivered: 5,
            gone: 1,
            retried: 4,
            throttled: 3,
            failed: 2,
            posts: 9,
            paced_ms: 40,
            backoffs: 1,
        };
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(&counters.emf("stream-fanout")) else {
            panic!("EMF is a JSON object");
        };
        assert_eq!(
            super::pushed_summary(&fields),
            "pushed delivered=5 gone=1 retried=4 throttled=3 failed=2 posts=9 pacedms=40 backoffs=1"
        );
    }
}
