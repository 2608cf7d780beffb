//! Batch processing for the event-driven fanouts: records with the same key (a channel, a
//! document) run one after another in batch order; different keys run concurrently. Once a record
//! fails, the later records of its key are not attempted, so a retry that starts from the failed
//! record replays them in order instead of having delivered them ahead of it.

use std::collections::HashMap;
use std::hash::Hash;

use futures::stream::{self, StreamExt};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<O, E> {
    Done(O),
    Failed(E),
    /// Not attempted: an earlier record with the same key failed.
    Blocked,
}

impl<O, E> Outcome<O, E> {
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Done(_))
    }
}

/// The items of each key, in their order, the keys in the order they first appear.
pub fn by_key<K: Hash + Eq + Clone, T>(items: impl IntoIterator<Item = (K, T)>) -> Vec<(K, Vec<T>)> {
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    let mut group_of: HashMap<K, usize> = HashMap::new();
    for (key, item) in items {
        let index = *group_of.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[index].1.push(item);
    }
    groups
}

/// Runs `work` over `items`, in order per key and concurrently across keys (at most
/// `concurrency` keys at once). Returns every item with its outcome.
pub async fn in_key_order<K, T, O, E, F>(items: Vec<(K, T)>, concurrency: usize, work: F) -> Vec<(T, Outcome<O, E>)>
where
    K: Hash + Eq + Clone,
    F: AsyncFn(&T) -> Result<O, E>,
{
    let groups = by_key(items).into_iter().map(|(_, group)| group);
    let work = &work;
    let done: Vec<Vec<(T, Outcome<O, E>)>> = stream::iter(groups)
        .map(|group| async move {
            let mut out = Vec::with_capacity(group.len());
            let mut blocked = false;
            for item in group {
                let outcome = if blocked {
                    Outcome::Blocked
                } else {
                    match work(&item).await {
                        Ok(o) => Outcome::Done(o),
                        Err(e) => {
                            blocked = true;
                            Outcome::Failed(e)
                        }
                    }
                };
                out.push((item, outcome));
            }
            out
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    done.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_run_in_order_and_a_failure_blocks_the_rest_of_its_key() {
        let items = vec![("a", 1), ("b", 2), ("a", 3), ("a", 4), ("b", 5)];
        let out = in_key_order(
            items,
            4,
            async |n: &i32| if *n == 3 { Err("three") } else { Ok(n * 10) },
        )
        .await;
        let mut by_item: Vec<_> = out.into_iter().collect();
        by_item.sort_by_key(|(n, _)| *n);
        assert_eq!(
            by_item,
            vec![
                (1, Outcome::Done(10)),
                (2, Outcome::Done(20)),
                (3, Outcome::Failed("three")),
                (4, Outcome::Blocked),
                (5, Outcome::Done(50)),
            ]
        );
    }
}
