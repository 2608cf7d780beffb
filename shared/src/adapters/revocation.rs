//! Taking a user out: revoked tokens and users' not-before times, kept in the table, checked by
//! the authorizer on every `$connect`; and [`Revoker`], what `wsfan revoke` and backends call to
//! close a user's connections or remove them from a channel.
//!
//! | item        | pk            | sk           | attributes |
//! |-------------|---------------|--------------|------------|
//! | not-before  | `USER#<sub>`  | `NOT_BEFORE` | `notBefore` (epoch seconds): tokens issued (`iat`) at or before it are refused |
//! | revoked jti | `JTI#<jti>`   | `REVOKED`    | `expiresAt` = the token's `exp`: DynamoDB's TTL drops it once the token is useless anyway |
//!
//! Neither key matches a stream filter, so these writes invoke no fanout.

use std::collections::HashMap;
use std::future::Future;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};

use crate::access::Identity;
use crate::auth::{AuthError, JwtVerifier, TokenFacts};
use crate::channel::ChannelId;
use crate::channel::ChannelPattern;
use crate::model::{keys, PK, SK, TTL_ATTRIBUTE};
use crate::store::{Connections, DynamoStore, Members, StoreError};

pub(crate) const NOT_BEFORE_SK: &str = "NOT_BEFORE";
pub(crate) const REVOKED_SK: &str = "REVOKED";
const NOT_BEFORE: &str = "notBefore";

pub(crate) fn user_key(sub: &str) -> String {
    format!("USER#{sub}")
}

pub(crate) fn jti_key(jti: &str) -> String {
    format!("JTI#{jti}")
}

/// What the authorizer asks before it admits a token.
pub trait RevocationList: Send + Sync {
    /// Why this user's token is refused, or `None`.
    fn refusal(
        &self,
        user: &str,
        facts: &TokenFacts,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
}

impl RevocationList for DynamoStore {
    async fn refusal(&self, user: &str, facts: &TokenFacts) -> Result<Option<String>, StoreError> {
        let key = |pk: String, sk: &str| {
            HashMap::from([
                (PK.to_owned(), AttributeValue::S(pk)),
                (SK.to_owned(), AttributeValue::S(sk.to_owned())),
            ])
        };
        let mut wanted = vec![key(user_key(user), NOT_BEFORE_SK)];
        if let Some(jti) = &facts.jti {
            wanted.push(key(jti_key(jti), REVOKED_SK));
        }
        let request = KeysAndAttributes::builder()
            .set_keys(Some(wanted))
            .consistent_read(true)
            .build()
            .expect("keys are set");
        let get = self.client().batch_get_item().request_items(self.table(), request);
        // A throttle or 5xx is retried: a connect is never refused because DynamoDB was busy.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        let out = crate::store::retry::retried("BatchGetItem", deadline, |_| get.clone().send()).await?;
        let items = out
            .responses()
            .and_then(|r| r.get(self.table()))
            .cloned()
            .unwrap_or_default();
        for item in &items {
            let pk = item.get(PK).and_then(|v| v.as_s().ok()).map(String::as_str);
            if pk.is_some_and(|pk| pk.starts_with("JTI#")) {
                return Ok(Some("the token was revoked".to_owned()));
            }
            let not_before = item
                .get(NOT_BEFORE)
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<i64>().ok());
            if let Some(not_before) = not_before {
                match facts.iat {
                    Some(iat) if iat > not_before => {}
                    Some(_) => {
                        return Ok(Some(format!(
                            "the user's tokens issued at or before {not_before} were revoked; mint a new one"
                        )))
                    }
                    None => {
                        return Ok(Some(
                            "the user's earlier tokens were revoked, and this one has no iat to show it is newer"
                                .to_owned(),
                        ))
                    }
                }
            }
        }
        Ok(None)
    }
}

/// What the authorizer needs from a verifier; tests and the real JWT verifier both provide it.
pub trait TokenVerifier: Send + Sync {
    fn verify(&self, token: &str) -> impl Future<Output = Result<Identity, AuthError>> + Send;
    /// Channels an anonymous listener may read, when anonymous listeners are allowed at all.
    fn anonymous_channels(&self) -> Option<&[ChannelPattern]>;
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> impl Future<Output = Result<Identity, AuthError>> + Send {
        crate::auth::JwtVerifier::verify(self, token)
    }

    fn anonymous_channels(&self) -> Option<&[ChannelPattern]> {
        self.config().anonymous_channels.as_deref()
    }
}

/// The JWT verifier with the table's revocations (adapters/revocation.rs): a revoked token, or
/// one issued before its user's not-before time, is denied like a forged one. A table that cannot
/// answer denies too (the client retries with backoff): a revocation must not lapse with it.
pub struct RevocationChecked<'a, R> {
    pub verifier: &'a JwtVerifier,
    pub revocations: &'a R,
}

