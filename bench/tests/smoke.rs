//! The benchmark's smoke run: every section with tiny sizes against the
//! real broker, so the bench never rots. It asserts that every figure is
//! produced (a finite, positive number) and that the runtime logged no
//! unexpected warning, never how fast anything is.

use serde_json::Value;
use warren_bench::{Config, Section};

fn numbers(path: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                // A count of log lines, 0 when all is well.
                if k != "unexpected_runtime_warnings" {
                    numbers(&format!("{path}.{k}"), x, out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numbers(&format!("{path}[{i}]"), x, out);
            }
        }
        Value::Number(_) | Value::Null => out.push((path.to_owned(), v.clone())),
        Value::String(_) | Value::Bool(_) => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_section_produces_its_figures() {
    let cfg = Config {
        worker_exe: Some(env!("CARGO_BIN_EXE_noop-worker").into()),
        ..Config::smoke()
    };
    let report = warren_bench::run(&cfg)
        .await
        .expect("the smoke benchmark runs against the local RabbitMQ");
    let json = report.to_json();
    for section in Section::ALL {
        let value = &json["sections"][section.as_str()];
        assert!(value.is_object(), "no figures for section {section}");
        let mut found = Vec::new();
        numbers(section.as_str(), value, &mut found);
        assert!(!found.is_empty(), "section {section} has no numbers");
        assert_eq!(
            value["unexpected_runtime_warnings"].as_u64(),
            Some(0),
            "section {section}: the runtime logged unexpected warnings (on stderr above); notes: {:?}",
            report.notes
        );
        for (path, x) in found {
            let x = x.as_f64();
            assert!(
                x.is_some_and(|x| x.is_finite() && x > 0.0),
                "{path} is {x:?}, not a positive number"
            );
        }
    }
    assert!(json["cores"].as_u64().is_some_and(|c| c > 0));
    assert!(
        json["rabbitmq_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    assert!(json["git_revision"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(report.table().contains("consume"));
}
