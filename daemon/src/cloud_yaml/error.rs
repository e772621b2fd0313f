//! What can be wrong with a cloud.yaml: [`ConfigError`], naming the file, the field and the
//! fix. The loader (`cloud_yaml.rs`, `kubernetes.rs`, `supervise.rs`) returns it; the wire
//! type [`ErrorBody`] is made from it in one place (`impl From<ConfigError> for ErrorBody`),
//! which picks the error code and the `field` / `file` extra fields the end-to-end tests pin.
use megaplan_cloud_api::{ErrorBody, ErrorCode};
use std::path::PathBuf;

/// A cloud.yaml the daemon cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The value of `field` cannot be used; `problem` says what to write instead.
    #[error("{}: {problem}", .file.display())]
    Field {
        file: PathBuf,
        field: String,
        problem: String,
    },

    /// `provider:` names a provider reserved for a later release.
    #[error(
        "{}: provider: {provider} is reserved for a future release; use one of {}",
        .file.display(),
        .supported.join(", ")
    )]
    FutureProvider {
        file: PathBuf,
        provider: String,
        supported: &'static [&'static str],
    },

    /// The file cannot be read (missing, not a regular file, too large).
    #[error(
        "cannot read cloud.yaml at {}: {why}; pass --cloud-yaml PATH or run `megaplan-cloudctl init` to create one",
        .file.display()
    )]
    Unreadable { file: PathBuf, why: String },

    /// The file is not UTF-8 text.
    #[error(
        "{} is not UTF-8 text (invalid byte at offset {offset}); save it as UTF-8",
        .file.display()
    )]
    NotUtf8 { file: PathBuf, offset: usize },

    /// The file is not YAML.
    #[error("{} is not valid YAML: {why}", .file.display())]
    NotYaml { file: PathBuf, why: String },

    /// The file's top level is not a mapping of fields.
    #[error(
        "{} must be a YAML mapping of fields (provider:, repo:, ...), found {found}",
        .file.display()
    )]
    NotAMapping { file: PathBuf, found: &'static str },

    /// A registered cloud.yaml whose metadata cannot be read.
    #[error("cannot read cloud.yaml at {}: {why}", .file.display())]
    RegisteredUnreadable { file: PathBuf, why: String },

    /// A registered cloud.yaml another user could change (`why`: its mode or owner).
    #[error(
        "refusing the registered cloud.yaml {}: {why}, so another user could change what the daemon runs; fix it with `chmod go-w {}`{}",
        .file.display(),
        .file.display(),
        chown_hint(*.foreign_owner)
    )]
    Unprotected {
        file: PathBuf,
        why: String,
        foreign_owner: bool,
    },

    /// Loading on the blocking pool failed (the loader panicked or was cancelled).
    #[error("loading {} failed: {why}", .file.display())]
    LoadFailed { file: PathBuf, why: String },
}

/// The second half of the fix for a file another user owns.
fn chown_hint(foreign_owner: bool) -> &'static str {
    if foreign_owner {
        " and `chown` it to yourself"
    } else {
        ""
    }
}

impl ConfigError {
    /// `Field` for `field` of `file`.
    pub fn field(file: &std::path::Path, field: &str, problem: impl std::fmt::Display) -> Self {
        ConfigError::Field {
            file: file.to_path_buf(),
            field: field.to_string(),
            problem: problem.to_string(),
        }
    }

    /// The wire error code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ConfigError::FutureProvider { .. } => ErrorCode::FutureProvider,
            ConfigError::LoadFailed { .. } => ErrorCode::Internal,
            _ => ErrorCode::InvalidSpec,
        }
    }
}

/// The one place a cloud.yaml error becomes a wire error: code, message, `field` or `file`.
impl From<ConfigError> for ErrorBody {
    fn from(e: ConfigError) -> Self {
        let body = ErrorBody::new(e.code(), e.to_string());
        match &e {
            ConfigError::Field { field, .. } => body.with("field", field.as_str()),
            ConfigError::FutureProvider { .. } => body.with("field", "provider"),
            ConfigError::Unreadable { file, .. }
            | ConfigError::NotUtf8 { file, .. }
            | ConfigError::NotYaml { file, .. }
            | ConfigError::NotAMapping { file, .. }
            | ConfigError::RegisteredUnreadable { file, .. }
            | ConfigError::Unprotected { file, .. } => {
                body.with("file", file.display().to_string())
            }
            ConfigError::LoadFailed { .. } => body,
        }
    }
}

