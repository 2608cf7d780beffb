use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::store::DynamoStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let store = DynamoStore::from_env().await?;
    let store = &store;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        let stop_at = ws_disconnect::stop_at(event.context.deadline);
        Ok::<_, Error>(ws_disconnect::handle(store, event.payload, stop_at).await)
    }))
    .await
}
