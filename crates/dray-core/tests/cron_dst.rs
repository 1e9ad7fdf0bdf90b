//! Cron fire times across daylight-saving gaps and folds, as a table of literal UTC instants.
//!
//! Every expected instant below was worked out by hand from the published rules of each zone,
//! never with the code under test, and cross-checked against the host's zoneinfo with GNU `date`.
//! The rules used (standard offset / daylight offset, change instants):
//!
//! - America/New_York: EST -05 / EDT -04. Spring forward on the 2nd Sunday of March at 02:00 EST
//!   (07:00Z): 02:00-03:00 does not exist. Fall back on the 1st Sunday of November at 02:00 EDT
//!   (06:00Z): 01:00-02:00 happens twice.
//!   2025: Mar 9, Nov 2. 2035: Mar 11, Nov 4. 2099: Mar 8.
//! - Europe/London: GMT +00 / BST +01; Europe/Berlin: CET +01 / CEST +02. Both change at 01:00Z on
//!   the last Sunday of March and of October. London: 01:00-02:00 missing in March, repeated in
//!   October. Berlin: 02:00-03:00 missing, then repeated.
//!   2025: Mar 30, Oct 26. 2030: Mar 31, Oct 27. 2035: Mar 25, Oct 28.
//! - America/Santiago: -04 / -03. As bundled (tzdb 2026e, unchanged since 2023): daylight time ends on
//!   the first Sunday on or after April 2 at 03:00Z (Saturday 24:00 -03 becomes 23:00 -04, so
//!   Saturday 23:00-24:00 happens twice), and starts on the first Sunday on or after September 2 at
//!   04:00Z (Sunday 00:00 -04 becomes 01:00 -03, so midnight to 01:00 does not exist).
//!   2025: Apr 6, Sep 7. 2035: Apr 8, Sep 2.
//! - Australia/Lord_Howe: +10:30 / +11 (a half-hour shift). Daylight time ends on the 1st Sunday of
//!   April at 02:00 +11 (15:00Z the day before), back to 01:30: 01:30-02:00 happens twice. It starts
//!   on the 1st Sunday of October at 02:00 +10:30 (15:30Z the day before), on to 02:30: 02:00-02:30
//!   does not exist. 2025: Apr 6, Oct 5. 2035: Apr 1, Oct 7.
//! - Asia/Kolkata: +05:30 all year, no daylight time.

use dray_core::Timestamp;
use dray_core::cron::{CronRule, Rule};

/// An RFC 3339 UTC instant as a [`Timestamp`]. Parsing a literal is not computing it.
fn at(text: &str) -> Timestamp {
    let ts: jiff::Timestamp = text.parse().unwrap_or_else(|err| panic!("{text}: {err}"));
    Timestamp::from_millis(ts.as_millisecond())
}

fn utc(ts: Timestamp) -> String {
    jiff::Timestamp::from_millisecond(ts.as_millis()).unwrap().to_string()
}

/// The one place that calls the API: the next `expected.len()` fires after `after`.
fn check(zone: &str, expr: &str, after: &str, expected: &[&str]) {
    let rule = Rule::Cron(CronRule::parse(expr, zone).unwrap_or_else(|err| panic!("{expr}: {err}")));
    let fires: Vec<String> = rule.upcoming(at(after), expected.len()).into_iter().map(utc).collect();
    assert_eq!(fires, expected, "{zone} `{expr}` after {after}");
}

