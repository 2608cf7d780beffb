//! wsfan's shared library: the pure domain (channels, protocol, item model, access rules) and the
//! adapters every Lambda uses (the DynamoDB store, JWT verification, config, telemetry).

pub mod access;
pub mod auth;
pub mod batch;
pub mod broadcaster;
pub mod channel;
pub mod clock;
pub mod config;
pub mod connect;
pub mod governor;
pub mod http1;
pub mod model;
pub mod progress;
pub mod protocol;
pub mod publisher;
pub mod shard;
pub mod sigv4;
pub mod store;
pub mod table;
pub mod telemetry;
pub mod websocket;

pub use channel::{ChannelId, ChannelKind, ChannelPattern};
pub use protocol::{ClientFrame, ErrorCode, ProtocolError, ServerFrame};
