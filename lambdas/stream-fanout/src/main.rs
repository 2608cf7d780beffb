use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::broadcaster::Broadcaster;
use wsfan_shared::cadence::Cadence;
use wsfan_shared::config::FromEnv;
use wsfan_shared::publisher::{DeliveryQueue, FailureQueue};
use wsfan_shared::store::DynamoStore;

// One thread: Lambda gives a function below 1,769 MB one vCPU, and the broadcaster's posts are
// cheapest when they never hop between threads (BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let (table, posts, failures, shards, window) = stream_fanout::Config::from_env()?;
    let aws = wsfan_shared::config::aws().await;
    let store = DynamoStore::open(&aws, table);
    let broadcaster = Broadcaster::governed(&aws, posts, &store);
    let failures = FailureQueue::connect(&aws, failures);
    let shards = DeliveryQueue::connect(&aws, shards);
    let cadence = std::sync::Mutex::new(Cadence::new(window.0));
    let (store, broadcaster, failures, shards, cadence) = (&store, &broadcaster, &failures, &shards, &cadence);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        let bounds = stream_fanout::Bounds::of_invocation(event.context.deadline, cadence);
        Ok::<_, Error>(stream_fanout::handle_until(store, broadcaster, failures, shards, event.payload, bounds).await)
    }))
    .await
}
