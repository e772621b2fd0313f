//! cloud.yaml: the model, its defaults, and the loader that checks every rule.
//!
//! Loading goes text → `serde_json::Value` (via [`crate::yaml`]) → a field-by-field walk that
//! applies defaults and names the exact field in every error (`repo.url is required`). A typed
//! serde derive would report "invalid type at line 3" instead of the field and its fix.

use crate::yaml;
use crate::yaml::type_name;
pub use error::ConfigError;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod error;
pub mod kubernetes;
pub mod supervise;
pub use kubernetes::Kubernetes;
pub use supervise::Supervise;

/// The core's module names, in the order the runner is probed for them when
/// `megaplan.launcher` is unset (see `chain::launcher`): the real package at the reference
/// commit ships `arnold_pipelines.megaplan`; the original tool's documentation writes
/// `arnold.pipelines.megaplan`.
pub const CORE_MODULES: [&str; 2] = ["arnold_pipelines.megaplan", "arnold.pipelines.megaplan"];

pub const TOOLCHAIN_ALIASES: [&str; 3] = ["rust", "go", "java"];
pub const PROVIDERS: [&str; 4] = ["railway", "local", "ssh", "kubernetes"];
pub const REASONING_LEVELS: [&str; 4] = ["minimal", "low", "medium", "high"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Railway,
    Local,
    Ssh,
    Kubernetes,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Railway => "railway",
            ProviderKind::Local => "local",
            ProviderKind::Ssh => "ssh",
            ProviderKind::Kubernetes => "kubernetes",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Auto,
    Chain,
    Idle,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Chain => "chain",
            Mode::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Toolchain {
    Alias(String),
    Custom { name: String, install: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Repo {
    pub url: String,
    pub branch: String,
    pub workspace: String,
}

/// An additional repository cloned next to the main one (`extra_repos:` list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtraRepo {
    pub url: String,
    pub branch: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agents {
    pub default: String,
    /// Per-step overrides (`plan`, `review`, `execute`, `loop_execute`, ...).
    pub steps: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Codex {
    pub model: String,
    pub reasoning: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Megaplan {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub codex_auth: String,
    /// `megaplan.launcher` as written; `None`: probe the runner for one of [`CORE_MODULES`].
    pub launcher: Option<String>,
}

/// A launcher as shell words, each quoted (a no-op for the characters [`check_launcher`] lets
/// through, so `NAME=value` words stay assignments): what every remote command line that runs
/// the core starts with. Never put a launcher into a command line any other way.
pub fn launcher_command(launcher: &str) -> String {
    let words: Vec<&str> = launcher.split_whitespace().collect();
    crate::shell::join(&words)
}

/// Most words a launcher may have, and its longest length.
const LAUNCHER_MAX_WORDS: usize = 16;
const LAUNCHER_MAX_BYTES: usize = 512;

/// `megaplan.launcher` is run on the runner as the start of shell command lines: it must be
/// plain words (a program, its flags, `NAME=value` assignments), never shell syntax. Words are
/// made of letters, digits and `@%+=:,./_-`, the characters that need no quoting, so the
/// quoted command line ([`Megaplan::launcher_command`]) is exactly what the user wrote.
pub fn check_launcher(file: &Path, launcher: &str) -> Result<String, ConfigError> {
    const FIELD: &str = "megaplan.launcher";
    let words: Vec<&str> = launcher.split_whitespace().collect();
    let refuse = |why: String| {
        invalid_field(
            file,
            FIELD,
            format!(
                "{FIELD} {why}; it must be plain words such as `python -m {}` (letters, digits and @%+=:,./_- only, no quotes, `;`, `$`, `|`, `&`, redirections or backticks)",
                CORE_MODULES[1]
            ),
        )
    };
    if words.is_empty() {
        return Err(refuse("is empty".into()));
    }
    if words.len() > LAUNCHER_MAX_WORDS || launcher.len() > LAUNCHER_MAX_BYTES {
        return Err(refuse(format!(
            "is too long (at most {LAUNCHER_MAX_WORDS} words, {LAUNCHER_MAX_BYTES} bytes)"
        )));
    }
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b);
    if let Some(bad) = words.iter().find(|w| !w.bytes().all(safe)) {
        return Err(refuse(format!(
            "has the word {bad:?}, which holds shell syntax"
        )));
    }
    if launcher.contains(['\n', '\r']) {
        return Err(refuse("spans several lines".into()));
    }
    Ok(words.join(" "))
}

/// A registered cloud.yaml decides what the daemon runs unattended, so only its owner may
/// change it: refuse one that group or others may write, or that another user owns.
pub fn check_registered_file(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::RegisteredUnreadable {
        file: path.to_path_buf(),
        why: e.to_string(),
    })?;
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let refuse = |why: String| ConfigError::Unprotected {
        file: path.to_path_buf(),
        why,
        foreign_owner: meta.uid() != me,
    };
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "it is writable by {} (mode {:04o})",
            if meta.mode() & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        )));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(refuse(format!(
            "it is owned by uid {}, not by you (uid {me})",
            meta.uid()
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Auto {
    pub plan_name: Option<String>,
    pub idea_file: Option<String>,
    pub robustness: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainCfg {
    pub spec: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub volume: Option<String>,
    pub port: u16,
    /// Docker network for the runner container (`docker run --network`, compose `network_mode`).
    /// `none` also drops the port mapping. Unset = the engine's default bridge.
    pub network: Option<String>,
}

/// `preflight:`: the floors the launch gate checks on the runner before every launch
/// (runner/fence.rs; docs/operations.md "Preflight").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Preflight {
    /// `preflight.min_free_disk`: bytes free in the workspace (default 1 GiB).
    pub min_free_disk: u64,
    /// `preflight.min_free_inodes`: inodes free in the workspace (default 10 000).
    pub min_free_inodes: u64,
}

/// A value as an error message shows it: strings and numbers as written, else their type.
fn shown(v: &Value) -> String {
    match v {
        Value::String(t) => format!("{t:?}"),
        Value::Number(n) => n.to_string(),
        other => type_name(other).to_string(),
    }
}

/// `preflight.min_free_disk` when unset: 1 GiB.
pub const DEFAULT_MIN_FREE_DISK: u64 = 1 << 30;
/// `preflight.min_free_inodes` when unset.
pub const DEFAULT_MIN_FREE_INODES: u64 = 10_000;

impl Default for Preflight {
    fn default() -> Preflight {
        Preflight {
            min_free_disk: DEFAULT_MIN_FREE_DISK,
            min_free_inodes: DEFAULT_MIN_FREE_INODES,
        }
    }
}

/// A size: an integer number of bytes, or a number with a unit (`500MiB`, `1GiB`, `2GB`,
/// `1PiB`; binary and decimal units, case-insensitive, `B` optional).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1000,
        "ki" => 1 << 10,
        "m" => 1000_u64.pow(2),
        "mi" => 1 << 20,
        "g" => 1000_u64.pow(3),
        "gi" => 1 << 30,
        "t" => 1000_u64.pow(4),
        "ti" => 1 << 40,
        "p" => 1000_u64.pow(5),
        "pi" => 1 << 50,
        _ => return None,
    };
    if !num.is_finite() || num < 0.0 || (unit.is_empty() && num.fract() != 0.0) {
        return None;
    }
    let bytes = num * mult as f64;
    (bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Railway {
    pub service: String,
    pub session: String,
    pub project: Option<String>,
    pub environment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Local {
    pub compose_project: String,
    pub workdir: String,
}

/// sshd's own default `MaxSessions`: `ssh.max_sessions` when unset.
pub const DEFAULT_MAX_SESSIONS: u32 = 10;

/// The smallest `ssh.max_sessions`: the daemon keeps two sessions free (`attach` and a spare,
/// provider/budget.rs) and needs one for itself.
pub const MIN_MAX_SESSIONS: u32 = 3;

/// The largest `ssh.max_sessions` accepted.
pub const MAX_MAX_SESSIONS: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ssh {
    pub host: String,
    pub user: Option<String>,
    pub port: u16,
    pub identity_file: Option<String>,
    pub remote_dir: String,
    pub container: String,
    /// The server's `MaxSessions` (sshd default 10): the daemon keeps its sessions on the held
    /// connection below it (provider/budget.rs).
    pub max_sessions: u32,
}

/// Image options the original tool does not have (documented in docs/configuration.md,
/// "image (ours)").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Image {
    /// Base image of the rendered Dockerfile.
    pub base: String,
    /// A Dockerfile of the operator's own, used instead of the rendered one (absolute, or
    /// relative to the cloud.yaml's folder). entrypoint.sh and health_server.py are still
    /// rendered next to it so it can COPY them.
    pub dockerfile: Option<PathBuf>,
}

pub const DEFAULT_BASE_IMAGE: &str = "python:3.11-slim-bookworm";

/// A validated cloud.yaml with every default applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloudSpec {
    /// Absolute path of the file this came from.
    pub path: PathBuf,
    pub provider: ProviderKind,
    pub mode: Mode,
    pub secrets: Vec<String>,
    pub toolchains: Vec<Toolchain>,
    pub repo: Repo,
    pub extra_repos: Vec<ExtraRepo>,
    pub agents: Agents,
    pub codex: Codex,
    pub megaplan: Megaplan,
    pub auto: Auto,
    pub chain: ChainCfg,
    pub resources: Resources,
    pub railway: Railway,
    pub local: Local,
    pub ssh: Option<Ssh>,
    pub image: Image,
    pub preflight: Preflight,
    /// The `kubernetes:` section (always present with provider: kubernetes).
    pub kubernetes: Option<Kubernetes>,
    /// The `supervise:` section: lease TTL, quarantine and restart back-off.
    pub supervise: Supervise,
    /// Non-fatal findings (unknown keys), reported on stderr by commands.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl CloudSpec {
    /// The marker key of this cloud.yaml: of its path with symlinks followed, as the original
    /// computes it (clients send that path already; this keeps older callers right too).
    pub fn key(&self) -> String {
        megaplan_cloud_api::paths::resolved_marker_key(&self.path)
    }
}

fn invalid_field(file: &Path, field: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::field(file, field, message)
}

/// Largest cloud.yaml, chain spec, idea file or marker the daemon reads.
pub const MAX_INPUT_BYTES: u64 = 1024 * 1024;

/// At most this many names under `secrets:` (each one is matched in every line of remote output).
pub const MAX_SECRETS: usize = 256;

/// Longest accepted secret name.
pub const MAX_SECRET_NAME_BYTES: usize = 128;

/// Read a local input file with bounds: opened non-blocking (a FIFO cannot stall the open), it
/// must be a regular file (not a FIFO, device or folder) of at most `max` bytes, and no more than
/// `max` bytes are ever read (a file growing meanwhile is refused). Refusals are
/// `ErrorKind::InvalidInput` errors whose text says what is wrong.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid(
            "it is not a regular file (a FIFO, device, socket or folder); point at a plain file"
                .to_string(),
        ));
    }
    if meta.len() > max {
        return Err(invalid(format!(
            "it is {} bytes, over the limit of {max} bytes",
            meta.len()
        )));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(invalid(format!(
            "it grew past the limit of {max} bytes while being read"
        )));
    }
    Ok(buf)
}

