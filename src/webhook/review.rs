//! The AdmissionReview `admission.k8s.io/v1` as it travels: decoded only as far as
//! nodeguard reads it, borrowing from the request body, generic over the object so each
//! endpoint decodes its own kind of object in the same single pass. Everything the API
//! server sends but nodeguard does not read (options, managed fields, a Node's images)
//! is skipped by serde without being built.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::Webhook;
use crate::policy::verdict::clip;
use crate::policy::{Operation, Verdict};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Longest text of a 400 answer: decode errors can quote the input.
const MAX_ERROR_CHARS: usize = 300;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview<'a, O> {
    #[serde(borrow, default)]
    pub api_version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub request: Option<AdmissionRequest<'a, O>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest<'a, O> {
    #[serde(borrow, default)]
    pub uid: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: GroupVersionKind<'a>,
    #[serde(borrow, default)]
    pub resource: GroupVersionResource<'a>,
    #[serde(borrow, default)]
    pub sub_resource: Cow<'a, str>,
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub operation: Cow<'a, str>,
    #[serde(borrow, default)]
    pub user_info: UserInfo<'a>,
    pub object: Option<O>,
    pub old_object: Option<O>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GroupVersionKind<'a> {
    #[serde(borrow)]
    pub group: Cow<'a, str>,
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GroupVersionResource<'a> {
    #[serde(borrow)]
    pub group: Cow<'a, str>,
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    #[serde(borrow)]
    pub resource: Cow<'a, str>,
}

/// Who is writing: for a CSR, who asks for a certificate.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UserInfo<'a> {
    #[serde(borrow)]
    pub username: Cow<'a, str>,
    #[serde(borrow)]
    pub groups: Vec<Cow<'a, str>>,
}

/// The kind of object an endpoint reviews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reviewed {
    pub group: &'static str,
    pub kind: &'static str,
    /// The object's `apiVersion`, as the API server converts it for the webhook.
    pub api_version: &'static str,
    pub endpoint: &'static str,
}

pub const NODES: Reviewed = Reviewed {
    group: "",
    kind: "Node",
    api_version: "v1",
    endpoint: Webhook::Nodes.path(),
};

pub const CSRS: Reviewed = Reviewed {
    group: "certificates.k8s.io",
    kind: "CertificateSigningRequest",
    api_version: "certificates.k8s.io/v1",
    endpoint: Webhook::Csrs.path(),
};

pub const PODS: Reviewed = Reviewed {
    group: "",
    kind: "Pod",
    api_version: "v1",
    endpoint: Webhook::Pods.path(),
};

/// An object that says what it is: the API server sends each object of a review with
/// its `apiVersion` and `kind`.
pub trait Typed {
    fn api_version(&self) -> Option<&str>;
    fn kind(&self) -> Option<&str>;
}

impl Typed for crate::identity::NodeDoc<'_> {
    fn api_version(&self) -> Option<&str> {
        self.api_version.as_deref()
    }

    fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }
}

impl Typed for crate::identity::pod::PodDoc {
    fn api_version(&self) -> Option<&str> {
        self.api_version.as_deref()
    }

    fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }
}

impl Typed for crate::identity::CsrDoc<'_> {
    fn api_version(&self) -> Option<&str> {
        self.api_version.as_deref()
    }

    fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }
}

/// A review that passed every check of its envelope: what the handlers work with.
#[derive(Debug)]
pub struct Request<'a, O> {
    pub uid: Cow<'a, str>,
    pub operation: Operation,
    pub name: Cow<'a, str>,
    pub sub_resource: Cow<'a, str>,
    pub user_info: UserInfo<'a>,
    pub object: Option<O>,
    pub old_object: Option<O>,
    pub dry_run: bool,
}

/// Why a body is not a review nodeguard can answer: each is a 400 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not an AdmissionReview: {0}")]
    NotAReview(String),
    #[error("apiVersion is {0:?}; nodeguard answers {API_VERSION} only")]
    ApiVersion(String),
    #[error("kind is {0:?}; expected {KIND}")]
    Kind(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("request.uid is empty")]
    NoUid,
    #[error("request.operation {0:?} is not CREATE, UPDATE, DELETE or CONNECT")]
    Operation(String),
    #[error("request.kind is {got:?}, but {endpoint} reviews {expected} only")]
    WrongKind {
        got: String,
        expected: String,
        endpoint: &'static str,
    },
    #[error("request.{field} is missing; a {operation} review carries the {kind}")]
    MissingObject {
        field: &'static str,
        operation: &'static str,
        kind: &'static str,
    },
    #[error("request.{field} is {got}, but {endpoint} reviews {expected} only")]
    ObjectType {
        field: &'static str,
        got: String,
        expected: String,
        endpoint: &'static str,
    },
    #[error("request.{field} is not a {kind}: {detail}")]
    BadObject {
        field: &'static str,
        kind: &'static str,
        detail: String,
    },
}

