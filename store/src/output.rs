//! What continuous queries write to the store: output records, and the rules both stores
//! check them by (so that a record one store refuses, the other refuses too).

use crate::StoreError;

/// A row a continuous query emits to the store (see `ResultStore::write_outputs`).
#[derive(Debug, Clone, PartialEq)]
pub enum OutputRecord {
    /// Replaces the hash under `key` with `fields` (so writing it twice leaves one copy),
    /// expiring after `ttl_secs` (at least 1 s) when given. No fields leaves no hash: Redis
    /// has no empty hashes, so writing one deletes `key`, whatever it held.
    Hash {
        key: String,
        fields: Vec<(String, String)>,
        ttl_secs: Option<u64>,
    },
    /// Appends an entry (at least one field) to the Redis stream `key`. With `id`
    /// ("<ms>-<seq>", e.g. a window's end in ms and the group's index), an id at or below
    /// the stream's last one is skipped, not an error: a replayed window is not appended
    /// twice. Without id, "*" (at least once). `max_len`: approximate trim (MAXLEN ~): the
    /// newest `max_len` entries are kept, maybe more.
    StreamEntry {
        key: String,
        id: Option<String>,
        fields: Vec<(String, String)>,
        max_len: Option<u64>,
    },
}

impl OutputRecord {
    pub fn key(&self) -> &str {
        match self {
            OutputRecord::Hash { key, .. } | OutputRecord::StreamEntry { key, .. } => key,
        }
    }
}

/// A stream entry's id, `(ms, seq)`: ordered numerically, as Redis orders them.
pub(crate) type StreamId = (u64, u64);

/// Longest TTL an output hash may ask for: beyond a century it is a mistake, and far beyond,
/// Redis refuses the EXPIRE while the in-process store would not.
pub(crate) const MAX_TTL_SECS: u64 = 100 * 365 * 24 * 3600;

/// Checks every record before anything is written (a malformed one fails the whole call in
/// either store), returning each stream entry's parsed id.
pub(crate) fn check(records: &[OutputRecord]) -> Result<Vec<Option<StreamId>>, StoreError> {
    records
        .iter()
        .map(|record| {
            let rejected = |reason: String| StoreError::Rejected {
                key: record.key().to_string(),
                reason,
            };
            match record {
                OutputRecord::Hash { ttl_secs, .. } => {
                    if ttl_secs.is_some_and(|t| t > MAX_TTL_SECS) {
                        return Err(rejected(format!(
                            "a TTL of {} s is longer than {MAX_TTL_SECS} s",
                            ttl_secs.unwrap_or_default()
                        )));
                    }
                    Ok(None)
                }
                OutputRecord::StreamEntry {
                    id,
                    fields,
                    max_len,
                    ..
                } => {
                    if fields.is_empty() {
                        return Err(rejected("a stream entry needs a field".to_string()));
                    }
                    if max_len.is_some_and(|n| n > i64::MAX as u64) {
                        return Err(rejected(format!("max_len {max_len:?} is out of range")));
                    }
                    id.as_deref()
                        .map(|id| {
                            parse_stream_id(id).ok_or_else(|| {
                                rejected(format!("stream entry id `{id}` is not <ms>-<seq>"))
                            })
                        })
                        .transpose()
                }
            }
        })
        .collect()
}

/// `<ms>-<seq>`, both decimal and within u64 (what Redis accepts as an explicit id).
fn parse_stream_id(text: &str) -> Option<StreamId> {
    let (ms, seq) = text.split_once('-')?;
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    Some((number(ms)?, number(seq)?))
}

pub(crate) fn format_stream_id((ms, seq): StreamId) -> String {
    format!("{ms}-{seq}")
}

