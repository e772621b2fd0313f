//! `--jq EXPR`: a jq filter applied to the JSON document a command prints (gh's convention), run
//! in-process by jaq. Strings come out raw (one per line, as `gh --jq` and `jq -r` print them);
//! other values as compact JSON.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

/// Check that `expr` parses and compiles (before anything is asked of the daemon), so a typo is
/// a usage error at once.
pub fn check(expr: &str) -> Result<(), String> {
    compile(expr).map(|_| ())
}

fn compile(
    expr: &str,
) -> Result<jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>, String> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let program = File {
        code: expr,
        path: (),
    };
    let modules = loader
        .load(&arena, program)
        .map_err(|errs| format!("--jq {expr:?} does not parse: {}", describe(&errs)))?;
    Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errs| format!("--jq {expr:?} does not compile: {}", describe(&errs)))
}

fn describe<T: std::fmt::Debug>(errs: &T) -> String {
    let text = format!("{errs:?}");
    text.chars().take(300).collect()
}

/// The lines `expr` makes of `doc`.
pub fn run(expr: &str, doc: &serde_json::Value) -> Result<Vec<String>, String> {
    let filter = compile(expr)?;
    let text = serde_json::to_string(doc).map_err(|e| format!("--jq: {e}"))?;
    let input = jaq_json::read::parse_single(text.as_bytes())
        .map_err(|e| format!("--jq: the document does not read as JSON: {e:?}"))?;
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    let mut lines = Vec::new();
    for out in filter.id.run((ctx, input)).map(unwrap_valr) {
        match out {
            Ok(Val::TStr(s)) => lines.push(String::from_utf8_lossy(&s).into_owned()),
            Ok(v) => lines.push(v.to_string()),
            Err(e) => return Err(format!("--jq {expr:?} failed: {e}")),
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_come_out_raw_and_values_as_json() {
        let doc = json!({"registrations": [{"key": "0123", "state": "running", "n": 2},
                                           {"key": "4567", "state": "stalled", "n": 3}]});
        assert_eq!(
            run(
                ".registrations[] | select(.state == \"stalled\") | .key",
                &doc
            )
            .unwrap(),
            ["4567"]
        );
        assert_eq!(run("[.registrations[].n]", &doc).unwrap(), ["[2,3]"]);
        assert_eq!(run(".registrations | length", &doc).unwrap(), ["2"]);
    }

    #[test]
    fn a_bad_filter_is_refused_before_it_runs() {
        let e = check(".[").unwrap_err();
        assert!(e.contains("--jq") && e.contains("does not parse"), "{e}");
        assert!(run(".a.b", &json!([1])).unwrap_err().contains("failed"));
    }
}