/// Decodes and checks a review in one pass over the body. Only when that fails is the
/// body read again, to say precisely what is wrong with it.
pub fn decode<'a, O: Deserialize<'a> + Typed>(
    body: &'a [u8],
    reviewed: &Reviewed,
) -> Result<Request<'a, O>, ReviewError> {
    match serde_json::from_slice::<AdmissionReview<'a, O>>(body) {
        Ok(review) => accept(review, reviewed),
        Err(error) => Err(explain::<O>(body, reviewed, &error)),
    }
}

fn accept<'a, O: Typed>(
    review: AdmissionReview<'a, O>,
    reviewed: &Reviewed,
) -> Result<Request<'a, O>, ReviewError> {
    let (request, operation) = check_envelope(review, reviewed)?;
    if matches!(operation, Operation::Create | Operation::Update) && request.object.is_none() {
        return Err(ReviewError::MissingObject {
            field: "object",
            operation: operation.as_str(),
            kind: reviewed.kind,
        });
    }
    for (field, object) in [
        ("object", &request.object),
        ("oldObject", &request.old_object),
    ] {
        if let Some(object) = object {
            check_type(field, object, reviewed)?;
        }
    }
    Ok(Request {
        uid: request.uid,
        operation,
        name: request.name,
        sub_resource: request.sub_resource,
        user_info: request.user_info,
        object: request.object,
        old_object: request.old_object,
        dry_run: request.dry_run.unwrap_or(false),
    })
}

/// The checks that do not depend on the object: the first one that fails is the answer.
fn check_envelope<'a, O>(
    review: AdmissionReview<'a, O>,
    reviewed: &Reviewed,
) -> Result<(AdmissionRequest<'a, O>, Operation), ReviewError> {
    if review.api_version != API_VERSION {
        return Err(ReviewError::ApiVersion(clip(&review.api_version, 80)));
    }
    if review.kind != KIND {
        return Err(ReviewError::Kind(clip(&review.kind, 80)));
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if request.uid.trim().is_empty() {
        return Err(ReviewError::NoUid);
    }
    let operation = Operation::parse(&request.operation)
        .ok_or_else(|| ReviewError::Operation(clip(&request.operation, 40)))?;
    let kind = &request.kind;
    if kind.kind != reviewed.kind || kind.group != reviewed.group {
        return Err(ReviewError::WrongKind {
            got: clip(&qualified(&kind.group, &kind.kind), 120),
            expected: qualified(reviewed.group, reviewed.kind),
            endpoint: reviewed.endpoint,
        });
    }
    Ok((request, operation))
}

/// An object of another kind than the endpoint's (or that does not say) is not a
/// review this endpoint serves.
fn check_type(
    field: &'static str,
    object: &impl Typed,
    reviewed: &Reviewed,
) -> Result<(), ReviewError> {
    let (api_version, kind) = (object.api_version(), object.kind());
    if api_version == Some(reviewed.api_version) && kind == Some(reviewed.kind) {
        return Ok(());
    }
    let got = match (api_version, kind) {
        (None, None) => "an object without apiVersion and kind".to_string(),
        _ => format!(
            "{}/{}",
            clip(api_version.unwrap_or("?"), 60),
            clip(kind.unwrap_or("?"), 60)
        ),
    };
    Err(ReviewError::ObjectType {
        field,
        got,
        expected: format!("{} {}", reviewed.api_version, reviewed.kind),
        endpoint: reviewed.endpoint,
    })
}

/// `Kind.group`, as `kubectl` names kinds outside the core group.
fn qualified(group: &str, kind: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    }
}

/// Why a body that failed to decode failed: not JSON at all, not an AdmissionReview, an
/// envelope check, or the object itself.
fn explain<'a, O: Deserialize<'a>>(
    body: &'a [u8],
    reviewed: &Reviewed,
    error: &serde_json::Error,
) -> ReviewError {
    if error.is_syntax() || error.is_eof() || error.is_io() {
        return ReviewError::NotJson(clip(&error.to_string(), MAX_ERROR_CHARS));
    }
    let envelope = match serde_json::from_slice::<AdmissionReview<'a, IgnoredAny>>(body) {
        Ok(envelope) => envelope,
        Err(envelope_error) => {
            return ReviewError::NotAReview(clip(&envelope_error.to_string(), MAX_ERROR_CHARS));
        }
    };
    if let Err(envelope_error) = check_envelope(envelope, reviewed) {
        return envelope_error;
    }
    let field = match serde_json::from_slice::<ObjectOnly<O>>(body) {
        Ok(only) => {
            // The object decodes on its own, so the old object is what failed.
            drop(only.request.object);
            "oldObject"
        }
        Err(_) => "object",
    };
    ReviewError::BadObject {
        field,
        kind: reviewed.kind,
        detail: clip(&error.to_string(), MAX_ERROR_CHARS),
    }
}

