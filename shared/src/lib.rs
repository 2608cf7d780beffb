//! wsfan's shared library, in three rooms; a file's folder says whether it may do I/O.
//!
//! - `domain/`: pure. Channels, the protocol, the item model, access rules, progress, batches,
//!   shards and the governor's arithmetic. No I/O, no clock but what is passed in (`clock` reads
//!   the wall clock and nothing else), no environment. Unit, property and fuzz tests.
//! - `adapters/`: I/O at the edges. The DynamoDB store and the table's definition, the
//!   broadcaster (`@connections`), the queue publishers, JWT verification with its JWKS fetch,
//!   configuration from the environment, and logging. Tested against moto and our
//!   `@connections` server.
//! - `transport/`: the bytes on the wire for the broadcaster, written by hand because they were
//!   measured to matter (BENCHMARKS.md): the HTTP/1.1 client and the SigV4 signer.
//!
//! Every module is re-exported at the crate root, so callers name `wsfan_shared::store`, not its
//! room.

pub mod domain {
    pub mod access;
    pub mod batch;
    pub mod budget;
    pub mod cadence;
    pub mod channel;
    pub mod clock;
    pub mod connect;
    pub mod governor;
    pub mod model;
    pub mod progress;
    pub mod protocol;
    pub mod publish;
    pub mod rate;
    pub mod reactions;
    pub mod reads;
    pub mod shard;
    pub mod subprotocol;
    pub mod websocket;
}

pub mod adapters {
    pub mod auth;
    pub mod broadcaster;
    pub mod config;
    pub mod expiry;
    pub mod limiter;
    pub mod ports;
    pub mod publisher;
    pub mod revocation;
    pub mod store;
    pub mod table;
    pub mod telemetry;
}

pub mod transport {
    pub mod http1;
    pub mod sigv4;
}

pub use adapters::{auth, broadcaster, config, expiry, limiter, ports, publisher, revocation, store, table, telemetry};
pub use domain::{
    access, batch, budget, cadence, channel, clock, connect, governor, model, progress, protocol, publish, rate,
    reactions, reads, shard, subprotocol, websocket,
};
pub use transport::{http1, sigv4};

pub use channel::{ChannelId, ChannelKind, ChannelPattern};
pub use protocol::{ClientFrame, ErrorCode, ProtocolError, ServerFrame};
