//! When a script runs: every cycle, every N milliseconds, or at times of day
//! given in cron's five fields (minute hour day-of-month month day-of-week),
//! e.g. `0 * * * *` every full hour, `0 6,14,22 * * *` at each shift change.
//! Cron times are the gateway's local time, because shifts are.

use chrono::{Datelike, NaiveDateTime, Timelike};
use std::time::{Duration, Instant};

/// A parsed cron expression: one bit mask per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether day-of-month / day-of-week were restricted (not `*`): cron
    /// runs on either when both are.
    days_restricted: bool,
    weekdays_restricted: bool,
}

impl Cron {
    /// Parses `m h dom mon dow`. Fields take `*`, `n`, `a-b`, `*/s`,
    /// `a-b/s` and comma lists; day-of-week 0 and 7 are Sunday.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "cron `{text}` needs 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ));
        }
        let mut weekdays = field(fields[4], 0, 7, "day-of-week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Cron {
            text: fields.join(" "),
            minutes: field(fields[0], 0, 59, "minute")?,
            hours: field(fields[1], 0, 23, "hour")?,
            days: field(fields[2], 1, 31, "day-of-month")?,
            months: field(fields[3], 1, 12, "month")?,
            weekdays,
            days_restricted: fields[2] != "*",
            weekdays_restricted: fields[4] != "*",
        })
    }

    /// Whether the minute of `t` matches.
    pub fn matches(&self, t: &NaiveDateTime) -> bool {
        let bit = |mask: u64, v: u32| mask & (1 << v) != 0;
        let day = bit(self.days, t.day());
        let weekday = bit(self.weekdays, t.weekday().num_days_from_sunday());
        let day_ok = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            _ => day && weekday,
        };
        bit(self.minutes, t.minute())
            && bit(self.hours, t.hour())
            && bit(self.months, t.month())
            && day_ok
    }
}

fn field(text: &str, min: u32, max: u32, name: &str) -> Result<u64, String> {
    let mut mask = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("cron {name}: bad step in `{part}`"))?,
            ),
            None => (part, 1),
        };
        let num = |s: &str| -> Result<u32, String> {
            s.parse::<u32>()
                .ok()
                .filter(|v| (min..=max).contains(v))
                .ok_or_else(|| format!("cron {name}: `{s}` is not {min}..{max}"))
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (num(a)?, num(b)?)
        } else {
            let v = num(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo > hi {
            return Err(format!("cron {name}: range `{range}` runs backwards"));
        }
        for v in (lo..=hi).step_by(step as usize) {
            mask |= 1 << v;
        }
    }
    Ok(mask)
}

/// How often a script runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every cycle of the central loop.
    EveryCycle,
    /// At the first cycle, then every period (on a fixed grid).
    Every(Duration),
    /// In the first cycle of each local minute the expression matches.
    Cron(Cron),
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::EveryCycle => f.write_str("every cycle"),
            Schedule::Every(d) => write!(f, "every {} ms", d.as_millis()),
            Schedule::Cron(c) => write!(f, "cron `{}` (local time)", c.text),
        }
    }
}

/// Minutes a cron timer looks back over when the wall clock jumped forward
/// (a daylight-saving change is one hour; beyond 3 h only the current
/// minute counts, rather than firing for a day of missed runs at once).
const MAX_CATCH_UP_MINUTES: i64 = 180;

/// A schedule and what it remembers about its last run.
#[derive(Debug, Clone)]
pub struct Timer {
    schedule: Schedule,
    next: Option<Instant>,
    /// The latest local minute seen (a high-water mark).
    last_minute: Option<NaiveDateTime>,
}

impl Timer {
    /// A timer that has not fired yet.
    pub fn new(schedule: Schedule) -> Timer {
        Timer {
            schedule,
            next: None,
            last_minute: None,
        }
    }

