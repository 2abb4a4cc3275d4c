//! When a value goes to the archive: the deadband / heartbeat / status rules,
//! as pure functions on one tag's state, so every rule is tested on a
//! scripted sequence without a database.
//!
//! - The first value of a tag is archived.
//! - A change of status is always archived, once.
//! - While the status is bad, nothing more is archived (no heartbeat repeats
//!   a stale value as if it were fresh).
//! - A good numeric value is archived when it differs from the last
//!   *archived* value by more than the deadband; strings, bools and arrays on
//!   any change.
//! - When the heartbeat period has passed since the last archived row and the
//!   tag is good, its current value is archived with the current time stamp.
//! - With `archive_prev`, the held sample before a deadband exception is
//!   archived too (as PI does), so a trend is not drawn as a false ramp.

use crate::model::{Status, Timestamp, Value};
use std::time::Duration;

/// How much a numeric value must move to be archived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    /// Any change.
    Exact,
    /// More than this many engineering units (a percent-of-span deadband is
    /// converted to units when the config is read).
    Absolute(f64),
}

/// A tag's archive rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArchivePolicy {
    /// Numeric deadband.
    pub deadband: Deadband,
    /// Archive the current value when nothing was archived for this long.
    pub heartbeat: Option<Duration>,
    /// Also archive the held previous sample on a deadband exception.
    pub keep_prev: bool,
}

impl Default for ArchivePolicy {
    fn default() -> Self {
        ArchivePolicy {
            deadband: Deadband::Exact,
            heartbeat: Some(Duration::from_secs(900)),
            keep_prev: false,
        }
    }
}

/// One archive row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Value (`None` = NULL: the tag never had one).
    pub value: Option<Value>,
    /// Status.
    pub status: Status,
    /// Time stamp.
    pub ts: Timestamp,
}

/// What the archive knows about one tag. Its rules are passed in, not
/// held: storage keeps them once, with the tag's description.
#[derive(Debug, Clone, PartialEq)]
pub struct TagArchive {
    /// The last archived row.
    pub last: Option<Row>,
    /// The latest sample seen (archived or not).
    pub latest: Option<Row>,
}

impl TagArchive {
    /// A tag with nothing archived yet (or, after a restart, `last` from the
    /// database).
    pub fn new(last: Option<Row>) -> Self {
        TagArchive { last, latest: None }
    }

    /// Takes a new sample; returns the rows to archive (0, 1, or 2 with a
    /// held previous sample), oldest first, and whether the value or
    /// status differs from the previous sample's (only the time moved
    /// otherwise: `current` need not be rewritten at once). A sample
    /// without a value keeps the last value (a failed read), as `current`
    /// does.
    #[inline(always)]
    pub fn on_sample(
        &mut self,
        policy: &ArchivePolicy,
        value: Option<&Value>,
        status: Status,
        ts: Timestamp,
    ) -> Archived {
        match self.steady(policy, value, status, ts) {
            Some(steady) => {
                let mut out = Archived {
                    changed: steady.changed,
                    ..Archived::default()
                };
                if steady.archived
                    && let Some(row) = &self.last
                {
                    out.push(row.clone());
                }
                out
            }
            None => self.general(policy, value, status, ts),
        }
    }

    /// The steady state, most samples: a good reading of a tag whose last
    /// archived row and latest sample are good with a value, without a
    /// held previous sample to keep. The latest is updated in place (a
    /// scalar copied, text into its own buffer); a row archived is
    /// `self.last`, for the caller to queue. `None` (nothing done) for
    /// every other case, which [`TagArchive::general`] handles. Inline in
    /// storage's loop over a batch, without the emitting closure the
    /// general rules use (building one for every sample cost more than the
    /// rules).
    #[inline(always)]
    pub fn steady(
        &mut self,
        policy: &ArchivePolicy,
        value: Option<&Value>,
        status: Status,
        ts: Timestamp,
    ) -> Option<Steady> {
        let (Some(latest), Some(last), Some(v)) = (&mut self.latest, &mut self.last, value) else {
            return None;
        };
        let held = latest.value.as_mut()?;
        if !status.is_good() || last.status != status || latest.status != status || policy.keep_prev
        {
            return None;
        }
        let changed = !held.same_as(v);
        let archived = exceeds(policy.deadband, last.value.as_ref(), value);
        held.set_from(v);
        latest.ts = ts;
        if archived {
            last.clone_from(latest);
        }
        Some(Steady { changed, archived })
    }

