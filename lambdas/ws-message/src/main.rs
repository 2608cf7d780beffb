use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::auth::JwtVerifier;
use wsfan_shared::config::AuthConfig;
use wsfan_shared::limiter::DynamoLimiter;
use wsfan_shared::revocation::RevocationChecked;
use wsfan_shared::store::DynamoStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let store = DynamoStore::from_env().await?;
    let limiter = DynamoLimiter::new(&store, wsfan_shared::config::rate_limit_from_env()?);
    let jwt = JwtVerifier::new(AuthConfig::from_env()?);
    let verifier = RevocationChecked {
        verifier: &jwt,
        revocations: &store,
    };
    let (store, limiter, verifier) = (&store, &limiter, &verifier);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(ws_message::handle(store, limiter, verifier, store.retention(), event.payload).await)
    }))
    .await
}
