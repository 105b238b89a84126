//! `asyncapi.yaml` agrees with the code: every exchange, queue, queue
//! argument, binding, routing key and header the code declares or writes
//! appears in the document with the same values, and nothing the document
//! names is unknown to the code.
//!
//! The code side is taken from the values Warren really declares (the
//! topology specs of each work queue in the contract crate, with the
//! default retry ladder, and the events exchange and stream) and the
//! contract's header lists; the document side from its channels' AMQP
//! bindings and its header schemas. Names are compared in the document's
//! namespace, `warren`. As a last net, every `"x-..."` string in the
//! services' and libraries' sources must appear in the document.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lapin::types::AMQPValue;
use serde_json::Value;
use warren::contract::{
    CONTENT_TYPE_JSON, EVENT_ENVELOPE_CONTENT_TYPE, EVENT_ENVELOPE_MESSAGE_TYPE,
    EVENT_MESSAGE_TYPE, MAX_PRIORITY, PERSISTENT, broker_headers, headers,
};
use warren::events::envelope;
use warren::settings::ConsumerSettings;
use warren::topology::delay::DELAY_LEVELS;
use warren::topology::{Binding, ExchangeSpec, QueueSpec};
use warren::{DeadReason, Names, TaskEvent, TaskState, Topology, task_properties};
use warren_tasks::{TASK_TYPES, WORK_QUEUES};

/// The namespace the document is written in.
const NAMESPACE: &str = "warren";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn document() -> Value {
    let text = std::fs::read_to_string(repo().join("asyncapi.yaml")).expect("asyncapi.yaml reads");
    serde_yaml_ng::from_str(&text).expect("asyncapi.yaml is YAML")
}

/// The AMQP bindings of every channel, with the channel's address.
fn amqp_channels(doc: &Value) -> Vec<(String, &Value)> {
    let channels = doc["channels"].as_object().expect("channels");
    channels
        .values()
        .map(|c| {
            let address = c["address"].as_str().expect("address").to_owned();
            (address, &c["bindings"]["amqp"])
        })
        .collect()
}

/// What the code declares, in the document's namespace.
struct Declared {
    exchanges: BTreeMap<String, &'static str>,
    queues: Vec<QueueSpec>,
    bindings: BTreeSet<(String, String, String)>,
    names: Names,
}

fn declared(retention: Duration) -> Declared {
    let names = Names::new(NAMESPACE);
    let delays = ConsumerSettings::default().retry_delays;
    let mut exchanges = BTreeMap::new();
    let mut queues = Vec::new();
    let mut bindings = BTreeSet::new();
    let mut bind = |b: Binding| bindings.insert((b.queue, b.exchange, b.key));
    for queue in WORK_QUEUES {
        let topology = Topology::new(&names, queue.stem, queue.binding_keys, &delays);
        for e in topology.exchanges() {
            exchanges.insert(e.name.clone(), e.kind_name());
        }
        for q in topology.queues() {
            // The delay cascade is the namespace's: every worker declares it.
            if !queues.iter().any(|known: &QueueSpec| known.name == q.name) {
                queues.push(q);
            }
        }
        topology.bindings().into_iter().for_each(|b| {
            bind(b);
        });
    }
    let events = ExchangeSpec::events(&names);
    exchanges.insert(events.name.clone(), events.kind_name());
    queues.push(QueueSpec::events_stream(&names, retention));
    bind(Binding::events_stream(&names));
    Declared {
        exchanges,
        queues,
        bindings,
        names,
    }
}

/// An argument's value as the document writes it.
fn shown(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        other => panic!("the test does not know how the document shows {other:?}"),
    }
}

/// A value as text: a string as it is, a number in decimal.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// `<..., e.g. 30000 for 30s>`: the example value and what it is for.
fn placeholder_example(text: &str) -> Option<(String, Option<String>)> {
    let inner = text.strip_prefix('<')?.strip_suffix('>')?;
    let example = inner.split("e.g. ").nth(1)?;
    let mut words = example.split_whitespace();
    let value = words.next()?.to_owned();
    let for_what = match (words.next(), words.next()) {
        (Some("for"), Some(what)) => Some(what.to_owned()),
        _ => None,
    };
    Some((value, for_what))
}

