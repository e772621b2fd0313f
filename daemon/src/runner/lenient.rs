//! Reading what a runner printed into types without losing a line to one odd field: a field
//! whose JSON type is not the documented one reads as its default (absent), as the untyped
//! reading did before. The scripts here print the documented shapes; this is for an older
//! script, a core that wrote something else, or a hostile runner.

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

/// `T` when the value reads as one, else `T::default()`. For `#[serde(default,
/// deserialize_with = "or_default")]`: absent, `null` (for an `Option`) or of another type,
/// the field is its default and the rest of the line still counts.
pub fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Typed(T),
        Other(IgnoredAny),
    }
    Ok(match Either::<T>::deserialize(d)? {
        Either::Typed(t) => t,
        Either::Other(_) => T::default(),
    })
}

/// `Some` whenever the field is there, `null` included: for a field whose presence is the
/// message. For `#[serde(default, deserialize_with = "present")]` (absent: `None`).
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Line {
        #[serde(default, deserialize_with = "or_default")]
        pid: u64,
        #[serde(default, deserialize_with = "or_default")]
        name: Option<String>,
        #[serde(default, deserialize_with = "present")]
        flag: Option<IgnoredAny>,
    }

    fn read(text: &str) -> Line {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn an_odd_field_reads_as_its_default_and_presence_counts_even_as_null() {
        assert_eq!(
            read(r#"{"pid": 7, "name": "s"}"#),
            Line {
                pid: 7,
                name: Some("s".into()),
                flag: None
            }
        );
        for odd in [
            r#"{"pid": "7", "name": 3}"#,
            r#"{"pid": -1, "name": ["s"]}"#,
            r#"{"pid": 1.5, "name": {"s": 1}}"#,
            r#"{"pid": null, "name": null}"#,
            "{}",
        ] {
            assert_eq!(read(odd), Line::default(), "{odd}");
        }
        assert!(read(r#"{"flag": null}"#).flag.is_some());
        assert!(read(r#"{"flag": [1, {"a": 2}]}"#).flag.is_some());
    }
}
