//! Properties of cron fire times over random rules, zones and starts (1990-2100).
//!
//! The generator builds each expression together with the sets of values it allows, so the tests
//! match wall times with their own tiny matcher (the Vixie day rule included) rather than asking
//! croner or the code under test. The reference model walks every whole minute (every second for
//! 6-field rules) of a window, reads its wall time from the zone database, and applies the DST
//! rules as PRODUCT.md states them; the engine must produce exactly the same fires.

use dray_core::Timestamp;
use dray_core::cron::{CronRule, Rule};
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use proptest::prelude::*;

const ZONES: [&str; 6] =
    ["America/New_York", "Europe/London", "Europe/Berlin", "America/Santiago", "Australia/Lord_Howe", "Asia/Kolkata"];

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One generated field: its text and the values it allows (bit `v` for value `v`).
#[derive(Clone, Debug)]
struct Field {
    text: String,
    bits: u64,
}

fn bits_of(values: impl IntoIterator<Item = u8>) -> u64 {
    values.into_iter().fold(0, |bits, v| bits | 1 << v)
}

/// `names[v - first]` is the name of value `v`, when the field has names.
fn name_or_number(value: u8, first: u8, names: &[&str], as_name: bool) -> String {
    match names.get(usize::from(value.wrapping_sub(first))) {
        Some(name) if as_name => name.to_lowercase(),
        _ => value.to_string(),
    }
}

/// A field with values `min..=max`; `names` name the values from `first` on.
fn field(min: u8, max: u8, first: u8, names: &'static [&'static str]) -> BoxedStrategy<Field> {
    let star = Just(Field { text: "*".to_string(), bits: bits_of(min..=max) });
    let star_step =
        (1..=max).prop_map(move |n| Field { text: format!("*/{n}"), bits: bits_of((min..=max).step_by(n.into())) });
    let one = (min..=max, any::<bool>())
        .prop_map(move |(v, as_name)| Field { text: name_or_number(v, first, names, as_name), bits: bits_of([v]) });
    let range = (min..=max, min..=max, prop::option::of(1..=max)).prop_map(move |(a, b, step)| {
        let (low, high) = (a.min(b), a.max(b));
        let step_text = step.map(|n| format!("/{n}")).unwrap_or_default();
        Field {
            text: format!("{low}-{high}{step_text}"),
            bits: bits_of((low..=high).step_by(step.unwrap_or(1).into())),
        }
    });
    let list = (min..=max, min..=max, any::<bool>()).prop_map(move |(a, b, as_name)| Field {
        text: format!("{},{}", name_or_number(a, first, names, as_name), name_or_number(b, first, names, as_name)),
        bits: bits_of([a, b]),
    });
    prop_oneof![3 => star, 1 => star_step, 4 => one, 1 => range, 1 => list].boxed()
}

/// Hours and minutes near the DST changes of the zones above, so gaps and folds are hit often.
fn near_changes(values: &'static [u8]) -> BoxedStrategy<Field> {
    prop::sample::select(values).prop_map(|v| Field { text: v.to_string(), bits: bits_of([v]) }).boxed()
}

/// A generated rule: its text and what it allows, field by field.
#[derive(Clone, Debug)]
struct Spec {
    expr: String,
    seconds: Field,
    minutes: Field,
    hours: Field,
    days: Field,
    months: Field,
    weekdays: Field,
    six_fields: bool,
}

impl Spec {
    fn new(fields: [Field; 6], six_fields: bool) -> Spec {
        let [mut seconds, minutes, hours, days, months, mut weekdays] = fields;
        // Five fields fire at second 0.
        if !six_fields {
            seconds = Field { text: "0".to_string(), bits: 1 };
        }
        // Sunday is 0 and 7.
        if weekdays.bits & 1 << 7 != 0 {
            weekdays.bits = (weekdays.bits & !(1 << 7)) | 1;
        }
        let rest = [&minutes, &hours, &days, &months, &weekdays].map(|f| f.text.as_str()).join(" ");
        let expr = if six_fields { format!("{} {rest}", seconds.text) } else { rest };
        Spec { expr, seconds, minutes, hours, days, months, weekdays, six_fields }
    }

    /// cronie: interval-like when the minute or hour field starts with `*`.
    fn interval_like(&self) -> bool {
        self.minutes.text.starts_with('*') || self.hours.text.starts_with('*')
    }

