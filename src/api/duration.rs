//! Go-style durations (`30s`, `5m`, `1h30m`) as used in `refreshInterval`.
//!
//! The schema accepts exactly the grammar this parser accepts (see [`DURATION_RULE`]), so a value
//! that reached the operator always parses; the parser still returns an error rather than
//! panicking, because objects created before a schema change may not follow it.

use std::time::Duration;

/// CEL rule for a refresh interval: the grammar, then the bounds via CEL's own `duration()`.
/// `&&` short-circuits on `false`, so an unparsable value yields the message, not a CEL error.
pub const DURATION_RULE: &str = "self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != '' && duration(self) >= duration('30s') && duration(self) <= duration('24h')";
pub const DURATION_MESSAGE: &str = "must be a duration such as 30s, 5m or 1h30m, between 30s and 24h";

/// Used when neither the ToolBinding nor its Workspace says how often to poll.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("failed to parse duration {0:?}: expected hours, minutes and seconds such as 1h30m or 45s")]
pub struct ParseDurationError(pub String);

/// Parses `[Nh][Nm][Ns]` (at least one part, in that order).
pub fn parse(input: &str) -> Result<Duration, ParseDurationError> {
    let err = || ParseDurationError(input.to_string());
    if input.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut last_rank = 0;
    for ch in input.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let (rank, seconds) = match ch {
            'h' => (1, 3600),
            'm' => (2, 60),
            's' => (3, 1),
            _ => return Err(err()),
        };
        if digits.is_empty() || rank <= last_rank {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        total = n.checked_mul(seconds).and_then(|s| total.checked_add(s)).ok_or_else(err)?;
        digits.clear();
        last_rank = rank;
    }
    if !digits.is_empty() {
        return Err(err());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2h0m15s"), Ok(Duration::from_secs(7215)));
    }

    #[test]
    fn refuses_what_the_schema_refuses() {
        for bad in ["", "5", "m", "5x", "1m1h", "5m5m", "-5m", "1.5h", "5 m"] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// The grammar part of [`DURATION_RULE`], read from the rule itself so the two
        /// cannot drift apart unnoticed.
        fn cel_grammar() -> regex::Regex {
            let start = DURATION_RULE.find("self.matches('").unwrap() + "self.matches('".len();
            let end = start + DURATION_RULE[start..].find("')").unwrap();
            regex::Regex::new(&DURATION_RULE[start..end]).unwrap()
        }

        /// Go-style text for `d` in the one form the grammar allows (largest units first).
        fn format(d: Duration) -> String {
            let s = d.as_secs();
            let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
            let mut out = String::new();
            if h > 0 {
                out += &format!("{h}h");
            }
            if m > 0 {
                out += &format!("{m}m");
            }
            if s > 0 || out.is_empty() {
                out += &format!("{s}s");
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn never_panics(input in any::<String>()) {
                let _ = parse(&input);
            }

            /// The parser accepts exactly what the CEL rule's grammar accepts (`self != ''`
            /// included), for inputs built from the grammar's own alphabet.
            #[test]
            fn agrees_with_the_cel_grammar(input in "[0-9hms x.-]{0,12}") {
                let cel = cel_grammar().is_match(&input) && !input.is_empty();
                prop_assert_eq!(parse(&input).is_ok(), cel, "{:?}", input);
            }

            /// Every value the grammar can write parses back to the same duration.
            #[test]
            fn parse_inverts_format(seconds in 0u64..10_000_000) {
                let d = Duration::from_secs(seconds);
                prop_assert_eq!(parse(&format(d)), Ok(d));
            }

            /// Non-canonical spellings (`90m`, `0h5m`, leading zeros) mean the sum of their parts.
            #[test]
            fn parts_add_up(h in prop::option::of(0u64..1000), m in prop::option::of(0u64..1000), s in prop::option::of(0u64..100_000), zeros in 0usize..3) {
                prop_assume!(h.is_some() || m.is_some() || s.is_some());
                let pad = "0".repeat(zeros);
                let text: String = [(h, 'h'), (m, 'm'), (s, 's')].iter().filter_map(|(n, u)| n.map(|n| format!("{pad}{n}{u}"))).collect();
                let expected = h.unwrap_or(0) * 3600 + m.unwrap_or(0) * 60 + s.unwrap_or(0);
                prop_assert_eq!(parse(&text), Ok(Duration::from_secs(expected)));
            }

            /// Numbers too large for the total are an error, not a wrap-around or a panic.
            #[test]
            fn overflow_is_an_error(n in (u64::MAX / 3600 + 1)..u64::MAX) {
                let text = format!("{n}h");
                prop_assert!(parse(&text).is_err());
            }
        }
    }
}