#[test]
fn new_york() {
    let zone = "America/New_York";
    // Fixed time in the gap: 02:30 on 2025-03-09 does not exist; it fires once at 03:00 EDT.
    check(
        zone,
        "30 2 * * *",
        "2025-03-08T12:00:00Z",
        &[
            "2025-03-09T07:00:00Z", // 03:00 EDT, the transition
            "2025-03-10T06:30:00Z", // 02:30 EDT
        ],
    );
    // Interval-like in the gap: 02:15 is skipped.
    check(
        zone,
        "15 * * * *",
        "2025-03-09T05:00:00Z",
        &[
            "2025-03-09T05:15:00Z", // 00:15 EST
            "2025-03-09T06:15:00Z", // 01:15 EST
            "2025-03-09T07:15:00Z", // 03:15 EDT
            "2025-03-09T08:15:00Z", // 04:15 EDT
        ],
    );
    // Several gap times of one fixed-time rule land on the same instant: one fire. 03:00 EDT is
    // also that instant, and 03:30 follows.
    check(
        zone,
        "0,30 2,3 * * *",
        "2025-03-09T06:00:00Z",
        &[
            "2025-03-09T07:00:00Z", // 02:00, 02:30 (gap) and 03:00 EDT
            "2025-03-09T07:30:00Z", // 03:30 EDT
            "2025-03-10T06:00:00Z", // 02:00 EDT
        ],
    );
    check(
        zone,
        "0,15,30,45 2 * * *",
        "2025-03-09T06:00:00Z",
        &["2025-03-09T07:00:00Z", "2025-03-10T06:00:00Z", "2025-03-10T06:15:00Z"],
    );
    // The gap fire is due exactly at the first instant searched (just after 06:59:59.5Z) ...
    check(zone, "30 2 * * *", "2025-03-09T06:59:59.500Z", &["2025-03-09T07:00:00Z"]);
    // ... and is not repeated when searching from it.
    check(zone, "30 2 * * *", "2025-03-09T07:00:00Z", &["2025-03-10T06:30:00Z"]);

    // Interval-like in the fold: six fires on the night of 2025-11-02.
    check(
        zone,
        "*/20 1 * * *",
        "2025-11-02T04:00:00Z",
        &[
            "2025-11-02T05:00:00Z", // 01:00 EDT
            "2025-11-02T05:20:00Z", // 01:20 EDT
            "2025-11-02T05:40:00Z", // 01:40 EDT
            "2025-11-02T06:00:00Z", // 01:00 EST
            "2025-11-02T06:20:00Z", // 01:20 EST
            "2025-11-02T06:40:00Z", // 01:40 EST
            "2025-11-03T06:00:00Z", // 01:00 EST
        ],
    );
    // Searching from between the two passes finds the second pass.
    check(zone, "*/20 1 * * *", "2025-11-02T05:40:00Z", &["2025-11-02T06:00:00Z"]);
    // Fixed time in the fold: the first 01:30 (EDT) only.
    check(
        zone,
        "30 1 * * *",
        "2025-11-01T12:00:00Z",
        &[
            "2025-11-02T05:30:00Z", // 01:30 EDT
            "2025-11-03T06:30:00Z", // 01:30 EST, next day
        ],
    );
    // From the first occurrence, the second one (06:30Z) is skipped.
    check(zone, "30 1 * * *", "2025-11-02T05:30:00Z", &["2025-11-03T06:30:00Z"]);
    // From inside the second pass of the fold.
    check(zone, "30 1 * * *", "2025-11-02T06:10:00Z", &["2025-11-03T06:30:00Z"]);

    // Vixie OR: 09:00 on the 13th or on Fridays. 2025-06-13 is both (one fire); 2025-07-13 is a Sunday.
    check(
        zone,
        "0 9 13 * FRI",
        "2025-06-01T00:00:00Z",
        &[
            "2025-06-06T13:00:00Z",
            "2025-06-13T13:00:00Z",
            "2025-06-20T13:00:00Z",
            "2025-06-27T13:00:00Z",
            "2025-07-04T13:00:00Z",
            "2025-07-11T13:00:00Z",
            "2025-07-13T13:00:00Z",
        ],
    );

    // 2035.
    check(zone, "30 2 * * *", "2035-03-10T12:00:00Z", &["2035-03-11T07:00:00Z", "2035-03-12T06:30:00Z"]);
    // @hourly is interval-like: both 01:00s of the fold.
    check(
        zone,
        "@hourly",
        "2035-11-04T04:30:00Z",
        &[
            "2035-11-04T05:00:00Z", // 01:00 EDT
            "2035-11-04T06:00:00Z", // 01:00 EST
            "2035-11-04T07:00:00Z", // 02:00 EST
        ],
    );
    // Far future: 2099-03-08 is the second Sunday of March.
    check(zone, "30 2 * * *", "2099-03-07T12:00:00Z", &["2099-03-08T07:00:00Z", "2099-03-09T06:30:00Z"]);
}

#[test]
fn london() {
    let zone = "Europe/London";
    check(
        zone,
        "30 1 * * *",
        "2025-03-29T12:00:00Z",
        &[
            "2025-03-30T01:00:00Z", // 01:30 does not exist: 02:00 BST
            "2025-03-31T00:30:00Z", // 01:30 BST
        ],
    );
    check(
        zone,
        "30 1 * * *",
        "2025-10-25T12:00:00Z",
        &[
            "2025-10-26T00:30:00Z", // 01:30 BST, the first of two
            "2025-10-27T01:30:00Z", // 01:30 GMT
        ],
    );
    check(
        zone,
        "*/30 1 * * *",
        "2025-10-25T23:00:00Z",
        &[
            "2025-10-26T00:00:00Z", // 01:00 BST
            "2025-10-26T00:30:00Z", // 01:30 BST
            "2025-10-26T01:00:00Z", // 01:00 GMT
            "2025-10-26T01:30:00Z", // 01:30 GMT
            "2025-10-27T01:00:00Z", // 01:00 GMT
        ],
    );
    check(
        zone,
        "0 1 * * *",
        "2035-03-24T12:00:00Z",
        &[
            "2035-03-25T01:00:00Z", // 01:00 does not exist: 02:00 BST
            "2035-03-26T00:00:00Z", // 01:00 BST
        ],
    );
    check(
        zone,
        "0 1 * * *",
        "2035-10-27T12:00:00Z",
        &[
            "2035-10-28T00:00:00Z", // 01:00 BST, the first of two
            "2035-10-29T01:00:00Z", // 01:00 GMT
        ],
    );
}