impl<R: RevocationList> TokenVerifier for RevocationChecked<'_, R> {
    async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let (identity, facts) = self.verifier.verify_with_facts(token).await?;
        if let Some(user) = identity.user_id.as_deref() {
            match self.revocations.refusal(user, &facts).await {
                Ok(None) => {}
                Ok(Some(why)) => return Err(AuthError::Invalid(why)),
                Err(e) => return Err(AuthError::Keys(format!("the revocation list cannot be read: {e}"))),
            }
        }
        Ok(identity)
    }

    fn anonymous_channels(&self) -> Option<&[ChannelPattern]> {
        self.verifier.config().anonymous_channels.as_deref()
    }
}

/// What one revocation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    /// Connections closed through `DELETE @connections` (all of the user's, without a channel).
    pub closed: Vec<String>,
    /// Memberships removed (of the channel, or of every channel of the closed connections).
    pub memberships_removed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("@connections refused to close {connection}: {message}")]
    Close { connection: String, message: String },
}

/// Closes a user's connections or removes them from a channel: `wsfan revoke`, and backends.
pub struct Revoker {
    store: DynamoStore,
    connections: aws_sdk_apigatewaymanagement::Client,
}

impl Revoker {
    /// `connections`: a Management API client for the stage (`ConnectionsUrl` output).
    pub fn new(store: DynamoStore, connections: aws_sdk_apigatewaymanagement::Client) -> Self {
        Revoker { store, connections }
    }

    /// Without `channel`: refuses the user's current tokens from now on (a not-before time: only
    /// tokens issued after it connect), closes every connection of theirs on every device and
    /// removes its memberships (members see the user leave). With `channel`: removes the user's
    /// memberships of that channel only; their connections stay open.
    pub async fn revoke_user(&self, user: &str, channel: Option<&ChannelId>) -> Result<Revoked, RevokeError> {
        match channel {
            Some(channel) => self.remove_from(user, channel).await,
            None => self.close_all(user).await,
        }
    }

    /// Refuses one token (by its `jti`) until it expires; connections it opened stay, so close
    /// them with [`Revoker::revoke_user`] when that is meant.
    pub async fn revoke_token(&self, jti: &str, exp: i64) -> Result<(), RevokeError> {
        self.store
            .client()
            .put_item()
            .table_name(self.store.table())
            .item(PK, AttributeValue::S(jti_key(jti)))
            .item(SK, AttributeValue::S(REVOKED_SK.to_owned()))
            .item(
                TTL_ATTRIBUTE,
                AttributeValue::N(exp.max(crate::clock::now_secs()).to_string()),
            )
            .send()
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }

    async fn close_all(&self, user: &str) -> Result<Revoked, RevokeError> {
        // First the not-before time, so that no connection opened meanwhile with an old token
        // escapes: its `$connect` is refused from here on.
        self.store
            .client()
            .put_item()
            .table_name(self.store.table())
            .item(PK, AttributeValue::S(user_key(user)))
            .item(SK, AttributeValue::S(NOT_BEFORE_SK.to_owned()))
            .item(NOT_BEFORE, AttributeValue::N(crate::clock::now_secs().to_string()))
            .send()
            .await
            .map_err(StoreError::from)?;
        let personal = ChannelId::user(user).map_err(|e| StoreError::InvalidUserId(e.to_string()))?;
        let mut revoked = Revoked::default();
        for member in self.store.members(&personal).await? {
            let id = member.connection_id;
            self.close(&id).await?;
            // `$disconnect` follows the close and cleans up too; doing it here as well means the
            // memberships are gone when this returns, whatever API Gateway's timing.
            let cleanup = self.store.disconnect(&id).await?;
            revoked.memberships_removed += cleanup.memberships_removed;
            revoked.closed.push(id);
        }
        Ok(revoked)
    }

    async fn remove_from(&self, user: &str, channel: &ChannelId) -> Result<Revoked, RevokeError> {
        // The presence item lists the user's connections in the channel: one read, however large
        // the channel.
        let presence = self
            .store
            .client()
            .get_item()
            .table_name(self.store.table())
            .key(PK, AttributeValue::S(keys::channel(channel)))
            .key(SK, AttributeValue::S(keys::presence(user)))
            .consistent_read(true)
            .send()
            .await
            .map_err(StoreError::from)?;
        let connections = presence
            .item()
            .and_then(|i| i.get("connections"))
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default();
        let mut revoked = Revoked::default();
        for id in connections {
            if self.store.leave(channel, &id, Some(user)).await? {
                revoked.memberships_removed += 1;
            }
        }
        Ok(revoked)
    }

    async fn close(&self, connection_id: &str) -> Result<(), RevokeError> {
        close(&self.connections, connection_id).await
    }
}

/// `DELETE @connections/{id}`; a connection already gone (410) is what was wanted. Revocation and
/// the expiry sweep (adapters/expiry.rs) close connections this way.
pub async fn close(connections: &aws_sdk_apigatewaymanagement::Client, connection_id: &str) -> Result<(), RevokeError> {
    match connections
        .delete_connection()
        .connection_id(connection_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_gone_exception()) => Ok(()),
        Err(e) => Err(RevokeError::Close {
            connection: connection_id.to_owned(),
            message: aws_sdk_apigatewaymanagement::error::DisplayErrorContext(&e).to_string(),
        }),
    }
}
