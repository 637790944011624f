//! How limits are written: a rate such as `60/min`, and what shares a bucket.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A sustained rate: `count` requests per `period`, written `60/min`, `10/s`, `1000/hour`,
/// `5000/day` or `100/10s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct RateSpec {
    count: u32,
    period: Duration,
}

/// The longest period a rate may have, and the longest a full bucket may take to refill.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 86_400);
/// The largest burst a limit may allow.
pub const MAX_BURST: u32 = 1_000_000;

/// Why a rate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a rate like 60/min, 10/s, 1000/hour or 100/10s (a period of at most a year)")]
pub struct RateSpecError(String);

impl RateSpec {
    /// `count` requests per `period`; `None` when either is zero or the period is over
    /// [`MAX_PERIOD`].
    pub fn new(count: u32, period: Duration) -> Option<Self> {
        (count > 0 && !period.is_zero() && period <= MAX_PERIOD).then_some(Self { count, period })
    }

    /// Requests per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period the count applies to.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The time one request's share of the rate takes to come back (GCRA's emission
    /// interval).
    pub fn emission_interval(&self) -> Duration {
        self.period / self.count
    }
}

impl FromStr for RateSpec {
    type Err = RateSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || RateSpecError(text.to_owned());
        let (count, unit) = text.trim().split_once('/').ok_or_else(error)?;
        let count: u32 = count.trim().parse().map_err(|_| error())?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => humantime::parse_duration(other).map_err(|_| error())?,
        };
        Self::new(count, period).ok_or_else(error)
    }
}

impl TryFrom<String> for RateSpec {
    type Error = RateSpecError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match (self.period.as_secs(), self.period.subsec_nanos()) {
            (1, 0) => "s",
            (60, 0) => "min",
            (3600, 0) => "hour",
            (86_400, 0) => "day",
            _ => {
                let period = humantime::format_duration(self.period);
                return write!(f, "{}/{period}", self.count);
            }
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Who shares one bucket of a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKey {
    /// Each authenticated caller has its own bucket.
    #[default]
    Principal,
    /// Each client address has its own bucket (as resolved behind trusted proxies).
    Ip,
    /// Every caller of the route shares one bucket.
    Route,
}

impl LimitKey {
    /// The name used in configuration, headers and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Principal => "principal",
            Self::Ip => "ip",
            Self::Route => "route",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_every_documented_form() {
        let cases = [
            ("60/min", 60, 60),
            ("10/s", 10, 1),
            ("1000/hour", 1000, 3600),
            ("5000/day", 5000, 86_400),
            ("100/10s", 100, 10),
            (" 3 / m ", 3, 60),
        ];
        for (text, count, secs) in cases {
            let rate: RateSpec = text.parse().unwrap();
            assert_eq!(
                (rate.count(), rate.period()),
                (count, Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(
            "60/min".parse::<RateSpec>().unwrap().emission_interval(),
            Duration::from_secs(1)
        );
        assert_eq!("60/min".parse::<RateSpec>().unwrap().to_string(), "60/min");
        assert_eq!(
            "100/10s".parse::<RateSpec>().unwrap().to_string(),
            "100/10s"
        );
    }

    #[test]
    fn malformed_rates_are_refused() {
        for text in [
            "",
            "60",
            "0/min",
            "60/0s",
            "-1/min",
            "60/fortnight",
            "x/min",
            "60/",
            "1/600years",
        ] {
            assert!(text.parse::<RateSpec>().is_err(), "{text:?}");
        }
    }
}
