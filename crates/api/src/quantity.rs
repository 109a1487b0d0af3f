//! Kubernetes resource quantities (`500m`, `1.5Gi`, `128974848`, `1e9`), parsed exactly.
//!
//! The grammar is apimachinery's: an optional sign, a decimal number, then a binary suffix
//! (`Ki` … `Ei`), a decimal SI suffix (`n`, `u`, `m`, `k`, `M`, `G`, `T`, `P`, `E`) or an
//! exponent (`e3`, `E-2`). Values are kept as an integer numerator over a power of ten, so
//! `0.1` and `100m` are equal and no float rounding ever decides whether a pod fits.

use std::cmp::Ordering;
use std::fmt;

/// A parsed quantity: `numerator / 10^scale` (scale may be 0).
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    numerator: i128,
    scale: u32,
}

/// Why a quantity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}"
)]
pub struct QuantityError(pub String);

/// The most decimal places kept (nano units, as apimachinery does).
const MAX_SCALE: u32 = 9;

impl Quantity {
    /// Parses `text` (surrounding whitespace is not allowed, as in Kubernetes).
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let bad = || QuantityError(text.to_owned());
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(split);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(bad());
        }
        // Digits beyond what i128 holds exactly are refused rather than rounded.
        if whole.len() + fraction.len() > 30 {
            return Err(bad());
        }
        let digits: i128 = format!("{whole}{fraction}").parse().map_err(|_| bad())?;
        let mut q = Quantity {
            numerator: digits,
            scale: fraction.len() as u32,
        };
        match suffix {
            "" => {}
            "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
                let power = match suffix {
                    "Ki" => 1,
                    "Mi" => 2,
                    "Gi" => 3,
                    "Ti" => 4,
                    "Pi" => 5,
                    _ => 6,
                };
                q.numerator = q
                    .numerator
                    .checked_mul(1i128 << (10 * power))
                    .ok_or_else(bad)?;
            }
            "n" => q.scale += 9,
            "u" => q.scale += 6,
            "m" => q.scale += 3,
            "k" => q = q.times_ten(3).ok_or_else(bad)?,
            "M" => q = q.times_ten(6).ok_or_else(bad)?,
            "G" => q = q.times_ten(9).ok_or_else(bad)?,
            "T" => q = q.times_ten(12).ok_or_else(bad)?,
            "P" => q = q.times_ten(15).ok_or_else(bad)?,
            "E" => q = q.times_ten(18).ok_or_else(bad)?,
            s if s.starts_with(['e', 'E']) => {
                let exp: i32 = s[1..].parse().map_err(|_| bad())?;
                if exp.unsigned_abs() > 30 {
                    return Err(bad());
                }
                if exp >= 0 {
                    q = q.times_ten(exp as u32).ok_or_else(bad)?;
                } else {
                    q.scale += exp.unsigned_abs();
                }
            }
            _ => return Err(bad()),
        }
        if negative {
            q.numerator = -q.numerator;
        }
        // Precision below nano units is rounded up, as apimachinery does.
        if q.scale > MAX_SCALE {
            q = Quantity {
                numerator: div_ceil(q.numerator, 10i128.pow(q.scale - MAX_SCALE)),
                scale: MAX_SCALE,
            };
        }
        Ok(q)
    }

    fn times_ten(self, exp: u32) -> Option<Self> {
        if self.scale >= exp {
            return Some(Quantity {
                numerator: self.numerator,
                scale: self.scale - exp,
            });
        }
        let factor = 10i128.checked_pow(exp - self.scale)?;
        Some(Quantity {
            numerator: self.numerator.checked_mul(factor)?,
            scale: 0,
        })
    }

    /// The value in whole units, rounded up (bytes for memory and storage, cores for cpu).
    pub fn value(&self) -> i128 {
        div_ceil(self.numerator, 10i128.pow(self.scale))
    }

    /// The value in thousandths, rounded up (millicores for cpu).
    pub fn milli_value(&self) -> i128 {
        if self.scale <= 3 {
            self.numerator * 10i128.pow(3 - self.scale)
        } else {
            div_ceil(self.numerator, 10i128.pow(self.scale - 3))
        }
    }

    /// Whether the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.numerator < 0
    }

    /// Both sides over the same power of ten.
    fn aligned(&self, other: &Self) -> (i128, i128) {
        let scale = self.scale.max(other.scale);
        (
            self.numerator * 10i128.pow(scale - self.scale),
            other.numerator * 10i128.pow(scale - other.scale),
        )
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = self.aligned(other);
        a == b
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = self.aligned(other);
        a.cmp(&b)
    }
}

impl fmt::Display for Quantity {
    /// The value in plain decimal notation (no suffix).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.numerator);
        }
        let p = 10i128.pow(self.scale);
        let (whole, frac) = (self.numerator / p, (self.numerator % p).abs());
        let sign = if self.numerator < 0 && whole == 0 {
            "-"
        } else {
            ""
        };
        let frac = format!("{frac:0width$}", width = self.scale as usize);
        write!(f, "{sign}{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// Integer division rounding towards positive infinity.
fn div_ceil(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d > 0 { q + 1 } else { q }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "", "1.2.3", "12Qi", "Mi", "1 Gi", " 1", "1e", "abc", ".", "1e99",
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
        assert_eq!(q("1.50").to_string(), "1.5");
        assert_eq!(q("1k").to_string(), "1000");
    }
}
