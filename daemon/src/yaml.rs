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

/// Most parser events (scalars, collection starts and ends) one document may produce, alias
/// replays included. Every document we read (cloud.yaml, a chain spec, a spec echoed back by the
/// runner) is hand-written and small: a few hundred events. The budget makes the parser's work
/// bounded by a count, so an alias bomb is refused after a fixed amount of work whatever the
/// machine's load.
pub const MAX_EVENTS: usize = 100_000;
/// Most events that alias replays (`*ref`) may inject into one document.
pub const MAX_REPLAYED_EVENTS: usize = 10_000;

fn options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = MAX_EVENTS;
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_REPLAYED_EVENTS;
    // No source snippet in error text: the snippet would quote the operator's file (possibly a
    // credential beside the syntax error) into an error that is stored and logged.
    options.with_snippet = false;
    options
}

/// Parse YAML text into a JSON value. An empty document (or only comments) is `Null`.
/// Work is bounded by [`MAX_EVENTS`] and [`MAX_REPLAYED_EVENTS`]: past either the document is
/// refused with an error saying which budget it exceeded.
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
    match std::panic::catch_unwind(|| serde_saphyr::from_str_with_options::<Value>(text, options()))
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(YamlError {
            message: e.to_string(),
        }),
        Err(_) => Err(YamlError {
            message: "the YAML parser failed on this input".to_string(),
        }),
    }
}

/// How a parsed YAML value is named in error messages ("found a list"): the same words as
/// the `api` crate uses for a JSON value.
pub use megaplan_cloud_api::type_name;

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
    fn alias_expansion_past_the_budget_is_refused() {
        // 12^5 = 248,832 nodes once expanded: far past the replay budget.
        let mut bomb = String::from(
            "l0: &l0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n",
        );
        for level in 1..5 {
            let refs = vec![format!("*l{}", level - 1); 12].join(", ");
            bomb.push_str(&format!("l{level}: &l{level} [{refs}]\n"));
        }
        assert!(parse(&bomb).is_err());
        // A few aliases, as a hand-written file uses them, still parse.
        let v = parse("a: &x {k: 1}\nb: *x\nc: *x\n").unwrap();
        assert_eq!(v["c"]["k"], 1);
    }

    #[test]
    fn errors_carry_no_source_snippet() {
        let err = parse("token: hunter2-secret\nbad: [unclosed\n").unwrap_err();
        assert!(!err.message.contains("hunter2"), "{err}");
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
