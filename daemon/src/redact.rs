//! Redaction of remote output: everything a runner prints passes here before it reaches a
//! terminal, a log, the API or SQLite (docs/security.md, "Secrets").
//!
//! Three rules, all located on the *original* text and then applied together, so one rule's
//! replacement can never hide another rule's match and overlapping secrets are replaced as one
//! region:
//!
//! 1. literal values (at least 8 characters) of the secret env vars named in cloud.yaml;
//! 2. `NAME=value` / `NAME: value` (optional `export `, optional quotes, which are kept) for
//!    those names: only the value is replaced;
//! 3. token shapes (`sk-…`, `ghp_…`, `github_pat_…`, `xoxb-…`) that are not part of a longer
//!    word.
//!
//! Streams go through [`LineRedactor`], which redacts complete lines. A line longer than
//! [`MAX_LINE_BYTES`] is emitted in pieces to bound memory; each piece is redacted together with
//! the tail of the previous one, so a secret cut by the split is still found (see
//! [`LineRedactor`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde_json::Value;

/// What every redacted region is replaced with.
pub const REPLACEMENT: &str = "***REDACTED***";

/// Literal secrets shorter than this (in characters) are not replaced everywhere: short values
/// would shred ordinary output. Their `NAME=value` form is still redacted.
const MIN_LITERAL_CHARS: usize = 8;

/// Values whose name starts with this are literal-only secrets, redacted whatever `names`
/// lists and never matched as `NAME=value`: the string values of the agents' login files
/// (`workflow::agent_auth`). No environment variable name contains `=`, so no secret named in
/// cloud.yaml and read from an environment can collide with one.
pub const LITERAL_ONLY_PREFIX: &str = "=literal:";

/// A streamed line longer than this without a newline is emitted in pieces.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Bytes of the previous piece re-scanned with the next piece of a split line. Must exceed the
/// longest literal secret and the longest `NAME=` header; raised per redactor when needed.
const DEFAULT_OVERLAP_BYTES: usize = 64 * 1024;

/// Upper bound of the whitespace accepted around `export`, the name and the separator of an
/// assignment. Bounding it bounds the header length, which the split-line overlap relies on.
const MAX_HEADER_SPACES: usize = 16;

/// The token-shape rule. Group 1 is the token; the leading group is the "not preceded by a
/// word character" check (the `regex` crate has no look-behind).
static TOKEN_SHAPES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?:^|[^A-Za-z0-9_-])(sk-[A-Za-z0-9_-]{10,}|gh[pousr]_[A-Za-z0-9]{10,}|github_pat_[A-Za-z0-9_]{10,}|xox[baprs]-[A-Za-z0-9-]{10,})",
    )
    .expect("the token-shape pattern is a valid constant regex")
});

fn is_token_boundary_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Characters that may continue an assignment value or a token.
fn is_run_char(c: char) -> bool {
    !c.is_whitespace() && c != '"' && c != '\''
}

/// One match: `protect` is the whole matched text (an assignment includes its `NAME=` header),
/// `replace` the part that is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    protect: Range<usize>,
    replace: Range<usize>,
}

impl Span {
    fn whole(r: Range<usize>) -> Self {
        Span {
            protect: r.clone(),
            replace: r,
        }
    }
}

struct Inner {
    /// Literal secret values, longest first, deduplicated.
    literals: Vec<String>,
    /// One compiled `NAME=value` / `NAME: value` matcher for all secret names (an alternation,
    /// longest name first); group 1 is the value. `None` without names.
    assignments: Option<Regex>,
    /// How many names the matcher covers (for `Debug`).
    names: usize,
    /// Overlap kept between the pieces of a split line.
    overlap_bytes: usize,
}

/// Compiled redactors by registration key, rebuilt only when that key's names or values change.
static CACHE: LazyLock<std::sync::Mutex<HashMap<String, (u64, Redactor)>>> =
    LazyLock::new(Default::default);

/// Entries kept in [`CACHE`] before it is emptied (bounds memory whatever the key count).
const CACHE_MAX_ENTRIES: usize = 4096;

/// The redaction rules for one cloud.yaml. Cheap to clone; shareable across threads.
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Redactor {
    // Never print the secrets themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("literals", &self.inner.literals.len())
            .field("names", &self.inner.names)
            .finish()
    }
}

