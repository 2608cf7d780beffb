//! A pinned `bench channel` run: the pinning read back, so a figure labelled "pinned" was
//! measured pinned, and the single-channel figure taken beside it on the same cores.

use wsfan_local::connections::SERVER_THREAD;

use super::processes::threads_named;
use crate::process::cores_of;

/// The cores each thread of a process may run on, one entry per thread.
fn thread_cores(pid: &str) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| cores_of(&format!("{pid}/task/{}", t.file_name().to_string_lossy())))
        .collect()
}

/// Reads the pinning back from /proc: every thread of every function process on the functions'
/// core, every thread of moto and the @connections thread on the other, so that a figure
/// labelled "pinned" was measured pinned.
pub(crate) fn check_pinned(
    functions: &[(String, String)],
    moto_pid: &str,
    functions_core: &str,
    aws_core: &str,
) -> Result<String, String> {
    let mut threads = 0;
    for (name, pid) in functions {
        let cores = thread_cores(pid);
        if let Some(other) = cores.iter().find(|c| *c != functions_core) {
            return Err(format!(
                "{name} ({pid}) may run on cores {other}, not only {functions_core}"
            ));
        }
        threads += cores.len();
    }
    let moto = thread_cores(moto_pid);
    if moto.is_empty() || moto.iter().any(|c| c != aws_core) {
        return Err(format!("moto's threads may run on cores {moto:?}, not only {aws_core}"));
    }
    let server: Vec<String> = threads_named(SERVER_THREAD)
        .iter()
        .filter_map(|tid| cores_of(&format!("self/task/{tid}")))
        .collect();
    if server.is_empty() || server.iter().any(|c| c != aws_core) {
        return Err(format!(
            "the @connections thread may run on cores {server:?}, not only {aws_core}"
        ));
    }
    Ok(format!(
        "pinned: the functions on core {functions_core} ({} processes, {threads} threads), \
         moto ({} threads) and the @connections server's thread on core {aws_core}",
        functions.len(),
        moto.len()
    ))
}

/// The single-channel figure on the same cores: `bench fanout`'s throughput rounds (the
/// broadcaster in a process on this one's core, its server on `aws_core`), run beside the
/// broadcast, as a figure taken minutes apart on a VM can differ by a fifth. CPU µs per post.
pub(crate) async fn single_channel(aws_core: &str, recipients: usize) -> Result<f64, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = tokio::process::Command::new(me)
        .args(["fanout", "--server-core", aws_core, "--throughput-only"])
        .arg(format!("--recipients={recipients}"))
        .output()
        .await
        .map_err(|e| format!("bench fanout: {e}"))?;
    let report = String::from_utf8_lossy(&out.stdout);
    crate::fanout::reported_cpu_us(&report)
        .filter(|_| out.status.success())
        .ok_or_else(|| format!("bench fanout: {report}{}", String::from_utf8_lossy(&out.stderr)))
}
