//! Reading `wsfan dev`'s log back (benchmarks): its invocation lines, as
//! `wsfan_local::logs::Logs::invocation_line` writes them, with each invocation's function,
//! duration and outcome.

/// One invocation line of `wsfan dev`'s log (`▶ function what  123 ms  ok|refused|FAILED ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invocation {
    pub function: String,
    pub millis: u64,
    pub failed: bool,
    pub timed_out: bool,
}

/// Drops ANSI colour sequences (the log is coloured when its standard error is a terminal).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads an invocation line as `Logs::invocation` writes it; `None` for any other line.
pub(crate) fn invocation(line: &str) -> Option<Invocation> {
    let line = plain(line);
    let rest = line.trim_start().strip_prefix('▶')?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let function = (*words.first()?).to_owned();
    // The route or batch in between may have spaces ("batch of 100"): the duration is the
    // first number followed by "ms".
    let at = (2..words.len()).find(|&i| words[i] == "ms" && words[i - 1].parse::<u64>().is_ok())?;
    let millis = words[at - 1].parse().ok()?;
    let outcome = words.get(at + 1).copied().unwrap_or_default();
    let failed = outcome == "FAILED";
    Some(Invocation {
        function,
        millis,
        failed,
        timed_out: failed && words[at + 2..].join(" ").starts_with("timed out after"),
    })
}

/// Reads the log from byte `from` to byte `to` (the whole file when `to` is `None`).
pub(crate) fn log_between(log: &std::path::Path, from: usize, to: Option<usize>) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let to = to.unwrap_or(bytes.len()).min(bytes.len());
    String::from_utf8_lossy(&bytes[from.min(to)..to]).into_owned()
}

pub(crate) fn log_len(log: &std::path::Path) -> usize {
    std::fs::metadata(log).map(|m| m.len() as usize).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wsfan_local::logs::{Logs, Outcome};

    use super::{invocation, Invocation};

    #[test]
    fn reads_back_the_invocation_lines_wsfan_dev_writes() {
        let logs = Logs::new(false);
        let line = |what, ms, outcome| logs.invocation_line("stream-fanout", what, Duration::from_millis(ms), outcome);
        let timed_out = line(
            "batch of 100",
            30_001,
            Outcome::Failed("timed out after 30s; retrying seq 1-100"),
        );
        assert_eq!(
            invocation(&timed_out),
            Some(Invocation {
                function: "stream-fanout".into(),
                millis: 30_001,
                failed: true,
                timed_out: true
            })
        );
        // As a route's invocation logs the runtime's own timeout.
        let timeout = wsfan_local::runtime::InvokeError::Timeout(Duration::from_secs(10)).to_string();
        let route = logs.invocation_line(
            "ws-message",
            "sendMessage",
            Duration::from_secs(10),
            Outcome::Failed(&timeout),
        );
        assert_eq!(invocation(&route).map(|i| i.timed_out), Some(true));
        let failed = line("batch of 3", 12, Outcome::Failed("batchItemFailures 2 of seq 1-3"));
        assert_eq!(
            invocation(&failed).map(|i| (i.millis, i.failed, i.timed_out)),
            Some((12, true, false))
        );
        let ok = logs.invocation_line("ws-message", "sendMessage", Duration::from_millis(7), Outcome::Ok(""));
        assert_eq!(
            invocation(&ok).map(|i| (i.function, i.millis, i.failed)),
            Some(("ws-message".into(), 7, false))
        );
        // Coloured, as on a terminal.
        let coloured = "\x1b[1m▶\x1b[0m \x1b[36mdeliver\x1b[0m          batch of 1        42 ms  \x1b[32mok\x1b[0m ";
        assert_eq!(
            invocation(coloured).map(|i| (i.function, i.millis)),
            Some(("deliver".into(), 42))
        );
        // Function log lines and summaries are not invocations.
        assert_eq!(invocation("  stream-fanout WARN timed out after 3 s waiting"), None);
        assert_eq!(
            invocation("wsfan injected so far: none (0 of 12 @connections requests)"),
            None
        );
    }
}