impl Redactor {
    /// `names` are the secret env var names from cloud.yaml; `values` maps names to the values
    /// known locally (some names may be missing). Values of names not in `names` are ignored,
    /// so passing a whole environment does not redact `PATH` everywhere.
    ///
    /// A multi-line value also contributes each of its lines (at least 8 characters) as a
    /// literal, because streams are redacted line by line (e.g. a PEM key in an env var).
    /// Values named with [`LITERAL_ONLY_PREFIX`] are literals whatever `names` lists.
    pub fn new(names: &[String], values: &BTreeMap<String, String>) -> Self {
        let mut literals: Vec<String> = Vec::new();
        let mut unique_names: Vec<&String> = names
            .iter()
            .filter(|n| !n.is_empty())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let longest_name = unique_names.iter().map(|n| n.len()).max().unwrap_or(0);
        for name in &unique_names {
            let Some(value) = values.get(*name) else {
                continue;
            };
            let lines = if value.contains('\n') {
                value.lines().collect()
            } else {
                Vec::new()
            };
            push_literal_candidates(value, lines, &mut literals);
        }
        for (name, value) in values {
            if name.starts_with(LITERAL_ONLY_PREFIX) {
                push_literal_candidates(value, value.lines().collect(), &mut literals);
            }
        }
        // One matcher for every name: the cost of a line no longer grows with a regex per name.
        unique_names.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        let assignments = (!unique_names.is_empty())
            .then(|| {
                let alternation = unique_names
                    .iter()
                    .map(|n| regex::escape(n))
                    .collect::<Vec<_>>()
                    .join("|");
                let pattern = format!(
                    r#"\b(?:export[ \t]{{1,{sp}}})?(?:{alternation})[ \t]{{0,{sp}}}[:=][ \t]{{0,{sp}}}["']?([^\s"']+)"#,
                    sp = MAX_HEADER_SPACES,
                );
                match regex::RegexBuilder::new(&pattern)
                    .size_limit(64 * 1024 * 1024)
                    .build()
                {
                    Ok(re) => Some(re),
                    // The loader caps names in count and length, so this needs a caller that
                    // skipped it; literal values are still redacted below.
                    Err(e) => {
                        tracing::warn!(
                            "{} secret names cannot be matched as NAME=value: {e}",
                            unique_names.len()
                        );
                        None
                    }
                }
            })
            .flatten();
        literals.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        literals.dedup();
        let longest_literal = literals.first().map_or(0, String::len);
        let longest_header = "export".len() + longest_name + 3 * MAX_HEADER_SPACES + 2;
        let overlap_bytes = DEFAULT_OVERLAP_BYTES
            .max(longest_literal + 1)
            .max(longest_header + 1);
        Redactor {
            inner: Arc::new(Inner {
                literals,
                assignments,
                names: unique_names.len(),
                overlap_bytes,
            }),
        }
    }

    /// [`Redactor::new`] memoised per registration `key`: the matcher is compiled once and
    /// reused until the key's names or values change.
    pub fn cached(key: &str, names: &[String], values: &BTreeMap<String, String>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        names.hash(&mut h);
        values.hash(&mut h);
        let fingerprint = h.finish();
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((f, r)) = cache.get(key)
            && *f == fingerprint
        {
            return r.clone();
        }
        let r = Redactor::new(names, values);
        if cache.len() >= CACHE_MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key.to_string(), (fingerprint, r.clone()));
        r
    }

    /// Whether two redactors are the same compiled rules (the cache handed out the same one).
    pub fn same_rules(&self, other: &Redactor) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A redactor with no configured secrets: only the token-shape rule applies.
    pub fn none() -> Self {
        Self::new(&[], &BTreeMap::new())
    }

    /// Redact one piece of text.
    pub fn redact(&self, text: &str) -> String {
        let spans = self.spans(text);
        render(text, 0..text.len(), spans.iter().map(|s| s.replace.clone()))
    }

    /// Redact every string value inside `v`, recursively. Object keys are left alone. For
    /// passthrough JSON only (an error's `extra`, another version's fields); typed values go
    /// through [`Redact`].
    pub fn redact_json(&self, v: &Value) -> Value {
        let mut out = v.clone();
        out.redact_with(self);
        out
    }

    /// A streaming redactor using these rules.
    pub fn line_redactor(&self) -> LineRedactor {
        LineRedactor::with_limits(
            self.clone(),
            MAX_LINE_BYTES.max(2 * self.inner.overlap_bytes + 8),
            self.inner.overlap_bytes,
        )
    }

    /// Every match of every rule in `text`, in no particular order.
    fn spans(&self, text: &str) -> Vec<Span> {
        let mut spans = Vec::new();
        for literal in &self.inner.literals {
            push_literal_spans(text, literal, &mut spans);
        }
        if let Some(re) = &self.inner.assignments {
            for caps in re.captures_iter(text) {
                if let (Some(all), Some(value)) = (caps.get(0), caps.get(1)) {
                    spans.push(Span {
                        protect: all.range(),
                        replace: value.range(),
                    });
                }
            }
        }
        for caps in TOKEN_SHAPES.captures_iter(text) {
            let Some(token) = caps.get(1) else { continue };
            // The trailing half of the "not inside a longer word" check.
            let followed_by_word = text[token.end()..]
                .chars()
                .next()
                .is_some_and(is_token_boundary_char);
            if !followed_by_word {
                spans.push(Span::whole(token.range()));
            }
        }
        spans
    }
}

/// `value` and `lines` (its lines, when it has several), trimmed, each kept as a literal when it
/// is long enough.
fn push_literal_candidates(value: &str, lines: Vec<&str>, literals: &mut Vec<String>) {
    for candidate in std::iter::once(value).chain(lines) {
        let candidate = candidate.trim();
        if candidate.chars().count() >= MIN_LITERAL_CHARS {
            literals.push(candidate.to_string());
        }
    }
}

/// All occurrences of `literal`, overlapping ones included (merged as they are found, so a
/// repetitive secret in repetitive text costs one span, not one per position).
fn push_literal_spans(text: &str, literal: &str, spans: &mut Vec<Span>) {
    let mut current: Option<Range<usize>> = None;
    let mut from = 0;
    while let Some(offset) = text.get(from..).and_then(|rest| rest.find(literal)) {
        let start = from + offset;
        let end = start + literal.len();
        current = match current {
            Some(r) if start <= r.end => Some(r.start..end.max(r.end)),
            Some(r) => {
                spans.push(Span::whole(r));
                Some(start..end)
            }
            None => Some(start..end),
        };
        // Step one character so overlapping occurrences are found too.
        from = start + text[start..].chars().next().map_or(1, char::len_utf8);
    }
    if let Some(r) = current {
        spans.push(Span::whole(r));
    }
}

