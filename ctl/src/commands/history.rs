//! Tick history: `ticks` (the stored reports, newest first), `watch` (new reports as they are
//! stored) and `notifications` (the outbox). Each sends its query and renders the typed rows.

use super::registration::table_view;
use crate::cli::{Cmd, TickFilterArgs};
use crate::failure::fail;
use crate::target::Target;
use crate::{output, render};
use hyper::Method;
use megaplan_cloud_api::routes;
use megaplan_cloud_api::wire::{Frame, TickRecord};
use megaplan_cloudctl::client::{self, DaemonClient, enc};
use serde_json::Value;
use std::io::Write;

/// Run one of this family's commands.
pub async fn run(client: &DaemonClient, target: &Target, cmd: Cmd) -> i32 {
    match cmd {
        Cmd::Ticks {
            limit,
            all,
            filter,
            wide,
            ..
        } => ticks(client, target, limit, all, &filter, wide).await,
        Cmd::Watch {
            all,
            backlog,
            filter,
            ..
        } => watch(client, target, all, backlog, &filter).await,
        Cmd::Notifications {
            action: Some(_),
            all,
            ..
        } => {
            let shown = target.shown();
            super::notifications::test(client, (!all).then_some(shown.as_str()))
                .await
                .unwrap_or_else(|e| crate::failure::fail_for(e, &shown))
        }
        Cmd::Notifications { limit, all, .. } => notifications(client, target, limit, all).await,
        other => super::runner::not_mine(&other),
    }
}

/// `ticks`: the stored reports of one registration (or all), newest first.
pub async fn ticks(
    client: &DaemonClient,
    target: &Target,
    limit: u32,
    all: bool,
    filter: &TickFilterArgs,
    wide: bool,
) -> i32 {
    let json = output::json_mode();
    // One more than shown, to know whether older reports exist (`-n 0`: none shown).
    let asked = if json { limit } else { limit.saturating_add(1) };
    let mut q = format!("{}?limit={}", routes::TICKS, asked.max(1));
    if !all {
        q.push_str(&format!("&cloud_yaml={}", enc(&target.shown())));
    }
    q.push_str(&filter.query(enc));
    match client.json(Method::GET, &q, None).await {
        Ok(v) if json => {
            let v = match v {
                Value::Array(mut items) => {
                    items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                    Value::Array(items)
                }
                other => other,
            };
            output::print_json_doc(&v);
            0
        }
        Ok(v) => match client::parse_answer::<Vec<TickRecord>>(routes::TICKS, v) {
            Ok(mut rows) => {
                let keep = usize::try_from(limit).unwrap_or(usize::MAX);
                let more = rows.len() > keep;
                rows.truncate(keep);
                render::ticks_table(&rows, more, table_view(wide, None));
                0
            }
            Err(e) => fail(e),
        },
        Err(e) => fail(e),
    }
}

/// `watch`: every new tick report of one registration (or all) as it is stored.
pub async fn watch(
    client: &DaemonClient,
    target: &Target,
    all: bool,
    backlog: u32,
    filter: &TickFilterArgs,
) -> i32 {
    let mut q = format!("{}?backlog={backlog}", routes::TICKS_WATCH);
    if !all {
        q.push_str(&format!("&cloud_yaml={}", enc(&target.shown())));
    }
    q.push_str(&filter.query(enc));
    watch_stream(client, &q, output::json_mode()).await
}

/// `notifications`: the outbox of one registration (or all).
pub async fn notifications(client: &DaemonClient, target: &Target, limit: u32, all: bool) -> i32 {
    let mut q = format!("{}?limit={limit}", routes::NOTIFICATIONS);
    if !all {
        q.push_str(&format!("&cloud_yaml={}", enc(&target.shown())));
    }
    match client.json(Method::GET, &q, None).await {
        Ok(v) if output::json_mode() => {
            output::print_json_doc(&v);
            0
        }
        Ok(v) => {
            render::notifications_table(&v);
            0
        }
        Err(e) => fail(e),
    }
}

async fn watch_stream(client: &DaemonClient, q: &str, json: bool) -> i32 {
    if !json {
        eprintln!("watching tick reports (Ctrl-C to stop)");
    }
    let r = client
        .stream_get(q, |line| match serde_json::from_str::<Frame>(line) {
            Ok(Frame::Tick { tick }) => {
                if json {
                    output::print_json_line(&serde_json::to_value(&tick).unwrap_or_default());
                } else {
                    println!("{}", render::tick_record_line(&tick));
                }
                let _ = std::io::stdout().flush();
            }
            Ok(Frame::Stderr { data }) => eprint!("{data}"),
            _ => {}
        })
        .await;
    // The stream only ends when the daemon goes away (or drops this watcher): say so.
    match r {
        Ok(()) => {
            eprintln!(
                "watch: the daemon closed the stream (it stopped or restarted); run `megaplan-cloudctl watch` again once it is back"
            );
            3
        }
        Err(e) => {
            eprintln!("watch: lost the daemon");
            fail(e)
        }
    }
}
