//! Plain JSON topics for brokers without a Sparkplug host:
//! `{prefix}/{connector}/{tag}` carrying
//! `{"value":…,"status":0,"quality":"good","ts":"2026-11-28T06:00:00.123Z"}`.
//! Integers are exact in the JSON text (a u64 above 2^53 too: the text is
//! the digits, whatever a reader does with them); a value that is not
//! good has `"value": null` unless the tag kept its last one, and its
//! status says which. `{prefix}/status` is retained: `{"online":true}`
//! while RTDS is connected, `{"online":false}` as its Will.

use crate::model::{Status, Timestamp, Value, format_ts};

/// The topic of a tag: `+` and `#` in names (wildcards in MQTT) become `_`.
pub fn topic(prefix: &str, source: &str, tag: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if matches!(c, '+' | '#' | '\0') {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    };
    format!("{prefix}/{}/{}", clean(source), clean(tag))
}

/// The status topic.
pub fn status_topic(prefix: &str) -> String {
    format!("{prefix}/status")
}

/// The payload of one value of a tag of type `type_name`: a bit array
/// (`bool[]`, held as 0 and 1 for scripts) as `true`/`false`.
pub fn payload(type_name: &str, value: Option<&Value>, status: Status, ts: &Timestamp) -> Vec<u8> {
    let value = match value {
        None => "null".to_string(),
        Some(Value::Array(items)) if type_name.eq_ignore_ascii_case("bool[]") => {
            crate::json::value(&Value::Array(
                items
                    .iter()
                    .map(|x| match x {
                        Value::Int(i) => Value::Bool(*i != 0),
                        other => other.clone(),
                    })
                    .collect(),
            ))
        }
        Some(v) => crate::json::value(v),
    };
    format!(
        "{{\"value\":{value},\"status\":{},\"quality\":{},\"ts\":\"{}\"}}",
        status.0,
        crate::json::string(if status.is_good() {
            "good"
        } else if status == Status::STALE {
            "stale"
        } else {
            "bad"
        }),
        format_ts(ts)
    )
    .into_bytes()
}

/// The status payload.
pub fn online(online: bool, ts: &Timestamp) -> Vec<u8> {
    format!("{{\"online\":{online},\"ts\":\"{}\"}}", format_ts(ts)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn payloads_keep_integers_exact() {
        let ts = chrono::Utc.timestamp_millis_opt(1_800_000_000_123).unwrap();
        let p = payload("u64", Some(&Value::UInt(u64::MAX)), Status::GOOD, &ts);
        assert_eq!(
            String::from_utf8(p).unwrap(),
            "{\"value\":18446744073709551615,\"status\":0,\"quality\":\"good\",\"ts\":\"2027-01-15T08:00:00.123Z\"}"
        );
        let p = payload("u16", None, Status::TIMEOUT, &ts);
        let bits = Value::Array(vec![Value::Int(1), Value::Int(0)]);
        let p2 = payload("bool[]", Some(&bits), Status::GOOD, &ts);
        assert!(
            String::from_utf8(p2)
                .unwrap()
                .starts_with("{\"value\":[true,false],")
        );
        assert!(
            String::from_utf8(p)
                .unwrap()
                .starts_with("{\"value\":null,\"status\":2,\"quality\":\"bad\"")
        );
        assert_eq!(topic("rtds/gw1", "plc1", "a+b#"), "rtds/gw1/plc1/a_b_");
    }
}
