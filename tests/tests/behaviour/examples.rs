//! The examples crate (`examples/`), end to end: its custom worker process
//! against the real broker, with the email worker and the test SMTP server
//! delivering the digest's follow-ups.

use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::json;
use warren::PublishOptions;
use warren::contract::headers;
use warren_tests::worker::{WorkerProcess, binary, with};
use warren_tests::{EmailWorld, WAIT, rcpt};

fn file(path: &Path, age_days: u64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = File::create(path).unwrap();
    let modified = SystemTime::now() - Duration::from_secs(age_days * 24 * 3600);
    f.set_modified(modified).unwrap();
}

#[tokio::test]
async fn the_custom_worker_cleans_under_its_root_and_its_digest_is_delivered() {
    // Built before any broker connection opens: building blocks this
    // thread, and a connection that misses its heartbeats is closed.
    let path = binary("warren-examples", "custom-worker").unwrap();
    let s = EmailWorld::start(&[]).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    file(&r.join("tmp/old.txt"), 10);
    file(&r.join("tmp/deep/old.log"), 30);
    file(&r.join("tmp/new.txt"), 1);
    file(&r.join("keep/old.txt"), 10);
    let root_str = r.display().to_string();
    let env = with(
        vec![
            ("WARREN_BROKER__NAMESPACE", s.broker.namespace().to_owned()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
            (
                "WARREN_CONSUMER__RETRY_DELAYS",
                r#"["200ms","300ms"]"#.to_owned(),
            ),
        ],
        &[("CLEANUP_ROOT", root_str.as_str())],
    );
    let worker = WorkerProcess::start(path, "custom-worker", &env)
        .await
        .unwrap();
    worker.wait_for_log("Consuming.", 2, WAIT).await.unwrap();
    // A copy of every email.send task, to read the follow-ups' headers.
    let spy = s.broker.spy("email.send").await.unwrap();

    // Files older than 7 days under tmp/ go; newer ones, and anything
    // outside tmp/, stay.
    s.broker
        .publish(
            "files.cleanup",
            &json!({ "dir": "tmp", "older_than_days": 7 }),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let done = worker
        .wait_for_log("Task succeeded.", 1, WAIT)
        .await
        .unwrap();
    let result = done[0]["fields"]["result"].as_str().unwrap_or_default();
    assert!(result.contains(r#""deleted":2"#), "{}", done[0]);
    assert!(!r.join("tmp/old.txt").exists());
    assert!(!r.join("tmp/deep/old.log").exists());
    assert!(r.join("tmp/new.txt").exists());
    assert!(r.join("keep/old.txt").exists());

    // A path that leaves the root is refused as permanent: parked at once.
    let id = s
        .broker
        .publish(
            "files.cleanup",
            &json!({ "dir": "../", "older_than_days": 0 }),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let parked = s
        .broker
        .take(&s.broker.dead_queue("files"), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(parked[0].message_id().as_deref(), Some(id.as_str()));
    assert_eq!(
        parked[0].header(headers::ERROR_KIND).as_deref(),
        Some("path_outside_root")
    );
    assert_eq!(parked[0].header(headers::ATTEMPT).as_deref(), Some("1"));
    assert!(r.join("keep/old.txt").exists());

    // The digest publishes one email.send per recipient, which the email
    // worker delivers; each carries the digest's id as causation id.
    let (ada, grace) = (rcpt("ada"), rcpt("grace"));
    let digest = s
        .broker
        .publish(
            "digest.weekly",
            &json!({ "week": "2026-W48", "recipients": [ada, grace] }),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    for to in [&ada, &grace] {
        let mails = s.sink.wait_for_messages_to(to, 1, WAIT).await.unwrap();
        assert_eq!(
            mails[0].subject().as_deref(),
            Some("Your digest for 2026-W48")
        );
        assert!(mails[0].message_id().unwrap().contains(&digest));
    }
    let copies = s.broker.take(&spy, 2, WAIT).await.unwrap();
    for copy in &copies {
        assert_eq!(
            copy.header(headers::CAUSATION_ID).as_deref(),
            Some(digest.as_str())
        );
        assert!(copy.header(headers::TRACEPARENT).is_some());
    }
    let mut ids: Vec<_> = copies.iter().filter_map(|c| c.message_id()).collect();
    ids.sort();
    assert_eq!(ids, [format!("{digest}-0"), format!("{digest}-1")]);

    drop(worker);
    s.broker
        .cleanup_stems(&["email", "files", "digest"], &[])
        .await
        .unwrap();
}
