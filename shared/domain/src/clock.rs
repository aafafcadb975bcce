//! Time as the contract shows it: UTC, RFC 3339, whole seconds.

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description};

const RFC3339_SECONDS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// A UTC instant with millisecond precision, shown in responses truncated to whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        Self((OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64)
    }

    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn millis(self) -> i64 {
        self.0
    }

    pub const fn seconds(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This instant with the sub-second part dropped, so what is stored equals what is shown.
    pub const fn truncated_to_second(self) -> Self {
        Self(self.seconds() * 1000)
    }

    pub const fn plus_seconds(self, s: i64) -> Self {
        Self(self.0 + s * 1000)
    }

    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp(self.seconds())
            .ok()
            .and_then(|t| t.format(RFC3339_SECONDS).ok())
            // Unreachable for any instant this product creates (years 1970..9999).
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_the_contract_example() {
        // 2026-11-27T04:05:06Z
        let t = Timestamp::from_millis(1_795_752_306_789);
        assert_eq!(t.to_rfc3339(), "2026-11-27T04:05:06Z");
        assert_eq!(t.truncated_to_second().millis(), 1_795_752_306_000);
        assert_eq!(t.plus_seconds(120).to_rfc3339(), "2026-11-27T04:07:06Z");
    }
}
