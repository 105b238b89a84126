//! The image worker end to end: `image.thumbnail` tasks published over AMQP
//! to the real RabbitMQ, a real worker process, a real local store in a
//! temporary directory.
//!
//! Each test has its own namespace and its own store root, and generates
//! its images in code, so tests run in parallel and need no fixtures.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use serde_json::{Value, json};
use warren::PublishOptions;
use warren::contract::headers;
use warren_tests::WAIT;
use warren_tests::broker::{Message, TestBroker};
use warren_tests::images::{gif, jpeg, photo, png_rgba, webp};
use warren_tests::worker::{WorkerProcess, binary, image_env, with};

struct Setup {
    broker: TestBroker,
    store: tempfile::TempDir,
    worker: WorkerProcess,
}

impl Setup {
    async fn new(overrides: &[(&'static str, &str)]) -> Self {
        // Build the worker before opening the test's broker connection:
        // the build blocks this thread, and with it the connection's
        // heartbeats, for as long as cargo takes.
        binary("image-worker", "image-worker").expect("the image worker builds");
        let broker = TestBroker::new().await.expect("broker");
        let store = tempfile::tempdir().expect("store root");
        let env = with(image_env(broker.namespace(), store.path()), overrides);
        let worker = WorkerProcess::image(&env).await.expect("worker");
        worker.wait_ready().await.expect("worker ready");
        Self {
            broker,
            store,
            worker,
        }
    }

    fn root(&self) -> &Path {
        self.store.path()
    }

    /// Puts a source object into the store.
    fn upload(&self, key: &str, bytes: &[u8]) {
        let path = self.root().join(key);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write source");
    }

    async fn publish(&self, body: Value) -> String {
        self.broker
            .publish("image.thumbnail", &body, PublishOptions::default())
            .await
            .expect("publish")
    }

    /// Waits for the task's "Task succeeded." line and returns its result.
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
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads an output object and decodes it, checking its format.
    fn output(&self, key: &str, format: ImageFormat) -> DynamicImage {
        let bytes =
            std::fs::read(self.root().join(key)).unwrap_or_else(|e| panic!("output {key}: {e}"));
        assert_eq!(
            image::guess_format(&bytes).expect("a known format"),
            format,
            "{key}"
        );
        image::load_from_memory_with_format(&bytes, format).expect("output decodes")
    }

    async fn cleanup(&self) {
        self.broker
            .cleanup_stems(&["image"], &[])
            .await
            .expect("cleanup");
    }
}

/// A JPEG whose pixels are stored `width` x `height`, left half red, right
/// half blue, with EXIF orientation `orientation` in an APP1 segment.
fn jpeg_with_orientation(width: u32, height: u32, orientation: u16) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, _| {
        if x < width / 2 {
            Rgb([230, 20, 20])
        } else {
            Rgb([20, 20, 230])
        }
    });
    let plain = jpeg(&image);
    // TIFF, big-endian: header, one IFD with one entry (0x0112 SHORT).
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes());
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\x00\x00");
    app1.extend_from_slice(&tiff);
    let mut out = plain[..2].to_vec(); // SOI
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

/// A small real JPEG whose frame header claims `width` x `height`.
fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = jpeg(&photo(16, 16));
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline SOF0 marker");
    // FF C0, length (2), precision (1), height (2), width (2).
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

fn assert_near(actual: [u8; 3], expected: [u8; 3], what: &str) {
    let close = actual
        .iter()
        .zip(expected)
        .all(|(a, e)| (i16::from(*a) - i16::from(e)).abs() <= 40);
    assert!(close, "{what}: {actual:?} is not close to {expected:?}");
}

