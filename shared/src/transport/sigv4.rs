//! SigV4 for `@connections` posts, signed with the day's key.
//!
//! The SDK's SigV4 signer derives the signing key (four HMACs) and builds the canonical request
//! through many small owned strings on every request, and a fanout to 10,000 connections signs
//! 10,000 times with the same key. This auth scheme signs as SigV4 specifies and as the SDK's
//! signer does (every header but the ones proxies change, the path encoded twice, the payload
//! hash, the session token signed), into one buffer, with the derived key kept until the date or
//! the credentials change. The tests check its signatures against aws-sigv4's.

mod canonical;
mod signer;
#[cfg(test)]
mod tests;

use aws_smithy_runtime_api::client::auth::{AuthScheme, AuthSchemeId, AuthSchemeOption, AuthSchemeOptionsFuture, Sign};
use aws_smithy_runtime_api::client::identity::SharedIdentityResolver;
use aws_smithy_runtime_api::client::runtime_components::{GetIdentityResolver, RuntimeComponents};
use aws_smithy_types::config_bag::ConfigBag;

pub use signer::{CachedKeySigner, SigningError};

/// This scheme's id. It differs from the SDK's `sigv4`, so the resolver below picks it.
pub(crate) const SCHEME_ID: AuthSchemeId = AuthSchemeId::new("wsfan-sigv4");
/// The SDK registers the credentials provider under this id; the scheme uses the same identity.
const SDK_SIGV4: AuthSchemeId = AuthSchemeId::new("sigv4");
/// The signing name of API Gateway's execute-api endpoints, @connections included.
pub const SERVICE: &str = "execute-api";
/// `x-amz-date`'s form, `YYYYMMDDTHHMMSSZ`; its first eight characters are the scope's date.
pub const AMZ_DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

/// The auth scheme to push into an apigatewaymanagement client, with [`PostAuthResolver`].
#[derive(Debug)]
pub(crate) struct CachedKeySigV4 {
    signer: CachedKeySigner,
}

impl CachedKeySigV4 {
    pub fn new(region: impl Into<String>) -> Self {
        CachedKeySigV4 {
            signer: CachedKeySigner::new(region, SERVICE),
        }
    }
}

impl AuthScheme for CachedKeySigV4 {
    fn scheme_id(&self) -> AuthSchemeId {
        SCHEME_ID
    }

    fn identity_resolver(&self, resolvers: &dyn GetIdentityResolver) -> Option<SharedIdentityResolver> {
        resolvers.identity_resolver(SDK_SIGV4)
    }

    fn signer(&self) -> &dyn Sign {
        &self.signer
    }
}

/// Chooses [`CachedKeySigV4`] for every operation of the client it is set on.
#[derive(Debug, Default)]
pub(crate) struct PostAuthResolver;

impl aws_sdk_apigatewaymanagement::config::auth::ResolveAuthScheme for PostAuthResolver {
    fn resolve_auth_scheme<'a>(
        &'a self,
        _params: &'a aws_sdk_apigatewaymanagement::config::auth::Params,
        _cfg: &'a ConfigBag,
        _components: &'a RuntimeComponents,
    ) -> AuthSchemeOptionsFuture<'a> {
        AuthSchemeOptionsFuture::ready(Ok(vec![AuthSchemeOption::from(SCHEME_ID)]))
    }
}
