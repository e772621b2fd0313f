//! Corpus-driven fuzzing (proptest-style, no cargo-fuzz) of everything that reads untrusted
//! text: the cloud.yaml loader, the chain spec parser, the chain state and runtime policy
//! parsers, the observation parser, and the redactor.
//!
//! Every file under `tests/corpus/<target>/` is run unmodified, then as mutated variants: bit
//! flips, byte sets, random and dictionary insertions, deletions, duplications, splices with
//! the target's other seeds, truncations, token repetition, and structure-aware edits of the
//! parsed document (a field replaced by a value of another type, a key added or removed).
//! Checked on every input: no panic; an error is an `ErrorBody` with a non-empty message, the
//! documented code and (for files) the file's name; an accepted document obeys the loader's own
//! rules; the redactor never leaks a secret of 8+ characters and, for single-line secrets,
//! streams exactly like `redact()` of the whole text for any chunking (a multi-line secret is
//! redacted line by line in a stream and a line over `MAX_LINE_BYTES` is streamed in pieces, so
//! there only "nothing leaks" is asserted).
//!
//! Scaling: `MEGAPLAN_FUZZ_CASES=<n>` sets the mutated cases per corpus file (default
//! `DEFAULT_CASES`: about 10 s of a 60 s budget in debug on two slow cores). Seeds above 4 KiB,
//! and seeds whose unmodified run is slow (the alias bombs), get proportionally fewer. For a
//! long local run: `MEGAPLAN_FUZZ_CASES=5000 cargo test -p megaplan-cloudd --test fuzz_parsers`
//! (add `--release` for about ten times the speed).
//! `MEGAPLAN_FUZZ_SEED=<u64>` selects another deterministic sequence; the default is fixed so
//! a CI failure reproduces. A failing case writes its input to the temp dir and prints the
//! path, the corpus file, the case number and the seed.
//!
//! Corpus file name prefixes state the expected outcome of the unmodified seed: `ok_` must be
//! accepted, `err_` must be refused, anything else may go either way.

use megaplan_cloud_api::{ErrorBody, ErrorCode};
use megaplan_cloudd::chain::observe::{OBSERVATION_PREFIX, parse_observation};
use megaplan_cloudd::chain::spec::{
    GATE_POLICIES, MERGE_POLICIES, REVIEW_POLICIES, normalised_yaml, parse_chain_spec, upload_text,
};
use megaplan_cloudd::chain::state::{parse_chain_state, parse_runtime_policy};
use megaplan_cloudd::cloud_yaml::{self, Mode, ProviderKind};
use megaplan_cloudd::redact::{MAX_LINE_BYTES, REPLACEMENT, Redactor};
use megaplan_cloudd::yaml;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Mutated cases per corpus file unless `MEGAPLAN_FUZZ_CASES` says otherwise.
const DEFAULT_CASES: usize = 300;
const DEFAULT_SEED: u64 = 0x6d65_6761_706c_616e;
/// Files above this size get `cases * LARGE_FILE_BYTES / len` cases, so the long-line seeds do
/// not dominate the run time.
const LARGE_FILE_BYTES: usize = 4096;
/// Mutated cases for a seed that is an expansion attack (`*billion_laughs*`, `*bomb*`): each of
/// its cases makes the parser spend its whole event budget before refusing, so fewer of them
/// cover the same ground. The count is fixed, never derived from how long a case took: a busy
/// machine must not change what the test does.
const EXPANSION_SEED_CASES: usize = 25;

const CLOUD_FILE: &str = "/home/op/proj/cloud.yaml";
const SPEC_FILE: &str = "/home/op/briefs/chain.yaml";
const STATE_FILE: &str = "/workspace/app/.megaplan/plans/.chains/chain-880bd6e04632.json";
const POLICY_FILE: &str =
    "/workspace/app/.megaplan/plans/.chains/chain-880bd6e04632.runtime_policy.json";

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

