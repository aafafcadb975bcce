//! Money: integer minor units and ISO 4217 currencies.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// An amount in integer minor units of its currency, `1..=99_999_999`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Amount(u64);

impl Amount {
    pub const MIN: u64 = 1;
    pub const MAX: u64 = 99_999_999;

    pub const fn minor_units(self) -> u64 {
        self.0
    }
}

impl TryFrom<u64> for Amount {
    type Error = DomainError;
    fn try_from(v: u64) -> Result<Self, DomainError> {
        if (Self::MIN..=Self::MAX).contains(&v) {
            Ok(Self(v))
        } else {
            Err(DomainError::invalid(
                "amount",
                "must be an integer from 1 to 99999999 (minor units)",
            ))
        }
    }
}

impl From<Amount> for u64 {
    fn from(a: Amount) -> u64 {
        a.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An ISO 4217 alphabetic code of money in circulation: not a fund code (BOV, CLF, USN, ...), a
/// precious metal, a bond-market unit, XDR, XSU, XUA, XTS or XXX (all "special" in the list), nor
/// a withdrawn code (HRK, SLL, CUC, BGN, ZWL, ...: "superseded").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub fn code(self) -> &'static str {
        self.0.code()
    }
}

impl TryFrom<&str> for Currency {
    type Error = DomainError;
    fn try_from(s: &str) -> Result<Self, DomainError> {
        let well_formed = s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase());
        match iso_currency::Currency::from_code(s) {
            Some(c) if well_formed && is_money(c) => Ok(Self(c)),
            _ => Err(DomainError::invalid(
                "currency",
                "must be the ISO 4217 code of a currency in circulation, such as USD",
            )),
        }
    }
}

/// Whether ISO 4217's current list has the code as money. The crate's flags name funds, special
/// units and superseded codes; VES is flagged superseded by VED there, but ISO lists both as
/// current (VED is a second denomination, not VES's replacement), so VES stays accepted.
fn is_money(c: iso_currency::Currency) -> bool {
    use iso_currency::Flag;
    c == iso_currency::Currency::VES
        || !c
            .flags()
            .iter()
            .any(|f| matches!(f, Flag::Fund | Flag::Special | Flag::Superseded(_)))
}

impl TryFrom<String> for Currency {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        Self::try_from(s.as_str())
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_bounds() {
        assert!(Amount::try_from(0).is_err());
        assert_eq!(Amount::try_from(1).unwrap().minor_units(), 1);
        assert!(Amount::try_from(99_999_999).is_ok());
        assert!(Amount::try_from(100_000_000).is_err());
    }

    #[test]
    fn currencies() {
        for ok in ["USD", "EUR", "KRW", "JPY", "GBP", "CHF"] {
            assert_eq!(Currency::try_from(ok).unwrap().code(), ok);
        }
        for bad in ["usd", "US", "USDD", "ABC", "XXX", "XTS", "", "U$D"] {
            assert!(Currency::try_from(bad).is_err(), "{bad}");
        }
        // Revision 2: not money, or no longer money.
        let not_money = [
            "BOV", "CHE", "CHW", "CLF", "COU", "MXV", "USN", "UYI", "UYW", // funds
            "XAG", "XAU", "XPD", "XPT", // precious metals
            "XBA", "XBB", "XBC", "XBD", // bond-market units
            "XDR", "XSU", "XUA", "XTS", "XXX", // other special codes
            "HRK", "SLL", "CUC", "BGN", "ZWL", // withdrawn
        ];
        for bad in not_money {
            assert!(Currency::try_from(bad).is_err(), "{bad}");
        }
        for ok in [
            "XOF", "XAF", "XCD", "XPF", "SLE", "ZWG", "CUP", "VES", "VED", "XCG", "CHF",
        ] {
            assert!(Currency::try_from(ok).is_ok(), "{ok}");
        }
    }
}