/// Whether a queue or exchange name of the code matches a channel's name,
/// in which `{delay}` stands for a delay label and `{level}` for a level of
/// the delay cascade.
fn name_matches(documented: &str, name: &str) -> bool {
    let (placeholder, digits) = match documented.split_once("{delay}") {
        Some(p) => (Some(p), false),
        None => (documented.split_once("{level}"), true),
    };
    match placeholder {
        Some((head, tail)) => {
            let fits = name.len() > head.len() + tail.len()
                && name.starts_with(head)
                && name.ends_with(tail);
            let middle = if fits {
                &name[head.len()..name.len() - tail.len()]
            } else {
                "."
            };
            !middle.contains('.') && (!digits || middle.bytes().all(|b| b.is_ascii_digit()))
        }
        None => documented == name,
    }
}

/// A documented binding of a queue made concrete for one of the queues its
/// channel stands for: `{level}` is the queue's level of the delay cascade
/// and `{skip}` the `*.` words before that level's word of the routing key.
fn concrete(template: &str, queue: &str) -> String {
    if !template.contains("{level}") && !template.contains("{skip}") {
        return template.to_owned();
    }
    let level: u32 = queue
        .rsplit('.')
        .next()
        .and_then(|l| l.parse().ok())
        .expect("a delay level queue ends with its level");
    template
        .replace("{level}", &format!("{level:02}"))
        .replace("{skip}", &"*.".repeat((DELAY_LEVELS - 1 - level) as usize))
}

/// The retention the document gives as the stream's `x-max-age` example.
fn documented_retention(doc: &Value) -> Duration {
    for (_, amqp) in amqp_channels(doc) {
        if let Some(age) = amqp["queue"]["x-arguments"]["x-max-age"].as_str() {
            let (value, _) = placeholder_example(age).expect("x-max-age gives an example");
            let secs = value.strip_suffix('s').expect("x-max-age in seconds");
            return Duration::from_secs(secs.parse().expect("x-max-age is a number of seconds"));
        }
    }
    panic!("no queue of the document has x-max-age");
}

#[test]
fn every_exchange_is_documented_with_its_type_and_nothing_else_is() {
    let doc = document();
    let code = declared(documented_retention(&doc));
    let mut documented = BTreeMap::new();
    for (address, amqp) in amqp_channels(&doc) {
        if amqp["is"] != "routingKey" {
            continue;
        }
        let e = &amqp["exchange"];
        let name = e["name"].as_str().expect("exchange name").to_owned();
        assert_eq!(e["durable"], true, "{name} is declared durable");
        assert_eq!(e["autoDelete"], false, "{name} is not auto-deleted");
        let kind = e["type"].as_str().expect("exchange type").to_owned();
        let names: Vec<String> = if name.contains('{') {
            code.exchanges
                .keys()
                .filter(|n| name_matches(&name, n))
                .cloned()
                .collect()
        } else {
            vec![name.clone()]
        };
        assert!(!names.is_empty(), "{name} matches no exchange of the code");
        for name in names {
            if let Some(other) = documented.insert(name.clone(), kind.clone()) {
                assert_eq!(other, kind, "{name} has one type ({address})");
            }
        }
    }
    let code: BTreeMap<String, String> = code
        .exchanges
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
    assert_eq!(documented, code, "exchanges: the document vs the code");
}

