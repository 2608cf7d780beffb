//! The stack's command-line options, shared by `wsfan dev`, `wsfan invoke` and the benchmarks
//! that start a stack of their own (`wsfan-bench channel`); and [`run_to_exit`], how both binaries
//! end.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct StackArgs {
    /// The repository (for sam/template.yaml, scripts/ and .venv).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Where the Lambda binaries are; by default beside the running binary.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The moto server's port (0: any free port).
    #[arg(long, default_value_t = 4566)]
    pub moto_port: u16,
    #[arg(long, default_value = "local")]
    pub stage: String,
    /// Execution environments each function may scale out to, as Lambda starts one more when an
    /// invocation finds every environment busy (kept low: each is a process on this machine).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Show the functions' own log lines, not only invocations, warnings and errors.
    #[arg(long, short)]
    pub verbose: bool,
}

/// Where the Lambda binaries are: `given`, or beside the running binary (`wsfan` or
/// `wsfan-bench`: the same build).
pub fn lambda_bin_dir(given: Option<&PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(d) => Ok(d.clone()),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .map(PathBuf::from)
            .ok_or_else(|| "cannot tell where the running binary is".to_owned()),
    }
}

impl StackArgs {
    pub fn config(&self, port: u16) -> Result<crate::dev::DevConfig, String> {
        let bin_dir = lambda_bin_dir(self.bin_dir.as_ref())?;
        Ok(crate::dev::DevConfig {
            repo_root: self.repo.clone(),
            bin_dir,
            port,
            moto_port: self.moto_port,
            stage: self.stage.clone(),
            limits: crate::gateway::Limits::default(),
            anonymous_channels: None,
            concurrency: usize::from(self.concurrency),
            verbose: self.verbose,
            inject: None,
            rate_limit: None,
            schedule_every: None,
        })
    }
}

/// Runs a command on `runtime` and ends it as both binaries do: its answer on standard output and
/// exit status 0, or `program: error` on standard error and status 1.
pub fn run_to_exit(
    program: &str,
    runtime: std::io::Result<tokio::runtime::Runtime>,
    command: impl std::future::Future<Output = Result<String, String>>,
) -> std::process::ExitCode {
    let result = match runtime {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => Err(format!("starting the tokio runtime: {e}")),
    };
    match result {
        Ok(out) => {
            println!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
