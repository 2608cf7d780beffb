//! One moto server per test binary, from the project's venv. A missing venv or moto is a loud
//! failure that says how to fix it, never a skipped test.

use std::sync::OnceLock;

pub use wsfan_local::moto::MotoProcess as Moto;

static SHARED: OnceLock<Moto> = OnceLock::new();

/// The moto server this test binary shares; every test makes its own table and queues on it.
pub fn shared() -> &'static Moto {
    SHARED.get_or_init(|| {
        // moto dies with the *thread* that started it (PR_SET_PDEATHSIG), and each test runs on
        // a thread of its own that ends with the test: start it from one that never ends.
        let (started, moto) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = started.send(Moto::start(&super::repo_root(), 0));
            loop {
                std::thread::park();
            }
        });
        moto.recv()
            .expect("the thread starting moto ended")
            .unwrap_or_else(|e| panic!("{e}"))
    })
}
