//! How current each of the three views (Nodes, CSRs, NodeIdentities) is, measured on the
//! wire. kube-runtime's watcher keeps its bookmarks to itself, so the watchers' client
//! is wrapped in a layer that sees every list and watch response of those collections:
//! a response received, and every chunk of a watch's body (an event or a bookmark),
//! make the view fresh; a failed response or a failed stream counts an error, and any
//! success clears the run. A watch that stalls (an API server that stops answering, a
//! connection gone half-open) sends nothing, and its view ages.
//!
//! A quiet collection gets no bookmark: the API server's watch cache sends one only
//! once the collection's resourceVersion has moved past the watch's, which takes a
//! write to that collection or etcd's progress notification (every ten minutes by
//! default). So each watch asks the API server to end it after two thirds of the bound
//! (`watch_timeout`), and the next watch's response keeps a healthy quiet view current.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

/// A view with nothing received for longer than this is stale; its watches are reopened
/// every minute (`watch_timeout`).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(90);

/// The `timeoutSeconds` of each watch under a bound of `stale_after`: two thirds of it,
/// in whole seconds and at least one, so a watch nothing happens on is ended by the API
/// server and opened again well within the bound.
pub fn watch_timeout(stale_after: Duration) -> u32 {
    let seconds = stale_after.as_millis() * 2 / 3 / 1000;
    u32::try_from(seconds).unwrap_or(u32::MAX).max(1)
}

/// One of the watched collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum View {
    Nodes,
    Csrs,
    Ledger,
}

impl View {
    pub const ALL: [View; 3] = [View::Nodes, View::Csrs, View::Ledger];

    pub fn as_str(self) -> &'static str {
        match self {
            View::Nodes => "nodes",
            View::Csrs => "certificatesigningrequests",
            View::Ledger => "nodeidentities",
        }
    }

    /// The view a request lists or watches, if any: a GET of the collection itself
    /// (not of one object).
    fn of<B>(request: &Request<B>) -> Option<View> {
        if request.method() != http::Method::GET {
            return None;
        }
        match request.uri().path() {
            "/api/v1/nodes" => Some(View::Nodes),
            "/apis/certificates.k8s.io/v1/certificatesigningrequests" => Some(View::Csrs),
            "/apis/nodeguard.io/v1alpha1/nodeidentities" => Some(View::Ledger),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ViewState {
    last_seen: Option<Instant>,
    errors: u32,
}

/// What is known of one view now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewStatus {
    pub view: View,
    /// Since the last response or chunk; `None` before any.
    pub age: Option<Duration>,
    /// Failed requests or streams since the last success.
    pub errors: u32,
}

/// The three views' freshness, shared by the layer, `/readyz`, the metrics and the
/// webhook.
#[derive(Debug, Clone)]
pub struct Views {
    states: Arc<Mutex<HashMap<View, ViewState>>>,
    stale_after: Duration,
}

impl Views {
    pub fn new(stale_after: Duration) -> Self {
        Self {
            states: Arc::default(),
            stale_after,
        }
    }

    pub fn stale_after(&self) -> Duration {
        self.stale_after
    }

    fn update(&self, view: View, change: impl FnOnce(&mut ViewState)) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        change(states.entry(view).or_default());
    }

    fn seen(&self, view: View) {
        let now = Instant::now();
        self.update(view, |state| {
            state.last_seen = Some(now);
            state.errors = 0;
        });
    }

    fn failed(&self, view: View) {
        self.update(view, |state| state.errors = state.errors.saturating_add(1));
    }

    /// Every view, as of `now`.
    pub fn status(&self, now: Instant) -> Vec<ViewStatus> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        View::ALL
            .into_iter()
            .map(|view| {
                let state = states.get(&view).copied().unwrap_or_default();
                ViewStatus {
                    view,
                    age: state
                        .last_seen
                        .map(|seen| now.saturating_duration_since(seen)),
                    errors: state.errors,
                }
            })
            .collect()
    }

    /// Why the views cannot be trusted now: the first one with nothing received for
    /// longer than `stale_after`, or `None` when all are current.
    pub fn stale(&self, now: Instant) -> Option<String> {
        self.status(now).into_iter().find_map(|status| {
            let errors = match status.errors {
                0 => String::new(),
                1 => ", 1 failed request since".to_string(),
                n => format!(", {n} failed requests since"),
            };
            match status.age {
                None => Some(format!(
                    "{}: nothing received yet{errors}",
                    status.view.as_str()
                )),
                Some(age) if age > self.stale_after => Some(format!(
                    "{}: nothing received for {}s (stale after {}s){errors}",
                    status.view.as_str(),
                    age.as_secs(),
                    self.stale_after.as_secs()
                )),
                Some(_) => None,
            }
        })
    }

    /// The watchers' client, reporting to these views.
    pub fn wrap(&self, client: kube::Client) -> kube::Client {
        let default_namespace = client.default_namespace().to_string();
        kube::Client::new(
            Observed {
                inner: client,
                views: self.clone(),
            },
            default_namespace,
        )
    }
}

/// A client whose collection lists and watches report to [`Views`].
#[derive(Clone)]
struct Observed {
    inner: kube::Client,
    views: Views,
}

impl tower::Service<Request<kube::client::Body>> for Observed {
    type Response = Response<ObservedBody>;
    type Error = kube::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // kube::Client is always ready: it buffers.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<kube::client::Body>) -> Self::Future {
        let view = View::of(&request);
        let client = self.inner.clone();
        let views = self.views.clone();
        Box::pin(async move {
            let sent = client.send(request).await;
            let Some(view) = view else {
                return sent.map(|response| response.map(ObservedBody::plain));
            };
            match sent {
                Ok(response) if response.status().is_success() => {
                    views.seen(view);
                    Ok(response.map(|body| ObservedBody {
                        inner: body,
                        report: Some((view, views)),
                    }))
                }
                Ok(response) => {
                    views.failed(view);
                    Ok(response.map(ObservedBody::plain))
                }
                Err(error) => {
                    views.failed(view);
                    Err(error)
                }
            }
        })
    }
}

/// A response body that makes its view fresh with each chunk it delivers.
pub struct ObservedBody {
    inner: kube::client::Body,
    report: Option<(View, Views)>,
}

impl ObservedBody {
    fn plain(inner: kube::client::Body) -> Self {
        Self {
            inner,
            report: None,
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = kube::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some((view, views)) = &self.report {
            match &polled {
                Poll::Ready(Some(Ok(_))) => views.seen(*view),
                Poll::Ready(Some(Err(_))) => views.failed(*view),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
