//! `POST /v1/images`: a multipart upload stored in the image store, then
//! an `image.thumbnail` task for it.
//!
//! The file is judged by its first bytes (PNG, JPEG, WebP or GIF), never
//! by its name or the part's content type. It is stored under
//! `uploads/{task id}/{sanitized name}` in the store the image worker
//! reads (`[image]`, the same settings), so the worker finds it by key.
//! The outputs are checked as the worker checks them before anything is
//! stored; a publish that fails after the store write leaves the file
//! behind (it is overwritten if the client retries with the same id).

use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use warren::Task;
use warren_tasks::image::{SourceFormat, StoreKey, ThumbnailTask};

use crate::api::model::{Accepted, EnqueueParams, ImageUpload};
use crate::api::tasks::{accept, parse_params};
use crate::api::{AppState, require_content_type};
use crate::enqueue::{self, Enqueue};
use crate::problem::{Problem, ProblemDocument};

/// Longest `outputs` part.
const MAX_OUTPUTS_PART: usize = 64 * 1024;
/// Longest stored file name (before the extension is fixed up).
const MAX_NAME_LEN: usize = 100;

/// Upload an image and enqueue its thumbnails.
///
/// Stored under `uploads/{task id}/{name}` in the image store, then an
/// `image.thumbnail` task with that source key is enqueued.
#[utoipa::path(
    post,
    path = "/v1/images",
    tag = "images",
    params(EnqueueParams),
    request_body(
        content = ImageUpload,
        content_type = "multipart/form-data",
        description = "A `file` part (the image) and an optional `outputs` part (JSON)."
    ),
    responses(
        (status = 202, description = "Stored, and the broker confirmed the `image.thumbnail` task; `source_key` is where the file went.", body = Accepted,
            headers(("Location" = String, description = "The task's status URL."))),
        (status = 400, description = "The multipart body is malformed.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The file is over `http.max_upload_bytes` (or `image.max_source_bytes`).", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `multipart/form-data`, or the file is not a PNG, JPEG, WebP or GIF.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "A part is missing or unknown, or the outputs would be refused by the image worker.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "The store or the broker did not take it.", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub async fn upload_image(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, Problem> {
    require_content_type(
        &headers,
        |m| m == "multipart/form-data",
        "multipart/form-data with a file part",
    )?;
    let params = parse_params(query.as_deref())?;
    let mut multipart = multipart.map_err(|r| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed_multipart",
            "The multipart body is malformed",
            r.body_text(),
        )
    })?;
    // Wait for a turn before reading the body: at most
    // `http.max_concurrent_uploads` files are held in memory at once (the
    // request timeout bounds the wait). The semaphore is never closed.
    let _turn = app.uploads.acquire().await.ok();
    let limit = app.limits.max_upload_bytes;
    let mut file: Option<(Option<String>, Vec<u8>)> = None;
    let mut outputs: Option<Value> = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_problem)? {
        match field.name() {
            Some("file") => {
                if file.is_some() {
                    return Err(Problem::invalid(
                        "invalid_value",
                        "file",
                        "more than one file part; send one image per request",
                    ));
                }
                let name = field.file_name().map(str::to_owned);
                let bytes = read_limited(field, limit, "file").await?;
                file = Some((name, bytes));
            }
            Some("outputs") => {
                let bytes = read_limited(field, MAX_OUTPUTS_PART, "outputs").await?;
                let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    Problem::malformed_json(format!("the outputs part is not JSON: {e}"))
                        .with_field("outputs")
                })?;
                outputs = Some(value);
            }
            other => {
                let name = other.unwrap_or_default();
                return Err(Problem::invalid(
                    "unknown_field",
                    name,
                    format!("unknown part {name:?}; expected file and optionally outputs"),
                ));
            }
        }
    }
    let Some((name, bytes)) = file else {
        return Err(Problem::invalid(
            "missing_field",
            "file",
            "no file part: send the image as the multipart part named file",
        ));
    };
    let Some(format) = SourceFormat::sniff(&bytes) else {
        return Err(Problem::unsupported_media_type(
            "the file is not a PNG, JPEG, WebP or GIF image (judged by its first bytes, not its name)",
        )
        .with_field("file"));
    };

    let id = enqueue::task_id(params.id.as_deref(), "id")?;
    let priority = enqueue::priority(params.priority, "priority")?;
    let due_at = app.checks.due(
        params.delay.as_deref(),
        params.eta.as_deref(),
        chrono::Utc::now(),
    )?;
    let raw_key = format!(
        "uploads/{}/{}",
        warren::safe_task_id(&id),
        sanitize_name(name.as_deref(), format)
    );
    let key = StoreKey::parse("the upload's key", &raw_key).map_err(|e| {
        Problem::invalid(
            e.kind,
            "file",
            format!("the file name is refused: {}", e.message),
        )
    })?;
    let payload = json!({
        "source": {"key": key.as_str()},
        "outputs": outputs.unwrap_or_else(default_outputs),
    });
    app.checks
        .check_payload(ThumbnailTask::TYPE, &payload, &id, "")?;

    let size = bytes.len();
    app.store
        .put(&key, bytes, format.content_type())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, key = %key, "Could not store an upload.");
            if e.is_permanent() {
                Problem::invalid(&e.kind, "file", e.message)
            } else {
                Problem::unavailable(
                    "store_unavailable",
                    format!("the image store did not take the file: {}", e.message),
                )
            }
        })?;
    tracing::info!(key = %key, bytes = size, format = format.as_str(), "Stored an upload.");
    let task = Enqueue {
        task_type: ThumbnailTask::TYPE.to_owned(),
        payload,
        id,
        priority,
        due_at,
    };
    accept(&app, task, Some(key.to_string())).await
}

