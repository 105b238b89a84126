//! The in-memory test kit (`warren::testing`) against the real broker: one
//! table of scenarios runs through a [`TestKit`] and through a real worker
//! on RabbitMQ, and every task's lifecycle (its `running`, `retrying`,
//! `succeeded` and `dead_lettered` events, with attempts, error kinds,
//! reasons and results) must be identical.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use serde_json::json;
use warren::contract::CONTENT_TYPE_JSON;
use warren::events::{self, TaskEvent, TaskState};
use warren::idempotency::MemoryStore;
use warren::prelude::*;
use warren::settings::ConsumerSettings;
use warren::testing::TestKit;
use warren_tests::WAIT;
use warren_tests::broker::TestBroker;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    case: String,
}

impl Task for Scenario {
    const TYPE: &'static str = "sc.run";
}

#[derive(Debug, Deserialize, Serialize)]
struct Note {
    parent: String,
}

impl Task for Note {
    const TYPE: &'static str = "sc.note";
}

/// The application code under test: what it does depends only on the
/// case and the attempt, so both runs see the same behaviour.
async fn run_scenario(ctx: TaskContext, s: Scenario) -> Result<Outcome, TaskError> {
    let first = ctx.attempt == 1;
    match s.case.as_str() {
        "transient_twice" if ctx.attempt <= 2 => Err(TaskError::retry("flaky", "not yet")),
        "transient_forever" => Err(TaskError::retry("flaky", "never")),
        "permanent" => Err(TaskError::permanent("refused", "no retry heals this")),
        "panic" if first => panic!("boom on the first attempt"),
        "timeout" if first => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Outcome::done())
        }
        "follow_up" => {
            let note = Note {
                parent: ctx.id.clone(),
            };
            ctx.publish_with_id(&note, format!("{}-note", ctx.id))
                .await?;
            Ok(Outcome::with_result(json!({ "published": 1 })))
        }
        case => Ok(Outcome::with_result(
            json!({ "case": case, "attempt": ctx.attempt }),
        )),
    }
}

/// The same worker for both runs: its settings, its idempotency store.
fn worker(broker: warren::settings::BrokerSettings) -> Worker {
    let consumer = ConsumerSettings {
        prefetch: 8,
        concurrency: 4,
        retry_delays: vec![Duration::from_millis(100), Duration::from_millis(200)],
        task_timeout: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(5),
        ..ConsumerSettings::default()
    };
    let store: Arc<dyn warren::idempotency::IdempotencyStore> =
        Arc::new(MemoryStore::new(1000, Duration::from_secs(3600)));
    Worker::for_task::<Scenario>()
        .service("scenario-worker")
        .settings(broker, consumer)
        .with_idempotency(Some(store))
        .handle(run_scenario)
        .handle(|_ctx, _note: Note| async { Ok(Outcome::done()) })
}

