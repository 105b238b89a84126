//! The soak (`bench/soak` runs it; docs/development.md, "Soak"): for a set
//! length, a steady rate of tasks with 1% poison tasks (`poison.abort`,
//! which aborts the worker process) through real worker processes
//! (`poison-worker`, release build) on a RabbitMQ node of the soak's own
//! (`warren_tests::extra_node`, never the shared one on 5672), with the
//! Redis idempotency store (keys under the soak's own namespace).
//!
//! Meanwhile: a worker is killed with SIGKILL every `SOAK_KILL_EVERY` and
//! restarted (as every worker a poison task aborted), the broker is
//! stopped and started once half-way, and the RSS (`VmRSS`) of every
//! process (the broker's VM, each worker, Redis, this driver) is sampled.
//!
//! At the end: every non-poison id published must be done (its Redis
//! idempotency key), every poison id parked with `delivery_limit`, nothing
//! else parked, and each long-lived process's RSS growth within the bound.
//! The JSON report goes to `SOAK_REPORT`; the exit code says pass or fail.
//!
//! Settings (environment): `SOAK_DURATION` (30m), `SOAK_RATE` tasks per
//! second (10), `SOAK_WORKERS` (2), `SOAK_KILL_EVERY` (2m),
//! `SOAK_SAMPLE_EVERY` (10s), `SOAK_RSS_GROWTH_PCT` (50) and
//! `SOAK_RSS_GROWTH_KIB` (16384: either bound will do), `SOAK_REDIS_URL`
//! (redis://127.0.0.1:6379/0), `SOAK_REPORT` (path of the JSON report).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test driver: a failed unwrap is a failed soak

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions};
use secrecy::SecretString;
use serde_json::json;
use warren::contract::{self, headers};
use warren::settings::BrokerSettings;
use warren::{Names, PublishOptions, Publisher};
use warren_tests::extra_node::{ExtraNode, NodeOptions};

const DELIVERY_LIMIT: u32 = 3;

fn env_duration(key: &str, default: &str) -> Duration {
    let text = std::env::var(key).unwrap_or_else(|_| default.to_owned());
    humantime::parse_duration(&text).unwrap_or_else(|e| panic!("{key}={text}: {e}"))
}

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a number")),
        Err(_) => default,
    }
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The pid of the Redis server on 6379 (by its command line).
fn redis_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.starts_with("redis-server") && cmd.contains(":6379")).then_some(pid)
    })
}

#[derive(Default)]
struct Counters {
    /// Exits of workers by cause.
    aborts: AtomicU64,
    kills: AtomicU64,
    other_exits: AtomicU64,
    restarts: AtomicU64,
    /// Each other exit: its status and the worker's last log lines.
    other: Mutex<Vec<serde_json::Value>>,
}

struct Sample {
    t: f64,
    role: String,
    pid: u32,
    rss_kib: u64,
}

