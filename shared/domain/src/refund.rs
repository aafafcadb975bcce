//! Refunds: money given back on a settled payment, never more in all than its amount.

use crate::Timestamp;
use crate::error::{DomainError, Result};
use crate::ids::{MerchantId, PaymentId, Reason, RefundId};
use crate::money::{Amount, Currency};
use crate::payment::{Payment, PaymentStatus};

/// A succeeded refund (the only status a refund has: it is one atomic step or nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub refund_id: RefundId,
    pub payment_id: PaymentId,
    pub merchant_id: MerchantId,
    pub amount: Amount,
    pub currency: Currency,
    pub reason: Option<Reason>,
    pub created_at: Timestamp,
}

impl Refund {
    pub const STATUS: &'static str = "succeeded";

    /// The rules of refunding `amount` of `payment` as read: it must be settled, and the
    /// refunds must not sum above its amount. The write checks both again.
    pub fn check(payment: &Payment, amount: Amount) -> Result<()> {
        if payment.status != PaymentStatus::Settled {
            return Err(DomainError::PaymentNotSettled);
        }
        if payment.refunded_amount + amount.minor_units() > payment.amount.minor_units() {
            return Err(DomainError::RefundExceedsPayment);
        }
        Ok(())
    }

    /// The most the payment may have refunded already for `amount` more to fit; `None` if it
    /// cannot fit at all.
    pub fn room_needed(payment: &Payment, amount: Amount) -> Option<u64> {
        payment
            .amount
            .minor_units()
            .checked_sub(amount.minor_units())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PosId, TerminalId, UniqueCode};

    fn settled(amount: u64, refunded: u64) -> Payment {
        let mut p = Payment::new(
            PaymentId::generate(Timestamp::from_millis(1_000_000)),
            UniqueCode::try_from("beacon-0001").unwrap(),
            TerminalId::try_from("phone-alice-01").unwrap(),
            MerchantId::try_from("m_coffee_42").unwrap(),
            PosId::try_from("pos-1").unwrap(),
            Amount::try_from(amount).unwrap(),
            Currency::try_from("KRW").unwrap(),
            None,
            120,
        );
        p.status = PaymentStatus::Settled;
        p.refunded_amount = refunded;
        p
    }

    #[test]
    fn refunds_never_sum_above_the_payment() {
        let a = |v| Amount::try_from(v).unwrap();
        assert_eq!(Refund::check(&settled(900, 0), a(300)), Ok(()));
        assert_eq!(Refund::check(&settled(900, 600), a(300)), Ok(()));
        assert_eq!(
            Refund::check(&settled(900, 601), a(300)),
            Err(DomainError::RefundExceedsPayment)
        );
        assert_eq!(
            Refund::check(&settled(900, 0), a(901)),
            Err(DomainError::RefundExceedsPayment)
        );
        assert_eq!(Refund::room_needed(&settled(900, 0), a(300)), Some(600));
        assert_eq!(Refund::room_needed(&settled(900, 0), a(901)), None);
        for status in PaymentStatus::ALL {
            let mut p = settled(900, 0);
            p.status = status;
            assert_eq!(
                Refund::check(&p, a(1)).is_ok(),
                status == PaymentStatus::Settled,
                "{status:?}"
            );
        }
    }
}
