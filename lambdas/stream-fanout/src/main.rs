use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::broadcaster::Broadcaster;

#[tokio::main]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let (store, broadcaster) = Broadcaster::from_env().await?;
    let (store, broadcaster) = (&store, &broadcaster);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(stream_fanout::handle(store, broadcaster, event.payload).await)
    }))
    .await
}
