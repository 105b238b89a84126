//! The `image.thumbnail` handler: parse the task, fetch the source, render
//! every output on the image threads, write them, and answer the runtime
//! with an [`Outcome`] (output keys, sizes, byte counts) or a [`TaskError`]
//! that says whether to retry.
//!
//! [`Thumbnailer`] knows nothing about AMQP; the runtime owns ack, retry
//! and dead-lettering. It is cheap to clone (one `Arc`), so every in-flight
//! task can hold one.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use warren::{Outcome, TaskContext, TaskError};

use warren_store::{SettingError, Store, StoreError, policy};
use warren_tasks::image::{Source, SpecPolicy, ThumbnailSpec, ThumbnailTask};

use crate::pipeline::{self, Rendered};
use crate::pool::CpuPool;
use crate::settings::ImageSettings;

/// Start-up errors: the settings describe no thumbnailer that can work.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not start the image threads: {0}")]
    Pool(#[from] rayon::ThreadPoolBuildError),
    #[error(transparent)]
    Setting(#[from] SettingError),
}

/// Handles `image.thumbnail` tasks. Clone freely.
#[derive(Clone, Debug)]
pub struct Thumbnailer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    pool: CpuPool,
    policy: SpecPolicy,
    max_source_bytes: u64,
}

impl Thumbnailer {
    /// Builds the thumbnailer from `[image]`: checks the settings, opens
    /// the store (creating the local root) and starts the image threads.
    pub fn from_settings(settings: &ImageSettings) -> Result<Self, ThumbnailerError> {
        let policy = policy(settings)?;
        let store = Store::from_settings(settings)?;
        let pool = CpuPool::new(settings.threads)?;
        Ok(Self::new(store, pool, policy, settings.max_source_bytes))
    }

    pub fn new(store: Store, pool: CpuPool, policy: SpecPolicy, max_source_bytes: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                pool,
                policy,
                max_source_bytes,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Threads rendering images.
    pub fn threads(&self) -> usize {
        self.inner.pool.threads()
    }

    /// Handles one `image.thumbnail` task.
    ///
    /// Bad input (an invalid key, a non-image, a truncated or oversized
    /// image) is permanent; store trouble is retried. Outputs go under a
    /// prefix derived from the task id unless the task names one, so a
    /// retry or redelivery overwrites the same objects.
    pub async fn thumbnail(
        &self,
        ctx: &TaskContext,
        task: ThumbnailTask,
    ) -> Result<Outcome, TaskError> {
        let inner = &*self.inner;
        let started = Instant::now();
        let spec = ThumbnailSpec::parse(task, &ctx.id, &inner.policy)?;
        let (source_key, bytes) = match spec.source() {
            Source::Key(key) => (
                Some(key.to_string()),
                inner.store.get(key, inner.max_source_bytes).await?,
            ),
            // At most `max_inline_bytes`: a copy costs nothing next to the
            // decode.
            Source::Inline(bytes) => (None, bytes.clone()),
        };
        let source_bytes = bytes.len();
        let outputs = spec.outputs().to_vec();
        let background = spec.background();
        let limits = inner.policy.limits;
        let rendered = inner
            .pool
            .run(move || pipeline::render(&bytes, &outputs, background, limits))
            .await?;
        let Rendered { source, outputs } = rendered;
        crate::metrics::pixels(source.width, source.height);
        tracing::info!(
            task_id = %ctx.id,
            format = source.format.as_str(),
            width = source.width,
            height = source.height,
            decoded_width = source.decoded_width,
            decoded_height = source.decoded_height,
            orientation = source.orientation,
            decode_ms = source.decode_time.as_millis() as u64,
            outputs = outputs.len(),
            "Decoded the source image."
        );

        let total = outputs.len();
        let mut written = Vec::with_capacity(total);
        for output in outputs {
            let bytes = output.bytes.len();
            inner
                .store
                .put(&output.key, output.bytes, output.format.content_type())
                .await?;
            crate::metrics::bytes_written(output.format.as_str(), bytes);
            written.push(json!({
                "key": output.key.as_str(),
                "format": output.format.as_str(),
                "width": output.width,
                "height": output.height,
                "bytes": bytes,
            }));
            ctx.progress(
                written.len() as f64 / total as f64,
                format!("wrote {}", output.key.as_str()),
            );
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            task_id = %ctx.id,
            prefix = %spec.prefix(),
            outputs = written.len(),
            elapsed_ms,
            "Wrote the thumbnails."
        );
        Ok(Outcome::with_result(json!({
            "source": {
                "key": source_key,
                "bytes": source_bytes,
                "format": source.format.as_str(),
                "width": source.width,
                "height": source.height,
                "orientation": source.orientation,
            },
            "outputs": written,
        })))
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn context(id: &str) -> TaskContext {
        let mut ctx = TaskContext::new(id, "image.thumbnail");
        ctx.max_attempts = 6;
        ctx
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(width, height, |x, _| {
            image::Rgba([
                (x % 256) as u8,
                100,
                50,
                if x < width / 2 { 0 } else { 255 },
            ])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn thumbnailer(root: &std::path::Path) -> Thumbnailer {
        let settings = ImageSettings {
            local_root: root.to_owned(),
            threads: 1,
            ..ImageSettings::default()
        };
        Thumbnailer::from_settings(&settings).unwrap()
    }

    #[tokio::test]
    async fn a_task_writes_its_outputs_under_its_own_prefix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("uploads")).unwrap();
        std::fs::write(dir.path().join("uploads/logo.png"), png(64, 32)).unwrap();
        let t = thumbnailer(dir.path());
        let task: ThumbnailTask = serde_json::from_value(json!({
            "source": {"key": "uploads/logo.png"},
            "outputs": [
                {"width": 32, "height": 32},
                {"width": 16, "height": 16, "fit": "cover", "format": "png"},
            ],
        }))
        .unwrap();
        let outcome = t.thumbnail(&context("t-1"), task).await.unwrap();
        let result: Value = outcome.result.unwrap();
        assert_eq!(result["source"]["width"], 64);
        assert_eq!(
            result["outputs"][0]["key"],
            "thumbnails/t-1/32x32-contain.jpg"
        );
        assert_eq!(result["outputs"][0]["height"], 16);
        assert_eq!(
            result["outputs"][1]["key"],
            "thumbnails/t-1/16x16-cover.png"
        );
        let jpeg = std::fs::read(dir.path().join("thumbnails/t-1/32x32-contain.jpg")).unwrap();
        let jpeg = image::load_from_memory(&jpeg).unwrap().into_rgb8();
        assert_eq!(jpeg.dimensions(), (32, 16));
        // The transparent half became the default white, not black.
        let left = jpeg.get_pixel(2, 8);
        assert!(left.0.iter().all(|&c| c > 230), "{left:?}");
        let png_out = std::fs::read(dir.path().join("thumbnails/t-1/16x16-cover.png")).unwrap();
        let png_out = image::load_from_memory(&png_out).unwrap();
        assert_eq!((png_out.width(), png_out.height()), (16, 16));
        assert!(png_out.color().has_alpha());
    }
}
