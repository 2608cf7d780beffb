use lambda_runtime::{service_fn, Error, LambdaEvent};
use ws_authorizer::RevocationChecked;
use wsfan_shared::auth::JwtVerifier;
use wsfan_shared::config::FromEnv;
use wsfan_shared::store::DynamoStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let (table, auth) = ws_authorizer::Config::from_env()?;
    let verifier = JwtVerifier::new(auth);
    let store = DynamoStore::open(&wsfan_shared::config::aws().await, table);
    let checked = RevocationChecked {
        verifier: &verifier,
        revocations: &store,
    };
    let checked = &checked;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(ws_authorizer::handle(checked, event.payload).await)
    }))
    .await
}
