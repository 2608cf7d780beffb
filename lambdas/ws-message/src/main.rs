use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::auth::JwtVerifier;
use wsfan_shared::config::FromEnv;
use wsfan_shared::limiter::DynamoLimiter;
use wsfan_shared::revocation::RevocationChecked;
use wsfan_shared::store::DynamoStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let (table, limit, auth) = ws_message::Config::from_env()?;
    let store = DynamoStore::open(&wsfan_shared::config::aws().await, table);
    let limiter = DynamoLimiter::new(&store, limit);
    let jwt = JwtVerifier::new(auth);
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
