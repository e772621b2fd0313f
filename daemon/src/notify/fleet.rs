//! One fleet row per registration (`GET /v1/fleet`): the state a person asks about, read from
//! what the daemon already holds — the last stored tick report, the watch state, the pause,
//! the scheduler's back-off — never from a runner. Pure: the facts are passed in.

use super::transitions::WatchState;
use megaplan_cloud_api::fleet::{Attention, FleetRow, FleetState};
use megaplan_cloud_api::report::{
    EffectiveStatus, Pause, ProviderConsistency, ReportedStatus, TickEvent,
};
use megaplan_cloud_api::wire::{Registration, TickRecord};
use std::path::Path;

/// What the local cloud.yaml says of where the runner is: `(provider, ssh host)`, or why it
/// cannot be read.
pub type Place = Result<(String, Option<String>), String>;

/// Everything the row of one registration is built from.
pub struct Facts<'a> {
    /// The registration with its schedule fields (`next_due_at`, `backoff`) filled.
    pub registration: &'a Registration,
    pub last_tick: Option<&'a TickRecord>,
    pub watch: &'a WatchState,
    pub pause: Option<&'a Pause>,
    pub place: Place,
    /// Failed ticks in a row after which a person is needed (`failed_ticks` of notify.yaml).
    pub failed_ticks: u32,
    /// The crash-loop quarantine in force (supervisor/quarantine.rs).
    pub quarantine: Option<&'a megaplan_cloud_api::liveness::Quarantine>,
}

/// A short name for people: the folder holding `cloud.yaml` (with the file's stem when it is
/// named otherwise).
pub fn display_name(cloud_yaml: &str) -> String {
    let p = Path::new(cloud_yaml);
    let dir = p
        .parent()
        .and_then(Path::file_name)
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".to_string());
    match p.file_name().map(|f| f.to_string_lossy().into_owned()) {
        Some(f) if f == "cloud.yaml" => dir,
        Some(f) => format!(
            "{dir}/{}",
            f.trim_end_matches(".yaml").trim_end_matches(".yml")
        ),
        None => dir,
    }
}

/// A narrow span (`14m`), by the tree's one formatter.
fn secs_text(secs: i64) -> String {
    megaplan_cloud_api::duration::coarse(u64::try_from(secs).unwrap_or(0))
}

fn attention(reason: impl Into<String>, fix: impl Into<String>) -> Option<Attention> {
    Some(Attention {
        reason: reason.into(),
        fix: fix.into(),
    })
}