/// `text[window]` with every replace range (clipped to the window) replaced by
/// [`REPLACEMENT`]; overlapping or touching ranges become one replacement.
fn render(text: &str, window: Range<usize>, ranges: impl Iterator<Item = Range<usize>>) -> String {
    let mut clipped: Vec<Range<usize>> = ranges
        .map(|r| r.start.max(window.start)..r.end.min(window.end))
        .filter(|r| r.start < r.end)
        .collect();
    clipped.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(clipped.len());
    for r in clipped {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let mut out = String::with_capacity(window.len());
    let mut pos = window.start;
    for r in merged {
        out.push_str(&text[pos..r.start]);
        out.push_str(REPLACEMENT);
        pos = r.end;
    }
    out.push_str(&text[pos..window.end]);
    out
}

/// Largest char boundary of `s` at or below `i`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Length of the prefix of `bytes` that does not end inside an unfinished UTF-8 sequence.
fn complete_utf8_prefix_len(bytes: &[u8]) -> usize {
    let len = bytes.len();
    // A sequence is at most 4 bytes: look at the last 3 for a lead byte that needs more.
    for back in 1..=3.min(len) {
        let b = bytes[len - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: keep looking for its lead
        }
        let needed = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if needed > back { len - back } else { len };
    }
    len
}

/// Streaming redaction: feed arbitrary byte chunks, get back redacted complete lines (each with
/// its `'\n'`); [`LineRedactor::finish`] flushes the unterminated tail. Invalid UTF-8 is
/// converted lossily.
///
/// A line that reaches the length limit without a newline is emitted in pieces (without adding
/// a newline), keeping memory bounded. The last `overlap` bytes of each piece are kept as
/// context and scanned again with the next piece, so any match starting within them is found
/// whole. `overlap` exceeds the longest literal secret and the longest `NAME=` header, so the
/// only matches that can start before the context and continue past the split are tokens and
/// assignment values longer than the overlap; for those the next piece's leading run of
/// value characters is replaced as well.
pub struct LineRedactor {
    redactor: Redactor,
    /// Bytes of the current line not yet emitted.
    buf: Vec<u8>,
    /// Prefix of `buf` already searched for a newline.
    scanned: usize,
    /// Tail of the previous piece of a split line (already emitted, scanned again for context).
    context: String,
    /// A match from before `context` continues into `buf`: redact `buf`'s leading run.
    continues_match: bool,
    max_line: usize,
    overlap: usize,
}

impl LineRedactor {
    fn with_limits(redactor: Redactor, max_line: usize, overlap: usize) -> Self {
        LineRedactor {
            redactor,
            buf: Vec::new(),
            scanned: 0,
            context: String::new(),
            continues_match: false,
            // Each piece must leave room for the overlap and make progress.
            max_line: max_line.max(2 * overlap + 8),
            overlap,
        }
    }

    /// Feed a chunk; returns the redacted lines it completed (possibly empty).
    pub fn push(&mut self, chunk: &[u8]) -> String {
        let mut out = String::new();
        let mut rest = chunk;
        // Append at most up to the line limit at a time so `buf` stays bounded even when a
        // huge chunk has no newline.
        while !rest.is_empty() {
            let room = self.max_line.saturating_sub(self.buf.len()).max(1);
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buf.extend_from_slice(now);
            rest = later;
            self.emit_complete_lines(&mut out);
            while self.buf.len() >= self.max_line {
                self.emit_piece(&mut out);
            }
        }
        out
    }

    /// Flush the unterminated tail (if any), redacted. The redactor can be reused afterwards.
    pub fn finish(&mut self) -> String {
        let tail = std::mem::take(&mut self.buf);
        self.scanned = 0;
        if tail.is_empty() {
            self.context.clear();
            self.continues_match = false;
            return String::new();
        }
        self.redact_line_end(&String::from_utf8_lossy(&tail))
    }

    fn emit_complete_lines(&mut self, out: &mut String) {
        let buf = std::mem::take(&mut self.buf);
        let mut line_start = 0;
        let mut search = self.scanned;
        while let Some(i) = buf[search..].iter().position(|&b| b == b'\n') {
            let end = search + i + 1;
            out.push_str(&self.redact_line_end(&String::from_utf8_lossy(&buf[line_start..end])));
            line_start = end;
            search = end;
        }
        self.buf = buf;
        self.buf.drain(..line_start);
        self.scanned = self.buf.len();
    }

    /// Redact the final piece of a line (the whole line unless it was split).
    fn redact_line_end(&mut self, text: &str) -> String {
        let context = std::mem::take(&mut self.context);
        let continues = std::mem::take(&mut self.continues_match);
        if context.is_empty() && !continues {
            return self.redactor.redact(text);
        }
        let scan = format!("{context}{text}");
        let spans = self.scan_spans(&scan, context.len(), continues);
        render(
            &scan,
            context.len()..scan.len(),
            spans.iter().map(|s| s.replace.clone()),
        )
    }

    /// Emit the front of an over-long line, keeping the rest (and some context) for later.
    fn emit_piece(&mut self, out: &mut String) {
        let window_end = match complete_utf8_prefix_len(&self.buf[..self.max_line]) {
            0 => self.max_line,
            n => n,
        };
        let context_len = self.context.len();
        let scan = format!(
            "{}{}",
            self.context,
            String::from_utf8_lossy(&self.buf[..window_end])
        );
        let spans = self.scan_spans(&scan, context_len, self.continues_match);

        // Cut `overlap` bytes before the end of what we have, so every match starting before the
        // cut and short enough to matter is complete in `scan`.
        let mut cut = floor_char_boundary(&scan, scan.len().saturating_sub(self.overlap));
        if cut <= context_len {
            cut = scan.len();
        }
        let next_context_start = floor_char_boundary(&scan, cut.saturating_sub(self.overlap));
        out.push_str(&render(
            &scan,
            context_len..cut,
            spans.iter().map(|s| s.replace.clone()),
        ));
        self.continues_match = spans
            .iter()
            .any(|s| s.protect.start < next_context_start && s.replace.end > cut);

        let mut remaining = scan.as_bytes()[cut..].to_vec();
        remaining.extend_from_slice(&self.buf[window_end..]);
        self.context = scan[next_context_start..cut].to_string();
        self.buf = remaining;
        self.scanned = self.buf.len();
    }

    /// Spans of `scan` (context followed by new text), plus the continued match, if any.
    fn scan_spans(&self, scan: &str, context_len: usize, continues: bool) -> Vec<Span> {
        let mut spans = self.redactor.spans(scan);
        if continues {
            let run_len: usize = scan[context_len..]
                .chars()
                .take_while(|&c| is_run_char(c))
                .map(char::len_utf8)
                .sum();
            spans.push(Span::whole(context_len..context_len + run_len));
        }
        spans
    }
}

/// Redaction of a typed document: every free-text field passes through the [`Redactor`];
/// closed vocabularies (enums, numbers, booleans) hold no secret and are skipped. Used for
/// what leaves the daemon built from an unredacted observation (the `status --chain` payload,
/// the tick report), instead of a round trip through JSON.
pub trait Redact {
    fn redact_with(&mut self, r: &Redactor);
}

impl Redact for String {
    fn redact_with(&mut self, r: &Redactor) {
        let out = r.redact(self);
        if out != *self {
            *self = out;
        }
    }
}

impl<T: Redact> Redact for Option<T> {
    fn redact_with(&mut self, r: &Redactor) {
        if let Some(t) = self {
            t.redact_with(r);
        }
    }
}

impl<T: Redact> Redact for Vec<T> {
    fn redact_with(&mut self, r: &Redactor) {
        for t in self {
            t.redact_with(r);
        }
    }
}

/// Passthrough objects (the core's chain state, fields of another version).
impl Redact for Value {
    fn redact_with(&mut self, r: &Redactor) {
        match self {
            Value::String(s) => s.redact_with(r),
            Value::Array(items) => items.redact_with(r),
            Value::Object(map) => map.redact_with(r),
            // Null, booleans and numbers hold no text.
            _ => {}
        }
    }
}

impl Redact for serde_json::Map<String, Value> {
    fn redact_with(&mut self, r: &Redactor) {
        for v in self.values_mut() {
            v.redact_with(r);
        }
    }
}

/// `redact_fields!(self, r; a, b, c)`: redact the named fields of a struct.
macro_rules! redact_fields {
    ($s:ident, $r:ident; $($f:ident),* $(,)?) => {
        $( $s.$f.redact_with($r); )*
    };
}

mod typed {
    use super::{Redact, Redactor};
    use megaplan_cloud_api::notification::{DigestChain, Notification, NotificationTick, PrLink};
    use megaplan_cloud_api::report::{
        ChainLogCompat, ChainPosition, LogsInfo, Pause, PrInfo, ProviderConsistency, RunnerInfo,
        SyncInfo, SyncRefresh, TickReport,
    };
    use megaplan_cloud_api::status::{
        ChainPolicy, ChainStatus, ChainSummary, MilestoneEntry, MilestoneRef, PlanStatus,
        ResolvedContext,
    };

    impl Redact for RunnerInfo {
        fn redact_with(&mut self, r: &Redactor) {
            // `status` is a Liveness, `pid` a number.
            redact_fields!(self, r; detail, reason, session, source, target_session, rest);
        }
    }

    impl Redact for PrInfo {
        fn redact_with(&mut self, r: &Redactor) {
            redact_fields!(self, r; merge_probe, pr_head, pr_state, rest);
        }
    }

    impl Redact for ChainLogCompat {
        fn redact_with(&mut self, r: &Redactor) {
            redact_fields!(self, r; path, status);
        }
    }

    impl Redact for LogsInfo {
        fn redact_with(&mut self, r: &Redactor) {
            redact_fields!(self, r; agent_log, chain_log, error, mtime, path, plan_log, tail, workspace, rest);
        }
    }

    impl Redact for SyncInfo {
        fn redact_with(&mut self, r: &Redactor) {
            redact_fields!(self, r; branch_head, last_pushed_commit, pr_head, sync_state, rest);
        }
    }

    impl Redact for SyncRefresh {
        fn redact_with(&mut self, r: &Redactor) {
            redact_fields!(self, r; reason, status);
        }
    }

    impl Redact for ProviderConsistency {
        fn redact_with(&mut self, r: &Redactor) {
            match self {
                ProviderConsistency::Mismatch { reason }
                | ProviderConsistency::Unknown { reason } => reason.redact_with(r),
                ProviderConsistency::Consistent | ProviderConsistency::NotApplicable => {}
            }
        }
    }

    impl Redact for Pause {
        fn redact_with(&mut self, r: &Redactor) {
            redact_fields!(self, r; key, paused_by, reason, since);
        }
    }

    impl Redact for TickReport {
        fn redact_with(&mut self, r: &Redactor) {
            // Closed vocabularies (event, next_action, effective_status) and the milestone
            // position's numbers hold no secret; its label may.
            if let Some(m) = &mut self.milestone {
                m.label.redact_with(r);
            }
            redact_fields!(self, r; error, finished_at, logs, paused, pr, provider_consistency,
                refused_reason, runner, spec, started_at, sync, sync_refresh, warnings, extra);
        }
    }

    impl Redact for PlanStatus {
        fn redact_with(&mut self, r: &Redactor) {
            redact_fields!(self, r; next_step, plan, reason, source, status);
        }
    }

    impl Redact for ChainPolicy {
        fn redact_with(&mut self, r: &Redactor) {
            self.review_policy.clean_milestone_pr.redact_with(r);
            redact_fields!(self, r; prerequisite_policy, source, validation_policy);
        }
    }

    impl Redact for MilestoneRef {
        fn redact_with(&mut self, r: &Redactor) {
            redact_fields!(self, r; branch, label, rest);
        }
    }

    impl Redact for MilestoneEntry {
        fn redact_with(&mut self, r: &Redactor) {
            redact_fields!(self, r; label, status);
        }
    }

    impl Redact for ChainSummary {
        fn redact_with(&mut self, r: &Redactor) {
            redact_fields!(self, r; base_branch, completed, current_milestone, current_plan_name,
                last_state, per_milestone, policy, pr_state, remaining, seed_plan, sync, rest);
        }
    }

    impl Redact for ResolvedContext {
        fn redact_with(&mut self, r: &Redactor) {
            self.extra_repos.redact_with(r);
        }
    }

    impl Redact for ChainPosition {
        fn redact_with(&mut self, r: &Redactor) {
            self.label.redact_with(r);
        }
    }

    impl Redact for PrLink {
        fn redact_with(&mut self, r: &Redactor) {
            self.url.redact_with(r);
        }
    }

    impl Redact for NotificationTick {
        fn redact_with(&mut self, r: &Redactor) {
            // `event` and `next_action` are closed words.
            redact_fields!(self, r; trigger, finished_at, refused_reason);
        }
    }

    impl Redact for DigestChain {
        fn redact_with(&mut self, r: &Redactor) {
            redact_fields!(self, r; key, chain, milestone, state, cloud_yaml);
        }
    }

    impl Redact for Notification {
        fn redact_with(&mut self, r: &Redactor) {
            // `schema` is a constant and `event` a closed word; every other text may quote a
            // chain's files or the runner (the idempotency key and id too, as every string
            // of the body always was).
            redact_fields!(self, r; chain, milestone, effective_status, pr, fix, title, message,
                idempotency_key, id, key, spec, tick, details, digest, created_at, cloud_yaml);
        }
    }

    impl Redact for ChainStatus {
        fn redact_with(&mut self, r: &Redactor) {
            // `effective_status` and the stall numbers are closed; everything else may quote
            // the runner.
            redact_fields!(self, r; chain_state, logs, plan_status, policy, pr,
                provider_consistency, resolved_context, resolved_session, resolved_spec,
                resolved_workspace, runner, seed_plan, spec, spec_source, state_file, summary,
                sync, sync_refresh, warnings, rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn redactor(pairs: &[(&str, &str)]) -> Redactor {
        let names: Vec<String> = pairs.iter().map(|(n, _)| n.to_string()).collect();
        let values = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Redactor::new(&names, &values)
    }

    #[test]
    fn literal_only_values_are_redacted_without_a_name_and_never_as_assignments() {
        let mut values = BTreeMap::new();
        values.insert(
            format!("{LITERAL_ONLY_PREFIX}codex-auth:0"),
            "rt_refresh_0123456789".to_string(),
        );
        // A value named with the prefix but multi-line: each line counts too.
        values.insert(
            format!("{LITERAL_ONLY_PREFIX}codex-auth:1"),
            "first-line-secret\nsecond-line-secret".to_string(),
        );
        // An ordinary name not listed in `names` stays ignored.
        values.insert("PATH".to_string(), "/usr/local/bin:/usr/bin".to_string());
        let r = Redactor::new(&[], &values);
        assert_eq!(
            r.redact("token rt_refresh_0123456789 here"),
            format!("token {REPLACEMENT} here")
        );
        let streamed = stream(&r, &[b"a first-line-secret\nb second-line-secret\n"]);
        assert_eq!(streamed, format!("a {REPLACEMENT}\nb {REPLACEMENT}\n"));
        assert!(r.redact("/usr/local/bin:/usr/bin").contains("/usr/bin"));
        // The prefix is no `NAME=value` rule: the text after such a "name" is kept.
        let name = format!("{LITERAL_ONLY_PREFIX}codex-auth:0=visible-text");
        assert_eq!(r.redact(&name), name);
    }

    fn stream(r: &Redactor, chunks: &[&[u8]]) -> String {
        let mut lr = r.line_redactor();
        let mut out = String::new();
        for c in chunks {
            out.push_str(&lr.push(c));
        }
        out.push_str(&lr.finish());
        out
    }

    #[test]
    fn redactors_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Redactor>();
        fn assert_send<T: Send>() {}
        assert_send::<LineRedactor>();
    }

    #[test]
    fn one_matcher_covers_every_name_and_is_cached_per_key() {
        let names: Vec<String> = (0..256).map(|i| format!("SECRET_{i}")).collect();
        let values: BTreeMap<String, String> = [("SECRET_7".to_string(), "v".to_string())].into();
        let r = Redactor::cached("0123456789abcdef", &names, &values);
        assert_eq!(
            r.redact("SECRET_255=abc SECRET_7: x export SECRET_0='q' SECRET_2560=keep"),
            "SECRET_255=***REDACTED*** SECRET_7: ***REDACTED*** export SECRET_0='***REDACTED***' SECRET_2560=keep"
        );
        // Same key, same names and values: the compiled matcher is reused, not rebuilt.
        let again = Redactor::cached("0123456789abcdef", &names, &values);
        assert!(r.same_rules(&again));
        // New values (a client handed over others): rebuilt.
        let values2: BTreeMap<String, String> =
            [("SECRET_7".to_string(), "a-new-long-value".to_string())].into();
        let changed = Redactor::cached("0123456789abcdef", &names, &values2);
        assert!(!r.same_rules(&changed));
        assert_eq!(changed.redact("x a-new-long-value y"), "x ***REDACTED*** y");
        assert!(format!("{changed:?}").contains("names: 256"));
    }

    #[test]
    fn names_that_prefix_each_other_are_both_matched() {
        let r = redactor(&[("AB", "1"), ("ABC", "2"), ("A", "3")]);
        assert_eq!(
            r.redact("A=x AB=y ABC=z ABCD=keep"),
            "A=***REDACTED*** AB=***REDACTED*** ABC=***REDACTED*** ABCD=keep"
        );
    }

    #[test]
    fn literal_values_are_replaced_everywhere() {
        let r = redactor(&[("API_TOKEN", "s3cr3t-value-123")]);
        assert_eq!(
            r.redact("a s3cr3t-value-123 b (s3cr3t-value-123)"),
            "a ***REDACTED*** b (***REDACTED***)"
        );
    }

    #[test]
    fn values_of_unnamed_variables_are_not_literals() {
        let names = vec!["API_TOKEN".to_string()];
        let values = BTreeMap::from([("PATH".to_string(), "/usr/local/bin".to_string())]);
        let r = Redactor::new(&names, &values);
        assert_eq!(r.redact("PATH is /usr/local/bin"), "PATH is /usr/local/bin");
    }

    #[test]
    fn longest_secret_wins_when_one_contains_another() {
        let r = redactor(&[("SHORT", "abcdefgh"), ("LONG", "abcdefgh-and-more")]);
        assert_eq!(r.redact("x abcdefgh-and-more y"), "x ***REDACTED*** y");
        assert_eq!(r.redact("x abcdefgh y"), "x ***REDACTED*** y");
    }

    #[test]
    fn overlapping_secrets_are_replaced_as_one_region() {
        let r = redactor(&[("A", "abcdefgh"), ("B", "efghijkl")]);
        assert_eq!(r.redact("<abcdefghijkl>"), "<***REDACTED***>");
        // Overlapping occurrences of one secret are all covered, not just every other one.
        let r = redactor(&[("A", "abababab")]);
        assert_eq!(r.redact("<ababababab>"), "<***REDACTED***>");
    }

    #[test]
    fn name_equals_value_replaces_only_the_value() {
        let r = redactor(&[("API_TOKEN", "")]);
        assert_eq!(
            r.redact("API_TOKEN=abc123 next"),
            "API_TOKEN=***REDACTED*** next"
        );
        assert_eq!(
            r.redact("export API_TOKEN=abc123"),
            "export API_TOKEN=***REDACTED***"
        );
        assert_eq!(r.redact("API_TOKEN = abc"), "API_TOKEN = ***REDACTED***");
    }

    #[test]
    fn name_colon_value_is_redacted() {
        let r = redactor(&[("GH_TOKEN", "")]);
        assert_eq!(r.redact("GH_TOKEN: hunter2"), "GH_TOKEN: ***REDACTED***");
        assert_eq!(
            r.redact("  GH_TOKEN:hunter2\n"),
            "  GH_TOKEN:***REDACTED***\n"
        );
    }

    #[test]
    fn quotes_around_the_value_are_kept() {
        let r = redactor(&[("GH_TOKEN", "")]);
        assert_eq!(
            r.redact(r#"GH_TOKEN="abc""#),
            r#"GH_TOKEN="***REDACTED***""#
        );
        assert_eq!(r.redact("GH_TOKEN: 'abc'"), "GH_TOKEN: '***REDACTED***'");
    }

    #[test]
    fn names_inside_longer_words_are_not_assignments() {
        let r = redactor(&[("TOKEN", "")]);
        assert_eq!(r.redact("MY_TOKEN=visible"), "MY_TOKEN=visible");
        assert_eq!(r.redact("TOKEN=hidden"), "TOKEN=***REDACTED***");
    }

    #[test]
    fn short_values_are_not_literals_but_their_assignment_is_redacted() {
        let r = redactor(&[("PIN", "1234567")]);
        assert_eq!(r.redact("code 1234567 here"), "code 1234567 here");
        assert_eq!(r.redact("PIN=1234567"), "PIN=***REDACTED***");
    }

    #[test]
    fn token_shapes_are_redacted() {
        let r = Redactor::none();
        for token in [
            "sk-abcdefghij0123",
            "sk-proj-abc_def-ghi",
            "ghp_abcdefghij0123",
            "gho_ABCDEFGHIJ",
            "ghs_0123456789",
            "github_pat_11ABC_defghij",
            "xoxb-1234-5678-abcdef",
            "xoxp-0123456789",
        ] {
            assert_eq!(
                r.redact(&format!("token {token}.")),
                "token ***REDACTED***.",
                "{token}"
            );
            assert_eq!(r.redact(token), REPLACEMENT, "{token} alone");
        }
    }

    #[test]
    fn token_shapes_inside_longer_words_are_kept() {
        let r = Redactor::none();
        for text in [
            "task-abcdefghij0123",
            "xghp_abcdefghij0123",
            "ghp_abcdefghij0123_suffix",
            "ghp_abcdefghij0123-suffix",
            "sk-short",
            "xoxz-abcdefghijkl",
        ] {
            assert_eq!(r.redact(text), text);
        }
    }

    #[test]
    fn all_three_rules_apply_together() {
        let r = redactor(&[("OPENAI_API_KEY", "literal-secret-1")]);
        assert_eq!(
            r.redact("OPENAI_API_KEY=other sk-abcdefghijklmn literal-secret-1"),
            "OPENAI_API_KEY=***REDACTED*** ***REDACTED*** ***REDACTED***"
        );
    }

    #[test]
    fn multiline_values_are_redacted_line_by_line_in_streams() {
        let key = "-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\nEEEEFFFFGGGGHHHH\n-----END KEY-----";
        let r = redactor(&[("SSH_KEY", key)]);
        let out = stream(&r, &[format!("cat:\n{key}\ndone\n").as_bytes()]);
        assert!(!out.contains("AAAABBBB"), "{out}");
        assert!(!out.contains("EEEEFFFF"), "{out}");
        assert!(out.ends_with("done\n"));
    }

    #[test]
    fn redact_json_redacts_string_values_not_keys() {
        let r = redactor(&[("API_TOKEN", "s3cr3t-value-123")]);
        let v = serde_json::json!({
            "s3cr3t-value-123": "s3cr3t-value-123",
            "list": ["x sk-abcdefghijklmn", 3, null, {"deep": "API_TOKEN=zzz"}],
        });
        assert_eq!(
            r.redact_json(&v),
            serde_json::json!({
                "s3cr3t-value-123": REPLACEMENT,
                "list": ["x ***REDACTED***", 3, null, {"deep": "API_TOKEN=***REDACTED***"}],
            })
        );
    }

    #[test]
    fn stream_emits_only_complete_lines_until_finish() {
        let r = redactor(&[("API_TOKEN", "s3cr3t-value-123")]);
        let mut lr = r.line_redactor();
        assert_eq!(lr.push(b"one s3cr3t-"), "");
        assert_eq!(lr.push(b"value-123 two\nthree"), "one ***REDACTED*** two\n");
        assert_eq!(lr.push(b" API_TOKEN=abc"), "");
        assert_eq!(lr.finish(), "three API_TOKEN=***REDACTED***");
        assert_eq!(lr.finish(), "");
    }

    #[test]
    fn stream_converts_invalid_utf8_per_line() {
        let r = Redactor::none();
        // "é" split across two chunks must survive; a lone 0xFF becomes U+FFFD.
        let out = stream(&r, &[b"caf\xC3", b"\xA9 \xFF ok\n", b"sk-abcdefghijkl\n"]);
        assert_eq!(out, "café \u{FFFD} ok\n***REDACTED***\n");
    }

    #[test]
    fn over_long_lines_are_split_without_leaking_a_literal() {
        let secret = "Zq9-secret-value";
        let r = redactor(&[("API_TOKEN", secret)]);
        let mut text = String::new();
        for i in 0..400 {
            text.push_str(&format!("{i}:{secret};"));
        }
        let mut lr = LineRedactor::with_limits(r.clone(), 64, 20);
        let mut out = String::new();
        let mut peak = 0;
        for b in text.as_bytes().chunks(7) {
            out.push_str(&lr.push(b));
            peak = peak.max(lr.buf.len() + lr.context.len());
        }
        out.push_str(&lr.finish());
        assert!(!out.contains("Zq9"), "{out}");
        assert!(!out.contains("secret"), "{out}");
        assert!(peak <= 64 + 20, "buffered {peak} bytes");
        // Nothing but secrets was removed.
        assert_eq!(
            out.replace(REPLACEMENT, ""),
            r.redact(&text).replace(REPLACEMENT, "")
        );
    }

    #[test]
    fn over_long_tokens_and_values_do_not_leak_past_a_split() {
        let r = redactor(&[("API_TOKEN", "")]);
        let body = "Q".repeat(500);
        for text in [
            format!("x sk-{body} after"),
            format!("x API_TOKEN={body} after"),
            format!("x API_TOKEN: \"{body}\" after"),
        ] {
            let mut lr = LineRedactor::with_limits(r.clone(), 64, 20);
            let mut out = lr.push(text.as_bytes());
            out.push_str(&lr.finish());
            assert!(!out.contains('Q'), "{text} -> {out}");
            assert!(out.starts_with("x "), "{out}");
            assert!(out.ends_with(" after"), "{out}");
        }
    }

    #[test]
    fn default_limit_splits_a_huge_line_and_still_redacts() {
        let r = redactor(&[("API_TOKEN", "literal-secret-1")]);
        let mut lr = r.line_redactor();
        let filler = "a ".repeat(MAX_LINE_BYTES / 2 - 5);
        let text = format!("{filler}literal-secret-1 and more\n");
        let out = lr.push(text.as_bytes()) + &lr.finish();
        assert!(!out.contains("literal-secret-1"));
        assert!(out.ends_with("***REDACTED*** and more\n"));
    }

    #[test]
    fn complete_utf8_prefix_len_stops_before_unfinished_sequences() {
        assert_eq!(complete_utf8_prefix_len(b"abc"), 3);
        assert_eq!(complete_utf8_prefix_len(b"ab\xC3"), 2);
        assert_eq!(complete_utf8_prefix_len(b"ab\xC3\xA9"), 4);
        assert_eq!(complete_utf8_prefix_len(b"a\xE2\x82"), 1);
        assert_eq!(complete_utf8_prefix_len(b"a\xE2\x82\xAC"), 4);
        assert_eq!(complete_utf8_prefix_len(b"\xF0\x9F\x98"), 0);
        assert_eq!(complete_utf8_prefix_len(b"\xFF"), 1);
        assert_eq!(complete_utf8_prefix_len(b""), 0);
    }

    /// Printable, non-whitespace, without `*` (a secret made of pieces of the replacement text
    /// could reappear next to a replacement; real secrets are not like that).
    fn secret_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                proptest::char::range('!', ')'),
                proptest::char::range('+', '~'),
                Just('é'),
                Just('€'),
            ],
            8..40,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    /// Like [`secret_strategy`] but without `a`-`z` and spaces (the filler of the split test).
    fn disjoint_secret_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                proptest::char::range('!', ')'),
                proptest::char::range('+', '`'),
                proptest::char::range('{', '~'),
                Just('é'),
                Just('€'),
            ],
            8..40,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                proptest::char::range(' ', '~'),
                Just('\n'),
                Just('\t'),
                Just('ü'),
            ],
            0..200,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #[test]
        fn streamed_output_equals_whole_text_redaction_and_never_leaks(
            secret in secret_strategy(),
            pieces in proptest::collection::vec(text_strategy(), 1..5),
            cuts in proptest::collection::vec(0usize..2000, 0..12),
        ) {
            // The secret sits between random pieces, sometimes glued to them.
            let text = pieces.join(&secret);
            let text = format!("{secret}{text}{secret}");
            let r = redactor(&[("MY_SECRET", &secret)]);

            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts {
                chunks.push(&bytes[prev..c]);
                prev = c;
            }
            chunks.push(&bytes[prev..]);

            let streamed = stream(&r, &chunks);
            let whole = r.redact(&text);
            prop_assert!(!streamed.contains(&secret), "{streamed:?}");
            prop_assert_eq!(streamed, whole);
        }

        #[test]
        fn split_long_lines_never_leak(
            secret in disjoint_secret_strategy(),
            pieces in proptest::collection::vec("[a-z ]{0,200}", 1..8),
            chunk in 1usize..50,
        ) {
            let text = pieces.join(&secret);
            let r = redactor(&[("MY_SECRET", &secret)]);
            let mut lr = LineRedactor::with_limits(r, 300, 130);
            let mut out = String::new();
            for c in text.as_bytes().chunks(chunk) {
                out.push_str(&lr.push(c));
            }
            out.push_str(&lr.finish());
            // Secrets share no character with the surrounding text, so any leaked fragment of
            // one would show, and nothing else may be lost.
            prop_assert_eq!(out.replace(REPLACEMENT, ""), pieces.concat());
        }
    }

    /// The typed redaction reaches every free-text field of a tick report and a status
    /// payload (nested, in maps of another version, in a pause) and leaves the closed words.
    #[test]
    fn typed_documents_are_redacted_field_by_field() {
        use megaplan_cloud_api::report::{Rule, TickReport};
        use megaplan_cloud_api::status::ChainStatus;
        let secret = "hunter2-very-secret";
        let r = redactor(&[("API_TOKEN", secret)]);
        let mut report: TickReport = serde_json::from_value(serde_json::json!({
            "acted": false, "effective_status": "running", "event": "supervisor_blocked",
            "next_action": "blocked", "rule": "stale_live_runner", "success": true,
            "refused_reason": format!("said {secret}"),
            "runner": {"status": "alive", "reason": format!("tmux: {secret}"), "odd": [secret]},
            "logs": {"path": format!("/w/{secret}.log"), "chain_log": {"path": secret},
                     "tail": ["ok", format!("token={secret}")]},
            "sync": {"branch_head": secret, "dirty_flag": true},
            "sync_refresh": {"status": "failed", "reason": secret},
            "paused": {"paused_by": "ops", "reason": secret, "since": "t"},
            "warnings": [secret],
            "provider_consistency": {"status": "mismatch", "reason": secret},
            "future": {"deep": [secret]},
        }))
        .unwrap();
        report.redact_with(&r);
        let text = serde_json::to_string(&report).unwrap();
        assert!(!text.contains(secret), "{text}");
        assert_eq!(report.rule, Some(Rule::StaleLiveRunner));
        assert_eq!(report.event.as_str(), "supervisor_blocked");
        assert_eq!(
            report.runner.status,
            Some(megaplan_cloud_api::report::Liveness::Alive)
        );

        let mut status: ChainStatus = serde_json::from_str(
            &include_str!("../../api/src/status_payload.json").replace("megaplan-chain", secret),
        )
        .unwrap();
        status.redact_with(&r);
        let text = serde_json::to_string(&status).unwrap();
        assert!(!text.contains(secret), "{text}");
        assert_eq!(status.effective_status.as_str(), "awaiting_pr_merge");
        assert_eq!(status.runner.session.as_deref(), Some(REPLACEMENT));
    }
}