#[tokio::test]
async fn jpeg_png_webp_and_gif_sources_become_outputs_of_the_requested_sizes_and_formats() {
    let s = Setup::new(&[]).await;
    s.upload("uploads/photo.jpg", &jpeg(&photo(400, 300)));
    // Left half fully transparent, right half opaque red.
    let logo = RgbaImage::from_fn(300, 200, |x, _| {
        if x < 150 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([220, 30, 30, 255])
        }
    });
    s.upload("uploads/logo.png", &png_rgba(&logo));
    s.upload("uploads/scan.webp", &webp(&photo(320, 240)));
    let anim = RgbaImage::from_fn(120, 80, |x, y| {
        Rgba([(x * 2) as u8, (y * 3) as u8, 90, 255])
    });

    let jpeg_id = s
        .publish(json!({
            "source": {"key": "uploads/photo.jpg"},
            "outputs": [{"width": 200, "height": 200, "fit": "contain", "format": "jpeg", "quality": 80}],
        }))
        .await;
    let png_id = s
        .publish(json!({
            "source": {"key": "uploads/logo.png"},
            "outputs": [
                {"width": 150, "height": 150, "format": "jpeg", "name": "flat.jpg"},
                {"width": 150, "height": 150, "format": "png", "name": "alpha.png"},
            ],
            "background": "#00ff00",
        }))
        .await;
    let webp_id = s
        .publish(json!({
            "source": {"key": "uploads/scan.webp"},
            "outputs": [{"width": 100, "height": 100, "fit": "cover", "format": "png"}],
            "destination_prefix": "thumbs/scan",
        }))
        .await;
    // Inline: a GIF sent in the task itself.
    let gif_id = s
        .publish(json!({
            "source": {"base64": base64::engine::general_purpose::STANDARD.encode(gif(&anim))},
            "outputs": [{"width": 60, "height": 60, "fit": "fill", "format": "webp", "quality": 70}],
        }))
        .await;

    // JPEG: 400x300 into a 200 box keeps 4:3.
    let result = s.succeeded(&jpeg_id).await;
    let key = format!("thumbnails/{jpeg_id}/200x200-contain.jpg");
    assert_eq!(result["outputs"][0]["key"], key.as_str());
    assert_eq!(result["outputs"][0]["width"], 200);
    assert_eq!(result["outputs"][0]["height"], 150);
    assert_eq!(result["source"]["format"], "jpeg");
    let out = s.output(&key, ImageFormat::Jpeg);
    assert_eq!((out.width(), out.height()), (200, 150));

    // PNG with alpha: flattened on the requested green as JPEG, kept
    // transparent as PNG.
    let result = s.succeeded(&png_id).await;
    assert_eq!(result["outputs"].as_array().map(Vec::len), Some(2));
    let flat = s
        .output(&format!("thumbnails/{png_id}/flat.jpg"), ImageFormat::Jpeg)
        .into_rgb8();
    assert_eq!(flat.dimensions(), (150, 100));
    assert_near(
        flat.get_pixel(10, 50).0,
        [0, 255, 0],
        "transparent area on green",
    );
    assert_near(flat.get_pixel(140, 50).0, [220, 30, 30], "opaque red area");
    let alpha = s
        .output(&format!("thumbnails/{png_id}/alpha.png"), ImageFormat::Png)
        .into_rgba8();
    assert_eq!(alpha.dimensions(), (150, 100));
    assert_eq!(alpha.get_pixel(10, 50).0[3], 0, "still transparent");
    assert_eq!(alpha.get_pixel(140, 50).0[3], 255, "still opaque");

    // WebP source, cover: exactly the box, under the requested prefix.
    let result = s.succeeded(&webp_id).await;
    assert_eq!(result["source"]["format"], "webp");
    let out = s.output("thumbs/scan/100x100-cover.png", ImageFormat::Png);
    assert_eq!((out.width(), out.height()), (100, 100));

    // GIF source, fill: stretched to the box, as WebP.
    let result = s.succeeded(&gif_id).await;
    assert_eq!(result["source"]["format"], "gif");
    assert_eq!(result["source"]["key"], Value::Null);
    let out = s.output(
        &format!("thumbnails/{gif_id}/60x60-fill.webp"),
        ImageFormat::WebP,
    );
    assert_eq!((out.width(), out.height()), (60, 60));

    assert_eq!(
        s.broker.depth(&s.broker.dead_queue("image")).await.unwrap(),
        0
    );
    s.cleanup().await;
}

