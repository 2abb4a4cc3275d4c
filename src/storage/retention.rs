//! Acknowledgements and limits, as pure functions on segment lists.
//!
//! The contract is an acknowledgement by id: "the Historian has stored every
//! row up to id N". Segments whose last id is at most N are then deleted as
//! files. The seed's time-stamp acknowledgement is turned into an id here,
//! and only ever covers segments published *before* it was written, so a
//! row published later (whatever its own time stamp) is never purged unread.

use super::segment::SegmentInfo;
use super::settings::Retention;
use crate::model::{Timestamp, format_ts};

pub use crate::model::parse_ts;
use crate::model::short;
use chrono::Utc;

/// What an acknowledgement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Every row up to and including this archive id is stored.
    Id(i64),
    /// Every row with a time stamp before this one is stored.
    Ts(Timestamp),
}

/// The request lines of an acknowledgement: without blank lines, `#`
/// comments and a Windows byte-order mark.
fn request_lines(text: &str) -> impl Iterator<Item = &str> {
    text.trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Parses an acknowledgement: `4711`, `id=4711`, `ts=2026-11-24T06:00:00Z`
/// or a bare time stamp. Blank lines and `#` comments around it are ignored,
/// so an ack file may carry a note. Exactly one request: `id=` and `ts=`
/// together (or two ids) are ambiguous, and refused.
pub fn parse_ack(text: &str) -> Result<Ack, String> {
    let mut lines = request_lines(text);
    let line = lines.next().ok_or("empty acknowledgement")?;
    let more = lines.count();
    if more > 0 {
        return Err(format!(
            "{} requests in one file; write exactly one (id=N or ts=TIME)",
            more + 1
        ));
    }
    let (key, value) = match line.split_once('=') {
        Some((k, v)) => (k.trim(), v.trim()),
        None => ("", line),
    };
    match key {
        "id" | "" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => value
            .parse()
            .map(Ack::Id)
            .map_err(|_| format!("id `{}` is out of range", short(value))),
        "id" => Err(format!("id `{}` is not a whole number", short(value))),
        "ts" | "" => parse_ts(value).map(Ack::Ts),
        other => Err(format!(
            "`{}=` is not understood (write id=N or ts=TIME)",
            short(other)
        )),
    }
}

/// Most characters of a request quoted back in the answer and the log:
/// an acknowledgement is one short line; a file of megabytes is quoted by
/// its beginning and its size, never whole.
pub const QUOTE_CHARS: usize = 120;

/// The request as the answer and the log quote it: its first request line
/// (lossy UTF-8), control characters escaped, at most [`QUOTE_CHARS`]
/// characters, with the file's size when it was cut.
pub fn quote(bytes: &[u8], len: u64) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = request_lines(&text).next().unwrap_or("");
    let mut out = String::new();
    let mut cut = false;
    for (i, c) in line.chars().enumerate() {
        if i == QUOTE_CHARS {
            cut = true;
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut || len > bytes.len() as u64 {
        out.push_str(&format!("… ({len} bytes)"));
    }
    out
}

/// The acknowledgement in a file's first bytes (`bytes` of a file of
/// `len` bytes): refused when the file is longer than
/// [`super::outbox::MAX_ACK_BYTES`], not UTF-8 text, or not one request.
pub fn read_request(bytes: &[u8], len: u64) -> Result<Ack, String> {
    if len > super::outbox::MAX_ACK_BYTES as u64 || bytes.len() > super::outbox::MAX_ACK_BYTES {
        return Err(format!(
            "the file has {len} bytes; an acknowledgement is one line (id=N), at most {} bytes",
            super::outbox::MAX_ACK_BYTES
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 text (byte {})", e.valid_up_to()))?;
    parse_ack(text)
}

/// Checks an acknowledgement by id against the one in force and what has
/// been published: an id beyond the last published row acknowledges rows
/// the Historian cannot have read.
pub fn check_id(id: i64, acked: i64, last_published: i64) -> Result<(), String> {
    if id > last_published {
        return Err(format!(
            "refused: id {id} is beyond the last published row, {last_published}"
        ));
    }
    if id < acked {
        return Err(format!(
            "refused: id {id} goes back before the acknowledgement in force, {acked}"
        ));
    }
    Ok(())
}

/// The id a time-stamp acknowledgement stands for: the last id of the
/// longest run of oldest published segments whose rows are all older than
/// `ts` and that were published before both `ts` and the moment the
/// acknowledgement was `written`. The second bound keeps a segment that
/// appeared after the Historian looked (a Historian acknowledges the time it
/// listed the outbox) even when its rows carry old time stamps.
/// `None` when no segment qualifies. Refused when `ts` is in the future.
pub fn ts_to_id(
    ts: Timestamp,
    written: Timestamp,
    now: Timestamp,
    published: &[SegmentInfo],
) -> Result<Option<i64>, String> {
    if ts > now {
        return Err(format!(
            "refused: {} is in the future (now {})",
            format_ts(&ts),
            format_ts(&now)
        ));
    }
    let mut id = None;
    let cutoff = written.min(ts);
    for s in published {
        let seen = s.published_at.is_some_and(|p| p < cutoff);
        let older = s.max_ts.is_none_or(|m| m < ts);
        if !(seen && older) {
            break;
        }
        id = Some(s.last);
    }
    Ok(id)
}

/// How many of the oldest segments must go so that what is left (plus the
/// open segment's `open_rows` and `open_bytes`) is within the limits.
pub fn over_limits(
    segments: &[SegmentInfo],
    open_rows: u64,
    open_bytes: u64,
    limits: &Retention,
    now: Timestamp,
) -> usize {
    let mut rows: u64 = segments.iter().map(|s| s.rows).sum::<u64>() + open_rows;
    let mut bytes: u64 = segments.iter().map(|s| s.bytes).sum::<u64>() + open_bytes;
    let oldest =
        (limits.max_age_days > 0).then(|| now - chrono::Duration::days(limits.max_age_days as i64));
    let mut n = 0;
    for s in segments {
        let too_many = limits.max_rows > 0 && rows > limits.max_rows;
        let too_big = limits.max_mb > 0 && bytes > limits.max_mb * 1024 * 1024;
        let too_old = match (oldest, s.max_ts) {
            (Some(o), Some(m)) => m < o,
            _ => false,
        };
        if !(too_many || too_big || too_old) {
            break;
        }
        rows -= s.rows;
        bytes -= s.bytes;
        n += 1;
    }
    n
}

/// The present, for callers that have no clock of their own.
pub fn now() -> Timestamp {
    Utc::now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn seg(first: i64, last: i64, max_ts: i64, published: Option<i64>) -> SegmentInfo {
        SegmentInfo {
            first,
            last,
            rows: (last - first + 1) as u64,
            bytes: 1000,
            max_ts: Some(t(max_ts)),
            published_at: published.map(t),
        }
    }

    #[test]
    fn accepted_time_stamp_forms() {
        let ts = Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap();
        for s in [
            "2026-11-24T06:00:00Z",
            "2026-11-24T08:00:00+02:00",
            "2026-11-24 06:00:00",
            "2026-11-24T06:00:00.000",
            "2026-11-24 06:00",
        ] {
            assert_eq!(parse_ts(s), Ok(ts), "{s}");
        }
        assert!(parse_ts("yesterday").is_err());
    }

    #[test]
    fn ack_file_forms() {
        let ts = Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap();
        assert_eq!(parse_ack("4711\n"), Ok(Ack::Id(4711)));
        assert_eq!(
            parse_ack("\u{feff}id=4711\r\n"),
            Ok(Ack::Id(4711)),
            "Windows"
        );
        assert_eq!(parse_ack("# historian 2\nid = 4711\n"), Ok(Ack::Id(4711)));
        assert_eq!(parse_ack("ts=2026-11-24T06:00:00Z"), Ok(Ack::Ts(ts)));
        assert_eq!(parse_ack("2026-11-24 06:00:00"), Ok(Ack::Ts(ts)));
        assert_eq!(
            parse_ack("9223372036854775807"),
            Ok(Ack::Id(i64::MAX)),
            "the largest id"
        );
        assert!(
            parse_ack("9223372036854775808")
                .unwrap_err()
                .contains("range")
        );
        assert!(parse_ack("id=-3").unwrap_err().contains("whole number"));
        assert!(parse_ack("").is_err());
        assert!(parse_ack("row=5").unwrap_err().contains("not understood"));
    }

    #[test]
    fn requests_are_one_line_of_text_and_quoted_bounded() {
        assert_eq!(read_request(b"id=5\n", 5), Ok(Ack::Id(5)));
        assert!(
            read_request(b"id=\xff5", 5)
                .unwrap_err()
                .starts_with("not UTF-8")
        );
        assert!(
            read_request(b"id=5\nts=2026-11-24T06:00:00Z", 30)
                .unwrap_err()
                .starts_with("2 requests")
        );
        assert!(
            read_request(b"id=5\nid=6", 9)
                .unwrap_err()
                .starts_with("2 requests")
        );
        let big = vec![b'#'; 5000];
        assert!(
            read_request(&big[..4097], 5000)
                .unwrap_err()
                .contains("5000 bytes")
        );
        assert_eq!(quote(b"# note\nid=5\n", 12), "id=5");
        assert_eq!(quote(b"id=\x1b[2J", 7), "id=\\u{1b}[2J");
        let long = format!("id={}", "9".repeat(300));
        let q = quote(long.as_bytes(), 10_000_000);
        assert!(q.chars().count() < QUOTE_CHARS + 30, "{q}");
        assert!(q.ends_with("… (10000000 bytes)"), "{q}");
        assert!(
            parse_ack(&format!("id={}", "x".repeat(5000)))
                .unwrap_err()
                .len()
                < 300
        );
    }

    #[test]
    fn id_acks_must_be_published_and_go_forward() {
        assert!(check_id(10, 5, 10).is_ok());
        assert!(check_id(5, 5, 10).is_ok(), "repeating is harmless");
        assert!(check_id(11, 5, 10).unwrap_err().contains("beyond"));
        assert!(check_id(4, 5, 10).unwrap_err().contains("goes back"));
    }

    #[test]
    fn a_time_stamp_ack_covers_only_what_was_published_before_it() {
        let published = [
            seg(1, 10, 100, Some(101)),
            seg(11, 20, 200, Some(201)),
            // Rows of an SQL source with old time stamps, published late.
            seg(21, 30, 150, Some(400)),
            seg(31, 40, 390, Some(401)),
        ];
        // Written at 300, up to 250: segments 1 and 2. The third has old
        // rows but was published after the acknowledgement was written.
        assert_eq!(ts_to_id(t(250), t(200), t(500), &published), Ok(Some(10)));
        assert_eq!(ts_to_id(t(250), t(300), t(500), &published), Ok(Some(20)));
        // A row newer than the ack stops the run there.
        assert_eq!(ts_to_id(t(150), t(300), t(500), &published), Ok(Some(10)));
        assert_eq!(ts_to_id(t(100), t(300), t(500), &published), Ok(None));
        // Written after all were published, up to 391: the third was
        // published at 400, after the time the Historian acknowledges.
        assert_eq!(ts_to_id(t(391), t(450), t(500), &published), Ok(Some(20)));
        assert_eq!(ts_to_id(t(402), t(450), t(500), &published), Ok(Some(40)));
        assert!(ts_to_id(t(600), t(450), t(500), &published).is_err());
    }

    #[test]
    fn limits_drop_whole_oldest_segments() {
        let segs = [
            seg(1, 100, 10, Some(1)),
            seg(101, 200, 20, Some(2)),
            seg(201, 300, 30, Some(3)),
        ];
        let limits = |max_rows, max_mb, max_age_days| Retention {
            max_rows,
            max_mb,
            max_age_days,
        };
        let now = t(40);
        assert_eq!(over_limits(&segs, 0, 0, &limits(300, 0, 0), now), 0);
        assert_eq!(over_limits(&segs, 1, 0, &limits(300, 0, 0), now), 1);
        assert_eq!(over_limits(&segs, 50, 0, &limits(100, 0, 0), now), 3);
        // 3000 bytes of segments and 1 MiB open against max_mb 1.
        assert_eq!(over_limits(&segs, 0, 1 << 20, &limits(0, 1, 0), now), 3);
        assert_eq!(
            over_limits(&segs, 0, (1 << 20) - 3000, &limits(0, 1, 0), now),
            0
        );
        assert_eq!(
            over_limits(&segs, 0, (1 << 20) - 2000, &limits(0, 1, 0), now),
            1
        );
        // Age: newest row older than the limit.
        let day = 86_400;
        let old = [seg(1, 1, 10, Some(1)), seg(2, 2, 2 * day, Some(1))];
        assert_eq!(over_limits(&old, 0, 0, &limits(0, 0, 1), t(day + 11)), 1);
        assert_eq!(over_limits(&old, 0, 0, &limits(0, 0, 0), t(10 * day)), 0);
    }
}
