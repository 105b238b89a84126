//! Chains (docs/workflows.md), end to end: the examples crate's
//! validate → process → save pipeline worker as a real process, chains
//! published with `Publisher::publish_chain`, each step counted at a real
//! consumer (a spy queue bound to every `pipeline.*` task published to the
//! tasks exchange) and in the worker's log. Chords also run the real
//! conductor, whose leader publishes their callbacks.

use std::path::Path;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;
use warren::contract::headers;
use warren::workflow::{Link, OnFailure, Slip, Step, group};
use warren_tests::broker::{Message, TestBroker};
use warren_tests::worker::{WorkerProcess, binary};
use warren_tests::{WAIT, wait_until};

/// The pipeline worker in its own namespace, a spy on its tasks, and the
/// directory it saves into.
struct Pipeline {
    broker: TestBroker,
    worker: WorkerProcess,
    spy: String,
    dir: tempfile::TempDir,
}

impl Pipeline {
    async fn start() -> Pipeline {
        // Built before any broker connection opens (see TestBroker::new).
        let path = binary("warren-examples", "pipeline-worker").unwrap();
        let broker = TestBroker::new().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let env = vec![
            ("WARREN_BROKER__NAMESPACE", broker.namespace().to_owned()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
            (
                "WARREN_CONSUMER__RETRY_DELAYS",
                r#"["200ms","300ms"]"#.to_owned(),
            ),
            ("PIPELINE_DIR", dir.path().display().to_string()),
        ];
        let worker = WorkerProcess::start(path, "pipeline-worker", &env)
            .await
            .unwrap();
        worker.wait_for_log("Consuming.", 1, WAIT).await.unwrap();
        let spy = broker.spy("pipeline.#").await.unwrap();
        Pipeline {
            broker,
            worker,
            spy,
            dir,
        }
    }

    /// The validate → process → save chain of one record.
    fn chain(id: &str, record: &str, value: i64, fail_first: u32) -> warren::workflow::Chain {
        warren::chain![
            Step::new(
                "pipeline.validate",
                json!({ "record": { "id": record, "value": value } })
            ),
            Step::new(
                "pipeline.process",
                json!({ "factor": 3, "fail_first": fail_first })
            )
            .result_to("input"),
            Step::new("pipeline.save", json!({})).result_to("processed"),
        ]
        .id(id)
    }

    /// Log lines with `message` about task `id`.
    fn logs_of(&self, message: &str, id: &str) -> usize {
        self.worker
            .logs_with_message(message)
            .iter()
            .filter(|l| l["span"]["task_id"] == id)
            .count()
    }

    /// Waits until the worker logs task `id`'s success.
    async fn succeeded(&self, id: &str) {
        wait_until(&format!("{id} to succeed"), WAIT, || {
            self.logs_of("Task succeeded.", id) > 0
        })
        .await;
    }

    fn saved(&self, record: &str) -> serde_json::Value {
        let path = self.dir.path().join(format!("{record}.json"));
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }

    async fn stop(self) {
        self.broker.cleanup_stems(&["pipeline"], &[]).await.unwrap();
        drop(self.worker);
    }
}

fn ids(messages: &[Message]) -> Vec<String> {
    messages.iter().filter_map(Message::message_id).collect()
}

#[tokio::test]
async fn a_three_step_chain_passes_each_result_to_the_next_step() {
    let p = Pipeline::start().await;
    let id = p
        .broker
        .publisher
        .publish_chain(Pipeline::chain("order-1", "r1", 7, 0))
        .await
        .unwrap();
    assert_eq!(id, "order-1");
    p.succeeded("order-1.3").await;
    assert_eq!(p.saved("r1"), json!({ "id": "r1", "value": 21 }));

    // Each step published once, in order, with the slip shortened by one
    // and the previous step's result in the field its spec names.
    let steps = p.broker.take(&p.spy, 3, WAIT).await.unwrap();
    assert_eq!(ids(&steps), ["order-1.1", "order-1.2", "order-1.3"]);
    let body: serde_json::Value = serde_json::from_slice(&steps[1].body).unwrap();
    assert_eq!(
        body,
        json!({ "factor": 3, "fail_first": 0, "input": { "id": "r1", "value": 7 } })
    );
    let body: serde_json::Value = serde_json::from_slice(&steps[2].body).unwrap();
    assert_eq!(body, json!({ "processed": { "id": "r1", "value": 21 } }));
    let slips: Vec<Slip> = steps
        .iter()
        .map(|m| Slip::parse(&m.header(headers::CHAIN).unwrap()).unwrap())
        .collect();
    assert_eq!(
        slips
            .iter()
            .map(|s| (s.step, s.next.len()))
            .collect::<Vec<_>>(),
        [(1, 2), (2, 1), (3, 0)]
    );
    assert_eq!(
        steps[2].header(headers::CAUSATION_ID).as_deref(),
        Some("order-1.2")
    );
    // The trace goes on from step to step (the test's own publish has no
    // trace; the worker starts one at step 1).
    let trace = |m: &Message| m.header(headers::TRACEPARENT).unwrap()[3..35].to_owned();
    assert_eq!(trace(&steps[1]), trace(&steps[2]));
    assert_eq!(p.broker.depth(&p.spy).await.unwrap(), 0);
    p.stop().await;
}

#[tokio::test]
async fn a_retried_step_does_not_restart_the_chain() {
    let p = Pipeline::start().await;
    p.broker
        .publisher
        .publish_chain(Pipeline::chain("order-2", "r2", 5, 2))
        .await
        .unwrap();
    p.succeeded("order-2.3").await;
    assert_eq!(p.saved("r2"), json!({ "id": "r2", "value": 15 }));
    // Step 2 failed twice and ran a third time; steps 1 and 3 ran once. (A
    // step logs its success after its ack, which follows the next step's
    // publish: step 3 may finish before step 2's line is written.)
    assert_eq!(
        p.logs_of("Task failed; it will be retried.", "order-2.2"),
        2
    );
    for id in ["order-2.1", "order-2.2", "order-2.3"] {
        p.succeeded(id).await;
        assert_eq!(p.logs_of("Task succeeded.", id), 1, "{id}");
    }
    let steps = p.broker.take(&p.spy, 3, WAIT).await.unwrap();
    assert_eq!(ids(&steps), ["order-2.1", "order-2.2", "order-2.3"]);
    assert_eq!(p.broker.depth(&p.spy).await.unwrap(), 0);
    p.stop().await;
}

#[tokio::test]
async fn a_parked_step_parks_the_chain_and_its_replay_resumes_it() {
    let p = Pipeline::start().await;
    // process refuses r3 while its marker exists: a permanent failure.
    let marker = p.dir.path().join("r3.blocked");
    std::fs::write(&marker, b"").unwrap();
    p.broker
        .publisher
        .publish_chain(Pipeline::chain("order-3", "r3", 4, 0))
        .await
        .unwrap();
    let parked = p
        .broker
        .take(&p.broker.dead_queue("pipeline"), 1, WAIT)
        .await
        .unwrap();
    let parked = &parked[0];
    assert_eq!(parked.message_id().as_deref(), Some("order-3.2"));
    assert_eq!(
        parked.header(headers::ERROR_KIND).as_deref(),
        Some("record_blocked")
    );
    // The parking-lot copy carries the rest of the chain.
    let slip = Slip::parse(&parked.header(headers::CHAIN).unwrap()).unwrap();
    assert_eq!((slip.id.as_str(), slip.step), ("order-3", 2));
    assert!(
        matches!(&slip.next[0], Link::Task(s) if s.task_type == "pipeline.save"),
        "{slip:?}"
    );
    assert!(!Path::new(&p.dir.path().join("r3.json")).exists());

    // The cause fixed, the parked copy is replayed as docs/operations.md
    // says: same id, type and body, without the x-warren-* headers but the
    // chain's.
    std::fs::remove_file(&marker).unwrap();
    let mut hdrs = FieldTable::default();
    for (k, v) in parked
        .properties
        .headers()
        .clone()
        .unwrap_or_default()
        .inner()
    {
        let key = k.as_str();
        if key == headers::CHAIN || !(key.starts_with("x-warren-") || key.starts_with("x-death")) {
            hdrs.insert(k.clone(), v.clone());
        }
    }
    assert!(matches!(
        hdrs.inner().get(headers::CHAIN),
        Some(AMQPValue::LongString(_))
    ));
    let props = BasicProperties::default()
        .with_message_id("order-3.2".into())
        .with_type("pipeline.process".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(hdrs);
    p.broker
        .publish_raw("pipeline.process", &parked.body, props)
        .await
        .unwrap();
    p.succeeded("order-3.3").await;
    assert_eq!(p.saved("r3"), json!({ "id": "r3", "value": 12 }));
    p.succeeded("order-3.1").await;
    assert_eq!(p.logs_of("Task succeeded.", "order-3.1"), 1);
    // Published: step 1, step 2 (by the producer), step 2 (the replay),
    // step 3.
    let steps = p.broker.take(&p.spy, 4, WAIT).await.unwrap();
    assert_eq!(
        ids(&steps),
        ["order-3.1", "order-3.2", "order-3.2", "order-3.3"]
    );
    p.stop().await;
}

#[tokio::test]
async fn a_bad_routing_slip_parks_the_step_before_it_runs() {
    let p = Pipeline::start().await;
    let mut hdrs = FieldTable::default();
    warren::contract::set_str(&mut hdrs, headers::CHAIN, "{\"id\":\"x\"}");
    let props = BasicProperties::default()
        .with_message_id("bad-slip.1".into())
        .with_type("pipeline.validate".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(hdrs);
    let body = json!({ "record": { "id": "r4", "value": 1 } }).to_string();
    p.broker
        .publish_raw("pipeline.validate", body.as_bytes(), props)
        .await
        .unwrap();
    let parked = p
        .broker
        .take(&p.broker.dead_queue("pipeline"), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(
        parked[0].header(headers::ERROR_KIND).as_deref(),
        Some("invalid_chain")
    );
    assert_eq!(p.logs_of("Task succeeded.", "bad-slip.1"), 0);
    p.stop().await;
}

/// A chord of 100 `pipeline.validate` members, members 10, 50 and 90
/// invalid (dead-lettered at once), and `pipeline.report` as callback.
async fn chord_of_100(policy: OnFailure) -> (Pipeline, WorkerProcess, String) {
    let p = Pipeline::start().await;
    let conductor = WorkerProcess::start(
        binary("conductor", "conductor").unwrap(),
        "conductor",
        &[
            ("WARREN_BROKER__NAMESPACE", p.broker.namespace().to_owned()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ],
    )
    .await
    .unwrap();
    conductor
        .wait_for_log("Read the chords from the events stream.", 1, WAIT)
        .await
        .unwrap();
    let members = (1..=100)
        .map(|i| {
            let value = if [10, 50, 90].contains(&i) { -1 } else { i };
            Step::new(
                "pipeline.validate",
                json!({ "record": { "id": format!("m{i}"), "value": value } }),
            )
        })
        .collect();
    let id = format!("chord-{}", uuid::Uuid::new_v4().simple());
    let chord = group(members)
        .id(&id)
        .then(Step::new("pipeline.report", json!({})))
        .on_failure(policy);
    assert_eq!(p.broker.publisher.publish_chord(chord).await.unwrap(), id);
    (p, conductor, id)
}

#[tokio::test]
async fn a_chord_runs_its_callback_once_with_every_result_and_failure_in_member_order() {
    let (p, conductor, id) = chord_of_100(OnFailure::Run).await;
    let callback = format!("{id}.callback");
    p.succeeded(&callback).await;
    let results: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(p.dir.path().join(format!("{callback}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(results.len(), 100);
    for (i, r) in results.iter().enumerate() {
        let n = i + 1;
        assert_eq!(r["id"], format!("{id}.{n}"));
        if [10, 50, 90].contains(&n) {
            assert_eq!(r["state"], "dead_lettered", "{r}");
            assert_eq!(r["error_kind"], "invalid_record");
        } else {
            assert_eq!(r["state"], "succeeded", "{r}");
            assert_eq!(r["result"], json!({ "id": format!("m{n}"), "value": n }));
        }
    }
    let ok = results.iter().filter(|r| r["state"] == "succeeded").count();
    assert_eq!(ok, 97);
    assert_eq!(p.logs_of("Task succeeded.", &callback), 1);
    // The conductor logs after its commit: the callback may have run first.
    let published = conductor
        .wait_for_log("Chord complete; callback published.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(published.len(), 1);
    drop(conductor);
    p.stop().await;
}

#[tokio::test]
async fn a_chord_that_skips_on_failure_parks_its_callback_with_the_reason() {
    let (p, conductor, id) = chord_of_100(OnFailure::Skip).await;
    let callback = format!("{id}.callback");
    // The three members, then the callback, reach the parking lot.
    let parked = p
        .broker
        .take(&p.broker.dead_queue("pipeline"), 4, WAIT)
        .await
        .unwrap();
    let cb: Vec<_> = parked
        .iter()
        .filter(|m| m.message_id().as_deref() == Some(callback.as_str()))
        .collect();
    assert_eq!(cb.len(), 1);
    assert_eq!(
        cb[0].header(headers::ERROR_KIND).as_deref(),
        Some("chord_member_failed")
    );
    let reason = cb[0].header(headers::ERROR).unwrap();
    assert!(
        reason.starts_with("3 of 100 members were dead-lettered"),
        "{reason}"
    );
    for n in [10, 50, 90] {
        assert!(
            reason.contains(&format!("{id}.{n} (invalid_record")),
            "{reason}"
        );
    }
    // Its body holds the outcomes, for a replay after the cause is fixed.
    let body: serde_json::Value = serde_json::from_slice(&cb[0].body).unwrap();
    assert_eq!(body["results"].as_array().map(Vec::len), Some(100));
    assert_eq!(p.logs_of("Task succeeded.", &callback), 0);
    drop(conductor);
    p.stop().await;
}

/// A chord whose second member has a task type no queue is bound to: the
/// producer's publish fails midway, says what was published, and writes
/// the chord's abort record; the conductor parks the callback with the
/// reason instead of waiting for members that will never come.
#[tokio::test]
async fn a_chord_published_only_in_part_is_marked_failed_and_its_callback_parked() {
    let p = Pipeline::start().await;
    let conductor = WorkerProcess::start(
        binary("conductor", "conductor").unwrap(),
        "conductor",
        &[
            ("WARREN_BROKER__NAMESPACE", p.broker.namespace().to_owned()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ],
    )
    .await
    .unwrap();
    conductor
        .wait_for_log("Read the chords from the events stream.", 1, WAIT)
        .await
        .unwrap();
    let id = format!("chord-{}", uuid::Uuid::new_v4().simple());
    let members = vec![
        Step::new(
            "pipeline.validate",
            json!({ "record": { "id": "a1", "value": 1 } }),
        ),
        // No queue is bound for this type: the mandatory publish returns.
        Step::new("nowhere.task", json!({})),
        Step::new(
            "pipeline.validate",
            json!({ "record": { "id": "a3", "value": 3 } }),
        ),
    ];
    let chord = group(members)
        .id(&id)
        .then(Step::new("pipeline.report", json!({})));
    let err = p.broker.publisher.publish_chord(chord).await.unwrap_err();
    match &err {
        warren::workflow::GroupError::Partial {
            id: gid,
            published,
            total,
            ..
        } => {
            assert_eq!((gid.as_str(), *published, *total), (id.as_str(), 1, 3));
        }
        other => panic!("expected a partial publish, got {other}"),
    }
    assert!(err.to_string().starts_with("only 1 of 3 members"), "{err}");
    // The callback reaches the parking lot at once, with the reason.
    let callback = format!("{id}.callback");
    let parked = p
        .broker
        .take(&p.broker.dead_queue("pipeline"), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(parked[0].message_id().as_deref(), Some(callback.as_str()));
    assert_eq!(
        parked[0].header(headers::ERROR_KIND).as_deref(),
        Some("chord_aborted")
    );
    let reason = parked[0].header(headers::ERROR).unwrap();
    assert!(
        reason.contains("only 1 of 3 members were published"),
        "{reason}"
    );
    let body: serde_json::Value = serde_json::from_slice(&parked[0].body).unwrap();
    let states: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(&states[1..], ["not_published", "not_published"]);
    // Member 1 still runs; the callback never does.
    p.succeeded(&format!("{id}.1")).await;
    assert_eq!(p.logs_of("Task succeeded.", &callback), 0);
    drop(conductor);
    p.stop().await;
}

/// Nested: a chain of (group, callback), then a final step. The chord's
/// callback is step 1 of the chain `{group}.callback`; once it succeeds,
/// the worker publishes the final step `{group}.callback.2` with the
/// callback's result, after every member and the callback ran once.
#[tokio::test]
async fn a_chain_of_a_chord_then_a_final_step_runs_each_part_once_in_order() {
    let p = Pipeline::start().await;
    let conductor = WorkerProcess::start(
        binary("conductor", "conductor").unwrap(),
        "conductor",
        &[
            ("WARREN_BROKER__NAMESPACE", p.broker.namespace().to_owned()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ],
    )
    .await
    .unwrap();
    conductor
        .wait_for_log("Read the chords from the events stream.", 1, WAIT)
        .await
        .unwrap();
    let id = format!("nested-{}", uuid::Uuid::new_v4().simple());
    let members = (1..=5)
        .map(|i| {
            Step::new(
                "pipeline.validate",
                json!({ "record": { "id": format!("n{i}"), "value": i } }),
            )
        })
        .collect();
    // The pipeline's steps deny unknown fields, so the final step takes
    // no result here (`result_to` passes it as in any chain): what this
    // shows is the order, the ids and the once-ness.
    let chord = group(members)
        .id(&id)
        .then(Step::new("pipeline.report", json!({})))
        .and_then(vec![Step::new(
            "pipeline.validate",
            json!({ "record": { "id": "final", "value": 0 } }),
        )]);
    assert_eq!(p.broker.publisher.publish_chord(chord).await.unwrap(), id);
    let callback = format!("{id}.callback");
    let last = format!("{id}.callback.2");
    p.succeeded(&last).await;
    // Counted at the spy: 5 members, the callback, the final step, each
    // once, the final step last, caused by the callback.
    let seen = p.broker.take(&p.spy, 7, WAIT).await.unwrap();
    let seen_ids = ids(&seen);
    let mut members: Vec<String> = seen_ids[..5].to_vec();
    members.sort();
    assert_eq!(
        members,
        (1..=5).map(|n| format!("{id}.{n}")).collect::<Vec<_>>()
    );
    assert_eq!(seen_ids[5..], [callback.clone(), last.clone()]);
    assert_eq!(
        seen[6].header(headers::CAUSATION_ID).as_deref(),
        Some(callback.as_str())
    );
    let slip: Slip = serde_json::from_str(&seen[5].header(headers::CHAIN).unwrap()).unwrap();
    assert_eq!(
        (slip.id.as_str(), slip.step, slip.next.len()),
        (callback.as_str(), 1, 1)
    );
    for task in [callback.as_str(), last.as_str()] {
        // A step logs its success after its ack, which follows the next
        // step's publish: the next one may finish first.
        p.succeeded(task).await;
        assert_eq!(p.logs_of("Task succeeded.", task), 1, "{task}");
    }
    let results: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(p.dir.path().join(format!("{callback}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(results.len(), 5);
    drop(conductor);
    p.stop().await;
}

/// Starts the real conductor in the pipeline's namespace, once its leader
/// has read the events stream.
async fn conductor(p: &Pipeline) -> WorkerProcess {
    let conductor = WorkerProcess::start(
        binary("conductor", "conductor").unwrap(),
        "conductor",
        &[
            ("WARREN_BROKER__NAMESPACE", p.broker.namespace().to_owned()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ],
    )
    .await
    .unwrap();
    conductor
        .wait_for_log("Read the chords from the events stream.", 1, WAIT)
        .await
        .unwrap();
    conductor
}

/// Nested with `chain!`: a chain whose first link is a chord (a group of
/// 4 and its callback), then a final step. The group is `{chain}.1`
/// (members `{chain}.1.{m}`), the callback is step 2 (`{chain}.2`), the
/// final step 3: each runs once, in that order, the final step caused by
/// the callback (docs/workflows.md, Nesting).
#[tokio::test]
async fn a_chain_of_a_group_and_its_callback_then_a_final_step_runs_each_once_in_order() {
    let p = Pipeline::start().await;
    let conductor = conductor(&p).await;
    let id = format!("nest-{}", uuid::Uuid::new_v4().simple());
    let members = (1..=4)
        .map(|i| {
            Step::new(
                "pipeline.validate",
                json!({ "record": { "id": format!("g{i}"), "value": i } }),
            )
        })
        .collect();
    let chain = warren::chain![
        group(members).then(Step::new("pipeline.report", json!({}))),
        Step::new(
            "pipeline.validate",
            json!({ "record": { "id": "final", "value": 0 } })
        ),
    ]
    .id(&id);
    assert_eq!(p.broker.publisher.publish_chain(chain).await.unwrap(), id);
    let (callback, last) = (format!("{id}.2"), format!("{id}.3"));
    // The callback logs its success after it has published the final step,
    // which may run (and log) first.
    p.succeeded(&last).await;
    p.succeeded(&callback).await;
    let seen = p.broker.take(&p.spy, 6, WAIT).await.unwrap();
    let seen_ids = ids(&seen);
    let mut members: Vec<String> = seen_ids[..4].to_vec();
    members.sort();
    assert_eq!(
        members,
        (1..=4).map(|m| format!("{id}.1.{m}")).collect::<Vec<_>>()
    );
    assert_eq!(seen_ids[4..], [callback.clone(), last.clone()]);
    assert_eq!(
        seen[5].header(headers::CAUSATION_ID).as_deref(),
        Some(callback.as_str())
    );
    // The callback is step 2 of the chain itself.
    let slip = Slip::parse(&seen[4].header(headers::CHAIN).unwrap()).unwrap();
    assert_eq!(
        (slip.id.as_str(), slip.step, slip.next.len()),
        (id.as_str(), 2, 1)
    );
    for task in [callback.as_str(), last.as_str()] {
        // A step logs its success after its ack, which follows the next
        // step's publish: the next one may finish first.
        p.succeeded(task).await;
        assert_eq!(p.logs_of("Task succeeded.", task), 1, "{task}");
    }
    // The callback had every member's outcome, in member order.
    let results: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(p.dir.path().join(format!("{callback}.json"))).unwrap(),
    )
    .unwrap();
    let order: Vec<&str> = results.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(
        order,
        (1..=4).map(|m| format!("{id}.1.{m}")).collect::<Vec<_>>()
    );
    drop(conductor);
    p.stop().await;
}

/// Nested after a step: a chain of [step, group of 3, step]. The worker
/// that ran step 1 publishes the group (its chord record, then each member
/// with step 1's result in its `input`) before acking step 1; the
/// conductor publishes step 3 once, with the members' outcomes.
#[tokio::test]
async fn a_group_between_two_steps_gets_the_first_result_and_hands_its_outcomes_on() {
    let p = Pipeline::start().await;
    let conductor = conductor(&p).await;
    let id = format!("fan-{}", uuid::Uuid::new_v4().simple());
    let chain = warren::chain![
        Step::new(
            "pipeline.validate",
            json!({ "record": { "id": "f", "value": 2 } })
        ),
        group(
            (1..=3)
                .map(|k| Step::new("pipeline.process", json!({ "factor": k })).result_to("input"))
                .collect()
        ),
        Step::new("pipeline.report", json!({})),
    ]
    .id(&id);
    p.broker.publisher.publish_chain(chain).await.unwrap();
    let last = format!("{id}.3");
    p.succeeded(&last).await;
    let seen = p.broker.take(&p.spy, 5, WAIT).await.unwrap();
    let seen_ids = ids(&seen);
    assert_eq!(seen_ids[0], format!("{id}.1"));
    let mut members: Vec<String> = seen_ids[1..4].to_vec();
    members.sort();
    assert_eq!(
        members,
        (1..=3).map(|m| format!("{id}.2.{m}")).collect::<Vec<_>>()
    );
    assert_eq!(seen_ids[4], last);
    for m in &seen[1..4] {
        assert_eq!(
            m.header(headers::CAUSATION_ID).as_deref(),
            Some(format!("{id}.1").as_str())
        );
    }
    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(p.dir.path().join(format!("{last}.json"))).unwrap())
            .unwrap();
    let values: Vec<serde_json::Value> = results
        .iter()
        .map(|r| r["result"]["value"].clone())
        .collect();
    assert_eq!(values, [json!(2), json!(4), json!(6)], "{results:?}");
    p.succeeded(&format!("{id}.1")).await;
    assert_eq!(p.logs_of("Task succeeded.", &format!("{id}.1")), 1);
    assert_eq!(p.logs_of("Task succeeded.", &last), 1);
    drop(conductor);
    p.stop().await;
}
