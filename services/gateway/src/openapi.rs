//! The OpenAPI document of the API, generated from the handlers'
//! `#[utoipa::path]` attributes and the schemas of the request and
//! response types, the task bodies' derived in the contract crate
//! (`warren_tasks`, through its `openapi` feature). Served at
//! `GET /openapi.json`.

use std::sync::OnceLock;

use utoipa::OpenApi;

use warren_tasks::email::{AttachmentSpec, SendEmail};
use warren_tasks::image::{Fit, OutputFormat, OutputWire, SourceWire, ThumbnailTask};

use crate::api::list::TaskPage;
use crate::api::model::{Accepted, ImageUpload, State, StatusBody, TaskEventDoc, TaskRequest};
use crate::api::workflows::WorkflowAccepted;
use crate::api::workflows::request::{KindRequest, OnFailureRequest, StepRequest, WorkflowRequest};
use crate::api::workflows::status::{WorkflowMember, WorkflowState, WorkflowStatus, WorkflowTask};
use crate::problem::ProblemDocument;
use crate::workflows::Kind;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Warren gateway",
        description = "Enqueue Warren tasks over HTTP, upload images for thumbnails, and ask what happened to a task. \
            Every task is accepted (202) only once RabbitMQ has confirmed it. Task statuses come from the \
            task events stream, kept for `events.retention`. Errors are RFC 9457 problem documents.",
        license(name = "Apache-2.0"),
    ),
    paths(
        crate::api::tasks::enqueue_email,
        crate::api::tasks::enqueue_image,
        crate::api::tasks::enqueue_task,
        crate::upload::upload_image,
        crate::api::list::list_tasks,
        crate::api::status::task_status,
        crate::api::status::task_events,
        crate::api::workflows::start_workflow,
        crate::api::workflows::status::workflow_status,
        crate::api::workflows::status::workflow_events,
    ),
    components(schemas(
        Accepted,
        ProblemDocument,
        State,
        StatusBody,
        TaskPage,
        TaskEventDoc,
        TaskRequest,
        ImageUpload,
        ThumbnailTask,
        SourceWire,
        OutputWire,
        Fit,
        OutputFormat,
        SendEmail,
        AttachmentSpec,
        WorkflowRequest,
        StepRequest,
        KindRequest,
        OnFailureRequest,
        WorkflowAccepted,
        WorkflowStatus,
        WorkflowTask,
        WorkflowMember,
        WorkflowState,
        Kind,
    )),
    modifiers(&BearerKeys),
    security(("api_key" = [])),
    tags(
        (name = "tasks", description = "Enqueue tasks and follow them."),
        (name = "images", description = "Upload an image and get thumbnails."),
        (name = "workflows", description = "Start chains, groups and chords, and follow every step."),
    )
)]
pub struct ApiDoc;

/// The `api_key` security scheme: `Authorization: Bearer <key>`.
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some(
            "An API key of the gateway's `auth.keys`, as `Authorization: Bearer <key>`. Scopes: \
             `enqueue` for the POST endpoints, `read` for the GET ones, `admin` for everything and \
             the console. A missing or unknown key is answered 401 (`unauthorized`), a key without \
             the scope 403 (`forbidden`). A gateway with no keys (loopback only) needs none."
                .to_owned(),
        );
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_key", SecurityScheme::Http(http));
    }
}

/// The document as JSON, rendered once.
pub fn json() -> Result<String, String> {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .map_err(|e| e.to_string())
    })
    .clone()
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_route_and_schema() {
        let doc: serde_json::Value = serde_json::from_str(&json().unwrap()).unwrap();
        for path in [
            "/v1/tasks",
            "/v1/tasks/email",
            "/v1/tasks/image",
            "/v1/images",
            "/v1/tasks/{id}",
            "/v1/tasks/{id}/events",
            "/v1/workflows",
            "/v1/workflows/{id}",
            "/v1/workflows/{id}/events",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
        let list = &doc["paths"]["/v1/tasks"]["get"];
        let params: Vec<&str> = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(params, ["state", "type", "since", "limit", "cursor"]);
        let schemas = &doc["components"]["schemas"];
        for schema in [
            "SendEmail",
            "ThumbnailTask",
            "Problem",
            "StatusBody",
            "TaskEvent",
            "Accepted",
            "TaskPage",
            "WorkflowRequest",
            "WorkflowStatus",
        ] {
            assert!(schemas.get(schema).is_some(), "{schema} missing");
        }
        // Every call takes a bearer key.
        assert_eq!(
            doc["components"]["securitySchemes"]["api_key"]["scheme"],
            "bearer"
        );
        assert_eq!(doc["security"], serde_json::json!([{"api_key": []}]));
        // SendEmail's recipients accept one mailbox or many.
        assert!(schemas["SendEmail"]["properties"]["to"]["oneOf"].is_array());
        // The thumbnail schemas are derived from the contract's wire types:
        // unknown fields refused, outputs bounded, fits enumerated.
        let task = &schemas["ThumbnailTask"];
        assert_eq!(task["additionalProperties"], false);
        assert_eq!(
            task["properties"]["outputs"]["items"]["$ref"],
            "#/components/schemas/ThumbnailOutput"
        );
        assert_eq!(task["properties"]["outputs"]["maxItems"], 16);
        assert_eq!(
            schemas["Fit"]["enum"],
            serde_json::json!(["contain", "cover", "fill"])
        );
        assert_eq!(
            doc["paths"]["/v1/images"]["post"]["requestBody"]["content"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            vec!["multipart/form-data"]
        );
    }
}
