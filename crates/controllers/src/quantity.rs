//! Kubernetes resource quantities (`30Gi`, `500M`, `1e9`, `100m`, `0.5`) parsed exactly, as
//! the API machinery's `resource.Quantity` reads them: a decimal number times an SI, binary or
//! exponent suffix. Values come out as whole units (`Value()`: bytes, counts) or milli-units
//! (`MilliValue()`: cpu), rounded up like upstream; no floating point anywhere.

/// The largest number of digits a quantity may carry (the API server allows fewer still).
const MAX_DIGITS: usize = 30;

/// A parsed, non-negative quantity: `digits × 10^exp10 × 2^exp2`, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exact {
    digits: u128,
    exp10: i32,
    exp2: u32,
}

/// Why a quantity text is not a quantity.
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
        self.scaled(0)
    }

    /// The value in thousandths, rounded up (`Quantity.MilliValue()`), saturating at
    /// `u64::MAX`.
    pub fn milli(&self) -> u64 {
        self.scaled(3)
    }

    /// `ceil(value × 10^shift)`, saturating.
    fn scaled(&self, shift: i32) -> u64 {
        if self.digits == 0 {
            return 0;
        }
        let mut n = self.digits;
        for _ in 0..self.exp2 {
            n = match n.checked_mul(2) {
                Some(v) => v,
                None => return u64::MAX,
            };
        }
        let exp = self.exp10 + shift;
        if exp >= 0 {
            for _ in 0..exp {
                n = match n.checked_mul(10) {
                    Some(v) => v,
                    None => return u64::MAX,
                };
            }
            u64::try_from(n).unwrap_or(u64::MAX)
        } else {
            let mut divisor: u128 = 1;
            for _ in 0..(-exp) {
                divisor = match divisor.checked_mul(10) {
                    Some(v) => v,
                    // Larger than any numerator: the value rounds up to one.
                    None => return 1,
                };
            }
            u64::try_from(n.div_ceil(divisor)).unwrap_or(u64::MAX)
        }
    }
}

/// Parses a quantity; negative quantities are refused.
pub fn parse(text: &str) -> Result<Exact, QuantityError> {
    let malformed = || QuantityError::Malformed(text.to_owned());
    let q = text.trim();
    let (negative, q) = match q.as_bytes().first() {
        Some(b'-') => (true, &q[1..]),
        Some(b'+') => (false, &q[1..]),
        _ => (false, q),
    };
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(malformed());
    }
    let all_digits = format!("{whole}{fraction}");
    let significant = all_digits.trim_start_matches('0');
    if significant.len() > MAX_DIGITS {
        return Err(malformed());
    }
    let digits: u128 = if significant.is_empty() {
        0
    } else {
        significant.parse().map_err(|_| malformed())?
    };
    let fraction_len = i32::try_from(fraction.len()).map_err(|_| malformed())?;
    let (suffix_exp10, exp2) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        s if s.starts_with(['e', 'E']) => {
            let exp = &s[1..];
            let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            let exp: i32 = exp.parse().map_err(|_| malformed())?;
            // Beyond this every value saturates or rounds to the smallest unit anyway.
            if !(-100..=100).contains(&exp) {
                return Err(malformed());
            }
            (exp, 0)
        }
        _ => return Err(malformed()),
    };
    if negative && digits != 0 {
        return Err(QuantityError::Negative(text.to_owned()));
    }
    Ok(Exact {
        digits,
        exp10: suffix_exp10 - fraction_len,
        exp2,
    })
}

/// Parses a quantity into whole units (bytes for storage), rounded up. `None` when malformed
/// or negative.
pub fn parse_bytes(q: &str) -> Option<u64> {
    parse(q).ok().map(|e| e.units())
}

/// Parses a quantity into milli-units (cpu), rounded up. `None` when malformed or negative.
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
            ("1e30", Some(u64::MAX)),
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
