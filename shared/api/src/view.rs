//! JSON shapes of the contract's responses.

use serde::Serialize;
use twochan_domain::{Payment, Timestamp, ports::Balance, refund::Refund};

/// The contract's payment object; absent values are `null`.
#[derive(Debug, Serialize)]
pub struct PaymentView<'a> {
    pub payment_id: &'a str,
    pub status: &'static str,
    pub unique_code: &'a str,
    pub merchant_id: &'a str,
    pub pos_id: &'a str,
    pub amount: u64,
    pub currency: &'static str,
    pub reference: Option<&'a str>,
    pub challenge: &'a str,
    pub created_at: String,
    pub expires_at: String,
    pub confirmed_at: Option<String>,
    pub settled_at: Option<String>,
    pub refunded_amount: u64,
}

impl<'a> PaymentView<'a> {
    /// The payment as a reader sees it at `now` (a lapsed pending payment shows `expired`).
    pub fn new(p: &'a Payment, now: Timestamp) -> Self {
        Self {
            payment_id: p.payment_id.as_str(),
            status: p.effective_status(now).as_str(),
            unique_code: p.unique_code.as_str(),
            merchant_id: p.merchant_id.as_str(),
            pos_id: p.pos_id.as_str(),
            amount: p.amount.minor_units(),
            currency: p.currency.code(),
            reference: p.reference.as_ref().map(|r| r.as_str()),
            challenge: p.challenge.as_str(),
            created_at: p.created_at.to_rfc3339(),
            expires_at: p.expires_at.to_rfc3339(),
            confirmed_at: p.confirmed_at.map(Timestamp::to_rfc3339),
            settled_at: p.settled_at.map(Timestamp::to_rfc3339),
            refunded_amount: p.refunded_amount,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PendingPaymentsView<'a> {
    pub payments: Vec<PaymentView<'a>>,
}

#[derive(Debug, Serialize)]
pub struct RegistrationView<'a> {
    pub unique_code: &'a str,
    pub terminal_id: &'a str,
    pub terminal_token: &'a str,
    pub registered_at: String,
}

#[derive(Debug, Serialize)]
pub struct BalanceView<'a> {
    pub merchant_id: &'a str,
    pub balances: &'a [Balance],
}

/// `201` of `POST /v1/devices/challenges`.
#[derive(Serialize)]
pub struct ChallengeView<'a> {
    pub unique_code: &'a str,
    pub challenge: &'a str,
    pub expires_at: String,
}

/// The contract's refund object.
#[derive(Debug, Serialize)]
pub struct RefundView<'a> {
    pub refund_id: &'a str,
    pub payment_id: &'a str,
    pub amount: u64,
    pub currency: &'static str,
    pub reason: Option<&'a str>,
    pub status: &'static str,
    pub created_at: String,
}

impl<'a> RefundView<'a> {
    pub fn new(r: &'a Refund) -> Self {
        Self {
            refund_id: r.refund_id.as_str(),
            payment_id: r.payment_id.as_str(),
            amount: r.amount.minor_units(),
            currency: r.currency.code(),
            reason: r.reason.as_ref().map(|x| x.as_str()),
            status: Refund::STATUS,
            created_at: r.created_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RefundsView<'a> {
    pub refunds: Vec<RefundView<'a>>,
}
