//! Schedule rules: the instants at which a cron expression in a time zone, or a fixed interval,
//! fires.
//!
//! This module owns the rule syntax, its validation, and the daylight-saving rules of the delivery
//! contract (PRODUCT.md, "Cron"; `docs/schedules.md`, "Rules and time zones"). It never reads the
//! clock and never stores anything: callers pass the instant to search after, and get instants
//! back. The runtime decides when to tick, and the store keeps the rules and their last fires.
//!
//! Cron matching is split in two. `croner` answers one question only: the next *civil*
//! (wall-clock) date-time at or after a given one that matches the expression. Everything about
//! time zones is done here with `jiff`: the zone's timeline is cut at its offset transitions,
//! within each piece civil time is instant plus a constant offset, and at each transition the
//! gap or fold rules below decide what the civil matches that were skipped or repeated become.
//! croner's own zone handling is never used: its DST behaviour changed between releases, and ours
//! is pinned by the table in `tests/cron_dst.rs`.
//!
//! The rules, for a civil time the expression matches:
//! - it happens once: it fires at that instant;
//! - it falls in a spring-forward gap: a fixed-time rule fires at the transition (the first instant
//!   after the gap), an interval-like rule skips it;
//! - it happens twice (fall back): a fixed-time rule fires at the earlier occurrence only, an
//!   interval-like rule fires at both.
//!
//! A rule never fires twice at one instant, and [`Rule::next_after`] is the smallest fire strictly
//! after its argument, so successive fires strictly increase even where civil order and instant
//! order disagree (inside a fold).
//!
//! The zone rules come from the time zone database bundled into the binary (jiff's
//! `tzdb-bundle-always`), so a jiff upgrade can move future fires when a government changes its
//! clocks; rules store zone names, never offsets, so they follow such changes.

use std::fmt;
use std::sync::Arc;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::SignedDuration;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

use crate::limits::{Invalid, Limits, check_bytes, check_range};
use crate::time::Timestamp;

/// A schedule's rule: when it fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    Cron(CronRule),
    Interval(IntervalRule),
}

impl Rule {
    /// The first fire strictly after `after`, or `None` when the rule has no fire left before the
    /// end of the searchable range (see [`CronRule::next_after`]).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Rule::Cron(rule) => rule.next_after(after),
            Rule::Interval(rule) => rule.next_after(after),
        }
    }

    /// The next `count` fires after `after`, strictly increasing; fewer when the rule runs out.
    ///
    /// The cost is `count` searches: callers bound `count` (a preview asks for a handful).
    pub fn upcoming(&self, after: Timestamp, count: usize) -> Vec<Timestamp> {
        // `count` comes from a caller; the vector grows as fires are found, not up front.
        let mut fires = Vec::with_capacity(count.min(64));
        let mut at = after;
        while fires.len() < count {
            let Some(next) = self.next_after(at) else { break };
            debug_assert!(next > at, "next_after must move forward");
            fires.push(next);
            at = next;
        }
        fires
    }
}

/// A cron expression evaluated in a named time zone.
#[derive(Clone)]
pub struct CronRule {
    /// The expression as given (trimmed), for display and comparison.
    expr: String,
    /// The zone's canonical IANA name.
    zone: String,
    tz: TimeZone,
    /// Matches civil date-times only; see the module comment. Shared: croner's pattern is a few
    /// hundred bytes of bit sets, and a rule is cloned into every schedule read.
    cron: Arc<Cron>,
    interval_like: bool,
    /// No calendar date can match (`0 0 30 2 *`): every search would run to the end of the range.
    never: bool,
}

impl PartialEq for CronRule {
    fn eq(&self, other: &CronRule) -> bool {
        self.expr == other.expr && self.zone == other.zone
    }
}

impl Eq for CronRule {}

impl fmt::Debug for CronRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronRule")
            .field("expr", &self.expr)
            .field("zone", &self.zone)
            .field("interval_like", &self.interval_like)
            .finish()
    }
}

