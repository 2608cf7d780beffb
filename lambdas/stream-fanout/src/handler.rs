//! The DynamoDB stream fanout: pushes messages, reactions, typing, receipts and presence to every
//! member of a channel.

/// The environment variables this function reads (the SAM template is checked against it).
pub const ENV: &[&str] = &[
    "TABLE_NAME",
    "CONNECTIONS_ENDPOINT",
    "FANOUT_CONCURRENCY",
    "FANOUT_DEADLINE_MS",
];

/// Sort-key prefixes of the records this function acts on; the stream filter must let each through.
pub const HANDLED_SORT_KEY_PREFIXES: &[&str] = &["MSG#", "EVT#", "USER#"];