    /// Whether a wall time matches. Vixie: the day fields are ORed when both are restricted, and
    /// ANDed when either was written starting with `*`.
    fn matches(&self, dt: DateTime) -> bool {
        let has = |f: &Field, v: i8| f.bits & 1 << v != 0;
        let day = has(&self.days, dt.day());
        let weekday = has(&self.weekdays, dt.weekday().to_sunday_zero_offset());
        let days = if self.days.text.starts_with('*') || self.weekdays.text.starts_with('*') {
            day && weekday
        } else {
            day || weekday
        };
        has(&self.seconds, dt.second())
            && has(&self.minutes, dt.minute())
            && has(&self.hours, dt.hour())
            && has(&self.months, dt.month())
            && days
    }
}

fn macro_spec() -> BoxedStrategy<Spec> {
    // The expansions, spelled out here rather than taken from the code under test.
    prop::sample::select(vec![
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ])
    .prop_map(|(name, fields)| {
        let f: Vec<&str> = fields.split(' ').collect();
        let all = |min: u8, max: u8| bits_of(min..=max);
        let parse = |text: &str, min, max| Field {
            text: text.to_string(),
            bits: if text == "*" { all(min, max) } else { bits_of([text.parse().unwrap()]) },
        };
        let fields = [
            parse("0", 0, 59),
            parse(f[0], 0, 59),
            parse(f[1], 0, 23),
            parse(f[2], 1, 31),
            parse(f[3], 1, 12),
            parse(f[4], 0, 7),
        ];
        Spec { expr: name.to_string(), ..Spec::new(fields, false) }
    })
    .boxed()
}

fn spec() -> BoxedStrategy<Spec> {
    let seconds = prop_oneof![3 => near_changes(&[0, 30]), 1 => field(0, 59, 0, &[])];
    let minutes = prop_oneof![2 => field(0, 59, 0, &[]), 1 => near_changes(&[0, 15, 30, 45])];
    let hours = prop_oneof![1 => field(0, 23, 0, &[]), 2 => near_changes(&[0, 1, 2, 3, 23])];
    // Day fields are mostly `*` so that DST days match often enough to test the DST rules.
    let star = |min: u8, max: u8| Field { text: "*".to_string(), bits: bits_of(min..=max) };
    let days = prop_oneof![3 => Just(star(1, 31)), 1 => field(1, 31, 1, &[])];
    let months = prop_oneof![3 => Just(star(1, 12)), 1 => field(1, 12, 1, &MONTHS)];
    let weekdays = prop_oneof![3 => Just(star(0, 7)), 1 => field(0, 7, 0, &DAYS)];
    let written = (any::<bool>(), seconds, minutes, hours, days, months, weekdays)
        .prop_map(|(six, s, m, h, dom, mon, dow)| Spec::new([s, m, h, dom, mon, dow], six));
    prop_oneof![6 => written, 1 => macro_spec()].boxed()
}

/// Where a start falls relative to one of the first two transitions of its year.
#[derive(Clone, Copy, Debug)]
enum Near {
    /// Anywhere in the year.
    Anywhere,
    /// Within the window before the transition, so the window holds it.
    Before(usize, u32),
    /// Less than a second before it: the first second searched is the transition itself.
    JustBefore(usize),
    /// Up to an hour after it: inside the second pass of a fold.
    After(usize, u32),
}

fn near() -> BoxedStrategy<Near> {
    prop_oneof![
        1 => Just(Near::Anywhere),
        3 => (0usize..2, any::<u32>()).prop_map(|(n, s)| Near::Before(n, s)),
        1 => (0usize..2).prop_map(Near::JustBefore),
        3 => (0usize..2, any::<u32>()).prop_map(|(n, s)| Near::After(n, s)),
    ]
    .boxed()
}

/// A start in `year` (1990..2100) placed as `near` says, with random milliseconds. Zones without
/// transitions (Kolkata) start anywhere in the year.
fn start(zone: &str, year: i16, near: Near, window_s: i64, ms: i64) -> Timestamp {
    let tz = TimeZone::get(zone).unwrap();
    let year_start = tz.to_timestamp(jiff::civil::date(year, 1, 1).at(0, 0, 0, 0)).unwrap();
    let transition = |n: usize| tz.following(year_start).nth(n).map(|t| t.timestamp().as_second());
    let anywhere = year_start.as_second() + ms.rem_euclid(365 * 86_400_000) / 1_000;
    let seconds = match near {
        Near::Anywhere => Some(anywhere),
        Near::Before(n, s) => transition(n).map(|t| t - 1 - i64::from(s) % window_s),
        Near::JustBefore(n) => transition(n).map(|t| t - 1),
        Near::After(n, s) => transition(n).map(|t| t + i64::from(s) % 3_600),
    };
    Timestamp::from_millis(seconds.unwrap_or(anywhere) * 1_000 + ms.rem_euclid(1_000))
}

