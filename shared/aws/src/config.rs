//! Settings from the environment and the AWS SDK clients, built once per process (Lambda init).

use std::time::Duration;

use aws_credential_types::{Credentials, provider::SharedCredentialsProvider};
use aws_smithy_http_client::{
    Builder as HttpClientBuilder,
    tls::{Provider, rustls_provider::CryptoMode},
};
use aws_smithy_types::{retry::RetryConfig, timeout::TimeoutConfig};
use aws_types::{SdkConfig, region::Region, sdk_config::SharedHttpClient};
use twochan_domain::crypto::IssuerKeys;

/// Pending lifetime of a payment when `PENDING_TTL_SECONDS` is not set.
pub const DEFAULT_PENDING_TTL_SECONDS: i64 = 120;

/// Why a function cannot start: its environment or its parameters. Raised at init only, so the
/// Lambda runtime reports it as an init error; no request ever sees it. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(String),
    #[error("{name} {rule}")]
    Invalid { name: String, rule: String },
    /// The SSM parameter that holds a setting could not be read.
    #[error("SSM parameter {name}: {detail}")]
    Parameter { name: String, detail: String },
}

impl ConfigError {
    fn invalid(name: &str, rule: impl Into<String>) -> Self {
        Self::Invalid {
            name: name.into(),
            rule: rule.into(),
        }
    }
}

/// Issuer master keys as configured (`ISSUER_MASTER_KEY`, or the SSM parameter `name`).
pub(crate) fn parse_issuer_keys(name: &str, value: &str) -> Result<IssuerKeys, ConfigError> {
    // The domain's error is not shown: its text is written for the environment variable.
    IssuerKeys::parse(value).map_err(|_| {
        ConfigError::invalid(
            name,
            format!(
                "must be 1 to {} comma-separated keys of 64 hex characters",
                IssuerKeys::MAX_GENERATIONS
            ),
        )
    })
}

/// The SDK clients every function shares.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    /// What they were built from, for a client needed once at init (SSM).
    pub config: SdkConfig,
}

impl AwsClients {
    /// A function's clients, from the environment Lambda gives it (see [`lambda_config`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self::from_config(&lambda_config(&|k| {
            std::env::var(k).ok()
        })?))
    }

    /// Region, credentials and endpoint from the standard provider chains (environment,
    /// profiles, SSO, ...), with the functions' timeouts, retries and HTTP client: for the tools.
    #[cfg(feature = "loader")]
    pub async fn load() -> Self {
        Self::from_config(&sdk_defaults().load().await)
    }

    pub fn from_config(config: &SdkConfig) -> Self {
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            config: config.clone(),
        }
    }
}

/// Timeouts fit a POS waiting on a checkout: a DynamoDB call normally takes single-digit
/// milliseconds, so an attempt that has not answered in 2 s is retried (3 attempts, standard
/// back-off) and the whole call is abandoned after 6 s, well inside the functions' timeout. A
/// refused connection (the service down) fails each attempt at once, so the caller has its 503
/// within about a second.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(1))
        .operation_attempt_timeout(Duration::from_secs(2))
        .operation_timeout(Duration::from_secs(6))
        .build()
}

pub fn retries() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(3)
}

/// HTTPS with rustls on ring: what the SDK's default client does, with a smaller crypto library
/// that gathers no jitter entropy at init.
pub fn http_client() -> SharedHttpClient {
    HttpClientBuilder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The SDK configuration of a function, from what Lambda puts in its environment: `AWS_REGION`,
/// the execution role's `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`,
/// and `AWS_ENDPOINT_URL` on an emulator. No provider chain: nothing else could answer there,
/// and the chains (profiles, SSO, STS, IMDS) would weigh on every bootstrap's size
/// (docs/PERFORMANCE.md, "6. Size and memory").
pub fn lambda_config(get: &dyn Fn(&str) -> Option<String>) -> Result<SdkConfig, ConfigError> {
    let var = |k: &str| get(k).filter(|v| !v.is_empty());
    let need = |k: &str| var(k).ok_or_else(|| ConfigError::Missing(k.into()));
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .ok_or_else(|| ConfigError::Missing("AWS_REGION".into()))?;
    let credentials = Credentials::new(
        need("AWS_ACCESS_KEY_ID")?,
        need("AWS_SECRET_ACCESS_KEY")?,
        var("AWS_SESSION_TOKEN"),
        None,
        "lambda-environment",
    );
    let mut config = SdkConfig::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .timeout_config(timeouts())
        .retry_config(retries())
        .http_client(http_client());
    if let Some(url) = var("AWS_ENDPOINT_URL") {
        config = config.endpoint_url(url);
    }
    Ok(config.build())
}

/// The standard loader with the functions' timeouts, retries and HTTP client (tools, tests).
#[cfg(feature = "loader")]
pub fn sdk_defaults() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts())
        .retry_config(retries())
        .http_client(http_client())
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
    /// `WEBHOOK_QUEUE_URL`: where the events of payment changes go.
    pub webhook_queue_url: Option<String>,
    /// `WEBHOOK_RETRY_BASE_SECONDS`: the first retry delay of an undelivered event (then doubled).
    pub webhook_retry_base_seconds: i64,
    /// `WEBHOOK_MAX_RECEIVES`: the event queue's redrive count; the last failed try is not delayed.
    pub webhook_max_receives: i64,
    /// `ALLOW_LOOPBACK_WEBHOOKS=1`: `http://127.0.0.1:<port>/...` endpoints (the local stack only).
    pub allow_loopback_webhooks: bool,
}

