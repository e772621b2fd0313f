//! `megaplan-cloudctl ls` (alias `fleet`): "how are my chains?" One row per registration from
//! `GET /v1/fleet`, what needs a person first, then what to do about each. `--watch` redraws
//! after every tick the daemon stores (its `ticks/watch` feed; no polling here).

use crate::columns::{self, Cell, Column, Fit};
use crate::output;
use crate::render::relative;
use chrono::{DateTime, Utc};
use hyper::Method;
use megaplan_cloud_api::fleet::{Fleet, FleetRow, FleetState};
use megaplan_cloud_api::routes;
use megaplan_cloud_api::wire::Frame;
use megaplan_cloudctl::client::{ClientError, DaemonClient};
use std::io::Write;

/// How the fleet is shown.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// Terminal columns; `None` (`--wide`) shows every cell whole.
    pub width: Option<usize>,
    pub color: bool,
    /// At most this many rows (`-n`); `None` for all.
    pub limit: Option<usize>,
}

const COLUMNS: [Column; 7] = [
    Column {
        header: "NAME",
        // Names are cut last: the place column gives way first.
        fit: Fit::Cut { min: 8 },
    },
    Column {
        header: "KEY",
        fit: Fit::Keep,
    },
    Column {
        header: "STATE",
        fit: Fit::Keep,
    },
    Column {
        header: "MILESTONE",
        fit: Fit::Cut { min: 5 },
    },
    Column {
        header: "WHERE",
        fit: Fit::Cut { min: 5 },
    },
    Column {
        header: "LOG GREW",
        fit: Fit::Keep,
    },
    Column {
        header: "NEXT",
        fit: Fit::Keep,
    },
];

/// The state as a person reads it, and its colour.
pub fn state_cell(r: &FleetRow) -> Cell {
    let (text, sgr) = match r.state {
        FleetState::Quarantined => ("quarantined".to_string(), "1;31"),
        FleetState::NeedsPerson => ("needs a person".to_string(), "1;31"),
        FleetState::Stalled => (
            format!(
                "stalled {}",
                megaplan_cloud_api::duration::coarse(
                    r.stalled_for_secs.unwrap_or(0).unsigned_abs()
                )
            ),
            "33",
        ),
        FleetState::BackingOff => ("backing off".to_string(), "33"),
        FleetState::AwaitingPr => (
            r.pr_number.map_or_else(
                || "awaiting PR".to_string(),
                |n| format!("awaiting PR #{n}"),
            ),
            "36",
        ),
        FleetState::Paused => ("paused".to_string(), "35"),
        FleetState::Running => ("running".to_string(), "32"),
        FleetState::Unknown => ("unknown".to_string(), "2"),
        FleetState::Complete => ("complete".to_string(), "34"),
    };
    Cell::painted(text, sgr)
}

fn milestone_text(r: &FleetRow) -> String {
    match &r.milestone {
        Some(m) => match &m.label {
            Some(l) => format!("{}/{} {l}", m.number, m.count),
            None => format!("{}/{}", m.number, m.count),
        },
        None => "-".to_string(),
    }
}

fn where_text(r: &FleetRow) -> String {
    match (&r.provider, &r.host) {
        (Some(p), Some(h)) => format!("{p} {h}"),
        (Some(p), None) => p.clone(),
        _ => "-".to_string(),
    }
}

fn when(at: Option<&str>, now: DateTime<Utc>) -> String {
    at.map_or_else(|| "-".to_string(), |t| relative(t, now))
}

