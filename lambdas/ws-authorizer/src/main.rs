use lambda_runtime::{service_fn, Error, LambdaEvent};
use ws_authorizer::RevocationChecked;
use wsfan_shared::auth::JwtVerifier;
use wsfan_shared::config::AuthConfig;
use wsfan_shared::store::DynamoStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let verifier = JwtVerifier::new(AuthConfig::from_env()?);
    let store = DynamoStore::from_env().await?;
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
