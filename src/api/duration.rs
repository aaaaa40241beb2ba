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
}
