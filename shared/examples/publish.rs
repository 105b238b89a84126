//! Publishes one task and prints its id once the broker confirmed it.
//!
//! ```text
//! cargo run -q -p warren-shared --example publish -- email.send '{"to":"ada@example.com","subject":"Hi","text":"Hello"}' [priority]
//! ```
//!
//! Broker and namespace come from the usual settings (`WARREN_BROKER__URL`,
//! `WARREN_BROKER__NAMESPACE`).

use anyhow::Context;
use serde::{Deserialize, Serialize};
use warren::settings::BrokerSettings;
use warren::{PublishOptions, Publisher};

#[derive(Default, Deserialize, Serialize)]
#[serde(default)]
struct ProducerSettings {
    broker: BrokerSettings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: publish <task type> '<json body>' [priority 0-9]";
    let task_type = args.next().context(usage)?;
    let body: serde_json::Value =
        serde_json::from_str(&args.next().context(usage)?).context("the body is not valid JSON")?;
    let priority = args
        .next()
        .map(|p| p.parse::<u8>())
        .transpose()
        .context("the priority is not a number from 0 to 9")?;
    // Not `deny_unknown_fields`: a worker's other settings may be in the
    // same environment.
    let settings: ProducerSettings = warren::settings::load()?;
    let publisher = Publisher::connect(&settings.broker).await?;
    let id = publisher
        .publish_task(
            &task_type,
            &body,
            PublishOptions {
                priority,
                ..Default::default()
            },
        )
        .await?;
    println!("{id}");
    Ok(())
}