fn cases_per_file() -> usize {
    env_number("MEGAPLAN_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as usize)
}

fn global_seed() -> u64 {
    env_number("MEGAPLAN_FUZZ_SEED").unwrap_or(DEFAULT_SEED)
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness and mutation
// ---------------------------------------------------------------------------------------------

/// xorshift64*: tiny, seedable, and identical on every platform, so a seed reproduces a case.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // The all-zero state is a fixed point of xorshift.
        Rng(seed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// FNV-1a over the parts, so each (target, file, case) gets its own reproducible stream.
fn case_seed(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ global_seed();
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Bytes that break lexers: structure characters of YAML and JSON, line ends, NUL, and the
/// lead bytes of multi-byte UTF-8 sequences (which then go unfinished).
const INTERESTING_BYTES: &[u8] =
    b"\0\n\r\t \"'#&*-:[]{},|>!%@`\\?~\x7f\x80\xbf\xc3\xe2\xef\xf0\xfe\xff";

/// Tokens every target's dictionary shares.
const COMMON_TOKENS: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\0",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xc3",
    b"\xe2\x82",
    "é".as_bytes(),
    "🦀".as_bytes(),
    "\u{2028}".as_bytes(),
    b"99999999999999999999999999",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"1e400",
    b"-0",
    b"null",
    b"true",
];

const YAML_TOKENS: &[&[u8]] = &[
    b": ",
    b"- ",
    b"  ",
    b"\t",
    b"{",
    b"}",
    b"[",
    b"]",
    b", ",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"? ",
    b"!!str ",
    b"!!binary ",
    b"!!map ",
    b"!custom ",
    b"|\n  ",
    b">-\n  ",
    b"'",
    b"\"",
    b"\\x00",
    b"# ",
    b"---\n",
    b"...\n",
    b"%YAML 1.2\n---\n",
    b"~",
    b".nan",
    b".inf",
    b"0x7fffffffffffffff",
    b"0o777",
    b"1_000",
    b"yes",
    b"a: 1\na: 2\n",
];

const CLOUD_TOKENS: &[&[u8]] = &[
    b"provider: ",
    b"mode: ",
    b"secrets:\n  - ",
    b"toolchains: ",
    b"repo:\n  url: ",
    b"extra_repos:\n  - ",
    b"agents: ",
    b"codex:\n  reasoning: ",
    b"megaplan:\n  launcher: ",
    b"auto:\n  idea_file: ",
    b"chain:\n  spec: ",
    b"resources:\n  port: ",
    b"railway: ",
    b"local:\n  workdir: ",
    b"ssh:\n  host: ",
    b"image:\n  dockerfile: ",
    b"ssh",
    b"local",
    b"fly",
    b"chain",
    b"auto",
    b"65536",
    b"0",
    b"/abs/path",
    b"../x",
    b"~/",
];

const SPEC_TOKENS: &[&[u8]] = &[
    b"milestones:\n  - ",
    b"label: ",
    b"idea: ",
    b"depends_on: ",
    b"branch: ",
    b"with_prep: ",
    b"vendor: ",
    b"seed:\n  plan: ",
    b"base_branch: ",
    b"merge_policy: ",
    b"prerequisite_policy: ",
    b"validation_policy: ",
    b"review_policy:\n  clean_milestone_pr: ",
    b"driver: ",
    b"on_failure: ",
    b"m1",
    b"m2",
    b"required",
    b"manual",
];

const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\\ud83e\\udd80",
    b"\\\"",
    b"1e999",
    b"-0.0",
    b"5e-324",
    b"\"current_milestone_index\": ",
    b"\"pr_number\": ",
    b"\"completed\": [",
    b"\"extra_repos\": [",
    b"\"dirty_flag\": ",
    b"\"review_policy\": {",
    b"\"prerequisite_policy\": ",
];

const OBSERVATION_TOKENS: &[&[u8]] = &[
    b"MEGAPLAN_OBSERVATION ",
    b"MEGAPLAN_OBSERVATION {\"version\": 1}\n",
    b"\"version\": 1",
    b"\"fatal\": ",
    b"\"spec_path\": ",
    b"\"spec_text\": ",
    b"\"state_text\": ",
    b"\"policy_text\": ",
    b"\"runner\": ",
    b"\"sessions\": ",
    b"\"logs\": ",
    b"\"errors\": [",
];

const REDACT_TOKENS: &[&[u8]] = &[
    b"API_TOKEN",
    b"GH_TOKEN",
    b"DB_PASSWORD",
    b"PIN",
    b"WEIRD.NAME+",
    b"=",
    b": ",
    b"export ",
    b"sk-",
    b"ghp_",
    b"gho_",
    b"github_pat_",
    b"xoxb-",
    b"xoxp-",
    b"\"",
    b"'",
    b"\t",
    b" ",
    b"s3cr3t-value-123",
    b"ghp_0123456789abcdef",
    b"sk-proj-abcdefghij0123456789",
    "pässwörd€-long".as_bytes(),
    b"leak-me-please",
    b"AAAABBBBCCCCDDDD",
    b"-----BEGIN KEY-----\n",
    b"***REDACTED***",
    b"abcdefghijklmnop",
];

/// One to four stacked byte-level mutations of `input`.
fn mutate_bytes(rng: &mut Rng, input: &[u8], others: &[&[u8]], dict: &[&[u8]]) -> Vec<u8> {
    let mut data = input.to_vec();
    let token = |rng: &mut Rng| -> Vec<u8> {
        if rng.one_in(3) {
            rng.pick(COMMON_TOKENS).to_vec()
        } else {
            rng.pick(dict).to_vec()
        }
    };
    for _ in 0..1 + rng.below(4) {
        match rng.below(10) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = *rng.pick(INTERESTING_BYTES);
            }
            2 => {
                let at = rng.below(data.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                data.splice(at..at, bytes);
            }
            3 | 4 => {
                let at = rng.below(data.len() + 1);
                let t = token(rng);
                data.splice(at..at, t);
            }
            5 if !data.is_empty() => {
                let start = rng.below(data.len());
                let len = 1 + rng.below(64.min(data.len() - start));
                data.drain(start..start + len);
            }
            6 if !data.is_empty() => {
                let start = rng.below(data.len());
                let len = 1 + rng.below(64.min(data.len() - start));
                let piece = data[start..start + len].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, piece);
            }
            7 if !others.is_empty() => {
                let other = *rng.pick(others);
                let keep = rng.below(data.len() + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(keep);
                data.extend_from_slice(&other[from..]);
            }
            8 => {
                let keep = rng.below(data.len() + 1);
                data.truncate(keep);
            }
            _ => {
                // A token repeated: nesting and alias storms, long runs of one byte.
                let at = rng.below(data.len() + 1);
                let t = token(rng);
                let times = 2 + rng.below(150);
                let run: Vec<u8> = t.repeat(times);
                data.splice(at..at, run);
            }
        }
    }
    data
}

/// String values the structure-aware mutator plants: the accepted words of every enum-like
/// field, paths of both kinds, and shapes that break validators.
const STRING_SAMPLES: &[&str] = &[
    "",
    "  ",
    "railway",
    "local",
    "ssh",
    "fly",
    "auto",
    "chain",
    "idle",
    "required",
    "none",
    "manual",
    "review",
    "high",
    "apikey",
    "m1",
    "m2",
    "/abs/path",
    "relative/path",
    "../escape",
    "~/x",
    "-oProxyCommand=x",
    "a b",
    "UPPER",
    "API_TOKEN",
    "1abc",
    "rust",
    "main",
    "null",
    "0",
    "é🦀",
    "line\nbreak",
    "nul\0byte",
    "MEGAPLAN_OBSERVATION {}",
    "milestones:\n  - {label: m1, idea: a.md}\n",
    "{\"current_milestone_index\": 0}",
];

fn random_value(rng: &mut Rng, keys: &[&str], depth: usize) -> Value {
    let kinds = if depth >= 3 { 7 } else { 9 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => json!(*rng.pick(&[0i64, 1, -1, 22, 8080, 65535, 65536, i64::MAX, i64::MIN])),
        3 => match rng.below(3) {
            0 => json!(u64::MAX),
            1 => json!(1.5),
            _ => json!(-0.0),
        },
        4 | 5 => Value::String((*rng.pick(STRING_SAMPLES)).to_string()),
        6 => Value::String((*rng.pick(keys)).to_string()),
        7 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, keys, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| {
                    (
                        (*rng.pick(keys)).to_string(),
                        random_value(rng, keys, depth + 1),
                    )
                })
                .collect(),
        ),
    }
}

/// Walk to a random node and change it: replace it, add or drop a key, add or drop an item.
fn mutate_value(rng: &mut Rng, v: &mut Value, keys: &[&str], depth: usize) {
    let descend = !rng.one_in(3);
    match v {
        Value::Object(m) if descend && !m.is_empty() => {
            let k = m
                .keys()
                .nth(rng.below(m.len()))
                .cloned()
                .unwrap_or_default();
            if let Some(child) = m.get_mut(&k) {
                mutate_value(rng, child, keys, depth + 1);
            }
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let i = rng.below(items.len());
            mutate_value(rng, &mut items[i], keys, depth + 1);
        }
        Value::Object(m) => match rng.below(3) {
            0 if !m.is_empty() => {
                let k = m
                    .keys()
                    .nth(rng.below(m.len()))
                    .cloned()
                    .unwrap_or_default();
                m.remove(&k);
            }
            1 => {
                m.insert(
                    (*rng.pick(keys)).to_string(),
                    random_value(rng, keys, depth + 1),
                );
            }
            _ => *v = random_value(rng, keys, depth),
        },
        Value::Array(items) => match rng.below(3) {
            0 if !items.is_empty() => {
                items.remove(rng.below(items.len()));
            }
            1 => items.push(random_value(rng, keys, depth + 1)),
            _ => *v = random_value(rng, keys, depth),
        },
        _ => *v = random_value(rng, keys, depth),
    }
}

