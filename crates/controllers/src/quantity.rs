//! Resource amounts as the node and the scheduler use them (requests, limits, capacity): never
//! negative, in whole units (`Value()`: bytes, counts) or thousandths (`MilliValue()`: cpu),
//! rounded up like upstream and saturating at `u64::MAX`. Parsing is [`imc_api::quantity`]'s,
//! exact, with no floating point anywhere.

use imc_api::quantity::Quantity;

/// A parsed, non-negative quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exact(Quantity);

/// Why a quantity text is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the form `<number><suffix>`.
    #[error("{0:?} is not a quantity")]
    Malformed(String),
    /// A negative quantity where only amounts make sense (requests, capacity).
    #[error("{0:?} is negative")]
    Negative(String),
}

impl Exact {
    /// The value in whole units, rounded up (`Quantity.Value()`), saturating at `u64::MAX`.
    pub fn units(&self) -> u64 {
        u64::try_from(self.0.value()).unwrap_or(u64::MAX)
    }

    /// The value in thousandths, rounded up (`Quantity.MilliValue()`), saturating at
    /// `u64::MAX`.
    pub fn milli(&self) -> u64 {
        u64::try_from(self.0.milli_value()).unwrap_or(u64::MAX)
    }
}

/// Parses an amount (surrounding whitespace ignored); negative quantities are refused.
pub fn parse(text: &str) -> Result<Exact, QuantityError> {
    let q = Quantity::parse(text.trim()).map_err(|_| QuantityError::Malformed(text.to_owned()))?;
    if q.is_negative() {
        return Err(QuantityError::Negative(text.to_owned()));
    }
    Ok(Exact(q))
}

/// Whole units (bytes for storage) of a quantity; `None` when malformed or negative.
pub fn parse_bytes(q: &str) -> Option<u64> {
    parse(q).ok().map(|e| e.units())
}

/// Thousandths (millicores for cpu) of a quantity; `None` when malformed or negative.
pub fn parse_milli(q: &str) -> Option<u64> {
    parse(q).ok().map(|e| e.milli())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_units() {
        for (input, want) in [
            ("30Gi", Some(30u64 << 30)),
            ("500M", Some(500_000_000)),
            ("1e9", Some(1_000_000_000)),
            ("1E3", Some(1000)),
            ("1e-3", Some(1)),
            ("1.5Gi", Some(3u64 << 29)),
            ("128974848", Some(128_974_848)),
            ("129e6", Some(129_000_000)),
            ("123Mi", Some(123 << 20)),
            ("0.5Ki", Some(512)),
            (".5Ki", Some(512)),
            ("5.", Some(5)),
            ("+7", Some(7)),
            ("100m", Some(1)),
            ("1001m", Some(2)),
            ("0", Some(0)),
            ("-0", Some(0)),
            ("16Ei", Some(u64::MAX)),
            ("1e30", None),
            ("12Qi", None),
            ("", None),
            (".", None),
            ("1.2.3", None),
            ("-1Gi", None),
            ("Gi", None),
            ("1e", None),
            ("1e+", None),
            ("1Gib", None),
            ("1e1000", None),
        ] {
            assert_eq!(parse_bytes(input), want, "{input}");
        }
    }

    #[test]
    fn milli_units() {
        for (input, want) in [
            ("1", Some(1000u64)),
            ("2", Some(2000)),
            ("0.5", Some(500)),
            ("100m", Some(100)),
            ("250m", Some(250)),
            ("1.2345", Some(1235)),
            ("500u", Some(1)),
            ("1n", Some(1)),
            ("0.0001", Some(1)),
            ("1k", Some(1_000_000)),
            ("1Ki", Some(1_024_000)),
            ("abc", None),
        ] {
            assert_eq!(parse_milli(input), want, "{input}");
        }
    }

    #[test]
    fn errors_name_the_text() {
        assert_eq!(parse("-1").unwrap_err().to_string(), "\"-1\" is negative");
        assert_eq!(
            parse("lots").unwrap_err().to_string(),
            "\"lots\" is not a quantity"
        );
    }
}
