//! How a frame is refused: access the token does not give, and store errors as the client's
//! error frames.

use wsfan_shared::access::{Identity, Role};
use wsfan_shared::channel::ChannelId;
use wsfan_shared::protocol::{ErrorCode, ProtocolError};
use wsfan_shared::store::StoreError;

pub(crate) fn not_connected() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::NotConnected,
        "this connection is no longer registered; reconnect",
    )
}

pub(crate) fn store_error(channel: &ChannelId, e: StoreError) -> ProtocolError {
    match e {
        StoreError::NotConnected => not_connected(),
        StoreError::NotMember => {
            ProtocolError::new(ErrorCode::NotMember, format!("join {channel} before posting to it"))
        }
        StoreError::Contended => {
            tracing::warn!(%channel, "sequence contention: gave up");
            ProtocolError::new(
                ErrorCode::Internal,
                format!("{channel} is too busy right now; send again with the same clientMsgId"),
            )
        }
        other => {
            tracing::error!(%channel, error = %other, "store failure");
            ProtocolError::new(ErrorCode::Internal, "the message could not be saved; try again")
        }
    }
}

pub(crate) fn require_read(identity: &Identity, channel: &ChannelId) -> Result<(), ProtocolError> {
    if identity.may_read(channel) {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("your token does not allow {channel}"),
        ))
    }
}

pub(crate) fn require_write(identity: &Identity, channel: &ChannelId) -> Result<(), ProtocolError> {
    if identity.may_write(channel) {
        Ok(())
    } else if identity.user_id.is_none() || identity.role == Role::Listener {
        Err(ProtocolError::new(
            ErrorCode::ReadOnly,
            "listeners can read but not post",
        ))
    } else {
        Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("your token does not allow {channel}"),
        ))
    }
}
