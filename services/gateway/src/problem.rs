//! Every error answer of the API: an RFC 9457 problem document
//! (`application/problem+json`) with `type`, `title`, `status`, `detail`
//! and, when one field is at fault, `field` naming it (`to`,
//! `attachments[0].filename`, `payload.outputs[1].width`).
//!
//! Bad input is the client's to fix and never retried by it: 400 (not
//! JSON), 413 (too large), 415 (not the media type), 422 (JSON of the
//! wrong shape, or a value the workers would refuse, with the worker's
//! error kind). Broker trouble is 503: the task was not accepted, try
//! again.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use warren_tasks::ParseError;

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document: the body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Problem)]
#[schema(example = json!({
    "type": "urn:warren:problem:invalid_address",
    "title": "The task would be refused by its worker",
    "status": 422,
    "detail": "to holds \"ada@\", which is not a valid mailbox (invalid email address)",
    "field": "to",
    "error_kind": "invalid_address"
}))]
pub struct ProblemDocument {
    /// `urn:warren:problem:<slug>`; stable, for programs to branch on.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, for people.
    pub detail: String,
    /// The offending field, as a path into the request (`to`,
    /// `attachments[0].filename`, `payload.outputs[1].width`, `file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For requests the worker would refuse: its error kind
    /// (`invalid_address`, `invalid_key`, ...), as in `x-warren-error-kind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// The task id, when the problem concerns one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

impl ProblemDocument {
    /// The slug after `urn:warren:problem:`.
    pub fn slug(&self) -> &str {
        self.kind
            .strip_prefix("urn:warren:problem:")
            .unwrap_or(&self.kind)
    }
}

/// An error answer: a boxed [`ProblemDocument`], small enough to travel in
/// a `Result` on every request path.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Problem(Box<ProblemDocument>);

impl std::ops::Deref for Problem {
    type Target = ProblemDocument;

    fn deref(&self) -> &ProblemDocument {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemDocument {
        &mut self.0
    }
}

impl Problem {
    /// A problem of type `slug` with status `status`.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self(Box::new(ProblemDocument {
            kind: format!("urn:warren:problem:{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            error_kind: None,
            task_id: None,
        }))
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    pub fn with_task_id(mut self, id: impl Into<String>) -> Self {
        self.task_id = Some(id.into());
        self
    }

    /// 400: the body is not JSON at all.
    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "The request body is not valid JSON",
            detail,
        )
    }

    /// 413.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "The request is too large",
            detail,
        )
    }

    /// 415.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            detail,
        )
    }

    /// 422 with `slug` naming what kind of invalid it is.
    pub fn invalid(slug: &str, field: &str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            slug,
            "The request has an invalid field",
            detail,
        )
        .with_field(field)
    }

    /// 422: the worker's own parsing refuses the task. `prefix` is put in
    /// front of the field the error names (`payload.` for the generic
    /// endpoint).
    pub fn refused_by_worker(err: &ParseError, prefix: &str) -> Self {
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            err.kind,
            "The task would be refused by its worker",
            err.message.clone(),
        );
        p = if !err.field.is_empty() {
            p.with_field(format!("{prefix}{}", err.field))
        } else {
            p.with_field(prefix.trim_end_matches('.'))
        };
        p.error_kind = Some(err.kind.to_owned());
        p
    }

    /// 404 for a path nobody serves.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such resource",
            format!("nothing is served at {path}; see /openapi.json"),
        )
    }

    /// 503: the broker did not take the task.
    pub fn unavailable(slug: &str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            slug,
            "The task was not accepted; try again",
            detail,
        )
    }

    /// 500: a bug of ours, never the client's.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// Turns a serde error (with the path where it happened) into a problem:
/// syntax errors are 400, data errors 422 naming the field.
pub fn from_serde(err: serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> Problem {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let message = inner.to_string();
    if matches!(
        inner.classify(),
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof
    ) {
        return Problem::malformed_json(message);
    }
    // serde_path_to_error writes the root as "."; fields join with dots
    // and indexes in brackets.
    let base = if path == "." { String::new() } else { path };
    let join = |name: &str| match base.is_empty() {
        true => name.to_owned(),
        false => format!("{base}.{name}"),
    };
    let (slug, field) = if let Some(name) = quoted(&message, "unknown field `") {
        // The path already ends at the unknown key.
        let at_key = base == name || base.ends_with(&format!(".{name}"));
        (
            "unknown_field",
            if at_key { base.clone() } else { join(name) },
        )
    } else if let Some(name) = quoted(&message, "missing field `") {
        ("missing_field", join(name))
    } else if message.starts_with("invalid type") {
        ("invalid_type", base)
    } else {
        ("invalid_value", base)
    };
    let field = match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field,
        (false, true) => prefix.trim_end_matches('.').to_owned(),
        (false, false) => format!("{prefix}{field}"),
    };
    let detail = if field.is_empty() {
        message
    } else {
        format!("{field}: {message}")
    };
    Problem::invalid(slug, &field, detail)
}

/// The name between `start` and the next backtick.
fn quoted<'a>(message: &'a str, start: &str) -> Option<&'a str> {
    let rest = message.split_once(start)?.1;
    Some(rest.split_once('`')?.0)
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        #[serde(default)]
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        width: u32,
    }

    fn problem(raw: &str) -> Problem {
        let value: serde_json::Value = serde_json::from_str(raw).unwrap();
        let err = serde_path_to_error::deserialize::<_, Outer>(value).unwrap_err();
        from_serde(err, "")
    }

    #[test]
    fn serde_errors_name_the_field() {
        let p = problem(r#"{"name": "a", "nmae": 1}"#);
        assert_eq!((p.status, p.slug()), (422, "unknown_field"));
        assert_eq!(p.field.as_deref(), Some("nmae"));
        let p = problem(r#"{"items": []}"#);
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("missing_field", Some("name"))
        );
        let p = problem(r#"{"name": 5}"#);
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("invalid_type", Some("name"))
        );
        let p = problem(r#"{"name": "a", "items": [{"width": 1}, {"width": -1}]}"#);
        assert_eq!(p.field.as_deref(), Some("items[1].width"), "{p:?}");
        let p = problem(r#"{"name": "a", "items": [{"width": 1, "hieght": 2}]}"#);
        assert_eq!(p.field.as_deref(), Some("items[0].hieght"), "{p:?}");
    }

    #[test]
    fn syntax_errors_are_400() {
        let mut de = serde_json::Deserializer::from_str("{\"name\": ");
        let err = serde_path_to_error::deserialize::<_, Outer>(&mut de).unwrap_err();
        let p = from_serde(err, "");
        assert_eq!((p.status, p.slug()), (400, "malformed_json"));
    }

    #[test]
    fn problems_are_problem_json() {
        let r = Problem::too_large("big").into_response();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