/// [`load`] on a blocking thread: handlers and ticks call this, so a slow file system never
/// stalls the async threads.
pub async fn load_async(path: &Path) -> Result<CloudSpec, ConfigError> {
    let owned = path.to_path_buf();
    match tokio::task::spawn_blocking(move || load(&owned)).await {
        Ok(r) => r,
        Err(e) => Err(ConfigError::LoadFailed {
            file: path.to_path_buf(),
            why: e.to_string(),
        }),
    }
}

/// Read and validate the cloud.yaml at `path` (must be absolute).
pub fn load(path: &Path) -> Result<CloudSpec, ConfigError> {
    let bytes = read_bounded(path, MAX_INPUT_BYTES).map_err(|e| ConfigError::Unreadable {
        file: path.to_path_buf(),
        why: e.to_string(),
    })?;
    parse_bytes(&bytes, path)
}

/// Validate cloud.yaml content; `path` names the file in errors and anchors relative paths.
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<CloudSpec, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 {
        file: path.to_path_buf(),
        offset: e.valid_up_to(),
    })?;
    let doc = yaml::parse(text).map_err(|e| ConfigError::NotYaml {
        file: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let root = match doc {
        Value::Null => Map::new(),
        Value::Object(m) => m,
        other => {
            return Err(ConfigError::NotAMapping {
                file: path.to_path_buf(),
                found: type_name(&other),
            });
        }
    };
    Walker {
        file: path,
        warnings: Vec::new(),
    }
    .spec(&root)
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "provider",
    "mode",
    "secrets",
    "toolchains",
    "repo",
    "extra_repos",
    "agents",
    "codex",
    "megaplan",
    "auto",
    "chain",
    "resources",
    "railway",
    "local",
    "ssh",
    "image",
    "kubernetes",
    "preflight",
    "supervise",
    // Read by the original only; each gets its own warning (see `ORIGINAL_ONLY_KEYS`).
    "chain_session",
    "driver",
];

/// Keys the original Python tool reads that megaplan-cloudd does not use, each with what to do
/// instead. docs/configuration.md lists them too.
pub const ORIGINAL_ONLY_KEYS: &[(&str, &str)] = &[
    (
        "chain_session",
        "megaplan-cloudd runs every chain in tmux session megaplan-chain and refuses a second chain on the same runner as a collision; remove the key, and give each chain its own runner (ssh.container, local.compose_project or railway.service)",
    ),
    (
        "chain.chain_session",
        "megaplan-cloudd runs every chain in tmux session megaplan-chain; remove the key (see chain_session)",
    ),
    (
        "driver",
        "megaplan-cloudd does not rewrite the chain spec's driver settings; put `driver: {max_stall_iterations: N}` in the chain spec itself, where the core reads it",
    ),
    (
        "megaplan.repo",
        "the runner image installs megaplan at build time from megaplan.ref; to run another source, point image.dockerfile at a Dockerfile that installs it",
    ),
    (
        "megaplan.install_spec",
        "the runner image installs megaplan from megaplan.ref; for another pip spec, point image.dockerfile at a Dockerfile that installs it",
    ),
    (
        "megaplan.src_path",
        "there is no on-volume megaplan source clone; megaplan is installed in the image (see megaplan.ref, image.dockerfile)",
    ),
    (
        "ssh.workspace_dir",
        "the runner's workspace is `<ssh.remote_dir>/workspace` on the docker host, or the Docker volume resources.volume; set one of those instead",
    ),
    (
        "ssh.cache_dir",
        "pip and npm caches are not mounted from the docker host; remove the key",
    ),
];

struct Walker<'a> {
    file: &'a Path,
    warnings: Vec<String>,
}

