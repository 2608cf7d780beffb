//! A moto server (DynamoDB, Streams, SQS) from the project's venv, on loopback.
//! It lives exactly as long as its owner: it exits when its standard input closes, when
//! [`MotoProcess::stop`] is called, and (SIGKILL from the kernel) when its parent dies.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use aws_config::{BehaviorVersion, Region, SdkConfig};

pub struct MotoProcess {
    pub endpoint: String,
    pub port: u16,
    child: Mutex<(Child, ChildStdin)>,
}

#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    #[error(
        "moto is not installed: {0} is missing. Run scripts/setup (scripts/test and scripts/dev do this for you)."
    )]
    Missing(String),
    #[error("moto did not start: {0}")]
    Start(String),
}

impl MotoProcess {
    /// Starts `scripts/moto_server.py` from `repo_root`'s venv on `port` (0: a free one).
    pub fn start(repo_root: &Path, port: u16) -> Result<MotoProcess, MotoError> {
        let python = repo_root.join(".venv/bin/python");
        if !python.exists() {
            return Err(MotoError::Missing(python.display().to_string()));
        }
        let mut command = Command::new(&python);
        crate::children::die_with_parent(&mut command);
        let mut child = command
            .arg(repo_root.join("scripts/moto_server.py"))
            .args(["--port", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| MotoError::Start(format!("{}: {e}", python.display())))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .map_err(|e| MotoError::Start(e.to_string()))?;
        let port: u16 = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| MotoError::Start(format!("it said {line:?} (is moto[server] installed in .venv?)")))?;
        Ok(MotoProcess {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            child: Mutex::new((child, stdin)),
        })
    }

    /// The server's process id (for resource figures and tests).
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().0.id()
    }

    /// How the server ended, once it has (it is reaped then); `None` while it runs.
    pub fn exit_status(&self) -> Option<String> {
        let mut child = self.child.lock().unwrap();
        match child.0.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Ends the server now and reaps it. Its state is throwaway, so there is nothing to flush.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.0.kill();
        let _ = child.0.wait();
    }

    /// SDK configuration for this moto, with dummy credentials.
    pub async fn sdk_config(&self) -> SdkConfig {
        sdk_config(&self.endpoint).await
    }
}

pub const LOCAL_REGION: &str = "us-east-1";
/// The credentials of everything local: moto accepts any, and our @connections server checks
/// signatures made with these.
pub const LOCAL_ACCESS_KEY_ID: &str = "test";
pub const LOCAL_SECRET_ACCESS_KEY: &str = "test";

pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(LOCAL_REGION))
        .credentials_provider(aws_credential_types::Credentials::new(
            LOCAL_ACCESS_KEY_ID,
            LOCAL_SECRET_ACCESS_KEY,
            None,
            None,
            "wsfan-local",
        ))
        .load()
        .await
}