/// An optional integer setting within `range` (`default` when unset or blank); anything else
/// is a configuration error. `get` reads the environment (`std::env::var`) in a function.
pub fn bounded_setting(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, ConfigError> {
    match get(name)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
    {
        None => Ok(default),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ConfigError::invalid(
                    name,
                    format!("must be {}..={}, not {s:?}", range.start(), range.end()),
                )
            }),
    }
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let table_name = get("TABLE_NAME")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConfigError::Missing("TABLE_NAME".into()))?;
        let issuer_keys = get("ISSUER_MASTER_KEY")
            .filter(|s| !s.is_empty())
            .map(|k| parse_issuer_keys("ISSUER_MASTER_KEY", &k))
            .transpose()?;
        let pending_ttl_seconds = bounded_setting(
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
            webhook_queue_url: get("WEBHOOK_QUEUE_URL").filter(|s| !s.is_empty()),
            webhook_retry_base_seconds: bounded_setting(
                &get,
                "WEBHOOK_RETRY_BASE_SECONDS",
                60,
                1..=3600,
            )?,
            webhook_max_receives: bounded_setting(&get, "WEBHOOK_MAX_RECEIVES", 14, 2..=1000)?,
            allow_loopback_webhooks: get("ALLOW_LOOPBACK_WEBHOOKS").is_some_and(|v| v == "1"),
        })
    }

    pub fn require_webhook_queue_url(&self) -> Result<String, ConfigError> {
        self.webhook_queue_url
            .clone()
            .ok_or_else(|| ConfigError::Missing("WEBHOOK_QUEUE_URL".into()))
    }

    pub fn require_queue_url(&self) -> Result<String, ConfigError> {
        self.settlement_queue_url
            .clone()
            .ok_or_else(|| ConfigError::Missing("SETTLEMENT_QUEUE_URL".into()))
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
    fn the_lambda_environment_makes_the_sdk_config() {
        let env = [
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "token"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        ];
        let config = lambda_config(&lookup(&env)).unwrap();
        assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:4566"));
        assert!(config.credentials_provider().is_some() && config.http_client().is_some());
        assert_eq!(
            config.timeout_config().and_then(|t| t.operation_timeout()),
            Some(Duration::from_secs(6))
        );
        // Without credentials or a region a function must not start.
        assert!(lambda_config(&lookup(&env[1..])).is_err());
        assert!(lambda_config(&lookup(&env[..2])).is_err());
        assert!(
            lambda_config(&lookup(&env[..3]))
                .unwrap()
                .endpoint_url()
                .is_none()
        );
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

    #[test]
    fn configuration_errors_name_the_setting_and_not_the_secret() {
        assert_eq!(
            Settings::from_lookup(lookup(&[])).unwrap_err().to_string(),
            "TABLE_NAME is not set"
        );
        let secret = "not-hex-secret";
        let e = Settings::from_lookup(lookup(&[
            ("TABLE_NAME", "t"),
            ("ISSUER_MASTER_KEY", secret),
        ]))
        .unwrap_err();
        assert!(
            e.to_string().starts_with("ISSUER_MASTER_KEY must be"),
            "{e}"
        );
        assert!(!format!("{e} {e:?}").contains(secret), "{e:?}");
        let e = Settings::from_lookup(lookup(&[
            ("TABLE_NAME", "t"),
            ("WEBHOOK_MAX_RECEIVES", "1"),
        ]))
        .unwrap_err();
        assert_eq!(
            e,
            ConfigError::invalid("WEBHOOK_MAX_RECEIVES", "must be 2..=1000, not \"1\"")
        );
        let s = Settings::from_lookup(lookup(&[("TABLE_NAME", "t")])).unwrap();
        assert_eq!(
            s.require_queue_url().unwrap_err(),
            ConfigError::Missing("SETTLEMENT_QUEUE_URL".into())
        );
        assert_eq!(
            bounded_setting(&lookup(&[("X", " 60 ")]), "X", 5, 1..=100).unwrap(),
            60
        );
        assert_eq!(
            bounded_setting(&lookup(&[("X", "")]), "X", 5, 1..=100).unwrap(),
            5
        );
    }
}
