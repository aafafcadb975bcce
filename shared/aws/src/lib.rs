//! AWS adapters for the ports of `twochan-domain`: DynamoDB for state and the ledger, SQS for
//! settlement. SDK clients find an emulator through `AWS_ENDPOINT_URL` alone; there is no
//! endpoint-specific code path.

pub mod config;
pub mod dynamo;
#[cfg(feature = "failpoints")]
pub mod failpoints;
mod items;
pub mod secrets;
pub mod sqs;
pub mod webhook_sender;

#[cfg(feature = "loader")]
pub use config::sdk_defaults;
pub use config::{AwsClients, Settings, http_client, lambda_config, retries, timeouts};
pub use dynamo::DynamoStore;
pub use sqs::{SqsEventQueue, SqsSettlementQueue};
