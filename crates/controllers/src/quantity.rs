//! Kubernetes resource quantities (`30Gi`, `500M`, `1e9`) as bytes, through the exact parser
//! of [`imc_api::quantity`].

use imc_api::quantity::Quantity;

/// Parses a quantity into a whole number of units (bytes for storage). `None` when malformed.
pub fn parse_bytes(q: &str) -> Option<u64> {
    let q = Quantity::parse(q.trim()).ok()?;
    u64::try_from(q.value()).ok()
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