    /// [`TagArchive::on_sample`] for every case (the steady state is this
    /// with its conditions known).
    pub fn general(
        &mut self,
        policy: &ArchivePolicy,
        value: Option<&Value>,
        status: Status,
        ts: Timestamp,
    ) -> Archived {
        let mut out = Archived::default();
        out.changed = self.rules(policy, value, status, ts, &mut |r| out.push(r));
        out
    }

    /// The rules, each row handed to `emit`; returns whether the value or
    /// status changed.
    fn rules(
        &mut self,
        policy: &ArchivePolicy,
        value: Option<&Value>,
        status: Status,
        ts: Timestamp,
        emit: &mut impl FnMut(Row),
    ) -> bool {
        let value = match value {
            Some(v) => Some(v.clone()),
            None => self.latest.as_ref().and_then(|l| l.value.clone()),
        };
        let row = Row { value, status, ts };
        let changed = self
            .latest
            .as_ref()
            .is_none_or(|l| l.status != row.status || l.value != row.value);
        let archive = match &self.last {
            None => true,
            Some(last) if last.status != status => true,
            Some(_) if !status.is_good() => false,
            Some(last) => {
                let fire = exceeds(policy.deadband, last.value.as_ref(), row.value.as_ref());
                if fire
                    && policy.keep_prev
                    && let Some(held) = &self.latest
                    && held.ts > last.ts
                    && held.status == last.status
                    && held.value != last.value
                {
                    emit(held.clone());
                }
                fire
            }
        };
        if archive {
            emit(row.clone());
            self.last = Some(row.clone());
        }
        self.latest = Some(row);
        changed
    }
}

/// What a sample in the steady state did (see [`TagArchive::steady`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steady {
    /// The value differs from the previous sample's.
    pub changed: bool,
    /// It was archived: the row is the tag's `last`.
    pub archived: bool,
}

/// The rows one sample archives, oldest first: none, one, or a held
/// previous sample and it. Kept inline: most samples archive nothing, and
/// a vector per sample that does was an allocation per archived row.
#[derive(Debug, Default)]
pub struct Archived {
    rows: [Option<Row>; 2],
    /// Whether the value or status differs from the previous sample's (only
    /// the time moved otherwise: `current` need not be rewritten at once).
    pub changed: bool,
}

impl Archived {
    fn push(&mut self, row: Row) {
        let slot = usize::from(self.rows[0].is_some());
        self.rows[slot] = Some(row);
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.rows.iter().flatten().count()
    }

    /// Whether the sample archived nothing.
    pub fn is_empty(&self) -> bool {
        self.rows[0].is_none()
    }
}

impl IntoIterator for Archived {
    type Item = Row;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<Row>, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.into_iter().flatten()
    }
}

impl TagArchive {
    /// The heartbeat row due at `now`, if any: the current value with the
    /// current time stamp, only while the tag is good.
    pub fn on_tick(&mut self, policy: &ArchivePolicy, now: Timestamp) -> Option<Row> {
        let period = policy.heartbeat?;
        let last = self.last.as_ref()?;
        let latest = self.latest.as_ref()?;
        if !latest.status.is_good() || !last.status.is_good() {
            return None;
        }
        let since = (now - last.ts).to_std().unwrap_or(Duration::ZERO);
        if since < period {
            return None;
        }
        let row = Row {
            value: latest.value.clone(),
            status: latest.status,
            ts: now,
        };
        self.last = Some(row.clone());
        Some(row)
    }
}

#[inline(always)]
fn exceeds(deadband: Deadband, old: Option<&Value>, new: Option<&Value>) -> bool {
    // The arms every sample of a number takes first, inline; the same rules.
    match (deadband, old, new) {
        (_, _, None) => false,
        (Deadband::Absolute(d), Some(Value::Float(a)), Some(Value::Float(b))) => beyond(*a, *b, d),
        (Deadband::Absolute(d), Some(Value::Int(a)), Some(Value::Int(b))) => {
            beyond(*a as f64, *b as f64, d)
        }
        (Deadband::Exact, Some(a), Some(b)) => !a.same_as(b),
        _ => exceeds_in_general(deadband, old, new),
    }
}

fn exceeds_in_general(deadband: Deadband, old: Option<&Value>, new: Option<&Value>) -> bool {
    match (deadband, old, new) {
        (_, _, None) => false,
        (
            Deadband::Absolute(d),
            Some(a @ (Value::Int(_) | Value::UInt(_) | Value::Float(_))),
            Some(b @ (Value::Int(_) | Value::UInt(_) | Value::Float(_))),
        ) => beyond(a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0), d),
        (_, a, b) => a != b,
    }
}

