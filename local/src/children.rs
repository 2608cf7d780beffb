//! Child processes that never outlive `wsfan dev`.
//!
//! `wsfan dev` runs moto and one process per Lambda function. A signal is handled by stopping
//! them all ([`crate::dev::DevStack::shutdown`]); a SIGKILL cannot be handled, so every child
//! also asks the kernel to kill it when its parent dies (`PR_SET_PDEATHSIG`). Linux sends that
//! signal when the *thread* that spawned the child exits, so children are spawned from the
//! runtime's worker threads, which live as long as the stack, never from a blocking-pool thread.

/// Makes the child spawned by `command` receive SIGKILL when this process dies.
pub fn die_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl and getppid are async-signal-safe, as pre_exec requires; nothing is allocated.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody will signal us.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("the parent exited while the child started"));
            }
            Ok(())
        });
    }
}

/// Every process below `pid`, children of children included.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}
