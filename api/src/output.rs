//! The typed result of each `POST /v1/run` command, pueue's `Response` style: one variant per
//! answer, built by the daemon's command and read by the client's renderer.
//!
//! On the wire the result is still the `payload` of the one `result` frame, as before these
//! types existed: [`CommandOutput::to_payload`] writes each variant as the JSON object it
//! replaces (keys sorted, `null`s where the object had them; pinned below byte for byte), and
//! [`CommandOutput::from_payload`] reads it back knowing which [`Command`] was sent (the variant
//! is decided by the request, not guessed from the shape). An error ends a command as an
//! [`ErrorBody`](crate::ErrorBody) payload instead and is never read as an output.

use crate::report::TickReport;
use crate::status::{ChainLaunched, ChainSessions, ChainStatus};
use crate::wire::Command;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What one command answered.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutput {
    /// `exec`, `logs` and `attach`: the runner's own output (or the terminal) was the answer;
    /// the payload is `null` and stdout carries nothing more.
    Streamed,
    Built(Built),
    Deployed(Box<Deployed>),
    Down(RunnerStopped),
    Destroyed(Destroyed),
    /// `status` (no flag): the core's own status document.
    PlanStatus(PlanStatus),
    Bootstrapped(Bootstrapped),
    Resumed(Resumed),
    /// `status --chain`.
    ChainStatus(Box<ChainStatus>),
    /// `chains` and `status --all`.
    Sessions(ChainSessions),
    /// `chain`.
    Launched(Box<ChainLaunched>),
    /// `supervise --chain`: the tick report.
    Tick(Box<TickReport>),
}

impl CommandOutput {
    /// The `result` frame's payload: the JSON object each answer was before it was typed, keys
    /// sorted.
    pub fn to_payload(&self) -> Result<Value, serde_json::Error> {
        match self {
            CommandOutput::Streamed => Ok(Value::Null),
            CommandOutput::Built(x) => serde_json::to_value(x),
            CommandOutput::Deployed(x) => serde_json::to_value(x),
            CommandOutput::Down(x) => serde_json::to_value(x),
            CommandOutput::Destroyed(x) => serde_json::to_value(x),
            CommandOutput::PlanStatus(x) => serde_json::to_value(x),
            CommandOutput::Bootstrapped(x) => serde_json::to_value(x),
            CommandOutput::Resumed(x) => serde_json::to_value(x),
            CommandOutput::ChainStatus(x) => serde_json::to_value(x),
            CommandOutput::Sessions(x) => serde_json::to_value(x),
            CommandOutput::Launched(x) => serde_json::to_value(x),
            CommandOutput::Tick(x) => crate::report::to_sorted_value(x),
        }
    }

    /// Read the payload of a `result` frame as the answer to `command`.
    pub fn from_payload(command: &Command, payload: Value) -> Result<Self, serde_json::Error> {
        use serde_json::from_value as read;
        Ok(match command {
            Command::Exec { .. } | Command::Logs { .. } | Command::Attach { .. } => {
                CommandOutput::Streamed
            }
            Command::Build => CommandOutput::Built(read(payload)?),
            Command::Deploy => CommandOutput::Deployed(Box::new(read(payload)?)),
            Command::Down => CommandOutput::Down(read(payload)?),
            Command::Destroy { .. } => CommandOutput::Destroyed(read(payload)?),
            Command::Status { chain: true, .. } => {
                CommandOutput::ChainStatus(Box::new(read(payload)?))
            }
            Command::Status { all: true, .. } | Command::Chains => {
                CommandOutput::Sessions(read(payload)?)
            }
            Command::Status { .. } => CommandOutput::PlanStatus(read(payload)?),
            Command::Bootstrap { .. } => CommandOutput::Bootstrapped(read(payload)?),
            Command::Resume { .. } => CommandOutput::Resumed(read(payload)?),
            Command::Chain { .. } => CommandOutput::Launched(Box::new(read(payload)?)),
            Command::Supervise { .. } => CommandOutput::Tick(Box::new(read(payload)?)),
        })
    }
}

/// `build`: the runner image was built from the rendered deploy dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Built {
    pub deploy_dir: String,
    pub provider: String,
    pub success: bool,
}

/// One step of a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployStep {
    pub name: String,
    /// `ok`, `failed` or `skipped`.
    pub status: String,
    pub detail: String,
    /// Redacted, the last lines of the step's output.
    pub stdout_tail: String,
    pub stderr_tail: String,
}

/// What a provider's deploy did; the verdict line is also said on stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReport {
    pub success: bool,
    pub provider: String,
    pub verdict: String,
    /// `triggered`, `not_triggered` or `unknown`.
    pub image_rebuild: String,
    pub steps: Vec<DeployStep>,
    pub warnings: Vec<String>,
}