fn jiff_ts(ts: Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ts.as_millis()).unwrap()
}

/// The transition at exactly `instant` into a gap, as (wall time before, wall time after).
fn gap_at(tz: &TimeZone, instant: jiff::Timestamp) -> Option<(DateTime, DateTime)> {
    let just_before = instant.checked_sub(jiff::SignedDuration::from_secs(1)).unwrap();
    let t = tz.following(just_before).next()?;
    if t.timestamp() != instant {
        return None;
    }
    let before = tz.to_offset(just_before).to_datetime(instant);
    let after = t.offset().to_datetime(instant);
    (after > before).then_some((before, after))
}

/// Whether a wall time inside `[from, to)` matches, stepping by `step_s`.
fn gap_holds_match(spec: &Spec, from: DateTime, to: DateTime, step_s: i64) -> bool {
    let mut dt = from;
    while dt < to {
        if spec.matches(dt) {
            return true;
        }
        dt = dt.checked_add(jiff::SignedDuration::from_secs(step_s)).unwrap();
    }
    false
}

/// The fires in `(after, end)`, instant by instant, from PRODUCT.md's rules.
fn reference(spec: &Spec, tz: &TimeZone, after: Timestamp, end_s: i64) -> Vec<i64> {
    let step_s = if spec.six_fields { 1 } else { 60 };
    let first_s = (after.as_millis().div_euclid(1_000) + 1 + step_s - 1).div_euclid(step_s) * step_s;
    let mut fires = Vec::new();
    let mut s = first_s;
    while s < end_s {
        let instant = jiff::Timestamp::from_second(s).unwrap();
        let wall = tz.to_datetime(instant);
        if spec.matches(wall) {
            let first_occurrence = match tz.to_ambiguous_timestamp(wall).offset() {
                AmbiguousOffset::Fold { before, .. } => before.to_timestamp(wall).unwrap() == instant,
                _ => true,
            };
            if spec.interval_like() || first_occurrence {
                fires.push(s);
            }
        }
        s += step_s;
    }
    if !spec.interval_like() {
        let from = jiff::Timestamp::from_second(first_s - 1).unwrap();
        for t in tz.following(from).take_while(|t| t.timestamp().as_second() < end_s) {
            if let Some((before, after)) = gap_at(tz, t.timestamp())
                && gap_holds_match(spec, before, after, step_s)
            {
                fires.push(t.timestamp().as_second());
            }
        }
    }
    fires.sort_unstable();
    fires.dedup();
    fires
}

fn fires_until(rule: &Rule, after: Timestamp, end_s: i64) -> Vec<i64> {
    let mut fires = Vec::new();
    let mut at = after;
    while let Some(next) = rule.next_after(at) {
        if next.as_millis() >= end_s * 1_000 {
            break;
        }
        assert_eq!(next.as_millis() % 1_000, 0, "fires are on whole seconds");
        fires.push(next.as_millis() / 1_000);
        at = next;
    }
    fires
}