#[tokio::main]
async fn main() {
    let duration = env_duration("SOAK_DURATION", "30m");
    let rate: f64 = env_num("SOAK_RATE", 10.0);
    let workers: usize = env_num("SOAK_WORKERS", 2);
    let kill_every = env_duration("SOAK_KILL_EVERY", "2m");
    let sample_every = env_duration("SOAK_SAMPLE_EVERY", "10s");
    let growth_bound_pct: f64 = env_num("SOAK_RSS_GROWTH_PCT", 50.0);
    let growth_bound_kib: u64 = env_num("SOAK_RSS_GROWTH_KIB", 16 * 1024);
    let redis_url =
        std::env::var("SOAK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let report_path = PathBuf::from(
        std::env::var("SOAK_REPORT")
            .unwrap_or_else(|_| "bench/results/soak-dev-vm-2-cores.json".into()),
    );
    let worker_bin = std::env::current_exe()
        .unwrap()
        .with_file_name("poison-worker");
    assert!(
        worker_bin.exists(),
        "{} is missing: build it beside the soak (bench/soak does)",
        worker_bin.display()
    );
    let namespace = format!("soak-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    eprintln!(
        "soak: {duration:?} at {rate}/s, {workers} workers, a kill every {kill_every:?}, namespace {namespace}"
    );

    let node = tokio::task::spawn_blocking(|| ExtraNode::start("soak", NodeOptions::default()))
        .await
        .unwrap()
        .expect("the soak's RabbitMQ node did not start");
    let url = node.amqp_url();
    let logs = node.dir().join("workers");
    std::fs::create_dir_all(&logs).unwrap();
    let node = Arc::new(Mutex::new(node));
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let pids: Arc<Mutex<Vec<Option<u32>>>> = Arc::new(Mutex::new(vec![None; workers]));

    // Supervisors: one per worker slot, restarting its worker whenever it
    // dies (a poison task's abort, the killer's SIGKILL).
    let env: Vec<(String, String)> = vec![
        ("WARREN_BROKER__URL".into(), url.clone()),
        ("WARREN_BROKER__NAMESPACE".into(), namespace.clone()),
        ("WARREN_BROKER__QUEUE_TYPE".into(), "classic".into()),
        (
            "WARREN_BROKER__DELIVERY_LIMIT".into(),
            DELIVERY_LIMIT.to_string(),
        ),
        ("WARREN_BROKER__RECONNECT_MAX_DELAY".into(), "2s".into()),
        ("WARREN_IDEMPOTENCY__BACKEND".into(), "redis".into()),
        ("WARREN_IDEMPOTENCY__REDIS_URL".into(), redis_url.clone()),
        ("WARREN_IDEMPOTENCY__TTL".into(), "1day".into()),
        // One task in flight per worker: an abort or a kill then counts a
        // delivery against that task alone, not against innocent tasks
        // prefetched beside it (docs/operations.md, "Poison tasks").
        ("WARREN_CONSUMER__PREFETCH".into(), "1".into()),
        ("WARREN_CONSUMER__CONCURRENCY".into(), "1".into()),
        ("WARREN_CONSUMER__RETRY_DELAYS".into(), r#"["1s"]"#.into()),
        ("WARREN_CONSUMER__EVENTS".into(), "false".into()),
        ("WARREN_OPS__ADDR".into(), "127.0.0.1:0".into()),
        ("WARREN_CONFIG".into(), "/nonexistent/warren.toml".into()),
        ("WARREN_TELEMETRY__LOG_FORMAT".into(), "json".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    let mut supervisors = Vec::new();
    for slot in 0..workers {
        let (env, bin, stop, counters, pids) = (
            env.clone(),
            worker_bin.clone(),
            stop.clone(),
            counters.clone(),
            pids.clone(),
        );
        let log = logs.join(format!("worker-{slot}.log"));
        supervisors.push(tokio::spawn(async move {
            let mut first = true;
            while !stop.load(Ordering::SeqCst) {
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap();
                let mut cmd = tokio::process::Command::new(&bin);
                for (key, _) in std::env::vars() {
                    if key.starts_with("WARREN_") {
                        cmd.env_remove(key);
                    }
                }
                let mut child = cmd
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().unwrap())
                    .stderr(out)
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap();
                if !first {
                    counters.restarts.fetch_add(1, Ordering::Relaxed);
                }
                first = false;
                pids.lock().unwrap()[slot] = child.id();
                let status = child.wait().await.unwrap();
                pids.lock().unwrap()[slot] = None;
                if stop.load(Ordering::SeqCst) {
                    break; // the SIGTERM at the end
                }
                use std::os::unix::process::ExitStatusExt;
                match status.signal() {
                    Some(6) => counters.aborts.fetch_add(1, Ordering::Relaxed),
                    Some(9) => counters.kills.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        let text = std::fs::read_to_string(&log).unwrap_or_default();
                        let lines: Vec<String> = text
                            .lines()
                            .rev()
                            .take(3)
                            .map(|l| l.chars().take(400).collect())
                            .collect();
                        counters.other.lock().unwrap().push(json!({
                            "at_s": started.elapsed().as_secs(),
                            "status": status.to_string(),
                            "last_lines": lines,
                        }));
                        counters.other_exits.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    // The killer: SIGKILL to one worker (in turn) every `kill_every`.
    let killer = {
        let (stop, pids) = (stop.clone(), pids.clone());
        tokio::spawn(async move {
            let mut slot = 0;
            loop {
                tokio::time::sleep(kill_every).await;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let pid = pids.lock().unwrap()[slot % workers];
                if let Some(pid) = pid {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status();
                }
                slot += 1;
            }
        })
    };

    // The sampler.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let (stop, pids, node, samples) =
            (stop.clone(), pids.clone(), node.clone(), samples.clone());
        let redis = redis_pid();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let t = started.elapsed().as_secs_f64();
                let mut procs: Vec<(String, u32)> = vec![("driver".into(), std::process::id())];
                if let Ok(node) = node.try_lock() {
                    procs.extend(node.os_pid().map(|p| ("broker".to_owned(), p)));
                }
                procs.extend(redis.map(|p| ("redis".to_owned(), p)));
                for (slot, pid) in pids.lock().unwrap().iter().enumerate() {
                    procs.extend(pid.map(|p| (format!("worker-{slot}"), p)));
                }
                let taken: Vec<Sample> = procs
                    .into_iter()
                    .filter_map(|(role, pid)| {
                        rss_kib(pid).map(|rss_kib| Sample {
                            t,
                            role,
                            pid,
                            rss_kib,
                        })
                    })
                    .collect();
                samples.lock().unwrap().extend(taken);
                tokio::time::sleep(sample_every).await;
            }
        })
    };

    // The broker restart, half-way.
    let restart = {
        let node = node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration / 2).await;
            let at = started.elapsed().as_secs_f64();
            let began = Instant::now();
            tokio::task::spawn_blocking(move || node.lock().unwrap().restart())
                .await
                .unwrap()
                .expect("the soak's broker did not restart");
            let down = began.elapsed().as_secs_f64();
            eprintln!("soak: broker restarted at {at:.0}s ({down:.1}s)");
            (at, down)
        })
    };

    // The producer: a steady rate; every 100th task is poison. A publish
    // that fails (the broker restarting) is retried with the same id on a
    // new connection until confirmed.
    let settings = BrokerSettings {
        url: SecretString::from(url.clone()),
        namespace: namespace.clone(),
        connect_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let names = Names::new(namespace.as_str());
    let mut ok_ids: Vec<String> = Vec::new();
    let mut poison_ids: Vec<String> = Vec::new();
    let mut publish_retries = 0u64;
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut conn: Option<(lapin::Connection, Publisher)> = None;
    let mut n = 0u64;
    while started.elapsed() < duration {
        interval.tick().await;
        n += 1;
        let poison = n.is_multiple_of(100);
        let task = if poison { "poison.abort" } else { "poison.ok" };
        let id = uuid::Uuid::new_v4().to_string();
        loop {
            if conn.is_none() {
                match warren::broker::connect(&settings, "soak-producer").await {
                    Ok(c) => match Publisher::on(&c, names.clone()).await {
                        Ok(p) => conn = Some((c, p)),
                        Err(e) => eprintln!("soak: publisher: {e}"),
                    },
                    Err(e) => eprintln!("soak: connect: {e}"),
                }
            }
            if let Some((_, publisher)) = &conn {
                let options = PublishOptions {
                    id: Some(id.clone()),
                    ..Default::default()
                };
                match publisher.publish_task(task, &json!({}), options).await {
                    Ok(_) => break,
                    Err(e) => {
                        publish_retries += 1;
                        if publish_retries % 50 == 1 {
                            eprintln!("soak: publish retried: {e}");
                        }
                        // Unroutable before the first worker declared the
                        // topology; otherwise the connection broke.
                        if !e.to_string().contains("NO_ROUTE") {
                            conn = None;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if poison {
            poison_ids.push(id);
        } else {
            ok_ids.push(id);
        }
    }
    let publishing_s = started.elapsed().as_secs_f64();
    let (restart_at, restart_down) = restart.await.unwrap();
    eprintln!(
        "soak: published {} tasks ({} poison); draining",
        ok_ids.len() + poison_ids.len(),
        poison_ids.len()
    );

    // Drain: every ok id done in Redis, every poison task parked.
    let redis = redis::Client::open(redis_url.as_str()).unwrap();
    let mut redis = redis.get_multiplexed_async_connection().await.unwrap();
    let (c, _) = conn
        .take()
        .unwrap_or_else(|| panic!("no producer connection at the end"));
    let channel = c.create_channel().await.unwrap();
    let dead_queue = names.dead_queue("poison");
    let drain_deadline = Instant::now() + Duration::from_secs(300);
    let mut missing: Vec<String>;
    loop {
        missing = Vec::new();
        for chunk in ok_ids.chunks(500) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|id| warren::idempotency::key(&namespace, "poison.ok", id))
                .collect();
            let found: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut redis)
                .await
                .unwrap();
            missing.extend(
                chunk
                    .iter()
                    .zip(found)
                    .filter(|(_, f)| f.is_none())
                    .map(|(id, _)| id.clone()),
            );
        }
        let parked = channel
            .queue_declare(
                dead_queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .map(|q| q.message_count())
            .unwrap_or(0);
        if missing.is_empty() && parked as usize >= poison_ids.len() {
            break;
        }
        if Instant::now() > drain_deadline {
            eprintln!(
                "soak: drain timed out: {} not done, {parked} of {} parked",
                missing.len(),
                poison_ids.len()
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let drained_s = started.elapsed().as_secs_f64() - publishing_s;

    // The parking lot: who, and why.
    let mut parked: BTreeMap<String, String> = BTreeMap::new();
    while let Ok(Some(m)) = channel
        .basic_get(dead_queue.as_str().into(), BasicGetOptions::default())
        .await
    {
        let headers_ = m.properties.headers().as_ref();
        let reason = contract::header_str(headers_, headers::DEAD_REASON).unwrap_or_default();
        let id = m
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        parked.insert(id, reason);
        m.ack(BasicAckOptions::default()).await.unwrap();
    }
    let poison_set: HashSet<&String> = poison_ids.iter().collect();
    let poison_not_parked: Vec<&String> = poison_ids
        .iter()
        .filter(|id| parked.get(*id).map(String::as_str) != Some("delivery_limit"))
        .collect();
    let parked_not_poison: Vec<(&String, &String)> = parked
        .iter()
        .filter(|(id, _)| !poison_set.contains(id))
        .collect();

    // Stop everything.
    stop.store(true, Ordering::SeqCst);
    for pid in pids.lock().unwrap().iter().flatten() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    for s in supervisors {
        let _ = tokio::time::timeout(Duration::from_secs(30), s).await;
    }
    killer.abort();
    let _ = sampler.await;
    let _ = c.close(200, "soak done".into()).await;
    // The soak's Redis keys.
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{namespace}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let node = Arc::try_unwrap(node).ok().map(|m| m.into_inner().unwrap());
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();

    // RSS: per role, the median of the samples from 10% to 25% of the run
    // (after warm-up) against the median of the last 15%.
    let samples = samples.lock().unwrap();
    let total = publishing_s;
    let median = |mut v: Vec<u64>| -> Option<u64> {
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let mut rss = serde_json::Map::new();
    let mut rss_ok = true;
    let roles: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.role.as_str()).collect();
    for role in roles {
        let of_role: Vec<&Sample> = samples.iter().filter(|s| s.role == role).collect();
        let window = |from: f64, to: f64| {
            median(
                of_role
                    .iter()
                    .filter(|s| s.t >= from * total && s.t <= to * total)
                    .map(|s| s.rss_kib)
                    .collect(),
            )
        };
        let early = window(0.10, 0.25);
        let late = window(0.85, 1.0);
        let max = of_role.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let pids: HashSet<u32> = of_role.iter().map(|s| s.pid).collect();
        let growth_pct = match (early, late) {
            (Some(e), Some(l)) if e > 0 => Some((l as f64 / e as f64 - 1.0) * 100.0),
            _ => None,
        };
        // A one-off step of a small process (a reconnect's buffers) is not
        // growth: either bound will do. A leak over the run exceeds both.
        let within = growth_pct.is_none_or(|g| g <= growth_bound_pct)
            || matches!((early, late), (Some(e), Some(l)) if l.saturating_sub(e) <= growth_bound_kib);
        rss_ok &= within;
        rss.insert(
            role.to_owned(),
            json!({
                "early_median_kib": early,
                "late_median_kib": late,
                "max_kib": max,
                "growth_pct": growth_pct.map(|g| (g * 10.0).round() / 10.0),
                "within_bound": within,
                "processes": pids.len(),
                "samples": of_role.len(),
            }),
        );
    }
    let series: Vec<_> = samples
        .iter()
        .map(|s| json!([(s.t * 10.0).round() / 10.0, s.role, s.pid, s.rss_kib]))
        .collect();

    let lost_ok = missing.len();
    let pass =
        lost_ok == 0 && poison_not_parked.is_empty() && parked_not_poison.is_empty() && rss_ok;
    let report = json!({
        "what": "Soak: a steady rate with 1% poison tasks through real worker processes on a RabbitMQ node of its own, SIGKILLs of workers, one broker restart, the Redis idempotency store; RSS of every process sampled",
        "command": "bench/soak",
        "pass": pass,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "settings": {
            "duration_s": duration.as_secs(),
            "rate_per_s": rate,
            "workers": workers,
            "kill_every_s": kill_every.as_secs(),
            "sample_every_s": sample_every.as_secs(),
            "delivery_limit": DELIVERY_LIMIT,
            "queue_type": "classic",
            "idempotency": "redis",
            "prefetch": 1,
            "rss_growth_bound_pct": growth_bound_pct,
            "rss_growth_bound_kib": growth_bound_kib,
        },
        "tasks": {
            "published": ok_ids.len() + poison_ids.len(),
            "poison": poison_ids.len(),
            "non_poison_done": ok_ids.len() - lost_ok,
            "non_poison_lost": lost_ok,
            "lost_ids": missing.iter().take(20).collect::<Vec<_>>(),
            "poison_parked_delivery_limit": poison_ids.len() - poison_not_parked.len(),
            "poison_not_parked": poison_not_parked.iter().take(20).collect::<Vec<_>>(),
            "parked_not_poison": parked_not_poison.iter().take(20).map(|(id, r)| json!([id, r])).collect::<Vec<_>>(),
            "publish_retries": publish_retries,
        },
        "faults": {
            "worker_aborts_by_poison": counters.aborts.load(Ordering::Relaxed),
            "worker_sigkills": counters.kills.load(Ordering::Relaxed),
            "worker_other_exits": counters.other_exits.load(Ordering::Relaxed),
            "worker_other_exit_details": counters.other.lock().unwrap().clone(),
            "worker_restarts": counters.restarts.load(Ordering::Relaxed),
            "broker_restart_at_s": (restart_at * 10.0).round() / 10.0,
            "broker_restart_took_s": (restart_down * 10.0).round() / 10.0,
        },
        "timing": {
            "publishing_s": (publishing_s * 10.0).round() / 10.0,
            "drain_s": (drained_s * 10.0).round() / 10.0,
        },
        "rss": rss,
        "rss_bound": format!("per process role: median VmRSS over the last 15% of the run at most {growth_bound_pct}% or {growth_bound_kib} KiB above the median over 10%-25% (after warm-up)"),
        "rss_series": ["t_s", "role", "pid", "rss_kib"],
        "rss_samples": series,
        "finished_at": chrono::Utc::now().to_rfc3339(),
    });
    if let Some(dir) = report_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&report_path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    eprintln!(
        "soak: {} — {} published, {lost_ok} lost, {} poison parked of {}, {} parked that were not poison, RSS within bound: {rss_ok}; report {}",
        if pass { "PASS" } else { "FAIL" },
        ok_ids.len() + poison_ids.len(),
        poison_ids.len() - poison_not_parked.len(),
        poison_ids.len(),
        parked_not_poison.len(),
        report_path.display()
    );
    std::process::exit(if pass { 0 } else { 1 });
}
