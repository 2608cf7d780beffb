use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::broadcaster::Broadcaster;

// One thread: Lambda gives a function below 1,769 MB one vCPU, and the broadcaster's posts are
// cheapest when they never hop between threads (BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let (store, broadcaster) = Broadcaster::from_env().await?;
    let failures = wsfan_shared::publisher::FailureQueue::from_env().await?;
    let shards = wsfan_shared::publisher::DeliveryQueue::from_env().await?;
    let (store, broadcaster, failures, shards) = (&store, &broadcaster, &failures, &shards);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        let deadline = event.context.deadline;
        let (stop_at, cut_at) = (stream_fanout::stop_at(deadline), stream_fanout::cut_at(deadline));
        let batch = event.payload;
        Ok::<_, Error>(
            stream_fanout::handle_until(store, broadcaster, failures, shards, batch, Some(stop_at), Some(cut_at)).await,
        )
    }))
    .await
}