/// What is published: a task, or a raw body (bad input).
enum Input {
    Case(&'static str),
    Raw(&'static str),
}

/// The table: (task id, what is published).
const TABLE: &[(&str, Input)] = &[
    ("success", Input::Case("success")),
    ("transient-twice", Input::Case("transient_twice")),
    ("transient-forever", Input::Case("transient_forever")),
    ("permanent", Input::Case("permanent")),
    ("panic", Input::Case("panic")),
    ("timeout", Input::Case("timeout")),
    ("follow-up", Input::Case("follow_up")),
    (
        "unknown-field",
        Input::Raw(r#"{"case": "success", "extra": 1}"#),
    ),
    ("not-json", Input::Raw("{not json")),
];

/// The id published a second time once it succeeded: a duplicate.
const DUPLICATE: &str = "success";

/// One lifecycle event, as compared: state, attempt, error kind, dead
/// reason, result.
type Step = (
    &'static str,
    u32,
    Option<String>,
    Option<String>,
    Option<serde_json::Value>,
);

fn step(e: &TaskEvent) -> Option<Step> {
    matches!(
        e.state,
        TaskState::Running | TaskState::Retrying | TaskState::Succeeded | TaskState::DeadLettered
    )
    .then(|| {
        (
            e.state.as_str(),
            e.attempt,
            e.error_kind.clone(),
            e.reason.clone(),
            e.result.clone(),
        )
    })
}

fn body(input: &Input) -> Vec<u8> {
    match input {
        Input::Case(case) => serde_json::to_vec(&Scenario {
            case: (*case).to_owned(),
        })
        .unwrap(),
        Input::Raw(raw) => raw.as_bytes().to_vec(),
    }
}

fn with_id(id: &str) -> PublishOptions {
    PublishOptions {
        id: Some(id.to_owned()),
        ..PublishOptions::default()
    }
}

/// The table through the test kit: task id to its lifecycle.
async fn through_the_kit() -> BTreeMap<String, Vec<Step>> {
    let mut kit = TestKit::new().worker(worker(Default::default()));
    for (id, input) in TABLE {
        kit.publish_raw(Scenario::TYPE, body(input), with_id(id))
            .await;
    }
    kit.run_all().await;
    kit.publish_raw(
        Scenario::TYPE,
        body(&Input::Case("success")),
        with_id(DUPLICATE),
    )
    .await;
    kit.run_all().await;
    let mut out: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    for record in kit.published() {
        out.entry(record.id.clone())
            .or_default()
            .extend(record.events.iter().filter_map(step));
    }
    out
}

#[tokio::test]
async fn the_test_kit_and_the_real_broker_agree_on_every_scenario() {
    let expected = through_the_kit().await;
    // The kit's verdicts, spelled out once, so the table is also a test of
    // the kit alone.
    let last = |id: &str| expected[id].last().cloned().unwrap();
    assert_eq!(last("transient-twice").1, 3);
    assert_eq!(
        last("transient-forever").3.as_deref(),
        Some("attempts_exhausted")
    );
    assert_eq!(last("unknown-field").2.as_deref(), Some("unknown_field"));
    assert_eq!(last("timeout").0, "succeeded");
    assert_eq!(expected["follow-up-note"].len(), 2);

    let broker = TestBroker::new().await.unwrap();
    let names = broker.names.clone();
    events::declare_stream(&broker.connection, &names, Duration::from_secs(3600))
        .await
        .unwrap();
    let worker = worker(broker.settings());
    let status = worker.status();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let mut stream = Box::pin(events::follow(&broker.connection, &names).await.unwrap());
    let deadline = tokio::time::Instant::now() + WAIT;
    while !status.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "worker never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let publish = |id: &'static str, input: &'static Input| {
        let broker = &broker;
        async move {
            let properties = BasicProperties::default()
                .with_message_id(id.into())
                .with_type(Scenario::TYPE.into())
                .with_content_type(CONTENT_TYPE_JSON.into());
            broker
                .publish_raw(Scenario::TYPE, &body(input), properties)
                .await
                .unwrap();
        }
    };
    for (id, input) in TABLE {
        publish(id, input).await;
    }
    let mut seen: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    // Every task (follow-ups included) reaches its final state...
    // Each event may take up to WAIT: the test waits on progress, not on one
    // window for the whole table (a loaded machine can take longer in all).
    let mut next = async |seen: &mut BTreeMap<String, Vec<Step>>| {
        let Ok(Some(event)) = tokio::time::timeout(WAIT, stream.next()).await else {
            return false;
        };
        let event = event.unwrap().event;
        if let Some(s) = step(&event) {
            seen.entry(event.task_id).or_default().push(s);
        }
        true
    };
    while !expected.keys().all(|id| {
        seen.get(id)
            .and_then(|s| s.last())
            .is_some_and(|s| is_final(s.0))
    }) {
        if !next(&mut seen).await {
            break;
        }
    }
    // ...then the duplicate: its `running` event, and nothing after it once
    // the worker is idle.
    publish(DUPLICATE, &Input::Case("success")).await;
    let runs = |seen: &BTreeMap<String, Vec<Step>>| {
        seen.get(DUPLICATE)
            .map_or(0, |s| s.iter().filter(|s| s.0 == "running").count())
    };
    while runs(&seen) < 2 {
        if !next(&mut seen).await {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while status.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        by_attempt(seen),
        by_attempt(expected),
        "real broker (left) vs test kit (right)"
    );
    broker.cleanup_stems(&["sc"], &[]).await.unwrap();
}

/// Each task's events ordered by attempt, keeping their order within an
/// attempt. On the real broker an attempt's `retrying` event is emitted once
/// the retry copy is confirmed, and a slow confirm can come after the copy
/// has waited out its delay and the next attempt has run: the stream's order
/// across attempts is not the lifecycle's (the status view orders by attempt
/// too). Within an attempt one worker's events keep their order.
fn by_attempt(mut steps: BTreeMap<String, Vec<Step>>) -> BTreeMap<String, Vec<Step>> {
    for events in steps.values_mut() {
        events.sort_by_key(|s| s.1);
    }
    steps
}

fn is_final(state: &str) -> bool {
    state == "succeeded" || state == "dead_lettered"
}
