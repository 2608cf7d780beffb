//! The one definition of wsfan's table. Tests and the local stack create the table from it, and
//! the SAM template is checked against it, so the three can never disagree.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;

use crate::model::{PK, SK, TTL_ATTRIBUTE};

/// GSI from a connection to its memberships, for `$disconnect` and 410 cleanup.
pub(crate) const BY_CONNECTION_INDEX: &str = "byConnection";
pub(crate) const BY_CONNECTION_PK: &str = "connectionId";
pub(crate) const BY_CONNECTION_SK: &str = "channel";

/// Everything about the table that code depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub partition_key: &'static str,
    pub sort_key: &'static str,
    pub indexes: &'static [IndexSpec],
    pub ttl_attribute: &'static str,
    pub stream_view: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    pub name: &'static str,
    pub partition_key: &'static str,
    pub sort_key: &'static str,
}

pub const TABLE: TableSpec = TableSpec {
    partition_key: PK,
    sort_key: SK,
    indexes: &[IndexSpec {
        name: BY_CONNECTION_INDEX,
        partition_key: BY_CONNECTION_PK,
        sort_key: BY_CONNECTION_SK,
    }],
    ttl_attribute: TTL_ATTRIBUTE,
    stream_view: "NEW_AND_OLD_IMAGES",
};

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .expect("key schema has both fields")
}

fn string_attribute(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("attribute has both fields")
}

impl TableSpec {
    /// Creates the table (with its stream, GSI and TTL) and waits until it is active.
    /// Returns the stream ARN.
    pub async fn create(&self, client: &Client, table_name: &str) -> Result<String, aws_sdk_dynamodb::Error> {
        let mut attributes = vec![string_attribute(self.partition_key), string_attribute(self.sort_key)];
        let mut request = client
            .create_table()
            .table_name(table_name)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key(self.partition_key, KeyType::Hash))
            .key_schema(key(self.sort_key, KeyType::Range))
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::from(self.stream_view))
                    .build()
                    .expect("stream spec is complete"),
            );
        for index in self.indexes {
            attributes.push(string_attribute(index.partition_key));
            attributes.push(string_attribute(index.sort_key));
            request = request.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(index.name)
                    .key_schema(key(index.partition_key, KeyType::Hash))
                    .key_schema(key(index.sort_key, KeyType::Range))
                    .projection(Projection::builder().projection_type(ProjectionType::All).build())
                    .build()
                    .expect("index is complete"),
            );
        }
        let created = request.set_attribute_definitions(Some(attributes)).send().await?;
        client
            .update_time_to_live()
            .table_name(table_name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(self.ttl_attribute)
                    .build()
                    .expect("ttl spec is complete"),
            )
            .send()
            .await?;
        Ok(created
            .table_description()
            .and_then(|t| t.latest_stream_arn())
            .unwrap_or_default()
            .to_owned())
    }
}