// ---------------------------------------------------------------------------------------------
// Corpus and the driver
// ---------------------------------------------------------------------------------------------

struct Seed {
    name: String,
    bytes: Vec<u8>,
}

fn corpus(target: &str) -> Vec<Seed> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut seeds: Vec<Seed> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            Seed {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bytes: std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
            }
        })
        .collect();
    seeds.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        (8..=20).contains(&seeds.len()),
        "corpus {} should hold 8-20 seeds, has {}",
        dir.display(),
        seeds.len()
    );
    seeds
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_string())
}

fn save_input(target: &str, input: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "megaplan-fuzz-{target}-{:016x}.bin",
        case_seed(&[input])
    ));
    if let Err(e) = std::fs::write(&path, input) {
        eprintln!("cannot save the failing input to {}: {e}", path.display());
    }
    path
}

fn preview(input: &[u8]) -> String {
    const MAX: usize = 800;
    let shown = input.len().min(MAX);
    let more = if input.len() > MAX {
        format!(" ... ({} bytes in all)", input.len())
    } else {
        String::new()
    };
    format!("b\"{}\"{more}", input[..shown].escape_ascii())
}

#[derive(Default)]
struct Tally {
    accepted: usize,
    refused: usize,
    inputs: usize,
}

/// Run `check` on one input, turning a panic or a failed check into a test failure that names
/// the case and saves the input. Parser work is bounded by counts inside the parsers (see
/// `yaml::MAX_EVENTS`), never by a clock here. `check` returns whether the input was
/// accepted.
fn run_case(
    target: &str,
    case: &str,
    input: &[u8],
    tally: &mut Tally,
    check: &dyn Fn(&[u8]) -> Result<bool, String>,
) -> bool {
    let outcome = catch_unwind(AssertUnwindSafe(|| check(input)));
    let failure = match outcome {
        Ok(Ok(accepted)) => {
            tally.inputs += 1;
            if accepted {
                tally.accepted += 1;
            } else {
                tally.refused += 1;
            }
            return accepted;
        }
        Ok(Err(reason)) => reason,
        Err(payload) => format!("PANIC: {}", panic_text(payload.as_ref())),
    };
    let saved = save_input(target, input);
    panic!(
        "fuzz target {target}, {case} (MEGAPLAN_FUZZ_SEED={}): {failure}\ninput saved to {}\ninput: {}",
        global_seed(),
        saved.display(),
        preview(input)
    );
}

/// Mutated cases for one seed: `MEGAPLAN_FUZZ_CASES`, fewer for files above
/// `LARGE_FILE_BYTES`, and `EXPANSION_SEED_CASES` (scaled like the case count) for expansion
/// attacks. The case sequence is fixed, and so is how far along it a run goes.
fn cases_for(name: &str, len: usize) -> usize {
    let wanted = cases_per_file();
    let by_size = wanted * LARGE_FILE_BYTES / len.max(LARGE_FILE_BYTES);
    let by_kind = if name.contains("billion_laughs") || name.contains("bomb") {
        (EXPANSION_SEED_CASES * wanted / DEFAULT_CASES).max(1)
    } else {
        wanted
    };
    by_size.min(by_kind).max(wanted.min(2))
}

type Structured = fn(&mut Rng, &[u8], &[&[u8]]) -> Option<Vec<u8>>;

/// The whole fuzz loop of one target. Returns the tally over unmodified and mutated inputs.
fn fuzz_target(
    target: &str,
    dict: &[&[u8]],
    structured: Option<Structured>,
    check: &dyn Fn(&[u8]) -> Result<bool, String>,
) -> Tally {
    let seeds = corpus(target);
    let all: Vec<&[u8]> = seeds.iter().map(|s| s.bytes.as_slice()).collect();
    let mut tally = Tally::default();
    let started = Instant::now();
    for seed in &seeds {
        let accepted = run_case(
            target,
            &format!("seed {} unmodified", seed.name),
            &seed.bytes,
            &mut tally,
            check,
        );
        let expected = if seed.name.starts_with("ok_") {
            Some(true)
        } else if seed.name.starts_with("err_") {
            Some(false)
        } else {
            None
        };
        if let Some(expected) = expected {
            assert_eq!(
                accepted,
                expected,
                "corpus seed {target}/{} should be {} (its name prefix says so)",
                seed.name,
                if expected { "accepted" } else { "refused" }
            );
        }

        let others: Vec<&[u8]> = all
            .iter()
            .copied()
            .filter(|o| !std::ptr::eq(*o, seed.bytes.as_slice()))
            .collect();
        let cases = cases_for(&seed.name, seed.bytes.len());
        for case in 0..cases {
            let mut rng = Rng::new(case_seed(&[
                target.as_bytes(),
                seed.name.as_bytes(),
                &case.to_le_bytes(),
            ]));
            let input = match structured {
                Some(edit) if rng.one_in(2) => edit(&mut rng, &seed.bytes, &others)
                    .unwrap_or_else(|| mutate_bytes(&mut rng, &seed.bytes, &others, dict)),
                _ => mutate_bytes(&mut rng, &seed.bytes, &others, dict),
            };
            run_case(
                target,
                &format!("seed {} mutation case {case}", seed.name),
                &input,
                &mut tally,
                check,
            );
        }
    }
    eprintln!(
        "fuzz {target}: {} inputs ({} accepted, {} refused) from {} seeds in {:?}",
        tally.inputs,
        tally.accepted,
        tally.refused,
        seeds.len(),
        started.elapsed()
    );
    tally
}

