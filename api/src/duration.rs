//! The one duration parser and the one duration formatter of the whole tree (daemon flags,
//! notify.yaml, `--every`, `logs --since`, stall ages, the fleet view), so `1h30m` means the
//! same everywhere. Parsing is humantime's (`90s`, `5m`, `1h30m`, `2d`, `500ms`); a bare number
//! is read as seconds only where a caller allows it (the daemon's flags always did).

use std::time::Duration;

/// Why a duration was refused; the caller names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Not a duration at all (humantime's reason).
    NotADuration { text: String, reason: String },
    /// Zero where a positive duration is needed.
    Zero(String),
    /// More than a duration can hold.
    TooLarge(String),
}

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DurationError::NotADuration { text, reason } => write!(
                f,
                "{text:?} is not a duration ({reason}); use e.g. 30s, 5m, 1h30m, 2h or 1d"
            ),
            DurationError::Zero(text) => write!(f, "{text:?} must be longer than zero"),
            DurationError::TooLarge(text) => write!(f, "{text:?} is too long a duration"),
        }
    }
}

impl std::error::Error for DurationError {}

/// A duration with units (`90s`, `5m`, `1h30m`, `2d`, `500ms`), or, with `bare_seconds`, a plain
/// number of seconds. Zero is accepted; [`parse_positive`] refuses it.
pub fn parse(text: &str, bare_seconds: bool) -> Result<Duration, DurationError> {
    let t = text.trim();
    if bare_seconds && !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return t.parse::<u64>().map(Duration::from_secs).map_err(|e| {
            DurationError::NotADuration {
                text: text.to_string(),
                reason: e.to_string(),
            }
        });
    }
    humantime::parse_duration(t).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => DurationError::TooLarge(text.to_string()),
        other => DurationError::NotADuration {
            text: text.to_string(),
            reason: other.to_string(),
        },
    })
}

/// [`parse`], longer than zero.
pub fn parse_positive(text: &str, bare_seconds: bool) -> Result<Duration, DurationError> {
    match parse(text, bare_seconds)? {
        d if d.is_zero() => Err(DurationError::Zero(text.to_string())),
        d => Ok(d),
    }
}

/// A span for people, its two largest units: 109 → `1m49s`, 7384 → `2h03m`, 200000 → `2d07h`.
pub fn text(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

/// [`text`] for a narrow column: whole minutes under an hour (841 → `14m`), whole days past one.
pub fn coarse(secs: u64) -> String {
    match secs {
        60..=3599 => format!("{}m", secs / 60),
        86_400.. => format!("{}d", secs / 86_400),
        _ => text(secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_parser_reads_every_form_the_tree_takes() {
        let secs = |t: &str, bare: bool| parse(t, bare).map(|d| d.as_secs());
        assert_eq!(secs("90s", false), Ok(90));
        assert_eq!(secs("1h30m", false), Ok(5400));
        assert_eq!(secs("90m", false), Ok(5400));
        assert_eq!(secs("2d", false), Ok(172_800));
        assert_eq!(parse("500ms", false).unwrap(), Duration::from_millis(500));
        assert_eq!(secs(" 7 ", true), Ok(7));
        assert!(parse("7", false).is_err());
        assert!(parse("5x", true).is_err());
        assert_eq!(
            parse_positive("0s", true),
            Err(DurationError::Zero("0s".into()))
        );
        assert_eq!(
            parse("18446744073709551615d", false),
            Err(DurationError::TooLarge("18446744073709551615d".into()))
        );
        let e = parse("m", true).unwrap_err().to_string();
        assert!(e.starts_with("\"m\" is not a duration ("), "{e}");
    }

    #[test]
    fn one_formatter_with_a_coarse_form_for_narrow_columns() {
        assert_eq!(text(42), "42s");
        assert_eq!(text(109), "1m49s");
        assert_eq!(text(7384), "2h03m");
        assert_eq!(text(200_000), "2d07h");
        assert_eq!(coarse(841), "14m");
        assert_eq!(coarse(7384), "2h03m");
        assert_eq!(coarse(200_000), "2d");
        assert_eq!(coarse(42), "42s");
    }
}
