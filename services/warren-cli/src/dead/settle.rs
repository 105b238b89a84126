//! `dead replay` and `dead purge`: the command line's side (dry run,
//! progress bar, confirmation, summary) of [`warren::dead::replay`] and
//! [`warren::dead::purge`], which say what a replay resets and why it never
//! loses a message.

use std::io::BufRead;

use indicatif::{ProgressBar, ProgressStyle};
use lapin::Connection;
use warren::dead::{ReplaySummary, release};

use super::{Summary, nothing_matched, scan_all};
use crate::args::Filters;
use crate::error::{CliError, Exit};
use crate::output::{Output, table};
use crate::settings::CliSettings;

pub async fn replay(
    settings: &CliSettings,
    out: &Output,
    connection: &Connection,
    filters: &Filters,
    rate: Option<f64>,
    dry_run: bool,
) -> Result<Exit, CliError> {
    if let Some(r) = rate
        && !(r > 0.0 && r.is_finite())
    {
        return Err(CliError::Usage(format!(
            "--rate must be a positive number, not {r}"
        )));
    }
    let scans = scan_all(settings, connection, filters).await?;
    let total: usize = scans.iter().map(|s| s.matched.len()).sum();
    if total == 0 {
        let exit = nothing_matched(&scans);
        release(scans).await;
        return Ok(exit);
    }
    if dry_run {
        let summary = ReplaySummary {
            dry_run,
            replayed: scans
                .iter()
                .flat_map(|s| s.matched.iter().map(|p| p.id.clone()))
                .collect(),
            ..Default::default()
        };
        if !out.json {
            let rows: Vec<Vec<String>> = scans
                .iter()
                .flat_map(|s| s.matched.iter().map(Summary::from))
                .map(|s| vec![s.queue, s.id, s.error_kind.unwrap_or_else(|| "-".into())])
                .collect();
            println!("{}", table(&["QUEUE", "ID", "KIND"], &rows));
            eprintln!("Dry run: {total} messages would be replayed; nothing moved.");
        }
        release(scans).await;
        if out.json {
            out.json(&summary);
        }
        return Ok(Exit::Ok);
    }
    let bar = if out.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} replayed  {per_sec}  eta {eta}")
    {
        bar.set_style(style);
    }
    let replayed = warren::dead::replay(
        &scans,
        &settings.names(),
        &warren_tasks::body_problem,
        rate,
        "warren-cli",
        |_| bar.inc(1),
    )
    .await;
    bar.finish_and_clear();
    release(scans).await;
    let summary = replayed?;
    report(out, &summary);
    if let Some(lost) = &summary.connection_lost {
        return Err(CliError::Other(format!(
            "the connection to the broker was lost after {} of {total} messages were replayed \
             ({lost}); the rest are still parked (the one in flight may also be on its work \
             queue): run the replay again",
            summary.replayed.len() + summary.parked_again.len()
        )));
    }
    Ok(
        if summary.failed.is_some() || !summary.parked_again.is_empty() {
            Exit::Incomplete
        } else {
            Exit::Ok
        },
    )
}

fn report(out: &Output, summary: &ReplaySummary) {
    if out.json {
        out.json(summary);
        return;
    }
    println!("Replayed {} messages.", summary.replayed.len());
    if !summary.parked_again.is_empty() {
        println!(
            "Parked again, their body no longer parses ({}):",
            summary.parked_again.len()
        );
        for r in &summary.parked_again {
            println!("  {}  {}  {}", r.id, r.error_kind, r.error);
        }
    }
    if let Some(f) = &summary.failed {
        println!(
            "Stopped: {} could not be republished and stays parked: {}",
            f.id, f.error
        );
    }
    if summary.not_reached > 0 {
        println!("Not reached, still parked: {}", summary.not_reached);
    }
}

pub async fn purge(
    settings: &CliSettings,
    out: &Output,
    connection: &Connection,
    filters: &Filters,
    yes: bool,
) -> Result<Exit, CliError> {
    let scans = scan_all(settings, connection, filters).await?;
    let total: usize = scans.iter().map(|s| s.matched.len()).sum();
    if total == 0 {
        let exit = nothing_matched(&scans);
        release(scans).await;
        return Ok(exit);
    }
    if !yes {
        let queues: Vec<&str> = scans
            .iter()
            .filter(|s| !s.matched.is_empty())
            .map(|s| s.queue.as_str())
            .collect();
        eprint!(
            "Delete {total} parked messages from {} for good? Type 'yes' to confirm: ",
            queues.join(", ")
        );
        let answer = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map(|_| line)
        })
        .await
        .map_err(|e| CliError::Other(e.to_string()))?
        .unwrap_or_default();
        if !matches!(answer.trim(), "yes" | "y") {
            release(scans).await;
            eprintln!("Not confirmed: nothing purged.");
            return Ok(Exit::NotConfirmed);
        }
    }
    let ids = warren::dead::purge(scans).await?;
    if out.json {
        out.json(&serde_json::json!({ "purged": ids.len(), "ids": ids }));
    } else {
        println!("Purged {} messages.", ids.len());
    }
    Ok(Exit::Ok)
}
