//! Where and how the client prints: one decision, made once at start-up.
//!
//! - stdout not a terminal (a script, a pipe) or `--json`: JSON exactly as the daemon sent it,
//!   errors as a JSON document on stdout plus one `error:` line on stderr (what scripts written
//!   against the Python tool parse).
//! - stdout a terminal: a human rendering (tables, short summaries), errors once, on stderr.
//!
//! Colour follows `--color` (`auto` honours `NO_COLOR` and needs a terminal on stderr/stdout).

use clap::ValueEnum;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

/// Exit code when the daemon cannot be reached: EX_UNAVAILABLE from sysexits.h, so scripts can
/// tell "no daemon" from a usage error (clap's 2) and from a failed command (1).
pub const EXIT_DAEMON_UNREACHABLE: i32 = 69;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// JSON on stdout (scripts); otherwise the human rendering.
    pub json: bool,
    /// ANSI colour in human output.
    pub color: bool,
    /// `--quiet`: no confirmations or chatter on a terminal either (results and errors stay).
    pub quiet: bool,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Decide once from the flags and the terminals. Pure: the facts are passed in.
pub fn decide(json_flag: bool, color: ColorChoice, stdout_tty: bool, no_color_env: bool) -> Output {
    let json = json_flag || !stdout_tty;
    let color = match color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => !json && stdout_tty && !no_color_env,
    };
    Output {
        json,
        color,
        quiet: false,
    }
}

pub fn init(json_flag: bool, color: ColorChoice, quiet: bool) {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let mut out = decide(json_flag, color, std::io::stdout().is_terminal(), no_color);
    out.quiet = quiet;
    let _ = OUTPUT.set(out);
}

/// A confirmation for a person ("paused …", "registered …"): on stdout on a terminal, never
/// through a pipe (the JSON document is the whole answer there) nor with `--quiet`.
pub fn say(text: &str) {
    let o = get();
    if o.json || o.quiet {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

pub fn get() -> Output {
    *OUTPUT.get_or_init(|| decide(false, ColorChoice::Auto, false, true))
}

pub fn json_mode() -> bool {
    get().json
}

/// Wraps `text` in an ANSI SGR sequence when colour is on.
pub fn paint(text: &str, sgr: &str) -> String {
    if get().color {
        format!("\x1b[{sgr}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

pub fn print_json_doc(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
    let _ = out.flush();
}

/// A command's result: JSON for scripts, a short indented summary for a person.
pub fn print_result(v: &Value) {
    if json_mode() {
        print_json_doc(v);
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(human_summary(v).as_bytes());
        let _ = out.flush();
    }
}

/// A JSON document as `key: value` lines, nested objects indented, short arrays inline; the
/// `success` flag is left out (the exit code says it).
pub fn human_summary(v: &Value) -> String {
    let mut out = String::new();
    summarise(v, 0, &mut out);
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("-".into()),
        Value::Bool(b) => Some(if *b { "yes" } else { "no" }.into()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.is_empty() => Some("(none)".into()),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => Some(
            items
                .iter()
                .filter_map(scalar)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Value::Object(m) if m.is_empty() => Some("(none)".into()),
        _ => None,
    }
}

fn summarise(v: &Value, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(m) => {
            let shown = |k: &&String| !(depth == 0 && k.as_str() == "success");
            let width = m
                .keys()
                .filter(shown)
                .map(String::len)
                .max()
                .unwrap_or(0)
                .min(24);
            for (k, val) in m {
                if depth == 0 && k == "success" {
                    continue;
                }
                let label = k.replace('_', " ");
                match scalar(val) {
                    Some(s) => out.push_str(&format!("{pad}{label:<width$}  {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}{label}:\n"));
                        summarise(val, depth + 1, out);
                    }
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match scalar(item) {
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}[{}]\n", i + 1));
                        summarise(item, depth + 1, out);
                    }
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other).unwrap_or_default())),
    }
}

/// Remote text for a terminal: control characters other than `\n` and `\t` removed (a bare
/// `\r` from ssh would otherwise move the cursor back over the real cause), ANSI escape
/// sequences dropped whole.
pub fn strip_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\x1b' => {
                // CSI: ESC [ params final-byte(0x40..=0x7e); other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for n in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&n) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_for_pipes_and_flag_human_for_terminals() {
        assert!(decide(false, ColorChoice::Auto, false, false).json);
        assert!(decide(true, ColorChoice::Auto, true, false).json);
        let human = decide(false, ColorChoice::Auto, true, false);
        assert!(!human.json && human.color);
    }

    #[test]
    fn colour_honours_no_color_and_the_flag() {
        assert!(!decide(false, ColorChoice::Auto, true, true).color);
        assert!(decide(false, ColorChoice::Always, true, true).color);
        assert!(!decide(false, ColorChoice::Never, true, false).color);
        assert!(!decide(false, ColorChoice::Auto, false, false).color);
    }

    #[test]
    fn summary_is_key_value_lines_without_success() {
        let text = human_summary(&json!({
            "success": true,
            "runner": "agent",
            "logs": {"chain_log": {"size": 12}},
            "names": ["A", "B"],
            "steps": [{"step": "build", "ok": true}]
        }));
        assert!(!text.contains("success"), "{text}");
        assert!(text.contains("runner"), "{text}");
        assert!(text.contains("  chain log:\n    size  12\n"), "{text}");
        assert!(text.contains("names   A, B"), "{text}");
        assert!(text.contains("[1]\n"), "{text}");
    }

    #[test]
    fn controls_are_stripped_but_newlines_and_tabs_kept() {
        assert_eq!(
            strip_controls("ssh: connect: Connection refused\r\n\ta\x07b\x1b[31mred\x1b[0m"),
            "ssh: connect: Connection refused\n\tabred"
        );
    }
}
