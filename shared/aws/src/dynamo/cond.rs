//! The conditions, named. Attribute names are literal but for `status`, a reserved word, which
//! only a `#status` placeholder can name; the requests bind every placeholder a condition uses
//! (see `expr`).

/// No condition: the write applies whatever the item holds.
pub const ALWAYS: &str = "";
/// A key (token, api key, payment slot) that must not exist yet.
pub const NEW_ITEM: &str = "attribute_not_exists(pk)";
/// An item (a caller's token) that must still exist.
pub const EXISTS: &str = "attribute_exists(pk)";
/// A registration challenge used for its own code before it expires (a used one is gone).
pub const CHALLENGE_USABLE: &str = "unique_code = :code AND expires_at >= :now";
/// A terminal that holds no device yet: anyone may register the first one.
pub const TERMINAL_FREE: &str = "attribute_not_exists(devices) OR devices <= :zero";
/// A terminal whose only device is the one registered again.
pub const TERMINAL_ONLY_THIS: &str = "attribute_not_exists(devices) OR devices <= :one";
/// A device free to register: unknown, or known (with its counter) but deregistered.
pub const DEVICE_UNREGISTERED: &str = "attribute_not_exists(terminal_id)";
/// Re-registration by the same terminal: the token we read is still the current one.
pub const DEVICE_SAME_REGISTRATION: &str = "terminal_id = :terminal AND token_hash = :old_token";
/// Deregistration: still the registration we read, and its pending lock unchanged.
pub const DEVICE_DEREGISTER_NO_LOCK: &str =
    "token_hash = :token AND attribute_not_exists(pending_payment_id)";
pub const DEVICE_DEREGISTER_WITH_LOCK: &str = "token_hash = :token AND pending_payment_id = :held";
/// A new pending payment takes a free lock...
pub const LOCK_FREE: &str = "terminal_id = :terminal AND attribute_not_exists(pending_payment_id)";
/// ...or one whose payment is past its expiry, checked here against the write's own clock.
pub const LOCK_LAPSED: &str =
    "terminal_id = :terminal AND pending_payment_id = :held AND pending_expires_at < :now";
/// The lock's payment, still pending (deregistration cancels it).
pub const PAYMENT_PENDING_HELD: &str = "#status = :pending AND payment_id = :held";
/// A pending payment that has not expired yet: confirm, cancel, decline, wrong-code counting.
pub const PAYMENT_PENDING_UNEXPIRED: &str = "#status = :pending AND expires_at >= :now";
pub const PAYMENT_PENDING_ATTEMPTS: &str =
    "#status = :pending AND expires_at >= :now AND failed_attempts = :seen_attempts";
/// A pending payment past its expiry (recording `expired`).
pub const PAYMENT_PENDING_LAPSED: &str = "#status = :pending AND expires_at < :now";
/// The lock is held by this payment.
pub const LOCK_HELD_BY: &str = "pending_payment_id = :held";
/// A payment's slot that does not hold that payment (empty, or another request's answer). A kept
/// refusal has no `payment_id`: said outright rather than left to how `<>` treats a missing
/// attribute.
pub const SLOT_WITHOUT_PAYMENT: &str =
    "attribute_not_exists(pk) OR attribute_not_exists(payment_id) OR payment_id <> :held";
/// A wrong code: the device's failure count is still the one read (absent means never failed,
/// as the count is never removed)...
pub const DEVICE_FAILURES_UNCHANGED: &str = "attribute_exists(pk) \
     AND (attribute_not_exists(failed_auth) OR failed_auth = :seen_failures)";
/// ...and, when the wrong code fails its payment, the lock is that payment's.
pub const DEVICE_FAILURES_UNCHANGED_LOCK_HELD: &str = "(attribute_not_exists(failed_auth) \
     OR failed_auth = :seen_failures) AND pending_payment_id = :held";
/// Confirmation: the lock is this payment's and the counter is the one we checked against.
/// ...and no wrong code was counted on the device since it was read (so a lock set meanwhile
/// wins over a correct code that was already being checked).
pub const COUNTER_UNCHANGED: &str = "pending_payment_id = :held AND last_counter = :prev \
     AND (attribute_not_exists(failed_auth) OR failed_auth = :seen_failures)";
/// A refund: the payment is settled and its refunds so far leave room for this one.
pub const PAYMENT_REFUNDABLE: &str = "#status = :settled AND payment_id = :payment \
     AND (attribute_not_exists(refunded_amount) OR refunded_amount <= :room)";
/// Settlement: confirmed, and the message describes this very payment.
pub const PAYMENT_SETTLEABLE: &str = "#status = :confirmed AND payment_id = :payment \
     AND merchant_id = :merchant AND amount = :amount AND currency = :currency \
     AND unique_code = :code";
/// The sweeper's scan filter (not a write condition): a payment still `confirmed` that was
/// confirmed before the cutoff, so its settlement never took.
pub const STUCK_CONFIRMED: &str = "#status = :confirmed AND confirmed_at < :cutoff";
/// The devices of a terminal, in its keys-only index (a key condition).
pub const TERMINAL_DEVICES: &str = "gsi1pk = :pk";
/// A merchant's balances, one item per currency (a key condition).
pub const MERCHANT_BALANCES: &str = "pk = :pk AND begins_with(sk, :prefix)";
