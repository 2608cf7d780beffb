use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::expiry::Sweeper;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let sweeper = Sweeper::from_env().await?;
    let sweeper = &sweeper;
    lambda_runtime::run(service_fn(move |_: LambdaEvent<serde_json::Value>| async move {
        let swept = expiry_sweep::handle(sweeper, wsfan_shared::clock::now_secs()).await?;
        Ok::<_, Error>(serde_json::to_value(swept)?)
    }))
    .await
}
