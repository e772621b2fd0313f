//! Agent login seeding (`megaplan.codex_auth: chatgpt`, the default; behavior.md §3).
//!
//! On `deploy` and `chain` the client hands over its `~/.codex/auth.json` and
//! `~/.hermes/auth.json` ([`AgentAuth`]) like secret values: in the request body over the
//! daemon's socket, held in memory only. Each file present is written, over the provider's
//! stdin (never an argv), to `/workspace/.creds/<agent>-auth.json` on the runner (mode 0600 in a
//! 0700 folder: the persistent volume the rendered entrypoint seeds `$HOME/.<agent>/auth.json`
//! from on every boot) and to `$HOME/.<agent>/auth.json` itself, so a runner that is already up
//! has the login at once. The paths are the original's (`cloud/auth.py`: `OAUTH_SEEDS`, and the
//! seeding block of `cloud/templates/entrypoint.sh.tmpl`). `apikey` seeds nothing.
//!
//! Every string value of a login file (at least 8 characters: tokens, ids, keys) is registered
//! with the redactor as a literal secret under a reserved name ([`secret_literals`]), so the
//! tokens are redacted in every output, log line and stored report, like secret values. The
//! command's report names the agents seeded and the local files missing; never a content.
//!
//! The decision ([`plan`]) and the remote script ([`seed_script`]) are pure; [`seed`] runs them.

use super::ctx::Ctx;
use crate::provider::Provider;
use crate::redact::LITERAL_ONLY_PREFIX;
use crate::shell::quote;
use megaplan_cloud_api::output::{AgentAuthReport, AgentLoginMissing, AgentSeedFailed};
use megaplan_cloud_api::wire::AgentAuth;
use serde_json::Value;
use std::collections::BTreeMap;

/// The runner folder the login files are kept in: on the workspace volume (the original's).
pub const CREDS_DIR: &str = "/workspace/.creds";

/// One agent's login file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    /// The agent's name, as the client keys its file.
    pub agent: &'static str,
    /// The file's name in [`CREDS_DIR`].
    pub kept_as: &'static str,
    /// Where the agent reads it, relative to the runner user's `$HOME`.
    pub home_path: &'static str,
}

/// The agents whose logins are seeded, in the order they are reported.
pub const SEEDS: [Seed; 2] = [
    Seed {
        agent: "codex",
        kept_as: "codex-auth.json",
        home_path: ".codex/auth.json",
    },
    Seed {
        agent: "hermes",
        kept_as: "hermes-auth.json",
        home_path: ".hermes/auth.json",
    },
];

/// What a command does with the logins it was handed.
#[derive(Debug, PartialEq)]
pub enum Plan<'a> {
    /// Nothing to seed, and why (said once on stderr and in the report).
    Skip(&'static str),
    /// Seed these files; `missing` are the client's "path why" for the absent ones, `refused`
    /// the files handed over that are not seeded, and why.
    Seed {
        files: Vec<(Seed, &'a str)>,
        missing: Vec<(&'static str, &'a str)>,
        refused: Vec<(&'static str, String)>,
    },
}

/// The pure decision: `codex_auth` from cloud.yaml, `auth` what the client handed over.
pub fn plan<'a>(codex_auth: &str, auth: Option<&'a AgentAuth>) -> Plan<'a> {
    if codex_auth != "chatgpt" {
        return Plan::Skip("megaplan.codex_auth is apikey");
    }
    let Some(auth) = auth else {
        return Plan::Skip(
            "the client handed over no login files (megaplan-cloudctl older than this daemon?)",
        );
    };
    let mut files = Vec::new();
    let mut missing = Vec::new();
    let mut refused = Vec::new();
    for seed in SEEDS {
        match auth.files.get(seed.agent) {
            Some(content) if login_strings(content).len() > MAX_LOGIN_STRINGS => refused.push((
                seed.agent,
                format!(
                    "it holds more than {MAX_LOGIN_STRINGS} strings of 8 characters or more, which a login file does not"
                ),
            )),
            Some(content) if !content.is_empty() => files.push((seed, content.as_str())),
            _ => missing.push((
                seed.agent,
                auth.missing
                    .get(seed.agent)
                    .map_or("(not handed over)", String::as_str),
            )),
        }
    }
    Plan::Seed {
        files,
        missing,
        refused,
    }
}

