//! The image worker's `s3` store against a real S3-compatible server: moto's
//! standalone server on a loopback port (`warren_tests::s3`), one per test,
//! with a bucket of its own. The worker signs every request with `ring`
//! (SigV4), reads the source and writes the outputs with their content types.

use std::time::Duration;

use image::ImageFormat;
use serde_json::{Value, json};
use warren::PublishOptions;
use warren::contract::headers;
use warren_tests::WAIT;
use warren_tests::broker::TestBroker;
use warren_tests::images::{jpeg, photo, png_rgba};
use warren_tests::s3::{ACCESS_KEY_ID, S3Server, SECRET_ACCESS_KEY};
use warren_tests::worker::{WorkerProcess, binary, image_env, with};

struct Setup {
    broker: TestBroker,
    _unused_root: tempfile::TempDir,
    worker: WorkerProcess,
}

impl Setup {
    /// A ready image worker whose store is `s3`'s bucket, signing with
    /// `secret`, plus `overrides`.
    async fn new(s3: &S3Server, secret: &str, overrides: &[(&'static str, &str)]) -> Self {
        binary("image-worker", "image-worker").expect("the image worker builds");
        let broker = TestBroker::new().await.expect("broker");
        // The local root is unused by an s3 store; a fresh one keeps the
        // worker from writing anywhere else.
        let root = tempfile::tempdir().expect("root");
        let mut env = image_env(broker.namespace(), root.path());
        for (k, v) in s3.worker_env(ACCESS_KEY_ID, secret) {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        let env = with(env, overrides);
        let worker = WorkerProcess::image(&env).await.expect("worker");
        worker.wait_ready().await.expect("worker ready");
        Self {
            broker,
            _unused_root: root,
            worker,
        }
    }

    async fn publish(&self, body: Value) -> String {
        self.broker
            .publish("image.thumbnail", &body, PublishOptions::default())
            .await
            .expect("publish")
    }

    async fn succeeded(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = self
                .worker
                .logs_with_message("Task succeeded.")
                .into_iter()
                .find(|l| l["span"]["task_id"] == id);
            if let Some(line) = found {
                let raw = line["fields"]["result"].as_str().expect("a result");
                return serde_json::from_str(raw).expect("result is JSON");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} did not succeed within {WAIT:?}; last lines:\n{}",
                self.worker.tail(30)
            );
            // Until the next success (or a while): yields to the readers
            // of the worker's output.
            let seen = self.worker.logs_with_message("Task succeeded.").len();
            self.worker
                .wait_for_log("Task succeeded.", seen + 1, Duration::from_millis(500))
                .await
                .ok();
        }
    }

    /// Every line the worker wrote so far, as text.
    fn output(&self) -> String {
        self.worker
            .logs()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn cleanup(&self) {
        self.broker
            .cleanup_stems(&["image"], &[])
            .await
            .expect("cleanup");
    }
}

fn bucket() -> String {
    format!("warren-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn s3_sources_are_read_and_outputs_written_with_their_content_types() {
    let s3 = S3Server::start(&bucket()).await.expect("moto_server");
    let s = Setup::new(&s3, SECRET_ACCESS_KEY, &[]).await;
    s3.put("uploads/photo.jpg", &jpeg(&photo(400, 300)))
        .await
        .unwrap();
    let logo =
        image::RgbaImage::from_fn(120, 80, |x, _| image::Rgba([200, 30, (x % 256) as u8, 255]));
    s3.put("uploads/logo.png", &png_rgba(&logo)).await.unwrap();

    let id = s
        .publish(json!({
            "source": {"key": "uploads/photo.jpg"},
            "outputs": [
                {"width": 200, "height": 200, "format": "jpeg", "name": "small.jpg"},
                {"width": 100, "height": 100, "fit": "cover", "format": "png", "name": "square.png"},
                {"width": 80, "height": 80, "format": "webp", "name": "tiny.webp"},
            ],
            "destination_prefix": "thumbs/photo",
        }))
        .await;
    let result = s.succeeded(&id).await;
    let cases = [
        (
            "thumbs/photo/small.jpg",
            "image/jpeg",
            ImageFormat::Jpeg,
            (200, 150),
        ),
        (
            "thumbs/photo/square.png",
            "image/png",
            ImageFormat::Png,
            (100, 100),
        ),
        (
            "thumbs/photo/tiny.webp",
            "image/webp",
            ImageFormat::WebP,
            (80, 60),
        ),
    ];
    for (i, (key, content_type, format, size)) in cases.into_iter().enumerate() {
        assert_eq!(result["outputs"][i]["key"], key, "{result}");
        let (bytes, got_type) = s3
            .get(key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key} is not in the bucket"));
        assert_eq!(got_type, content_type, "{key}");
        let decoded = image::load_from_memory_with_format(&bytes, format).expect("decodes");
        assert_eq!((decoded.width(), decoded.height()), size, "{key}");
    }

    // The default destination prefix, from a PNG source.
    let id = s
        .publish(json!({
            "source": {"key": "uploads/logo.png"},
            "outputs": [{"width": 60, "height": 60, "format": "png"}],
        }))
        .await;
    let result = s.succeeded(&id).await;
    let key = result["outputs"][0]["key"]
        .as_str()
        .expect("a key")
        .to_owned();
    assert!(key.starts_with(&format!("thumbnails/{id}/")), "{key}");
    let (_, got_type) = s3.get(&key).await.unwrap().expect("the output");
    assert_eq!(got_type, "image/png");
    s.cleanup().await;
}

#[tokio::test]
async fn a_missing_s3_source_is_parked_at_once_as_source_not_found() {
    let s3 = S3Server::start(&bucket()).await.expect("moto_server");
    let s = Setup::new(&s3, SECRET_ACCESS_KEY, &[]).await;
    let id = s
        .publish(json!({
            "source": {"key": "uploads/never-uploaded.jpg"},
            "outputs": [{"width": 50, "height": 50}],
        }))
        .await;
    let parked = s
        .broker
        .take(&s.broker.dead_queue("image"), 1, WAIT)
        .await
        .unwrap();
    let m = &parked[0];
    assert_eq!(m.message_id().as_deref(), Some(id.as_str()));
    assert_eq!(m.header(headers::DEAD_REASON).as_deref(), Some("permanent"));
    assert_eq!(
        m.header(headers::ERROR_KIND).as_deref(),
        Some("source_not_found")
    );
    let reason = m.header(headers::ERROR).unwrap_or_default();
    assert!(
        reason.contains("uploads/never-uploaded.jpg") && reason.contains("does not exist"),
        "{reason}"
    );
    assert_eq!(
        m.header(headers::ATTEMPT).as_deref(),
        Some("1"),
        "never retried"
    );
    s.cleanup().await;
}

#[tokio::test]
async fn wrong_s3_credentials_fail_with_a_clear_reason_and_the_secret_is_never_logged() {
    let s3 = S3Server::start_enforcing_credentials(&bucket())
        .await
        .expect("moto_server");
    let secret = format!("wrong-secret-{}", uuid::Uuid::new_v4().simple());
    let s = Setup::new(
        &s3,
        &secret,
        &[
            ("WARREN_CONSUMER__RETRY_DELAYS", r#"["100ms"]"#),
            ("WARREN_CONSUMER__MAX_ATTEMPTS", "2"),
        ],
    )
    .await;
    let id = s
        .publish(json!({
            "source": {"key": "uploads/photo.jpg"},
            "outputs": [{"width": 50, "height": 50}],
        }))
        .await;
    let retried = s
        .worker
        .wait_for_log("Task failed; it will be retried.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(retried[0]["span"]["task_id"], id.as_str());
    assert_eq!(retried[0]["fields"]["error_kind"], "store_unavailable");
    let parked = s
        .broker
        .take(&s.broker.dead_queue("image"), 1, WAIT)
        .await
        .unwrap();
    let m = &parked[0];
    assert_eq!(m.message_id().as_deref(), Some(id.as_str()));
    assert_eq!(
        m.header(headers::ERROR_KIND).as_deref(),
        Some("store_unavailable")
    );
    let reason = m.header(headers::ERROR).unwrap_or_default();
    assert!(
        reason.contains("uploads/photo.jpg") && reason.contains("InvalidAccessKeyId"),
        "the reason names the refusal: {reason}"
    );
    assert!(!reason.contains(&secret), "{reason}");
    let output = s.output();
    assert!(
        output.contains("InvalidAccessKeyId"),
        "the log says why:\n{}",
        s.worker.tail(20)
    );
    assert!(
        !output.contains(&secret),
        "the secret is in the worker's output"
    );
    for header in m.headers().values() {
        assert!(!header.contains(&secret));
    }
    s.cleanup().await;
}

#[tokio::test]
async fn an_s3_store_that_is_down_is_retried_until_it_is_back() {
    let mut s3 = S3Server::start(&bucket()).await.expect("moto_server");
    // A short store timeout: while the server is down, each attempt ends
    // quickly. Retried for as long as the test takes to bring it back.
    let s = Setup::new(
        &s3,
        SECRET_ACCESS_KEY,
        &[
            ("WARREN_IMAGE__STORE_TIMEOUT", "2s"),
            ("WARREN_CONSUMER__RETRY_DELAYS", r#"["300ms"]"#),
            ("WARREN_CONSUMER__MAX_ATTEMPTS", "1000"),
        ],
    )
    .await;
    s3.stop().await.unwrap();
    // An inline source: the task needs the store only to write, so what
    // moto forgets in a restart (it keeps objects in memory) does not
    // matter, and a write that lands before the bucket is back is one more
    // transient failure.
    let source = jpeg(&photo(160, 120));
    let id = s
        .publish(json!({
            "source": {"base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &source)},
            "outputs": [{"width": 80, "height": 80, "format": "jpeg", "name": "out.jpg"}],
            "destination_prefix": "thumbs/down",
        }))
        .await;
    let retried = s
        .worker
        .wait_for_log("Task failed; it will be retried.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(retried[0]["span"]["task_id"], id.as_str());
    assert_eq!(retried[0]["fields"]["error_kind"], "store_unavailable");

    s3.restart().await.expect("moto_server again, same port");
    let result = s.succeeded(&id).await;
    assert_eq!(result["outputs"][0]["key"], "thumbs/down/out.jpg");
    let (bytes, content_type) = s3
        .get("thumbs/down/out.jpg")
        .await
        .unwrap()
        .expect("the output is in the bucket");
    assert_eq!(content_type, "image/jpeg");
    let out = image::load_from_memory_with_format(&bytes, ImageFormat::Jpeg).unwrap();
    assert_eq!((out.width(), out.height()), (80, 60));
    assert_eq!(
        s.broker.depth(&s.broker.dead_queue("image")).await.unwrap(),
        0
    );
    s.cleanup().await;
}