#[test]
fn every_queue_is_documented_with_its_arguments_and_bindings() {
    let doc = document();
    let code = declared(documented_retention(&doc));
    let mut matched = BTreeSet::new();
    let mut documented_bindings = BTreeSet::new();
    for (_, amqp) in amqp_channels(&doc) {
        if amqp["is"] != "queue" {
            continue;
        }
        let q = &amqp["queue"];
        let name = q["name"].as_str().expect("queue name");
        assert_eq!(q["durable"], true, "{name} is declared durable");
        assert_eq!(q["exclusive"], false, "{name} is not exclusive");
        assert_eq!(q["autoDelete"], false, "{name} is not auto-deleted");
        let specs: Vec<&QueueSpec> = code
            .queues
            .iter()
            .filter(|s| name_matches(name, &s.name))
            .collect();
        assert!(
            !specs.is_empty(),
            "the document's queue {name} is unknown to the code"
        );
        let arguments = q["x-arguments"].as_object().expect("x-arguments");
        for spec in &specs {
            matched.insert(spec.name.clone());
            let keys: BTreeSet<&str> = spec.arguments.iter().map(|(k, _)| *k).collect();
            let doc_keys: BTreeSet<&str> = arguments.keys().map(String::as_str).collect();
            assert_eq!(doc_keys, keys, "the arguments of {}", spec.name);
            let queue_type = spec
                .arguments
                .iter()
                .find(|(k, _)| *k == "x-queue-type")
                .map_or(Value::from("classic"), |(_, v)| shown(v));
            assert_eq!(q["x-queue-type"], queue_type, "the type of {}", spec.name);
        }
        for (argument, value) in arguments {
            let values: Vec<(&str, Value)> = specs
                .iter()
                .filter_map(|s| {
                    let v = s.arguments.iter().find(|(k, _)| k == argument)?;
                    Some((s.name.as_str(), shown(&v.1)))
                })
                .collect();
            match value.as_str().and_then(placeholder_example) {
                // A value that varies by queue: the example must be one
                // the code writes, for the queue it names.
                Some((example, for_what)) => {
                    let hit = values.iter().find(|(_, v)| text(v) == example);
                    let (queue, _) = hit.unwrap_or_else(|| {
                        panic!("{name} {argument}: the example {example} is no value the code writes ({values:?})")
                    });
                    if let Some(what) = for_what {
                        assert!(
                            queue.ends_with(&format!(".{what}")),
                            "{name} {argument}: {example} is the value of {queue}, not of the {what} one"
                        );
                    }
                }
                None => {
                    for (queue, v) in &values {
                        assert_eq!(value, v, "{queue} {argument}");
                    }
                }
            }
        }
        for b in q["x-bindings"].as_array().into_iter().flatten() {
            for spec in &specs {
                let exchange = b["exchange"].as_str().expect("binding exchange");
                let key = b["bindingKey"].as_str().expect("binding key");
                documented_bindings.insert((
                    spec.name.clone(),
                    concrete(exchange, &spec.name),
                    concrete(key, &spec.name),
                ));
            }
        }
    }
    let all: BTreeSet<String> = code.queues.iter().map(|q| q.name.clone()).collect();
    let missing: Vec<_> = all.difference(&matched).collect();
    assert!(
        missing.is_empty(),
        "queues the document does not describe: {missing:?}"
    );
    assert_eq!(
        documented_bindings, code.bindings,
        "bindings: the document vs the code"
    );
}

