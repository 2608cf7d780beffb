//! The stack under test: the user's `wsfan dev` of the same build, as a child process.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The stack under test: a `wsfan dev` child process (`bench local`, `bench hot`).
pub(crate) struct DevProcess {
    child: Child,
    pub(crate) http_url: String,
    pub(crate) ws_url: String,
    pub(crate) moto: String,
    pub(crate) table: String,
    /// Its standard error: the invocation log.
    pub(crate) log: PathBuf,
}

/// The user's `wsfan` of the same build, whose `dev` the benchmarks drive.
fn wsfan_beside_me() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let wsfan = me.with_file_name("wsfan");
    if wsfan.exists() {
        Ok(wsfan)
    } else {
        Err(format!(
            "{} is missing: build it with the benchmark (cargo build --workspace --bins)",
            wsfan.display()
        ))
    }
}

impl DevProcess {
    /// Starts `wsfan dev` with the template's defaults and `extra` options (`--inject`); its log
    /// goes to `wsfan-bench-{name}-PID.log` in the temporary directory.
    pub(crate) fn start(repo: &Path, name: &str, extra: &[String]) -> Result<DevProcess, String> {
        let wsfan = wsfan_beside_me()?;
        let log = std::env::temp_dir().join(format!("wsfan-bench-{name}-{}.log", std::process::id()));
        let mut command = Command::new(wsfan);
        wsfan_local::children::die_with_parent(&mut command);
        let mut child = command
            .args(["dev", "--port", "0", "--moto-port", "0", "--repo"])
            .arg(repo)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("starting wsfan dev: {e}"))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let ready = lines.next().and_then(Result::ok).unwrap_or_default();
        let env = lines.next().and_then(Result::ok).unwrap_or_default();
        if !ready.starts_with("wsfan dev ready:") {
            let _ = child.kill();
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("wsfan dev did not start: {ready:?}\n{said}"));
        }
        let field = |name: &str| {
            env.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_default()
                .to_owned()
        };
        Ok(DevProcess {
            http_url: ready.split_whitespace().nth(3).unwrap_or_default().to_owned(),
            ws_url: ready.split_whitespace().nth(4).unwrap_or_default().to_owned(),
            moto: field("moto"),
            table: field("table"),
            child,
            log,
        })
    }

    /// Every process of the stack, with its name, peak resident memory (VmHWM) in KiB and the
    /// CPU seconds it used.
    pub(crate) fn peak_rss(&self) -> Vec<(String, u32, u64, f64)> {
        let mut pids = vec![self.child.id()];
        pids.extend(wsfan_local::children::descendants(self.child.id()));
        pids.into_iter()
            .filter_map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let field = |name: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                let name = field("Name:")?;
                let hwm = field("VmHWM:")?.trim_end_matches("kB").trim().parse().ok()?;
                let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let name = if cmdline.contains("moto_server.py") {
                    "moto".to_owned()
                } else {
                    name
                };
                Some((name, pid, hwm, cpu_seconds(pid)))
            })
            .collect()
    }

    /// Invocations the stack's log reports as timed out, by function.
    pub(crate) fn timeouts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        // Only the invocation lines: a function's own warning may say "timed out" too.
        for line in std::fs::read_to_string(&self.log).unwrap_or_default().lines() {
            if let Some(invocation) = crate::dev_log::invocation(line).filter(|i| i.timed_out) {
                *counts.entry(invocation.function).or_default() += 1;
            }
        }
        counts
    }

    /// SIGTERM, as Ctrl-C would, and the wait for the stack to end.
    pub(crate) fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// User and system CPU time of `pid`, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    crate::process::cpu_time_of(&pid.to_string()).as_secs_f64()
}

/// The options of `wsfan dev` a benchmark passes on: its faults (`--inject`, `--inject-seed`) and
/// the execution environments per function (`--concurrency`).
pub(crate) fn dev_options(inject: Option<&str>, inject_seed: Option<u64>, concurrency: Option<u16>) -> Vec<String> {
    let mut options = Vec::new();
    if let Some(spec) = inject {
        options.extend(["--inject".to_owned(), spec.to_owned()]);
    }
    if let Some(seed) = inject_seed {
        options.extend(["--inject-seed".to_owned(), seed.to_string()]);
    }
    if let Some(n) = concurrency {
        options.extend(["--concurrency".to_owned(), n.to_string()]);
    }
    options
}