/// The runner script that writes one login file, read from stdin as base64, to
/// `CREDS_DIR/<kept_as>` and `$HOME/<home_path>`, each 0600 (written to a temporary name in the
/// same folder, then renamed, so a reader never sees half a file).
pub fn seed_script(seed: &Seed) -> String {
    let kept = format!("{CREDS_DIR}/{}", seed.kept_as);
    let home_dir = match seed.home_path.rsplit_once('/') {
        Some((dir, _)) => dir,
        None => "",
    };
    // `$$` (the shell's pid) outside the quotes, so it expands.
    let kept_tmp = format!(
        "{}$$",
        quote(&format!("{CREDS_DIR}/.{}.tmp.", seed.kept_as))
    );
    let home_tmp = quote(&format!("{home_dir}/.auth.json.tmp"));
    format!(
        "set -e; umask 077; mkdir -p {creds}; chmod 700 {creds}; \
         tmp={kept_tmp}; trap 'rm -f \"$tmp\"' EXIT; base64 -d > \"$tmp\"; chmod 600 \"$tmp\"; mv -f \"$tmp\" {kept}; \
         home=\"${{HOME:-/root}}\"; mkdir -p \"$home\"/{home_dir}; chmod 700 \"$home\"/{home_dir}; \
         tmp=\"$home\"/{home_tmp}; cp {kept} \"$tmp\"; chmod 600 \"$tmp\"; mv -f \"$tmp\" \"$home\"/{home_file}; \
         trap - EXIT; echo MEGAPLAN_AUTH_SEEDED",
        creds = quote(CREDS_DIR),
        kept = quote(&kept),
        home_dir = quote(home_dir),
        home_file = quote(seed.home_path),
    )
}

/// A login file with more secret strings than this is not seeded (codex's has about six): each
/// one becomes a literal the redactor searches every output for.
pub const MAX_LOGIN_STRINGS: usize = 64;

/// The secret strings of one login file: every JSON string value of at least 8 characters
/// (decoded, and as written in the file when escapes make that differ), or, for a file that is
/// not JSON, every whitespace-separated word of at least 8 characters; plus the whole file when
/// it is one line.
pub fn login_strings(content: &str) -> Vec<String> {
    let mut strings = Vec::new();
    match serde_json::from_str::<Value>(content) {
        Ok(v) => {
            json_strings(&v, &mut strings);
            raw_json_values(content, &mut strings);
        }
        Err(_) => strings.extend(content.split_whitespace().map(str::to_string)),
    }
    if !content.trim().contains('\n') {
        strings.push(content.trim().to_string());
    }
    strings.retain(|s| s.chars().count() >= 8);
    strings.sort();
    strings.dedup();
    strings
}

/// The [`login_strings`] of the login files [`plan`] may seed (known agents, at most
/// [`MAX_LOGIN_STRINGS`] strings), as literal secrets for the redactor under reserved names
/// ([`LITERAL_ONLY_PREFIX`]): a fixed set of names per agent, so memory stays bounded however
/// often logins are handed over.
pub fn secret_literals(auth: &AgentAuth) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for seed in SEEDS {
        let Some(content) = auth.files.get(seed.agent) else {
            continue;
        };
        let strings = login_strings(content);
        if strings.len() > MAX_LOGIN_STRINGS {
            continue;
        }
        for (i, s) in strings.into_iter().enumerate() {
            out.insert(format!("{LITERAL_ONLY_PREFIX}{}-auth:{i}", seed.agent), s);
        }
    }
    out
}

fn json_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| json_strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| json_strings(i, out)),
        _ => {}
    }
}

/// The string values of JSON `text` as they are written in it (escapes such as `\/` kept):
/// every string literal not followed by `:` (which would make it a key).
fn raw_json_values(text: &str, out: &mut Vec<String>) {
    static STRING: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#""((?:[^"\\]|\\.)*)"\s*(:)?"#)
            .expect("the JSON string pattern is a valid constant regex")
    });
    for caps in STRING.captures_iter(text) {
        if caps.get(2).is_none()
            && let Some(inner) = caps.get(1)
        {
            out.push(inner.as_str().to_string());
        }
    }
}

