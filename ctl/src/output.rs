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
    /// JSON on a terminal (`--json`) is coloured like jq's (`--color`, `NO_COLOR` honoured).
    pub json_color: bool,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

/// `--jq EXPR`, when given: applied to every JSON document printed on stdout.
static JQ: OnceLock<String> = OnceLock::new();

/// Set when a `--jq` filter failed on a document: the command then exits 1.
static JQ_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--jq EXPR`: JSON output with the filter applied (checked by the caller first).
pub fn set_jq(expr: String) {
    let _ = JQ.set(expr);
}

pub fn jq_failed() -> bool {
    JQ_FAILED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Decide once from the flags and the terminals. Pure: the facts are passed in.
pub fn decide(json_flag: bool, color: ColorChoice, stdout_tty: bool, no_color_env: bool) -> Output {
    let json = json_flag || !stdout_tty;
    let json_color = match color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => json && stdout_tty && !no_color_env,
    };
    let color = match color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => !json && stdout_tty && !no_color_env,
    };
    Output {
        json,
        color,
        quiet: false,
        json_color,
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
    if let Some(expr) = JQ.get() {
        match crate::jq::run(expr, v) {
            Ok(lines) => {
                let mut out = std::io::stdout().lock();
                for l in lines {
                    let _ = writeln!(out, "{l}");
                }
                let _ = out.flush();
            }
            Err(e) => {
                JQ_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
                eprintln!("{} {}", paint("error:", "1;31"), strip_controls(&e));
            }
        }
        return;
    }
    print_json_unfiltered(v);
}

/// One document of a stream (`watch`, `ls --watch`): one compact line, or what `--jq` makes
/// of it.
pub fn print_json_line(v: &Value) {
    if JQ.get().is_some() {
        print_json_doc(v);
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(v).unwrap_or_default());
    let _ = out.flush();
}

/// The document as it is, `--jq` or not (an error's document: the filter is for answers).
pub fn print_json_unfiltered(v: &Value) {
    if JQ.get().is_some() {
        // With --jq stdout carries only what the filter makes; the error is on stderr.
        return;
    }
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let text = if get().json_color {
        colour_json(&text)
    } else {
        text
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Pretty JSON painted as jq paints it: keys blue, strings green, numbers and literals plain
/// bold. Pure; the text is serde_json's own, so strings are well-formed.
pub fn colour_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            let end = (i + 1).min(chars.len());
            let word: String = chars[start..end].iter().collect();
            let is_key = chars[end..].iter().find(|c| !c.is_whitespace()) == Some(&':');
            let sgr = if is_key { "34;1" } else { "32" };
            out.push_str(&format!("\x1b[{sgr}m{word}\x1b[0m"));
            i = end;
        } else if c == '-' || c.is_ascii_alphanumeric() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "+-.".contains(chars[i]))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let sgr = if word == "null" { "1;30" } else { "39" };
            out.push_str(&format!("\x1b[{sgr}m{word}\x1b[0m"));
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
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
    fn json_on_a_terminal_is_coloured_and_reads_back_without_the_colour() {
        let doc = json!({"key": "a\"b", "n": -1.5, "ok": true, "none": null, "list": [1, "x"]});
        let pretty = serde_json::to_string_pretty(&doc).unwrap();
        let painted = colour_json(&pretty);
        assert!(painted.contains("\x1b[34;1m\"key\"\x1b[0m"), "{painted}");
        assert!(painted.contains("\x1b[32m\"a\\\"b\"\x1b[0m"), "{painted}");
        assert_eq!(strip_controls(&painted), pretty);
        assert!(decide(true, ColorChoice::Auto, true, false).json_color);
        assert!(!decide(true, ColorChoice::Auto, false, false).json_color);
        assert!(!decide(true, ColorChoice::Auto, true, true).json_color);
    }

    #[test]
    fn controls_are_stripped_but_newlines_and_tabs_kept() {
        assert_eq!(
            strip_controls("ssh: connect: Connection refused\r\n\ta\x07b\x1b[31mred\x1b[0m"),
            "ssh: connect: Connection refused\n\tabred"
        );
    }
}
