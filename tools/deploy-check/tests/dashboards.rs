//! The deploy files ops rely on: Prometheus' config and alert rules pass
//! `promtool` and their unit tests, every alert has a firing and a quiet
//! test case, and every query of the Grafana dashboards is valid PromQL
//! that returns data from a real Prometheus scraping a real email worker
//! and RabbitMQ's per-queue metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde_json::{Value, json};
use warren::PublishOptions;
use warren_deploy_check::prometheus::{
    PrometheusServer, QueryAnswer, dashboard_queries, deploy_dir, local_config, promtool,
    sample_value, substitute,
};
use warren_tests::ops::http_get;
use warren_tests::{EmailWorld, WAIT, rcpt};

const RABBITMQ_PROMETHEUS: &str = "127.0.0.1:15692";

fn yaml(path: &str) -> Value {
    let path = deploy_dir().join(path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn promtool_accepts_the_config_and_the_rules_and_the_rule_tests_pass() {
    let dir = deploy_dir().join("prometheus");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts_test.yml"],
    ] {
        if let Err(e) = promtool(&dir, args) {
            panic!("{e:#}");
        }
    }
}

#[test]
fn every_alert_is_complete_and_has_a_firing_and_a_quiet_test_case() {
    let rules = yaml("prometheus/alerts.yml");
    let mut alerts = BTreeSet::new();
    for rule in rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
    {
        let Some(name) = rule["alert"].as_str() else {
            continue; // a recording rule
        };
        assert!(rule["for"].is_string(), "{name} has no `for`");
        assert!(
            ["critical", "warning", "info"]
                .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{name} has no severity label"
        );
        for annotation in ["summary", "description", "runbook"] {
            assert!(
                rule["annotations"][annotation].is_string(),
                "{name} has no {annotation} annotation"
            );
        }
        assert!(alerts.insert(name.to_owned()), "{name} is defined twice");
    }
    assert!(!alerts.is_empty(), "alerts.yml defines no alert");

    // alert name -> (firing cases, quiet cases)
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let tests = yaml("prometheus/alerts_test.yml");
    for case in tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
    {
        let name = case["alertname"].as_str().unwrap().to_owned();
        assert!(
            alerts.contains(&name),
            "alerts_test.yml tests {name}, which alerts.yml does not define"
        );
        let firing = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
        let entry = cases.entry(name).or_default();
        if firing {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    let missing: Vec<String> = alerts
        .iter()
        .filter_map(|name| {
            let (firing, quiet) = cases.get(name).copied().unwrap_or_default();
            let mut lacks = Vec::new();
            if firing == 0 {
                lacks.push("a firing case");
            }
            if quiet == 0 {
                lacks.push("a quiet case");
            }
            (!lacks.is_empty()).then(|| format!("{name} lacks {}", lacks.join(" and ")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "alerts_test.yml:\n{}",
        missing.join("\n")
    );
}

fn dashboard_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(deploy_dir().join("grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no dashboards in deploy/grafana/dashboards"
    );
    files
}

#[test]
fn dashboards_are_well_formed_grafana_json() {
    let mut uids = BTreeSet::new();
    for path in dashboard_files() {
        let name = path.display().to_string();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(d["title"].is_string(), "{name}: no title");
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_owned()),
            "{name}: uid used twice"
        );
        assert!(
            d["schemaVersion"].as_u64().unwrap() >= 36,
            "{name}: schemaVersion"
        );
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
            "{name}: no $datasource variable"
        );

        let mut ids = BTreeSet::new();
        let mut boxes: Vec<(String, u64, u64, u64, u64)> = Vec::new();
        let panels = d["panels"].as_array().unwrap();
        let nested = panels
            .iter()
            .flat_map(|p| p["panels"].as_array().into_iter().flatten());
        for panel in panels.iter().chain(nested) {
            let title = panel["title"].as_str().unwrap_or("").to_owned();
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{name}: panel id of {title} used twice"
            );
            let g = &panel["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
                g[k].as_u64()
                    .unwrap_or_else(|| panic!("{name}: {title}: gridPos.{k}"))
            });
            assert!(
                w > 0 && h > 0 && x + w <= 24,
                "{name}: {title}: gridPos {g}"
            );
            for (other, ox, oy, ow, oh) in &boxes {
                assert!(
                    x >= ox + ow || ox >= &(x + w) || y >= oy + oh || oy >= &(y + h),
                    "{name}: {title} overlaps {other}"
                );
            }
            boxes.push((title.clone(), x, y, w, h));
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}: {title}: data source"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {title}: no targets");
            for t in targets {
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                    "{name}: {title}: a target without expr"
                );
                assert!(t["refId"].is_string(), "{name}: {title}: no refId");
            }
        }
    }
}