/// Checks the wire error a domain error (`ChainError`, `RenderError`, ...) or an `ErrorBody`
/// is answered with.
fn check_error(
    e: &(impl Clone + Into<ErrorBody>),
    allowed: &[ErrorCode],
    names: Option<&str>,
) -> Result<(), String> {
    let e: ErrorBody = e.clone().into();
    if e.success {
        return Err(format!("error body has success: true: {e:?}"));
    }
    if e.message.trim().is_empty() {
        return Err(format!("error body has an empty message: {e:?}"));
    }
    if !allowed.contains(&e.error) {
        return Err(format!(
            "error code {} is not one of the documented {allowed:?}: {e:?}",
            e.error
        ));
    }
    if e.to_value()["error"] != e.error.as_str() {
        return Err(format!(
            "error body does not serialize its code: {}",
            e.to_value()
        ));
    }
    if let Some(file) = names
        && !e.message.contains(file)
    {
        return Err(format!("error message does not name {file}: {e}"));
    }
    Ok(())
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// cloud.yaml
// ---------------------------------------------------------------------------------------------

const CLOUD_KEYS: &[&str] = &[
    "provider",
    "mode",
    "secrets",
    "toolchains",
    "repo",
    "url",
    "branch",
    "workspace",
    "extra_repos",
    "path",
    "agents",
    "default",
    "plan",
    "codex",
    "model",
    "reasoning",
    "megaplan",
    "ref",
    "codex_auth",
    "launcher",
    "auto",
    "plan_name",
    "idea_file",
    "robustness",
    "chain",
    "spec",
    "resources",
    "volume",
    "port",
    "network",
    "railway",
    "service",
    "session",
    "project",
    "environment",
    "local",
    "compose_project",
    "workdir",
    "ssh",
    "host",
    "user",
    "identity_file",
    "remote_dir",
    "container",
    "image",
    "base",
    "dockerfile",
    "name",
    "install",
];

/// Parse a YAML seed, edit one node, write it back: keeps the document well-formed so the
/// field walker (not only the YAML lexer) sees wrong types and missing fields.
fn structured_yaml(rng: &mut Rng, input: &[u8], keys: &[&str]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(input).ok()?;
    let mut doc = yaml::parse(text).ok()?;
    for _ in 0..1 + rng.below(3) {
        mutate_value(rng, &mut doc, keys, 0);
    }
    yaml::to_string(&doc).ok().map(String::into_bytes)
}

fn structured_cloud(rng: &mut Rng, input: &[u8], _others: &[&[u8]]) -> Option<Vec<u8>> {
    structured_yaml(rng, input, CLOUD_KEYS)
}

/// The rules the loader promises for every spec it accepts.
fn check_cloud_spec(s: &cloud_yaml::CloudSpec) -> Result<(), String> {
    let mut broken = Vec::new();
    if s.path != Path::new(CLOUD_FILE) {
        broken.push("path is not the given file");
    }
    if s.repo.url.trim().is_empty() {
        broken.push("repo.url is empty");
    }
    if !s.repo.workspace.starts_with('/') {
        broken.push("repo.workspace is not absolute");
    }
    if s.resources.port == 0 {
        broken.push("resources.port is 0");
    }
    if !s.secrets.iter().all(|n| cloud_yaml::is_env_name(n)) {
        broken.push("a secret is not an env var name");
    }
    if s.mode == Mode::Auto && (s.auto.plan_name.is_none() || s.auto.idea_file.is_none()) {
        broken.push("mode auto without auto.plan_name/idea_file");
    }
    if s.mode == Mode::Chain && s.chain.spec.is_none() {
        broken.push("mode chain without chain.spec");
    }
    if s.auto
        .idea_file
        .as_ref()
        .is_some_and(|p| !p.starts_with('/'))
        || s.chain.spec.as_ref().is_some_and(|p| !p.starts_with('/'))
    {
        broken.push("a remote path is not absolute");
    }
    if s.provider == ProviderKind::Ssh && s.ssh.is_none() {
        broken.push("provider ssh without an ssh section");
    }
    if let Some(ssh) = &s.ssh
        && (ssh.port == 0
            || ssh.host.is_empty()
            || ssh.host.starts_with('-')
            || !ssh.remote_dir.starts_with('/')
            || !cloud_yaml::is_docker_name(&ssh.container))
    {
        broken.push("ssh section breaks its rules");
    }
    if s.local.workdir.starts_with('/') || s.local.workdir.split('/').any(|c| c == "..") {
        broken.push("local.workdir escapes the deploy dir");
    }
    if !cloud_yaml::is_docker_name(&s.local.compose_project.replace('_', "-")) {
        broken.push("local.compose_project is not a compose project name");
    }
    if [&s.resources.volume, &s.resources.network]
        .into_iter()
        .flatten()
        .any(|n| !cloud_yaml::is_docker_name(n))
    {
        broken.push("resources.volume/network is not a Docker name");
    }
    if s.extra_repos.iter().any(|r| !r.path.starts_with('/')) {
        broken.push("an extra repo path is not absolute");
    }
    if !cloud_yaml::REASONING_LEVELS.contains(&s.codex.reasoning.as_str()) {
        broken.push("codex.reasoning is not a known level");
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(format!("accepted spec breaks the rules {broken:?}: {s:?}"))
    }
}

fn check_cloud_yaml(input: &[u8]) -> Result<bool, String> {
    match cloud_yaml::parse_bytes(input, Path::new(CLOUD_FILE)).map_err(ErrorBody::from) {
        Ok(spec) => check_cloud_spec(&spec).map(|()| true),
        Err(e) => {
            check_error(
                &e,
                &[ErrorCode::InvalidSpec, ErrorCode::FutureProvider],
                Some(CLOUD_FILE),
            )?;
            if e.error == ErrorCode::FutureProvider
                && e.extra.get("field") != Some(&json!("provider"))
            {
                return Err(format!(
                    "future_provider not about the provider field: {e:?}"
                ));
            }
            Ok(false)
        }
    }
}

#[test]
fn fuzz_cloud_yaml_loader() {
    let dict: Vec<&[u8]> = YAML_TOKENS.iter().chain(CLOUD_TOKENS).copied().collect();
    let tally = fuzz_target(
        "cloud_yaml",
        &dict,
        Some(structured_cloud),
        &check_cloud_yaml,
    );
    assert!(
        tally.accepted > 0 && tally.refused > 0,
        "the fuzzer must reach both outcomes"
    );
}

// ---------------------------------------------------------------------------------------------
// chain spec
// ---------------------------------------------------------------------------------------------

const SPEC_KEYS: &[&str] = &[
    "milestones",
    "label",
    "idea",
    "branch",
    "depends_on",
    "profile",
    "robustness",
    "notes",
    "vendor",
    "with_prep",
    "with_feedback",
    "prep_clarify",
    "seed",
    "plan",
    "base_branch",
    "merge_policy",
    "prerequisite_policy",
    "validation_policy",
    "review_policy",
    "clean_milestone_pr",
    "driver",
    "on_failure",
    "on_escalate",
    "m1",
    "m2",
];

fn structured_spec(rng: &mut Rng, input: &[u8], _others: &[&[u8]]) -> Option<Vec<u8>> {
    structured_yaml(rng, input, SPEC_KEYS)
}

fn check_chain_spec_text(text: &str) -> Result<bool, String> {
    let spec = match parse_chain_spec(text, SPEC_FILE) {
        Ok(spec) => spec,
        Err(e) => {
            check_error(&e, &[ErrorCode::InvalidSpec], Some(SPEC_FILE))?;
            return Ok(false);
        }
    };
    let mut labels = HashSet::new();
    for (i, m) in spec.milestones.iter().enumerate() {
        if m.index != i
            || m.label.is_empty()
            || m.label.trim() != m.label
            || m.idea.is_empty()
            || !labels.insert(m.label.as_str())
        {
            return Err(format!("accepted milestone {i} breaks the rules: {m:?}"));
        }
    }
    if !MERGE_POLICIES.contains(&spec.merge_policy.as_str())
        || !GATE_POLICIES.contains(&spec.prerequisite_policy.as_str())
        || !GATE_POLICIES.contains(&spec.validation_policy.as_str())
        || !REVIEW_POLICIES.contains(&spec.review_clean_milestone_pr.as_str())
    {
        return Err(format!("accepted spec has an unknown policy: {spec:?}"));
    }
    // The normalised copy is what the runner receives; it must say the same thing.
    let normalised =
        normalised_yaml(&spec, "main").map_err(|e| format!("normalised_yaml failed: {e}"))?;
    // The uploaded copy (the operator's bytes, plus a base_branch line when missing) too.
    let uploaded =
        upload_text(text, &spec, "main").map_err(|e| format!("upload_text failed: {e}"))?;
    let up = parse_chain_spec(&uploaded, SPEC_FILE)
        .map_err(|e| format!("the uploaded copy does not parse back: {e}\n{uploaded}"))?;
    if up.milestones != spec.milestones
        || up.base_branch.as_deref() != Some(spec.base_branch.as_deref().unwrap_or("main"))
    {
        return Err(format!(
            "the uploaded copy parses to a different chain:\n{uploaded}"
        ));
    }
    let again = parse_chain_spec(&normalised, SPEC_FILE)
        .map_err(|e| format!("the normalised copy does not parse back: {e}\n{normalised}"))?;
    if again.milestones != spec.milestones
        || again.base_branch.as_deref() != Some(spec.base_branch.as_deref().unwrap_or("main"))
        || again.merge_policy != spec.merge_policy
        || again.seed_plan != spec.seed_plan
    {
        return Err(format!(
            "the normalised copy parses to a different chain:\n{normalised}\n{again:?}\nvs {spec:?}"
        ));
    }
    Ok(true)
}

fn check_chain_spec(input: &[u8]) -> Result<bool, String> {
    check_chain_spec_text(&lossy(input))
}

#[test]
fn fuzz_chain_spec_parser() {
    let dict: Vec<&[u8]> = YAML_TOKENS.iter().chain(SPEC_TOKENS).copied().collect();
    let tally = fuzz_target(
        "chain_spec",
        &dict,
        Some(structured_spec),
        &check_chain_spec,
    );
    assert!(
        tally.accepted > 0 && tally.refused > 0,
        "the fuzzer must reach both outcomes"
    );
}

// ---------------------------------------------------------------------------------------------
// chain state and runtime policy
// ---------------------------------------------------------------------------------------------

const STATE_KEYS: &[&str] = &[
    "schema_version",
    "current_milestone_index",
    "current_plan_name",
    "last_state",
    "pr_number",
    "pr_state",
    "completed",
    "label",
    "status",
    "branch_head",
    "pr_head",
    "last_pushed_commit",
    "dirty_flag",
    "sync_state",
    "extra_repos",
    "chain_session",
    "resolved_workspace",
    "extra_repo_sync",
    "prerequisite_policy",
    "validation_policy",
    "review_policy",
    "clean_milestone_pr",
];

fn structured_json(rng: &mut Rng, input: &[u8], keys: &[&str]) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(input).ok()?;
    for _ in 0..1 + rng.below(3) {
        mutate_value(rng, &mut doc, keys, 0);
    }
    serde_json::to_vec(&doc).ok()
}

