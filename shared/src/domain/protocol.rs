//! The client protocol: JSON text frames in both directions.
//!
//! Client frames are chosen by `action` (API Gateway's route selection expression is
//! `$request.body.action`). Frames without an action reach the `$default` route; three shapes of
//! them are understood, because clients written for the backends wsfan replaces send them:
//! `{"type":"register","sessionID":…}`, `{"body":…}` (a message) and
//! `{"type":"reaction","emoji":…,"message_id":…}`. A frame that names no channel goes to the
//! connection's default channel (see [`ClientFrame::default_channel`]). Every way a frame can be
//! wrong maps to a stable [`ErrorCode`] and a readable message that says what to send instead;
//! nothing is guessed. `docs/asyncapi.yaml` is the contract for all of it.

mod client;
mod error;
mod parse;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ClientFrame, HistoryCursor, ACTIONS};
pub use error::{ErrorCode, ProtocolError};
pub use server::{ChatEvent, PresenceState, ServerFrame};

/// API Gateway's limit for one WebSocket message (frames are 32 KB, a message up to 128 KB).
pub(crate) const MAX_FRAME_BYTES: usize = 128 * 1024;
/// Room left for the envelope (ids, timestamps) when a message body is fanned out again.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
pub(crate) const MAX_EMOJI_BYTES: usize = 64;
pub const MAX_CLIENT_MSG_ID_LEN: usize = 128;
pub(crate) const DEFAULT_HISTORY_LIMIT: u32 = 50;
/// How many present users a `joined` answer lists.
pub const MAX_PRESENT_USERS: usize = 200;
pub const MAX_HISTORY_LIMIT: u32 = 100;