#[tokio::test]
async fn exif_orientation_is_honoured_and_two_outputs_share_one_decode() {
    let s = Setup::new(&[]).await;
    // Stored 400x200, red left / blue right; EXIF 6 says "rotate 90
    // clockwise to display": shown 200x400, red on top, blue below.
    s.upload("uploads/rotated.jpg", &jpeg_with_orientation(400, 200, 6));
    let id = s
        .publish(json!({
            "source": {"key": "uploads/rotated.jpg"},
            "outputs": [
                {"width": 100, "height": 100, "format": "png"},
                {"width": 60, "height": 60, "fit": "cover", "format": "jpeg"},
            ],
        }))
        .await;
    let result = s.succeeded(&id).await;
    assert_eq!(result["source"]["orientation"], 6);
    assert_eq!(result["source"]["width"], 200);
    assert_eq!(result["source"]["height"], 400);

    let tall = s
        .output(
            &format!("thumbnails/{id}/100x100-contain.png"),
            ImageFormat::Png,
        )
        .into_rgb8();
    assert_eq!(tall.dimensions(), (50, 100), "portrait after rotation");
    assert_near(tall.get_pixel(25, 5).0, [230, 20, 20], "top is red");
    assert_near(tall.get_pixel(25, 95).0, [20, 20, 230], "bottom is blue");
    let square = s
        .output(
            &format!("thumbnails/{id}/60x60-cover.jpg"),
            ImageFormat::Jpeg,
        )
        .into_rgb8();
    assert_eq!(square.dimensions(), (60, 60));
    assert_near(square.get_pixel(30, 3).0, [230, 20, 20], "top is red");
    assert_near(square.get_pixel(30, 57).0, [20, 20, 230], "bottom is blue");

    // Both outputs came from a single decode.
    let decodes: Vec<Value> = s
        .worker
        .logs_with_message("Decoded the source image.")
        .into_iter()
        .filter(|l| l["fields"]["task_id"] == id.as_str())
        .collect();
    assert_eq!(decodes.len(), 1, "{decodes:?}");
    assert_eq!(decodes[0]["fields"]["outputs"], 2);

    // The ops port counts what was done: 400x200 source pixels, and the
    // bytes of both outputs by format.
    let ops = s.worker.ops_addr().await.expect("ops address");
    let (status, metrics) = warren_tests::ops::http_get(ops, "/metrics")
        .await
        .expect("scrape");
    assert_eq!(status, 200);
    use warren_tests::ops::sample;
    assert_eq!(
        sample(&metrics, "warren_image_pixels_processed_total", &[]),
        80_000.0
    );
    let written = |format| {
        let key = result["outputs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["format"] == format)
            .and_then(|o| o["bytes"].as_f64())
            .unwrap_or(-1.0);
        (
            sample(
                &metrics,
                "warren_image_bytes_written_total",
                &[("format", format)],
            ),
            key,
        )
    };
    for format in ["png", "jpeg"] {
        let (counted, reported) = written(format);
        assert_eq!(counted, reported, "{format} bytes written");
    }
    assert_eq!(
        sample(
            &metrics,
            "warren_tasks_succeeded_total",
            &[("service", "image-worker")]
        ),
        1.0
    );
    s.cleanup().await;
}

#[tokio::test]
async fn hostile_inputs_are_dead_lettered_with_a_reason_and_the_worker_goes_on() {
    let s = Setup::new(&[]).await;
    s.upload("uploads/bomb.jpg", &jpeg_declaring(30_000, 30_000));
    let whole = jpeg(&photo(256, 256));
    s.upload("uploads/truncated.jpg", &whole[..whole.len() / 2]);
    s.upload("uploads/notes.jpg", b"these are my notes, not a picture\n");
    s.upload("uploads/fine.jpg", &whole);

    let cases = [
        (
            json!({"source": {"key": "uploads/bomb.jpg"}, "outputs": [{"width": 100, "height": 100}]}),
            "image_too_large",
            "30000x30000",
        ),
        (
            json!({"source": {"key": "uploads/truncated.jpg"}, "outputs": [{"width": 100, "height": 100}]}),
            "corrupt_image",
            "truncated",
        ),
        (
            json!({"source": {"key": "uploads/notes.jpg"}, "outputs": [{"width": 100, "height": 100}]}),
            "unsupported_format",
            "not a JPEG, PNG, WebP or GIF",
        ),
        (
            json!({"source": {"key": "uploads/../../etc/passwd"}, "outputs": [{"width": 100, "height": 100}]}),
            "invalid_key",
            "'..' segment",
        ),
        (
            json!({"source": {"key": "uploads/fine.jpg"}, "outputs": [{"width": 100, "height": 100}], "destination_prefix": "/tmp/owned"}),
            "invalid_key",
            "absolute path",
        ),
    ];
    let mut expected = Vec::new();
    for (body, kind, reason) in cases {
        let id = s.publish(body).await;
        expected.push((id, kind, reason));
    }
    // The worker is still up and does the next task.
    let good = s
        .publish(json!({"source": {"key": "uploads/fine.jpg"}, "outputs": [{"width": 64, "height": 64}]}))
        .await;
    let result = s.succeeded(&good).await;
    assert_eq!(result["outputs"][0]["width"], 64);

    let parked: Vec<Message> = s
        .broker
        .take(&s.broker.dead_queue("image"), expected.len(), WAIT)
        .await
        .unwrap();
    for (id, kind, reason) in &expected {
        let m = parked
            .iter()
            .find(|m| m.message_id().as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("task {id} ({kind}) was not parked"));
        assert_eq!(m.header(headers::DEAD_REASON).as_deref(), Some("permanent"));
        assert_eq!(
            m.header(headers::ERROR_KIND).as_deref(),
            Some(*kind),
            "{id}"
        );
        let message = m.header(headers::ERROR).unwrap_or_default();
        assert!(message.contains(reason), "{kind}: {message}");
        assert_eq!(
            m.header(headers::ATTEMPT).as_deref(),
            Some("1"),
            "never retried"
        );
    }
    // Nothing escaped the store's root, nothing was written for the
    // refused tasks.
    assert!(!Path::new("/tmp/owned").exists());
    assert!(!s.root().join("thumbnails").join(&expected[0].0).exists());
    s.cleanup().await;
}

#[tokio::test]
async fn an_unwritable_destination_is_retried_until_it_heals() {
    // Retried for as long as the test takes to heal it (the last rung
    // repeats), however slow the machine.
    let s = Setup::new(&[
        ("WARREN_CONSUMER__RETRY_DELAYS", r#"["300ms"]"#),
        ("WARREN_CONSUMER__MAX_ATTEMPTS", "1000"),
    ])
    .await;
    s.upload("uploads/photo.jpg", &jpeg(&photo(320, 200)));
    // A file where the destination directory must go: writes fail as on a
    // full or read-only volume, until an operator fixes it.
    std::fs::write(s.root().join("blocked"), b"in the way").unwrap();
    let id = s
        .publish(json!({
            "source": {"key": "uploads/photo.jpg"},
            "outputs": [{"width": 80, "height": 80}],
            "destination_prefix": "blocked/out",
        }))
        .await;
    let retried = s
        .worker
        .wait_for_log("Task failed; it will be retried.", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(retried[0]["fields"]["error_kind"], "store_unavailable");
    assert_eq!(retried[0]["span"]["task_id"], id.as_str());
    std::fs::remove_file(s.root().join("blocked")).unwrap();

    let result = s.succeeded(&id).await;
    assert_eq!(result["outputs"][0]["key"], "blocked/out/80x80-contain.jpg");
    let out = s.output("blocked/out/80x80-contain.jpg", ImageFormat::Jpeg);
    assert_eq!((out.width(), out.height()), (80, 50));
    let done = s.worker.logs_with_message("Task succeeded.");
    let attempt = done
        .iter()
        .find(|l| l["span"]["task_id"] == id.as_str())
        .map(|l| l["span"]["attempt"].as_u64().unwrap_or(0));
    assert!(attempt >= Some(2), "succeeded on attempt {attempt:?}");
    assert_eq!(
        s.broker.depth(&s.broker.dead_queue("image")).await.unwrap(),
        0
    );
    s.cleanup().await;
}

/// A 200x100 JPEG, green, carrying an EXIF block with orientation 1 and a
/// GPS IFD (a map datum of `gps`), and an ICC profile segment holding `icc`.
fn jpeg_with_metadata(gps: &[u8], icc: &[u8]) -> Vec<u8> {
    let plain = jpeg(&RgbImage::from_pixel(200, 100, Rgb([30, 200, 40])));
    // TIFF, big-endian. IFD0 at 8 (2 entries, ends at 38), the GPS IFD at
    // 38 (1 entry, ends at 56), the datum's ASCII at 56.
    let entry = |tag: u16, kind: u16, count: u32, value: [u8; 4]| {
        let mut e = tag.to_be_bytes().to_vec();
        e.extend_from_slice(&kind.to_be_bytes());
        e.extend_from_slice(&count.to_be_bytes());
        e.extend_from_slice(&value);
        e
    };
    let mut datum = gps.to_vec();
    datum.push(0);
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&2u16.to_be_bytes());
    tiff.extend(entry(0x0112, 3, 1, [0, 1, 0, 0]));
    tiff.extend(entry(0x8825, 4, 1, 38u32.to_be_bytes()));
    tiff.extend_from_slice(&0u32.to_be_bytes());
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend(entry(0x0012, 2, datum.len() as u32, 56u32.to_be_bytes()));
    tiff.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(tiff.len(), 56);
    tiff.extend_from_slice(&datum);
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\x00\x00");
    app1.extend_from_slice(&tiff);
    let mut app2 = vec![0xFF, 0xE2];
    app2.extend_from_slice(&((2 + 12 + 2 + icc.len()) as u16).to_be_bytes());
    app2.extend_from_slice(b"ICC_PROFILE\x00\x01\x01");
    app2.extend_from_slice(icc);
    let mut out = plain[..2].to_vec(); // SOI
    out.extend_from_slice(&app1);
    out.extend_from_slice(&app2);
    out.extend_from_slice(&plain[2..]);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn outputs_carry_no_exif_gps_or_icc_and_an_animated_gif_gives_its_first_frame() {
    let s = Setup::new(&[]).await;
    let (gps, icc) = (b"WARREN-GPS-52.37N-4.89E", b"WARREN-ICC-PROFILE-BYTES");
    let source = jpeg_with_metadata(gps, icc);
    assert!(contains(&source, gps) && contains(&source, icc));
    s.upload("uploads/located.jpg", &source);
    let id = s
        .publish(json!({
            "source": {"key": "uploads/located.jpg"},
            "outputs": [
                {"width": 100, "height": 100, "format": "jpeg"},
                {"width": 100, "height": 100, "format": "png"},
                {"width": 100, "height": 100, "format": "webp"},
            ],
        }))
        .await;
    let result = s.succeeded(&id).await;
    let outputs = result["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 3, "{result}");
    for output in outputs {
        let key = output["key"].as_str().expect("a key");
        let bytes = std::fs::read(s.root().join(key)).expect("the output");
        for (what, marker) in [
            ("the GPS datum", &gps[..]),
            ("the ICC profile", &icc[..]),
            ("a JPEG EXIF segment", b"Exif\x00\x00"),
            ("a JPEG ICC segment", b"ICC_PROFILE"),
            ("a PNG eXIf chunk", b"eXIf"),
            ("a PNG iCCP chunk", b"iCCP"),
            ("a WebP EXIF chunk", b"EXIF"),
            ("a WebP ICCP chunk", b"ICCP"),
        ] {
            assert!(!contains(&bytes, marker), "{key} carries {what}");
        }
        let decoded = image::load_from_memory(&bytes)
            .expect("decodes")
            .into_rgb8();
        assert_near(decoded.get_pixel(50, 25).0, [30, 200, 40], key);
    }

    // An animated GIF, red then blue: the output is the red first frame.
    let frames = [Rgba([220, 20, 20, 255]), Rgba([20, 20, 220, 255])]
        .map(|colour| image::Frame::new(RgbaImage::from_pixel(60, 40, colour)));
    let mut anim = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut anim);
        encoder
            .set_repeat(image::codecs::gif::Repeat::Infinite)
            .expect("repeat");
        encoder.encode_frames(frames).expect("gif frames");
    }
    let decoder = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&anim)).expect("gif");
    use image::AnimationDecoder;
    assert_eq!(decoder.into_frames().count(), 2, "the source is animated");
    s.upload("uploads/anim.gif", &anim);
    let id = s
        .publish(json!({
            "source": {"key": "uploads/anim.gif"},
            "outputs": [{"width": 30, "height": 20, "format": "png"}],
        }))
        .await;
    let result = s.succeeded(&id).await;
    assert_eq!(result["source"]["format"], "gif", "{result}");
    let key = result["outputs"][0]["key"].as_str().expect("a key");
    let thumb = s.output(key, ImageFormat::Png).into_rgb8();
    assert_eq!(thumb.dimensions(), (30, 20));
    assert_near(
        thumb.get_pixel(15, 10).0,
        [220, 20, 20],
        "the first frame, red",
    );
    s.cleanup().await;
}
