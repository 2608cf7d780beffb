use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::config::FromEnv;
use wsfan_shared::store::DynamoStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let table = ws_disconnect::Config::from_env()?;
    let store = DynamoStore::open(&wsfan_shared::config::aws().await, table);
    let store = &store;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        let stop_at = ws_disconnect::stop_at(event.context.deadline);
        Ok::<_, Error>(ws_disconnect::handle(store, event.payload, stop_at).await)
    }))
    .await
}
