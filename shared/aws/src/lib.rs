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
pub use config::{
    AwsClients, ConfigError, Settings, http_client, lambda_config, retries, timeouts,
};
pub use dynamo::DynamoStore;
pub use sqs::{SqsEventQueue, SqsSettlementQueue};
pub use webhook_sender::tls_config;

/// The table's key spellings, for tests and tools that read or place items directly.
pub mod keys {
    pub use crate::items::{
        BALANCE_PREFIX, REJECTED_AT, SK_DEVICE, SK_MERCHANT, SK_PAYMENT, SK_REFUND, SK_TERMINAL,
        SK_TOKEN, balance_sk, device_pk, merchant_pk, payment_pk, refund_slot_pk, slot_pk,
        terminal_pk, token_pk,
    };
}
