//! The issuer master keys, read once at init: from SSM Parameter Store on AWS, from the
//! environment on the local cloud. Never logged: errors name the parameter, not its value.

use aws_sdk_ssm::error::DisplayErrorContext;
use twochan_domain::crypto::IssuerKeys;

use crate::Settings;
use crate::config::{ConfigError, parse_issuer_keys};

/// `ISSUER_MASTER_KEY_PARAMETER` (a SecureString, decrypted by SSM with its KMS key) when set,
/// else `ISSUER_MASTER_KEY`. A function that verifies device codes cannot start without one.
pub async fn issuer_keys(
    settings: &Settings,
    config: &aws_types::SdkConfig,
) -> Result<IssuerKeys, ConfigError> {
    let Some(name) = &settings.issuer_keys_parameter else {
        return settings.issuer_keys.clone().ok_or_else(|| {
            ConfigError::Missing("ISSUER_MASTER_KEY_PARAMETER or ISSUER_MASTER_KEY".into())
        });
    };
    let out = aws_sdk_ssm::Client::new(config)
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| ConfigError::Parameter {
            name: name.clone(),
            detail: DisplayErrorContext(&e).to_string(),
        })?;
    let value = out
        .parameter
        .and_then(|p| p.value)
        .ok_or_else(|| ConfigError::Parameter {
            name: name.clone(),
            detail: "it has no value".into(),
        })?;
    parse_issuer_keys(&format!("SSM parameter {name}"), &value)
}