/// Decodes `request.object` alone, to tell a bad object from a bad old object.
#[derive(Deserialize)]
struct ObjectOnly<O> {
    request: ObjectOnlyRequest<O>,
}

#[derive(Deserialize)]
struct ObjectOnlyRequest<O> {
    object: Option<O>,
}

/// The AdmissionReview nodeguard answers with: allowed, or denied as `Forbidden` (never
/// `AlreadyExists`, which a kubelet takes as "registered" and carries on), never a patch.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewAnswer<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Debug, Serialize)]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Status {
    metadata: EmptyObject,
    status: &'static str,
    message: String,
    reason: &'static str,
    code: u16,
}

#[derive(Debug, Serialize)]
struct EmptyObject {}

/// The status a denial is answered with. Never `AlreadyExists`, which a kubelet takes as
/// "registered" and carries on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403: status writes and CSRs.
    Forbidden,
    /// 422: Node registrations. On a 403 to its CREATE the kubelet drops the message and
    /// reads the Node instead (registered if it exists, "not found" in its log if not);
    /// on any other error it logs the message and tries again.
    Invalid,
}

impl Refusal {
    /// How a denial of `operation` on `webhook`'s kind of object is answered.
    pub fn of(kind: &Reviewed, operation: Operation) -> Self {
        if kind.kind == NODES.kind && operation == Operation::Create {
            Refusal::Invalid
        } else {
            Refusal::Forbidden
        }
    }

    fn reason_and_code(self) -> (&'static str, u16) {
        match self {
            Refusal::Forbidden => ("Forbidden", 403),
            Refusal::Invalid => ("Invalid", 422),
        }
    }
}

impl<'a> ReviewAnswer<'a> {
    /// The answer to review `uid`: a denial carries its message, an allowed request its
    /// warnings.
    pub fn from_verdict(uid: &'a str, verdict: &Verdict) -> Self {
        Self::refusing_as(uid, verdict, Refusal::Forbidden)
    }

