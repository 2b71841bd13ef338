//! The quick reader of transaction messages: one pass over the bytes, for messages of the
//! common shape (a flat object, strings without escapes).
//!
//! Written by hand because serde_json's map visitor was a fifth of the engine's CPU at the
//! drain (BENCHMARKS.md, #15): a key is matched as bytes without a visitor per key, and the
//! message is checked for UTF-8 once, not string by string.
//!
//! It accepts a subset of what [`TransactionMessage::parse`]'s serde path accepts, and
//! reads the same values from it: numbers are read as serde_json reads them (integers
//! exactly, floats correctly rounded, as with serde_json's `float_roundtrip`). Anything
//! else, valid or not (escapes, nesting past a few levels, any error), returns None, and
//! the serde path decides, with its error messages.

use std::borrow::Cow;

use super::json::{TransactionMessage, column_of, string_slot};
use risksense_common::schema::{COLUMN_COUNT, idx};
use risksense_common::time::{parse_date, parse_timestamp_micros};

/// Nesting the quick reader follows inside an ignored key's value; deeper ones go to serde.
const MAX_DEPTH: usize = 16;

/// The message, if it has the common shape and is valid; None: let serde_json decide.
pub(super) fn parse(payload: &[u8]) -> Option<TransactionMessage<'_>> {
    // One check for the whole message; every string sliced from it is then valid UTF-8 (a
    // slice between two ASCII quotes of valid UTF-8 is whole characters). simdutf8 (arrow-json
    // builds it already) checks a message in a fraction of std's time (std's check was 2 %
    // of the engine at the drain).
    let text = simdutf8::basic::from_utf8(payload).ok()?;
    let mut scan = Scanner { text, pos: 0 };
    let mut message = TransactionMessage::default();
    let mut seen = [false; COLUMN_COUNT];
    seen[idx::ROW_ID] = true;
    scan.whitespace();
    scan.expect(b'{')?;
    scan.whitespace();
    loop {
        let key = scan.string()?;
        scan.whitespace();
        scan.expect(b':')?;
        scan.whitespace();
        match column_of(key) {
            None => scan.skip_value(0)?,
            Some(column) => {
                if std::mem::replace(&mut seen[column], true) {
                    return None;
                }
                scan.column(column, &mut message)?;
            }
        }
        scan.whitespace();
        match scan.next()? {
            b',' => scan.whitespace(),
            b'}' => break,
            _ => return None,
        }
    }
    scan.whitespace();
    (scan.pos == payload.len() && seen.iter().all(|s| *s)).then_some(message)
}

/// A byte a plain string cannot hold: its closing `"`, or a `\` or control character,
/// where the quick reader gives up.
fn ends_plain(byte: u8) -> bool {
    matches!(byte, b'"' | b'\\' | 0..=0x1f)
}

/// The place of the first byte in `bytes` that [`ends_plain`].
///
/// Eight bytes a step (SWAR): strings are most of a message's bytes, and the byte loop
/// before this tested each byte three ways; `memchr2`, measured in its place, cost as much
/// as the loop, its per-call set-up weighing on strings of a few bytes (BENCHMARKS.md, #15).
fn plain_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte's high bit set where `word` holds a byte below `n` (n <= 0x80). A borrow only
    // carries upward, so the lowest byte flagged is a true one (the only one used).
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let found = below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
            | below(word, 0x20);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    // Fewer than eight bytes left.
    let end = bytes[at..].iter().position(|&b| ends_plain(b))?;
    Some(at + end)
}

struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.pos;
        let rest = &self.bytes()[start..];
        let len = plain_end(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.pos = start + len + 1;
        Some(&self.text[start..start + len])
    }

    /// A JSON number's text, and whether it is an integer (no fraction or exponent).
    fn number(&mut self) -> Option<(&'a str, bool)> {
        let start = self.pos;
        let digits = |scan: &mut Self| {
            let from = scan.pos;
            while scan.peek().is_some_and(|b| b.is_ascii_digit()) {
                scan.pos += 1;
            }
            scan.pos > from
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            integer = false;
            if !digits(self) {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            integer = false;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !digits(self) {
                return None;
            }
        }
        Some((&self.text[start..self.pos], integer))
    }

    /// An integer token; `-0` is not one (serde_json reads it as the float -0.0, and an
    /// integer column refuses it).
    fn integer<T: std::str::FromStr>(&mut self) -> Option<T> {
        match self.number()? {
            (text, true) if text != "-0" => text.parse().ok(),
            _ => None,
        }
    }

    /// As serde_json reads an f64 (with `float_roundtrip`): correctly rounded, `-0` as
    /// -0.0; out of range (infinite) is its error, not ours.
    fn float(&mut self) -> Option<f64> {
        let value: f64 = self.number()?.0.parse().ok()?;
        value.is_finite().then_some(value)
    }

    fn column(&mut self, column: usize, m: &mut TransactionMessage<'a>) -> Option<()> {
        match column {
            idx::TRANS_DATE_TRANS_TIME => m.event_time = parse_timestamp_micros(self.string()?)?,
            idx::DOB => m.dob = parse_date(self.string()?)?,
            idx::CC_NUM => m.cc_num = self.integer()?,
            idx::ZIP => m.zip = self.integer()?,
            idx::CITY_POP => m.city_pop = self.integer()?,
            idx::UNIX_TIME => m.unix_time = self.integer()?,
            idx::IS_FRAUD => m.is_fraud = self.integer()?,
            idx::AMT => m.amt = self.float()?,
            idx::LAT => m.lat = self.float()?,
            idx::LONG => m.long = self.float()?,
            idx::MERCH_LAT => m.merch_lat = self.float()?,
            idx::MERCH_LONG => m.merch_long = self.float()?,
            _ => m.strings[string_slot(column)?] = Cow::Borrowed(self.string()?),
        }
        Some(())
    }

    /// Skips an ignored key's value.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            open @ (b'[' | b'{') if depth < MAX_DEPTH => {
                let close = if open == b'[' { b']' } else { b'}' };
                self.pos += 1;
                self.whitespace();
                if self.peek() == Some(close) {
                    self.pos += 1;
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.string()?;
                        self.whitespace();
                        self.expect(b':')?;
                        self.whitespace();
                    }
                    self.skip_value(depth + 1)?;
                    self.whitespace();
                    match self.next()? {
                        b',' => self.whitespace(),
                        b if b == close => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes().get(self.pos..end)? == word.as_bytes()).then(|| self.pos = end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::json::JsonRowEncoder;

    /// The serde path alone, as it read every message before the quick reader.
    fn by_serde(payload: &[u8]) -> Result<TransactionMessage<'_>, String> {
        serde_json::from_slice(payload).map_err(|e| e.to_string())
    }

    /// Debug output shows every value exactly (`-0.0` apart from `0.0`).
    fn shown(message: &TransactionMessage) -> String {
        format!("{message:?}")
    }

    const GOOD: &str = r#"{"trans_date_trans_time":"2019-01-01 00:00:18","cc_num":2703186189652095,"merchant":"fraud_Rippin, Kub and Mann","category":"misc_net","amt":4.97,"first":"Jennifer","last":"Banks","gender":"F","street":"561 Perry Cove","city":"Moravian Falls","state":"NC","zip":28654,"lat":36.0788,"long":-81.1781,"city_pop":3495,"job":"Psychologist, counselling","dob":"1988-03-09","trans_num":"0b242abb623afc578575680df30655b9","unix_time":1325376018,"merch_lat":36.011293,"merch_long":-82.048315,"is_fraud":0}"#;

    #[test]
    fn a_plain_string_ends_where_a_byte_by_byte_scan_says() {
        let naive = |bytes: &[u8]| bytes.iter().position(|&b| ends_plain(b));
        // Every byte value at every place of the first two words and the tail, amid
        // ordinary text, high bytes, and the bytes just past the ones looked for.
        for fill in [b'a', 0x80, 0xff, 0x21, 0x5d, 0x23] {
            for len in 0..20 {
                assert_eq!(plain_end(&vec![fill; len]), None);
                for at in 0..len {
                    for byte in 0..=255u8 {
                        let mut bytes = vec![fill; len];
                        bytes[at] = byte;
                        assert_eq!(plain_end(&bytes), naive(&bytes), "{bytes:?}");
                    }
                }
            }
        }
        // The first of several ends, whatever comes after it.
        let text = b"Mor\xc3\xa4vian \"Falls\\\x01";
        assert_eq!(plain_end(text), naive(text));
        assert_eq!(plain_end(b"0123456789abcdef\x1f\""), Some(16));
    }

    #[test]
    fn the_fixture_reads_the_same_as_through_serde() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../data/fixtures/sparkov-2019h1-head3000.csv");
        let batches = crate::source::read_all(&path).expect("fixture");
        let mut out = Vec::new();
        let mut rows = 0;
        for batch in &batches {
            let encoder = JsonRowEncoder::new(batch).expect("encoder");
            for row in 0..encoder.num_rows() {
                encoder.encode_row(row, &mut out);
                let quick = parse(&out).expect("the common shape reads quickly");
                let slow = by_serde(&out).expect("serde reads it");
                assert_eq!(shown(&quick), shown(&slow));
                rows += 1;
            }
        }
        assert_eq!(rows, 3000);
    }

    #[test]
    fn unusual_but_valid_messages_read_the_same_or_go_to_serde() {
        let variants = [
            // Whitespace everywhere JSON allows it.
            GOOD.replace(",\"", " ,\n\t\"")
                .replace("\":", "\"\r: ")
                .replace('{', " { ")
                + "  ",
            // Unknown keys, with values of every kind, nested.
            GOOD.replace(
                "{",
                r#"{"note":{"a":[1,-2.5e3,true,false,null,"x",{}],"b":[]},"row_id":12,"#,
            ),
            // Numbers as serde reads them: an integer amount, -0, exponents, a big integer.
            GOOD.replace("\"amt\":4.97", "\"amt\":5")
                .replace("\"lat\":36.0788", "\"lat\":-0")
                .replace("\"long\":-81.1781", "\"long\":-8.11781E1")
                .replace("\"merch_lat\":36.011293", "\"merch_lat\":36011293e-6")
                .replace(
                    "\"merch_long\":-82.048315",
                    "\"merch_long\":-82048315000000000000000e-21",
                ),
            // Escapes: serde reads these (the quick reader declines).
            GOOD.replace("Banks", r#"Ban\"ks\u00e9"#),
            GOOD.replace("\"first\"", r#""fir\u0073t""#),
            // Text that is not ASCII.
            GOOD.replace("Moravian Falls", "Mörävian Fälls 東京"),
        ];
        for variant in &variants {
            let slow = by_serde(variant.as_bytes()).expect("valid");
            let message = TransactionMessage::parse(variant.as_bytes()).expect("parses");
            assert_eq!(shown(&message), shown(&slow), "{variant}");
            if let Some(quick) = parse(variant.as_bytes()) {
                assert_eq!(shown(&quick), shown(&slow), "{variant}");
            }
        }
        assert!(parse(variants[0].as_bytes()).is_some());
        assert!(parse(variants[2].as_bytes()).is_some());
        assert!(parse(variants[3].as_bytes()).is_none());
    }

    #[test]
    fn anything_serde_refuses_the_quick_reader_refuses_too() {
        let bad = [
            GOOD.replace("\"amt\":4.97", "\"amt\":\"4.97\""),
            GOOD.replace("\"zip\":28654", "\"zip\":28654.0"),
            GOOD.replace("\"is_fraud\":0", "\"is_fraud\":-0"),
            GOOD.replace("\"zip\":28654", "\"zip\":2865400000000"),
            GOOD.replace("\"cc_num\":2703186189652095", "\"cc_num\":1e3"),
            GOOD.replace(
                "\"cc_num\":2703186189652095",
                "\"cc_num\":99999999999999999999",
            ),
            GOOD.replace("\"amt\":4.97", "\"amt\":04.97"),
            GOOD.replace("\"amt\":4.97", "\"amt\":1e400"),
            GOOD.replace("\"amt\":4.97", "\"amt\":4."),
            GOOD.replace("\"amt\":4.97", "\"amt\":+4.97"),
            GOOD.replace("\"amt\":4.97", "\"amt\":null"),
            GOOD.replace("\"amt\":4.97,", ""),
            GOOD.replace("\"is_fraud\":0", "\"is_fraud\":0,\"amt\":1.0"),
            GOOD.replace("2019-01-01 00:00:18", "yesterday"),
            GOOD.replace("1988-03-09", "1988-3-9"),
            GOOD.replace("Banks", "Ba\tnks"),
            GOOD.replace("{", "{\"x\":tru,"),
            GOOD.replace("{", "{\"x\":[1,],"),
            GOOD.to_string() + "{}",
            GOOD.replace('}', ",}"),
            GOOD[..GOOD.len() - 1].to_string(),
            // Ends inside a string, and a control character just before a string's end.
            GOOD[..GOOD.find("Banks").expect("name") + 3].to_string(),
            GOOD.replace("Banks", "Banks\u{1f}"),
            "{}".to_string(),
            "[]".to_string(),
        ];
        for message in &bad {
            assert!(by_serde(message.as_bytes()).is_err(), "{message}");
            assert!(parse(message.as_bytes()).is_none(), "{message}");
            assert!(TransactionMessage::parse(message.as_bytes()).is_err());
        }
        // Not UTF-8.
        let mut bytes = GOOD.as_bytes().to_vec();
        let at = GOOD.find("Banks").expect("name");
        bytes[at] = 0xff;
        assert!(parse(&bytes).is_none());
        assert!(TransactionMessage::parse(&bytes).is_err());
    }
}
