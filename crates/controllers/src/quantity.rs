//! Kubernetes resource quantities (`30Gi`, `500M`, `1e9`) as bytes.

/// Parses a quantity into a whole number of units (bytes for storage). `None` when malformed.
pub fn parse_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "m" => 1e-3,
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let value = number * multiplier;
    (value.is_finite() && value >= 0.0).then(|| value.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn table() {
        for (input, want) in [
            ("30Gi", Some(30u64 << 30)),
            ("500M", Some(500_000_000)),
            ("1e9", Some(1_000_000_000)),
            ("1.5Gi", Some(3u64 << 29)),
            ("128974848", Some(128_974_848)),
            ("12Qi", None),
            ("", None),
            ("-1Gi", None),
        ] {
            assert_eq!(parse_bytes(input), want, "{input}");
        }
    }
}
