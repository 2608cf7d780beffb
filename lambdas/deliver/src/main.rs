use deliver::ReadBudget;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::broadcaster::Broadcaster;
use wsfan_shared::config::FromEnv;
use wsfan_shared::publisher::DeliveryQueue;
use wsfan_shared::store::DynamoStore;

// One thread, as the other fanouts: posts are cheapest when they never hop between threads.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let (table, posts, shards, parked) = deliver::Config::from_env()?;
    let aws = wsfan_shared::config::aws().await;
    let store = DynamoStore::open(&aws, table);
    let broadcaster = Broadcaster::governed(&aws, posts, &store);
    let queue = DeliveryQueue::connect(&aws, shards).parking_in(parked);
    let (store, broadcaster, queue) = (&store, &broadcaster, &queue);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        let budget = ReadBudget::from_deadline_ms(event.context.deadline);
        Ok::<_, Error>(deliver::handle(store, broadcaster, queue, event.payload, budget).await)
    }))
    .await
}
