//! Kubernetes resource quantities (`500m`, `64Mi`, `1.5`, `2e3`) parsed exactly, as Kubernetes'
//! `resource.Quantity` does: the value is kept as a whole number of nano-units (10^-9), fractions
//! below that rounded up, so comparing and summing never goes through floating point.

use std::fmt;

/// The message Kubernetes answers for text that is not a quantity.
pub const QUANTITY_MSG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// A parsed quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity {
    nanos: i128,
}

/// Why text is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text does not have the shape of a quantity.
    #[error("{QUANTITY_MSG}")]
    Syntax,
    /// The value does not fit (beyond about 10^29).
    #[error("quantity is too large")]
    TooLarge,
}

const NANO: i128 = 1_000_000_000;

/// Integer division rounding towards positive infinity.
fn div_ceil(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d > 0 { q + 1 } else { q }
}

fn pow10(e: u32) -> Option<i128> {
    10i128.checked_pow(e)
}

impl Quantity {
    /// Zero.
    pub const ZERO: Quantity = Quantity { nanos: 0 };

    /// Parses `s` (no surrounding whitespace).
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let num_len = rest
            .bytes()
            .take_while(|c| c.is_ascii_digit() || *c == b'.')
            .count();
        let (number, suffix) = rest.split_at(num_len);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(QuantityError::Syntax);
        }
        // nanos = digits * multiplier / 10^frac.len(), with the multiplier in nano-units as a
        // fraction (num / den) so that small exponents stay exact.
        let (num, den): (i128, i128) = match suffix {
            "n" => (1, 1),
            "u" => (1_000, 1),
            "m" => (1_000_000, 1),
            "" => (NANO, 1),
            "k" => (NANO * 1_000, 1),
            "M" => (NANO * 1_000_000, 1),
            "G" => (NANO * 1_000_000_000, 1),
            "T" => (NANO * 1_000_000_000_000, 1),
            "P" => (NANO * 1_000_000_000_000_000, 1),
            "E" => (NANO * 1_000_000_000_000_000_000, 1),
            "Ki" => (NANO << 10, 1),
            "Mi" => (NANO << 20, 1),
            "Gi" => (NANO << 30, 1),
            "Ti" => (NANO << 40, 1),
            "Pi" => (NANO << 50, 1),
            "Ei" => (NANO << 60, 1),
            exp => {
                let digits = exp
                    .strip_prefix('e')
                    .or_else(|| exp.strip_prefix('E'))
                    .ok_or(QuantityError::Syntax)?;
                let (sign, digits) = match digits.as_bytes().first() {
                    Some(b'-') => (-1, &digits[1..]),
                    Some(b'+') => (1, &digits[1..]),
                    _ => (1, digits),
                };
                if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(QuantityError::Syntax);
                }
                let e: i64 = digits.parse().map_err(|_| QuantityError::TooLarge)?;
                let e = sign * e + 9;
                if e >= 0 {
                    let e = u32::try_from(e).map_err(|_| QuantityError::TooLarge)?;
                    (pow10(e).ok_or(QuantityError::TooLarge)?, 1)
                } else {
                    let e = u32::try_from(-e).map_err(|_| QuantityError::TooLarge)?;
                    // Anything below 10^-38 nano-units rounds up to one nano-unit anyway.
                    (1, pow10(e.min(38)).ok_or(QuantityError::TooLarge)?)
                }
            }
        };
        let mut mantissa: i128 = 0;
        for c in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(c - b'0')))
                .ok_or(QuantityError::TooLarge)?;
        }
        let frac_len = u32::try_from(frac.len()).map_err(|_| QuantityError::TooLarge)?;
        let scale = pow10(frac_len)
            .and_then(|p| p.checked_mul(den))
            .ok_or(QuantityError::TooLarge)?;
        let scaled = mantissa.checked_mul(num).ok_or(QuantityError::TooLarge)?;
        // Round up to a whole nano-unit, as Kubernetes does.
        let nanos = scaled / scale + i128::from(scaled % scale != 0);
        Ok(Quantity {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// The value in nano-units.
    pub fn nanos(self) -> i128 {
        self.nanos
    }

    /// The value in whole units, rounded up (`Value()`: bytes for memory and storage).
    pub fn value(self) -> i128 {
        div_ceil(self.nanos, NANO)
    }

    /// The value in thousandths, rounded up (`MilliValue()`: millicores for cpu).
    pub fn milli_value(self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    /// Whether the value is below zero.
    pub fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// The sum, saturating at the bounds.
    pub fn saturating_add(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }
}

impl fmt::Display for Quantity {
    /// Whole units when exact (`2`), else milli-units (`500m`), else nano-units.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % NANO == 0 {
            write!(f, "{}", self.nanos / NANO)
        } else if self.nanos % 1_000_000 == 0 {
            write!(f, "{}m", self.nanos / 1_000_000)
        } else {
            write!(f, "{}n", self.nanos)
        }
    }
}