fn structured_state(rng: &mut Rng, input: &[u8], _others: &[&[u8]]) -> Option<Vec<u8>> {
    structured_json(rng, input, STATE_KEYS)
}

fn check_chain_state_text(text: &str) -> Result<bool, String> {
    let accepted = match parse_chain_state(text, STATE_FILE) {
        Ok(state) => {
            let Ok(Value::Object(raw)) = serde_json::from_str::<Value>(text) else {
                return Err(format!(
                    "accepted a state that is not a JSON object: {state:?}"
                ));
            };
            let expected_index = raw
                .get("current_milestone_index")
                .and_then(Value::as_i64)
                .unwrap_or(-1);
            if state.current_milestone_index != expected_index {
                return Err(format!(
                    "current_milestone_index {} but the file says {expected_index}",
                    state.current_milestone_index
                ));
            }
            let shown = state.to_map();
            for key in [
                "current_milestone_index",
                "completed",
                "dirty_flag",
                "extra_repos",
            ] {
                if shown.get(key).is_none() {
                    return Err(format!("to_map() lacks {key}: {shown:?}"));
                }
            }
            if state.extra_repos.iter().any(|r| r.trim().is_empty()) {
                return Err(format!("blank extra repo kept: {:?}", state.extra_repos));
            }
            true
        }
        Err(e) => {
            check_error(&e, &[ErrorCode::ProviderFailed], Some(STATE_FILE))?;
            false
        }
    };
    let (overrides, warning) = parse_runtime_policy(Some(text), POLICY_FILE);
    match warning {
        Some(w) if !w.contains(POLICY_FILE) || !overrides.is_empty() => {
            return Err(format!(
                "runtime policy warning must name the file and apply nothing: {w} / {overrides:?}"
            ));
        }
        Some(_) => {}
        None => {
            let all = [
                &overrides.prerequisite_policy,
                &overrides.validation_policy,
                &overrides.clean_milestone_pr,
            ];
            if all.into_iter().flatten().any(|v| v.trim().is_empty()) {
                return Err(format!("blank runtime policy override kept: {overrides:?}"));
            }
        }
    }
    Ok(accepted)
}

fn check_chain_state(input: &[u8]) -> Result<bool, String> {
    check_chain_state_text(&lossy(input))
}

#[test]
fn fuzz_chain_state_and_runtime_policy_parsers() {
    assert_eq!(
        parse_runtime_policy(None, POLICY_FILE),
        Default::default(),
        "no policy file: no overrides, no warning"
    );
    let dict: Vec<&[u8]> = JSON_TOKENS.to_vec();
    let tally = fuzz_target(
        "chain_state",
        &dict,
        Some(structured_state),
        &check_chain_state,
    );
    assert!(
        tally.accepted > 0 && tally.refused > 0,
        "the fuzzer must reach both outcomes"
    );
}

// ---------------------------------------------------------------------------------------------
// observation
// ---------------------------------------------------------------------------------------------

const OBSERVATION_KEYS: &[&str] = &[
    "version",
    "fatal",
    "errors",
    "spec_path",
    "resolved_spec",
    "state_path",
    "policy_path",
    "spec_text",
    "spec_error",
    "state_text",
    "state_error",
    "policy_text",
    "policy_error",
    "sync_refresh",
    "plan_status",
    "runner",
    "status",
    "logs",
    "error",
    "session_marker",
    "session_marker_error",
    "sessions",
    "sessions_error",
    "pr_probe",
    "pr_probe_error",
];

