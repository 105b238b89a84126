//! The `warren` CLI end to end: the real binary against the real broker,
//! a real email worker parking tasks of three error kinds, the real SMTP
//! sink receiving what a replay delivers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;
use warren::PublishOptions;
use warren::contract::headers;
use warren_tests::broker::TestBroker;
use warren_tests::cli::{self, CliRun};
use warren_tests::worker::{WorkerProcess, gateway_env};
use warren_tests::{EmailWorld, WAIT, rcpt};

/// The CLI's settings: the worker's namespace and retry ladder.
fn cli_env(world: &EmailWorld) -> Vec<(&'static str, String)> {
    world
        .env
        .iter()
        .filter(|(k, _)| k.starts_with("WARREN_BROKER__") || k.starts_with("WARREN_CONSUMER__"))
        .cloned()
        .collect()
}

async fn warren(env: &[(&'static str, String)], args: &[&str]) -> CliRun {
    cli::run(env, args, "").await.unwrap()
}

async fn wait_depth(broker: &TestBroker, queue: &str, n: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let depth = broker.depth(queue).await.unwrap();
        if depth == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} holds {depth}, not {n}, after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(run: &CliRun) -> Vec<String> {
    run.json()
        .as_array()
        .unwrap_or_else(|| panic!("a list: {run:?}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_cli_lists_replays_and_purges_the_parking_lot_and_verifies_the_topology() {
    // One attempt: a 451 parks at once (attempts_exhausted).
    let world = EmailWorld::start(&[("WARREN_CONSUMER__MAX_ATTEMPTS", "1")])
        .await
        .unwrap();
    let broker = &world.broker;
    let env = cli_env(&world);
    let dead = broker.email_dead_queue();

    // 50 parked tasks of three error kinds: 20 smtp_transient (the sink
    // answers 451 to the first try, 250 to the next), 15 invalid_json,
    // 15 invalid_address.
    let mut transient: HashMap<String, String> = HashMap::new();
    for _ in 0..20 {
        let to = rcpt("tempfail451x1");
        let id = broker
            .publish(
                "email.send",
                &json!({"to": to, "subject": "s", "text": "t"}),
                PublishOptions::default(),
            )
            .await
            .unwrap();
        transient.insert(id, to);
    }
    for n in 0..15 {
        let props = warren::task_properties(&format!("broken-{n}"), "email.send", 0);
        broker
            .publish_raw("email.send", b"{not json", props)
            .await
            .unwrap();
        broker
            .publish(
                "email.send",
                &json!({"to": "not an address", "subject": "s", "text": "t"}),
                PublishOptions::default(),
            )
            .await
            .unwrap();
    }
    wait_depth(broker, &dead, 50).await;

    // `list` with each filter.
    let all = warren(&env, &["dead", "list", "--json"]).await;
    assert_eq!(all.status, 0, "{all:?}");
    assert_eq!(ids(&all).len(), 50);
    let by_kind = |kind: &'static str| {
        let env = env.clone();
        async move { warren(&env, &["dead", "list", "--json", "--kind", kind]).await }
    };
    assert_eq!(ids(&by_kind("smtp_transient").await).len(), 20);
    assert_eq!(ids(&by_kind("invalid_json").await).len(), 15);
    assert_eq!(ids(&by_kind("invalid_address").await).len(), 15);
    let exhausted = warren(
        &env,
        &["dead", "list", "--json", "--reason", "attempts_exhausted"],
    )
    .await;
    assert_eq!(
        ids(&exhausted).into_iter().collect::<HashSet<_>>(),
        transient.keys().cloned().collect::<HashSet<_>>()
    );
    let permanent = warren(&env, &["dead", "list", "--json", "--reason", "permanent"]).await;
    assert_eq!(ids(&permanent).len(), 30);
    let typed = warren(
        &env,
        &[
            "dead",
            "list",
            "--json",
            "--type",
            "email.send",
            "--queue",
            "email",
        ],
    )
    .await;
    assert_eq!(ids(&typed).len(), 50);
    let one = warren(&env, &["dead", "list", "--json", "--id", "broken-3"]).await;
    assert_eq!(ids(&one), ["broken-3"]);
    let limited = warren(&env, &["dead", "list", "--json", "--limit", "7"]).await;
    assert_eq!(ids(&limited).len(), 7);
    let recent = warren(&env, &["dead", "list", "--json", "--newer-than", "1h"]).await;
    assert_eq!(ids(&recent).len(), 50);
    // Nothing matched, and an unknown queue: distinct statuses, clear words.
    let old = warren(&env, &["dead", "list", "--older-than", "1h"]).await;
    assert_eq!(old.status, 3, "{old:?}");
    assert!(old.stderr.contains("No parked message matches"), "{old:?}");
    let other_type = warren(&env, &["dead", "list", "--type", "image.thumbnail"]).await;
    assert_eq!(other_type.status, 3, "{other_type:?}");
    let unknown = warren(&env, &["dead", "list", "--queue", "nosuch"]).await;
    assert_eq!(unknown.status, 4, "{unknown:?}");
    assert!(unknown.stderr.contains(".nosuch.dead"), "{unknown:?}");
    // The human table names the columns; looking never consumed.
    let table = warren(
        &env,
        &["dead", "list", "--kind", "invalid_json", "--limit", "2"],
    )
    .await;
    assert!(table.stdout.starts_with("QUEUE"), "{table:?}");
    assert!(table.stdout.contains("invalid_json"), "{table:?}");
    assert_eq!(broker.depth(&dead).await.unwrap(), 50);

    // `show`: headers and body.
    let shown = warren(&env, &["dead", "show", "broken-3", "--json"]).await;
    assert_eq!(shown.status, 0, "{shown:?}");
    assert_eq!(shown.json()["headers"][headers::ERROR_KIND], "invalid_json");
    assert_eq!(shown.json()["body"], "{not json");

    // A dry run moves nothing.
    let dry = warren(
        &env,
        &[
            "dead",
            "replay",
            "--kind",
            "smtp_transient",
            "--dry-run",
            "--json",
        ],
    )
    .await;
    assert_eq!(dry.status, 0, "{dry:?}");
    assert_eq!(dry.json()["replayed"].as_array().unwrap().len(), 20);
    assert_eq!(broker.depth(&dead).await.unwrap(), 50);

    // Replay 10 of one kind at 20 a second: each is delivered once.
    let started = Instant::now();
    let replay = warren(
        &env,
        &[
            "dead",
            "replay",
            "--kind",
            "smtp_transient",
            "--limit",
            "10",
            "--rate",
            "20",
            "--json",
        ],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(replay.status, 0, "{replay:?}");
    let replayed: Vec<String> = replay.json()["replayed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(replayed.len(), 10);
    // 10 at 20/s: the first at once, the last 450 ms later.
    assert!(
        took >= Duration::from_millis(450),
        "the rate was not kept: {took:?}"
    );
    for id in &replayed {
        let to = &transient[id];
        world.sink.wait_for_messages_to(to, 1, WAIT).await.unwrap();
    }
    world
        .worker
        .wait_for_log("Task succeeded.", 10, WAIT)
        .await
        .unwrap();
    for id in &replayed {
        assert_eq!(
            world.sink.messages_to(&transient[id]).len(),
            1,
            "{id} delivered once"
        );
    }
    wait_depth(broker, &dead, 40).await;
    let left = warren(&env, &["dead", "list", "--json"]).await;
    assert_eq!(ids(&left).len(), 40);
    assert_eq!(
        ids(&warren(
            &env,
            &["dead", "list", "--json", "--kind", "smtp_transient"]
        )
        .await)
        .len(),
        10
    );

    // A body that no longer parses is parked again, with its reason, and
    // reported (exit 6).
    let bad = warren(
        &env,
        &[
            "dead",
            "replay",
            "--kind",
            "invalid_json",
            "--limit",
            "2",
            "--json",
        ],
    )
    .await;
    assert_eq!(bad.status, 6, "{bad:?}");
    let again = bad.json()["parked_again"].as_array().unwrap().clone();
    assert_eq!(again.len(), 2);
    assert_eq!(again[0]["error_kind"], "invalid_json");
    assert!(bad.json()["replayed"].as_array().unwrap().is_empty());
    wait_depth(broker, &dead, 40).await;
    let reparked = warren(
        &env,
        &["dead", "show", again[0]["id"].as_str().unwrap(), "--json"],
    )
    .await;
    assert!(
        reparked.json()["headers"][headers::ERROR]
            .as_str()
            .unwrap()
            .starts_with("replay refused"),
        "{reparked:?}"
    );

    // Purge: refused without confirmation, done with it, or with --yes.
    let no = cli::run(&env, &["dead", "purge", "--kind", "invalid_json"], "no\n")
        .await
        .unwrap();
    assert_eq!(no.status, 7, "{no:?}");
    assert!(no.stderr.contains("Delete 15 parked messages"), "{no:?}");
    assert_eq!(broker.depth(&dead).await.unwrap(), 40);
    let yes = cli::run(&env, &["dead", "purge", "--kind", "invalid_json"], "yes\n")
        .await
        .unwrap();
    assert_eq!(yes.status, 0, "{yes:?}");
    assert!(yes.stdout.contains("Purged 15 messages."), "{yes:?}");
    wait_depth(broker, &dead, 25).await;
    let forced = warren(
        &env,
        &[
            "dead",
            "purge",
            "--kind",
            "invalid_address",
            "--yes",
            "--json",
        ],
    )
    .await;
    assert_eq!(forced.json()["purged"], 15);
    wait_depth(broker, &dead, 10).await;

    // `queues`: the work queue with its consumer and parking lot (the
    // management API refreshes its counters every few seconds).
    let deadline = Instant::now() + WAIT;
    loop {
        let queues = warren(&env, &["queues", "--json"]).await;
        assert_eq!(queues.status, 0, "{queues:?}");
        let row = queues.json()[0].clone();
        assert_eq!(row["name"], broker.names.work_queue("email"));
        if row["parked"] == 10 && row["consumers"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{row}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let table = warren(&env, &["queues"]).await;
    assert!(table.stdout.starts_with("QUEUE"), "{table:?}");

    // `topology verify`: clean, then a queue redeclared by hand with other
    // arguments.
    let clean = warren(&env, &["topology", "verify"]).await;
    assert_eq!(clean.status, 0, "{clean:?}");
    assert!(clean.stdout.contains("matches"), "{clean:?}");
    let rung = broker
        .names
        .retry_queue("email", Duration::from_millis(200));
    let channel = broker.connection.create_channel().await.unwrap();
    channel
        .queue_delete(rung.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(999));
    channel
        .queue_declare(
            rung.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let drift = warren(&env, &["topology", "verify"]).await;
    assert_eq!(drift.status, 5, "{drift:?}");
    for needle in [
        rung.as_str(),
        "x-message-ttl: broker has 999, warren wants 200",
        "x-dead-letter-exchange: broker has none",
    ] {
        assert!(drift.stdout.contains(needle), "{needle:?} in {drift:?}");
    }
    broker.cleanup().await.unwrap();
}

#[tokio::test]
async fn the_cli_publishes_a_task_and_answers_usage_errors_with_status_2() {
    let world = EmailWorld::start(&[]).await.unwrap();
    let env = cli_env(&world);
    let store = tempfile::tempdir().unwrap();
    let gateway = WorkerProcess::gateway(&gateway_env(world.broker.namespace(), store.path()))
        .await
        .unwrap();
    let url = format!("http://{}", gateway.http_addr().await.unwrap());
    gateway.wait_caught_up().await.unwrap();
    let to = rcpt("cli-publish");
    let body = json!({"to": to, "subject": "From the CLI", "text": "hi"}).to_string();
    let published = warren(
        &env,
        &[
            "publish",
            "email.send",
            &body,
            "--priority",
            "5",
            "--id",
            "cli-1",
        ],
    )
    .await;
    assert_eq!(published.status, 0, "{published:?}");
    assert_eq!(published.stdout.trim(), "cli-1");
    world.sink.wait_for_messages_to(&to, 1, WAIT).await.unwrap();

    // `task`: its status and, followed, its events up to `succeeded`,
    // through a gateway; an unknown task exits with 4.
    let deadline = Instant::now() + WAIT;
    loop {
        let status = warren(&env, &["task", "cli-1", "--json", "--gateway", &url]).await;
        if status.status == 0 && status.json()["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let followed = warren(
        &env,
        &["task", "cli-1", "--follow", "--json", "--gateway", &url],
    )
    .await;
    assert_eq!(followed.status, 0, "{followed:?}");
    let states: Vec<serde_json::Value> = followed
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["state"].clone())
        .collect();
    assert_eq!(states.last(), Some(&json!("succeeded")), "{followed:?}");
    let unknown = warren(&env, &["task", "no-such-task", "--gateway", &url]).await;
    assert_eq!(unknown.status, 4, "{unknown:?}");

    let usage = warren(&env, &["publish", "email.send", "[1]"]).await;
    assert_eq!(usage.status, 2, "{usage:?}");
    let completions = warren(&env, &["completions", "bash"]).await;
    assert!(completions.stdout.contains("_warren"), "{completions:?}");
    world.broker.cleanup().await.unwrap();
}
