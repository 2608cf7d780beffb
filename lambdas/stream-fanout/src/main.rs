use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::broadcaster::Broadcaster;
use wsfan_shared::cadence::Cadence;

// One thread: Lambda gives a function below 1,769 MB one vCPU, and the broadcaster's posts are
// cheapest when they never hop between threads (BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let (store, broadcaster) = Broadcaster::from_env().await?;
    let failures = wsfan_shared::publisher::FailureQueue::from_env().await?;
    let shards = wsfan_shared::publisher::DeliveryQueue::from_env().await?;
    let cadence = std::sync::Mutex::new(Cadence::new(wsfan_shared::config::coalesce_window_from_env()?));
    let (store, broadcaster, failures, shards, cadence) = (&store, &broadcaster, &failures, &shards, &cadence);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        let deadline = event.context.deadline;
        let bounds = stream_fanout::Bounds {
            stop_at: Some(stream_fanout::stop_at(deadline)),
            cut_at: Some(stream_fanout::cut_at(deadline)),
            cadence: Some(cadence),
        };
        Ok::<_, Error>(stream_fanout::handle_until(store, broadcaster, failures, shards, event.payload, bounds).await)
    }))
    .await
}
