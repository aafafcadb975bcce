//! The conformance suite of `twochan-memory` against `DynamoStore` on the emulator: the
//! in-memory store the fast race tests of `shared/api/tests` run on answers as the adapter does.
//! A table of its own, as the suite's sweeper check scans the whole table.

use twochan_aws::DynamoStore;
use twochan_domain::{DomainError, ports::StoredResponse};
use twochan_memory::conformance;
use twochan_tools::unique_id;

use crate::common::{Harness, create_table_like};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamo_store_answers_as_the_memory_store_does() {
    let harness = Harness::new().await;
    let table = unique_id("twochan-conformance-");
    create_table_like(&harness.dynamodb, &harness.table, &harness.dynamodb, &table).await;
    let store = DynamoStore::new(harness.dynamodb.clone(), table.clone());
    let kept = StoredResponse::of(&DomainError::DeviceBusy).expect("a final refusal");
    conformance::all(&store, &kept).await;
    harness
        .dynamodb
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .expect("delete the conformance table");
}