/// The check behind every domain error's `every_variant_keeps_its_wire_bytes` test (this file,
/// `render.rs`, `chain/error.rs`, `provider/error.rs`): each variant's code, message and whole
/// wire JSON are those of the `ErrorBody` built by hand before the domain type existed.
#[cfg(test)]
pub(crate) fn assert_keeps_wire_bytes<E>(
    cases: Vec<(E, ErrorBody)>,
    code: impl Fn(&E) -> megaplan_cloud_api::ErrorCode,
) where
    E: std::fmt::Display + Into<ErrorBody>,
{
    for (domain, wire) in cases {
        assert_eq!(code(&domain), wire.error);
        assert_eq!(domain.to_string(), wire.message);
        let got: ErrorBody = domain.into();
        assert_eq!(
            serde_json::to_string(&got).unwrap_or_default(),
            serde_json::to_string(&wire).unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variant's wire error as the loader built it before this type existed.
    #[test]
    fn every_variant_keeps_its_wire_bytes() {
        use ErrorCode as C;
        let f = PathBuf::from("/p/cloud.yaml");
        let cases: Vec<(ConfigError, ErrorBody)> = vec![
            (
                ConfigError::field(&f, "ssh.port", "ssh.port must be 1-65535"),
                ErrorBody::new(C::InvalidSpec, "/p/cloud.yaml: ssh.port must be 1-65535")
                    .with("field", "ssh.port"),
            ),
            (
                ConfigError::FutureProvider {
                    file: f.clone(),
                    provider: "fly".into(),
                    supported: &["railway", "local"],
                },
                ErrorBody::new(
                    C::FutureProvider,
                    "/p/cloud.yaml: provider: fly is reserved for a future release; use one of railway, local",
                )
                .with("field", "provider"),
            ),
            (
                ConfigError::Unreadable {
                    file: f.clone(),
                    why: "gone".into(),
                },
                ErrorBody::new(
                    C::InvalidSpec,
                    "cannot read cloud.yaml at /p/cloud.yaml: gone; pass --cloud-yaml PATH or run `megaplan-cloudctl init` to create one",
                )
                .with("file", "/p/cloud.yaml"),
            ),
            (
                ConfigError::NotUtf8 {
                    file: f.clone(),
                    offset: 3,
                },
                ErrorBody::new(
                    C::InvalidSpec,
                    "/p/cloud.yaml is not UTF-8 text (invalid byte at offset 3); save it as UTF-8",
                )
                .with("file", "/p/cloud.yaml"),
            ),
            (
                ConfigError::NotYaml {
                    file: f.clone(),
                    why: "bad".into(),
                },
                ErrorBody::new(C::InvalidSpec, "/p/cloud.yaml is not valid YAML: bad")
                    .with("file", "/p/cloud.yaml"),
            ),
            (
                ConfigError::NotAMapping {
                    file: f.clone(),
                    found: "a list",
                },
                ErrorBody::new(
                    C::InvalidSpec,
                    "/p/cloud.yaml must be a YAML mapping of fields (provider:, repo:, ...), found a list",
                )
                .with("file", "/p/cloud.yaml"),
            ),
            (
                ConfigError::RegisteredUnreadable {
                    file: f.clone(),
                    why: "EACCES".into(),
                },
                ErrorBody::new(C::InvalidSpec, "cannot read cloud.yaml at /p/cloud.yaml: EACCES")
                    .with("file", "/p/cloud.yaml"),
            ),
            (
                ConfigError::Unprotected {
                    file: f.clone(),
                    why: "it is writable by others (mode 0666)".into(),
                    foreign_owner: true,
                },
                ErrorBody::new(
                    C::InvalidSpec,
                    "refusing the registered cloud.yaml /p/cloud.yaml: it is writable by others (mode 0666), so another user could change what the daemon runs; fix it with `chmod go-w /p/cloud.yaml` and `chown` it to yourself",
                )
                .with("file", "/p/cloud.yaml"),
            ),
            (
                ConfigError::LoadFailed {
                    file: f.clone(),
                    why: "cancelled".into(),
                },
                ErrorBody::new(C::Internal, "loading /p/cloud.yaml failed: cancelled"),
            ),
        ];
        assert_keeps_wire_bytes(cases, ConfigError::code);
    }
}
