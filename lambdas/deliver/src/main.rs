use deliver::ReadBudget;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use wsfan_shared::broadcaster::Broadcaster;

// One thread, as the other fanouts: posts are cheapest when they never hop between threads.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    wsfan_shared::telemetry::init();
    let (store, broadcaster) = Broadcaster::from_env().await?;
    let queue = wsfan_shared::publisher::DeliveryQueue::from_env().await?;
    let (store, broadcaster, queue) = (&store, &broadcaster, &queue);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        let budget = ReadBudget::from_deadline_ms(event.context.deadline);
        Ok::<_, Error>(deliver::handle(store, broadcaster, queue, event.payload, budget).await)
    }))
    .await
}
