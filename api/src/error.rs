//! The one place where HTTP status codes and `errorCode`s are chosen.
//!
//! Every error leaves the API as `{"error": "<message>", "errorCode": "<CODE>"}` (API.md):
//! errors of our handlers ([`ApiError`]), engine errors (`From<EventsError>`), and warp's own
//! rejections (unknown path, wrong method, oversized or unreadable body) through [`recover`].
//! A 500 means a bug or a storage failure, never bad input.

use std::convert::Infallible;

use serde::Serialize;
use shoal_engine::apps::AppsError;
use shoal_engine::blobs::BlobsError;
use shoal_engine::remote::GiveError;
use shoal_engine::EventsError;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `Content-Range: bytes */<size>` of a 416.
    content_range: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            content_range: None,
        }
    }

    /// 400: malformed JSON or a missing/invalid field (the message names the field).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ERR_BAD_REQUEST", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ERR_NOT_FOUND", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "ERR_METHOD_NOT_ALLOWED",
            "method not allowed on this endpoint",
        )
    }

    /// 413: the body is over `limit` bytes.
    pub fn payload_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ERR_PAYLOAD_TOO_LARGE",
            format!("request body larger than the limit of {limit} bytes"),
        )
    }

    /// 403: a web page or host name the node does not serve (API.md "Browser safety").
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "ERR_FORBIDDEN", message)
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ERR_SERVICE_OVERLOADED",
            message,
        )
    }

    /// 503 from `GET /api/v1/node/health`: the node runs but cannot do its job (the message
    /// says why). Its own code, so monitors can tell it from a refused request.
    pub fn unhealthy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "ERR_UNHEALTHY", message)
    }

    pub fn storage_full(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "ERR_STORAGE_FULL",
            message,
        )
    }

    /// 416: the asked range is outside a blob of `size` bytes.
    pub fn range_not_satisfiable(size: u64) -> Self {
        let mut e = Self::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "ERR_RANGE_NOT_SATISFIABLE",
            format!("the range is outside the blob ({size} bytes)"),
        );
        e.content_range = Some(size);
        e
    }

    /// 409: the resource is not in a state that allows the request (API.md: start with invalid
    /// settings).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "ERR_CONFLICT", message)
    }

    /// 500: a bug or a failing disk; never for bad input.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "ERR_INTERNAL", message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

impl warp::reject::Reject for ApiError {}

impl From<crate::fields::FieldError> for ApiError {
    fn from(e: crate::fields::FieldError) -> Self {
        ApiError::bad_request(e.0)
    }
}

/// Engine errors, with `prefix` naming where in the request an invalid field sits (e.g. `data`
/// for a publish body).
pub fn from_events(e: EventsError, prefix: &str) -> ApiError {
    match e {
        EventsError::Invalid {
            index,
            field,
            reason,
        } => {
            let location = match index {
                Some(i) => format!("{prefix}[{i}].{field}"),
                None => field.to_string(),
            };
            ApiError::bad_request(format!("{location}: {reason}"))
        }
        EventsError::StorageFull(e) => ApiError::storage_full(e.to_string()),
        EventsError::ShuttingDown => {
            ApiError::overloaded("the node is shutting down; nothing was stored; retry later")
        }
        e @ EventsError::Resuming => ApiError::overloaded(e.to_string()),
        // Not "retry": the request may have been carried out, and a blind retry of a publish
        // stores its events twice.
        EventsError::Interrupted => ApiError::overloaded(
            "the node shut down during the request; it may have been stored: \
             query before publishing again",
        ),
        e @ (EventsError::Storage(_) | EventsError::Task(_) | EventsError::ClockExhausted) => {
            ApiError::internal(e.to_string())
        }
    }
}

