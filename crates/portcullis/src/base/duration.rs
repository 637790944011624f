//! Durations as people type them into the admin API and audit searches: a whole number and
//! one unit (`90d`, `12h`, `30m`).

use std::time::Duration;

/// A whole number of at most six digits, without a leading zero, and a unit: `s`, `m`,
/// `h`, `d` or `w`.
pub const WHOLE_PATTERN: &str = "^[1-9][0-9]{0,5}[smhdw]$";
/// Like [`WHOLE_PATTERN`], or a zero.
pub const WHOLE_OR_ZERO_PATTERN: &str = "^(0|[1-9][0-9]{0,5})[smhdw]$";

/// Parses `text` of [`WHOLE_PATTERN`], or with `zero_allowed` of [`WHOLE_OR_ZERO_PATTERN`].
pub fn parse_whole(text: &str, zero_allowed: bool) -> Option<Duration> {
    let unit = match text.as_bytes().last()? {
        b's' => 1,
        b'm' => 60,
        b'h' => 3600,
        b'd' => 86_400,
        b'w' => 604_800,
        _ => return None,
    };
    // The unit is one ASCII byte, so this slices at a character boundary.
    let digits = &text[..text.len() - 1];
    let well_formed = (1..=6).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (!digits.starts_with('0') || (zero_allowed && digits == "0"));
    if !well_formed {
        return None;
    }
    let count: u64 = digits.parse().ok()?;
    Some(Duration::from_secs(count * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_durations() {
        assert_eq!(
            parse_whole("90d", false),
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(parse_whole("1s", false), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_whole("999999w", false),
            Some(Duration::from_secs(999_999 * 604_800))
        );
        assert_eq!(parse_whole("0s", true), Some(Duration::ZERO));
        for bad in [
            "", "0s", "01h", "1", "h", "1.5h", "1 h", "1H", "1000000s", "-1s", "1hé", "é",
        ] {
            assert_eq!(parse_whole(bad, false), None, "{bad:?}");
        }
        assert_eq!(parse_whole("00s", true), None);
    }
}
