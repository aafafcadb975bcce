//! Settings from the environment and the AWS SDK clients, built once per process (Lambda init).

use std::time::Duration;

use aws_config::{BehaviorVersion, retry::RetryConfig, timeout::TimeoutConfig};
use twochan_domain::{DomainError, crypto::IssuerKeys};

/// Pending lifetime of a payment when `PENDING_TTL_SECONDS` is not set.
pub const DEFAULT_PENDING_TTL_SECONDS: i64 = 120;

/// The SDK clients every function shares.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    /// What they were built from, for a client needed once at init (SSM).
    pub config: aws_config::SdkConfig,
}

impl AwsClients {
    /// Loads region, credentials and endpoint (`AWS_ENDPOINT_URL`) the standard way, with
    /// [`sdk_defaults`]' timeouts and retries.
    pub async fn from_env() -> Self {
        Self::from_config(&sdk_defaults().load().await)
    }

    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            config: config.clone(),
        }
    }
}

/// The SDK settings of every function, before region, credentials and endpoint are resolved.
///
/// Timeouts fit a POS waiting on a checkout: a DynamoDB call normally takes single-digit
/// milliseconds, so an attempt that has not answered in 2 s is retried (3 attempts, standard
/// back-off) and the whole call is abandoned after 6 s, well inside the functions' timeout. A
/// refused connection (the service down) fails each attempt at once, so the caller has its 503
/// within about a second.
pub fn sdk_defaults() -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_attempt_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(6))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3))
}

/// What a function reads from its environment at init.
#[derive(Debug, Clone)]
pub struct Settings {
    pub table_name: String,
    pub settlement_queue_url: Option<String>,
    /// `ISSUER_MASTER_KEY`: the keys themselves (local cloud, `cargo lambda watch`).
    pub issuer_keys: Option<IssuerKeys>,
    /// `ISSUER_MASTER_KEY_PARAMETER`: an SSM SecureString holding them (AWS); wins when set.
    pub issuer_keys_parameter: Option<String>,
    pub pending_ttl_seconds: i64,
}

/// An optional integer setting within `range`; anything else is a configuration error.
fn bounded(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, DomainError> {
    match get(name).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                DomainError::Internal(format!(
                    "{name} must be {}..={}",
                    range.start(),
                    range.end()
                ))
            }),
    }
}

impl Settings {
    pub fn from_env() -> Result<Self, DomainError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, DomainError> {
        let table_name = get("TABLE_NAME")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| DomainError::Internal("TABLE_NAME is not set".into()))?;
        let issuer_keys = get("ISSUER_MASTER_KEY")
            .filter(|s| !s.is_empty())
            .map(|k| IssuerKeys::parse(&k))
            .transpose()?;
        let pending_ttl_seconds = bounded(
            &get,
            "PENDING_TTL_SECONDS",
            DEFAULT_PENDING_TTL_SECONDS,
            1..=86_400,
        )?;
        Ok(Self {
            table_name,
            settlement_queue_url: get("SETTLEMENT_QUEUE_URL").filter(|s| !s.is_empty()),
            issuer_keys,
            issuer_keys_parameter: get("ISSUER_MASTER_KEY_PARAMETER").filter(|s| !s.is_empty()),
            pending_ttl_seconds,
        })
    }

    pub fn require_queue_url(&self) -> Result<String, DomainError> {
        self.settlement_queue_url
            .clone()
            .ok_or_else(|| DomainError::Internal("SETTLEMENT_QUEUE_URL is not set".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_and_validation() {
        let s = Settings::from_lookup(lookup(&[("TABLE_NAME", "t")])).unwrap();
        assert_eq!(s.pending_ttl_seconds, 120);
        assert!(s.issuer_keys.is_none() && s.issuer_keys_parameter.is_none());
        assert!(Settings::from_lookup(lookup(&[])).is_err());
        let s = Settings::from_lookup(lookup(&[("TABLE_NAME", "t"), ("PENDING_TTL_SECONDS", "3")]))
            .unwrap();
        assert_eq!(s.pending_ttl_seconds, 3);
        assert!(
            Settings::from_lookup(lookup(&[("TABLE_NAME", "t"), ("PENDING_TTL_SECONDS", "0")]))
                .is_err()
        );
        assert!(
            Settings::from_lookup(lookup(&[("TABLE_NAME", "t"), ("ISSUER_MASTER_KEY", "xx")]))
                .is_err()
        );
    }
}
