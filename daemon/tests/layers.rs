//! The daemon's layers (docs/design.md, "Layers of the daemon"): every `crate::…` path in
//! every source file (test modules excluded) must name a module of a lower layer, or of the
//! same top-level module. A path to a higher layer, or between two modules of one layer (the
//! way a cycle starts), fails with the file and the path.

use regex::Regex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layer of a module, by its path below `daemon/src` (top-level name, then file).
fn layer(top: &str, sub: Option<&str>) -> Option<u32> {
    Some(match (top, sub) {
        ("yaml" | "shell" | "redact" | "ratelog", _) => 0,
        ("cloud_yaml" | "settings" | "scheduler" | "store", _) => 1,
        ("process" | "render", _) => 2,
        ("runner", _) => 3,
        ("chain", _) => 4,
        ("provider", _) => 5,
        // notify's files are below the state, which holds its `Notifier`; its `mod.rs` runs
        // the watcher and the delivery worker over the state.
        ("notify", Some(_)) => 6,
        ("state", _) => 7,
        ("notify", None) => 8,
        ("supervisor", _) => 9,
        ("workflow", _) => 10,
        ("http", _) => 11,
        ("daemon", _) => 12,
        _ => return None,
    })
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("daemon/src is readable") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `(top, file)` of a source path: `notify/mod.rs` is `("notify", None)`, `notify/store.rs`
/// is `("notify", Some("store"))`, `lib.rs` is `None` (the root may name everything).
fn module_of(rel: &Path) -> Option<(String, Option<String>)> {
    let parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [one] if one == "lib" || one == "main" => None,
        [one] => Some((one.clone(), None)),
        [top, file, ..] if file == "mod" => Some((top.clone(), None)),
        [top, file, ..] => Some((top.clone(), Some(file.clone()))),
        [] => None,
    }
}

/// The items of a `use` group's body, split at its top-level commas (`a, b::{c, d}` gives
/// `a` and `b::{c, d}`).
fn group_items(body: &str) -> Vec<String> {
    let (mut depth, mut item) = (0, String::new());
    let mut items = Vec::new();
    for ch in body.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(ch);
    }
    items.push(item);
    items
}

/// `src` up to its first test module, comments removed: the code whose imports count.
fn code_outside_tests(src: &str) -> String {
    let cut = Regex::new(r"(?m)^#\[cfg\(test\)\]\s*\n(pub(\(crate\))? )?mod ").unwrap();
    let src = match cut.find(src) {
        Some(m) => &src[..m.start()],
        None => src,
    };
    let comment = Regex::new(r"//[^\n]*").unwrap();
    comment.replace_all(src, "").into_owned()
}

/// The `(top, second)` names of every `crate::` path in `src` outside test modules.
fn crate_paths(src: &str) -> Vec<(String, Option<String>)> {
    let src = code_outside_tests(src);
    let mut out = Vec::new();
    let group = Regex::new(r"use crate::\{([^;]*)\};").unwrap();
    for c in group.captures_iter(&src) {
        for it in group_items(&c[1]) {
            let words: Vec<&str> = it
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect();
            if let Some(top) = words.first() {
                out.push((top.to_string(), words.get(1).map(|s| s.to_string())));
            }
        }
    }
    let inline = Regex::new(r"\bcrate::([a-z_][a-z0-9_]*)(?:::([a-z_][a-z0-9_]*))?").unwrap();
    for c in inline.captures_iter(&src) {
        out.push((c[1].to_string(), c.get(2).map(|m| m.as_str().to_string())));
    }
    out
}

/// The first names after `super::` in `src` outside test modules (`use super::{a, b::C}`
/// gives `a` and `b`).
fn super_paths(src: &str) -> Vec<String> {
    let src = code_outside_tests(src);
    let mut out = Vec::new();
    let group = Regex::new(r"\bsuper::\{([^;]*)\}").unwrap();
    for c in group.captures_iter(&src) {
        for it in group_items(&c[1]) {
            if let Some(w) = it
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .find(|w| !w.is_empty())
            {
                out.push(w.to_string());
            }
        }
    }
    let inline = Regex::new(r"\bsuper::([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    for c in inline.captures_iter(&src) {
        out.push(c[1].to_string());
    }
    out
}