/// One 256x256 JPEG that fits inside the box.
fn default_outputs() -> Value {
    json!([{"width": 256, "height": 256, "fit": "contain", "format": "jpeg"}])
}

/// Reads a part, refusing more than `limit` bytes with 413.
async fn read_limited(mut field: Field<'_>, limit: usize, name: &str) -> Result<Vec<u8>, Problem> {
    let mut out = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_problem)? {
        if out.len().saturating_add(chunk.len()) > limit {
            return Err(Problem::too_large(format!(
                "the {name} part is larger than {limit} bytes"
            ))
            .with_field(name));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn multipart_problem(e: MultipartError) -> Problem {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::too_large(format!("the upload is too large: {}", e.body_text()))
    } else {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed_multipart",
            "The multipart body is malformed",
            e.body_text(),
        )
    }
}

/// A safe file name: the last path segment of what the client sent, of
/// `[A-Za-z0-9._-]` only (others become `_`), no leading dot, at most
/// 100 characters, with an extension that matches the sniffed format.
pub fn sanitize_name(raw: Option<&str>, format: SourceFormat) -> String {
    let last = raw
        .unwrap_or_default()
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let mut name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    name = name.trim_start_matches('.').to_owned();
    while name.contains("..") {
        name = name.replace("..", ".");
    }
    name.truncate(MAX_NAME_LEN);
    if !name.chars().any(|c| c.is_ascii_alphanumeric()) {
        name = "upload".to_owned();
    }
    let extensions = format.extensions();
    let has_extension = name
        .rsplit_once('.')
        .is_some_and(|(_, ext)| extensions.contains(&ext.to_ascii_lowercase().as_str()));
    if !has_extension {
        name = format!("{}.{}", name.trim_end_matches('.'), extensions[0]);
    }
    name
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe_and_get_the_right_extension() {
        let png = SourceFormat::Png;
        assert_eq!(sanitize_name(Some("cat.png"), png), "cat.png");
        assert_eq!(sanitize_name(Some("../../etc/passwd"), png), "passwd.png");
        assert_eq!(sanitize_name(Some("C:\\photos\\me.PNG"), png), "me.PNG");
        assert_eq!(sanitize_name(Some("..."), png), "upload.png");
        assert_eq!(sanitize_name(None, SourceFormat::Jpeg), "upload.jpg");
        assert_eq!(sanitize_name(Some("a b\u{0}c.gif"), png), "a_b_c.gif.png");
        assert_eq!(
            sanitize_name(Some("x..y.jpeg"), SourceFormat::Jpeg),
            "x.y.jpeg"
        );
        let long = "a".repeat(300);
        assert!(sanitize_name(Some(&long), png).len() <= MAX_NAME_LEN + 4);
        for name in ["cat.png", "../../x", "..", "a\nb"] {
            let key = format!("uploads/t/{}", sanitize_name(Some(name), png));
            StoreKey::parse("k", &key).unwrap();
        }
    }

    #[test]
    fn the_default_outputs_are_a_valid_thumbnail_task() {
        let task: ThumbnailTask = serde_json::from_value(
            json!({"source": {"key": "a.png"}, "outputs": default_outputs()}),
        )
        .unwrap();
        assert_eq!(task.outputs.len(), 1);
    }
}