/// Blob service errors.
pub fn from_blobs(e: BlobsError) -> ApiError {
    match e {
        BlobsError::Invalid(m) | BlobsError::Body(m) => ApiError::bad_request(m),
        BlobsError::NotFound(m) => ApiError::not_found(m),
        e @ BlobsError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ERR_PAYLOAD_TOO_LARGE",
            e.to_string(),
        ),
        BlobsError::StorageFull(e) => ApiError::storage_full(e.to_string()),
        BlobsError::ShuttingDown => ApiError::overloaded("the node is shutting down; retry"),
        e @ (BlobsError::Storage(_)
        | BlobsError::Corrupt(_)
        | BlobsError::Task(_)
        | BlobsError::Name(_)) => ApiError::internal(e.to_string()),
    }
}

/// App runtime errors.
pub fn from_apps(e: AppsError) -> ApiError {
    match e {
        AppsError::NotFound(id) => {
            ApiError::not_found(format!("no app or settings scope `{id}` here"))
        }
        AppsError::Package(e) => ApiError::bad_request(format!("package: {e}")),
        AppsError::InvalidSettings(invalid) => ApiError::bad_request(format!(
            "settings do not validate at {}: {}",
            if invalid.path.is_empty() {
                "/"
            } else {
                &invalid.path
            },
            invalid.message
        )),
        AppsError::Conflict(m) => ApiError::conflict(m),
        e @ AppsError::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ERR_PAYLOAD_TOO_LARGE",
            e.to_string(),
        ),
        AppsError::Blob(e) => from_blobs(e),
        AppsError::Closed => ApiError::overloaded("the node is shutting down; retry"),
        e @ AppsError::Storage(_) => ApiError::internal(e.to_string()),
    }
}

/// Errors of recording an app command for other nodes (`?to=`).
pub fn from_give(e: GiveError) -> ApiError {
    match e {
        e @ (GiveError::Target(_) | GiveError::Command(_)) => ApiError::bad_request(e.to_string()),
        GiveError::Apps(e) => from_apps(e),
        GiveError::Events(e) => from_events(e, "command"),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    error: &'a str,
    error_code: &'a str,
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, message = %self.message, "request failed");
        }
        let body = Body {
            error: &self.message,
            error_code: self.code,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = Response::new(json.into());
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("application/json"),
        );
        if let Some(size) = self.content_range {
            if let Ok(v) = warp::http::HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut()
                    .insert(warp::http::header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

/// Turns any rejection into the API's error format.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, Infallible> {
    Ok(from_rejection(&rejection).into_response())
}

fn from_rejection(r: &warp::Rejection) -> ApiError {
    use warp::reject;
    if let Some(e) = r.find::<ApiError>() {
        return e.clone();
    }
    if r.is_not_found() {
        return ApiError::not_found("no such endpoint");
    }
    if r.find::<reject::MethodNotAllowed>().is_some() {
        return ApiError::method_not_allowed();
    }
    if r.find::<reject::PayloadTooLarge>().is_some() {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ERR_PAYLOAD_TOO_LARGE",
            "request body too large",
        );
    }
    if let Some(e) = r.find::<reject::InvalidHeader>() {
        return ApiError::bad_request(format!("invalid header {}", e.name()));
    }
    if let Some(e) = r.find::<reject::MissingHeader>() {
        return ApiError::bad_request(format!("missing header {}", e.name()));
    }
    if r.find::<reject::InvalidQuery>().is_some() {
        return ApiError::bad_request("invalid query string");
    }
    if let Some(e) = r.find::<warp::body::BodyDeserializeError>() {
        return ApiError::bad_request(format!("malformed JSON body: {e}"));
    }
    if r.find::<reject::LengthRequired>().is_some() {
        // Our body filter never asks for a length; keep the format if some route does.
        return ApiError::bad_request("a content-length header is required");
    }
    if r.find::<reject::UnsupportedMediaType>().is_some() {
        return ApiError::bad_request("unsupported content type");
    }
    ApiError::internal(format!("unhandled rejection: {r:?}"))
}