/// Every import that breaks the layering, as `file: crate::path (why)`.
fn violations(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(root, &mut files);
    files.sort();
    // Which files exist, to tell `notify::store` (a file) from `notify::after_tick` (mod.rs).
    let mut subs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &files {
        if let Some((top, Some(sub))) = module_of(f.strip_prefix(root).unwrap()) {
            subs.entry(top).or_default().push(sub);
        }
    }
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap();
        let Some((top, sub)) = module_of(rel) else {
            continue;
        };
        let Some(mine) = layer(&top, sub.as_deref()) else {
            bad.push(format!(
                "{}: not in the layer table of this test",
                rel.display()
            ));
            continue;
        };
        let src = std::fs::read_to_string(f).unwrap();
        if sub.is_some() {
            let siblings = subs.get(&top).cloned().unwrap_or_default();
            for name in super_paths(&src) {
                if !siblings.contains(&name) {
                    bad.push(format!(
                        "{}: super::{name} is in its folder's mod.rs (move what the files share into a file of its own)",
                        rel.display()
                    ));
                }
            }
        }
        for (t, s) in crate_paths(&src) {
            let file = s.filter(|s| subs.get(&t).is_some_and(|v| v.contains(s)));
            let Some(theirs) = layer(&t, file.as_deref()) else {
                continue;
            };
            let what = match &file {
                Some(s) => format!("crate::{t}::{s}"),
                None => format!("crate::{t}"),
            };
            if t == top {
                // A file of a folder may use its sibling files, never its folder's `mod.rs`
                // (which declares and dispatches to the files: a cycle).
                if sub.is_some() && file.is_none() {
                    bad.push(format!(
                        "{}: {what} is its folder's mod.rs (move what the files share into a file of its own)",
                        rel.display()
                    ));
                }
                continue;
            }
            if theirs > mine {
                bad.push(format!(
                    "{}: {what} is a higher layer ({theirs} > {mine})",
                    rel.display()
                ));
            } else if theirs == mine {
                bad.push(format!(
                    "{}: {what} is another module of the same layer {mine}",
                    rel.display()
                ));
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&root);
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn an_import_from_above_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    std::fs::create_dir_all(src.join("supervisor")).unwrap();
    std::fs::create_dir_all(src.join("notify")).unwrap();
    std::fs::write(src.join("store.rs"), "use crate::http::error::ApiError;\n").unwrap();
    std::fs::write(src.join("http.rs"), "use crate::{store, state};\n").unwrap();
    std::fs::write(
        src.join("state.rs"),
        "use crate::notify::notifier::Notifier;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("notify").join("mod.rs"),
        "use crate::state::AppState;\n",
    )
    .unwrap();
    std::fs::write(src.join("notify").join("notifier.rs"), "").unwrap();
    // Same layer, two modules: how a cycle starts.
    std::fs::write(src.join("process.rs"), "fn f() { crate::render::x(); }\n").unwrap();
    std::fs::write(src.join("render.rs"), "").unwrap();
    std::fs::write(src.join("chain.rs"), "use crate::runner::layout;\n").unwrap();
    // A folder's file importing its mod.rs (by super:: or crate::), and one using a sibling.
    std::fs::create_dir_all(src.join("workflow")).unwrap();
    std::fs::write(src.join("workflow").join("mod.rs"), "pub mod ctx;\n").unwrap();
    std::fs::write(src.join("workflow").join("ctx.rs"), "").unwrap();
    std::fs::write(
        src.join("workflow").join("ops.rs"),
        "use super::{ctx::Ctx, Done};\nuse crate::workflow::run;\nuse super::ctx;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("supervisor").join("tick.rs"),
        "#[cfg(test)]\nmod tests {\n    use crate::workflow::Ctx;\n}\n",
    )
    .unwrap();
    let bad = violations(src);
    assert_eq!(
        bad,
        vec![
            "process.rs: crate::render is another module of the same layer 2".to_string(),
            "store.rs: crate::http is a higher layer (11 > 1)".to_string(),
            "workflow/ops.rs: crate::workflow is its folder's mod.rs (move what the files share into a file of its own)".to_string(),
            "workflow/ops.rs: super::Done is in its folder's mod.rs (move what the files share into a file of its own)".to_string(),
        ]
    );
}
