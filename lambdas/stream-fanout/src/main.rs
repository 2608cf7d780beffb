use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::broadcaster::{BroadcastConfig, Broadcaster};
use wsfan_shared::config::{self, StoreConfig};
use wsfan_shared::store::DynamoStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let config = StoreConfig::from_env()?;
    let sdk = config::aws().await;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &config.table_name,
        config.retention,
    );
    let broadcaster = Broadcaster::new(&sdk, BroadcastConfig::from_env()?, store.clone());
    let (store, broadcaster) = (&store, &broadcaster);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(stream_fanout::handle(store, broadcaster, event.payload).await)
    }))
    .await
}
