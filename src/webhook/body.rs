//! Reading a review's body within bounds that never make the API server fail open.
//!
//! A 413 or any other error answer makes the API server apply the failure policy, and
//! with `Ignore` the write goes through unchecked. So the largest body accepted is far
//! above any review the API server sends (an UPDATE carries the object and the old
//! object, each up to what etcd stores, and JSON is larger than the protobuf stored),
//! and memory is bounded instead by a budget shared by all requests being read: a
//! request waits for room in the budget rather than being refused.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest review body read: etcd stores objects of at most 1.5 MiB (2 MiB as the API
/// server sends them), about 3 to 4 MiB as JSON each, two of them in an UPDATE review.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Bytes of request bodies held in memory at once, across all connections.
pub const BODY_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// The memory budget of request bodies: one permit per byte.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    max_body: usize,
}

impl Default for BodyBudget {
    fn default() -> Self {
        Self::new(BODY_BUDGET_BYTES, MAX_BODY_BYTES)
    }
}

impl BodyBudget {
    /// A budget of `total` bytes, of which one body may take at most `max_body`.
    pub fn new(total: usize, max_body: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(total)),
            max_body: max_body.min(total),
        }
    }

    /// Bytes of the budget not held by a request now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        Arc::clone(&self.permits)
            .acquire_many_owned(bytes)
            .await
            .ok()
    }
}

/// A review body read in full, holding its share of the budget until dropped.
#[derive(Debug)]
pub struct ReviewBody {
    pub bytes: Bytes,
    _reserved: Option<OwnedSemaphorePermit>,
}

/// Why a body was not read. Each is answered with its status and this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    #[error("Content-Type is {0:?}; an AdmissionReview is sent as application/json")]
    NotJson(String),
    #[error("the body is larger than {max} bytes, far above any AdmissionReview", max = MAX_BODY_BYTES)]
    TooLarge,
    #[error("the body could not be read: {0}")]
    Read(String),
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::NotJson(_) | BodyError::Read(_) => StatusCode::BAD_REQUEST,
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> Result<(), BodyError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let media_type = value.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(BodyError::NotJson(crate::policy::verdict::clip(&value, 80)))
    }
}

/// Reads `body` within `budget`: a declared length is reserved before reading, a body
/// of unknown length chunk by chunk as it arrives.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    budget: &BodyBudget,
) -> Result<ReviewBody, BodyError> {
    is_json(headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|length| length > budget.max_body) {
        return Err(BodyError::TooLarge);
    }
    let mut reserved = match declared {
        Some(length) if length > 0 => budget.reserve(length).await,
        _ => None,
    };
    let mut held = declared.unwrap_or(0);
    let mut collected = Vec::with_capacity(declared.unwrap_or(0));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| BodyError::Read(error.to_string()))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if collected.len() + chunk.len() > budget.max_body {
            return Err(BodyError::TooLarge);
        }
        // More than declared (or nothing declared): reserve the rest as it comes.
        let needed = (collected.len() + chunk.len()).saturating_sub(held);
        if needed > 0 {
            let more = budget.reserve(needed).await;
            match (&mut reserved, more) {
                (Some(permit), Some(more)) => permit.merge(more),
                (slot @ None, more) => *slot = more,
                (Some(_), None) => {}
            }
            held += needed;
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(ReviewBody {
        bytes: Bytes::from(collected),
        _reserved: reserved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers(length: Option<usize>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        if let Some(length) = length {
            headers.insert(header::CONTENT_LENGTH, length.into());
        }
        headers
    }

    #[tokio::test]
    async fn a_body_holds_its_bytes_of_the_budget_until_dropped() {
        let budget = BodyBudget::new(1000, 600);
        let body = read(
            &json_headers(Some(400)),
            Body::from(vec![b' '; 400]),
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(body.bytes.len(), 400);
        assert_eq!(budget.available(), 600);
        // Without a length, reserved as it arrives.
        let second = read(&json_headers(None), Body::from(vec![b' '; 500]), &budget)
            .await
            .unwrap();
        assert_eq!(budget.available(), 100);
        // A third must wait for room rather than fail.
        let third = tokio::spawn({
            let budget = budget.clone();
            async move {
                read(
                    &json_headers(Some(300)),
                    Body::from(vec![b' '; 300]),
                    &budget,
                )
                .await
                .map(|b| b.bytes.len())
            }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        drop(body);
        assert_eq!(third.await.unwrap(), Ok(300));
        drop(second);
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test]
    async fn only_json_is_read_and_only_up_to_the_largest_body() {
        let budget = BodyBudget::new(1000, 600);
        let mut yaml = json_headers(None);
        yaml.insert(header::CONTENT_TYPE, "application/yaml".parse().unwrap());
        assert_eq!(
            read(&yaml, Body::from("{}"), &budget).await.unwrap_err(),
            BodyError::NotJson("application/yaml".into())
        );
        assert!(matches!(
            read(&HeaderMap::new(), Body::from("{}"), &budget).await,
            Err(BodyError::NotJson(_))
        ));
        let mut charset = json_headers(None);
        charset.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(read(&charset, Body::from("{}"), &budget).await.is_ok());
        assert_eq!(
            read(
                &json_headers(Some(700)),
                Body::from(vec![b' '; 700]),
                &budget
            )
            .await
            .unwrap_err(),
            BodyError::TooLarge
        );
        assert_eq!(
            read(&json_headers(None), Body::from(vec![b' '; 700]), &budget)
                .await
                .unwrap_err(),
            BodyError::TooLarge
        );
        assert_eq!(budget.available(), 1000);
    }
}
