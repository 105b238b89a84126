//! `warren topology verify`: what the broker holds against what Warren's
//! code declares ([`warren::Topology`], the contract's work queues and the
//! retry ladder of `consumer.retry_delays`), as a diff. Read through the
//! management API, so verifying changes nothing.

use serde::Serialize;
use serde_json::Value;
use warren::Topology;
use warren::topology::{ExchangeSpec, QueueSpec};

use crate::error::{CliError, Exit};
use crate::mgmt::Management;
use crate::output::Output;
use crate::settings::CliSettings;

/// One difference.
#[derive(Debug, Serialize, PartialEq)]
pub struct Difference {
    /// `exchange`, `queue`, `binding`, `exchange binding`.
    pub object: &'static str,
    pub name: String,
    /// `missing`, or the argument that differs.
    pub what: String,
    pub broker_has: String,
    pub warren_wants: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub workers: Vec<String>,
    pub checked: usize,
    pub differences: Vec<Difference>,
}

pub async fn verify(
    settings: &CliSettings,
    out: &Output,
    workers: &[String],
) -> Result<Exit, CliError> {
    let management = Management::new(&settings.broker)?;
    let (queues, exchanges, bindings) = (
        management.queues().await?,
        management.exchanges().await?,
        management.bindings().await?,
    );
    let names = settings.names();
    let stems: Vec<(String, Vec<String>)> = if workers.is_empty() {
        warren_tasks::WORK_QUEUES
            .iter()
            .filter(|q| find(&queues, &names.work_queue(q.stem)).is_some())
            .map(|q| {
                (
                    q.stem.to_owned(),
                    q.binding_keys.iter().map(|k| (*k).to_owned()).collect(),
                )
            })
            .collect()
    } else {
        workers
            .iter()
            .map(|w| {
                let keys = warren_tasks::WORK_QUEUES
                    .iter()
                    .find(|q| q.stem == w)
                    .map(|q| q.binding_keys.iter().map(|k| (*k).to_owned()).collect())
                    .unwrap_or_else(|| vec![format!("{w}.#")]);
                (w.clone(), keys)
            })
            .collect()
    };
    if stems.is_empty() {
        return Err(CliError::NotFound(format!(
            "no work queue of a known worker in namespace '{}': name one with --worker",
            names.namespace()
        )));
    }
    let mut report = Report {
        workers: stems.iter().map(|(s, _)| s.clone()).collect(),
        checked: 0,
        differences: Vec::new(),
    };
    let mut seen = std::collections::BTreeSet::new();
    for (stem, keys) in &stems {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let topology = Topology::with_kind(
            &names,
            stem,
            &keys,
            &settings.consumer.retry_delays,
            settings.broker.queue_kind(),
        );
        for spec in topology.exchanges() {
            if seen.insert(format!("e {}", spec.name)) {
                report.checked += 1;
                check_exchange(&exchanges, &spec, &mut report.differences);
            }
        }
        for spec in topology.queues() {
            if seen.insert(format!("q {}", spec.name)) {
                report.checked += 1;
                check_queue(&queues, &spec, &mut report.differences);
            }
        }
        for b in topology.bindings() {
            let key = format!("b {} {} {}", b.queue, b.exchange, b.key);
            if seen.insert(key) {
                report.checked += 1;
                check_binding(
                    &bindings,
                    "binding",
                    "queue",
                    &b.exchange,
                    &b.queue,
                    &b.key,
                    &mut report.differences,
                );
            }
        }
        for b in topology.exchange_bindings() {
            let key = format!("x {} {} {}", b.source, b.destination, b.key);
            if seen.insert(key) {
                report.checked += 1;
                check_binding(
                    &bindings,
                    "exchange binding",
                    "exchange",
                    &b.source,
                    &b.destination,
                    &b.key,
                    &mut report.differences,
                );
            }
        }
    }
    if out.json {
        out.json(&report);
    } else if report.differences.is_empty() {
        println!(
            "Topology of {} in namespace '{}' matches: {} objects checked.",
            report.workers.join(", "),
            names.namespace(),
            report.checked
        );
    } else {
        for d in &report.differences {
            if d.what == "missing" {
                println!("- {} {}: missing on the broker", d.object, d.name);
            } else if d.what == "type" && d.object == "queue" {
                println!(
                    "~ queue {}: type: broker has {}, warren wants {} (broker.queue_type; a queue's type cannot change in place: see docs/operations.md, \"Switching a namespace's queue type\")",
                    d.name, d.broker_has, d.warren_wants
                );
            } else {
                println!(
                    "~ {} {}: {}: broker has {}, warren wants {}",
                    d.object, d.name, d.what, d.broker_has, d.warren_wants
                );
            }
        }
        println!(
            "{} differences in {} objects checked.",
            report.differences.len(),
            report.checked
        );
    }
    Ok(if report.differences.is_empty() {
        Exit::Ok
    } else {
        Exit::Mismatch
    })
}

fn find<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|v| v["name"].as_str() == Some(name))
}

fn missing(object: &'static str, name: &str) -> Difference {
    Difference {
        object,
        name: name.to_owned(),
        what: "missing".into(),
        broker_has: "none".into(),
        warren_wants: "present".into(),
    }
}

/// An AMQP argument as the management API shows it.
fn json_of(v: &lapin::types::AMQPValue) -> Value {
    use lapin::types::AMQPValue as A;
    match v {
        A::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        A::ShortString(s) => Value::String(s.to_string()),
        A::LongInt(n) => Value::from(*n),
        A::LongLongInt(n) => Value::from(*n),
        A::ShortInt(n) => Value::from(*n),
        A::Boolean(b) => Value::Bool(*b),
        other => Value::String(format!("{other:?}")),
    }
}