    /// Like [`ReviewAnswer::from_verdict`], a denial answered as `refusal`.
    pub fn refusing_as(uid: &'a str, verdict: &Verdict, refusal: Refusal) -> Self {
        let (reason, code) = refusal.reason_and_code();
        let response = match verdict.denial_message() {
            Some(message) => Response {
                uid,
                allowed: false,
                status: Some(Status {
                    metadata: EmptyObject {},
                    status: "Failure",
                    message,
                    reason,
                    code,
                }),
                warnings: Vec::new(),
            },
            None => Response {
                uid,
                allowed: true,
                status: None,
                warnings: verdict.warnings(),
            },
        };
        Self {
            api_version: API_VERSION,
            kind: KIND,
            response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::node::NodeDoc;
    use crate::policy::{CheckId, Config, Finding};
    use nodeguard_core::sample::{self as kubelet, Machine, Write};
    use serde_json::json;

    fn node_review_json() -> serde_json::Value {
        let machine = Machine::new("worker-1", 1, "10.0.0.1");
        let node = kubelet::node_object(&machine);
        kubelet::node_review("uid-1", Write::Create, &node, None, "system:node:worker-1")
    }

    fn decode_nodes(body: &[u8]) -> Result<Request<'_, NodeDoc<'_>>, ReviewError> {
        decode::<NodeDoc<'_>>(body, &NODES)
    }

    #[test]
    fn a_kubelet_node_create_decodes_with_its_object() {
        let body = serde_json::to_vec(&node_review_json()).unwrap();
        let request = decode_nodes(&body).unwrap();
        assert_eq!(request.uid, "uid-1");
        assert_eq!(request.operation, Operation::Create);
        assert_eq!(request.name, "worker-1");
        assert_eq!(request.user_info.username, "system:node:worker-1");
        assert!(!request.dry_run);
        assert!(request.old_object.is_none());
        let object = request.object.unwrap();
        assert_eq!(object.metadata.unwrap().name.as_deref(), Some("worker-1"));
    }

    #[test]
    fn the_envelope_fields_borrow_from_the_body() {
        let body = serde_json::to_vec(&node_review_json()).unwrap();
        let request = decode_nodes(&body).unwrap();
        assert!(matches!(request.uid, Cow::Borrowed(_)));
        assert!(matches!(request.name, Cow::Borrowed(_)));
    }

    #[test]
    fn each_malformed_review_gets_its_own_reason() {
        let cases: Vec<(serde_json::Value, ReviewError)> = vec![
            (
                {
                    let mut review = node_review_json();
                    review["apiVersion"] = json!("admission.k8s.io/v1beta1");
                    review
                },
                ReviewError::ApiVersion("admission.k8s.io/v1beta1".into()),
            ),
            (
                {
                    let mut review = node_review_json();
                    review["kind"] = json!("ConversionReview");
                    review
                },
                ReviewError::Kind("ConversionReview".into()),
            ),
            (
                json!({"apiVersion": API_VERSION, "kind": KIND}),
                ReviewError::NoRequest,
            ),
            (
                {
                    let mut review = node_review_json();
                    review["request"]["uid"] = json!("");
                    review
                },
                ReviewError::NoUid,
            ),
            (
                {
                    let mut review = node_review_json();
                    review["request"]["operation"] = json!("PATCH");
                    review
                },
                ReviewError::Operation("PATCH".into()),
            ),
            (
                {
                    let mut review = node_review_json();
                    review["request"]["object"] = serde_json::Value::Null;
                    review
                },
                ReviewError::MissingObject {
                    field: "object",
                    operation: "CREATE",
                    kind: "Node",
                },
            ),
        ];
        for (review, expected) in cases {
            let body = serde_json::to_vec(&review).unwrap();
            assert_eq!(decode_nodes(&body).unwrap_err(), expected);
        }
    }

    #[test]
    fn an_object_of_the_wrong_shape_is_named_as_the_culprit() {
        let mut review = node_review_json();
        review["request"]["object"]["status"]["nodeInfo"]["machineID"] = json!(5);
        let body = serde_json::to_vec(&review).unwrap();
        let error = decode_nodes(&body).unwrap_err();
        assert!(
            matches!(
                &error,
                ReviewError::BadObject {
                    field: "object",
                    kind: "Node",
                    ..
                }
            ),
            "{error}"
        );

        let mut review = node_review_json();
        review["request"]["oldObject"] = json!({"metadata": 5});
        let body = serde_json::to_vec(&review).unwrap();
        let error = decode_nodes(&body).unwrap_err();
        assert!(
            matches!(
                &error,
                ReviewError::BadObject {
                    field: "oldObject",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn an_envelope_error_wins_over_an_object_error() {
        let mut review = node_review_json();
        review["request"]["object"] = json!(7);
        review["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Pod"});
        let body = serde_json::to_vec(&review).unwrap();
        assert_eq!(
            decode_nodes(&body).unwrap_err().to_string(),
            "request.kind is \"Pod\", but /validate/nodes reviews Node only"
        );
    }

    #[test]
    fn garbage_is_not_json_and_a_json_array_is_not_a_review() {
        assert!(matches!(
            decode_nodes(b"{\"apiVersion\": ").unwrap_err(),
            ReviewError::NotJson(_)
        ));
        assert!(matches!(
            decode_nodes(b"\"hello\"").unwrap_err(),
            ReviewError::NotAReview(_)
        ));
    }

    #[test]
    fn a_denial_is_forbidden_with_its_message_and_an_allowed_review_carries_warnings() {
        let denied = Verdict::from_findings(
            [Finding::deny(CheckId::Hostname, "no".into(), "w".into())],
            &Config::default(),
        );
        assert_eq!(
            serde_json::to_value(ReviewAnswer::from_verdict("u", &denied)).unwrap(),
            json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": "u",
                    "allowed": false,
                    "status": {
                        "metadata": {},
                        "status": "Failure",
                        "message": "no",
                        "reason": "Forbidden",
                        "code": 403
                    }
                }
            })
        );
        let warned = Verdict::from_findings(
            [Finding::warn(CheckId::Hostname, "careful".into())],
            &Config::default(),
        );
        assert_eq!(
            serde_json::to_value(ReviewAnswer::from_verdict("u", &warned)).unwrap()["response"],
            json!({"uid": "u", "allowed": true, "warnings": ["careful"]})
        );
        assert_eq!(
            serde_json::to_value(ReviewAnswer::from_verdict("u", &Verdict::default())).unwrap()["response"],
            json!({"uid": "u", "allowed": true})
        );
    }

    #[test]
    fn a_registration_is_refused_as_invalid_and_everything_else_as_forbidden() {
        assert_eq!(Refusal::of(&NODES, Operation::Create), Refusal::Invalid);
        assert_eq!(Refusal::of(&NODES, Operation::Update), Refusal::Forbidden);
        assert_eq!(Refusal::of(&CSRS, Operation::Create), Refusal::Forbidden);
        let denied = Verdict::from_findings(
            [Finding::deny(CheckId::MachineId, "m".into(), "w".into())],
            &Config::default(),
        );
        let answer =
            serde_json::to_value(ReviewAnswer::refusing_as("u", &denied, Refusal::Invalid))
                .unwrap();
        assert_eq!(answer["response"]["status"]["reason"], "Invalid");
        assert_eq!(answer["response"]["status"]["code"], 422);
    }
}