/// Seed the logins the client handed over onto the runner `p` (after a deploy, before a chain
/// starts). Never fails the command: a file that cannot be written is a warning and is listed
/// under `failed`. Returns the report (names and local paths only).
pub async fn seed(ctx: &Ctx, p: &impl Provider) -> AgentAuthReport {
    let (files, missing, refused) =
        match plan(&ctx.spec.megaplan.codex_auth, ctx.agent_auth.as_ref()) {
            Plan::Skip(why) => {
                ctx.out
                    .stderr(format!("agent login: nothing seeded: {why}\n"))
                    .await;
                return AgentAuthReport::Skipped {
                    codex_auth: ctx.spec.megaplan.codex_auth.clone(),
                    seeded: Vec::new(),
                    skipped: why.to_string(),
                };
            }
            Plan::Seed {
                files,
                missing,
                refused,
            } => (files, missing, refused),
        };
    let mut seeded = Vec::new();
    let mut failed = Vec::new();
    for (agent, why) in refused {
        ctx.out
            .stderr(format!("warning: agent login: {agent} not seeded: {why}\n"))
            .await;
        failed.push(AgentSeedFailed {
            agent: agent.to_string(),
            error: why,
        });
    }
    if !p.stdin_is_private() && !files.is_empty() {
        let why = format!(
            "the {} provider can carry a file to the runner only inside a command line, which any local user can read in the process list; log in on the runner instead (`megaplan-cloudctl attach`, then `codex login`)",
            p.name()
        );
        ctx.out
            .stderr(format!("warning: agent login: nothing seeded: {why}\n"))
            .await;
        for (seed, _) in &files {
            failed.push(AgentSeedFailed {
                agent: seed.agent.to_string(),
                error: why.clone(),
            });
        }
    } else {
        for (seed, content) in &files {
            let stdin = crate::provider::base64_lines(content.as_bytes()).into_bytes();
            let error = match p.exec(&seed_script(seed), Some(stdin)).await {
                Ok(r) if r.code == 0 && r.stdout.contains("MEGAPLAN_AUTH_SEEDED") => None,
                Ok(r) => Some(ctx.redactor.redact(&format!(
                    "exit {}: {}",
                    r.code,
                    r.stderr.trim().lines().last().unwrap_or("")
                ))),
                Err(e) => Some(ctx.redactor.redact(&e.to_string())),
            };
            match error {
                None => {
                    ctx.out
                        .stderr(format!(
                            "agent login: seeded {} to {CREDS_DIR}/{} and ~/{} on the runner\n",
                            seed.agent, seed.kept_as, seed.home_path
                        ))
                        .await;
                    seeded.push(seed.agent.to_string());
                }
                Some(e) => {
                    ctx.out
                        .stderr(format!(
                            "warning: agent login: {} not seeded: {e}\n",
                            seed.agent
                        ))
                        .await;
                    failed.push(AgentSeedFailed {
                        agent: seed.agent.to_string(),
                        error: e,
                    });
                }
            }
        }
    }
    let mut missing_paths = Vec::new();
    for (agent, said) in &missing {
        ctx.out
            .stderr(format!(
                "warning: agent login: {said}; {agent} on the runner has no login from this machine (log in locally, or set megaplan.codex_auth: apikey)\n"
            ))
            .await;
        missing_paths.push(AgentLoginMissing {
            agent: agent.to_string(),
            local: said.to_string(),
        });
    }
    AgentAuthReport::Seeded {
        codex_auth: ctx.spec.megaplan.codex_auth.clone(),
        failed,
        missing: missing_paths,
        runner_dir: CREDS_DIR.to_string(),
        seeded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::{REPLACEMENT, Redactor};
    use serde_json::json;

    const CODEX: &str = "{\n  \"auth_mode\": \"chatgpt\",\n  \"OPENAI_API_KEY\": null,\n  \"tokens\": {\n    \"id_token\": \"eyJhbGciOi.id-token-part.sig\",\n    \"access_token\": \"eyJ-access-token-0123456789\",\n    \"refresh_token\": \"rt_refresh_0123456789\",\n    \"account_id\": \"acct-0a1b2c3d\"\n  },\n  \"last_refresh\": \"2026-11-30T10:00:00Z\"\n}\n";

    fn handed(files: &[(&str, &str)], missing: &[(&str, &str)]) -> AgentAuth {
        AgentAuth {
            files: files
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            missing: missing
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn plan_seeds_what_is_there_and_names_what_is_missing() {
        let auth = handed(
            &[("codex", CODEX)],
            &[("hermes", "/home/op/.hermes/auth.json not found")],
        );
        assert_eq!(
            plan("chatgpt", Some(&auth)),
            Plan::Seed {
                files: vec![(SEEDS[0], CODEX)],
                missing: vec![("hermes", "/home/op/.hermes/auth.json not found")],
                refused: vec![],
            }
        );
        assert_eq!(
            plan("apikey", Some(&auth)),
            Plan::Skip("megaplan.codex_auth is apikey")
        );
        assert!(matches!(plan("chatgpt", None), Plan::Skip(_)));
        // A name the client did not mention is still reported missing.
        let nothing = AgentAuth::default();
        let Plan::Seed { files, missing, .. } = plan("chatgpt", Some(&nothing)) else {
            panic!("chatgpt seeds");
        };
        assert!(files.is_empty());
        assert_eq!(
            missing,
            [
                ("codex", "(not handed over)"),
                ("hermes", "(not handed over)")
            ]
        );
    }

    #[test]
    fn a_file_with_too_many_strings_is_refused_and_not_registered() {
        let many: Vec<String> = (0..=MAX_LOGIN_STRINGS)
            .map(|i| format!("\"k{i}\": \"value-{i:04}\""))
            .collect();
        let big = format!("{{{}}}", many.join(", "));
        let auth = handed(&[("codex", CODEX), ("hermes", &big), ("other", CODEX)], &[]);
        let Plan::Seed { files, refused, .. } = plan("chatgpt", Some(&auth)) else {
            panic!("chatgpt seeds");
        };
        assert_eq!(files, [(SEEDS[0], CODEX)]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "hermes");
        assert!(
            refused[0].1.contains("more than 64 strings"),
            "{}",
            refused[0].1
        );
        // Only the seeded file's strings are registered, under codex's names only.
        let literals = secret_literals(&auth);
        assert!(!literals.is_empty());
        assert!(
            literals
                .keys()
                .all(|k| k.starts_with(&format!("{LITERAL_ONLY_PREFIX}codex-auth:")))
        );
    }

    #[test]
    fn seed_script_writes_both_copies_0600_from_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let creds = dir.path().join("creds");
        // The script's fixed folder, moved under the test dir (same quoting, same steps).
        let script = seed_script(&SEEDS[0]).replace(CREDS_DIR, &creds.display().to_string());
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("HOME", &home)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(crate::provider::base64_lines(CODEX.as_bytes()).as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success(), "{script}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("MEGAPLAN_AUTH_SEEDED"));
        use std::os::unix::fs::PermissionsExt;
        for (path, folder) in [
            (creds.join("codex-auth.json"), creds.clone()),
            (home.join(".codex/auth.json"), home.join(".codex")),
        ] {
            assert_eq!(std::fs::read_to_string(&path).unwrap(), CODEX);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
            let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", folder.display());
        }
        // No temporary file is left beside either copy.
        assert_eq!(std::fs::read_dir(&creds).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(home.join(".codex")).unwrap().count(), 1);
        // The content never is in the script (it travels on stdin).
        assert!(!script.contains("rt_refresh"));
    }

    #[test]
    fn every_token_of_a_multi_line_login_is_redacted() {
        let auth = handed(
            &[
                ("codex", CODEX),
                (
                    "hermes",
                    "{\"providers\":{\"openai-codex\":{\"api_key\":\"sk-hermes\\/key-42\"}}}",
                ),
            ],
            &[],
        );
        let literals = secret_literals(&auth);
        assert!(literals.keys().all(|k| k.starts_with(LITERAL_ONLY_PREFIX)));
        // Registered with no cloud.yaml secret names at all.
        let r = Redactor::new(&[], &literals);
        for token in [
            "eyJhbGciOi.id-token-part.sig",
            "eyJ-access-token-0123456789",
            "rt_refresh_0123456789",
            "acct-0a1b2c3d",
        ] {
            // The file printed whole (a `cat` on the runner), streamed line by line ...
            let mut lr = r.line_redactor();
            let mut streamed = lr.push(CODEX.as_bytes());
            streamed.push_str(&lr.finish());
            assert!(!streamed.contains(token), "{streamed}");
            // ... a token quoted in a sentence, and inside a JSON report.
            let said = r.redact(&format!("refresh failed for {token}: 401"));
            assert_eq!(said, format!("refresh failed for {REPLACEMENT}: 401"));
            let report = r.redact_json(&json!({"detail": [format!("x={token}")]}));
            assert_eq!(report["detail"][0], format!("x={REPLACEMENT}"));
        }
        // The JSON structure around the tokens stays readable.
        let printed = r.redact(CODEX);
        assert!(printed.contains("\"auth_mode\": \"chatgpt\""), "{printed}");
        assert!(printed.contains(&format!("\"refresh_token\": \"{REPLACEMENT}\"")));
        // A value escaped in the file (`\/`) is redacted as written and as decoded.
        let hermes = r.redact("{\"api_key\":\"sk-hermes\\/key-42\"} and sk-hermes/key-42");
        assert!(!hermes.contains("hermes"), "{hermes}");
        // Short values (under 8 characters) are left alone.
        assert!(r.redact("mode chatgpt").contains("chatgpt"));
    }

    #[test]
    fn a_login_that_is_not_json_is_redacted_word_by_word() {
        let auth = handed(&[("codex", "token-abcdefgh\nsecond-line-secret\n")], &[]);
        let r = Redactor::new(&[], &secret_literals(&auth));
        let out = r.redact("a token-abcdefgh b second-line-secret c");
        assert_eq!(out, format!("a {REPLACEMENT} b {REPLACEMENT} c"));
    }
}
