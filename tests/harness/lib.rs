//! The test harness: a real moto server on loopback (started once per test binary from the
//! project's venv), a fresh table per test, and the fixtures in `events/`.

pub mod moto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aws_sdk_dynamodb::types::AttributeValue;
use serde::de::DeserializeOwned;
use wsfan_shared::config::Retention;
use wsfan_shared::store::{DynamoStore, Item};
use wsfan_shared::table::TABLE;

pub use moto::Moto;

/// The HS256 secret the fixtures' tokens are signed with. For local use only.
pub const DEV_SECRET: &str = "wsfan-local-dev-secret";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repo")
        .to_path_buf()
}

/// Reads `events/<path>.json` as the event type a handler takes.
pub fn fixture<T: DeserializeOwned>(path: &str) -> T {
    let file = repo_root().join("events").join(format!("{path}.json"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not a valid event: {e}", file.display()))
}

/// Every fixture path under `events/<function>/`, without the `.json`.
pub fn fixtures_of(function: &str) -> Vec<String> {
    let dir = repo_root().join("events").join(function);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".json")
                .map(|n| format!("{function}/{n}"))
        })
        .collect();
    names.sort();
    names
}

/// A table of its own for one test, on the shared moto server.
pub struct TestTable {
    pub client: aws_sdk_dynamodb::Client,
    pub name: String,
    pub stream_arn: String,
    pub store: DynamoStore,
}

impl TestTable {
    pub async fn new() -> Self {
        Self::with_retention(Retention::default()).await
    }

    pub async fn with_retention(retention: Retention) -> Self {
        let moto = Moto::shared();
        let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
        let name = format!("wsfan-test-{}", ulid::Ulid::generate().to_string().to_lowercase());
        let stream_arn = TABLE.create(&client, &name).await.expect("creating the test table");
        let store = DynamoStore::new(client.clone(), &name, retention);
        TestTable {
            client,
            name,
            stream_arn,
            store,
        }
    }

    /// Every item in the table, sorted by key, for before/after comparisons.
    pub async fn items(&self) -> Vec<Item> {
        let mut items: Vec<Item> = self
            .client
            .scan()
            .table_name(&self.name)
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .expect("scanning the test table");
        items.sort_by_key(|i| (s(i, "pk").to_owned(), s(i, "sk").to_owned()));
        items
    }

    /// The items whose partition key is `pk`, as (sk, item).
    pub async fn partition(&self, pk: &str) -> Vec<(String, Item)> {
        self.items()
            .await
            .into_iter()
            .filter(|i| s(i, "pk") == pk)
            .map(|i| (s(&i, "sk").to_owned(), i))
            .collect()
    }

    pub async fn item(&self, pk: &str, sk: &str) -> Option<Item> {
        self.client
            .get_item()
            .table_name(&self.name)
            .key("pk", AttributeValue::S(pk.into()))
            .key("sk", AttributeValue::S(sk.into()))
            .consistent_read(true)
            .send()
            .await
            .expect("get_item")
            .item
    }

    pub async fn put(&self, item: HashMap<String, AttributeValue>) {
        self.client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
            .send()
            .await
            .expect("put_item");
    }
}

/// A string attribute, or "" when absent.
pub fn s<'a>(item: &'a Item, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .unwrap_or("")
}

/// A number attribute.
pub fn n(item: &Item, name: &str) -> i64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {item:?}"))
}
