//! What the benchmarks read of processes and threads from /proc, and how they pin them to cores.

use std::process::{Command, Stdio};
use std::time::Duration;

/// CPU time of this process (user + system), from /proc.
pub(crate) fn cpu_time() -> Duration {
    cpu_time_of("self")
}

/// CPU time of process `pid` (or "self"), from `/proc/<pid>/stat`; zero when it is gone.
pub(crate) fn cpu_time_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces. Positions
    // matter (tpgid is -1 without a terminal): utime and stime are fields 14 and 15 of the file,
    // tokens 11 and 12 (from 0) after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(stat_ticks(&stat) as f64 / hz)
}

/// utime + stime, in clock ticks, from the text of `/proc/<pid>/stat`.
fn stat_ticks(stat: &str) -> u64 {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let field = |i: usize| {
        rest.split_whitespace()
            .nth(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Which tasks [`pin`] moves.
pub(crate) enum Pin<'a> {
    /// A process and every thread it has (`taskset -a`); threads it starts later inherit.
    Process(&'a str),
    /// One thread, by its task id (with `-a` taskset would move its whole process).
    Thread(&'a str),
}

/// Pins tasks to `core` with taskset.
pub(crate) fn pin(tasks: Pin, core: &str) -> Result<(), String> {
    let mut command = Command::new("taskset");
    let task = match tasks {
        Pin::Process(pid) => {
            command.arg("-a");
            pid
        }
        Pin::Thread(tid) => tid,
    };
    command
        .args(["-p", "-c", core, task])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // taskset -a fails if a thread it listed has ended before it got to it (tokio's blocking
    // threads come and go); the next attempt lists the threads again.
    let mut attempts = 0;
    loop {
        let status = command.status().map_err(|e| format!("taskset: {e}"))?;
        attempts += 1;
        if status.success() {
            return Ok(());
        }
        if attempts == 5 {
            return Err(format!("taskset -p -c {core} {task}: {status}"));
        }
    }
}

/// The one core this process may run on (`taskset -c N`), if it is pinned to one.
pub(crate) fn sole_core() -> Option<String> {
    cores_of("self")?.parse::<u32>().ok().map(|n| n.to_string())
}

/// The cores a task may run on (`Cpus_allowed_list` of `/proc/<task>/status`): a pid, `self`,
/// or `<pid>/task/<tid>` for one thread.
pub(crate) fn cores_of(task: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{task}/status")).ok()?;
    let cores = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    Some(cores.trim().to_owned())
}

pub(crate) fn peak_rss_kib() -> u64 {
    peak_rss_kib_of("self")
}

/// A process's peak resident memory (VmHWM) in KiB; `process` is a pid or `self`. 0 when the
/// process is gone.
pub(crate) fn peak_rss_kib_of(process: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_utime_and_stime_even_without_a_terminal() {
        // pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
        let stat = "4242 (wsfan bench) R 1 4242 4242 0 -1 4194304 900 0 3 0 311 27 0 0 20 0";
        assert_eq!(super::stat_ticks(stat), 338);
    }
}