proptest! {
    // 256 cases by default (about a second); `PROPTEST_CASES` overrides it for a long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    /// Fires strictly increase, and each one's wall time matches the rule, except a fixed-time
    /// rule's fire at a spring-forward transition standing for a wall time inside the gap.
    /// Interval-like rules have no such exception: they never fire for a gap time.
    #[test]
    fn fires_increase_and_match(
        spec in spec(),
        zone in prop::sample::select(&ZONES[..]),
        year in 1990i16..2100,
        near in near(),
        ms in any::<i64>(),
    ) {
        let rule = Rule::Cron(CronRule::parse(&spec.expr, zone).unwrap());
        prop_assert_eq!(matches!(&rule, Rule::Cron(r) if r.is_interval_like()), spec.interval_like());
        let tz = TimeZone::get(zone).unwrap();
        let after = start(zone, year, near, 3 * 86_400, ms);
        let fires = rule.upcoming(after, 40);
        let mut previous = after;
        for fire in fires {
            prop_assert!(fire > previous, "{} then {}", previous, fire);
            previous = fire;
            let instant = jiff_ts(fire);
            let wall = tz.to_datetime(instant);
            if spec.matches(wall) {
                continue;
            }
            prop_assert!(!spec.interval_like(), "interval-like fire at {} (wall {}) does not match", instant, wall);
            let gap = gap_at(&tz, instant);
            prop_assert!(gap.is_some(), "fixed-time fire at {} (wall {}) neither matches nor is a gap", instant, wall);
            let (before, after) = gap.unwrap();
            let step_s = if spec.six_fields { 1 } else { 60 };
            prop_assert!(gap_holds_match(&spec, before, after, step_s), "gap fire at {} without a match in the gap", instant);
        }
    }

    /// Over a window holding a DST change (or not), the engine fires exactly where the reference
    /// model does: nothing missed, nothing extra, nothing twice.
    #[test]
    fn fires_equal_the_reference_model(
        spec in spec(),
        zone in prop::sample::select(&ZONES[..]),
        year in 1990i16..2100,
        near in near(),
        ms in any::<i64>(),
    ) {
        let rule = Rule::Cron(CronRule::parse(&spec.expr, zone).unwrap());
        let tz = TimeZone::get(zone).unwrap();
        // Every second of two hours for 6-field rules, every minute of three days otherwise.
        let window_s = if spec.six_fields { 2 * 3_600 } else { 3 * 86_400 };
        let after = start(zone, year, near, window_s, ms);
        let end_s = after.as_millis().div_euclid(1_000) + window_s;
        prop_assert_eq!(fires_until(&rule, after, end_s), reference(&spec, &tz, after, end_s), "{}", spec.expr);
    }

    /// A fixed-time daily rule fires exactly once on every local calendar day, DST days included,
    /// at its wall time or, when that is in a gap, at the end of the gap.
    #[test]
    fn fixed_time_daily_fires_once_a_day(
        minute in 0i8..60,
        hour in prop_oneof![0i8..24, prop::sample::select(vec![0i8, 1, 2, 23])],
        zone in prop::sample::select(&ZONES[..]),
        year in 1990i16..2100,
        ms in any::<i64>(),
    ) {
        let expr = format!("{minute} {hour} * * *");
        let rule = Rule::Cron(CronRule::parse(&expr, zone).unwrap());
        let tz = TimeZone::get(zone).unwrap();
        let after = start(zone, year, Near::Anywhere, 1, ms);
        let fires = rule.upcoming(after, 400);
        prop_assert_eq!(fires.len(), 400);
        let mut previous_day = None;
        for fire in fires {
            let instant = jiff_ts(fire);
            let wall = tz.to_datetime(instant);
            if let Some(day) = previous_day {
                prop_assert_eq!(wall.date(), jiff::civil::Date::tomorrow(day).unwrap(), "{} in {}", expr, zone);
            }
            previous_day = Some(wall.date());
            if (wall.hour(), wall.minute()) != (hour, minute) {
                let gap = gap_at(&tz, instant);
                prop_assert!(gap.is_some(), "{} fired at {} (wall {}), not a gap", expr, instant, wall);
                let (before, after) = gap.unwrap();
                let wanted = wall.date().at(hour, minute, 0, 0);
                prop_assert!(before <= wanted && wanted < after, "{} fired at {} for a time outside the gap", expr, instant);
            }
        }
    }
}

/// Dense and sparse rules answer without scanning second by second across years.
#[test]
fn dense_and_sparse_rules_stay_fast() {
    let every_second = Rule::Cron(CronRule::parse("* * * * * *", "America/New_York").unwrap());
    let from = Timestamp::from_millis(1_741_500_000_000); // 2025-03-09T06:00:00Z, an hour before the gap
    let fires = every_second.upcoming(from, 10_000);
    assert_eq!(fires.len(), 10_000);
    assert!(fires.windows(2).all(|w| w[1].as_millis() - w[0].as_millis() == 1_000));

    // Leap days, a hundred of them: four centuries, each answer found by jumping, not scanning.
    // Counted by hand: 32 leap years in 1972-2096, 24 in each of 2104-2196 and 2204-2296 (2100, 2200
    // and 2300 are not leap years), so the 100th is the 20th from 2304: 2380. Kolkata is +05:30 all
    // that time, so noon is 06:30Z.
    let leap_days = Rule::Cron(CronRule::parse("0 12 29 2 *", "Asia/Kolkata").unwrap());
    let fires = leap_days.upcoming(Timestamp::ZERO, 100);
    assert_eq!(fires.len(), 100);
    assert_eq!(jiff_ts(fires[0]).to_string(), "1972-02-29T06:30:00Z");
    assert_eq!(jiff_ts(fires[99]).to_string(), "2380-02-29T06:30:00Z");

    let never = Rule::Cron(CronRule::parse("0 0 30 2 *", "Europe/Berlin").unwrap());
    assert_eq!(never.upcoming(Timestamp::ZERO, 3), []);
}