/// `deploy`: the provider's report and, after a successful deploy, what seeding the agents'
/// logins did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    #[serde(flatten)]
    pub report: DeployReport,
    /// The agents' logins seeded onto the runner (docs/agent-auth.md): seeded, skipped or
    /// refused per agent. Present only when the deploy succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_auth: Option<AgentAuthReport>,
}

/// What seeding the agents' logins did (`deploy`, and `chain` as its `agent_auth` field;
/// docs/api.md): names and local paths only, never a login's content. Fields in sorted order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AgentAuthReport {
    /// The handed-over files were seeded (or failed to be) into `runner_dir`.
    Seeded {
        codex_auth: String,
        failed: Vec<AgentSeedFailed>,
        missing: Vec<AgentLoginMissing>,
        runner_dir: String,
        seeded: Vec<String>,
    },
    /// Nothing was seeded, and why (`seeded` is then always empty).
    Skipped {
        codex_auth: String,
        seeded: Vec<String>,
        skipped: String,
    },
}

/// An agent whose login was not seeded, and why (redacted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSeedFailed {
    pub agent: String,
    pub error: String,
}

/// An agent whose local login file the client did not hand over: where it looked, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLoginMissing {
    pub agent: String,
    pub local: String,
}

/// `down`: the runner is stopped (its volume kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerStopped {
    pub provider: String,
    pub success: bool,
}

/// `destroy`: the runner is removed, with its deploy dir (local, ssh) and volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destroyed {
    /// The local deploy dir removed, `null` when there was none (railway keeps none).
    pub deploy_dir_removed: Option<String>,
    pub provider: String,
    pub success: bool,
    /// cloud.yaml's `resources.volume`, which went with the runner; `null` when none is named.
    pub volume_deleted: Option<String>,
}

/// `status`: the core's `megaplan status` document, unchanged (it is the core's, not ours: a
/// newer core's fields pass through). The accessors read what a person asks of it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlanStatus(pub Map<String, Value>);

impl PlanStatus {
    fn text(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
    pub fn plan(&self) -> Option<&str> {
        self.text("plan")
    }
    /// The plan's state (`state`, or `status` in older cores).
    pub fn state(&self) -> Option<&str> {
        self.text("state").or_else(|| self.text("status"))
    }
    pub fn next_step(&self) -> Option<&str> {
        self.text("next_step")
    }
    /// The core said `success: false`.
    pub fn failed(&self) -> bool {
        self.0.get("success") == Some(&Value::Bool(false))
    }
    /// What the core said when it failed.
    pub fn message(&self) -> Option<&str> {
        self.text("message").or_else(|| self.text("error"))
    }
}

/// `bootstrap`: the idea uploaded and `megaplan init` run on the runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bootstrapped {
    pub exit_code: i32,
    /// The idea file on the runner (`<workspace>/idea.txt`).
    pub idea_file: String,
    /// The JSON object `megaplan init` printed, `null` when it printed none.
    pub init: Option<Map<String, Value>>,
    pub plan_name: Option<String>,
    pub robustness: String,
    pub success: bool,
    pub workspace: String,
}

impl Bootstrapped {
    /// The plan `init` created: the one asked for, else the one the core named.
    pub fn plan(&self) -> Option<&str> {
        self.plan_name.as_deref().or_else(|| {
            let init = self.init.as_ref()?;
            ["plan", "plan_name", "name"]
                .iter()
                .find_map(|k| init.get(*k).and_then(Value::as_str))
        })
    }
}

