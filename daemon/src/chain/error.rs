//! What can go wrong in the chain domain, in its own words: [`ChainError`]. The spec parser,
//! the observation and state parsers, the launcher probe and `resume`'s step table return it;
//! the wire type [`ErrorBody`] is made from it in one place (`impl From<ChainError> for
//! ErrorBody`), which picks the error code, the message and the `file` / `field` /
//! `milestone_index` / `next_step` extra fields the end-to-end tests pin. Callers answering a
//! request convert with `?`; callers deciding by kind look at [`ChainError::code`] or the variant.
use crate::cloud_yaml::CORE_MODULES;
use crate::runner::layout::OBSERVATION_PREFIX;
use crate::runner::probe::PROBE_PREFIX;
use megaplan_cloud_api::{ErrorBody, ErrorCode};

/// A chain spec, observation, state file or step the daemon cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain spec `file`'s `field` cannot be used; `problem` names the field and the fix.
    /// `milestone` is the index of the milestone the field belongs to.
    #[error("{file}: {problem}")]
    SpecField {
        file: String,
        field: String,
        milestone: Option<usize>,
        problem: String,
    },

    /// The chain spec is not YAML.
    #[error("{file}: YAML parse error: {why}; fix the YAML syntax at that location")]
    SpecNotYaml { file: String, why: String },

    /// The chain spec's top level is not a mapping (`found` is what it is).
    #[error(
        "{file}: chain spec must be a YAML mapping (milestones:, base_branch:, ...), found {found}"
    )]
    SpecNotAMapping { file: String, found: &'static str },

    /// The normalised copy of a parsed spec could not be written as YAML (a bug here).
    #[error("cannot write the normalised chain spec as YAML: {why}")]
    SpecNotWritable { why: String },

    /// The runner's output has no observation line; `said` is how the output ended.
    #[error(
        "the runner printed no {} line ({said}); check the launcher setting and that python 3 is installed in the runner",
        OBSERVATION_PREFIX.trim_end()
    )]
    NoObservation { said: String },

    /// The observation line is there but cannot be read; `what` says what is wrong with it.
    #[error(
        "the runner's chain observation is malformed: {what}; check the launcher setting and that python 3 is installed in the runner"
    )]
    MalformedObservation { what: String },

    /// The observation script itself failed on the runner (its `fatal` field).
    #[error("the chain observation failed on the runner: {why}")]
    ObservationFailed { why: String },

    /// The chain spec `file` on the runner exists but could not be read.
    #[error("cannot read the remote chain spec: {why}")]
    RemoteSpecUnreadable { file: String, why: String },

    /// There is no chain spec `file` on the runner.
    #[error(
        "remote chain spec {file} does not exist on the runner; run `megaplan-cloudctl chain <spec>` first, or pass --remote-spec with the spec's path on the runner"
    )]
    RemoteSpecMissing { file: String },

    /// The chain state `file` on the runner exists but could not be read.
    #[error("cannot read the chain state on the runner: {why}")]
    StateUnreadable { file: String, why: String },

    /// The chain state `file` on the runner is not JSON.
    #[error(
        "chain state {file} on the runner is invalid JSON: {why}; inspect it with `megaplan-cloudctl exec 'cat {file}'` (the core rewrites it on its next step)"
    )]
    StateNotJson { file: String, why: String },

    /// The chain state `file` on the runner is JSON but not an object.
    #[error(
        "chain state {file} on the runner must be a JSON object; inspect it with `megaplan-cloudctl exec 'cat {file}'`"
    )]
    StateNotAnObject { file: String },

    /// The runner's python can import neither module of the megaplan core.
    #[error(
        "the megaplan core is not installed on the runner: neither `{}` nor `{}` is importable by its python; \
         install the core (megaplan.ref, then redeploy) or set megaplan.launcher in cloud.yaml",
        CORE_MODULES[0],
        CORE_MODULES[1]
    )]
    NoCore,

    /// The launcher probe printed no answer line.
    #[error(
        "the runner did not answer the core probe (no {} line); check that python 3 is installed in the runner",
        PROBE_PREFIX.trim_end()
    )]
    NoProbeAnswer,

    /// The runner's status names a `next_step` that `resume` does not run.
    #[error(
        "remote status names next_step {next_step:?}, which is not a step resume runs ({}); run it by hand with `megaplan-cloudctl exec`",
        crate::chain::resume::RESUMABLE_STEPS.join(", ")
    )]
    NotResumable { next_step: String },
}