    /// Whether the script is due in the cycle starting at `now` (local wall
    /// time `local`), given the cycle period; records the run if so. Half a
    /// cycle of slack keeps an `Every` period that is a multiple of the
    /// cycle from slipping a whole cycle on jitter.
    pub fn due(&mut self, now: Instant, local: NaiveDateTime, cycle: Duration) -> bool {
        match &self.schedule {
            Schedule::EveryCycle => true,
            Schedule::Every(period) => match self.next {
                Some(next) if now + cycle / 2 < next => false,
                Some(next) => {
                    let mut n = next + *period;
                    while n <= now {
                        n += *period;
                    }
                    self.next = Some(n);
                    true
                }
                None => {
                    self.next = Some(now + *period);
                    true
                }
            },
            Schedule::Cron(cron) => {
                let minute = local
                    .with_second(0)
                    .and_then(|t| t.with_nanosecond(0))
                    .unwrap_or(local);
                let Some(last) = self.last_minute else {
                    self.last_minute = Some(minute);
                    return cron.matches(&minute);
                };
                if minute <= last {
                    // The same minute, or the clock went back (the autumn
                    // change repeats an hour): a wall-clock minute never
                    // runs twice.
                    return false;
                }
                self.last_minute = Some(minute);
                // Minutes the wall clock skipped (the spring change jumps
                // an hour; a long cycle steps over minutes) still count,
                // once: a 02:30 job runs at 03:00 on spring-forward day.
                let skipped = (minute - last).num_minutes();
                if skipped > MAX_CATCH_UP_MINUTES {
                    return cron.matches(&minute);
                }
                (1..=skipped).any(|k| cron.matches(&(last + chrono::Duration::minutes(k))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(d: u32, h: u32, m: u32, s: u32) -> NaiveDateTime {
        // 2026-11-01 is a Sunday.
        NaiveDate::from_ymd_opt(2026, 11, d)
            .unwrap()
            .and_hms_opt(h, m, s)
            .unwrap()
    }

    #[test]
    fn cron_fields() {
        let hourly = Cron::parse("0 * * * *").unwrap();
        assert!(hourly.matches(&at(2, 13, 0, 0)));
        assert!(!hourly.matches(&at(2, 13, 1, 0)));
        let shifts = Cron::parse("0 6,14,22 * * *").unwrap();
        assert!(shifts.matches(&at(3, 14, 0, 0)) && !shifts.matches(&at(3, 15, 0, 0)));
        let every15 = Cron::parse("*/15 8-17 * * 1-5").unwrap();
        assert!(every15.matches(&at(2, 8, 45, 0)), "Monday 08:45");
        assert!(!every15.matches(&at(1, 8, 45, 0)), "Sunday");
        assert!(!every15.matches(&at(2, 18, 0, 0)));
        let sunday = Cron::parse("0 0 * * 7").unwrap();
        assert!(sunday.matches(&at(1, 0, 0, 0)));
        // Both day fields restricted: either matches (cron's rule).
        let either = Cron::parse("0 0 15 * 1").unwrap();
        assert!(either.matches(&at(15, 0, 0, 0)) && either.matches(&at(2, 0, 0, 0)));
        for bad in [
            "* * * *",
            "60 * * * *",
            "5-1 * * * *",
            "*/0 * * * *",
            "x * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cron_fires_once_per_matching_minute() {
        let mut t = Timer::new(Schedule::Cron(Cron::parse("0 * * * *").unwrap()));
        let now = Instant::now();
        let c = Duration::from_secs(1);
        assert!(!t.due(now, at(2, 12, 59, 59), c));
        assert!(t.due(now, at(2, 13, 0, 0), c));
        assert!(!t.due(now, at(2, 13, 0, 1), c), "same minute");
        assert!(!t.due(now, at(2, 13, 1, 0), c));
        assert!(t.due(now, at(2, 14, 0, 30), c));
    }

    #[test]
    fn every_runs_on_a_grid_with_slack() {
        let mut t = Timer::new(Schedule::Every(Duration::from_secs(5)));
        let t0 = Instant::now();
        let c = Duration::from_secs(1);
        let l = at(2, 0, 0, 0);
        let ms = Duration::from_millis;
        let runs: Vec<u64> = (0..16)
            .filter(|i| {
                // Cycles land a few ms early or late.
                let jitter = if i % 2 == 0 { ms(3) } else { Duration::ZERO };
                let now =
                    t0 + Duration::from_secs(*i) - if *i > 0 { jitter } else { Duration::ZERO };
                t.due(now, l, c)
            })
            .collect();
        assert_eq!(runs, vec![0, 5, 10, 15]);
        let mut each = Timer::new(Schedule::EveryCycle);
        assert!(each.due(t0, l, c) && each.due(t0, l, c));
    }

    #[test]
    fn spring_forward_runs_a_skipped_job_once_and_autumn_never_twice() {
        // Europe's 2026 changes: 29 March 02:00 -> 03:00, 25 October 03:00 -> 02:00.
        let t = |d: u32, m: u32, h: u32, min: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, m, d)
                .unwrap()
                .and_hms_opt(h, min, 0)
                .unwrap()
        };
        let cron = Schedule::Cron(Cron::parse("30 2 * * *").unwrap());
        let c = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut timer = Timer::new(cron.clone());
        // Spring: local time goes 01:58, 01:59, 03:00, 03:01.
        let spring = [
            t(29, 3, 1, 58),
            t(29, 3, 1, 59),
            t(29, 3, 3, 0),
            t(29, 3, 3, 1),
        ];
        let runs: Vec<bool> = spring.iter().map(|l| timer.due(t0, *l, c)).collect();
        assert_eq!(runs, vec![false, false, true, false], "once, at 03:00");
        // Autumn: 02:29 .. 02:59, then 02:00 .. 02:59 again, then 03:00.
        let mut timer = Timer::new(cron);
        let mut local: Vec<NaiveDateTime> = (29..60).map(|m| t(25, 10, 2, m)).collect();
        local.extend((0..60).map(|m| t(25, 10, 2, m)));
        local.push(t(25, 10, 3, 0));
        let runs = local.iter().filter(|l| timer.due(t0, **l, c)).count();
        assert_eq!(runs, 1, "02:30 happens twice, the job runs once");
        // An hourly job through the repeated hour: 02:00 once, 03:00 once
        // (two real hours, two runs less the repeated 02:00).
        let mut hourly = Timer::new(Schedule::Cron(Cron::parse("0 * * * *").unwrap()));
        let mut local = vec![t(25, 10, 1, 59)];
        local.extend((0..60).map(|m| t(25, 10, 2, m)));
        local.extend((0..60).map(|m| t(25, 10, 2, m)));
        local.push(t(25, 10, 3, 0));
        let fired: Vec<NaiveDateTime> = local
            .iter()
            .copied()
            .filter(|l| hourly.due(t0, *l, c))
            .collect();
        assert_eq!(fired, vec![t(25, 10, 2, 0), t(25, 10, 3, 0)]);
    }
}
