//! What the core must know about the JSON inside a payload: whether two payloads are the same
//! value (idempotency compares values, not bytes), and the checks every stored value passes
//! (strings that are valid Unicode, numbers that fit a double).
//!
//! A small hand-written reader of JSON text, not a serializer: payloads stay the bytes the
//! producer sent. It never allocates more than the canonical form of the value it reads and never
//! recurses deeper than [`DEPTH_MAX`].

use std::fmt;

/// Nesting deeper than this is refused (the API refuses 128 levels before a payload gets here).
pub const DEPTH_MAX: usize = 256;

/// Why a JSON text was refused: what is wrong, and the byte offset where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub offset: usize,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.reason, self.offset)
    }
}

/// Checks a JSON text a producer sent: every string is valid Unicode (no lone surrogate escape
/// such as `"\ud800"`, which no UTF-8 text can hold and which parsers in other languages refuse
/// or mangle), and every number fits an IEEE 754 double (`1e400` would reach a JavaScript worker
/// as `Infinity`). Numbers are kept exactly as written; this only refuses the ones no worker can
/// read back.
pub fn check(text: &[u8]) -> Result<(), Refused> {
    Reader { text, at: 0, out: None }.document()
}

/// The canonical form of a JSON text: equal for two texts exactly when they hold the same JSON
/// value. Whitespace and the order of an object's members do not matter, a member repeated in
/// one object counts once with its last value (as in PostgreSQL's `jsonb`), string escapes are
/// decoded (`"\u0041"` is `"A"`), and numbers compare by value (`1`, `1.0` and `1e0` are the same;
/// `-0` is `0`). The form is an opaque byte string meant for comparison only.
pub fn canonical(text: &[u8]) -> Result<Vec<u8>, Refused> {
    let mut out = Vec::with_capacity(text.len());
    Reader { text, at: 0, out: Some(&mut out) }.document()?;
    Ok(out)
}

