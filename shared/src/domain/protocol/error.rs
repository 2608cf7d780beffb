//! How a frame was wrong: a stable code and a readable message.

use serde::{Deserialize, Serialize};

/// Stable error codes clients can switch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    UnknownAction,
    MissingField,
    InvalidField,
    InvalidChannel,
    TooLarge,
    Forbidden,
    ReadOnly,
    NotMember,
    NotConnected,
    Unauthorized,
    Internal,
    /// The frame fits more than one form; the message says which to send.
    Ambiguous,
    /// The frame names no channel and the connection has not exactly one to default to.
    NoDefaultChannel,
    /// The connection is over its limit of frames per second; `retryAfterMs` says when to resend.
    RateLimited,
    /// The connection's token expired without a refresh (`auth`): the server closes the
    /// connection next; fetch a new token and reconnect.
    TokenExpired,
}

impl ErrorCode {
    /// Every code; `docs/asyncapi.yaml` documents each (checked in tests).
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownAction,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::InvalidChannel,
        ErrorCode::TooLarge,
        ErrorCode::Forbidden,
        ErrorCode::ReadOnly,
        ErrorCode::NotMember,
        ErrorCode::NotConnected,
        ErrorCode::Unauthorized,
        ErrorCode::Internal,
        ErrorCode::Ambiguous,
        ErrorCode::NoDefaultChannel,
        ErrorCode::RateLimited,
        ErrorCode::TokenExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::NotMember => "not_member",
            ErrorCode::NotConnected => "not_connected",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
            ErrorCode::Ambiguous => "ambiguous",
            ErrorCode::NoDefaultChannel => "no_default_channel",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TokenExpired => "token_expired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }

    pub(super) fn invalid(field: &str, why: &str) -> Self {
        ProtocolError::new(ErrorCode::InvalidField, format!("field \"{field}\" {why}"))
    }
}
