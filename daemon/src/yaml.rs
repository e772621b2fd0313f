//! The one module that touches a YAML library (serde-saphyr 2: pure Rust, panic-free,
//! duplicate keys rejected, errors with line and column). Everything else sees
//! `serde_json::Value` and our own error type, so swapping the parser is a one-file change.

use serde_json::Value;

/// A YAML document that did not parse, with the parser's own location text.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub message: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Parse YAML text into a JSON value. An empty document (or only comments) is `Null`.
pub fn parse(text: &str) -> Result<Value, YamlError> {
    if text.trim().is_empty()
        || text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || t == "---"
        })
    {
        return Ok(Value::Null);
    }
    // serde-saphyr promises no panics; the guard keeps a daemon alive if that promise breaks.
    match std::panic::catch_unwind(|| serde_saphyr::from_str::<Value>(text)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(YamlError {
            message: e.to_string(),
        }),
        Err(_) => Err(YamlError {
            message: "the YAML parser failed on this input".to_string(),
        }),
    }
}

/// How a parsed YAML value is named in error messages ("found a list").
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Serialize a JSON value as YAML text (used to write the normalised chain spec).
pub fn to_string(value: &Value) -> Result<String, YamlError> {
    serde_saphyr::to_string(value).map_err(|e| YamlError {
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_comment_only_are_null() {
        assert_eq!(parse("").unwrap(), Value::Null);
        assert_eq!(parse("# nothing\n\n").unwrap(), Value::Null);
    }

    #[test]
    fn duplicate_keys_are_rejected_with_location() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(err.message.to_lowercase().contains("duplicate"), "{err}");
        assert!(err.message.contains('3'), "location expected: {err}");
    }

    #[test]
    fn mapping_parses() {
        let v = parse("repo:\n  url: /srv/x.git\nport: 8080\n").unwrap();
        assert_eq!(v["repo"]["url"], "/srv/x.git");
        assert_eq!(v["port"], 8080);
    }

    #[test]
    fn round_trip() {
        let v = serde_json::json!({"milestones": [{"label": "m1", "idea": "a b"}], "base_branch": "main"});
        let text = to_string(&v).unwrap();
        assert_eq!(parse(&text).unwrap(), v);
    }
}