impl ChainError {
    /// The wire error code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        use ChainError as E;
        match self {
            E::SpecField { .. } | E::SpecNotYaml { .. } | E::SpecNotAMapping { .. } => {
                ErrorCode::InvalidSpec
            }
            E::SpecNotWritable { .. } => ErrorCode::Internal,
            E::NoObservation { .. }
            | E::MalformedObservation { .. }
            | E::ObservationFailed { .. }
            | E::RemoteSpecUnreadable { .. }
            | E::StateUnreadable { .. }
            | E::StateNotJson { .. }
            | E::StateNotAnObject { .. }
            | E::NoCore
            | E::NoProbeAnswer => ErrorCode::ProviderFailed,
            E::RemoteSpecMissing { .. } => ErrorCode::MissingRemoteSpec,
            E::NotResumable { .. } => ErrorCode::InvalidStatus,
        }
    }

    /// `SpecField` for `field` of the spec `file`, outside any milestone.
    pub fn spec_field(file: &str, field: &str, problem: impl std::fmt::Display) -> Self {
        ChainError::SpecField {
            file: file.to_string(),
            field: field.to_string(),
            milestone: None,
            problem: problem.to_string(),
        }
    }

    /// `SpecField` for `field` of milestone `index` of the spec `file`.
    pub fn milestone_field(
        file: &str,
        index: usize,
        field: &str,
        problem: impl std::fmt::Display,
    ) -> Self {
        ChainError::SpecField {
            file: file.to_string(),
            field: field.to_string(),
            milestone: Some(index),
            problem: problem.to_string(),
        }
    }
}