impl Walker<'_> {
    fn err(&self, field: &str, message: impl std::fmt::Display) -> ConfigError {
        invalid_field(self.file, field, message)
    }

    /// A sub-mapping; absent or null = empty.
    fn section<'v>(
        &mut self,
        root: &'v Map<String, Value>,
        name: &str,
        known: &[&str],
    ) -> Result<Option<&'v Map<String, Value>>, ConfigError> {
        match root.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => {
                for k in m.keys() {
                    if !known.is_empty() && !known.contains(&k.as_str()) {
                        self.warnings.push(format!(
                            "unknown field {name}.{k} in {} (ignored); known: {}",
                            self.file.display(),
                            known.join(", ")
                        ));
                    }
                }
                Ok(Some(m))
            }
            Some(other) => Err(self.err(
                name,
                format!("{name} must be a mapping, found {}", type_name(other)),
            )),
        }
    }

    /// An optional string; numbers and booleans are refused so `branch: 1.0` is not silently
    /// turned into "1". Empty strings count as absent only when `allow_empty` is false.
    fn opt_str(
        &self,
        sec: Option<&Map<String, Value>>,
        field: &str,
    ) -> Result<Option<String>, ConfigError> {
        let key = field.rsplit('.').next().unwrap_or(field);
        match sec.and_then(|m| m.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Err(self.err(
                field,
                format!("{field} must not be empty; remove it to use the default"),
            )),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.err(
                field,
                format!(
                    "{field} must be a string, found {}; quote it, e.g. {key}: \"...\"",
                    type_name(other)
                ),
            )),
        }
    }

    fn str_or(
        &self,
        sec: Option<&Map<String, Value>>,
        field: &str,
        default: &str,
    ) -> Result<String, ConfigError> {
        Ok(self
            .opt_str(sec, field)?
            .unwrap_or_else(|| default.to_string()))
    }

    fn choice(
        &self,
        sec: Option<&Map<String, Value>>,
        field: &str,
        default: &str,
        allowed: &[&str],
    ) -> Result<String, ConfigError> {
        let v = self.str_or(sec, field, default)?;
        if allowed.contains(&v.as_str()) {
            Ok(v)
        } else {
            Err(self.err(
                field,
                format!("{field} must be one of {}, found {v:?}", allowed.join(", ")),
            ))
        }
    }

    fn abs_path(&self, field: &str, v: Option<String>) -> Result<Option<String>, ConfigError> {
        match v {
            Some(p) if !p.starts_with('/') => Err(self.err(
                field,
                format!("{field} must be an absolute POSIX path on the runner (starting with /), found {p:?}"),
            )),
            other => Ok(other),
        }
    }

    fn port(
        &self,
        sec: Option<&Map<String, Value>>,
        field: &str,
        default: u16,
    ) -> Result<u16, ConfigError> {
        let key = field.rsplit('.').next().unwrap_or(field);
        match sec.and_then(|m| m.get(key)) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
                _ => Err(self.err(
                    field,
                    format!("{field} must be a positive integer between 1 and 65535, found {n}"),
                )),
            },
            Some(other) => Err(self.err(
                field,
                format!(
                    "{field} must be a positive integer, found {}",
                    type_name(other)
                ),
            )),
        }
    }

    /// `ssh.max_sessions`: an integer in the range the session budget accepts.
    fn max_sessions(&self, sec: Option<&Map<String, Value>>) -> Result<u32, ConfigError> {
        let field = "ssh.max_sessions";
        let range = || {
            format!(
                "{field} must be an integer between {MIN_MAX_SESSIONS} and {MAX_MAX_SESSIONS}: the MaxSessions of the host's sshd (sshd -T | grep maxsessions; OpenSSH's default is {DEFAULT_MAX_SESSIONS})"
            )
        };
        match sec.and_then(|m| m.get("max_sessions")) {
            None | Some(Value::Null) => Ok(DEFAULT_MAX_SESSIONS),
            Some(Value::Number(n)) => match n.as_u64().and_then(|v| u32::try_from(v).ok()) {
                Some(v) if (MIN_MAX_SESSIONS..=MAX_MAX_SESSIONS).contains(&v) => Ok(v),
                _ => Err(self.err(field, format!("{}, found {n}", range()))),
            },
            Some(other) => Err(self.err(field, format!("{}, found {}", range(), type_name(other)))),
        }
    }

    fn string_list(
        &self,
        root: &Map<String, Value>,
        field: &str,
    ) -> Result<Vec<String>, ConfigError> {
        match root.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                    other => Err(self.err(
                        &format!("{field}[{i}]"),
                        format!(
                            "{field}[{i}] must be a non-empty string (an env var name), found {}",
                            type_name(other)
                        ),
                    )),
                })
                .collect(),
            Some(other) => Err(self.err(
                field,
                format!("{field} must be a list, found {}", type_name(other)),
            )),
        }
    }

    fn spec(mut self, root: &Map<String, Value>) -> Result<CloudSpec, ConfigError> {
        for k in root.keys() {
            if !TOP_LEVEL_KEYS.contains(&k.as_str()) {
                self.warnings.push(format!(
                    "unknown top-level field {k:?} in {} (ignored)",
                    self.file.display()
                ));
            }
        }
        let top = Some(root);

        let provider_name = self.str_or(top, "provider", "railway")?;
        let provider = match provider_name.as_str() {
            "railway" => ProviderKind::Railway,
            "local" => ProviderKind::Local,
            "ssh" => ProviderKind::Ssh,
            "kubernetes" => ProviderKind::Kubernetes,
            "fly" => {
                return Err(ConfigError::FutureProvider {
                    file: self.file.to_path_buf(),
                    provider: "fly".to_string(),
                    supported: &PROVIDERS,
                });
            }
            other => {
                return Err(self.err(
                    "provider",
                    format!(
                        "provider must be one of {}, found {other:?}",
                        PROVIDERS.join(", ")
                    ),
                ));
            }
        };
        let mode = match self
            .choice(top, "mode", "idle", &["auto", "chain", "idle"])?
            .as_str()
        {
            "auto" => Mode::Auto,
            "chain" => Mode::Chain,
            _ => Mode::Idle,
        };
        if let Some(Value::Array(items)) = root.get("secrets")
            && items.len() > MAX_SECRETS
        {
            return Err(self.err(
                "secrets",
                format!(
                    "secrets lists {} names, over the limit of {MAX_SECRETS}; list only the variables the runner needs",
                    items.len()
                ),
            ));
        }
        let secrets = self.string_list(root, "secrets")?;
        for (i, s) in secrets.iter().enumerate() {
            if s.len() > MAX_SECRET_NAME_BYTES {
                return Err(self.err(
                    &format!("secrets[{i}]"),
                    format!(
                        "secrets[{i}] is {} bytes long, over the limit of {MAX_SECRET_NAME_BYTES}",
                        s.len()
                    ),
                ));
            }
            if !is_env_name(s) {
                return Err(self.err(
                    &format!("secrets[{i}]"),
                    format!("secrets[{i}] must be an environment variable name (letters, digits, _), found {s:?}"),
                ));
            }
        }
        let toolchains = self.toolchains(root)?;

        let repo_sec = self.section(root, "repo", &["url", "branch", "workspace"])?;
        let url = self.opt_str(repo_sec, "repo.url")?.ok_or_else(|| {
            self.err(
                "repo.url",
                "repo.url is required: the git URL cloned into the remote workspace (add repo:\\n  url: ...)",
            )
        })?;
        let workspace = self
            .abs_path(
                "repo.workspace",
                Some(self.str_or(repo_sec, "repo.workspace", "/workspace/app")?),
            )?
            .unwrap_or_default();
        let repo = Repo {
            url,
            branch: self.str_or(repo_sec, "repo.branch", "main")?,
            workspace,
        };
        let extra_repos = self.extra_repos(root, &repo)?;

        let agents_sec = self.section(root, "agents", &[])?;
        let mut steps = BTreeMap::new();
        if let Some(m) = agents_sec {
            for k in m.keys() {
                if k != "default" {
                    let field = format!("agents.{k}");
                    if let Some(v) = self.opt_str(agents_sec, &field)? {
                        steps.insert(k.clone(), v);
                    }
                }
            }
        }
        let agents = Agents {
            default: self.str_or(agents_sec, "agents.default", "codex")?,
            steps,
        };

        let codex_sec = self.section(root, "codex", &["model", "reasoning"])?;
        let codex = Codex {
            model: self.str_or(codex_sec, "codex.model", "gpt-5.4")?,
            reasoning: self.choice(codex_sec, "codex.reasoning", "high", &REASONING_LEVELS)?,
        };
        self.original_only_warnings(root);
        let mp_sec = self.section(
            root,
            "megaplan",
            &[
                "ref",
                "codex_auth",
                "launcher",
                "repo",
                "install_spec",
                "src_path",
            ],
        )?;
        let megaplan = Megaplan {
            git_ref: self.str_or(mp_sec, "megaplan.ref", "main")?,
            codex_auth: self.choice(
                mp_sec,
                "megaplan.codex_auth",
                "chatgpt",
                &["chatgpt", "apikey"],
            )?,
            launcher: self
                .opt_str(mp_sec, "megaplan.launcher")?
                .map(|l| check_launcher(self.file, &l))
                .transpose()?,
        };

        let auto_sec = self.section(root, "auto", &["plan_name", "idea_file", "robustness"])?;
        let auto = Auto {
            plan_name: self.opt_str(auto_sec, "auto.plan_name")?,
            idea_file: self
                .abs_path("auto.idea_file", self.opt_str(auto_sec, "auto.idea_file")?)?,
            robustness: self.str_or(auto_sec, "auto.robustness", "standard")?,
        };
        if mode == Mode::Auto {
            if auto.plan_name.is_none() {
                return Err(self.err(
                    "auto.plan_name",
                    "auto.plan_name is required when mode: auto",
                ));
            }
            if auto.idea_file.is_none() {
                return Err(self.err(
                    "auto.idea_file",
                    "auto.idea_file is required when mode: auto (absolute remote path of the staged idea file)",
                ));
            }
        }
        let chain_sec = self.section(root, "chain", &["spec", "chain_session"])?;
        let chain = ChainCfg {
            spec: self.abs_path("chain.spec", self.opt_str(chain_sec, "chain.spec")?)?,
        };
        if mode == Mode::Chain && chain.spec.is_none() {
            return Err(self.err(
                "chain.spec",
                "chain.spec is required when mode: chain (absolute remote path of the staged chain spec)",
            ));
        }

        let res_sec = self.section(root, "resources", &["volume", "port", "network"])?;
        let resources = Resources {
            volume: self.opt_str(res_sec, "resources.volume")?,
            port: self.port(res_sec, "resources.port", 8080)?,
            network: self.opt_str(res_sec, "resources.network")?,
        };
        if let Some(v) = &resources.volume
            && !is_docker_name(v)
        {
            return Err(self.err(
                "resources.volume",
                format!(
                    "resources.volume must be a volume name ([a-z0-9][a-z0-9_.-]*), found {v:?}"
                ),
            ));
        }
        if let Some(n) = &resources.network
            && !is_docker_name(n)
        {
            return Err(self.err(
                "resources.network",
                format!("resources.network must be a Docker network name such as none, bridge or host, found {n:?}"),
            ));
        }
        let rw_sec = self.section(
            root,
            "railway",
            &["service", "session", "project", "environment"],
        )?;
        let railway = Railway {
            service: self.str_or(rw_sec, "railway.service", "agent")?,
            session: self.str_or(rw_sec, "railway.session", "agent")?,
            project: self.opt_str(rw_sec, "railway.project")?,
            environment: self.opt_str(rw_sec, "railway.environment")?,
        };
        let local_sec = self.section(root, "local", &["compose_project", "workdir"])?;
        let compose_project = self.str_or(local_sec, "local.compose_project", "megaplan-cloud")?;
        if !compose_project
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            || !compose_project.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(self.err(
                "local.compose_project",
                format!("local.compose_project must be lowercase letters, digits, - and _ (a Docker Compose project name), found {compose_project:?}"),
            ));
        }
        let workdir = self.str_or(local_sec, "local.workdir", "workspace")?;
        if workdir.starts_with('/') || workdir.split('/').any(|c| c == "..") {
            return Err(self.err(
                "local.workdir",
                format!("local.workdir must be a relative folder inside the deploy dir, found {workdir:?}"),
            ));
        }
        let local = Local {
            compose_project,
            workdir,
        };

        let ssh_sec = self.section(
            root,
            "ssh",
            &[
                "host",
                "user",
                "port",
                "identity_file",
                "max_sessions",
                "remote_dir",
                "container",
                "workspace_dir",
                "cache_dir",
            ],
        )?;
        let ssh = if provider == ProviderKind::Ssh || ssh_sec.is_some() {
            let host = self.opt_str(ssh_sec, "ssh.host")?;
            match host {
                None if provider == ProviderKind::Ssh => {
                    return Err(self.err(
                        "ssh.host",
                        "ssh.host is required when provider: ssh (add ssh:\\n  host: <docker host>)",
                    ));
                }
                None => None,
                Some(host) => {
                    if host.starts_with('-') || host.chars().any(|c| c.is_whitespace()) {
                        return Err(self.err(
                            "ssh.host",
                            format!("ssh.host must be a host name or address, found {host:?}"),
                        ));
                    }
                    let user = self.opt_str(ssh_sec, "ssh.user")?;
                    if let Some(u) = &user
                        && (u.starts_with('-')
                            || u.contains('@')
                            || u.chars().any(char::is_whitespace))
                    {
                        return Err(self.err(
                            "ssh.user",
                            format!("ssh.user must be a plain user name, found {u:?}"),
                        ));
                    }
                    let container =
                        self.str_or(ssh_sec, "ssh.container", "megaplan-cloud-agent")?;
                    if !is_docker_name(&container) {
                        return Err(self.err(
                            "ssh.container",
                            format!("ssh.container must be a Docker container name and image tag ([a-z0-9][a-z0-9_.-]*), found {container:?}"),
                        ));
                    }
                    let remote_dir = self
                        .abs_path(
                            "ssh.remote_dir",
                            Some(self.str_or(ssh_sec, "ssh.remote_dir", "/tmp/megaplan-cloud")?),
                        )?
                        .unwrap_or_default();
                    if !is_safe_remote_dir(&remote_dir) {
                        return Err(self.err(
                            "ssh.remote_dir",
                            format!("ssh.remote_dir may only hold letters, digits and / . _ - + @ , (no spaces, quotes, colons, `..` or shell characters), found {remote_dir:?}; choose a plain absolute folder such as /srv/megaplan-cloud"),
                        ));
                    }
                    Some(Ssh {
                        host,
                        user,
                        port: self.port(ssh_sec, "ssh.port", 22)?,
                        identity_file: self
                            .opt_str(ssh_sec, "ssh.identity_file")?
                            .map(|p| expand_tilde(&p)),
                        remote_dir,
                        container,
                        max_sessions: self.max_sessions(ssh_sec)?,
                    })
                }
            }
        } else {
            None
        };

        let preflight = self.preflight(root)?;
        let image_sec = self.section(root, "image", &["base", "dockerfile"])?;
        let base_dir = self.file.parent().unwrap_or(Path::new("/"));
        let image = Image {
            base: self.str_or(image_sec, "image.base", DEFAULT_BASE_IMAGE)?,
            dockerfile: self.opt_str(image_sec, "image.dockerfile")?.map(|p| {
                megaplan_cloud_api::paths::absolutize(Path::new(&expand_tilde(&p)), base_dir)
            }),
        };

        self.section(root, "kubernetes", kubernetes::KEYS)?;
        let kubernetes = kubernetes::parse(
            self.file,
            root.get("kubernetes"),
            provider == ProviderKind::Kubernetes,
            &repo.workspace,
        )?;

        let supervise_sec = self.section(root, "supervise", supervise::KEYS)?;
        let supervise = supervise::parse(self.file, supervise_sec)?;

        Ok(CloudSpec {
            path: self.file.to_path_buf(),
            provider,
            mode,
            secrets,
            toolchains,
            repo,
            extra_repos,
            agents,
            codex,
            megaplan,
            auto,
            chain,
            resources,
            railway,
            local,
            ssh,
            image,
            kubernetes,
            preflight,
            supervise,
            warnings: self.warnings,
        })
    }

    /// `preflight:`: `min_free_disk` (bytes or a size such as `1GiB`) and `min_free_inodes`.
    fn preflight(&mut self, root: &Map<String, Value>) -> Result<Preflight, ConfigError> {
        let sec = self.section(root, "preflight", &["min_free_disk", "min_free_inodes"])?;
        let mut p = Preflight::default();
        match sec.and_then(|m| m.get("min_free_disk")) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                p.min_free_disk = n.as_u64().unwrap_or_default()
            }
            Some(Value::String(t)) if parse_size(t).is_some() => {
                p.min_free_disk = parse_size(t).unwrap_or_default()
            }
            Some(other) => {
                return Err(self.err(
                    "preflight.min_free_disk",
                    format!(
                        "preflight.min_free_disk must be a number of bytes or a size such as 1GiB or 500MiB, found {}",
                        shown(other)
                    ),
                ));
            }
        }
        match sec.and_then(|m| m.get("min_free_inodes")) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                p.min_free_inodes = n.as_u64().unwrap_or_default()
            }
            Some(other) => {
                return Err(self.err(
                    "preflight.min_free_inodes",
                    format!(
                        "preflight.min_free_inodes must be a whole number of inodes such as 10000, found {}",
                        shown(other)
                    ),
                ));
            }
        }
        Ok(p)
    }

    fn toolchains(&self, root: &Map<String, Value>) -> Result<Vec<Toolchain>, ConfigError> {
        let items = match root.get("toolchains") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.err(
                    "toolchains",
                    format!("toolchains must be a list, found {}", type_name(other)),
                ));
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("toolchains[{i}]");
            match item {
                Value::String(s) if TOOLCHAIN_ALIASES.contains(&s.as_str()) => {
                    out.push(Toolchain::Alias(s.clone()))
                }
                Value::String(s) => {
                    return Err(self.err(
                        &field,
                        format!(
                            "{field} is an unknown toolchain alias {s:?}; known aliases: {} (or use a mapping with name and install)",
                            TOOLCHAIN_ALIASES.join(", ")
                        ),
                    ));
                }
                Value::Object(m) => {
                    let name = m.get("name").and_then(Value::as_str).unwrap_or("").trim();
                    let install = m.get("install").and_then(Value::as_str).unwrap_or("");
                    if name.is_empty() {
                        return Err(self.err(
                            &format!("{field}.name"),
                            format!("{field}.name must be a non-empty string"),
                        ));
                    }
                    if install.trim().is_empty() {
                        return Err(self.err(
                            &format!("{field}.install"),
                            format!("{field}.install must be a non-empty Dockerfile snippet"),
                        ));
                    }
                    out.push(Toolchain::Custom {
                        name: name.to_string(),
                        install: install.to_string(),
                    });
                }
                other => {
                    return Err(self.err(
                        &field,
                        format!(
                            "{field} must be an alias ({}) or a mapping with name and install, found {}",
                            TOOLCHAIN_ALIASES.join(", "),
                            type_name(other)
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// One warning per key the original reads and this daemon does not (see
    /// [`ORIGINAL_ONLY_KEYS`]).
    fn original_only_warnings(&mut self, root: &Map<String, Value>) {
        for (key, instead) in ORIGINAL_ONLY_KEYS {
            let mut at: Option<&Value> = None;
            for (i, part) in key.split('.').enumerate() {
                at = match (i, at) {
                    (0, _) => root.get(part),
                    (_, Some(Value::Object(m))) => m.get(part),
                    _ => None,
                };
            }
            if at.is_some_and(|v| !v.is_null()) {
                self.warnings.push(format!(
                    "{key} in {} is read by the Python cloud tool only and is ignored here: {instead}",
                    self.file.display()
                ));
            }
        }
    }

    fn extra_repos(
        &self,
        root: &Map<String, Value>,
        repo: &Repo,
    ) -> Result<Vec<ExtraRepo>, ConfigError> {
        let items = match root.get("extra_repos") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.err(
                    "extra_repos",
                    format!("extra_repos must be a list, found {}", type_name(other)),
                ));
            }
        };
        let parent = Path::new(&repo.workspace)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".to_string());
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("extra_repos[{i}]");
            let m = match item {
                Value::String(url) => {
                    let mut m = Map::new();
                    m.insert("url".into(), Value::String(url.clone()));
                    m
                }
                Value::Object(m) => m.clone(),
                other => {
                    return Err(self.err(
                        &field,
                        format!(
                            "{field} must be a URL or a mapping with url, branch, workspace; found {}",
                            type_name(other)
                        ),
                    ));
                }
            };
            let sec = Some(&m);
            let url = self.opt_str(sec, &format!("{field}.url"))?.ok_or_else(|| {
                self.err(&format!("{field}.url"), format!("{field}.url is required"))
            })?;
            let default_name = url
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("repo")
                .trim_end_matches(".git")
                .to_string();
            // `workspace` is the original's name for where the repo is cloned; `path` is ours.
            let as_path = self.opt_str(sec, &format!("{field}.path"))?;
            let as_workspace = self.opt_str(sec, &format!("{field}.workspace"))?;
            let (name, given) = match (as_path, as_workspace) {
                (Some(p), Some(w)) if p != w => {
                    return Err(self.err(
                        &format!("{field}.workspace"),
                        format!(
                            "{field}.workspace ({w:?}) and {field}.path ({p:?}) disagree; keep one (workspace is the original's name)"
                        ),
                    ));
                }
                (Some(p), _) => ("path", p),
                (None, Some(w)) => ("workspace", w),
                (None, None) => (
                    "path",
                    format!("{}/{default_name}", parent.trim_end_matches('/')),
                ),
            };
            let path = self
                .abs_path(&format!("{field}.{name}"), Some(given))?
                .unwrap_or_default();
            let taken = std::iter::once(repo.workspace.as_str())
                .chain(out.iter().map(|r: &ExtraRepo| r.path.as_str()))
                .any(|w| w.trim_end_matches('/') == path.trim_end_matches('/'));
            if taken {
                return Err(self.err(
                    &format!("{field}.{name}"),
                    format!(
                        "{field}.{name} ({path:?}) is already the workspace of repo or an earlier extra repo; give each repo its own folder"
                    ),
                ));
            }
            out.push(ExtraRepo {
                url,
                branch: self.str_or(sec, &format!("{field}.branch"), "main")?,
                path,
            });
        }
        Ok(out)
    }
}

