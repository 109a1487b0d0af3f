//! Parsing link speeds such as `8MB/s` (decimal units, as registries and DESIGN §7 use).

use anyhow::{Context, bail};

/// Bytes per second from `8MB/s`, `500KB/s`, `8MiB/s`, `1GB/s` or a bare number of bytes/s.
pub fn parse_rate(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad rate {text:?}: expected e.g. 8MB/s"))?;
    let scale = match unit.trim() {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("bad rate {text:?}: unknown unit {other:?}"),
    };
    let rate = (number * scale).round();
    if rate < 1.0 {
        bail!("bad rate {text:?}: must be at least 1 byte/s");
    }
    Ok(rate as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        for (text, bytes) in [
            ("8MB/s", 8_000_000),
            ("8MB", 8_000_000),
            ("500KB/s", 500_000),
            ("1.5MB/s", 1_500_000),
            ("8MiB/s", 8 * 1024 * 1024),
            ("1000", 1000),
        ] {
            assert_eq!(parse_rate(text).expect(text), bytes, "{text}");
        }
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("8XB/s").is_err());
        assert!(parse_rate("0MB/s").is_err());
    }
}