/// The macros and the 5-field expressions they stand for.
const MACROS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// One field of a cron expression: its name in messages, its range and its names, if any.
struct FieldSpec {
    name: &'static str,
    min: u8,
    max: u8,
    /// Three-letter names and their values, matched without regard to case.
    names: &'static [(&'static str, u8)],
}

const SECOND: FieldSpec = FieldSpec { name: "second", min: 0, max: 59, names: &[] };
const MINUTE: FieldSpec = FieldSpec { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: FieldSpec = FieldSpec { name: "hour", min: 0, max: 23, names: &[] };
const DAY_OF_MONTH: FieldSpec = FieldSpec { name: "day-of-month", min: 1, max: 31, names: &[] };
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        ("JAN", 1),
        ("FEB", 2),
        ("MAR", 3),
        ("APR", 4),
        ("MAY", 5),
        ("JUN", 6),
        ("JUL", 7),
        ("AUG", 8),
        ("SEP", 9),
        ("OCT", 10),
        ("NOV", 11),
        ("DEC", 12),
    ],
};
/// Sunday is 0 and also 7, so `FRI-SUN` and `5-7` both reach it.
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &[("SUN", 0), ("MON", 1), ("TUE", 2), ("WED", 3), ("THU", 4), ("FRI", 5), ("SAT", 6)],
};

const SYNTAX_HINT: &str = "use numbers, names, `*`, ranges (a-b), lists (a,b) and steps (*/n, a-b/n)";
const FIELDS_HINT: &str =
    "5 fields (minute hour day-of-month month day-of-week), 6 with leading seconds, or a macro such as @daily";