/// Whether two numbers are more than the deadband apart (a number and NaN
/// always are).
#[inline(always)]
fn beyond(a: f64, b: f64, d: f64) -> bool {
    (a - b).abs() > d || a.is_nan() != b.is_nan()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn t(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn f(x: f64) -> Option<Value> {
        Some(Value::Float(x))
    }

    /// Feeds (second, value, status) samples with a tick after each, and
    /// returns the archived rows as (second, value, status).
    fn run(policy: ArchivePolicy, seq: &[(i64, Option<f64>, u16)]) -> Vec<(i64, Option<f64>, u16)> {
        let mut a = TagArchive::new(None);
        let mut rows = Vec::new();
        for &(s, v, st) in seq {
            rows.extend(a.on_tick(&policy, t(s)));
            rows.extend(a.on_sample(&policy, v.map(Value::Float).as_ref(), Status(st), t(s)));
        }
        rows.iter()
            .map(|r| {
                (
                    r.ts.timestamp() - 1_800_000_000,
                    r.value.as_ref().and_then(Value::as_f64),
                    r.status.0,
                )
            })
            .collect()
    }

    const DB1_HB10: ArchivePolicy = ArchivePolicy {
        deadband: Deadband::Absolute(1.0),
        heartbeat: Some(Duration::from_secs(10)),
        keep_prev: false,
    };

    #[test]
    fn the_readme_timeline() {
        // Deadband 1.0, heartbeat 10 s; one sample per second (abridged).
        let seq = [
            (0, Some(20.0), 0),  // first value: archived
            (1, Some(20.5), 0),  // within the deadband
            (2, Some(21.0), 0),  // exactly 1.0 away: not *more* than the deadband
            (3, Some(21.2), 0),  // 1.2 from 20.0: archived
            (4, Some(21.0), 0),  // 0.2 from 21.2
            (13, Some(21.0), 0), // 10 s since 3: heartbeat with the time of the tick
            (14, None, 2),       // timeout: status change archived (last value kept)
            (30, None, 2),       // still bad: no heartbeat, no repeat
            (31, Some(21.1), 0), // good again: status change archived
            (32, Some(50.0), 0), // a jump
        ];
        assert_eq!(
            run(DB1_HB10, &seq),
            vec![
                (0, Some(20.0), 0),
                (3, Some(21.2), 0),
                (13, Some(21.0), 0),
                (14, Some(21.0), 2),
                (31, Some(21.1), 0),
                (32, Some(50.0), 0),
            ]
        );
    }

    #[test]
    fn heartbeat_repeats_the_current_value_with_the_current_time() {
        let mut a = TagArchive::new(None);
        a.on_sample(&DB1_HB10, f(5.0).as_ref(), Status::GOOD, t(0));
        assert_eq!(a.on_tick(&DB1_HB10, t(9)), None);
        assert_eq!(
            a.on_tick(&DB1_HB10, t(10)),
            Some(Row {
                value: f(5.0),
                status: Status::GOOD,
                ts: t(10)
            })
        );
        assert_eq!(
            a.on_tick(&DB1_HB10, t(15)),
            None,
            "the heartbeat restarts the period"
        );
        assert!(a.on_tick(&DB1_HB10, t(20)).is_some());
    }

    #[test]
    fn bad_status_is_archived_once_and_never_heartbeated() {
        let mut a = TagArchive::new(None);
        a.on_sample(&DB1_HB10, f(5.0).as_ref(), Status::GOOD, t(0));
        let rows: Vec<Row> = a
            .on_sample(&DB1_HB10, None, Status::NOT_CONNECTED, t(1))
            .into_iter()
            .collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].value.clone(), rows[0].status),
            (f(5.0), Status::NOT_CONNECTED)
        );
        assert!(
            a.on_sample(&DB1_HB10, None, Status::NOT_CONNECTED, t(2))
                .is_empty()
        );
        for s in [20, 100, 1000] {
            assert_eq!(a.on_tick(&DB1_HB10, t(s)), None);
        }
        // Another bad status is a change.
        assert_eq!(
            a.on_sample(&DB1_HB10, None, Status::TIMEOUT, t(1001)).len(),
            1
        );
    }

    #[test]
    fn archive_prev_keeps_the_held_sample() {
        let policy = ArchivePolicy {
            keep_prev: true,
            ..DB1_HB10
        };
        let seq = [
            (0, Some(10.0), 0),
            (1, Some(10.4), 0),
            (2, Some(10.8), 0),
            (3, Some(15.0), 0),
        ];
        assert_eq!(
            run(policy, &seq),
            vec![(0, Some(10.0), 0), (2, Some(10.8), 0), (3, Some(15.0), 0)]
        );
        // Without it the trend would read as a ramp from 10.0 to 15.0.
        assert_eq!(
            run(DB1_HB10, &seq),
            vec![(0, Some(10.0), 0), (3, Some(15.0), 0)]
        );
    }

    #[test]
    fn strings_bools_and_arrays_archive_on_any_change() {
        let policy = ArchivePolicy {
            deadband: Deadband::Absolute(5.0),
            ..DB1_HB10
        };
        let mut a = TagArchive::new(None);
        let mut n = 0;
        for v in [
            Value::Bool(false),
            Value::Bool(true),
            Value::Bool(true),
            Value::Str("a".into()),
            Value::Str("b".into()),
            Value::Array(vec![Value::Float(1.0)]),
            Value::Array(vec![Value::Float(1.5)]),
        ] {
            n += a.on_sample(&policy, Some(&v), Status::GOOD, t(n)).len() as i64;
        }
        assert_eq!(n, 6);
    }

    #[test]
    fn exact_deadband_archives_every_change_only() {
        let seq = [(0, Some(1.0), 0), (1, Some(1.0), 0), (2, Some(1.000001), 0)];
        let policy = ArchivePolicy {
            deadband: Deadband::Exact,
            heartbeat: None,
            keep_prev: false,
        };
        assert_eq!(run(policy, &seq).len(), 2);
    }

    /// The inline deadband arms decide as the general rule does, for every
    /// pair of kinds (Int, UInt, Float with NaN and infinities, Bool, Str,
    /// none) under both kinds of deadband.
    #[test]
    fn the_inline_deadband_arms_follow_the_general_rule() {
        let values = [
            None,
            Some(Value::Int(0)),
            Some(Value::Int(1)),
            Some(Value::Int(-3)),
            Some(Value::Int(i64::MAX)),
            Some(Value::UInt(u64::MAX)),
            Some(Value::Float(0.0)),
            Some(Value::Float(-0.0)),
            Some(Value::Float(0.5)),
            Some(Value::Float(1.0)),
            Some(Value::Float(f64::NAN)),
            Some(Value::Float(f64::INFINITY)),
            Some(Value::Float(9.223_372_036_854_776e18)),
            Some(Value::Bool(true)),
            Some(Value::Str("1".into())),
        ];
        for deadband in [
            Deadband::Exact,
            Deadband::Absolute(0.0),
            Deadband::Absolute(0.5),
            Deadband::Absolute(f64::INFINITY),
        ] {
            for a in &values {
                for b in &values {
                    assert_eq!(
                        exceeds(deadband, a.as_ref(), b.as_ref()),
                        exceeds_in_general(deadband, a.as_ref(), b.as_ref()),
                        "{deadband:?} {a:?} {b:?}"
                    );
                }
            }
        }
    }

    /// The fast path gives what the general rules give: rows, `changed`
    /// and the state after, over pseudo-random sequences of values
    /// (repeats, NaN, missing), statuses and every kind of rule.
    #[test]
    fn the_steady_state_path_follows_the_general_rules() {
        let mut rand = crate::testrand::XorShift(0x2545_f491_4f6c_dd1d);
        let mut next = move || rand.next();
        let policies = [
            ArchivePolicy::default(),
            DB1_HB10,
            ArchivePolicy {
                keep_prev: true,
                ..DB1_HB10
            },
            ArchivePolicy {
                deadband: Deadband::Absolute(f64::INFINITY),
                heartbeat: None,
                keep_prev: false,
            },
        ];
        for policy in policies {
            let (mut fast, mut general) = (TagArchive::new(None), TagArchive::new(None));
            for step in 0..20_000i64 {
                let r = next();
                let value = match r % 7 {
                    0 => None,
                    1 => Some(Value::Float(f64::NAN)),
                    2 => Some(Value::Int((r >> 8) as i64 % 3)),
                    3 => Some(Value::Str(format!("{}", r % 2))),
                    _ => f((r >> 8) as f64 % 4.0),
                };
                let status = if r % 11 == 0 {
                    Status::TIMEOUT
                } else {
                    Status::GOOD
                };
                // Compared as text: NaN equals itself there.
                let out = fast.on_sample(&policy, value.as_ref(), status, t(step));
                let g = general.general(&policy, value.as_ref(), status, t(step));
                assert_eq!(out.changed, g.changed, "step {step}");
                let rows = |a: Archived| format!("{:?}", a.into_iter().collect::<Vec<_>>());
                assert_eq!(rows(out), rows(g), "step {step}");
                assert_eq!(format!("{fast:?}"), format!("{general:?}"), "step {step}");
            }
        }
    }
}
