//! What `bench channel` reads of the functions' processes and the @connections thread in /proc:
//! which they are, their CPU time and peak memory.

use std::collections::HashMap;
use std::time::Duration;

use wsfan_local::connections::SERVER_THREAD;

/// This bench's own running processes whose executable is `bin_dir/<name>`: (name, pid). Only
/// its children: another stack on the machine (a `wsfan dev`, a test) runs the same binaries.
pub(crate) fn function_processes(bin_dir: &std::path::Path, names: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let me = std::process::id().to_string();
    for entry in procs.filter_map(Result::ok) {
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        let parent = std::fs::read_to_string(entry.path().join("status")).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .map(|p| p.trim().to_owned())
        });
        if parent.as_deref() != Some(me.as_str()) {
            continue;
        }
        if let Some(name) = names.iter().find(|n| exe == bin_dir.join(n)) {
            out.push((name.to_string(), entry.file_name().to_string_lossy().into_owned()));
        }
    }
    out.sort();
    out
}

/// Peak RSS (VmHWM, KB) of each running process of these functions.
pub(crate) fn peak_rss(bin_dir: &std::path::Path, names: &[&str]) -> Vec<(String, u64)> {
    function_processes(bin_dir, names)
        .into_iter()
        .map(|(name, pid)| (name, crate::process::peak_rss_kib_of(&pid)))
        .filter(|(_, kb)| *kb > 0)
        .collect()
}

/// CPU time of the @connections server's thread (ConnectionsServer::start_on_own_thread).
pub(crate) fn server_thread_cpu() -> Duration {
    threads_named(SERVER_THREAD)
        .iter()
        .map(|tid| crate::process::cpu_time_of(&format!("self/task/{tid}")))
        .sum()
}

/// CPU time (user + system) of every running process of these functions, by pid.
pub(crate) fn cpu_by_process(bin_dir: &std::path::Path, names: &[&str]) -> HashMap<String, (String, Duration)> {
    function_processes(bin_dir, names)
        .into_iter()
        .map(|(name, pid)| {
            let cpu = crate::process::cpu_time_of(&pid);
            (pid, (name, cpu))
        })
        .collect()
}

/// The CPU each function spent between two readings (processes started since count whole).
pub(crate) fn cpu_spent(
    before: &HashMap<String, (String, Duration)>,
    after: &HashMap<String, (String, Duration)>,
) -> Vec<(String, Duration)> {
    let mut by_name: std::collections::BTreeMap<String, Duration> = Default::default();
    for (pid, (name, cpu)) in after {
        let earlier = before.get(pid).map(|(_, c)| *c).unwrap_or_default();
        *by_name.entry(name.clone()).or_default() += cpu.saturating_sub(earlier);
    }
    by_name.into_iter().collect()
}

/// The task ids of this process's threads named `name`.
pub(crate) fn threads_named(name: &str) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect()
}
