//! `warren publish <type> <json>`: a task, published as Warren's producers
//! publish (confirmed, `mandatory`), optionally delayed.

use std::io::Read;
use std::time::Duration;

use warren::{PublishOptions, Publisher};

use crate::error::{CliError, Exit};
use crate::output::Output;
use crate::settings::CliSettings;

pub async fn run(
    settings: &CliSettings,
    out: &Output,
    task_type: &str,
    body: &str,
    priority: Option<u8>,
    delay: Option<Duration>,
    id: Option<String>,
) -> Result<Exit, CliError> {
    let text = if body == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Other(format!("could not read the body from stdin: {e}")))?;
        s
    } else {
        body.to_owned()
    };
    let body: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("the body is not JSON: {e}")))?;
    if !body.is_object() {
        return Err(CliError::Usage("the body must be a JSON object".into()));
    }
    let publisher = Publisher::connect(&settings.broker).await?;
    let mut options = PublishOptions {
        id,
        priority,
        ..Default::default()
    };
    if let Some(d) = delay {
        options = options.delay(d);
    }
    let id = publisher.publish_task(task_type, &body, options).await?;
    if out.json {
        out.json(&serde_json::json!({ "task_id": id, "task_type": task_type }));
    } else {
        println!("{id}");
    }
    Ok(Exit::Ok)
}
