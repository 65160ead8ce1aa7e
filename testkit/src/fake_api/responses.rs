//! Responses: JSON bodies and `Status` errors in the API server's format.

use super::*;

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string()));
    respond(status, BodyExt::boxed_unsync(body))
}

pub(super) fn respond(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let json = header::HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

/// A `Status` as the API server sends it, with its HTTP status.
pub(super) struct Failure {
    pub(super) code: StatusCode,
    pub(super) status: Value,
}

impl Failure {
    pub(super) fn response(self) -> Response<Body> {
        json_response(self.code, &self.status)
    }
}

pub(super) fn failure(
    code: StatusCode,
    reason: &str,
    message: &str,
    about: Option<(&Collection, &str)>,
) -> Failure {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some((collection, name)) = about {
        status["details"] =
            json!({ "name": name, "group": collection.group, "kind": collection.plural });
    }
    Failure { code, status }
}

pub(super) fn not_found(collection: &Collection, name: &str) -> Failure {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", collection.qualified()),
        Some((collection, name)),
    )
}

pub(super) fn bad_request(message: String) -> Failure {
    failure(StatusCode::BAD_REQUEST, "BadRequest", &message, None)
}

pub(super) fn default_reason(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}