/// A byte count in decimal units, the way registries, download tools and kubectl users read
/// it: `0 B`, `999 B`, `1.2 kB`, `386.0 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_exactly() {
        // (text, value in nano-units)
        let rows: &[(&str, i128)] = &[
            ("1", NANO),
            ("500m", 500_000_000),
            ("0.5", 500_000_000),
            (".5", 500_000_000),
            ("1.5Gi", 3 * (NANO << 29)),
            ("64Mi", 64 * (NANO << 20)),
            ("1k", 1_000 * NANO),
            ("1e3", 1_000 * NANO),
            ("1E-3", 1_000_000),
            ("2.5e-1", 250_000_000),
            ("1n", 1),
            ("0.5n", 1),
            ("-1", -NANO),
            ("+2", 2 * NANO),
            ("0", 0),
        ];
        for (text, nanos) in rows {
            assert_eq!(
                Quantity::parse(text).map(Quantity::nanos),
                Ok(*nanos),
                "{text}"
            );
        }
        for bad in [
            "", "abc", "1x", "1.2.3", "1Ki2", "e3", "1e", "--1", "1 Gi", "1e+",
        ] {
            assert_eq!(Quantity::parse(bad), Err(QuantityError::Syntax), "{bad}");
        }
        assert_eq!(
            Quantity::parse("99999999999999999999999999999999999999E"),
            Err(QuantityError::TooLarge)
        );
        assert!(Quantity::parse("1Gi").unwrap() > Quantity::parse("1G").unwrap());
        assert_eq!(
            Quantity::parse("1000m").unwrap(),
            Quantity::parse("1").unwrap()
        );
        assert_eq!(Quantity::parse("250m").unwrap().to_string(), "250m");
    }

    #[test]
    fn parses_exactly() {
        let cases: &[(&str, i128, i128)] = &[
            // text, value (rounded up), milli value
            ("0", 0, 0),
            ("1", 1, 1000),
            ("500m", 1, 500),
            ("0.1", 1, 100),
            ("100m", 1, 100),
            ("1.5", 2, 1500),
            ("2k", 2000, 2_000_000),
            ("64Mi", 64 << 20, (64 << 20) * 1000),
            ("1.5Gi", 3 << 29, (3 << 29) * 1000),
            ("128974848", 128_974_848, 128_974_848_000),
            ("1e9", 1_000_000_000, 1_000_000_000_000),
            ("1E-3", 1, 1),
            ("129e6", 129_000_000, 129_000_000_000),
            ("123Mi", 123 << 20, (123 << 20) * 1000),
            ("1n", 1, 1),
            ("+5", 5, 5000),
            ("-1", -1, -1000),
        ];
        for (text, value, milli) in cases {
            let q = Quantity::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(q.value(), *value, "{text} value");
            assert_eq!(q.milli_value(), *milli, "{text} milli");
        }
        for bad in [
            "", "1.2.3", "12Qi", "Mi", "1 Gi", " 1", "1e", "abc", ".", "1e99", "1e30",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn compares_across_notations() {
        let q = |s| Quantity::parse(s).unwrap();
        assert_eq!(q("0.1"), q("100m"));
        assert_eq!(q("1Ki"), q("1024"));
        assert!(q("1Gi") > q("1G"));
        assert!(q("250m") < q("1"));
    }

    #[test]
    fn human_bytes_in_decimal_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_200), "1.2 kB");
        assert_eq!(human_bytes(1_500), "1.5 kB");
        assert_eq!(human_bytes(386_000_000), "386.0 MB");
        assert_eq!(human_bytes(u64::MAX), "18446.7 PB");
    }
}
