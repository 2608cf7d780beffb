use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::auth::JwtVerifier;
use wsfan_shared::config::AuthConfig;

#[tokio::main]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let verifier = JwtVerifier::new(AuthConfig::from_env()?);
    let verifier = &verifier;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(ws_authorizer::handle(verifier, event.payload).await)
    }))
    .await
}
