//! Human-friendly durations (`250ms`, `10s`, `5m`, `1h`) as they appear in the config file.
//!
//! Kept as a newtype so the file types can deserialize, print and describe themselves in the
//! JSON Schema without the runtime types ever seeing a string.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as a number followed by a unit: `ms`, `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

/// Parses `250ms`, `1.5s`, `10s`, `5m`, `2h`. `0` alone is accepted as zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| bad_duration(text))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad_duration(text))?;
    let seconds_per_unit = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(bad_duration(text)),
    };
    let seconds = value * seconds_per_unit;
    if !seconds.is_finite() || seconds > 10.0 * 365.0 * 86_400.0 {
        return Err(format!("duration `{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn bad_duration(text: &str) -> String {
    format!("invalid duration `{text}`: expected a number followed by ms, s, m, h or d (e.g. 250ms, 10s)")
}

impl fmt::Display for DurationStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 250ms or 10s")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationStr, E> {
                parse_duration(v).map(DurationStr).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationStr, E> {
                if v == 0 {
                    Ok(DurationStr(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "duration `{v}` needs a unit: write {v}ms or {v}s"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationStr, E> {
                Err(E::custom(format!(
                    "duration `{v}` needs a unit: write {v}ms or {v}s"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationStr, E> {
                Err(E::custom(format!("duration `{v}` needs a unit: write {v}s")))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

impl Serialize for DurationStr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for DurationStr {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d)|0)$",
            "description": "A duration: a number followed by ms, s, m, h or d, e.g. 250ms or 10s.",
            "examples": ["250ms", "10s", "5m"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "10", "ms", "10 s", "10sec", "-1s", "1e400s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn displays_round_trip() {
        assert_eq!(DurationStr(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(DurationStr(Duration::from_secs(30)).to_string(), "30s");
    }
}