/// The one place a chain error becomes a wire error: code, message and `extra` fields.
impl From<ChainError> for ErrorBody {
    fn from(e: ChainError) -> Self {
        use ChainError as E;
        let body = ErrorBody::new(e.code(), e.to_string());
        match &e {
            E::SpecField {
                file,
                field,
                milestone,
                ..
            } => {
                let body = body
                    .with("file", file.as_str())
                    .with("field", field.as_str());
                match milestone {
                    Some(index) => body.with("milestone_index", *index),
                    None => body,
                }
            }
            E::SpecNotYaml { file, .. }
            | E::SpecNotAMapping { file, .. }
            | E::RemoteSpecUnreadable { file, .. }
            | E::RemoteSpecMissing { file }
            | E::StateUnreadable { file, .. }
            | E::StateNotJson { file, .. }
            | E::StateNotAnObject { file } => body.with("file", file.as_str()),
            E::NoCore => body.with("field", "megaplan.launcher"),
            E::NotResumable { next_step } => body.with("next_step", next_step.as_str()),
            E::SpecNotWritable { .. }
            | E::NoObservation { .. }
            | E::MalformedObservation { .. }
            | E::ObservationFailed { .. }
            | E::NoProbeAnswer => body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variant's wire error, byte for byte, as the chain files built it before this type
    /// existed (the end-to-end tests pin these codes and fields).
    #[test]
    fn every_variant_keeps_its_wire_bytes() {
        use ErrorCode as C;
        const F: &str = "/home/op/chain.yaml";
        const S: &str = "/w/.megaplan/plans/.chains/chain-1.json";
        let cases: Vec<(ChainError, ErrorBody)> = vec![
            (
                ChainError::spec_field(F, "base_branch", "`base_branch` must be a non-empty string; remove it to use repo.branch"),
                ErrorBody::new(
                    C::InvalidSpec,
                    "/home/op/chain.yaml: `base_branch` must be a non-empty string; remove it to use repo.branch",
                )
                .with("file", F)
                .with("field", "base_branch"),
            ),
            (
                ChainError::milestone_field(F, 1, "milestones[1].idea", "milestones[1].idea is required; set it"),
                ErrorBody::new(
                    C::InvalidSpec,
                    "/home/op/chain.yaml: milestones[1].idea is required; set it",
                )
                .with("file", F)
                .with("field", "milestones[1].idea")
                .with("milestone_index", 1),
            ),
            (
                ChainError::SpecNotYaml {
                    file: F.into(),
                    why: "bad indent at line 2".into(),
                },
                ErrorBody::new(
                    C::InvalidSpec,
                    "/home/op/chain.yaml: YAML parse error: bad indent at line 2; fix the YAML syntax at that location",
                )
                .with("file", F),
            ),
            (
                ChainError::SpecNotAMapping {
                    file: F.into(),
                    found: "a list",
                },
                ErrorBody::new(
                    C::InvalidSpec,
                    "/home/op/chain.yaml: chain spec must be a YAML mapping (milestones:, base_branch:, ...), found a list",
                )
                .with("file", F),
            ),
            (
                ChainError::SpecNotWritable { why: "nan".into() },
                ErrorBody::new(
                    C::Internal,
                    "cannot write the normalised chain spec as YAML: nan",
                ),
            ),
            (
                ChainError::NoObservation {
                    said: "no output".into(),
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "the runner printed no MEGAPLAN_OBSERVATION line (no output); check the launcher setting and that python 3 is installed in the runner",
                ),
            ),
            (
                ChainError::MalformedObservation {
                    what: "the observation is not a JSON object".into(),
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "the runner's chain observation is malformed: the observation is not a JSON object; check the launcher setting and that python 3 is installed in the runner",
                ),
            ),
            (
                ChainError::ObservationFailed {
                    why: "bad input".into(),
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "the chain observation failed on the runner: bad input",
                ),
            ),
            (
                ChainError::RemoteSpecUnreadable {
                    file: F.into(),
                    why: "Permission denied".into(),
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "cannot read the remote chain spec: Permission denied",
                )
                .with("file", F),
            ),
            (
                ChainError::RemoteSpecMissing { file: F.into() },
                ErrorBody::new(
                    C::MissingRemoteSpec,
                    "remote chain spec /home/op/chain.yaml does not exist on the runner; run `megaplan-cloudctl chain <spec>` first, or pass --remote-spec with the spec's path on the runner",
                )
                .with("file", F),
            ),
            (
                ChainError::StateUnreadable {
                    file: S.into(),
                    why: "Permission denied".into(),
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    "cannot read the chain state on the runner: Permission denied",
                )
                .with("file", S),
            ),
            (
                ChainError::StateNotJson {
                    file: S.into(),
                    why: "EOF while parsing".into(),
                },
                ErrorBody::new(
                    C::ProviderFailed,
                    format!(
                        "chain state {S} on the runner is invalid JSON: EOF while parsing; inspect it with `megaplan-cloudctl exec 'cat {S}'` (the core rewrites it on its next step)"
                    ),
                )
                .with("file", S),
            ),
            (
                ChainError::StateNotAnObject { file: S.into() },
                ErrorBody::new(
                    C::ProviderFailed,
                    format!(
                        "chain state {S} on the runner must be a JSON object; inspect it with `megaplan-cloudctl exec 'cat {S}'`"
                    ),
                )
                .with("file", S),
            ),
            (
                ChainError::NoCore,
                ErrorBody::new(
                    C::ProviderFailed,
                    "the megaplan core is not installed on the runner: neither `arnold_pipelines.megaplan` nor `arnold.pipelines.megaplan` is importable by its python; install the core (megaplan.ref, then redeploy) or set megaplan.launcher in cloud.yaml",
                )
                .with("field", "megaplan.launcher"),
            ),
            (
                ChainError::NoProbeAnswer,
                ErrorBody::new(
                    C::ProviderFailed,
                    "the runner did not answer the core probe (no MEGAPLAN_CORE line); check that python 3 is installed in the runner",
                ),
            ),
            (
                ChainError::NotResumable {
                    next_step: "rm -rf /".into(),
                },
                ErrorBody::new(
                    C::InvalidStatus,
                    format!(
                        "remote status names next_step \"rm -rf /\", which is not a step resume runs ({}); run it by hand with `megaplan-cloudctl exec`",
                        crate::chain::resume::RESUMABLE_STEPS.join(", ")
                    ),
                )
                .with("next_step", "rm -rf /"),
            ),
        ];
        crate::cloud_yaml::error::assert_keeps_wire_bytes(cases, ChainError::code);
    }
}
