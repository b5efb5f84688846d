//! The deadline of an incoming request, from its `grpc-timeout` header (or the default).

use std::time::Duration;

use tokio::time::Instant;

pub fn of<T>(req: &tonic::Request<T>, default: Duration) -> Instant {
    let timeout = req.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse).unwrap_or(default);
    Instant::now() + timeout
}

/// Parses the gRPC wire format: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn parses_every_unit_and_rejects_garbage() {
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse("x"), None);
        assert_eq!(parse("10q"), None);
        assert_eq!(parse(""), None);
    }
}
