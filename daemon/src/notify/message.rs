//! What a notification says: the typed [`Notification`] of one event of one stored tick (and
//! of a test and a digest), led by what a person acts on — the chain, its milestone, its
//! state, the PR link, the one-line fix — with the local cloud.yaml path last. Pure: the
//! watcher passes in what it read (the tick, the event, the repository's web address).

use super::fleet::display_name;
use super::transitions::Event;
use megaplan_cloud_api::notification::{
    DigestChain, Notification, NotificationEvent, NotificationTick, PrLink, SCHEMA,
};
use megaplan_cloud_api::report::ChainPosition;
use megaplan_cloud_api::wire::TickRecord;

/// The GitHub web address of a `repo.url` (`https://github.com/o/r(.git)`,
/// `git@github.com:o/r(.git)`, `ssh://git@github.com/o/r(.git)`), where PR pages live; `None`
/// for any other host (no guess at other forges' URL layouts).
pub fn github_web(repo_url: &str) -> Option<String> {
    let u = repo_url.trim();
    let path = u
        .strip_prefix("https://github.com/")
        .or_else(|| u.strip_prefix("http://github.com/"))
        .or_else(|| u.strip_prefix("git@github.com:"))
        .or_else(|| u.strip_prefix("ssh://git@github.com/"))?;
    let path = path.trim_end_matches('/').trim_end_matches(".git");
    let mut parts = path.split('/');
    let (Some(owner), Some(repo), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (ok(owner) && ok(repo)).then(|| format!("https://github.com/{owner}/{repo}"))
}

/// `milestone 1/2 (m1)`.
pub fn milestone_text(m: &ChainPosition) -> String {
    match &m.label {
        Some(l) => format!("milestone {}/{} ({l})", m.number, m.count),
        None => format!("milestone {}/{}", m.number, m.count),
    }
}

/// The one thing to do, for the events that need a person.
fn fix(ev: NotificationEvent, rec: &TickRecord, pr: Option<&PrLink>) -> Option<String> {
    let attach = format!("megaplan-cloudctl --cloud-yaml {} attach", rec.cloud_yaml);
    let status = rec.report.effective_status.as_str();
    let waiting = match ev {
        NotificationEvent::StillWaiting => match status {
            "human_prerequisite" => NotificationEvent::HumanPrerequisite,
            "quality_gate" => NotificationEvent::QualityGate,
            _ => NotificationEvent::AwaitingPrMerge,
        },
        other => other,
    };
    Some(match waiting {
        NotificationEvent::AwaitingPrMerge => match pr {
            Some(PrLink { number, url }) => format!(
                "merge PR #{number}{}; the next tick starts the next milestone",
                url.as_deref()
                    .map(|u| format!(" ({u})"))
                    .unwrap_or_default()
            ),
            None => "merge the milestone's PR; the next tick starts the next milestone".into(),
        },
        NotificationEvent::HumanPrerequisite => format!(
            "resolve the prerequisite on the runner (`{attach}`, then `python -m arnold.pipelines.megaplan user-action resolve`)"
        ),
        NotificationEvent::QualityGate => format!(
            "fix the failing quality gate or accept it with debt on the runner (`{attach}`)"
        ),
        NotificationEvent::Stalled => format!("look at the runner: `{attach}`"),
        NotificationEvent::TicksFailing => {
            format!("run `megaplan-cloudctl explain {}`", rec.key)
        }
        _ => return None,
    })
}

/// The notification of one event of one stored tick. `repo_web` is the repository's web
/// address ([`github_web`]), for the PR link.
pub fn of_event(
    rec: &TickRecord,
    ev: &Event,
    repo_web: Option<&str>,
    created_at: &str,
) -> Notification {
    let r = &rec.report;
    let chain = display_name(&rec.cloud_yaml);
    let pr_number = r.pr.pr_number.flatten();
    let named_url =
        r.pr.rest
            .get("pr_url")
            .and_then(|v| v.as_str())
            .filter(|u| u.starts_with("https://"))
            .map(str::to_string);
    let pr = pr_number.map(|number| PrLink {
        number,
        url: named_url.or_else(|| repo_web.map(|w| format!("{w}/pull/{number}"))),
    });
    let fix = fix(ev.event, rec, pr.as_ref());
    let status = r.effective_status.to_string();
    let mut head = vec![chain.clone()];
    if let Some(m) = &r.milestone {
        head.push(milestone_text(m));
    }
    if rec.success {
        head.push(status.clone());
    }
    let reason = ev
        .details
        .reason()
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    let mut lines = vec![head.join(" · "), format!("{}{reason}", ev.title)];
    if let Some(PrLink { number, url }) = &pr {
        lines.push(match url {
            Some(u) => format!("PR #{number}: {u}"),
            None => format!("PR #{number}"),
        });
    }
    if let Some(f) = &fix {
        lines.push(format!("fix: {f}"));
    }
    lines.push(rec.cloud_yaml.clone());
    Notification {
        schema: SCHEMA.to_string(),
        event: ev.event,
        needs_person: ev.event.needs_person(),
        title: format!("{chain}: {}", ev.title),
        chain,
        milestone: r.milestone.clone(),
        effective_status: Some(status),
        pr,
        fix,
        message: lines.join("\n"),
        idempotency_key: ev.idempotency_key.clone(),
        id: format!("{}:{}:{}", rec.key, rec.id, ev.event),
        key: rec.key.clone(),
        spec: r.spec.clone(),
        tick: Some(NotificationTick {
            id: rec.id,
            trigger: rec.trigger.clone(),
            finished_at: rec.finished_at.clone(),
            success: rec.success,
            event: rec.event.clone(),
            next_action: rec.next_action.clone(),
            acted: rec.acted,
            refused_reason: rec.refused_reason.clone(),
        }),
        // The typed facts always serialize; `{}` stands in should that ever change.
        details: serde_json::to_value(&ev.details).unwrap_or_else(|_| serde_json::json!({})),
        digest: None,
        created_at: created_at.to_string(),
        cloud_yaml: rec.cloud_yaml.clone(),
    }
}

/// The test notification of `notifications test` (`key`/`cloud_yaml` empty for the daemon's
/// own sinks).
pub fn test(key: &str, cloud_yaml: &str, idempotency_key: &str, created_at: &str) -> Notification {
    let chain = if cloud_yaml.is_empty() {
        String::new()
    } else {
        display_name(cloud_yaml)
    };
    let title = "megaplan-cloudd test notification: this sink works".to_string();
    let mut lines = vec![
        title.clone(),
        "sent by `megaplan-cloudctl notifications test`; nothing needs doing".to_string(),
    ];
    if !cloud_yaml.is_empty() {
        lines.push(cloud_yaml.to_string());
    }
    Notification {
        schema: SCHEMA.to_string(),
        event: NotificationEvent::Test,
        needs_person: false,
        chain,
        milestone: None,
        effective_status: None,
        pr: None,
        fix: None,
        title,
        message: lines.join("\n"),
        idempotency_key: idempotency_key.to_string(),
        id: format!("test:{idempotency_key}"),
        key: key.to_string(),
        spec: String::new(),
        tick: None,
        details: serde_json::json!({}),
        digest: None,
        created_at: created_at.to_string(),
        cloud_yaml: cloud_yaml.to_string(),
    }
}

/// The digest of one period: one line per chain with its progress since the last digest.
pub fn digest(chains: Vec<DigestChain>, idempotency_key: &str, created_at: &str) -> Notification {
    let done: u32 = chains.iter().map(|c| c.milestones_done).sum();
    let title = format!(
        "{} chain{}, {done} milestone{} done since the last digest",
        chains.len(),
        if chains.len() == 1 { "" } else { "s" },
        if done == 1 { "" } else { "s" },
    );
    let mut lines = vec![title.clone()];
    for c in &chains {
        let at = c
            .milestone
            .as_ref()
            .map(milestone_text)
            .unwrap_or_else(|| "milestone ?".to_string());
        lines.push(format!(
            "{}: +{} done, now {at} · {}",
            c.chain, c.milestones_done, c.state
        ));
    }
    Notification {
        schema: SCHEMA.to_string(),
        event: NotificationEvent::Digest,
        needs_person: false,
        chain: String::new(),
        milestone: None,
        effective_status: None,
        pr: None,
        fix: None,
        title,
        message: lines.join("\n"),
        idempotency_key: idempotency_key.to_string(),
        id: format!("digest:{idempotency_key}"),
        key: String::new(),
        spec: String::new(),
        tick: None,
        details: serde_json::json!({}),
        digest: Some(chains),
        created_at: created_at.to_string(),
        cloud_yaml: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_addresses_and_nothing_else() {
        for u in [
            "https://github.com/o/r.git",
            "https://github.com/o/r",
            "git@github.com:o/r.git",
            "ssh://git@github.com/o/r.git",
        ] {
            assert_eq!(
                github_web(u).as_deref(),
                Some("https://github.com/o/r"),
                "{u}"
            );
        }
        for u in [
            "/srv/repo.git",
            "https://gitlab.com/o/r",
            "https://github.com/o",
            "https://github.com/o/r/x",
            "https://github.com/o/r?x=<y>",
        ] {
            assert_eq!(github_web(u), None, "{u}");
        }
    }
}
