//! The registration function: a challenge for a device's code, registering the device to a
//! terminal (a new token each time), deregistering it.

use lambda_http::{Body, Request, Response, http::StatusCode};
use twochan_domain::{
    Challenge, DomainError, PaymentStatus, Result, TerminalId, Timestamp, UniqueCode,
    crypto::IssuedSecret,
    ports::{
        Devices, Directory, EventMessage, EventQueue, FinalRefusal, NewRegistration, Payments,
        Registration, RegistrationChallenge, RegistrationKind, StoredResponse, Write,
    },
    webhook::EventType,
};

use super::{App, MAX_RACE_RETRIES, record_log_ids};
use crate::extract::{json_body, optional_terminal, terminal};
use crate::http::{TERMINAL_TOKEN_PREFIX, empty_response, json_response};
use crate::view::{ChallengeView, RegistrationView};

pub(crate) async fn create_challenge<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
) -> Result<Response<Body>>
where
    S: Devices,
{
    let body = json_body(req, &["unique_code"])?;
    let code: UniqueCode = body.field("unique_code")?;
    record_log_ids(&code, None);
    let challenge = RegistrationChallenge::issue(code, Timestamp::now());
    app.store.put_challenge(&challenge).await?;
    tracing::info!(outcome = "challenge_issued");
    Ok(json_response(
        StatusCode::CREATED,
        &ChallengeView {
            unique_code: challenge.unique_code.as_str(),
            challenge: challenge.challenge.as_str(),
            expires_at: challenge.expires_at.to_rfc3339(),
        },
    ))
}

pub(crate) async fn register_device<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
) -> Result<Response<Body>>
where
    S: Directory + Devices,
{
    let caller = optional_terminal(&app.store, req).await?;
    let body = json_body(
        req,
        &[
            "unique_code",
            "terminal_id",
            "challenge",
            "registration_proof",
        ],
    )?;
    let code: UniqueCode = body.field("unique_code")?;
    let terminal: TerminalId = body.field("terminal_id")?;
    let challenge: Challenge = body.field("challenge")?;
    let proof = body.string("registration_proof")?;
    record_log_ids(&code, None);
    // The proof comes first: without the device nobody learns whether a code is registered.
    if !app
        .issuer_keys
        .verify_registration_proof(&code, &terminal, &challenge, proof)
    {
        return Err(DomainError::InvalidRegistrationProof);
    }
    // A valid proof uses its challenge up, whatever the answer: a recorded request cannot be
    // played again, and of concurrent requests with one challenge at most one goes on.
    if app
        .store
        .use_challenge(&challenge, &code, Timestamp::now())
        .await?
        == Write::Conflict
    {
        tracing::warn!(
            security_event = "challenge_refused",
            "registration with a challenge that is unknown, expired, used or another code's"
        );
        return Err(DomainError::InvalidRegistrationProof);
    }
    let authority = caller
        .as_ref()
        .filter(|(session, _)| session.terminal_id == terminal)
        .map(|(_, hash)| hash);
    for _ in 0..MAX_RACE_RETRIES {
        let (seen, terminal_devices) = app.store.device_and_terminal(&code, &terminal).await?;
        let kind = RegistrationKind::decide(
            seen.as_ref(),
            &terminal,
            terminal_devices,
            authority.is_some(),
        )
        .inspect_err(|e| {
            if *e == DomainError::TerminalIdTaken {
                tracing::warn!(
                    security_event = "terminal_id_taken",
                    "registration to a terminal that holds another device, without its token"
                );
            }
        })?;
        let token = IssuedSecret::generate(TERMINAL_TOKEN_PREFIX);
        let registration = Registration {
            terminal_id: terminal.clone(),
            token_hash: token.hash.clone(),
            registered_at: Timestamp::now().truncated_to_second(),
        };
        let write = NewRegistration {
            unique_code: &code,
            seen: seen.as_ref(),
            kind,
            registration: &registration,
            authority,
        };
        if app.store.register(&write).await? == Write::Applied {
            let again = kind == RegistrationKind::Again;
            tracing::info!(outcome = "registered", replaced = again);
            return Ok(json_response(
                if again {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                },
                &RegistrationView {
                    unique_code: code.as_str(),
                    terminal_id: terminal.as_str(),
                    terminal_token: &token.secret,
                    registered_at: registration.registered_at.to_rfc3339(),
                },
            ));
        }
    }
    Err(DomainError::Unavailable("registration kept racing".into()))
}

pub(crate) async fn deregister_device<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
    raw_code: &str,
) -> Result<Response<Body>>
where
    S: Directory + Devices + Payments,
    E: EventQueue,
{
    let session = terminal(&app.store, req).await?;
    let code = UniqueCode::try_from(raw_code).map_err(|_| DomainError::NotFound)?;
    record_log_ids(&code, None);
    for _ in 0..MAX_RACE_RETRIES {
        let device = app
            .store
            .device(&code)
            .await?
            .ok_or(DomainError::NotFound)?;
        match &device.registration {
            Some(r) if r.terminal_id == session.terminal_id => {}
            _ => return Err(DomainError::NotFound),
        }
        // What a payment request that still holds the lock without its payment will answer.
        let abandoned = StoredResponse {
            refusal: FinalRefusal::UnknownDevice,
        };
        let now = Timestamp::now();
        // The pending payment deregistration cancels is announced, before the commit (the
        // consumer drops the event if the payment did not become canceled after all).
        if let Some((held, lapses)) = &device.pending
            && now <= *lapses
            && let Some(p) = app.store.payment(held).await?
            && p.status == PaymentStatus::Pending
        {
            app.events
                .enqueue_event(&EventMessage::payment(EventType::PaymentCanceled, &p, now))
                .await?;
        }
        if app.store.deregister(&device, now, &abandoned).await? == Write::Applied {
            tracing::info!(
                outcome = "deregistered",
                canceled_payment = device.pending.is_some()
            );
            return Ok(empty_response(StatusCode::NO_CONTENT));
        }
    }
    Err(DomainError::Unavailable(
        "deregistration kept racing".into(),
    ))
}