fn compare_arguments(
    object: &'static str,
    name: &str,
    broker: &Value,
    wanted: &[(&'static str, lapin::types::AMQPValue)],
    out: &mut Vec<Difference>,
) {
    let empty = serde_json::Map::new();
    let have = broker["arguments"].as_object().unwrap_or(&empty);
    let mut keys: std::collections::BTreeSet<&str> = have.keys().map(String::as_str).collect();
    keys.extend(wanted.iter().map(|(k, _)| *k));
    // A queue's type is compared as its type (`check_queue`): a classic
    // queue declared without the argument has none.
    keys.remove("x-queue-type");
    for key in keys {
        let has = have.get(key);
        let wants = wanted
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| json_of(v));
        if has != wants.as_ref() {
            out.push(Difference {
                object,
                name: name.to_owned(),
                what: key.to_owned(),
                broker_has: has.map_or_else(|| "none".to_owned(), Value::to_string),
                warren_wants: wants.map_or_else(|| "none".to_owned(), |v| v.to_string()),
            });
        }
    }
    if broker["durable"].as_bool() != Some(true) {
        out.push(Difference {
            object,
            name: name.to_owned(),
            what: "durable".into(),
            broker_has: broker["durable"].to_string(),
            warren_wants: "true".into(),
        });
    }
}

fn check_exchange(exchanges: &[Value], spec: &ExchangeSpec, out: &mut Vec<Difference>) {
    let Some(e) = find(exchanges, &spec.name) else {
        out.push(missing("exchange", &spec.name));
        return;
    };
    if e["type"].as_str() != Some(spec.kind_name()) {
        out.push(Difference {
            object: "exchange",
            name: spec.name.clone(),
            what: "type".into(),
            broker_has: e["type"].to_string(),
            warren_wants: spec.kind_name().into(),
        });
    }
    compare_arguments("exchange", &spec.name, e, &spec.arguments, out);
}

fn check_queue(queues: &[Value], spec: &QueueSpec, out: &mut Vec<Difference>) {
    let Some(q) = find(queues, &spec.name) else {
        out.push(missing("queue", &spec.name));
        return;
    };
    let wants_type = spec
        .arguments
        .iter()
        .find(|(k, _)| *k == "x-queue-type")
        .and_then(|(_, v)| json_of(v).as_str().map(str::to_owned))
        .unwrap_or_else(|| "classic".to_owned());
    let has_type = q["type"].as_str().unwrap_or("classic");
    if has_type != wants_type {
        // The other type's arguments differ too; the type says it all.
        out.push(Difference {
            object: "queue",
            name: spec.name.clone(),
            what: "type".into(),
            broker_has: has_type.to_owned(),
            warren_wants: wants_type,
        });
        return;
    }
    compare_arguments("queue", &spec.name, q, &spec.arguments, out);
    if q["exclusive"].as_bool() == Some(true) || q["auto_delete"].as_bool() == Some(true) {
        out.push(Difference {
            object: "queue",
            name: spec.name.clone(),
            what: "exclusive/auto_delete".into(),
            broker_has: "true".into(),
            warren_wants: "false".into(),
        });
    }
}

fn check_binding(
    bindings: &[Value],
    object: &'static str,
    destination_type: &str,
    source: &str,
    destination: &str,
    key: &str,
    out: &mut Vec<Difference>,
) {
    let found = bindings.iter().any(|b| {
        b["source"].as_str() == Some(source)
            && b["destination"].as_str() == Some(destination)
            && b["destination_type"].as_str() == Some(destination_type)
            && b["routing_key"].as_str() == Some(key)
    });
    if !found {
        out.push(missing(
            object,
            &format!("{destination} <- {source} ({key})"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;

    #[test]
    fn arguments_are_compared_both_ways() {
        let broker = serde_json::json!({"durable": true, "arguments": {"x-max-priority": 5, "x-max-length": 3}});
        let mut out = Vec::new();
        compare_arguments(
            "queue",
            "w.email",
            &broker,
            &[("x-max-priority", AMQPValue::LongInt(10))],
            &mut out,
        );
        let what: Vec<_> = out
            .iter()
            .map(|d| {
                (
                    d.what.as_str(),
                    d.broker_has.as_str(),
                    d.warren_wants.as_str(),
                )
            })
            .collect();
        assert_eq!(
            what,
            [("x-max-length", "3", "none"), ("x-max-priority", "5", "10")]
        );
    }

    #[test]
    fn a_queue_of_the_other_type_is_one_type_difference() {
        let spec = QueueSpec {
            name: "w.email".into(),
            arguments: vec![
                ("x-queue-type", AMQPValue::LongString("quorum".into())),
                ("x-delivery-limit", AMQPValue::LongLongInt(5)),
            ],
        };
        let classic = serde_json::json!({"name": "w.email", "type": "classic", "durable": true, "arguments": {"x-max-priority": 10}});
        let mut out = Vec::new();
        check_queue(&[classic], &spec, &mut out);
        assert_eq!(
            out,
            [Difference {
                object: "queue",
                name: "w.email".into(),
                what: "type".into(),
                broker_has: "classic".into(),
                warren_wants: "quorum".into(),
            }]
        );
        let quorum = serde_json::json!({"name": "w.email", "type": "quorum", "durable": true,
            "arguments": {"x-queue-type": "quorum", "x-delivery-limit": 5}});
        let mut out = Vec::new();
        check_queue(&[quorum], &spec, &mut out);
        assert_eq!(out, []);
    }
}
