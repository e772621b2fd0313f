//! POSIX shell quoting. Every remote command string is built from these two functions, so a
//! hostile name or path (quotes, `$()`, backticks, newlines, spaces) reaches the remote side as
//! one literal word and is never interpreted.

/// Quote one word for a POSIX shell. Words made only of safe characters stay as they are
/// (readable logs); anything else is wrapped in single quotes, with each `'` written as `'\''`.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b))
    {
        return word.to_string();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for ch in word.chars() {
        if ch == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(ch);
        }
    }
    out.push('\'');
    out
}

/// Quote every word and join with spaces: the shell sees exactly these words.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Tests: run `sh -c SCRIPT` (it must succeed) and return the NUL-terminated words it printed,
/// so a test sees each word exactly as a shell delivered it.
#[cfg(test)]
pub(crate) fn nul_words_printed_by_sh(script: &str) -> Vec<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success(), "sh failed: {out:?}");
    let mut v: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .map(str::to_string)
        .collect();
    v.pop();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Run `sh -c '<script>'` where the script prints each of its words NUL-separated.
    fn words_seen_by_sh(script_args: &str) -> Vec<String> {
        nul_words_printed_by_sh(&format!(
            "for a in {script_args}; do printf '%s\\0' \"$a\"; done"
        ))
    }

    #[test]
    fn safe_words_are_unchanged() {
        assert_eq!(quote("/workspace/app"), "/workspace/app");
        assert_eq!(quote("megaplan-chain"), "megaplan-chain");
    }

    #[test]
    fn hostile_words_are_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn sh_sees_hostile_words_literally() {
        let words = [
            "plain",
            "with space",
            "quote'single",
            "quote\"double",
            "$HOME",
            "$(echo pwned)",
            "`echo pwned`",
            "new\nline",
            "tab\tbed",
            "back\\slash",
            "*",
            "~",
            "",
            "ünïcødé ✓",
            ";&|<>",
        ];
        assert_eq!(words_seen_by_sh(&join(&words)), words);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_string_round_trips_through_sh(words in proptest::collection::vec("[^\\x00]{0,24}", 1..5)) {
            prop_assert_eq!(words_seen_by_sh(&join(&words)), words);
        }
    }
}
