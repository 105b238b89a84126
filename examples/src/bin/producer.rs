//! A producer: publishes one task, confirmed, and prints its id.
//!
//! ```text
//! producer cleanup uploads/tmp 30
//! producer digest 2026-W48 ada@example.org grace@example.org
//! ```

use anyhow::{Context, bail};
use warren::prelude::*;
use warren::settings::WorkerSettings;
use warren_examples::{CleanupOldFiles, SendWeeklyDigest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = WorkerSettings::load()?;
    let publisher = Publisher::connect(&settings.broker).await?;
    let id = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["cleanup", dir, days] => {
            let task = CleanupOldFiles {
                dir: (*dir).to_owned(),
                older_than_days: days.parse().context("days: a whole number")?,
            };
            publisher
                .publish_task(CleanupOldFiles::TYPE, &task, PublishOptions::default())
                .await?
        }
        ["digest", week, recipients @ ..] => {
            let task = SendWeeklyDigest {
                week: (*week).to_owned(),
                recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
            };
            publisher
                .publish_task(SendWeeklyDigest::TYPE, &task, PublishOptions::default())
                .await?
        }
        _ => bail!("usage: producer cleanup <dir> <days> | producer digest <week> <email>..."),
    };
    println!("{id}");
    Ok(())
}
