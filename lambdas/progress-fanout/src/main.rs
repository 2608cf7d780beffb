use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::broadcaster::Broadcaster;

// One thread: Lambda gives a function below 1,769 MB one vCPU, and the broadcaster's posts are
// cheapest when they never hop between threads (BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let (store, broadcaster) = Broadcaster::from_env().await?;
    let shards = wsfan_shared::publisher::DeliveryQueue::from_env().await?;
    let (store, broadcaster, shards) = (&store, &broadcaster, &shards);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(progress_fanout::handle(store, broadcaster, shards, event.payload).await)
    }))
    .await
}
