//! The integration tests against the local stack (`make up`), one module per area, all in one
//! binary so that the AWS SDK is linked once. One area alone:
//! `cargo test -p integration-tests --test integration sim::`.
//!
//! Every test runs alongside the others (`--test-threads=8`): each makes its own merchants,
//! devices, queues and tables, and the conflict races count refusals on a proxy of their own, so
//! no test needs the stack to itself.

mod attacks;
mod common;
mod concurrency;
mod confirmation;
mod conflict_layer;
mod conflicts;
mod cost;
mod dependency_down;
mod dynamo_conditions;
mod iam;
mod logs;
mod outage;
mod payments;
mod refunds_and_webhooks;
mod registration;
mod settlement;
mod sim;
mod store_conformance;
mod sweeper;
