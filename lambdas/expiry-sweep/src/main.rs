use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::config::FromEnv;
use wsfan_shared::expiry::Sweeper;
use wsfan_shared::store::DynamoStore;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let (table, endpoint) = expiry_sweep::Config::from_env()?;
    let aws = wsfan_shared::config::aws().await;
    let sweeper = Sweeper::connect(&aws, DynamoStore::open(&aws, table), endpoint);
    let sweeper = &sweeper;
    lambda_runtime::run(service_fn(move |_: LambdaEvent<serde_json::Value>| async move {
        let swept = expiry_sweep::handle(sweeper, wsfan_shared::clock::now_secs()).await?;
        Ok::<_, Error>(serde_json::to_value(swept)?)
    }))
    .await
}