#[test]
fn every_routing_key_is_documented() {
    let doc = document();
    let code = declared(documented_retention(&doc));
    let tasks = code.names.tasks_exchange();
    let dead = code.names.dead_exchange();
    let events = code.names.events_exchange();
    let work_queues: BTreeSet<String> = WORK_QUEUES
        .iter()
        .map(|q| code.names.work_queue(q.stem))
        .collect();
    let mut task_keys = BTreeSet::new();
    let mut dead_keys = BTreeSet::new();
    let mut event_channels = Vec::new();
    let mut delay_channels = BTreeSet::new();
    let delay_prefix = format!("{NAMESPACE}.delay.");
    for (address, amqp) in amqp_channels(&doc) {
        if amqp["is"] != "routingKey" {
            continue;
        }
        let exchange = amqp["exchange"]["name"].as_str().expect("exchange name");
        if exchange == tasks {
            task_keys.insert(address);
        } else if exchange == dead {
            dead_keys.insert(address);
        } else if exchange == events {
            event_channels.push(address);
        } else if exchange.starts_with(&delay_prefix) {
            delay_channels.insert(exchange.to_owned());
        } else {
            panic!("routing key {address} on an exchange the code does not declare: {exchange}");
        }
    }
    let delay_exchanges: BTreeSet<String> = [
        format!("{delay_prefix}{{level}}"),
        code.names.delay_exit(),
        code.names.delay_delivery_exchange(),
        code.names.delay_unrouted(),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        delay_channels, delay_exchanges,
        "the delay cascade's exchanges"
    );
    let types: BTreeSet<String> = TASK_TYPES.iter().map(|t| (*t).to_owned()).collect();
    assert_eq!(task_keys, types, "task types on {tasks}");
    // The parking-lot copies and the broker's own dead-lettering both use
    // the work queue's name as the routing key.
    assert_eq!(dead_keys, work_queues, "routing keys on {dead}");
    event_channels.sort();
    assert_eq!(
        event_channels,
        [
            "conductor.mark",
            "{callbackType}.chord",
            "{callbackType}.chord.abort",
            "{envelopeKey}",
            "{firstStepType}.workflow",
            "{taskType}.{state}"
        ],
        "routing keys on {events}"
    );
    // Envelopes: the documented examples are what the code writes, for
    // one task type and for several.
    let envelope_channel = doc["channels"]
        .as_object()
        .and_then(|c| c.values().find(|c| c["address"] == "{envelopeKey}"))
        .expect("the envelopes channel");
    let examples: Vec<&str> = envelope_channel["parameters"]["envelopeKey"]["examples"]
        .as_array()
        .expect("envelope key examples")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut written: Vec<String> = TASK_TYPES
        .iter()
        .map(|t| envelope::routing_key(&[TaskEvent::new("t", t, TaskState::Running, 1)]))
        .collect();
    let mixed: Vec<TaskEvent> = TASK_TYPES
        .iter()
        .map(|t| TaskEvent::new("t", t, TaskState::Running, 1))
        .collect();
    written.push(envelope::routing_key(&mixed));
    assert_eq!(examples, written, "envelope routing keys");
    let event_channel = doc["channels"]
        .as_object()
        .and_then(|c| c.values().find(|c| c["address"] == "{taskType}.{state}"))
        .expect("the events channel");
    let states: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        event_channel["parameters"]["state"]["enum"],
        Value::from(states.clone())
    );
    for example in event_channel["parameters"]["taskType"]["examples"]
        .as_array()
        .expect("task type examples")
    {
        assert!(
            types.contains(example.as_str().unwrap_or_default()),
            "{example}"
        );
    }
    let key = TaskEvent::new("t", TASK_TYPES[0], TaskState::Succeeded, 1).routing_key();
    assert_eq!(key, format!("{}.succeeded", TASK_TYPES[0]));
    assert_eq!(
        doc["components"]["schemas"]["TaskState"]["enum"],
        Value::from(states)
    );
}

/// Every header a schema of the document names.
fn documented_headers(doc: &Value) -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    let schemas = &doc["components"]["schemas"];
    for schema in [
        "TaskHeaders",
        "FollowUpHeaders",
        "RetryHeaders",
        "ParkedHeaders",
        "BrokerDeadLetterHeaders",
        "QuorumDeliveryHeaders",
        "DelayHeaders",
        "ChainHeaders",
        "ExpiryHeaders",
        "CeleryHeaders",
    ] {
        let properties = schema_properties(&schemas[schema]);
        for name in properties {
            out.insert(name, "schema");
        }
    }
    for name in schema_properties(&doc["components"]["messages"]["TaskEvent"]["headers"]) {
        out.insert(name, "event");
    }
    out
}

