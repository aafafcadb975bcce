//! Devices, their registration to a terminal (a phone), and the rules that decide one.

use crate::Timestamp;
use crate::crypto::SecretHash;
use crate::error::{DomainError, Result};
use crate::ids::{Challenge, Counter, PaymentId, TerminalId, UniqueCode};
use crate::payment::{DEVICE_LOCKOUT_SECONDS, DEVICE_MAX_FAILURES};

/// A device as the server knows it. The record outlives registrations: it keeps the counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub unique_code: UniqueCode,
    pub registration: Option<Registration>,
    pub last_counter: Counter,
    /// The payment holding the one-pending-per-code lock, and when that lock lapses.
    pub pending: Option<(PaymentId, Timestamp)>,
    /// Wrong auth codes in a row, across payments; reset by an accepted confirmation.
    pub failed_auth: u32,
    /// Confirmations are refused until then (see [`DEVICE_MAX_FAILURES`]).
    pub locked_until: Option<Timestamp>,
}

impl Device {
    /// The lock-out in force at `now`, if any.
    pub fn locked_at(&self, now: Timestamp) -> Option<Timestamp> {
        self.locked_until.filter(|until| *until > now)
    }

    /// The lock-out that one more wrong code at `now` brings, if it reaches the limit. Never
    /// shorter than one already set (an operator may have blocked the device for good).
    pub fn lock_after_wrong_code(&self, now: Timestamp) -> Option<Timestamp> {
        (self.failed_auth + 1 >= DEVICE_MAX_FAILURES).then(|| {
            let lock = now.plus_seconds(DEVICE_LOCKOUT_SECONDS);
            self.locked_until.map_or(lock, |set| set.max(lock))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub terminal_id: TerminalId,
    pub token_hash: SecretHash,
    pub registered_at: Timestamp,
}

/// Who a terminal token authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalSession {
    pub terminal_id: TerminalId,
    pub unique_code: UniqueCode,
}

/// A single-use challenge the server issued for registering one code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationChallenge {
    pub challenge: Challenge,
    pub unique_code: UniqueCode,
    pub expires_at: Timestamp,
}

impl RegistrationChallenge {
    /// How long a registration challenge can be used.
    pub const LIFETIME_SECONDS: i64 = 120;

    pub fn issue(unique_code: UniqueCode, now: Timestamp) -> Self {
        Self {
            challenge: Challenge::generate(),
            unique_code,
            expires_at: now
                .truncated_to_second()
                .plus_seconds(Self::LIFETIME_SECONDS),
        }
    }
}

/// Whether a registration is a device's first to its terminal or the same terminal again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationKind {
    New,
    /// The device is registered to this terminal already: a new token replaces the old one.
    Again,
}

impl RegistrationKind {
    /// The rules of registering `code` to `terminal`, decided on what was read: the device (if
    /// known), how many devices the terminal holds, and whether the caller showed a current
    /// token of that terminal.
    ///
    /// A code registered to another terminal is refused; a terminal that holds another device
    /// belongs to the phone that registered it, so only a caller with its token adds to it.
    pub fn decide(
        seen: Option<&Device>,
        terminal: &TerminalId,
        terminal_devices: u32,
        caller_owns_terminal: bool,
    ) -> Result<Self> {
        let kind = match seen.and_then(|d| d.registration.as_ref()) {
            Some(r) if r.terminal_id != *terminal => {
                return Err(DomainError::DeviceAlreadyRegistered);
            }
            Some(_) => Self::Again,
            None => Self::New,
        };
        let others = terminal_devices.saturating_sub(u32::from(kind == Self::Again));
        if others > 0 && !caller_owns_terminal {
            return Err(DomainError::TerminalIdTaken);
        }
        Ok(kind)
    }
}

/// A registration to write, with what it was decided on; the write applies only if all of it
/// still holds.
#[derive(Debug, Clone)]
pub struct NewRegistration<'a> {
    pub unique_code: &'a UniqueCode,
    /// The device as read (its token is revoked when `kind` is `Again`).
    pub seen: Option<&'a Device>,
    pub kind: RegistrationKind,
    pub registration: &'a Registration,
    /// The caller's token when it showed one of this terminal: it must still be current. Without
    /// one, the terminal must still hold no other device.
    pub authority: Option<&'a SecretHash>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(terminal: Option<&str>) -> Device {
        Device {
            unique_code: UniqueCode::try_from("beacon-0001").unwrap(),
            registration: terminal.map(|t| Registration {
                terminal_id: TerminalId::try_from(t).unwrap(),
                token_hash: SecretHash::of("tt_x"),
                registered_at: Timestamp::from_millis(0),
            }),
            last_counter: Counter::new(0),
            pending: None,
            failed_auth: 0,
            locked_until: None,
        }
    }

    #[test]
    fn a_terminal_with_another_device_belongs_to_its_phone() {
        let t = TerminalId::try_from("phone-alice-01").unwrap();
        let decide = RegistrationKind::decide;
        let fresh = device(None);
        let mine = device(Some("phone-alice-01"));
        let theirs = device(Some("phone-bob-0001"));
        // A free terminal is anyone's.
        assert_eq!(decide(None, &t, 0, false), Ok(RegistrationKind::New));
        assert_eq!(
            decide(Some(&fresh), &t, 0, false),
            Ok(RegistrationKind::New)
        );
        // One more device on a terminal that holds one: only with the terminal's token.
        assert_eq!(
            decide(Some(&fresh), &t, 1, false),
            Err(DomainError::TerminalIdTaken)
        );
        assert_eq!(decide(Some(&fresh), &t, 1, true), Ok(RegistrationKind::New));
        // The same device again: free if it is the terminal's only device.
        assert_eq!(
            decide(Some(&mine), &t, 1, false),
            Ok(RegistrationKind::Again)
        );
        assert_eq!(
            decide(Some(&mine), &t, 2, false),
            Err(DomainError::TerminalIdTaken)
        );
        assert_eq!(
            decide(Some(&mine), &t, 2, true),
            Ok(RegistrationKind::Again)
        );
        // A device of another terminal is refused whatever the caller holds.
        for owns in [false, true] {
            assert_eq!(
                decide(Some(&theirs), &t, 0, owns),
                Err(DomainError::DeviceAlreadyRegistered)
            );
        }
    }

    #[test]
    fn a_challenge_lives_two_minutes() {
        let now = Timestamp::from_millis(1_764_216_306_789);
        let c = RegistrationChallenge::issue(UniqueCode::try_from("beacon-0001").unwrap(), now);
        assert_eq!(c.expires_at.millis(), 1_764_216_426_000);
        assert_eq!(c.challenge.as_str().len(), 32);
    }
}