/// Whether two JSON texts hold the same value (see [`canonical`]). Texts that are not JSON are
/// the same only when their bytes are.
pub fn same_value(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    match (canonical(a), canonical(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

struct Reader<'t, 'o> {
    text: &'t [u8],
    at: usize,
    /// Where the canonical form goes; `None` when only checking.
    out: Option<&'o mut Vec<u8>>,
}

impl<'t> Reader<'t, '_> {
    fn document(&mut self) -> Result<(), Refused> {
        self.value(0)?;
        self.skip_space();
        if self.at != self.text.len() {
            return Err(self.refuse("text after the JSON value"));
        }
        Ok(())
    }

    fn refuse(&self, reason: impl Into<String>) -> Refused {
        Refused { offset: self.at, reason: reason.into() }
    }

    fn skip_space(&mut self) {
        while matches!(self.text.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if let Some(out) = self.out.as_deref_mut() {
            out.extend_from_slice(bytes);
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), Refused> {
        if depth > DEPTH_MAX {
            return Err(self.refuse(format!("nested deeper than {DEPTH_MAX} levels")));
        }
        self.skip_space();
        match self.text.get(self.at) {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => {
                let s = self.string()?;
                self.emit_string(&s);
                Ok(())
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true", b"t"),
            Some(b'f') => self.literal(b"false", b"f"),
            Some(b'n') => self.literal(b"null", b"n"),
            Some(_) => Err(self.refuse("not a JSON value")),
            None => Err(self.refuse("the JSON text ends early")),
        }
    }

    fn literal(&mut self, word: &[u8], tag: &[u8]) -> Result<(), Refused> {
        if !self.text[self.at..].starts_with(word) {
            return Err(self.refuse("not a JSON value"));
        }
        self.at += word.len();
        self.emit(tag);
        Ok(())
    }

    fn emit_string(&mut self, s: &[u8]) {
        self.emit(b"s");
        self.emit(&(s.len() as u64).to_be_bytes());
        self.emit(s);
    }

    fn array(&mut self, depth: usize) -> Result<(), Refused> {
        self.at += 1;
        self.emit(b"[");
        self.skip_space();
        if self.text.get(self.at) == Some(&b']') {
            self.at += 1;
            self.emit(b"]");
            return Ok(());
        }
        loop {
            self.value(depth + 1)?;
            self.skip_space();
            match self.text.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    self.emit(b"]");
                    return Ok(());
                }
                _ => return Err(self.refuse("expected ',' or ']' in an array")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), Refused> {
        self.at += 1;
        // Members are read into their own buffers, then sorted by key with the last of a repeated
        // key kept, so the member order of the text does not show in the canonical form.
        let mut members: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.skip_space();
        if self.text.get(self.at) == Some(&b'}') {
            self.at += 1;
            self.emit(b"{}");
            return Ok(());
        }
        loop {
            self.skip_space();
            if self.text.get(self.at) != Some(&b'"') {
                return Err(self.refuse("expected a member name in an object"));
            }
            let key = self.string()?;
            self.skip_space();
            if self.text.get(self.at) != Some(&b':') {
                return Err(self.refuse("expected ':' after a member name"));
            }
            self.at += 1;
            let mut value = Vec::new();
            let checking_only = self.out.is_none();
            {
                let mut inner =
                    Reader { text: self.text, at: self.at, out: if checking_only { None } else { Some(&mut value) } };
                inner.value(depth + 1)?;
                self.at = inner.at;
            }
            if !checking_only {
                members.push((key, value));
            }
            self.skip_space();
            match self.text.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    break;
                }
                _ => return Err(self.refuse("expected ',' or '}' in an object")),
            }
        }
        if self.out.is_none() {
            return Ok(());
        }
        // A stable sort keeps repeated keys in text order; the last of each run wins.
        members.sort_by(|a, b| a.0.cmp(&b.0));
        self.emit(b"{");
        for i in 0..members.len() {
            if members.get(i + 1).is_some_and(|next| next.0 == members[i].0) {
                continue;
            }
            let (key, value) = std::mem::take(&mut members[i]);
            self.emit_string(&key);
            self.emit(&value);
        }
        self.emit(b"}");
        Ok(())
    }

    /// Reads a string at `"`, returning its decoded UTF-8 bytes.
    fn string(&mut self) -> Result<Vec<u8>, Refused> {
        self.at += 1;
        let mut s = Vec::new();
        loop {
            let Some(&b) = self.text.get(self.at) else {
                return Err(self.refuse("a string is not closed"));
            };
            match b {
                b'"' => {
                    self.at += 1;
                    break;
                }
                b'\\' => {
                    let escape = *self.text.get(self.at + 1).ok_or_else(|| self.refuse("a string is not closed"))?;
                    let simple = match escape {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(0x08),
                        b'f' => Some(0x0c),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        _ => return Err(self.refuse("an unknown escape in a string")),
                    };
                    if let Some(c) = simple {
                        s.push(c);
                        self.at += 2;
                        continue;
                    }
                    let start = self.at;
                    let high = self.hex4(self.at + 2)?;
                    self.at += 6;
                    let c = if (0xD800..0xDC00).contains(&high) {
                        let low = if self.text.get(self.at..self.at + 2) == Some(b"\\u") {
                            self.hex4(self.at + 2)?
                        } else {
                            0
                        };
                        if !(0xDC00..0xE000).contains(&low) {
                            self.at = start;
                            return Err(self.refuse(format!(
                                "the escape \\u{high:04x} is half of a surrogate pair without its other half \
                                 (not valid Unicode)"
                            )));
                        }
                        self.at += 6;
                        0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..0xE000).contains(&high) {
                        self.at = start;
                        return Err(self.refuse(format!(
                            "the escape \\u{high:04x} is half of a surrogate pair without its other half \
                             (not valid Unicode)"
                        )));
                    } else {
                        high
                    };
                    let c = char::from_u32(c).ok_or_else(|| self.refuse("an escape that is not a character"))?;
                    let mut buf = [0u8; 4];
                    s.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0x00..=0x1f => return Err(self.refuse("a control character inside a string")),
                _ => {
                    // Copy a run of plain bytes at once; UTF-8 validity is checked below.
                    let run = self.text[self.at..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
                    let end = self.at + run.unwrap_or(self.text.len() - self.at);
                    let chunk = &self.text[self.at..end];
                    if std::str::from_utf8(chunk).is_err() {
                        return Err(self.refuse("a string that is not valid UTF-8"));
                    }
                    s.extend_from_slice(chunk);
                    self.at = end;
                }
            }
        }
        Ok(s)
    }

    fn hex4(&self, from: usize) -> Result<u32, Refused> {
        let digits = self.text.get(from..from + 4).ok_or_else(|| self.refuse("a short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.refuse("a bad \\u escape"))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.refuse("a bad \\u escape"));
        }
        u32::from_str_radix(text, 16).map_err(|_| self.refuse("a bad \\u escape"))
    }

    fn number(&mut self) -> Result<(), Refused> {
        let start = self.at;
        let negative = self.text[self.at] == b'-';
        if negative {
            self.at += 1;
        }
        let int = self.digits();
        if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
            self.at = start;
            return Err(self.refuse("not a JSON number"));
        }
        let mut frac: &[u8] = &[];
        if self.text.get(self.at) == Some(&b'.') {
            self.at += 1;
            frac = self.digits();
            if frac.is_empty() {
                self.at = start;
                return Err(self.refuse("not a JSON number"));
            }
        }
        let mut exp: i64 = 0;
        if matches!(self.text.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            let exp_negative = match self.text.get(self.at) {
                Some(b'-') => {
                    self.at += 1;
                    true
                }
                Some(b'+') => {
                    self.at += 1;
                    false
                }
                _ => false,
            };
            let digits = self.digits();
            if digits.is_empty() {
                self.at = start;
                return Err(self.refuse("not a JSON number"));
            }
            // Saturating: an exponent past any double's range is refused below either way.
            exp = digits.iter().fold(0i64, |e, d| e.saturating_mul(10).saturating_add(i64::from(d - b'0')));
            if exp_negative {
                exp = -exp;
            }
        }
        // Value = 0.DIGITS x 10^point, with DIGITS the significant digits (no leading or trailing
        // zeros): the same for every way of writing one number.
        let all: Vec<u8> = int.iter().chain(frac).copied().collect();
        let Some(first) = all.iter().position(|&d| d != b'0') else {
            self.emit(b"0");
            return Ok(());
        };
        let last = all.iter().rposition(|&d| d != b'0').unwrap_or(first);
        let significant = &all[first..=last];
        let point = (int.len() as i64 - first as i64).saturating_add(exp);
        // A double's largest finite value is about 1.8e308 and values below 4.9e-324 round to
        // zero; refuse the first (it cannot be read back) and keep the second (it reads as 0 or
        // as a tiny number, not as something else).
        if point > 309 || (point == 309 && !fits_double(significant, negative)) {
            self.at = start;
            let written = String::from_utf8_lossy(&self.text[start..start + (self.text.len() - start).min(40)])
                .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.')))
                .next()
                .unwrap_or_default()
                .to_string();
            return Err(self.refuse(format!(
                "the number {written} is beyond the range of a 64-bit floating-point number (about ±1.8e308)"
            )));
        }
        self.emit(if negative { b"-" } else { b"+" });
        self.emit(&point.to_be_bytes());
        self.emit(significant);
        self.emit(b";");
        Ok(())
    }

    fn digits(&mut self) -> &'t [u8] {
        let text = self.text;
        let start = self.at;
        while matches!(text.get(self.at), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        &text[start..self.at]
    }
}

/// For a number with 309 digits before the point: whether it is at most `f64::MAX` (rounded to
/// nearest, as every double parser does).
fn fits_double(significant: &[u8], negative: bool) -> bool {
    let mut text = String::with_capacity(significant.len() + 8);
    if negative {
        text.push('-');
    }
    text.push_str("0.");
    text.push_str(std::str::from_utf8(significant).unwrap_or("9"));
    text.push_str("e309");
    text.parse::<f64>().is_ok_and(f64::is_finite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_values() {
        let same: &[(&str, &str)] = &[
            (r#"{"a":1,"b":2}"#, r#"{"a":1, "b":2}"#),
            (r#"{"a":1,"b":2}"#, r#"{ "b" : 2 , "a" : 1 }"#),
            (r#"{"a": 1, "b": 2}"#, r#"{"b":2,"a":1}"#),
            ("1", "1.0"),
            ("1", "1e0"),
            ("100", "1e2"),
            ("0.5", "5e-1"),
            ("-0", "0"),
            ("0.000", "0e10"),
            (r#""A""#, r#""\u0041""#),
            (r#""é""#, r#""\u00e9""#),
            (r#""😀""#, r#""\ud83d\ude00""#),
            (r#"{"a":1,"a":2}"#, r#"{"a":2}"#),
            ("[1, [2, {}], null, true, false]", "[1,[2,{}],null,true,false]"),
            ("\n 12345678901234567890123 \t", "12345678901234567890123"),
        ];
        for (a, b) in same {
            assert!(same_value(a.as_bytes(), b.as_bytes()), "{a} == {b}");
        }
        let different: &[(&str, &str)] = &[
            (r#"{"a":1}"#, r#"{"a":2}"#),
            (r#"{"a":1}"#, r#"{"a":1,"b":null}"#),
            ("[1,2]", "[2,1]"),
            ("1", "-1"),
            ("1", r#""1""#),
            ("12345678901234567890123", "12345678901234567890124"),
            ("0.1", "0.10000000000000001"),
            (r#"{"a":2,"a":1}"#, r#"{"a":2}"#),
            ("null", "false"),
            ("[]", "{}"),
            (r#""a\"b""#, r#""a\\b""#),
        ];
        for (a, b) in different {
            assert!(!same_value(a.as_bytes(), b.as_bytes()), "{a} != {b}");
        }
    }

    #[test]
    fn checks() {
        let ok = [
            r#""\ud83d\ude00""#,
            "1.7976931348623157e308",
            "-1.7976931348623157e308",
            "1e-400",
            "123456789e300",
            r#"{"a":[1,"x",{"b":null}]}"#,
        ];
        for text in ok {
            assert_eq!(check(text.as_bytes()), Ok(()), "{text}");
        }
        let refused: &[(&str, &str)] = &[
            (r#""\ud800""#, "surrogate"),
            (r#"{"a":"x\udc00y"}"#, "surrogate"),
            (r#""\ud800\u0041""#, "surrogate"),
            ("1e400", "range of a 64-bit"),
            ("-1e309", "range of a 64-bit"),
            ("1.8e308", "range of a 64-bit"),
            ("[1e99999999999999999999]", "range of a 64-bit"),
            ("01", "not a JSON number"),
            ("1.", "not a JSON number"),
            ("[1,]", "not a JSON value"),
            ("{} x", "text after"),
        ];
        for (text, reason) in refused {
            let e = check(text.as_bytes()).unwrap_err();
            assert!(e.reason.contains(reason), "{text}: {e}");
        }
        let e = check(br#"{"a":"\ud800"}"#).unwrap_err();
        assert_eq!(e.offset, 6, "points at the escape");
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!("{}1{}", "[".repeat(DEPTH_MAX + 2), "]".repeat(DEPTH_MAX + 2));
        assert!(check(deep.as_bytes()).unwrap_err().reason.contains("nested deeper"));
        let fine = format!("{}1{}", "[".repeat(DEPTH_MAX), "]".repeat(DEPTH_MAX));
        assert_eq!(check(fine.as_bytes()), Ok(()));
    }
}