fn schema_properties(schema: &Value) -> Vec<String> {
    schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn every_header_is_documented_and_nothing_else_is() {
    let doc = document();
    let documented: BTreeSet<String> = documented_headers(&doc).into_keys().collect();
    let code: BTreeSet<String> = headers::ALL
        .iter()
        .chain(broker_headers::ALL)
        .map(|h| (*h).to_owned())
        .collect();
    assert_eq!(documented, code, "headers: the document vs the code");

    // A fresh task carries what `task_properties` writes (and the trace
    // context), and its schema documents exactly that.
    let properties = task_properties("id", TASK_TYPES[0], 0);
    let mut fresh: BTreeSet<String> = properties
        .headers()
        .as_ref()
        .map(|h| h.inner().keys().map(|k| k.to_string()).collect())
        .unwrap_or_default();
    fresh.extend([
        headers::TRACEPARENT.to_owned(),
        headers::TRACESTATE.to_owned(),
    ]);
    let task_headers: BTreeSet<String> =
        schema_properties(&doc["components"]["schemas"]["TaskHeaders"])
            .into_iter()
            .collect();
    assert_eq!(task_headers, fresh, "the headers of a fresh task");
    // Copies carry everything the original did.
    for copy in ["RetryHeaders", "ParkedHeaders"] {
        let names: BTreeSet<String> = schema_properties(&doc["components"]["schemas"][copy])
            .into_iter()
            .collect();
        let lost: Vec<_> = fresh.difference(&names).collect();
        assert!(lost.is_empty(), "{copy} leaves out {lost:?}");
    }

    let reasons: Vec<&str> = DeadReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        doc["components"]["schemas"]["DeadReason"]["enum"],
        Value::from(reasons)
    );
}

