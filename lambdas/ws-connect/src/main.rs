use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::config::FromEnv;
use wsfan_shared::store::DynamoStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let table = ws_connect::Config::from_env()?;
    let store = DynamoStore::open(&wsfan_shared::config::aws().await, table);
    let store = &store;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(ws_connect::handle(store, store.retention(), event.payload).await)
    }))
    .await
}