#[test]
fn berlin() {
    let zone = "Europe/Berlin";
    check(
        zone,
        "30 2 * * *",
        "2025-03-29T12:00:00Z",
        &[
            "2025-03-30T01:00:00Z", // 02:30 does not exist: 03:00 CEST
            "2025-03-31T00:30:00Z", // 02:30 CEST
        ],
    );
    check(
        zone,
        "30 2 * * *",
        "2025-10-25T12:00:00Z",
        &[
            "2025-10-26T00:30:00Z", // 02:30 CEST, the first of two
            "2025-10-27T01:30:00Z", // 02:30 CET
        ],
    );
    // Six fields, interval-like (the minute field is `*/30`), strictly after 02:00 CEST.
    check(
        zone,
        "0 */30 2 * * *",
        "2025-10-26T00:00:00Z",
        &[
            "2025-10-26T00:30:00Z", // 02:30 CEST
            "2025-10-26T01:00:00Z", // 02:00 CET
            "2025-10-26T01:30:00Z", // 02:30 CET
            "2025-10-27T01:00:00Z", // 02:00 CET
        ],
    );
    // Six fields, fixed time, in the gap: fires at the transition itself, not 30 s after it.
    check(
        zone,
        "30 0 2 * * *",
        "2025-03-29T12:00:00Z",
        &[
            "2025-03-30T01:00:00Z", // 03:00:00 CEST
            "2025-03-31T00:00:30Z", // 02:00:30 CEST
        ],
    );
    // Six fields, every second: nothing between 01:59:59 CET and 03:00:00 CEST.
    check(
        zone,
        "* * * * * *",
        "2025-03-30T00:59:58Z",
        &[
            "2025-03-30T00:59:59Z", // 01:59:59 CET
            "2025-03-30T01:00:00Z", // 03:00:00 CEST
            "2025-03-30T01:00:01Z",
        ],
    );
    check(zone, "30 2 * * *", "2030-03-30T12:00:00Z", &["2030-03-31T01:00:00Z", "2030-04-01T00:30:00Z"]);
    check(zone, "30 2 * * *", "2030-10-26T12:00:00Z", &["2030-10-27T00:30:00Z", "2030-10-28T01:30:00Z"]);
}

#[test]
fn santiago() {
    let zone = "America/Santiago";
    // The gap is midnight to 01:00: a daily midnight rule fires at 01:00 -03 that day.
    check(
        zone,
        "@daily",
        "2025-09-06T12:00:00Z",
        &[
            "2025-09-07T04:00:00Z", // 01:00 -03, the transition
            "2025-09-08T03:00:00Z", // 00:00 -03
        ],
    );
    check(zone, "@midnight", "2035-09-01T12:00:00Z", &["2035-09-02T04:00:00Z", "2035-09-03T03:00:00Z"]);
    check(
        zone,
        "30 * * * *",
        "2025-09-07T03:00:00Z",
        &[
            "2025-09-07T03:30:00Z", // 23:30 -04 on the 6th
            "2025-09-07T04:30:00Z", // 01:30 -03 (00:30 skipped)
        ],
    );
    // Saturday 23:00-24:00 happens twice.
    check(
        zone,
        "30 23 * * *",
        "2025-04-05T12:00:00Z",
        &[
            "2025-04-06T02:30:00Z", // 23:30 -03 on the 5th, the first of two
            "2025-04-07T03:30:00Z", // 23:30 -04 on the 6th
        ],
    );
    check(
        zone,
        "*/30 23 * * *",
        "2025-04-06T01:00:00Z",
        &[
            "2025-04-06T02:00:00Z", // 23:00 -03
            "2025-04-06T02:30:00Z", // 23:30 -03
            "2025-04-06T03:00:00Z", // 23:00 -04
            "2025-04-06T03:30:00Z", // 23:30 -04
        ],
    );
    check(zone, "30 23 * * *", "2035-04-07T12:00:00Z", &["2035-04-08T02:30:00Z", "2035-04-09T03:30:00Z"]);
}

