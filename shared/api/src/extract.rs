//! What a use case reads from its request: the caller its bearer authenticates, the JSON body,
//! the payment id in the path and the `Idempotency-Key` header. Each refusal is the contract's
//! error for that part (401, 413/415/400, 404, 400).

use lambda_http::Request;
use twochan_domain::{
    DomainError, IdempotencyKey, MerchantId, Payment, PaymentId, Result, TerminalId,
    crypto::SecretHash,
    ports::{Directory, TerminalSession},
};

use crate::http::{BearerKind, JsonBody, bearer, body_bytes, require_json};

/// The merchant whose API key is the bearer.
pub(crate) async fn merchant<S: Directory>(store: &S, req: &Request) -> Result<MerchantId> {
    match bearer(req.headers())? {
        (BearerKind::MerchantKey, hash) => store
            .merchant_for_key(&hash)
            .await?
            .ok_or(DomainError::Unauthorized),
        _ => Err(DomainError::Unauthorized),
    }
}

/// The phone whose terminal token is the bearer.
pub(crate) async fn terminal<S: Directory>(store: &S, req: &Request) -> Result<TerminalSession> {
    match bearer(req.headers())? {
        (BearerKind::TerminalToken, hash) => store
            .session_for_token(&hash)
            .await?
            .ok_or(DomainError::Unauthorized),
        _ => Err(DomainError::Unauthorized),
    }
}

/// The merchant or the phone a bearer authenticates (its kind says which).
pub(crate) async fn caller<S: Directory>(store: &S, req: &Request) -> Result<Owner> {
    Ok(match bearer(req.headers())?.0 {
        BearerKind::MerchantKey => Owner::Merchant(merchant(store, req).await?),
        BearerKind::TerminalToken => Owner::Terminal(terminal(store, req).await?.terminal_id),
    })
}

/// The terminal a registration's optional bearer acts for: none without one, 401 for an
/// unknown or malformed one (a merchant key included).
pub(crate) async fn optional_terminal<S: Directory>(
    store: &S,
    req: &Request,
) -> Result<Option<(TerminalSession, SecretHash)>> {
    if !req
        .headers()
        .contains_key(lambda_http::http::header::AUTHORIZATION)
    {
        return Ok(None);
    }
    match bearer(req.headers())? {
        (BearerKind::TerminalToken, hash) => {
            let session = store
                .session_for_token(&hash)
                .await?
                .ok_or(DomainError::Unauthorized)?;
            Ok(Some((session, hash)))
        }
        _ => Err(DomainError::Unauthorized),
    }
}

/// Who may see and act on a payment: its merchant, or the terminal its device was registered to.
pub(crate) enum Owner {
    Merchant(MerchantId),
    Terminal(TerminalId),
}

impl Owner {
    pub(crate) fn owns(&self, p: &Payment) -> bool {
        match self {
            Owner::Merchant(m) => p.merchant_id == *m,
            Owner::Terminal(t) => p.terminal_id == *t,
        }
    }
}

/// A JSON body: size, then media type, then shape.
pub(crate) fn json_body(req: &Request, fields: &[&str]) -> Result<JsonBody> {
    let bytes = body_bytes(req)?;
    require_json(req.headers())?;
    JsonBody::from_bytes(bytes, fields)
}

/// A payment id from the path; one that cannot exist is simply not found.
pub(crate) fn path_payment_id(raw: &str) -> Result<PaymentId> {
    PaymentId::try_from(raw).map_err(|_| DomainError::NotFound)
}

/// The `Idempotency-Key` header (400 when missing or malformed).
pub(crate) fn idempotency_key(req: &Request) -> Result<IdempotencyKey> {
    req.headers()
        .get("idempotency-key")
        .ok_or_else(|| DomainError::invalid("Idempotency-Key", "header is required"))?
        .to_str()
        .map_err(|_| DomainError::invalid("Idempotency-Key", "header must be printable ASCII"))
        .and_then(IdempotencyKey::try_from)
}
