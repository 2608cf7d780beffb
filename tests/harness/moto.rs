//! One moto server per test binary, from the project's venv. A missing venv or moto is a loud
//! failure that says how to fix it, never a skipped test.

use std::sync::OnceLock;

pub use wsfan_local::moto::MotoProcess as Moto;

static SHARED: OnceLock<Moto> = OnceLock::new();

/// The moto server this test binary shares; every test makes its own table and queues on it.
pub fn shared() -> &'static Moto {
    SHARED.get_or_init(|| Moto::start(&super::repo_root(), 0).unwrap_or_else(|e| panic!("{e}")))
}
