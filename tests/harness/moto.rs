//! One moto server per test binary, from the project's venv. A missing venv or moto is a loud
//! failure that says how to fix it, never a skipped test.

use std::sync::OnceLock;

pub use wsfan_local::moto::MotoProcess as Moto;

static SHARED: OnceLock<Moto> = OnceLock::new();

/// The moto server this test binary shares; every test makes its own table and queues on it.
pub fn shared() -> &'static Moto {
    SHARED.get_or_init(|| {
        // moto dies with the *thread* that spawned it (PR_SET_PDEATHSIG, local/src/children.rs),
        // and each test runs on a thread of its own that ends with it: spawn moto from a thread
        // that lives as long as the test binary.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Moto::start(&super::repo_root(), 0));
            loop {
                std::thread::park();
            }
        });
        rx.recv()
            .expect("the moto thread answers")
            .unwrap_or_else(|e| panic!("{e}"))
    })
}
