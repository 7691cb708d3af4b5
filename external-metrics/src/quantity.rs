//! Kubernetes quantities for metric values: a fixed-point number in thousandths, printed the way
//! `resource.Quantity` parses it (`42`, `1500m`, `-3`). Only formatting; no I/O.

use std::fmt;

use serde::{Serialize, Serializer};

/// A metric value with milli precision (what the HPA computes with: it reads `MilliValue()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity {
    milli: i64,
}

impl Quantity {
    /// A whole number, such as a queue depth. Saturates at about ±9.2e15.
    pub const fn from_int(value: i64) -> Self {
        Self { milli: value.saturating_mul(1000) }
    }

    /// Thousandths: `from_milli(1500)` is 1.5.
    pub const fn from_milli(milli: i64) -> Self {
        Self { milli }
    }

    /// A fractional value, rounded to the nearest thousandth; `None` for NaN, infinities and
    /// values beyond the milli range.
    pub fn from_f64(value: f64) -> Option<Self> {
        let milli = (value * 1000.0).round();
        // i64::MAX as f64 rounds up to 2^63, so `<` keeps the value in range (`as` saturates anyway).
        (milli.is_finite() && milli >= i64::MIN as f64 && milli < i64::MAX as f64)
            .then_some(Self { milli: milli as i64 })
    }

    pub const fn milli(self) -> i64 {
        self.milli
    }
}

impl From<u32> for Quantity {
    fn from(value: u32) -> Self {
        Self::from_int(value.into())
    }
}

impl From<i64> for Quantity {
    fn from(value: i64) -> Self {
        Self::from_int(value)
    }
}

impl From<u64> for Quantity {
    fn from(value: u64) -> Self {
        Self::from_int(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Quantity {
    /// Whole numbers plain (`42`), anything else in thousandths with the `m` suffix (`1500m`
    /// would be 1.5: printed as `1500m`), both valid `resource.Quantity` syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.milli % 1000 == 0 { write!(f, "{}", self.milli / 1000) } else { write!(f, "{}m", self.milli) }
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_print_without_a_suffix() {
        assert_eq!(Quantity::from_int(0).to_string(), "0");
        assert_eq!(Quantity::from_int(42).to_string(), "42");
        assert_eq!(Quantity::from_int(-3).to_string(), "-3");
        assert_eq!(Quantity::from(1_000_000u64).to_string(), "1000000");
        assert_eq!(Quantity::from_milli(2000).to_string(), "2");
    }

    #[test]
    fn fractions_print_in_thousandths() {
        assert_eq!(Quantity::from_milli(1500).to_string(), "1500m");
        assert_eq!(Quantity::from_milli(1).to_string(), "1m");
        assert_eq!(Quantity::from_milli(-250).to_string(), "-250m");
        assert_eq!(Quantity::from_f64(0.25).map(|q| q.to_string()).as_deref(), Some("250m"));
        assert_eq!(Quantity::from_f64(2.0004).map(|q| q.to_string()).as_deref(), Some("2"));
        assert_eq!(Quantity::from_f64(2.0006).map(|q| q.to_string()).as_deref(), Some("2001m"));
    }

    #[test]
    fn non_finite_and_huge_floats_are_refused() {
        assert_eq!(Quantity::from_f64(f64::NAN), None);
        assert_eq!(Quantity::from_f64(f64::INFINITY), None);
        assert_eq!(Quantity::from_f64(1e30), None);
    }

    #[test]
    fn huge_integers_saturate() {
        assert_eq!(Quantity::from(u64::MAX).milli(), i64::MAX);
        assert_eq!(Quantity::from_int(i64::MIN).milli(), i64::MIN);
    }

    #[test]
    fn serializes_as_a_json_string() {
        assert_eq!(serde_json::to_string(&Quantity::from_milli(1500)).expect("json"), "\"1500m\"");
    }
}
