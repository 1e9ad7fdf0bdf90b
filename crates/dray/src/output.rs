//! Output: JSON documents for scripts, comfy-table tables for people, progress bars on a TTY.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use comfy_table::{ContentArrangement, Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Prints `value` as one pretty JSON document on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)?;
    writeln!(stdout)?;
    stdout.flush()?;
    Ok(())
}

/// A table with a header row and no borders, wrapped to the terminal's width on a TTY.
pub fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(header);
    table
}

/// A two-column table of names and values.
pub fn fields() -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_content_arrangement(ContentArrangement::Dynamic);
    table
}

pub fn print_table(table: &mut Table) {
    // No indent before the first column, like `ls -l` and `kubectl get`.
    if let Some(first) = table.column_mut(0) {
        first.set_padding((0, 1));
    }
    // Trailing spaces of the last column are noise in a terminal and in a diff.
    for line in table.lines() {
        println!("{}", line.trim_end());
    }
}

/// An RFC 3339 timestamp without its fraction of a second, for tables.
pub fn time(timestamp: &str) -> String {
    match timestamp.find('.') {
        Some(dot) => {
            let digits = timestamp[dot + 1..].bytes().take_while(u8::is_ascii_digit).count();
            format!("{}{}", &timestamp[..dot], &timestamp[dot + 1 + digits..])
        }
        None => timestamp.to_owned(),
    }
}

pub fn time_opt(timestamp: Option<&str>) -> String {
    timestamp.map(time).unwrap_or_default()
}

/// A duration in milliseconds in the largest unit that divides it: `30s`, `24h`, `1500ms`.
pub fn duration_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (unit_ms, unit) in UNITS {
        if ms >= unit_ms && ms.is_multiple_of(unit_ms) {
            return format!("{}{unit}", ms / unit_ms);
        }
    }
    format!("{ms}ms")
}

/// `1 job`, `2 jobs`.
pub fn jobs(count: usize) -> String {
    if count == 1 { "1 job".to_owned() } else { format!("{count} jobs") }
}

/// Ranges shown by [`id_ranges`] before the rest is summarised.
const ID_RANGES_SHOWN_MAX: usize = 5;

/// Job ids as people read them: `id 7`, `ids 9-50008`, `ids 1-3, 7, 9-12`, in the order given
/// (runs of consecutive ids become one range), at most five ranges and then how many more.
pub fn id_ranges(ids: &[u64]) -> String {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &id in ids {
        match ranges.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(id) => *last = id,
            _ => ranges.push((id, id)),
        }
    }
    let mut parts: Vec<String> = ranges
        .iter()
        .take(ID_RANGES_SHOWN_MAX)
        .map(|&(first, last)| if first == last { first.to_string() } else { format!("{first}-{last}") })
        .collect();
    if ranges.len() > ID_RANGES_SHOWN_MAX {
        parts.push(format!("… ({} more ranges)", ranges.len() - ID_RANGES_SHOWN_MAX));
    }
    let word = if ids.len() == 1 { "id" } else { "ids" };
    format!("{word} {}", parts.join(", "))
}

/// The first line of `text`, at most `chars_max` characters, for a table cell.
pub fn brief(text: &str, chars_max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    let mut out: String = line.chars().take(chars_max).collect();
    if out.len() < line.len() || text.lines().nth(1).is_some() {
        out.push('…');
    }
    out
}

/// A progress bar on stderr when it is a terminal, a hidden one otherwise (pipes, CI, files).
pub fn progress(len: Option<u64>, unit: Unit) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let template = match (unit, len) {
        (Unit::Bytes, Some(_)) => "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        (Unit::Bytes, None) => "{spinner} {binary_bytes} {binary_bytes_per_sec} {elapsed} {msg}",
        (Unit::Jobs, Some(_)) => "{bar:40} {human_pos}/{human_len} jobs, eta {eta} {msg}",
        (Unit::Jobs, None) => "{spinner} {human_pos} jobs {elapsed} {msg}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// What a progress bar counts.
#[derive(Clone, Copy, Debug)]
pub enum Unit {
    Bytes,
    Jobs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_drops_fraction_only() {
        assert_eq!(time("2026-11-05T10:00:00.123456Z"), "2026-11-05T10:00:00Z");
        assert_eq!(time("2026-11-05T10:00:00Z"), "2026-11-05T10:00:00Z");
        assert_eq!(time("2026-11-05T10:00:00.5+01:00"), "2026-11-05T10:00:00+01:00");
    }

    #[test]
    fn durations_use_the_largest_exact_unit() {
        let cases = [
            (0, "0ms"),
            (1_500, "1500ms"),
            (30_000, "30s"),
            (90_000, "90s"),
            (3_600_000, "1h"),
            (86_400_000, "1d"),
            (2_592_000_000, "30d"),
        ];
        for (ms, text) in cases {
            assert_eq!(duration_ms(ms), text);
        }
    }

    // Regression (issue #18): `dray enqueue --jsonl` printed `ids 9..=50008`, Rust range syntax.
    #[test]
    fn id_ranges_read_like_prose() {
        assert_eq!(id_ranges(&[7]), "id 7");
        assert_eq!(id_ranges(&(9..=50_008).collect::<Vec<_>>()), "ids 9-50008");
        assert_eq!(id_ranges(&[1, 2, 3, 7, 9, 10]), "ids 1-3, 7, 9-10");
        assert_eq!(id_ranges(&[5, 4]), "ids 5, 4");
        assert_eq!(id_ranges(&[1, 3, 5, 7, 9, 11, 13]), "ids 1, 3, 5, 7, 9, … (2 more ranges)");
        assert_eq!(id_ranges(&[u64::MAX, 0]), format!("ids {}, 0", u64::MAX));
    }

    #[test]
    fn brief_marks_what_it_cuts() {
        assert_eq!(brief("boom", 10), "boom");
        assert_eq!(brief("boom\nat line 2", 10), "boom…");
        assert_eq!(brief("abcdefghijkl", 5), "abcde…");
        assert_eq!(brief("", 5), "");
    }
}
