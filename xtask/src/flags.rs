//! The one hand-written flag loop every `cargo xtask` command parses its arguments with (a few
//! flags per command do not justify clap's compile time), and the value parsers they share.
//!
//! It knows nothing of any command's flags: it splits `--flag=value` from `--flag value`, hands
//! each item to the command's own `match`, and lets that `match` take a value only when the flag
//! has one.

use anyhow::{Context, bail};

/// One command-line item being parsed: a `--flag` (whose value is taken on demand with
/// [`Arg::value`]) or a bare word such as a workload name.
pub struct Arg<'s, 'a> {
    /// The item as written (`--jobs=5` stays whole), for error messages.
    pub raw: &'a str,
    /// The flag without an inline value (`--jobs` of `--jobs=5`), or the bare word.
    pub flag: &'a str,
    inline: Option<&'a str>,
    rest: &'s mut dyn Iterator<Item = &'a str>,
}

impl std::fmt::Debug for Arg<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arg").field("raw", &self.raw).field("flag", &self.flag).finish_non_exhaustive()
    }
}

impl<'a> Arg<'_, 'a> {
    /// The flag's value: the part after `=`, or else the next item.
    pub fn value(&mut self) -> anyhow::Result<&'a str> {
        match self.inline.take() {
            Some(v) => Ok(v),
            None => self.rest.next().with_context(|| format!("{} needs a value", self.flag)),
        }
    }

    /// The value parsed as a number.
    pub fn number<T: std::str::FromStr>(&mut self) -> anyhow::Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let flag = self.flag;
        number(flag, self.value()?)
    }

    /// The value as a comma-separated list of numbers (`1_000` spelled with underscores is fine).
    pub fn numbers<T: std::str::FromStr>(&mut self) -> anyhow::Result<Vec<T>>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let flag = self.flag;
        self.value()?.split(',').map(|n| number::<T>(flag, &n.replace('_', ""))).collect()
    }

    /// The value as a comma-separated list of words, empty items dropped.
    pub fn list(&mut self) -> anyhow::Result<Vec<&'a str>> {
        Ok(self.value()?.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())
    }
}

/// Calls `on` once per item of `argv`, in order. A flag that takes no value simply never calls
/// [`Arg::value`]; an inline value given to such a flag is refused, so `--keep=no` cannot pass
/// for `--keep`.
pub fn each<'a>(argv: &[&'a str], mut on: impl FnMut(&mut Arg<'_, 'a>) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut rest = argv.iter().copied();
    while let Some(raw) = rest.next() {
        let (flag, inline) = match raw.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (raw, None),
        };
        let mut arg = Arg { raw, flag, inline, rest: &mut rest };
        on(&mut arg)?;
        if arg.inline.is_some() {
            bail!("{flag} takes no value (got `{raw}`)");
        }
    }
    Ok(())
}

pub fn number<T: std::str::FromStr>(flag: &str, v: &str) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    v.parse().with_context(|| format!("{flag} {v}: not a number"))
}

pub fn seconds(flag: &str, v: &str) -> anyhow::Result<f64> {
    let s: f64 = v.trim_end_matches('s').parse().with_context(|| format!("{flag} {v}: not a number of seconds"))?;
    if !(s.is_finite() && s >= 0.0) {
        bail!("{flag} must be a non-negative number of seconds");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `argv` into (flag, value or "-") pairs; `--x`, `--n` and `--list` take values.
    fn check(argv: &[&str]) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        each(argv, |arg| {
            let value = match arg.flag {
                "--x" | "--n" => arg.value()?.to_string(),
                "--list" => arg.list()?.join("|"),
                _ => "-".to_string(),
            };
            out.push((arg.flag.to_string(), value));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn inline_and_separate_values() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        assert_eq!(
            check(&["--x=1", "--x", "2", "word", "--keep"]).unwrap(),
            pairs(&[("--x", "1"), ("--x", "2"), ("word", "-"), ("--keep", "-")])
        );
        // A value may itself contain `=`; a bare word with `=` is not split.
        assert_eq!(check(&["--x=a=b", "k=v"]).unwrap(), pairs(&[("--x", "a=b"), ("k=v", "-")]));
        assert_eq!(check(&["--list", "a, b,,c"]).unwrap(), pairs(&[("--list", "a|b|c")]));
    }

    #[test]
    fn missing_and_unexpected_values_are_refused() {
        let e = check(&["--x"]).unwrap_err().to_string();
        assert!(e.contains("--x needs a value"), "{e}");
        let e = check(&["--keep=no"]).unwrap_err().to_string();
        assert!(e.contains("--keep takes no value"), "{e}");
    }

    #[test]
    fn numbers_and_seconds() {
        let mut got = Vec::new();
        each(&["--n", "1_000,2"], |arg| {
            got = arg.numbers::<u64>()?;
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![1000, 2]);
        assert!(number::<u32>("--n", "x").unwrap_err().to_string().contains("--n x: not a number"));
        assert_eq!(seconds("--d", "2.5s").unwrap(), 2.5);
        assert!(seconds("--d", "-1").is_err());
    }
}