#[test]
fn task_and_event_properties_match_the_code() {
    let doc = document();
    let properties = &doc["components"]["schemas"]["TaskProperties"]["properties"];
    assert_eq!(properties["content_type"]["const"], CONTENT_TYPE_JSON);
    assert_eq!(properties["delivery_mode"]["const"], PERSISTENT);
    assert_eq!(properties["priority"]["maximum"], MAX_PRIORITY);
    assert_eq!(properties["type"]["enum"], Value::from(TASK_TYPES.to_vec()));
    let written = task_properties("id", TASK_TYPES[0], 3);
    assert_eq!(
        written.content_type().as_ref().map(|c| c.as_str()),
        Some(CONTENT_TYPE_JSON)
    );
    assert_eq!(*written.delivery_mode(), Some(PERSISTENT));
    let messages = doc["components"]["messages"].as_object().expect("messages");
    for (name, message) in messages {
        let kind = message["bindings"]["amqp"]["messageType"]
            .as_str()
            .expect("messageType");
        if name == "TaskEvent" {
            assert_eq!(kind, EVENT_MESSAGE_TYPE);
            assert_eq!(message["contentType"], CONTENT_TYPE_JSON);
        } else if name == "TaskEventEnvelope" {
            assert_eq!(kind, EVENT_ENVELOPE_MESSAGE_TYPE);
            assert_eq!(message["contentType"], EVENT_ENVELOPE_CONTENT_TYPE);
            let written = envelope::properties(0);
            assert_eq!(
                written.content_type().as_ref().map(|c| c.as_str()),
                Some(EVENT_ENVELOPE_CONTENT_TYPE)
            );
            assert_eq!(
                written.kind().as_ref().map(|c| c.as_str()),
                Some(EVENT_ENVELOPE_MESSAGE_TYPE)
            );
            assert_eq!(*written.delivery_mode(), Some(PERSISTENT));
            assert_eq!(
                message["payload"]["maxItems"],
                envelope::MAX_ENVELOPE_EVENTS
            );
            // Every example decodes as the code reads envelopes.
            for example in message["examples"].as_array().expect("examples") {
                let body = serde_json::to_vec(&example["payload"]).expect("json");
                let events = envelope::decode(Some(EVENT_ENVELOPE_CONTENT_TYPE), Some(kind), &body)
                    .expect("the example decodes");
                assert!(!events.is_empty());
            }
        } else if name == "ChordAbort" {
            assert_eq!(kind, warren::workflow::CHORD_ABORT_MESSAGE_TYPE);
            assert_eq!(
                message["contentType"],
                warren::workflow::CHORD_ABORT_CONTENT_TYPE
            );
            for example in message["examples"].as_array().expect("examples") {
                let abort: warren::workflow::ChordAbort =
                    serde_json::from_value(example["payload"].clone()).expect("it parses");
                assert!(abort.published < abort.size);
                let body = serde_json::to_vec(&example["payload"]).expect("json");
                let events = envelope::decode(
                    Some(warren::workflow::CHORD_ABORT_CONTENT_TYPE),
                    Some(kind),
                    &body,
                )
                .expect("readers take it");
                assert!(events.is_empty());
            }
        } else if name == "ConductorMark" {
            assert_eq!(kind, warren::workflow::MARK_MESSAGE_TYPE);
            assert_eq!(message["contentType"], warren::workflow::MARK_CONTENT_TYPE);
            let events =
                envelope::decode(Some(warren::workflow::MARK_CONTENT_TYPE), Some(kind), b"{}")
                    .expect("readers take it");
            assert!(events.is_empty());
        } else if name == "ChordRecord" {
            assert_eq!(kind, warren::workflow::CHORD_MESSAGE_TYPE);
            assert_eq!(message["contentType"], warren::workflow::CHORD_CONTENT_TYPE);
            for example in message["examples"].as_array().expect("examples") {
                let record: warren::workflow::ChordRecord =
                    serde_json::from_value(example["payload"].clone()).expect("it parses");
                assert!(record.size > 0);
                // Event readers skip it.
                let body = serde_json::to_vec(&example["payload"]).expect("json");
                let events = envelope::decode(
                    Some(warren::workflow::CHORD_CONTENT_TYPE),
                    Some(kind),
                    &body,
                )
                .expect("readers take it");
                assert!(events.is_empty());
            }
        } else if name == "WorkflowRecord" {
            assert_eq!(kind, warren::workflow::WORKFLOW_MESSAGE_TYPE);
            assert_eq!(
                message["contentType"],
                warren::workflow::WORKFLOW_CONTENT_TYPE
            );
            for example in message["examples"].as_array().expect("examples") {
                let record: warren::workflow::WorkflowRecord =
                    serde_json::from_value(example["payload"].clone()).expect("it parses");
                assert!(!record.steps.is_empty());
                let body = serde_json::to_vec(&example["payload"]).expect("json");
                let events = envelope::decode(
                    Some(warren::workflow::WORKFLOW_CONTENT_TYPE),
                    Some(kind),
                    &body,
                )
                .expect("readers take it");
                assert!(events.is_empty());
            }
        } else {
            assert!(TASK_TYPES.contains(&kind), "{name}: {kind}");
        }
    }
}

/// The strings in a Rust file's code before its tests.
fn x_literals(path: &Path, out: &mut BTreeSet<(String, String)>) {
    let text = std::fs::read_to_string(path).expect("source reads");
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    for (i, _) in code.match_indices("\"x-") {
        let rest = &code[i + 1..];
        let end = rest.find('"').unwrap_or(rest.len());
        out.insert((rest[..end].to_owned(), path.display().to_string()));
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_x_name_in_the_code_is_in_the_document() {
    let text = std::fs::read_to_string(repo().join("asyncapi.yaml")).expect("asyncapi.yaml reads");
    let mut files = Vec::new();
    for dir in ["shared/src", "crates", "services"] {
        rust_files(&repo().join(dir), &mut files);
    }
    files.retain(|f| f.components().any(|c| c.as_os_str() == "src"));
    let mut literals = BTreeSet::new();
    for file in &files {
        x_literals(file, &mut literals);
    }
    assert!(
        literals.len() > 10,
        "the scan found the sources: {literals:?}"
    );
    let unknown: Vec<_> = literals
        .iter()
        .filter(|(name, _)| !text.contains(name.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "names in the code the document never mentions: {unknown:?}"
    );
}