/// Whether `key` matches the Redis glob `pattern`: a port of Redis's `stringmatchlen`
/// (`*`, `?`, `[abc]`, `[^a-z]`, `\` escapes, byte by byte, its quirks included), so that
/// the in-process store lists the keys `SCAN MATCH` would.
pub(crate) fn glob_matches(pattern: &str, key: &str) -> bool {
    // SCAN does not match a lone `*`: it lists every key, the empty one too.
    if pattern == "*" {
        return true;
    }
    let mut skip_longer = false;
    glob_from(pattern.as_bytes(), key.as_bytes(), &mut skip_longer, 0)
}

fn glob_from(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: u32) -> bool {
    // As Redis: a pathological pattern does not overflow the stack, it matches nothing.
    if nesting > 1000 {
        return false;
    }
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if glob_from(&p[1..], s, skip_longer, nesting + 1) {
                        return true;
                    }
                    // A later start cannot match when an earlier one ran out of string.
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                p = &p[1..];
                let negated = p.first() == Some(&b'^');
                if negated {
                    p = &p[1..];
                }
                let c = s[0];
                let mut matched = false;
                loop {
                    if p.len() >= 2 && p[0] == b'\\' {
                        p = &p[1..];
                        matched |= p[0] == c;
                    } else if p.is_empty() || p[0] == b']' {
                        // An unclosed class ends with the pattern.
                        break;
                    } else if p.len() >= 3 && p[1] == b'-' {
                        let (low, high) = (p[0].min(p[2]), p[0].max(p[2]));
                        p = &p[2..];
                        matched |= (low..=high).contains(&c);
                    } else {
                        matched |= p[0] == c;
                    }
                    p = &p[1..];
                }
                if matched == negated {
                    return false;
                }
                s = &s[1..];
                if p.is_empty() {
                    // The class ran to the end: nothing left to step over.
                    return s.is_empty();
                }
            }
            b'\\' if p.len() >= 2 => {
                p = &p[1..];
                if p[0] != s[0] {
                    return false;
                }
                s = &s[1..];
            }
            literal => {
                if literal != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        assert_eq!(
            parse_stream_id("1700000000000-3"),
            Some((1_700_000_000_000, 3))
        );
        assert_eq!(parse_stream_id("0-0"), Some((0, 0)));
        assert_eq!(
            parse_stream_id("18446744073709551615-18446744073709551615"),
            Some((u64::MAX, u64::MAX))
        );
        for bad in [
            "",
            "5",
            "5-",
            "-5",
            "a-1",
            "1-+2",
            "1-2-3",
            "18446744073709551616-0",
            "*",
        ] {
            assert_eq!(parse_stream_id(bad), None, "{bad}");
        }
        assert_eq!(format_stream_id((7, 0)), "7-0");
    }

    /// Cases checked against Redis 7's `SCAN MATCH`.
    #[test]
    fn globs_match_as_redis() {
        let yes = [
            ("*", "abc"),
            ("a*", "a"),
            ("a*c", "abbbc"),
            ("a**c", "ac"),
            ("a?c", "abc"),
            ("[ab]x", "bx"),
            ("[^ab]x", "cx"),
            ("[a-c]", "b"),
            ("[c-a]", "b"),
            ("[\\]]", "]"),
            ("\\*", "*"),
            ("a\\", "a\\"),
            ("[abc", "b"),
            ("x*[ab]", "xyzb"),
            ("*:*:*", "a:b:c"),
            ("*", ""),
        ];
        for (pattern, key) in yes {
            assert!(glob_matches(pattern, key), "{pattern} should match {key}");
        }
        let no = [
            ("a*", "b"),
            ("a?c", "ac"),
            ("[ab]x", "cx"),
            ("[^ab]x", "ax"),
            ("[]a", "a"),
            ("\\*", "a"),
            ("a{b,c}", "ab"),
            ("abc", "ab"),
            ("ab", "abc"),
            ("**", ""),
            ("[abc", "bc"),
        ];
        for (pattern, key) in no {
            assert!(
                !glob_matches(pattern, key),
                "{pattern} should not match {key}"
            );
        }
    }
}