/// The fleet as text: the table, what each registration that needs a person needs, and a
/// count line. Pure: the daemon's `generated_at` is "now".
pub fn text(f: &Fleet, view: &View) -> String {
    let total = f.registrations.len();
    if total == 0 {
        return "no registrations; add one with `megaplan-cloudctl register --cloud-yaml PATH`\n"
            .to_string();
    }
    let now = DateTime::parse_from_rfc3339(&f.generated_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now());
    let shown: Vec<&FleetRow> = f
        .registrations
        .iter()
        .take(view.limit.unwrap_or(total))
        .collect();
    let rows: Vec<Vec<Cell>> = shown
        .iter()
        .map(|r| {
            vec![
                Cell::plain(r.name.clone()),
                Cell::plain(r.key.clone()),
                state_cell(r),
                Cell::plain(milestone_text(r)),
                Cell::plain(where_text(r)),
                Cell::plain(when(r.last_progress_at.as_deref(), now)),
                Cell::plain(when(r.next_tick_at.as_deref(), now)),
            ]
        })
        .collect();
    let fit = |line: String| match view.width {
        Some(w) => columns::truncate(&line, w),
        None => line,
    };
    let mut out: Vec<String> = if rows.is_empty() {
        Vec::new()
    } else {
        columns::render(&COLUMNS, &rows, view.width, view.color)
    };
    let needing: Vec<&&FleetRow> = shown.iter().filter(|r| r.attention.is_some()).collect();
    if !needing.is_empty() {
        out.push(String::new());
        out.push(paint("needs you:", "1", view.color));
        for r in needing {
            if let Some(a) = &r.attention {
                let reason = output::strip_controls(&a.reason).replace('\n', " ");
                let fix = output::strip_controls(&a.fix).replace('\n', " ");
                out.extend(columns::wrap(
                    &format!("{}: {reason}", r.name),
                    view.width,
                    "  ",
                    "    ",
                ));
                out.extend(columns::wrap(&fix, view.width, "    → ", "      "));
            }
        }
    }
    // A driver not seen alive, with the evidence (a live one needs no line: the table says
    // running). Its own lines: at 80 columns the table has no room for another column.
    let unsure: Vec<_> = shown
        .iter()
        .filter_map(|r| r.liveness.as_ref().map(|l| (r, l)))
        .filter(|(_, l)| l.state != megaplan_cloud_api::liveness::LiveState::Live)
        .collect();
    if !unsure.is_empty() {
        out.push(String::new());
        out.push(paint("drivers:", "1", view.color));
        for (r, l) in unsure {
            let detail = output::strip_controls(&l.evidence.detail).replace('\n', " ");
            out.extend(columns::wrap(
                &format!("{}: {} — {detail}", r.name, l.state),
                view.width,
                "  ",
                "    ",
            ));
        }
    }
    for r in shown.iter().filter(|r| r.paused.is_some()) {
        if let Some(p) = &r.paused {
            let reason = p
                .reason
                .as_deref()
                .map(|x| format!(": {}", output::strip_controls(x)))
                .unwrap_or_default();
            out.push(fit(format!(
                "{} paused by {} {}{reason}",
                r.name,
                p.paused_by,
                relative(&p.since, now)
            )));
        }
    }
    out.push(String::new());
    let mut count = counts(f);
    if let Some(cut) = columns::footer(shown.len(), total) {
        count.push_str(&format!(" · {cut}"));
    }
    out.push(fit(count));
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// "3 registrations: 1 needs a person, 1 awaiting a PR, 1 running".
fn counts(f: &Fleet) -> String {
    let mut by_state: Vec<(FleetState, usize)> = Vec::new();
    for r in &f.registrations {
        match by_state.iter_mut().find(|(s, _)| *s == r.state) {
            Some((_, n)) => *n += 1,
            None => by_state.push((r.state, 1)),
        }
    }
    by_state.sort_by_key(|(s, _)| s.rank());
    let parts: Vec<String> = by_state
        .iter()
        .map(|(s, n)| {
            let word = match s {
                FleetState::Quarantined => "quarantined",
                FleetState::NeedsPerson => "needing a person",
                FleetState::Stalled => "stalled",
                FleetState::BackingOff => "backing off",
                FleetState::AwaitingPr => "awaiting a PR",
                FleetState::Paused => "paused",
                FleetState::Running => "running",
                FleetState::Unknown => "unknown",
                FleetState::Complete => "complete",
            };
            format!("{n} {word}")
        })
        .collect();
    let total = f.registrations.len();
    let noun = if total == 1 {
        "registration"
    } else {
        "registrations"
    };
    format!("{total} {noun}: {}", parts.join(", "))
}

fn paint(text: &str, sgr: &str, color: bool) -> String {
    if color {
        format!("\x1b[{sgr}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// `ls`: print the fleet once.
pub async fn show(client: &DaemonClient, view: View) -> Result<(), ClientError> {
    let v = client.json(Method::GET, routes::FLEET, None).await?;
    if output::json_mode() {
        output::print_json_doc(&v);
        return Ok(());
    }
    let f: Fleet = megaplan_cloudctl::client::parse_answer(routes::FLEET, v)?;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text(&f, &view).as_bytes());
    let _ = o.flush();
    Ok(())
}

/// `ls --watch`: draw the fleet, then draw it again after every tick report the daemon stores.
/// The daemon's `ticks/watch` stream is the clock: each frame wakes the redraw, nothing here
/// polls. Returns when the daemon ends the stream (it stopped) or cannot be reached.
pub async fn watch(client: &DaemonClient, view: View) -> Result<(), ClientError> {
    let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel::<()>();
    let feed = format!("{}?backlog=0", routes::TICKS_WATCH);
    // The first frame (the daemon's note that the watch began) comes once it has subscribed:
    // drawing then cannot miss a tick stored between the first draw and the subscription.
    let stream = client.stream_get(&feed, move |line| {
        if matches!(
            serde_json::from_str::<Frame>(line),
            Ok(Frame::Tick { .. } | Frame::Stderr { .. })
        ) {
            let _ = wake.send(());
        }
    });
    let draw = async {
        while woken.recv().await.is_some() {
            // Ticks that landed while the last view was fetched are all in the next one.
            while woken.try_recv().is_ok() {}
            let v = client.json(Method::GET, routes::FLEET, None).await?;
            if output::json_mode() {
                output::print_json_line(&v);
            } else {
                let mut o = std::io::stdout().lock();
                let f: Fleet = megaplan_cloudctl::client::parse_answer(routes::FLEET, v)?;
                let at = f.generated_at.get(11..19).unwrap_or_default().to_string();
                // Home the cursor and clear the screen: the view is redrawn in place.
                let _ = write!(
                    o,
                    "\x1b[H\x1b[2J{}\n{}",
                    paint(
                        &format!("fleet at {at} UTC, redrawn after every tick (Ctrl-C to stop)"),
                        "2",
                        view.color
                    ),
                    text(&f, &view)
                );
                let _ = o.flush();
            }
        }
        Ok::<(), ClientError>(())
    };
    tokio::select! {
        r = stream => r,
        r = draw => r,
    }
}

/// `ls [--watch] [--wide] [-n N]`: the fleet once, or redrawn on every change until the daemon
/// goes away (then exit 3, said on stderr).
pub async fn run(client: &DaemonClient, watching: bool, wide: bool, limit: Option<usize>) -> i32 {
    let view = View {
        width: (!wide).then(crate::columns::terminal_width),
        color: output::get().color,
        limit,
    };
    let shown = if watching {
        watch(client, view).await
    } else {
        show(client, view).await
    };
    match shown {
        Ok(()) if watching => {
            eprintln!(
                "ls --watch: the daemon closed the stream (it stopped or restarted); run it again once the daemon is back"
            );
            3
        }
        Ok(()) => 0,
        Err(e) => crate::failure::fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use megaplan_cloud_api::fleet::Attention;
    use megaplan_cloud_api::report::ChainPosition;

    fn row(name: &str, key: &str, state: FleetState) -> FleetRow {
        FleetRow {
            key: key.into(),
            cloud_yaml: format!("/home/someone/projects/{name}/cloud.yaml"),
            name: name.into(),
            provider: Some("ssh".into()),
            host: Some("build-box-with-a-long-name.example.org".into()),
            milestone: Some(ChainPosition {
                number: 2,
                count: 5,
                label: Some("payments-and-invoicing-rework".into()),
            }),
            state,
            pr_number: None,
            stalled_for_secs: None,
            consecutive_failures: 0,
            last_tick_at: Some("2026-12-01T11:58:00Z".into()),
            last_progress_at: Some("2026-12-01T11:59:20Z".into()),
            next_tick_at: Some("2026-12-01T12:04:00Z".into()),
            schedule: "every:300".into(),
            paused: None,
            backoff: None,
            attention: None,
            liveness: None,
        }
    }

    fn fleet() -> Fleet {
        let mut stalled = row(
            "a-project-with-a-rather-long-name",
            "0123456789abcdef",
            FleetState::Stalled,
        );
        stalled.stalled_for_secs = Some(841);
        stalled.attention = Some(Attention {
            reason: "the runner is alive but its log has not grown for 14m".into(),
            fix: "look at the runner: `megaplan-cloudctl --cloud-yaml /home/someone/projects/a-project-with-a-rather-long-name/cloud.yaml attach`".into(),
        });
        let mut pr = row("shop", "fedcba9876543210", FleetState::AwaitingPr);
        pr.pr_number = Some(7);
        pr.attention = Some(Attention {
            reason: "PR #7 waits to be merged".into(),
            fix: "merge PR #7; the next tick starts the next milestone".into(),
        });
        Fleet {
            generated_at: "2026-12-01T12:00:00Z".into(),
            registrations: vec![
                stalled,
                pr,
                row("blog", "00000000000000aa", FleetState::Running),
            ],
        }
    }

    #[test]
    fn at_80_columns_keys_and_states_stay_whole_and_nothing_wraps() {
        let view = View {
            width: Some(80),
            color: false,
            limit: None,
        };
        let t = text(&fleet(), &view);
        for line in t.lines() {
            assert!(columns::chars(line) <= 80, "{} chars: {line}", line.len());
        }
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{t}");
        assert!(lines[1].contains("0123456789abcdef") && lines[1].contains("stalled 14m"));
        assert!(lines[2].contains("fedcba9876543210") && lines[2].contains("awaiting PR #7"));
        assert!(
            lines[1].contains("40s ago") && lines[1].contains("in 4m"),
            "{t}"
        );
        assert!(lines[1].contains('…'), "the long name is cut: {t}");
        assert!(t.contains("needs you:"), "{t}");
        assert!(t.contains("  shop: PR #7 waits to be merged"), "{t}");
        assert!(t.contains("    → merge PR #7"), "{t}");
        assert!(
            t.contains("3 registrations: 1 stalled, 1 awaiting a PR, 1 running"),
            "{t}"
        );
    }

    #[test]
    fn wide_shows_everything_and_a_cut_list_says_so() {
        let wide = text(
            &fleet(),
            &View {
                width: None,
                color: false,
                limit: None,
            },
        );
        assert!(wide.contains("a-project-with-a-rather-long-name"));
        assert!(wide.contains("2/5 payments-and-invoicing-rework"));
        let cut = text(
            &fleet(),
            &View {
                width: Some(80),
                color: false,
                limit: Some(1),
            },
        );
        assert!(cut.contains("showing 1 of 3"), "{cut}");
        assert!(!cut.contains("fedcba9876543210"), "{cut}");
        let none = text(
            &fleet(),
            &View {
                width: Some(80),
                color: false,
                limit: Some(0),
            },
        );
        assert!(
            none.contains("showing 0 of 3") && !none.contains("NAME"),
            "{none}"
        );
    }

    #[test]
    fn an_empty_fleet_says_how_to_add_one() {
        let f = Fleet {
            generated_at: "2026-12-01T12:00:00Z".into(),
            registrations: vec![],
        };
        let view = View {
            width: Some(80),
            color: false,
            limit: None,
        };
        assert!(text(&f, &view).contains("megaplan-cloudctl register"));
    }
}
