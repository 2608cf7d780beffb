//! The SQS progress fanout: stores each document's latest progress and pushes it to subscribers.

/// The environment variables this function reads (the SAM template is checked against it).
pub const ENV: &[&str] = &[
    "TABLE_NAME",
    "CONNECTIONS_ENDPOINT",
    "FANOUT_CONCURRENCY",
    "FANOUT_DEADLINE_MS",
];