/// `resume`: the step the core's status named next, run on the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    /// The core command run (its words).
    pub command: Vec<String>,
    pub exit_code: i32,
    pub next_step: String,
    pub plan: Option<String>,
    pub success: bool,
    /// The chain's crash-loop quarantine was lifted by this resume (absent when there was none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unquarantined: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each typed answer is the bytes of the `json!` object the daemon wrote before.
    fn same(out: &CommandOutput, old: Value) {
        assert_eq!(
            out.to_payload().unwrap().to_string(),
            old.to_string(),
            "{out:?}"
        );
    }

    #[test]
    fn typed_outputs_keep_the_bytes_of_the_objects_they_replace() {
        same(
            &CommandOutput::Built(Built {
                deploy_dir: "/d".into(),
                provider: "local".into(),
                success: true,
            }),
            json!({"success": true, "provider": "local", "deploy_dir": "/d"}),
        );
        same(
            &CommandOutput::Down(RunnerStopped {
                provider: "ssh".into(),
                success: true,
            }),
            json!({"success": true, "provider": "ssh"}),
        );
        same(
            &CommandOutput::Destroyed(Destroyed {
                deploy_dir_removed: None,
                provider: "railway".into(),
                success: true,
                volume_deleted: Some("vol".into()),
            }),
            json!({"success": true, "provider": "railway", "deploy_dir_removed": null, "volume_deleted": "vol"}),
        );
        same(
            &CommandOutput::Resumed(Resumed {
                command: vec!["execute".into()],
                exit_code: 0,
                next_step: "execute".into(),
                plan: None,
                success: true,
                unquarantined: false,
            }),
            json!({"success": true, "next_step": "execute", "command": ["execute"], "plan": null, "exit_code": 0}),
        );
        same(
            &CommandOutput::Bootstrapped(Bootstrapped {
                exit_code: 0,
                idea_file: "/w/idea.txt".into(),
                init: None,
                plan_name: None,
                robustness: "standard".into(),
                success: true,
                workspace: "/w".into(),
            }),
            json!({"success": true, "init": null, "workspace": "/w", "idea_file": "/w/idea.txt",
                   "plan_name": null, "robustness": "standard", "exit_code": 0}),
        );
        let report = DeployReport {
            success: true,
            provider: "local".into(),
            verdict: "deploy: ok".into(),
            image_rebuild: "unknown".into(),
            steps: vec![DeployStep {
                name: "up".into(),
                status: "ok".into(),
                detail: "".into(),
                stdout_tail: "".into(),
                stderr_tail: "".into(),
            }],
            warnings: vec![],
        };
        let skipped = AgentAuthReport::Skipped {
            codex_auth: "apikey".into(),
            seeded: vec![],
            skipped: "megaplan.codex_auth is apikey".into(),
        };
        let mut old = serde_json::to_value(&report).unwrap();
        old.as_object_mut().unwrap().insert(
            "agent_auth".into(),
            json!({"codex_auth": "apikey", "seeded": [], "skipped": "megaplan.codex_auth is apikey"}),
        );
        same(
            &CommandOutput::Deployed(Box::new(Deployed {
                report: report.clone(),
                agent_auth: Some(skipped),
            })),
            old,
        );
        // A failed deploy carries no agent_auth at all.
        same(
            &CommandOutput::Deployed(Box::new(Deployed {
                report: report.clone(),
                agent_auth: None,
            })),
            serde_json::to_value(&report).unwrap(),
        );
        same(&CommandOutput::Streamed, Value::Null);
    }

    /// The agent login report, byte for byte as the daemon's `json!` wrote it, in both shapes;
    /// each reads back as itself.
    #[test]
    fn agent_auth_reports_are_pinned() {
        let seeded = AgentAuthReport::Seeded {
            codex_auth: "chatgpt".into(),
            failed: vec![AgentSeedFailed {
                agent: "hermes".into(),
                error: "exit 1: no space".into(),
            }],
            missing: vec![AgentLoginMissing {
                agent: "hermes".into(),
                local: "/home/op/.hermes/auth.json not found".into(),
            }],
            runner_dir: "/workspace/.creds".into(),
            seeded: vec!["codex".into()],
        };
        const SEEDED: &str = r#"{"codex_auth":"chatgpt","failed":[{"agent":"hermes","error":"exit 1: no space"}],"missing":[{"agent":"hermes","local":"/home/op/.hermes/auth.json not found"}],"runner_dir":"/workspace/.creds","seeded":["codex"]}"#;
        assert_eq!(serde_json::to_string(&seeded).unwrap(), SEEDED);
        assert_eq!(
            serde_json::from_str::<AgentAuthReport>(SEEDED).unwrap(),
            seeded
        );
        let skipped = AgentAuthReport::Skipped {
            codex_auth: "chatgpt".into(),
            seeded: vec![],
            skipped: "the client handed over no login files".into(),
        };
        const SKIPPED: &str = r#"{"codex_auth":"chatgpt","seeded":[],"skipped":"the client handed over no login files"}"#;
        assert_eq!(serde_json::to_string(&skipped).unwrap(), SKIPPED);
        assert_eq!(
            serde_json::from_str::<AgentAuthReport>(SKIPPED).unwrap(),
            skipped
        );
    }

    #[test]
    fn the_request_decides_how_a_payload_reads() {
        let plan = json!({"plan": "p", "state": "executed", "next_step": "review", "extra": [1]});
        let status = Command::Status {
            chain: false,
            all: false,
            remote_spec: None,
            plan: None,
        };
        let out = CommandOutput::from_payload(&status, plan.clone()).unwrap();
        let CommandOutput::PlanStatus(s) = &out else {
            panic!("{out:?}")
        };
        assert_eq!(
            (s.plan(), s.state(), s.next_step()),
            (Some("p"), Some("executed"), Some("review"))
        );
        // The core's document passes through whole.
        assert_eq!(out.to_payload().unwrap(), plan);
        let built = json!({"success": true, "provider": "local", "deploy_dir": "/d"});
        assert!(matches!(
            CommandOutput::from_payload(&Command::Build, built.clone()),
            Ok(CommandOutput::Built(_))
        ));
        // The wrong command's shape is an error, not a guess.
        assert!(CommandOutput::from_payload(&Command::Deploy, built).is_err());
        assert_eq!(
            CommandOutput::from_payload(
                &Command::Exec {
                    cmd: "true".into(),
                    argv: vec![]
                },
                Value::Null
            )
            .unwrap(),
            CommandOutput::Streamed
        );
    }
}