impl CronRule {
    /// `expr`: 5-field cron, optional 6-field with leading seconds, or @hourly @daily @midnight
    /// @weekly @monthly @yearly @annually. `zone`: IANA name ("UTC" ok). Errors: Invalid with
    /// field "cron" or "timezone", message saying what is wrong.
    ///
    /// The syntax is Vixie cron's: numbers, three-letter month and day names (any case), `*`,
    /// ranges `a-b`, lists `a,b` and steps `*/n` or `a-b/n`; day-of-week 0 and 7 are Sunday. When
    /// both day fields are restricted a day matches if either does; a day field written starting
    /// with `*` (such as `*/2`) does not widen the other, so both must match. Quartz extensions
    /// (`L`, `W`, `#`, `?`) and a year field are refused.
    pub fn parse(expr: &str, zone: &str) -> Result<CronRule, Invalid> {
        check_bytes("cron", expr.len(), Limits::CRON_EXPR_BYTES_MAX)?;
        check_bytes("timezone", zone.len(), Limits::TIMEZONE_BYTES_MAX)?;
        let expr = expr.trim();

        let expanded = if expr.starts_with('@') {
            let Some(&(_, fields)) = MACROS.iter().find(|(name, _)| name.eq_ignore_ascii_case(expr)) else {
                return Err(Invalid::new(
                    "cron",
                    format!(
                        "`{expr}` is not a supported macro; use @yearly, @annually, @monthly, @weekly, @daily, \
                         @midnight or @hourly"
                    ),
                ));
            };
            fields
        } else {
            expr
        };

        let fields: Vec<&str> = expanded.split_ascii_whitespace().collect();
        let (second, rest) = match fields.len() {
            0 => return Err(Invalid::new("cron", format!("is empty; expected {FIELDS_HINT}"))),
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => return Err(Invalid::new("cron", format!("has {n} fields; expected {FIELDS_HINT}"))),
        };
        let [minute, hour, dom, month, dow] = [rest[0], rest[1], rest[2], rest[3], rest[4]];

        let second_bits = parse_field(&SECOND, second)?;
        let minute_bits = parse_field(&MINUTE, minute)?;
        let hour_bits = parse_field(&HOUR, hour)?;
        let dom_bits = parse_field(&DAY_OF_MONTH, dom)?;
        let month_bits = parse_field(&MONTH, month)?;
        // Sunday as 7 becomes 0: one bit per weekday.
        let mut dow_bits = parse_field(&DAY_OF_WEEK, dow)?;
        if dow_bits & (1 << 7) != 0 {
            dow_bits = (dow_bits & !(1 << 7)) | 1;
        }

        // croner gets the expression in a plain form, so its own name handling and extensions
        // never come into play: `*` where the user wrote exactly `*` (croner's day-field rule keys
        // on it), otherwise the list of values.
        let canonical = [
            value_list(second, second_bits),
            value_list(minute, minute_bits),
            value_list(hour, hour_bits),
            value_list(dom, dom_bits),
            value_list(month, month_bits),
            value_list(dow, dow_bits),
        ]
        .join(" ");
        // Vixie cron combines the day fields with OR only when neither was written starting with
        // `*`; otherwise both must match (a plain `*` matches every day, so the other decides).
        // croner's default is OR unless a field is exactly `*`, which differs for `*/2`: ask for
        // AND in that case.
        let days_and = dom.starts_with('*') || dow.starts_with('*');
        // Defaults checked against croner 4.0.3: seconds are optional and a year field is accepted
        // unless disallowed. We always pass six fields and never a year.
        let parser = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .dom_and_dow(days_and)
            .alternative_weekdays(false)
            .sloppy_ranges(false)
            .build();
        let cron = parser
            .parse(&canonical)
            .map_err(|err| Invalid::new("cron", format!("is not a valid cron expression: {err}")))?;

        // A day-of-week field starting with `*` leaves the day-of-month field in charge: if none of
        // its days exists in any chosen month, the rule never fires. (Every real date falls on every
        // weekday sooner or later, so a restricted `*/n` weekday set does not change that answer.)
        let never = dow.starts_with('*') && !any_day_exists(dom_bits, month_bits);

        // The expression first, then the zone: with both wrong, the first argument is reported.
        let (tz, zone) = parse_zone(zone)?;

        Ok(CronRule {
            expr: expr.to_string(),
            zone,
            tz,
            cron: Arc::new(cron),
            interval_like: minute.starts_with('*') || hour.starts_with('*'),
            never,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The zone's canonical IANA name (`america/new_york` is kept as `America/New_York`).
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Whether the minute or the hour field starts with `*` (cronie's rule; `@hourly` is
    /// `0 * * * *` so it is interval-like). Interval-like rules keep elapsed cadence across DST:
    /// gap times are skipped and repeated times fire twice. Other rules are fixed-time.
    pub fn is_interval_like(&self) -> bool {
        self.interval_like
    }

    /// The first fire strictly after `after`. Fires are on whole seconds; `after` may carry
    /// milliseconds.
    ///
    /// `None` when no fire exists before the end of the search range: the year 5000 (croner's
    /// limit; jiff's own range ends in 9999). Only rules that never match a real date (`0 0 30 2 *`)
    /// meet it in practice; those are recognised at parse time and answer at once.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        if self.never {
            return None;
        }
        let first_second = after.as_millis().div_euclid(1_000).checked_add(1)?;
        let from = jiff::Timestamp::from_second(first_second).ok()?;
        let fire = self.first_fire_from(from)?;
        debug_assert!(fire >= from && fire.subsec_nanosecond() == 0);
        Some(Timestamp::from_millis(fire.as_millisecond()))
    }

    /// The first fire at or after `from` (a whole second).
    ///
    /// Walks the zone's timeline one constant-offset segment at a time, in instant order, so the
    /// first candidate found is the smallest. Within a segment civil time is instant + offset and
    /// croner finds the next civil match. At a transition into a gap, a fixed-time rule whose next
    /// match lies inside the gap fires at the transition. After a transition out of a fold, a
    /// fixed-time rule resumes at the civil time the previous segment reached, so repeated civil
    /// times fire only at their first occurrence.
    fn first_fire_from(&self, from: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let mut start = from;
        let mut offset = self.tz.to_offset(start);
        let mut civil_from = offset.to_datetime(start);

        // The transition that began the segment holding `from` matters when it is `from` itself
        // (a gap fire due exactly then) or when it was a fall back (civil times to skip).
        if !self.interval_like
            && let Some(segment_start) = from.checked_add(SignedDuration::from_nanos(1)).ok()
            && let Some(transition) = self.tz.preceding(segment_start).next()
        {
            let at = transition.timestamp();
            let before = self.tz.to_offset(at.checked_sub(SignedDuration::from_nanos(1)).ok()?);
            let (civil_before, civil_after) = (before.to_datetime(at), transition.offset().to_datetime(at));
            if at == from && civil_after > civil_before {
                let next = self.next_civil(civil_before)?;
                if next < civil_after {
                    return Some(at);
                }
            }
            civil_from = civil_from.max(civil_before);
        }

        // The last croner answer and the civil time it was asked from: croner's next match after
        // any later starting point not beyond that answer is the same answer.
        let mut known: Option<(DateTime, DateTime)> = None;
        loop {
            let next = match known {
                Some((asked, answer)) if asked <= civil_from && civil_from <= answer => answer,
                _ => self.next_civil(civil_from)?,
            };
            known = Some((civil_from, next));
            let instant = offset.to_timestamp(next).ok()?;
            let Some(transition) = self.tz.following(start).next() else {
                return Some(instant);
            };
            let at = transition.timestamp();
            if instant < at {
                return Some(instant);
            }
            // `next` lies at or past the civil time this segment ends on.
            let after = transition.offset();
            let (civil_before, civil_after) = (offset.to_datetime(at), after.to_datetime(at));
            if !self.interval_like && next < civil_after {
                // A spring-forward gap (`civil_after > civil_before`) holding a match.
                return Some(at);
            }
            start = at;
            offset = after;
            civil_from = if self.interval_like { civil_after } else { civil_after.max(civil_before) };
        }
    }

    /// The first civil date-time at or after `civil` that the expression matches, or `None` past
    /// croner's search range.
    fn next_civil(&self, civil: DateTime) -> Option<DateTime> {
        self.cron.find_next_occurrence(&civil, true).ok()
    }
}

/// Looks a zone name up in the bundled database; returns the zone and its canonical name.
fn parse_zone(zone: &str) -> Result<(TimeZone, String), Invalid> {
    const HINT: &str = "use an IANA name such as Europe/Berlin, America/New_York or UTC";
    if zone.is_empty() {
        return Err(Invalid::new("timezone", format!("is empty; {HINT}")));
    }
    let unknown = || Invalid::new("timezone", format!("`{zone}` is not a known time zone; {HINT}"));
    let tz = TimeZone::get(zone).map_err(|_| unknown())?;
    // jiff answers `Etc/Unknown` with its placeholder zone, which has no name: not a real place.
    let name = tz.iana_name().ok_or_else(unknown)?.to_string();
    Ok((tz, name))
}

/// Parses one field into a bit set of the values it allows (bit `v` for value `v`).
fn parse_field(spec: &FieldSpec, text: &str) -> Result<u64, Invalid> {
    let fail = |problem: String| Invalid::new("cron", format!("{} field `{text}`: {problem}", spec.name));
    let mut bits = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(fail(format!("has an empty list item; {SYNTAX_HINT}")));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let (low, high) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((low, high)) = range.split_once('-') {
            let (low, high) =
                (field_value(spec, low, false).map_err(fail)?, field_value(spec, high, true).map_err(fail)?);
            if low > high {
                return Err(fail(format!("the range {range} runs backwards; write it from low to high")));
            }
            (low, high)
        } else {
            let value = field_value(spec, range, false).map_err(fail)?;
            if let Some(step) = step {
                return Err(fail(format!(
                    "a step needs `*` or a range before it, such as `*/{step}` or `{value}-{}/{step}`",
                    spec.max
                )));
            }
            (value, value)
        };
        let step = match step {
            None => 1,
            Some(step) => match step.parse::<u8>() {
                Ok(n) if (1..=spec.max).contains(&n) => n,
                _ => return Err(fail(format!("the step `{step}` must be a number from 1 to {}", spec.max))),
            },
        };
        for value in (low..=high).step_by(usize::from(step)) {
            bits |= 1 << value;
        }
    }
    Ok(bits)
}

/// One value of a field: a number in range or a name. A name closing a day-of-week range that is
/// `SUN` means 7, so `FRI-SUN` runs forwards.
fn field_value(spec: &FieldSpec, token: &str, range_end: bool) -> Result<u8, String> {
    let allowed = match (spec.names.first(), spec.names.last()) {
        (Some((first, _)), Some((last, _))) => format!("allowed is {} to {} or {first} to {last}", spec.min, spec.max),
        _ => format!("allowed is {} to {}", spec.min, spec.max),
    };
    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
        return match token.parse::<u32>() {
            Ok(n) if (u32::from(spec.min)..=u32::from(spec.max)).contains(&n) => Ok(n as u8),
            _ => Err(format!("{token} is out of range; {allowed}")),
        };
    }
    if let Some(&(_, value)) = spec.names.iter().find(|(name, _)| name.eq_ignore_ascii_case(token)) {
        return Ok(if range_end && spec.max == 7 && value == 0 { 7 } else { value });
    }
    // Quartz-style `L`, `15W`, `LW`, `5L`, `5#2`, `?`, and croner's `+` (AND the day fields).
    let upper = token.to_ascii_uppercase();
    let stem = upper.trim_end_matches(['L', 'W']);
    if token.contains(['#', '?', '+']) || (stem.len() < upper.len() && stem.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("`{token}` uses a cron extension Dray does not support; {SYNTAX_HINT}"));
    }
    if token.is_empty() {
        return Err(format!("a range is missing a value; {allowed}"));
    }
    Err(format!("`{token}` is not a number or a name; {allowed}"))
}