/// With TEST_DASHBOARDS_SHOW set, prints what each panel would draw.
fn show(what: &str) {
    if std::env::var_os("TEST_DASHBOARDS_SHOW").is_some() {
        eprintln!("{what}");
    }
}

/// Panels whose data only another service produces: the image worker's own
/// metrics (`warren_image_*`) and the gateway's job. Their queries must
/// still parse; this test runs only an email worker.
fn needs_another_service(expr: &str) -> bool {
    expr.contains("warren_image_") || expr.contains("job=\"gateway\"")
}

#[tokio::test]
async fn every_dashboard_query_is_valid_and_returns_data() {
    let started = Instant::now();
    let (status, _) = http_get(RABBITMQ_PROMETHEUS.parse().unwrap(), "/metrics")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ's Prometheus endpoint {RABBITMQ_PROMETHEUS} does not answer ({e:#}): \
                 run `rabbitmq-plugins enable rabbitmq_prometheus` (scripts/prepare does)"
            )
        });
    assert_eq!(status, 200);

    let world = EmailWorld::start(&[]).await.unwrap();
    let (broker, worker) = (&world.broker, &world.worker);
    let ns = broker.namespace().to_owned();
    let work_queue = broker.names.work_queue("email");
    let ops = worker.ops_addr().await.unwrap();

    // deploy/prometheus/prometheus.yml itself, with the jobs pointed here:
    // the RabbitMQ job keeps its /metrics/detailed path and families.
    let deploy_config =
        std::fs::read_to_string(deploy_dir().join("prometheus/prometheus.yml")).unwrap();
    let config = local_config(
        &deploy_config,
        &deploy_dir().join("prometheus"),
        &[
            ("email-worker", vec![ops.to_string()]),
            ("rabbitmq", vec![RABBITMQ_PROMETHEUS.to_owned()]),
        ],
    )
    .unwrap();
    let prometheus = PrometheusServer::start(&config).await.unwrap();
    // Scraped both targets before the traffic (Prometheus starts scraping a
    // few seconds after it is ready), so the counters' increase is seen.
    for job in ["email-worker", "rabbitmq"] {
        let expr = format!("sum(up{{job=\"{job}\"}})");
        if let Err(e) = prometheus.wait_for(&expr, |v| v >= 1.0, WAIT).await {
            panic!("{e:#}\nPrometheus log:\n{}", prometheus.log_text());
        }
    }
    show(&format!(
        "Prometheus scrapes both targets after {:?}.",
        started.elapsed()
    ));

    // Traffic in two waves, each of three successes, a success after one
    // retry and a dead letter. The worker creates a label set's series at
    // its first use, so Prometheus' first sample of it already counts the
    // first wave; only the second wave shows as an increase in rates.
    let traffic = Instant::now();
    for wave in 1..=2 {
        for prefix in ["ok", "ok", "ok", "tempfail451x1", "reject550"] {
            let body = json!({"to": rcpt(prefix), "subject": "m", "text": "m"});
            broker
                .publish("email.send", &body, PublishOptions::default())
                .await
                .unwrap();
        }
        worker
            .wait_for_log("Task succeeded.", 4 * wave, WAIT)
            .await
            .unwrap();
        worker
            .wait_for_log("Task dead-lettered.", wave, WAIT)
            .await
            .unwrap();
        // Prometheus has scraped the outcome.
        for (metric, min) in [
            ("warren_tasks_succeeded_total", 4 * wave),
            ("warren_tasks_dead_lettered_total", wave),
        ] {
            let expr = format!("sum({metric}{{queue=\"{work_queue}\"}})");
            let min = min as f64;
            if let Err(e) = prometheus.wait_for(&expr, |v| v >= min, WAIT).await {
                panic!("{e:#}\nPrometheus log:\n{}", prometheus.log_text());
            }
        }
    }
    // RabbitMQ reports queue stats every few seconds.
    let expr = format!("sum(rabbitmq_detailed_queue_consumers{{queue=\"{work_queue}\"}})");
    if let Err(e) = prometheus.wait_for(&expr, |v| v >= 1.0, WAIT).await {
        panic!("{e:#}\nPrometheus log:\n{}", prometheus.log_text());
    }
    // Two more scrapes of every target after the last change, for the
    // rates: counted by Prometheus itself.
    let scrapes = "sum(count_over_time(up[1h]))";
    let value = |answer: QueryAnswer| match answer {
        QueryAnswer::Data(result) => result.iter().find_map(sample_value),
        QueryAnswer::Error(_) => None,
    };
    let so_far = value(prometheus.query(scrapes).await.unwrap()).unwrap_or(0.0);
    let targets = value(prometheus.query("count(up)").await.unwrap()).unwrap_or(1.0);
    if let Err(e) = prometheus
        .wait_for(scrapes, |v| v >= so_far + 2.0 * targets, WAIT)
        .await
    {
        panic!("{e:#}\nPrometheus log:\n{}", prometheus.log_text());
    }
    show(&format!(
        "Scraped the traffic after {:?}.",
        traffic.elapsed()
    ));

    // The values Grafana would fill in, with the test's own namespace, and
    // a rate window that spans the traffic, so rates and quantiles show it.
    let rate_window = format!("{}s", traffic.elapsed().as_secs() + 10);
    let vars = [
        ("namespace", ns.as_str()),
        ("service", "email-worker"),
        ("task", "email.send"),
        ("concurrency", "8"),
        ("datasource", "prometheus"),
        ("__rate_interval", rate_window.as_str()),
        ("__interval", "5s"),
        ("__range", "5m"),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in &dashboard_files() {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let queries = dashboard_queries(&dashboard);
        assert!(!queries.is_empty(), "{} has no queries", path.display());

        // The template variables' own queries: label_values(selector, label)
        // must find the label on some series.
        for var in dashboard["templating"]["list"].as_array().unwrap() {
            let Some(definition) = var["definition"].as_str() else {
                continue;
            };
            let inner = definition
                .strip_prefix("label_values(")
                .and_then(|d| d.strip_suffix(')'))
                .unwrap_or_else(|| panic!("unexpected variable query {definition}"));
            let (selector, label) = inner.rsplit_once(',').unwrap();
            let selector = substitute(selector.trim(), &vars).unwrap();
            let label = label.trim();
            match prometheus.query(&selector).await.unwrap() {
                QueryAnswer::Data(series)
                    if series.iter().any(|s| s["metric"][label].is_string()) => {}
                other => failures.push(format!(
                    "{}: variable {}: {selector} has no series with label {label}: {other:?}",
                    dashboard["title"], var["name"]
                )),
            }
        }

        for q in queries {
            checked += 1;
            let expr = match substitute(&q.expr, &vars) {
                Ok(expr) => expr,
                Err(e) => {
                    failures.push(format!("{} / {}: {e}", q.dashboard, q.panel));
                    continue;
                }
            };
            match prometheus.query(&expr).await.unwrap() {
                QueryAnswer::Error(e) => failures.push(format!(
                    "{} / {}: invalid: {e}\n    {}",
                    q.dashboard, q.panel, q.expr
                )),
                QueryAnswer::Data(result) if result.is_empty() && !needs_another_service(&expr) => {
                    failures.push(format!(
                        "{} / {}: no data\n    {}\n    ran: {expr}",
                        q.dashboard, q.panel, q.expr
                    ))
                }
                QueryAnswer::Data(result) => {
                    let values: Vec<String> = result
                        .iter()
                        .map(|s| format!("{} = {}", s["metric"], s["value"][1]))
                        .collect();
                    show(&format!(
                        "{} / {}:\n  {}",
                        q.dashboard,
                        q.panel,
                        values.join("\n  ")
                    ));
                }
            }
        }
    }

    // The alert rules, loaded from deploy/prometheus/alerts.yml, evaluate
    // without error against the same real data.
    let rules = prometheus.api("/api/v1/rules").await.unwrap();
    let mut alert_rules = 0;
    for rule in rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
    {
        alert_rules += 1;
        if rule["health"] != "ok" {
            failures.push(format!(
                "alert {}: health {} ({})",
                rule["name"], rule["health"], rule["lastError"]
            ));
        }
    }
    assert!(alert_rules > 0, "Prometheus loaded no alert rules: {rules}");

    assert!(
        failures.is_empty(),
        "{} of {checked} dashboard queries (and the checks around them) failed:\n{}\nPrometheus log:\n{}",
        failures.len(),
        failures.join("\n"),
        prometheus.log_text()
    );
    // Sanity: the RabbitMQ job's per-queue metrics describe this namespace.
    let QueryAnswer::Data(depth) = prometheus
        .query(&format!(
            "rabbitmq_detailed_queue_messages_ready{{queue=\"{work_queue}\"}}"
        ))
        .await
        .unwrap()
    else {
        panic!("queue depth query failed");
    };
    assert_eq!(depth.iter().filter_map(sample_value).count(), 1);

    drop(prometheus);
    broker.cleanup().await.unwrap();
}
