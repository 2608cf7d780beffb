//! One moto server per test binary, from the project's venv. A missing venv or moto is a loud
//! failure that says how to fix it, never a skipped test.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use aws_config::{BehaviorVersion, Region, SdkConfig};

pub struct Moto {
    pub endpoint: String,
    // Held so moto lives exactly as long as this process: it exits when its stdin closes.
    _child: Mutex<(Child, ChildStdin)>,
}

static SHARED: OnceLock<Moto> = OnceLock::new();

impl Moto {
    pub fn shared() -> &'static Moto {
        SHARED.get_or_init(Moto::start)
    }

    /// Starts a moto server of its own on a free loopback port.
    pub fn start() -> Moto {
        let root = super::repo_root();
        let python = root.join(".venv/bin/python");
        assert!(
            python.exists(),
            "moto is not installed: {} is missing. Run scripts/setup (scripts/test does this for you).",
            python.display()
        );
        let mut child = Command::new(&python)
            .arg(root.join("scripts/moto_server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto with {}: {e}", python.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading moto's READY line");
        let port = line.strip_prefix("READY ").map(str::trim).unwrap_or_else(|| {
            panic!("moto did not start (is moto[server] installed in .venv? run scripts/setup); it said {line:?}")
        });
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _child: Mutex::new((child, stdin)),
        }
    }

    /// SDK configuration pointing at this moto, with dummy credentials.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "wsfan-tests",
            ))
            .load()
            .await
    }
}
