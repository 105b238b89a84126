//! `GET /v1/schedules` on real conductor processes against the real
//! RabbitMQ: the leader shows itself, each schedule and its last and next
//! fire; a standby shows `"leader": false`, the leader's identity (read
//! from the fires on the events stream) and the same last fire; when the
//! leader is killed, the standby takes over and shows itself.
//!
//! The ops port is 9404 by default (unit-tested in the conductor's
//! settings); here each conductor listens on a port of its own (`:0`) so
//! tests run side by side.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::io::Write;
use warren_tests::WAIT;
use warren_tests::broker::TestBroker;
use warren_tests::http;
use warren_tests::worker::{WorkerProcess, binary};

const SERVING: &str = "Serving /metrics, /healthz, /readyz and /v1/schedules.";

async fn conductor(namespace: &str, config: &std::path::Path, name: &str) -> WorkerProcess {
    WorkerProcess::start(
        binary("conductor", "conductor").unwrap(),
        name,
        &[
            ("WARREN_CONFIG", config.display().to_string()),
            ("WARREN_BROKER__NAMESPACE", namespace.to_owned()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ],
    )
    .await
    .unwrap()
}

async fn ops_addr(c: &WorkerProcess) -> SocketAddr {
    let lines = c.wait_for_log(SERVING, 1, WAIT).await.unwrap();
    lines[0]["fields"]["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn schedules(addr: SocketAddr) -> Value {
    let response = http::get(addr, "/v1/schedules").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    response.json().unwrap()
}

/// Asks `GET /v1/schedules` until `ready` holds for its body.
async fn schedules_when(addr: SocketAddr, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = schedules(addr).await;
        if ready(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never as expected: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn get_schedules_shows_the_leader_and_the_fires_on_the_leader_and_on_a_standby() {
    let broker = TestBroker::new().await.unwrap();
    let namespace = broker.namespace().to_owned();
    let mut config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        config,
        r#"
[[schedules]]
name = "tick"
every = "1s"
task_type = "email.send"
payload = {{ to = "tick@example.com", subject = "Tick", text = "tock" }}
"#
    )
    .unwrap();

    let mut first = conductor(&namespace, config.path(), "conductor-a").await;
    first
        .wait_for_log("Took the leader lock.", 1, WAIT)
        .await
        .unwrap();
    let mut second = conductor(&namespace, config.path(), "conductor-b").await;
    second
        .wait_for_log("Another conductor leads; standing by.", 1, WAIT)
        .await
        .unwrap();
    first.wait_for_log("Fired.", 2, WAIT).await.unwrap();
    let (leader_addr, standby_addr) = (ops_addr(&first).await, ops_addr(&second).await);

    // The leader: itself, the schedule, its last and next fire.
    let leader = schedules(leader_addr).await;
    let identity = leader["identity"].as_str().unwrap().to_owned();
    assert!(identity.starts_with("conductor@"), "{leader}");
    assert_eq!(leader["leader"], true, "{leader}");
    assert_eq!(leader["leader_identity"], identity.as_str(), "{leader}");
    assert!(leader["leader_since"].is_string(), "{leader}");
    let tick = &leader["schedules"][0];
    assert_eq!(leader["schedules"].as_array().unwrap().len(), 1);
    assert_eq!(tick["name"], "tick");
    assert_eq!(tick["task_type"], "email.send");
    assert_eq!(tick["every"], "1s");
    assert_eq!(tick["misfire"], "skip");
    assert!(
        tick.get("cron").is_none() && tick.get("time_zone").is_none(),
        "{tick}"
    );
    let (last, next) = (time(&tick["last_fire"]), time(&tick["next_fire"]));
    assert_eq!(next - last, chrono::Duration::seconds(1), "{tick}");

    // The standby: not the leader, but who is, and a fire it has seen.
    let standby = schedules_when(standby_addr, |b| {
        b["leader_identity"] == identity.as_str() && b["schedules"][0]["last_fire"].is_string()
    })
    .await;
    assert_eq!(standby["leader"], false, "{standby}");
    assert!(standby["leader_since"].is_null(), "{standby}");
    let own = standby["identity"].as_str().unwrap().to_owned();
    assert_ne!(own, identity);
    let seen = &standby["schedules"][0];
    assert!(
        time(&seen["next_fire"]) > time(&seen["last_fire"]),
        "{seen}"
    );
    // It follows the fires: a later one shows up too.
    let later = time(&seen["last_fire"]);
    schedules_when(standby_addr, |b| {
        b["schedules"][0]["last_fire"]
            .as_str()
            .is_some_and(|t| DateTime::parse_from_rfc3339(t).is_ok_and(|t| t > later))
    })
    .await;

    // The leader dies: the standby leads and shows itself.
    first.signal("KILL").unwrap();
    first.wait_exit(WAIT).await.unwrap();
    second
        .wait_for_log("Took the leader lock.", 1, WAIT)
        .await
        .unwrap();
    let now_leader = schedules_when(standby_addr, |b| b["leader"] == true).await;
    assert_eq!(now_leader["leader_identity"], own.as_str(), "{now_leader}");
    assert!(now_leader["schedules"][0]["last_fire"].is_string());

    second.signal("TERM").unwrap();
    second.wait_exit(WAIT).await.unwrap();
    broker.cleanup_stems(&["email"], &[]).await.unwrap();
}