/// Edit the observation object, or plant a mutated chain spec / chain state seed in its text
/// fields, so the nested parsers are fuzzed through the observation too.
fn structured_observation(rng: &mut Rng, input: &[u8], _others: &[&[u8]]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(input).ok()?;
    let line = text
        .lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix(OBSERVATION_PREFIX))?;
    let mut doc: Value = serde_json::from_str(line.trim_end()).ok()?;
    match rng.below(3) {
        0 => {
            for _ in 0..1 + rng.below(3) {
                mutate_value(rng, &mut doc, OBSERVATION_KEYS, 0);
            }
        }
        1 => {
            let seeds = corpus_cache("chain_spec");
            let seed = rng.pick(seeds);
            let others: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
            let dict: Vec<&[u8]> = YAML_TOKENS.iter().chain(SPEC_TOKENS).copied().collect();
            let planted = lossy(&mutate_bytes(rng, seed, &others, &dict));
            let obj = doc.as_object_mut()?;
            obj.insert("spec_path".into(), json!("/workspace/app/chain.yaml"));
            obj.insert("spec_text".into(), Value::String(planted));
        }
        _ => {
            let seeds = corpus_cache("chain_state");
            let seed = rng.pick(seeds);
            let others: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
            let planted = lossy(&mutate_bytes(rng, seed, &others, JSON_TOKENS));
            let field = *rng.pick(&["state_text", "policy_text"]);
            doc.as_object_mut()?
                .insert(field.into(), Value::String(planted));
        }
    }
    let noise = *rng.pick(&["", "Welcome!\n", "motd\r\n\n", "MEGAPLAN_OBSERVATION {}\n"]);
    Some(format!("{noise}{OBSERVATION_PREFIX}{doc}\n").into_bytes())
}

/// Seeds of another target, read once per test binary.
fn corpus_cache(target: &'static str) -> &'static [Vec<u8>] {
    use std::sync::OnceLock;
    static SPEC: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    static STATE: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let cell = if target == "chain_spec" {
        &SPEC
    } else {
        &STATE
    };
    cell.get_or_init(|| corpus(target).into_iter().map(|s| s.bytes).collect())
}

fn check_observation(input: &[u8]) -> Result<bool, String> {
    let obs = match parse_observation(&lossy(input)) {
        Ok(obs) => obs,
        Err(e) => {
            check_error(&e, &[ErrorCode::ProviderFailed], None)?;
            return Ok(false);
        }
    };
    if obs.spec.is_some() && obs.spec_error.is_some() {
        return Err("both a parsed spec and a spec error".into());
    }
    if obs.state.is_some() && obs.state_error.is_some() {
        return Err("both a parsed state and a state error".into());
    }
    if let Some(e) = &obs.spec_error {
        check_error(
            e,
            &[
                ErrorCode::InvalidSpec,
                ErrorCode::ProviderFailed,
                ErrorCode::MissingRemoteSpec,
            ],
            None,
        )?;
    }
    if let Some(e) = &obs.state_error {
        check_error(e, &[ErrorCode::ProviderFailed], None)?;
    }
    // `runner`, `logs` and `plan_status` are typed: an observation where they are not
    // objects is refused by the parser (checked above through its error code).
    let p = &obs.policy;
    if p.prerequisite_policy.is_empty()
        || p.validation_policy.is_empty()
        || p.review_policy.clean_milestone_pr.is_empty()
        || !["chain_yaml", "runtime_override"].contains(&p.source.as_str())
    {
        return Err(format!("effective policy is incomplete: {p:?}"));
    }
    // The cursor as the state file inside the observation line wrote it.
    let written_index = lossy(input).lines().rev().find_map(|l| {
        let line = l.trim_start().strip_prefix(OBSERVATION_PREFIX)?;
        let doc: Value = serde_json::from_str(line.trim_end()).ok()?;
        let state: Value = serde_json::from_str(doc.get("state_text")?.as_str()?).ok()?;
        state.get("current_milestone_index")?.as_i64()
    });
    if obs.state_or_default().current_milestone_index < -1
        && obs
            .state
            .as_ref()
            .is_none_or(|s| written_index != Some(s.current_milestone_index))
    {
        return Err("current_milestone_index invented".into());
    }
    Ok(true)
}

#[test]
fn fuzz_observation_parser() {
    let dict: Vec<&[u8]> = JSON_TOKENS
        .iter()
        .chain(OBSERVATION_TOKENS)
        .copied()
        .collect();
    let tally = fuzz_target(
        "observation",
        &dict,
        Some(structured_observation),
        &check_observation,
    );
    assert!(
        tally.accepted > 0 && tally.refused > 0,
        "the fuzzer must reach both outcomes"
    );
}

// ---------------------------------------------------------------------------------------------
// redactor
// ---------------------------------------------------------------------------------------------

/// Secret env vars of the fuzzed redactor: plain values, a token-shaped one, multi-byte
/// characters, a short one (only its `NAME=value` form is redacted), a name full of regex
/// metacharacters, a name without a value, an empty and a duplicated name.
const SECRETS: &[(&str, &str)] = &[
    ("API_TOKEN", "s3cr3t-value-123"),
    ("GH_TOKEN", "ghp_0123456789abcdef"),
    ("OPENAI_API_KEY", "sk-proj-abcdefghij0123456789"),
    ("DB_PASSWORD", "pässwörd€-long"),
    ("PIN", "1234"),
    ("WEIRD.NAME+", "leak-me-please"),
    ("NO_VALUE", ""),
    ("", "empty-name-value"),
    ("API_TOKEN", "s3cr3t-value-123"),
];
/// A multi-line secret (a key in an env var); every line is itself at least 8 characters.
const PEM_NAME: &str = "SSH_KEY";
const PEM_VALUE: &str =
    "-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\nEEEEFFFFGGGGHHHH\n-----END KEY-----";

fn build_redactor(pairs: &[(&str, &str)]) -> Redactor {
    let names: Vec<String> = pairs.iter().map(|(n, _)| n.to_string()).collect();
    let values: BTreeMap<String, String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Redactor::new(&names, &values)
}

/// The literal secrets the output must never contain: values (and, for multi-line values,
/// lines) of at least 8 characters. The empty name is not a secret name, so its value is
/// excluded.
fn must_not_leak<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(n, _)| !n.is_empty())
        .flat_map(|(_, v)| std::iter::once(*v).chain(v.lines()))
        .filter(|v| v.chars().count() >= 8)
        .collect()
}

/// A secret cut from the input itself, so literal matches are certain: 8-40 characters, one
/// line, no surrounding blanks, no `*` (a secret made of pieces of the replacement text would
/// reappear next to a replacement; real secrets are not like that).
fn secret_from(rng: &mut Rng, text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() < 8 {
        return None;
    }
    for _ in 0..8 {
        let start = rng.below(chars.len() - 7);
        let len = 8 + rng.below(33.min(chars.len() - start - 7));
        let s: String = chars[start..start + len].iter().collect();
        if !s.contains(['\n', '*']) && s.trim() == s && !REPLACEMENT.contains(&s) {
            return Some(s);
        }
    }
    None
}

