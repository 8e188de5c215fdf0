//! Durations as Istio's YAML writes them: `10s`, `1.5s`, `100ms`, `1m`, `1h`, `1h30m`.
//!
//! Istio's CRDs take Go duration strings (and protobuf's `1.5s`), so the same grammar is
//! accepted here: one or more `<number><unit>` pairs with units `ns`, `us`, `µs`, `ms`, `s`,
//! `m` and `h`. A bare `0` is zero. Negative durations are not durations.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer};

/// A non-negative duration read from Istio YAML. It keeps the text it was written as, so
/// messages can quote the user's own spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duration {
    value: std::time::Duration,
    text: String,
}

impl Duration {
    /// Parses Istio's duration syntax.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value = parse_go_duration(text.trim())?;
        Ok(Self {
            value,
            text: text.trim().to_string(),
        })
    }

    /// The duration as a standard library value.
    pub fn get(&self) -> std::time::Duration {
        self.value
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Duration::parse(&text).map_err(de::Error::custom)
    }
}

fn parse_go_duration(text: &str) -> Result<std::time::Duration, String> {
    let invalid = |why: &str| {
        format!("invalid duration {text:?}: {why} (write it like 10s, 1.5s, 100ms, 1m or 1h)")
    };
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if text.is_empty() {
        return Err(invalid("it is empty"));
    }
    if text.starts_with('-') {
        return Err(invalid("it is negative"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return Err(invalid("a number must come before each unit"));
        }
        let number: f64 = number
            .parse()
            .map_err(|_| invalid("the number is malformed"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(invalid("the unit is missing")),
            _ => return Err(invalid(&format!("unknown unit {unit:?}"))),
        };
        total_nanos += number * nanos_per_unit;
        rest = after;
    }
    // Ten thousand years is far past any sensible setting and keeps the cast exact enough.
    if !total_nanos.is_finite() || total_nanos > 3.15e20 {
        return Err(invalid("it is too long"));
    }
    Ok(std::time::Duration::from_nanos(total_nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as StdDuration;

    #[test]
    fn parses_istio_spellings() {
        let cases = [
            ("10s", StdDuration::from_secs(10)),
            ("1.5s", StdDuration::from_millis(1500)),
            ("100ms", StdDuration::from_millis(100)),
            ("1m", StdDuration::from_secs(60)),
            ("1h", StdDuration::from_secs(3600)),
            ("1h30m", StdDuration::from_secs(5400)),
            ("250us", StdDuration::from_micros(250)),
            ("0", StdDuration::ZERO),
            ("0s", StdDuration::ZERO),
        ];
        for (text, expected) in cases {
            assert_eq!(Duration::parse(text).unwrap().get(), expected, "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for text in [
            "",
            "10",
            "ten seconds",
            "-1s",
            "5x",
            "s",
            "1..5s",
            "99999999999999h",
        ] {
            assert!(
                Duration::parse(text).is_err(),
                "{text:?} should be rejected"
            );
        }
    }
}