/// The text croner is given for one field: `*` as written, otherwise the allowed values.
fn value_list(text: &str, bits: u64) -> String {
    if text == "*" {
        return "*".to_string();
    }
    let values: Vec<String> = (0..64).filter(|v| bits & (1 << v) != 0).map(|v| v.to_string()).collect();
    values.join(",")
}

/// Whether some chosen day of the month exists in some chosen month (February counts 29 days).
fn any_day_exists(dom_bits: u64, month_bits: u64) -> bool {
    const DAYS_MAX: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    (1..=12).any(|month| {
        let days = (1u64 << (DAYS_MAX[month - 1] + 1)) - 2; // bits 1..=days
        month_bits & (1 << month) != 0 && dom_bits & days != 0
    })
}

/// A rule that fires every `every_ms`, at `anchor + k * every_ms` for every integer `k`: the
/// anchor fixes the phase, and may lie before or after the instants asked about. Elapsed time
/// only, so time zones and DST play no part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntervalRule {
    every_ms: u64,
    anchor: Timestamp,
}

impl IntervalRule {
    /// Fires at anchor + k*every_ms for integer k (also before the anchor). Field "every_ms":
    /// [`Limits::SCHEDULE_EVERY_MS_MIN`] to [`Limits::SCHEDULE_EVERY_MS_MAX`].
    pub fn new(every_ms: u64, anchor: Timestamp) -> Result<IntervalRule, Invalid> {
        check_range("every_ms", every_ms, Limits::SCHEDULE_EVERY_MS_MIN, Limits::SCHEDULE_EVERY_MS_MAX, "")?;
        Ok(IntervalRule { every_ms, anchor })
    }