fn stream(r: &Redactor, bytes: &[u8], cuts: &[usize]) -> Result<String, String> {
    let mut lr = r.line_redactor();
    let mut out = String::new();
    let mut prev = 0;
    for &cut in cuts {
        out.push_str(&lr.push(&bytes[prev..cut]));
        prev = cut;
    }
    out.push_str(&lr.push(&bytes[prev..]));
    out.push_str(&lr.finish());
    // A finished redactor is reusable and starts clean.
    let mut again = lr.push(bytes);
    again.push_str(&lr.finish());
    if again != out {
        return Err(format!(
            "a reused line redactor gave {again:?}, the fresh one {out:?}"
        ));
    }
    Ok(out)
}

/// The chunkings tried for one input: all at once, random cuts (some inside UTF-8
/// sequences), and one byte at a time for small inputs.
fn chunkings(rng: &mut Rng, len: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new()];
    let mut cuts: Vec<usize> = (0..rng.below(16)).map(|_| rng.below(len + 1)).collect();
    cuts.sort_unstable();
    out.push(cuts);
    if len <= 2048 {
        out.push((1..len).collect());
    }
    out
}

fn leaks(out: &str, secrets: &[&str]) -> Option<String> {
    secrets
        .iter()
        .find(|s| out.contains(**s))
        .map(|s| format!("secret {s:?} leaked into {out:?}"))
}

struct RedactFixture {
    single_line: Redactor,
    with_pem: Redactor,
}

fn redact_fixture() -> &'static RedactFixture {
    use std::sync::OnceLock;
    static FIXTURE: OnceLock<RedactFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut with_pem = SECRETS.to_vec();
        with_pem.push((PEM_NAME, PEM_VALUE));
        RedactFixture {
            single_line: build_redactor(SECRETS),
            with_pem: build_redactor(&with_pem),
        }
    })
}

fn check_redaction(input: &[u8]) -> Result<bool, String> {
    let fixture = redact_fixture();
    let mut rng = Rng::new(case_seed(&[b"redact-secrets", input]));
    let text = lossy(input);

    // Single-line secrets (plus, in a third of the cases, one cut from the input): the stream
    // must equal `redact()` of the whole text, for every chunking.
    let mut pairs: Vec<(&str, &str)> = SECRETS.to_vec();
    let picked = if rng.one_in(3) {
        secret_from(&mut rng, &text)
    } else {
        None
    };
    let owned;
    let r = match &picked {
        Some(secret) => {
            pairs.push(("FUZZ_SECRET", secret.as_str()));
            owned = build_redactor(&pairs);
            &owned
        }
        None => &fixture.single_line,
    };
    let secrets = must_not_leak(&pairs);
    let whole = r.redact(&text);
    if let Some(leak) = leaks(&whole, &secrets) {
        return Err(format!("redact(): {leak}"));
    }
    if r.redact_json(&Value::String(text.clone())) != Value::String(whole.clone()) {
        return Err("redact_json of a string differs from redact()".into());
    }
    for cuts in chunkings(&mut rng, input.len()) {
        let streamed = stream(r, input, &cuts)?;
        if streamed != whole {
            return Err(format!(
                "stream with cuts {cuts:?} differs from redact():\nstream: {streamed:?}\nwhole:  {whole:?}"
            ));
        }
    }

    // With a multi-line secret the stream redacts line by line, so only "nothing leaks" holds.
    let mut pem_pairs = SECRETS.to_vec();
    pem_pairs.push((PEM_NAME, PEM_VALUE));
    let pem_secrets = must_not_leak(&pem_pairs);
    let r = &fixture.with_pem;
    if let Some(leak) = leaks(&r.redact(&text), &pem_secrets) {
        return Err(format!("redact() with a multi-line secret: {leak}"));
    }
    let cuts = chunkings(&mut rng, input.len()).swap_remove(1);
    if let Some(leak) = leaks(&stream(r, input, &cuts)?, &pem_secrets) {
        return Err(format!(
            "stream with a multi-line secret, cuts {cuts:?}: {leak}"
        ));
    }
    Ok(whole != text)
}

/// Lines longer than `MAX_LINE_BYTES` are streamed in pieces. Whole-text equality is not
/// promised there (a region cut by a split is replaced on both sides), but no secret may leak
/// and nothing but secrets may be removed, wherever the splits and chunk boundaries fall.
#[test]
fn redactor_over_long_lines_never_leak() {
    let r = &redact_fixture().single_line;
    let secrets = must_not_leak(SECRETS);
    let mut rng = Rng::new(case_seed(&[b"over-long-lines"]));
    // Secrets every few hundred bytes put one across every split and context boundary;
    // the fillers share no character with the secrets, so a leaked fragment would show.
    let mut text = String::new();
    while text.len() < 2 * MAX_LINE_BYTES + 4096 {
        text.push_str(&"., ".repeat(1 + rng.below(120)));
        text.push_str(match rng.below(6) {
            0 => "s3cr3t-value-123",
            1 => "pässwörd€-long",
            2 => "ghp_0123456789abcdef",
            3 => "leak-me-please",
            4 => "API_TOKEN=QQQQQQQQQQQQ",
            _ => "sk-proj-abcdefghij0123456789",
        });
    }
    // A token and an assignment value far longer than the re-scanned context, across a split.
    let long_token = format!(" sk-{} ", "Q".repeat(200_000));
    let long_value = format!(" API_TOKEN={} ", "Q".repeat(200_000));
    let at = floor_boundary(&text, MAX_LINE_BYTES - 100_000);
    text.insert_str(at, &long_token);
    let at = floor_boundary(&text, 2 * MAX_LINE_BYTES - 50_000);
    text.insert_str(at, &long_value);

    let expected_rest = r.redact(&text).replace(REPLACEMENT, "");
    let random_cuts = chunkings(&mut rng, text.len()).swap_remove(1);
    let pipe_reads: Vec<usize> = (4093..text.len()).step_by(4093).collect();
    for (how, cuts) in [
        ("one chunk", Vec::new()),
        ("random cuts", random_cuts),
        ("4093-byte reads", pipe_reads),
    ] {
        let streamed = stream(r, text.as_bytes(), &cuts).unwrap_or_else(|e| panic!("{e}"));
        if let Some(leak) = leaks(&streamed, &secrets) {
            let shown: String = leak.chars().take(300).collect();
            panic!("over-long line streamed as {how}: {shown}");
        }
        assert!(
            !streamed.contains('Q'),
            "an over-long token or value leaked past a split (streamed as {how})"
        );
        assert!(
            streamed.replace(REPLACEMENT, "") == expected_rest,
            "streaming an over-long line as {how} removed more than secrets"
        );
    }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[test]
fn fuzz_redactor() {
    let tally = fuzz_target("redact", REDACT_TOKENS, None, &check_redaction);
    assert!(
        tally.accepted > 0,
        "some inputs must contain something to redact"
    );
}

// ---------------------------------------------------------------------------------------------
// alias bombs
// ---------------------------------------------------------------------------------------------

/// "Billion laughs": `levels` anchors, each a list of `width` aliases of the previous one, so a
/// naive expansion holds width^levels scalars.
fn alias_bomb(indent: &str, levels: usize, width: usize) -> String {
    let mut out = format!("{indent}l0: &l0 [{}]\n", vec!["\"lol\""; width].join(", "));
    for level in 1..levels {
        let refs = vec![format!("*l{}", level - 1); width].join(", ");
        out.push_str(&format!("{indent}l{level}: &l{level} [{refs}]\n"));
    }
    out
}

/// Run `work` on its own thread with a small stack, so unbounded recursion in a parser shows as
/// a failure naming `what` rather than taking the test process down. No clock is involved: the
/// parsers bound their own work by counts.
fn on_thread<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(8 * 1024 * 1024)
        .spawn(work)
        .expect("spawn a parser thread")
        .join()
        .unwrap_or_else(|_| panic!("{what} panicked instead of returning an error"))
}

