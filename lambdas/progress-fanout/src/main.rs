use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::broadcaster::Broadcaster;
use wsfan_shared::config::FromEnv;
use wsfan_shared::publisher::DeliveryQueue;
use wsfan_shared::store::DynamoStore;

// One thread: Lambda gives a function below 1,769 MB one vCPU, and the broadcaster's posts are
// cheapest when they never hop between threads (BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let (table, posts, shards) = progress_fanout::Config::from_env()?;
    let aws = wsfan_shared::config::aws().await;
    let store = DynamoStore::open(&aws, table);
    let broadcaster = Broadcaster::governed(&aws, posts, &store);
    let shards = DeliveryQueue::connect(&aws, shards);
    let (store, broadcaster, shards) = (&store, &broadcaster, &shards);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(progress_fanout::handle(store, broadcaster, shards, event.payload).await)
    }))
    .await
}
