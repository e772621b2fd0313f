//! [`Sorted`]: a typed value written with every object's keys in sorted order — the form the
//! daemon stored and replied before these payloads were typed (a JSON object built by hand
//! keeps its keys sorted), so typing a payload does not move a byte of it.

use serde::{Serialize, Serializer};

/// `T` serialized with the keys of every object in it sorted (nested and flattened ones too),
/// by [`crate::report::serialize_sorted`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sorted<T>(pub T);

impl<T: Serialize> Serialize for Sorted<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::report::serialize_sorted(&self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};

    #[derive(Serialize)]
    struct Inner {
        z: u8,
        a: Option<u8>,
    }

    #[derive(Serialize)]
    struct Outer {
        lines: Vec<String>,
        facts: Inner,
        #[serde(flatten)]
        rest: Map<String, Value>,
    }

    #[test]
    fn keys_are_sorted_at_every_level_byte_for_byte() {
        let mut rest = Map::new();
        rest.insert("b".into(), Value::Bool(true));
        let o = Outer {
            lines: vec!["x".into()],
            facts: Inner { z: 1, a: None },
            rest,
        };
        assert_eq!(
            serde_json::to_string(&Sorted(&o)).unwrap(),
            r#"{"b":true,"facts":{"a":null,"z":1},"lines":["x"]}"#
        );
    }
}