/// Size of a JSON value in nodes, counted without recursion so a huge value cannot overflow
/// the stack here.
fn node_count(v: &Value) -> usize {
    let mut stack = vec![v];
    let mut n = 0;
    while let Some(v) = stack.pop() {
        n += 1;
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(m) => stack.extend(m.values()),
            _ => {}
        }
    }
    n
}

#[test]
fn alias_bombs_are_refused_or_bounded_by_the_event_budget() {
    /// An accepted document may expand aliases, but never beyond the parser's event budget; a
    /// bomb that would expand further must be refused. Counts, not time: the same assertion
    /// holds on an idle and on a saturated machine.
    const MAX_NODES: usize = yaml::MAX_EVENTS;
    for (levels, width) in [(9, 9), (12, 10), (30, 2), (5, 12)] {
        let explodes = (width as f64).powi(levels as i32) > MAX_NODES as f64;
        let bomb = alias_bomb("", levels, width);
        let nested = alias_bomb("  ", levels, width);
        let shape = format!("{levels}x{width}");

        let text = format!("repo:\n  url: /srv/repo.git\n{bomb}");
        let outcome = on_thread(&format!("cloud.yaml bomb {shape}"), move || {
            cloud_yaml::parse_bytes(text.as_bytes(), Path::new(CLOUD_FILE)).map_err(ErrorBody::from)
        });
        match outcome {
            Ok(_) => assert!(!explodes, "cloud.yaml bomb {shape} was accepted"),
            Err(e) => check_error(&e, &[ErrorCode::InvalidSpec], Some(CLOUD_FILE))
                .unwrap_or_else(|why| panic!("{why}")),
        }

        let text = format!("milestones:\n  - {{label: m1, idea: a.md}}\ndriver:\n{nested}");
        let outcome = on_thread(&format!("chain spec bomb {shape}"), move || {
            parse_chain_spec(&text, SPEC_FILE).map(|s| node_count(&Value::Object(s.raw)))
        });
        match outcome {
            Ok(nodes) => assert!(
                !explodes && nodes <= MAX_NODES,
                "chain spec bomb {shape} was accepted with {nodes} nodes"
            ),
            Err(e) => check_error(&e, &[ErrorCode::InvalidSpec], Some(SPEC_FILE))
                .unwrap_or_else(|why| panic!("{why}")),
        }

        // Through the observation the spec's refusal is `spec_error`, not a failed parse.
        let line = json!({"version": 1, "spec_path": "/w/chain.yaml",
                          "resolved_spec": "/w/chain.yaml", "spec_text": bomb});
        let stdout = format!("{OBSERVATION_PREFIX}{line}\n");
        let obs = on_thread(&format!("observation bomb {shape}"), move || {
            parse_observation(&stdout).map(|o| {
                let nodes = o.spec.map(|s| node_count(&Value::Object(s.raw)));
                (nodes, o.spec_error)
            })
        })
        .unwrap_or_else(|e| panic!("observation with a bomb spec_text failed as a whole: {e}"));
        match obs {
            (Some(nodes), None) => assert!(
                !explodes && nodes <= MAX_NODES,
                "observation spec bomb {shape} was accepted with {nodes} nodes"
            ),
            (None, Some(e)) => check_error(&e, &[ErrorCode::InvalidSpec], Some("/w/chain.yaml"))
                .unwrap_or_else(|why| panic!("{why}")),
            other => panic!("observation bomb {shape}: spec and spec_error disagree: {other:?}"),
        }
    }
}

/// The corpus bomb seeds are the same attack as the generated ones; they must be refused.
#[test]
fn corpus_alias_bombs_are_refused() {
    let seed = corpus("cloud_yaml")
        .into_iter()
        .find(|s| s.name.contains("billion_laughs"))
        .expect("the cloud.yaml corpus holds a billion-laughs seed");
    let e = on_thread("cloud.yaml corpus bomb", move || {
        cloud_yaml::parse_bytes(&seed.bytes, Path::new(CLOUD_FILE)).map_err(ErrorBody::from)
    })
    .expect_err("a billion-laughs cloud.yaml must be refused");
    assert_eq!(e.error, ErrorCode::InvalidSpec, "{e}");
}

/// Nothing in this file may make the suite pass vacuously: a mutated case is really different
/// from its seed, and the same seed gives the same case.
#[test]
fn mutations_are_deterministic_and_change_the_input() {
    let seed = b"provider: local\nrepo:\n  url: /srv/repo.git\n".as_slice();
    let mut changed = 0;
    for case in 0..64u64 {
        let a = mutate_bytes(&mut Rng::new(case + 1), seed, &[b"x: 1\n"], YAML_TOKENS);
        let b = mutate_bytes(&mut Rng::new(case + 1), seed, &[b"x: 1\n"], YAML_TOKENS);
        assert_eq!(a, b, "case {case} is not reproducible");
        if a != seed {
            changed += 1;
        }
    }
    assert!(
        changed >= 60,
        "only {changed}/64 mutations changed the input"
    );
    let mut map = Map::new();
    map.insert("a".into(), json!(1));
    let mut doc = Value::Object(map);
    let before = doc.clone();
    let mut rng = Rng::new(7);
    let mut differs = false;
    for _ in 0..16 {
        mutate_value(&mut rng, &mut doc, &["a", "b"], 0);
        differs |= doc != before;
    }
    assert!(
        differs,
        "structure-aware mutation never changed the document"
    );
}
