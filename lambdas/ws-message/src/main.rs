use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::config::{self, StoreConfig};
use wsfan_shared::store::DynamoStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let config = StoreConfig::from_env()?;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&config::aws().await),
        &config.table_name,
        config.retention,
    );
    let (store, retention) = (&store, &config.retention);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(ws_message::handle(store, retention, event.payload).await)
    }))
    .await
}