/// The fleet row of one registration.
pub fn row(f: Facts<'_>) -> FleetRow {
    let reg = f.registration;
    let key = reg.key.as_str();
    let report = f.last_tick.map(|t| &t.report);
    let (provider, host, place_error) = match f.place {
        Ok((p, h)) => (Some(p), h, None),
        Err(e) => (None, None, Some(e)),
    };
    let mut out = FleetRow {
        key: reg.key.clone(),
        cloud_yaml: reg.cloud_yaml.clone(),
        name: display_name(&reg.cloud_yaml),
        provider,
        host,
        milestone: report.and_then(|r| r.milestone.clone()),
        state: FleetState::Unknown,
        pr_number: None,
        stalled_for_secs: None,
        consecutive_failures: f.watch.consecutive_failures,
        last_tick_at: reg
            .last_tick_at
            .clone()
            .or_else(|| f.last_tick.map(|t| t.finished_at.clone())),
        last_progress_at: report.and_then(|r| r.logs.mtime().map(str::to_string)),
        next_tick_at: reg.next_due_at.clone(),
        schedule: reg.schedule.clone(),
        paused: f.pause.cloned(),
        backoff: reg.backoff.clone(),
        attention: None,
        liveness: report.and_then(|r| r.liveness.clone()),
    };
    let explain = format!("run `megaplan-cloudctl explain {key}`");
    let on_runner = format!(
        "look at the runner: `megaplan-cloudctl --cloud-yaml {} attach`",
        reg.cloud_yaml
    );

    if let Some(e) = place_error {
        out.state = FleetState::NeedsPerson;
        out.attention = attention(
            format!("the registered cloud.yaml cannot be read: {e}"),
            format!(
                "fix {} or `megaplan-cloudctl unregister {key}`",
                reg.cloud_yaml
            ),
        );
        return out;
    }
    if let Some(q) = f.quarantine {
        // Before the pause: a paused chain that is quarantined still needs the unquarantine.
        out.state = FleetState::Quarantined;
        out.attention = attention(
            format!("quarantined since {}: {}", q.since, q.reason),
            format!(
                "read the driver log (`megaplan-cloudctl explain {key}`), fix the cause, then `megaplan-cloudctl unquarantine {key}`"
            ),
        );
        return out;
    }
    if f.pause.is_some() {
        // A person is already on it: the pause is the whole story until they lift it.
        out.state = FleetState::Paused;
        return out;
    }
    if f.watch.consecutive_failures >= f.failed_ticks.max(1) {
        let why = report
            .and_then(|r| r.refused_reason.clone())
            .unwrap_or_else(|| "no reason stored".to_string());
        out.state = FleetState::NeedsPerson;
        out.attention = attention(
            format!(
                "{} ticks in a row failed: {why}",
                f.watch.consecutive_failures
            ),
            explain,
        );
        return out;
    }
    if let Some(b) = &reg.backoff {
        out.state = FleetState::BackingOff;
        out.attention = attention(
            format!(
                "{} tick(s) in a row hit their deadline: {}",
                b.strikes, b.reason
            ),
            format!(
                "scheduled ticks resume at {}; `megaplan-cloudctl tick {key}` tries one now",
                b.until
            ),
        );
        return out;
    }
    let Some(report) = report.filter(|r| r.success) else {
        // No tick yet, or a failure below the threshold: nothing observed to go on.
        return out;
    };
    if let Some(ProviderConsistency::Mismatch { reason }) = &report.provider_consistency {
        out.state = FleetState::NeedsPerson;
        out.attention = attention(
            reason
                .clone()
                .unwrap_or_else(|| "the last chain was launched elsewhere".to_string()),
            format!(
                "launch the chain again with this cloud.yaml (`megaplan-cloudctl --cloud-yaml {} chain SPEC`), or register the one it runs on",
                reg.cloud_yaml
            ),
        );
        return out;
    }
    if report.acted && matches!(report.event, TickEvent::Advanced | TickEvent::Restarted) {
        // The report's status is what the tick saw before it acted: the supervisor has just
        // started the runner, and the report's milestone is the one it started.
        out.state = FleetState::Running;
        return out;
    }
    let pr = report.pr.pr_number.flatten();
    if report.is_stalled() {
        let age = report.stalled_for_secs().unwrap_or(0);
        out.state = FleetState::Stalled;
        out.stalled_for_secs = Some(age);
        out.attention = attention(
            format!(
                "the runner is alive but its log has not grown for {}",
                secs_text(age)
            ),
            on_runner,
        );
        return out;
    }
    let waiting_reason = |default: &str| {
        report
            .refused_reason
            .clone()
            .unwrap_or_else(|| default.to_string())
    };
    out.state = match report.effective_status {
        ReportedStatus::Classified(EffectiveStatus::Complete) => FleetState::Complete,
        ReportedStatus::Classified(EffectiveStatus::AwaitingPrMerge) => {
            out.pr_number = pr;
            let which = pr.map_or_else(|| "the milestone's PR".to_string(), |n| format!("PR #{n}"));
            out.attention = attention(
                format!("{which} waits to be merged"),
                format!("merge {which}; the next tick starts the next milestone"),
            );
            FleetState::AwaitingPr
        }
        ReportedStatus::Classified(EffectiveStatus::HumanPrerequisite) => {
            out.attention = attention(
                waiting_reason("the chain waits for a human prerequisite"),
                format!("{on_runner}, resolve it; the next tick continues"),
            );
            FleetState::NeedsPerson
        }
        ReportedStatus::Classified(EffectiveStatus::QualityGate) => {
            out.attention = attention(
                waiting_reason("the chain stopped at a quality gate"),
                format!("{on_runner}, resolve or accept it; the next tick continues"),
            );
            FleetState::NeedsPerson
        }
        ReportedStatus::Classified(
            EffectiveStatus::Running | EffectiveStatus::StaleBookkeeping,
        ) => FleetState::Running,
        ReportedStatus::Unknown | ReportedStatus::Other(_) => FleetState::Unknown,
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use megaplan_cloud_api::report::TickReport;
    use megaplan_cloud_api::wire::TickBackoff;
    use serde_json::json;

    fn reg() -> Registration {
        serde_json::from_value(json!({
            "key": "0123456789abcdef", "cloud_yaml": "/home/me/shop/cloud.yaml",
            "schedule": "every:300", "remote_spec": null, "created_at": "2026-01-01T00:00:00Z",
            "last_tick_at": "2026-01-01T00:05:00Z", "last_event": "supervisor_tick",
            "last_success": true, "ticks_run": 1, "ticks_skipped": 0,
            "next_due_at": "2026-01-01T00:10:00Z"
        }))
        .unwrap()
    }

    fn tick(report: serde_json::Value) -> TickRecord {
        let report: TickReport = serde_json::from_value(report).unwrap();
        TickRecord {
            id: 1,
            key: "0123456789abcdef".into(),
            cloud_yaml: "/home/me/shop/cloud.yaml".into(),
            trigger: "schedule".into(),
            started_at: "2026-01-01T00:04:59Z".into(),
            finished_at: "2026-01-01T00:05:00Z".into(),
            duration_ms: 1000,
            success: report.success,
            event: report.event.clone(),
            next_action: report.next_action.clone(),
            acted: report.acted,
            refused_reason: report.refused_reason.clone(),
            report,
            due_at: None,
        }
    }

    fn ok(status: &str, more: serde_json::Value) -> TickRecord {
        let mut v = json!({
            "acted": false, "effective_status": status, "event": "supervisor_tick",
            "next_action": "noop", "success": true, "refused_reason": null,
            "milestone": {"number": 2, "count": 3, "label": "m2"},
            "logs": {"mtime": "2026-01-01T00:04:00Z"}
        });
        if let (Some(o), Some(m)) = (v.as_object_mut(), more.as_object()) {
            o.extend(m.clone());
        }
        tick(v)
    }

    fn facts<'a>(
        reg: &'a Registration,
        last: Option<&'a TickRecord>,
        watch: &'a WatchState,
    ) -> Facts<'a> {
        Facts {
            registration: reg,
            last_tick: last,
            watch,
            pause: None,
            place: Ok(("ssh".into(), Some("build-1".into()))),
            failed_ticks: 3,
            quarantine: None,
        }
    }

    #[test]
    fn a_running_chain_shows_its_milestone_progress_and_next_tick() {
        let (r, w) = (reg(), WatchState::default());
        let t = ok("running", json!({}));
        let row = row(facts(&r, Some(&t), &w));
        assert_eq!(row.state, FleetState::Running);
        assert_eq!(row.name, "shop");
        assert_eq!(row.host.as_deref(), Some("build-1"));
        let m = row.milestone.unwrap();
        assert_eq!((m.number, m.count, m.label.as_deref()), (2, 3, Some("m2")));
        assert_eq!(
            row.last_progress_at.as_deref(),
            Some("2026-01-01T00:04:00Z")
        );
        assert_eq!(row.next_tick_at.as_deref(), Some("2026-01-01T00:10:00Z"));
        assert!(row.attention.is_none());
    }

    #[test]
    fn awaiting_a_pr_names_it_and_says_to_merge() {
        let (r, w) = (reg(), WatchState::default());
        let t = ok(
            "awaiting_pr_merge",
            json!({"pr": {"pr_number": 7, "merge_probe": "open"}}),
        );
        let row = row(facts(&r, Some(&t), &w));
        assert_eq!(row.state, FleetState::AwaitingPr);
        assert_eq!(row.pr_number, Some(7));
        assert!(row.attention.unwrap().fix.contains("merge PR #7"));
    }

    #[test]
    fn a_stall_says_for_how_long_and_where_to_look() {
        let (r, w) = (reg(), WatchState::default());
        let t = ok(
            "running",
            json!({"stalled": true, "stalled_for_secs": 841, "stall_after_secs": 600}),
        );
        let row = row(facts(&r, Some(&t), &w));
        assert_eq!(row.state, FleetState::Stalled);
        assert_eq!(row.stalled_for_secs, Some(841));
        let a = row.attention.unwrap();
        assert!(a.reason.contains("14m"), "{}", a.reason);
        assert!(a.fix.contains("attach"), "{}", a.fix);
    }

    #[test]
    fn gates_failures_and_unreadable_files_need_a_person() {
        let r = reg();
        let w = WatchState::default();
        let t = ok(
            "human_prerequisite",
            json!({"refused_reason": "waiting for a human prerequisite: API key"}),
        );
        let gate = row(facts(&r, Some(&t), &w));
        assert_eq!(gate.state, FleetState::NeedsPerson);
        assert!(gate.attention.unwrap().reason.contains("API key"));

        let failing = WatchState {
            consecutive_failures: 3,
            ..Default::default()
        };
        let t = tick(
            json!({"acted": false, "effective_status": "unknown", "event": "supervisor_error",
                   "next_action": "none", "success": false,
                   "refused_reason": "chain status read failed: ssh: connect refused"}),
        );
        let failed = row(facts(&r, Some(&t), &failing));
        assert_eq!(failed.state, FleetState::NeedsPerson);
        let a = failed.attention.unwrap();
        assert!(
            a.reason
                .contains("3 ticks in a row failed: chain status read failed")
        );
        assert!(a.fix.contains("explain 0123456789abcdef"));
        // Fewer failures than the threshold: not known yet, nobody paged.
        let once = WatchState {
            consecutive_failures: 1,
            ..Default::default()
        };
        assert_eq!(row(facts(&r, Some(&t), &once)).state, FleetState::Unknown);

        let mut gone = facts(&r, None, &w);
        gone.place = Err("No such file or directory".into());
        let gone = row(gone);
        assert_eq!(gone.state, FleetState::NeedsPerson);
        assert!(gone.attention.unwrap().fix.contains("unregister"));
    }

    #[test]
    fn a_pause_and_a_back_off_are_their_own_states() {
        let w = WatchState::default();
        let mut r = reg();
        let t = ok("running", json!({"stalled": true, "stalled_for_secs": 900}));
        let pause = Pause {
            key: r.key.clone(),
            paused_by: "ops@box".into(),
            reason: None,
            since: "2026-01-01T00:00:00Z".into(),
        };
        let mut f = facts(&r, Some(&t), &w);
        f.pause = Some(&pause);
        assert_eq!(row(f).state, FleetState::Paused);
        r.backoff = Some(TickBackoff {
            strikes: 2,
            since: "2026-01-01T00:00:00Z".into(),
            until: "2026-01-01T01:00:00Z".into(),
            reason: "tick exceeded its deadline".into(),
            skipped: 4,
        });
        let held = row(facts(&r, Some(&t), &w));
        assert_eq!(held.state, FleetState::BackingOff);
        assert!(held.attention.unwrap().fix.contains("01:00:00"));
        assert_eq!(row(facts(&reg(), None, &w)).state, FleetState::Unknown);
    }

    #[test]
    fn a_tick_that_advanced_or_restarted_leaves_a_running_chain() {
        let (r, w) = (reg(), WatchState::default());
        let t = ok(
            "awaiting_pr_merge",
            json!({"acted": true, "event": "supervisor_advanced", "next_action": "advance",
                   "pr": {"pr_number": 7, "merge_probe": "merged"},
                   "milestone": {"number": 2, "count": 2, "label": "m2"}}),
        );
        let row = row(facts(&r, Some(&t), &w));
        assert_eq!(row.state, FleetState::Running);
        assert_eq!(row.milestone.unwrap().label.as_deref(), Some("m2"));
        assert!(row.attention.is_none());
    }

    #[test]
    fn names_are_the_project_folder() {
        assert_eq!(display_name("/home/me/shop/cloud.yaml"), "shop");
        assert_eq!(display_name("/home/me/shop/staging.yaml"), "shop/staging");
    }
}