pub fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `ssh.remote_dir` reaches rsync, scp, `docker -v` and remote shells: only characters that
/// mean nothing to any of them, absolute, no `..` component.
pub fn is_safe_remote_dir(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 1024
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+@,".contains(&b))
        && !s.split('/').any(|c| c == "..")
}

pub fn is_docker_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

fn expand_tilde(p: &str) -> String {
    if p == "~" {
        return megaplan_cloud_api::paths::home_dir()
            .to_string_lossy()
            .into_owned();
    }
    match p.strip_prefix("~/") {
        Some(rest) => megaplan_cloud_api::paths::home_dir()
            .join(rest)
            .to_string_lossy()
            .into_owned(),
        None => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_floors_default_parse_sizes_and_name_the_field_when_wrong() {
        let parse = |extra: &str| {
            parse_bytes(
                format!("repo: {{url: u}}\n{extra}").as_bytes(),
                Path::new("/p/cloud.yaml"),
            )
        };
        assert_eq!(parse("").unwrap().preflight, Preflight::default());
        assert_eq!(
            parse("preflight: {min_free_disk: 1PiB, min_free_inodes: 5}")
                .unwrap()
                .preflight,
            Preflight {
                min_free_disk: 1 << 50,
                min_free_inodes: 5
            }
        );
        assert_eq!(
            parse("preflight: {min_free_disk: 2048}")
                .unwrap()
                .preflight
                .min_free_disk,
            2048
        );
        assert_eq!(parse_size("500MiB"), Some(500 << 20));
        assert_eq!(parse_size("1.5GB"), Some(1_500_000_000));
        assert_eq!(parse_size("lots"), None);
        let e = parse("preflight: {min_free_disk: lots}").unwrap_err();
        let e = megaplan_cloud_api::ErrorBody::from(e);
        assert!(e.message.contains("preflight.min_free_disk"), "{e}");
        assert!(e.message.contains("1GiB"), "{e}");
        let e = parse("preflight: {min_free_inodes: -1}").unwrap_err();
        let e = megaplan_cloud_api::ErrorBody::from(e);
        assert!(e.message.contains("preflight.min_free_inodes"), "{e}");
    }

    #[test]
    fn bounded_read_refuses_fifos_devices_and_big_files_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("cloud.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer on the FIFO: a blocking open would hang here forever.
        let e = read_bounded(&fifo, MAX_INPUT_BYTES).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("not a regular file"), "{e}");

        let e = read_bounded(Path::new("/dev/zero"), MAX_INPUT_BYTES).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");

        let big = tmp.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_INPUT_BYTES as usize + 1]).unwrap();
        let e = read_bounded(&big, MAX_INPUT_BYTES).unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");

        let ok = tmp.path().join("ok.yaml");
        std::fs::write(&ok, b"repo: {url: u}\n").unwrap();
        assert_eq!(
            read_bounded(&ok, MAX_INPUT_BYTES).unwrap(),
            b"repo: {url: u}\n"
        );

        let e = load(&fifo).unwrap_err();
        let e = megaplan_cloud_api::ErrorBody::from(e);
        assert!(e.message.contains("not a regular file"), "{e}");
    }

    #[test]
    fn secret_names_are_capped_in_count_and_length() {
        let names: Vec<String> = (0..=MAX_SECRETS).map(|i| format!("S{i}")).collect();
        let text = format!("repo: {{url: u}}\nsecrets: [{}]\n", names.join(", "));
        let e = parse_bytes(text.as_bytes(), Path::new("/p/cloud.yaml")).unwrap_err();
        let e = megaplan_cloud_api::ErrorBody::from(e);
        assert_eq!(
            e.extra.get("field").and_then(|v| v.as_str()),
            Some("secrets")
        );
        assert!(e.message.contains("over the limit"), "{e}");

        let names = &names[..MAX_SECRETS];
        let text = format!("repo: {{url: u}}\nsecrets: [{}]\n", names.join(", "));
        let s = parse_bytes(text.as_bytes(), Path::new("/p/cloud.yaml")).unwrap();
        assert_eq!(s.secrets.len(), MAX_SECRETS);

        let long = "A".repeat(MAX_SECRET_NAME_BYTES + 1);
        let text = format!("repo: {{url: u}}\nsecrets: [{long}]\n");
        let e = parse_bytes(text.as_bytes(), Path::new("/p/cloud.yaml")).unwrap_err();
        let e = megaplan_cloud_api::ErrorBody::from(e);
        assert_eq!(
            e.extra.get("field").and_then(|v| v.as_str()),
            Some("secrets[0]")
        );
    }

    #[test]
    fn codex_auth_defaults_to_chatgpt_and_names_the_field_when_wrong() {
        let s = parse_bytes(b"repo: {url: u}\n", Path::new("/p/cloud.yaml")).unwrap();
        assert_eq!(s.megaplan.codex_auth, "chatgpt");
        let s = parse_bytes(
            b"repo: {url: u}\nmegaplan: {codex_auth: apikey}\n",
            Path::new("/p/cloud.yaml"),
        )
        .unwrap();
        assert_eq!(s.megaplan.codex_auth, "apikey");
        let e = parse_bytes(
            b"repo: {url: u}\nmegaplan: {codex_auth: oauth}\n",
            Path::new("/p/cloud.yaml"),
        )
        .unwrap_err();
        let e = megaplan_cloud_api::ErrorBody::from(e);
        assert_eq!(
            e.extra.get("field").and_then(|v| v.as_str()),
            Some("megaplan.codex_auth")
        );
        assert!(
            e.message
                .contains("megaplan.codex_auth must be one of chatgpt, apikey, found \"oauth\""),
            "{e}"
        );
    }

    #[test]
    fn remote_dir_allows_only_safe_characters() {
        for ok in ["/tmp/megaplan-cloud", "/srv/mp_1/x.y", "/home/op/a+b@c,d"] {
            assert!(is_safe_remote_dir(ok), "{ok}");
        }
        for bad in [
            "/tmp/a b",
            "/tmp/$(id)",
            "/tmp/a'b",
            "/tmp/a:b",
            "/tmp/../etc",
            "/tmp/a;b",
            "/tmp/a\nb",
            "/tmp/`x`",
            "/tmp/a*",
            "rel",
        ] {
            assert!(!is_safe_remote_dir(bad), "{bad:?}");
            let text = format!(
                "provider: ssh\nrepo: {{url: u}}\nssh: {{host: h, remote_dir: {}}}\n",
                serde_json::to_string(bad).unwrap()
            );
            let e = parse_bytes(text.as_bytes(), Path::new("/p/cloud.yaml")).unwrap_err();
            let e = megaplan_cloud_api::ErrorBody::from(e);
            assert_eq!(
                e.extra.get("field").and_then(|v| v.as_str()),
                Some("ssh.remote_dir"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn ssh_max_sessions_defaults_to_sshds_and_bad_values_name_the_field() {
        let load = |extra: &str| {
            let text = format!("provider: ssh\nrepo: {{url: u}}\nssh: {{host: h{extra}}}\n");
            parse_bytes(text.as_bytes(), Path::new("/p/cloud.yaml"))
        };
        let spec = load("").unwrap();
        assert_eq!(spec.ssh.unwrap().max_sessions, DEFAULT_MAX_SESSIONS);
        assert_eq!(
            load(", max_sessions: 64")
                .unwrap()
                .ssh
                .unwrap()
                .max_sessions,
            64
        );
        for bad in ["2", "0", "-1", "1001", "ten", "4.5"] {
            let e = load(&format!(", max_sessions: {bad}")).unwrap_err();
            let e = megaplan_cloud_api::ErrorBody::from(e);
            assert_eq!(
                e.extra.get("field").and_then(|v| v.as_str()),
                Some("ssh.max_sessions"),
                "{bad}: {e}"
            );
            assert!(e.message.contains("MaxSessions"), "{bad}: {}", e.message);
        }
    }
}