#[test]
fn lord_howe() {
    let zone = "Australia/Lord_Howe";
    // The 30-minute gap, 02:00-02:30 on 2025-10-05.
    check(
        zone,
        "15 2 * * *",
        "2025-10-04T00:00:00Z",
        &[
            "2025-10-04T15:30:00Z", // 02:30 +11, the transition
            "2025-10-05T15:15:00Z", // 02:15 +11 on the 6th
        ],
    );
    check(
        zone,
        "*/15 2 * * *",
        "2025-10-04T15:00:00Z",
        &[
            "2025-10-04T15:30:00Z", // 02:30 +11 (02:00 and 02:15 skipped)
            "2025-10-04T15:45:00Z", // 02:45 +11
            "2025-10-05T15:00:00Z", // 02:00 +11 on the 6th
        ],
    );
    // The 30-minute fold, 01:30-02:00 on 2025-04-06.
    check(
        zone,
        "45 1 * * *",
        "2025-04-05T12:00:00Z",
        &[
            "2025-04-05T14:45:00Z", // 01:45 +11, the first of two
            "2025-04-06T15:15:00Z", // 01:45 +10:30 on the 7th
        ],
    );
    check(
        zone,
        "*/15 1 * * *",
        "2025-04-05T14:00:00Z",
        &[
            "2025-04-05T14:15:00Z", // 01:15 +11
            "2025-04-05T14:30:00Z", // 01:30 +11
            "2025-04-05T14:45:00Z", // 01:45 +11
            "2025-04-05T15:00:00Z", // 01:30 +10:30
            "2025-04-05T15:15:00Z", // 01:45 +10:30
            "2025-04-06T14:30:00Z", // 01:00 +10:30 on the 7th
        ],
    );
    check(zone, "15 2 * * *", "2035-10-06T00:00:00Z", &["2035-10-06T15:30:00Z", "2035-10-07T15:15:00Z"]);
    check(zone, "45 1 * * *", "2035-03-31T00:00:00Z", &["2035-03-31T14:45:00Z", "2035-04-01T15:15:00Z"]);
}

#[test]
fn kolkata() {
    let zone = "Asia/Kolkata";
    check(zone, "0 9 * * *", "2025-06-01T00:00:00Z", &["2025-06-01T03:30:00Z", "2025-06-02T03:30:00Z"]);
    // `*/45` is minutes 0 and 45.
    check(
        zone,
        "*/45 * * * *",
        "2025-06-01T00:00:00Z",
        &[
            "2025-06-01T00:15:00Z", // 05:45 IST
            "2025-06-01T00:30:00Z", // 06:00 IST
            "2025-06-01T01:15:00Z", // 06:45 IST
        ],
    );
    // Leap days only; 2100 is not a leap year, so 2096 is followed by 2104.
    check(
        zone,
        "0 12 29 2 *",
        "2025-01-01T00:00:00Z",
        &["2028-02-29T06:30:00Z", "2032-02-29T06:30:00Z", "2036-02-29T06:30:00Z"],
    );
    check(zone, "0 12 29 2 *", "2096-03-01T00:00:00Z", &["2104-02-29T06:30:00Z"]);
    // Local midnight is the previous UTC day.
    check(zone, "@yearly", "2030-06-01T00:00:00Z", &["2030-12-31T18:30:00Z", "2031-12-31T18:30:00Z"]);
}

#[test]
fn utc_and_the_vixie_day_rule() {
    let zone = "UTC";
    // Day-of-month `*/10` starts with `*`, so both day fields must match (Vixie): the 1st, 11th,
    // 21st or 31st that is a Monday. 2025-03-31 and 2025-04-21 are Mondays.
    check(zone, "0 9 */10 * MON", "2025-01-01T00:00:00Z", &["2025-03-31T09:00:00Z", "2025-04-21T09:00:00Z"]);
    // Day-of-week `*`: only the day of the month counts.
    check(zone, "0 9 13 * *", "2025-06-01T00:00:00Z", &["2025-06-13T09:00:00Z", "2025-07-13T09:00:00Z"]);
    // @weekly is Sunday midnight; 2025-06-01 is a Sunday.
    check(zone, "@weekly", "2025-06-01T00:00:00Z", &["2025-06-08T00:00:00Z", "2025-06-15T00:00:00Z"]);
    check(zone, "@monthly", "2025-12-15T00:00:00Z", &["2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"]);
    // Names for months and days, with Sunday closing a range: Friday to Sunday in January and July.
    check(
        zone,
        "0 0 * jan,JUL fri-sun",
        "2025-01-01T00:00:00Z",
        &["2025-01-03T00:00:00Z", "2025-01-04T00:00:00Z", "2025-01-05T00:00:00Z", "2025-01-10T00:00:00Z"],
    );
}
