use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::config::FromEnv;
use wsfan_shared::publisher::ChannelPublisher;
use wsfan_shared::store::DynamoStore;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let table = publish::Config::from_env()?;
    let store = DynamoStore::open(&wsfan_shared::config::aws().await, table);
    let retention = *store.retention();
    let publisher = ChannelPublisher::new(store, retention);
    let publisher = &publisher;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(publish::handle(publisher, event.payload).await)
    }))
    .await
}