    pub fn every_ms(&self) -> u64 {
        self.every_ms
    }

    pub fn anchor(&self) -> Timestamp {
        self.anchor
    }

    /// The first `anchor + k * every_ms` strictly after `after`; `None` past the end of the
    /// instants jiff can represent (the year 9999), the same bound cron rules live in.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let every = i128::from(self.every_ms);
        let anchor = i128::from(self.anchor.as_millis());
        let periods = (i128::from(after.as_millis()) - anchor).div_euclid(every) + 1;
        let fire = anchor + periods * every;
        debug_assert!(fire > i128::from(after.as_millis()));
        let fire = i64::try_from(fire).ok()?;
        if fire > jiff::Timestamp::MAX.as_millisecond() {
            return None;
        }
        Some(Timestamp::from_millis(fire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(expr: &str, zone: &str) -> String {
        CronRule::parse(expr, zone).unwrap_err().to_string()
    }

    #[test]
    fn parse_errors_name_the_field_and_say_what_is_wrong() {
        let cases = [
            (
                "",
                "cron: is empty; expected 5 fields (minute hour day-of-month month day-of-week), 6 with leading seconds, or a macro such as @daily",
            ),
            (
                "   ",
                "cron: is empty; expected 5 fields (minute hour day-of-month month day-of-week), 6 with leading seconds, or a macro such as @daily",
            ),
            (
                "* * * *",
                "cron: has 4 fields; expected 5 fields (minute hour day-of-month month day-of-week), 6 with leading seconds, or a macro such as @daily",
            ),
            (
                "0 0 0 1 1 * 2030",
                "cron: has 7 fields; expected 5 fields (minute hour day-of-month month day-of-week), 6 with leading seconds, or a macro such as @daily",
            ),
            ("61 * * * *", "cron: minute field `61`: 61 is out of range; allowed is 0 to 59"),
            ("0 24 * * *", "cron: hour field `24`: 24 is out of range; allowed is 0 to 23"),
            ("0 0 0 * *", "cron: day-of-month field `0`: 0 is out of range; allowed is 1 to 31"),
            ("60 0 0 * * *", "cron: second field `60`: 60 is out of range; allowed is 0 to 59"),
            ("0 0 1 13 *", "cron: month field `13`: 13 is out of range; allowed is 1 to 12 or JAN to DEC"),
            ("0 0 * * 8", "cron: day-of-week field `8`: 8 is out of range; allowed is 0 to 7 or SUN to SAT"),
            (
                "0 0 * * MON-FRX",
                "cron: day-of-week field `MON-FRX`: `FRX` is not a number or a name; allowed is 0 to 7 or SUN to SAT",
            ),
            (
                "0 0 * JANUARY *",
                "cron: month field `JANUARY`: `JANUARY` is not a number or a name; allowed is 1 to 12 or JAN to DEC",
            ),
            (
                "0 0 L * *",
                "cron: day-of-month field `L`: `L` uses a cron extension Dray does not support; use numbers, names, `*`, ranges (a-b), lists (a,b) and steps (*/n, a-b/n)",
            ),
            (
                "0 0 15W * *",
                "cron: day-of-month field `15W`: `15W` uses a cron extension Dray does not support; use numbers, names, `*`, ranges (a-b), lists (a,b) and steps (*/n, a-b/n)",
            ),
            (
                "0 0 * * 5#2",
                "cron: day-of-week field `5#2`: `5#2` uses a cron extension Dray does not support; use numbers, names, `*`, ranges (a-b), lists (a,b) and steps (*/n, a-b/n)",
            ),
            (
                "0 0 ? * *",
                "cron: day-of-month field `?`: `?` uses a cron extension Dray does not support; use numbers, names, `*`, ranges (a-b), lists (a,b) and steps (*/n, a-b/n)",
            ),
            ("*/0 * * * *", "cron: minute field `*/0`: the step `0` must be a number from 1 to 59"),
            ("*/60 * * * *", "cron: minute field `*/60`: the step `60` must be a number from 1 to 59"),
            (
                "5/15 * * * *",
                "cron: minute field `5/15`: a step needs `*` or a range before it, such as `*/15` or `5-59/15`",
            ),
            ("0 5-1 * * *", "cron: hour field `5-1`: the range 5-1 runs backwards; write it from low to high"),
            (
                "0 1,,2 * * *",
                "cron: hour field `1,,2`: has an empty list item; use numbers, names, `*`, ranges (a-b), lists (a,b) and steps (*/n, a-b/n)",
            ),
            ("0 1- * * *", "cron: hour field `1-`: a range is missing a value; allowed is 0 to 23"),
            (
                "@reboot",
                "cron: `@reboot` is not a supported macro; use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly",
            ),
            (
                "@daily 5",
                "cron: `@daily 5` is not a supported macro; use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly",
            ),
        ];
        for (expr, message) in cases {
            assert_eq!(parse_err(expr, "UTC"), message, "{expr:?}");
        }
        let long = "0 ".repeat(200);
        assert_eq!(parse_err(&long, "UTC"), "cron: is 400 bytes; the limit is 256");
    }

    #[test]
    fn zone_errors_name_the_field() {
        assert_eq!(
            parse_err("* * * * *", "Mars/Olympus"),
            "timezone: `Mars/Olympus` is not a known time zone; use an IANA name such as Europe/Berlin, America/New_York or UTC"
        );
        assert_eq!(
            parse_err("* * * * *", ""),
            "timezone: is empty; use an IANA name such as Europe/Berlin, America/New_York or UTC"
        );
        assert_eq!(parse_err("* * * * *", "Etc/Unknown").split(':').next(), Some("timezone"));
        assert_eq!(parse_err("* * * * *", &"A".repeat(65)), "timezone: is 65 bytes; the limit is 64");
        // With both wrong, the expression (the first argument) is reported.
        assert_eq!(CronRule::parse("61 * * * *", "Mars/Olympus").unwrap_err().field, "cron");
    }

    #[test]
    fn zone_names_are_stored_canonically() {
        let rule = CronRule::parse(" 0 9 * * * ", "america/new_york").unwrap();
        assert_eq!(rule.zone(), "America/New_York");
        assert_eq!(rule.expr(), "0 9 * * *");
        assert_eq!(CronRule::parse("0 9 * * *", "UTC").unwrap().zone(), "UTC");
    }

    #[test]
    fn names_and_forms_are_accepted() {
        for expr in [
            "0 9 * jan,Jul MON-fri",
            "0 9 * * FRI-SUN",
            "0 9 * * 5-7",
            "0 9 * * 0,7",
            "*/15 9-17/2 1-31/10 */3 *",
            "30 */15 * * * *",
            "@YEARLY",
            "@Annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
            "0\t0  * * *",
        ] {
            assert!(CronRule::parse(expr, "UTC").is_ok(), "{expr}");
        }
    }

    #[test]
    fn interval_like_follows_cronie() {
        let cases = [
            ("* * * * *", true),
            ("*/15 * * * *", true),
            ("0 * * * *", true),
            ("15 */2 * * *", true),
            ("0 9 * * *", false),
            ("0-59 0-23 * * *", false),
            ("0,30 1,2 * * *", false),
            ("0 9 */2 * *", false),
            // Six fields: the minute and the hour are fields 2 and 3; seconds do not count.
            ("* 0 9 * * *", false),
            ("0 */5 9 * * *", true),
            ("0 0 * * * *", true),
            ("@hourly", true),
            ("@daily", false),
            ("@midnight", false),
            ("@weekly", false),
            ("@monthly", false),
            ("@yearly", false),
            ("@annually", false),
        ];
        for (expr, interval_like) in cases {
            assert_eq!(CronRule::parse(expr, "UTC").unwrap().is_interval_like(), interval_like, "{expr}");
        }
    }

    #[test]
    fn rules_compare_by_text() {
        let a = Rule::Cron(CronRule::parse("0 9 * * *", "Europe/Berlin").unwrap());
        assert_eq!(a, Rule::Cron(CronRule::parse("0 9 * * *", "europe/berlin").unwrap()));
        assert_ne!(a, Rule::Cron(CronRule::parse("0 9 * * *", "Europe/London").unwrap()));
        assert_ne!(a, Rule::Cron(CronRule::parse("0 9 * * 0-7", "Europe/Berlin").unwrap()));
        let i = Rule::Interval(IntervalRule::new(60_000, Timestamp(5)).unwrap());
        assert_eq!(i, Rule::Interval(IntervalRule::new(60_000, Timestamp(5)).unwrap()));
        assert_ne!(i, Rule::Interval(IntervalRule::new(60_000, Timestamp(6)).unwrap()));
        assert_ne!(a, i);
    }

    #[test]
    fn impossible_dates_never_fire_and_answer_at_once() {
        for expr in ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 30,31 2 */2"] {
            let rule = CronRule::parse(expr, "America/New_York").unwrap();
            assert_eq!(rule.next_after(Timestamp(0)), None, "{expr}");
        }
        // With both day fields restricted the weekday still fires (Vixie OR).
        let rule = CronRule::parse("0 0 30 2 MON", "UTC").unwrap();
        assert!(rule.next_after(Timestamp(0)).is_some());
    }

    #[test]
    fn interval_rule_limits() {
        assert_eq!(
            IntervalRule::new(999, Timestamp(0)).unwrap_err().to_string(),
            "every_ms: is 999; allowed is 1000 to 31622400000"
        );
        assert_eq!(
            IntervalRule::new(366 * 86_400_000 + 1, Timestamp(0)).unwrap_err().to_string(),
            "every_ms: is 31622400001; allowed is 1000 to 31622400000"
        );
        assert!(IntervalRule::new(1_000, Timestamp(0)).is_ok());
        assert!(IntervalRule::new(366 * 86_400_000, Timestamp(0)).is_ok());
    }

    #[test]
    fn interval_rule_fires_on_the_anchor_grid() {
        let rule = IntervalRule::new(60_000, Timestamp(1_000_000)).unwrap();
        assert_eq!(rule.every_ms(), 60_000);
        assert_eq!(rule.anchor(), Timestamp(1_000_000));
        // Anchor in the future: the grid extends back before it.
        assert_eq!(rule.next_after(Timestamp(0)), Some(Timestamp(40_000)));
        assert_eq!(rule.next_after(Timestamp(-20_001)), Some(Timestamp(-20_000)));
        // Strictly after, on and between grid points.
        assert_eq!(rule.next_after(Timestamp(1_000_000)), Some(Timestamp(1_060_000)));
        assert_eq!(rule.next_after(Timestamp(999_999)), Some(Timestamp(1_000_000)));
        assert_eq!(rule.next_after(Timestamp(1_000_001)), Some(Timestamp(1_060_000)));
        // Anchor in the past.
        assert_eq!(rule.next_after(Timestamp(10_000_000)), Some(Timestamp(10_060_000)));
        assert_eq!(
            Rule::Interval(rule).upcoming(Timestamp(1_030_000), 3),
            [Timestamp(1_060_000), Timestamp(1_120_000), Timestamp(1_180_000)]
        );
        // The end of the representable range.
        assert_eq!(rule.next_after(Timestamp(i64::MAX - 10)), None);
        assert_eq!(rule.next_after(Timestamp(jiff::Timestamp::MAX.as_millisecond())), None);
        assert!(rule.next_after(Timestamp(i64::MIN)).is_some());
    }

    #[test]
    fn sub_second_after_moves_to_the_next_whole_second() {
        let rule = Rule::Cron(CronRule::parse("* * * * * *", "UTC").unwrap());
        assert_eq!(rule.upcoming(Timestamp(1_500), 2), [Timestamp(2_000), Timestamp(3_000)]);
        assert_eq!(rule.upcoming(Timestamp(2_000), 1), [Timestamp(3_000)]);
        assert_eq!(rule.upcoming(Timestamp(-1), 1), [Timestamp(0)]);
        assert_eq!(rule.upcoming(Timestamp(0), 0), []);
    }
}
