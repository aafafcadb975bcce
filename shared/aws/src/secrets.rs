//! The issuer master keys, read once at init: from SSM Parameter Store on AWS, from the
//! environment on the local cloud. Never logged: errors name the parameter, not its value.

use aws_sdk_ssm::error::DisplayErrorContext;
use twochan_domain::{DomainError, crypto::IssuerKeys};

use crate::Settings;

/// `ISSUER_MASTER_KEY_PARAMETER` (a SecureString, decrypted by SSM with its KMS key) when set,
/// else `ISSUER_MASTER_KEY`. A function that verifies device codes cannot start without one.
pub async fn issuer_keys(
    settings: &Settings,
    config: &aws_types::SdkConfig,
) -> Result<IssuerKeys, DomainError> {
    let Some(name) = &settings.issuer_keys_parameter else {
        return settings.issuer_keys.clone().ok_or_else(|| {
            DomainError::Internal(
                "neither ISSUER_MASTER_KEY_PARAMETER nor ISSUER_MASTER_KEY is set".into(),
            )
        });
    };
    let out = aws_sdk_ssm::Client::new(config)
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| {
            DomainError::Internal(format!(
                "reading SSM parameter {name}: {}",
                DisplayErrorContext(&e)
            ))
        })?;
    let value = out
        .parameter
        .and_then(|p| p.value)
        .ok_or_else(|| DomainError::Internal(format!("SSM parameter {name} has no value")))?;
    IssuerKeys::parse(&value)
        .map_err(|_| DomainError::Internal(format!("SSM parameter {name} is not hex keys")))
}
