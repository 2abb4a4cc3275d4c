//! Acknowledgements from the Historian: parsing and the rules for accepting
//! one. An acknowledgement is a time stamp below which archived rows may be
//! deleted; it must not be in the future (rows not yet read would go) and
//! must not go backwards (it would say nothing new, and usually means a
//! misconfigured Historian).

use crate::model::{Timestamp, format_ts};
use chrono::{DateTime, NaiveDateTime, Utc};

/// Parses a time stamp as a Historian or an operator writes it: RFC 3339
/// (`2026-11-24T06:00:00Z`, `…+02:00`, with or without fractions) or
/// `YYYY-MM-DD HH:MM:SS[.fff]` taken as UTC.
pub fn parse_ts(text: &str) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.to_utc());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, fmt) {
            return Ok(t.and_utc());
        }
    }
    Err(format!(
        "`{text}` is not a time stamp (expected e.g. 2026-11-24T06:00:00Z or 2026-11-24 06:00:00 UTC)"
    ))
}

/// Checks an acknowledgement against the one in force and the clock.
pub fn check_ack(
    ack: Timestamp,
    acked_until: Option<Timestamp>,
    now: Timestamp,
) -> Result<(), String> {
    if ack > now {
        return Err(format!(
            "refused: {} is in the future (now {})",
            format_ts(&ack),
            format_ts(&now)
        ));
    }
    if let Some(prev) = acked_until
        && ack < prev
    {
        return Err(format!(
            "refused: {} goes back before the acknowledgement in force, {}",
            format_ts(&ack),
            format_ts(&prev)
        ));
    }
    Ok(())
}

/// The present, for callers that have no clock of their own.
pub fn now() -> Timestamp {
    Utc::now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn accepted_forms() {
        let t = Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap();
        for s in [
            "2026-11-24T06:00:00Z",
            "2026-11-24T08:00:00+02:00",
            "2026-11-24 06:00:00",
            "2026-11-24T06:00:00.000",
            "2026-11-24 06:00",
        ] {
            assert_eq!(parse_ts(s), Ok(t), "{s}");
        }
        assert!(parse_ts("yesterday").is_err());
    }

    #[test]
    fn future_and_backward_acks_are_refused() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap();
        let hour = chrono::Duration::hours(1);
        assert!(check_ack(now - hour, None, now).is_ok());
        assert!(
            check_ack(now + hour, None, now)
                .unwrap_err()
                .contains("future")
        );
        assert!(
            check_ack(now - hour - hour, Some(now - hour), now)
                .unwrap_err()
                .contains("back")
        );
        assert!(
            check_ack(now - hour, Some(now - hour), now).is_ok(),
            "repeating is harmless"
        );
    }
}
