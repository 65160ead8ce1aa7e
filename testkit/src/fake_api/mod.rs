//! An in-memory fake of the Kubernetes API server, served in-process to a real
//! `kube::Client`: objects are JSON values kept per collection (the URL path), with one
//! global resourceVersion counter, optimistic concurrency, real-format `Status` errors,
//! paged lists and streaming watches, so that `kube::Api` and kube-runtime's `watcher`
//! work against it unchanged. Faults and concurrent writers are injected by the test.
//!
//! Refused rather than answered wrongly: subresources (404), patches other than JSON
//! merge patches (415), field selectors and set-based label selectors (400), label
//! selectors on watches (400), `generateName` (422). Lists take equality-based label
//! selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated). Ignored:
//! delete options (a delete is immediate; there are no finalizers) and a list's
//! `resourceVersion` (lists serve the latest state, which satisfies the watcher's
//! "not older than"). Watches replay from any resourceVersion, so a 410 comes only when
//! a test asks for one ([`FakeApi::expire_next_watch`]), the way the API server sends it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

mod paths;
mod requests;
mod responses;
mod store;
mod tcp;

use paths::*;
use responses::*;
use store::*;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The fake API server. Dropping it ends every watch it serves.
pub struct FakeApi {
    shared: Arc<Shared>,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.revisions.send_modify(|_| {});
    }
}

impl FakeApi {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                revisions: watch::channel(0).0,
            }),
        }
    }

    /// A client talking to this fake; must be called within a tokio runtime.
    pub fn client(&self) -> kube::Client {
        self.connect(None)
    }

    /// A client whose requests [`FakeApi::partition`] can cut off, as one replica's.
    pub fn client_named(&self, name: &str) -> kube::Client {
        self.connect(Some(name.to_owned()))
    }

    fn connect(&self, name: Option<String>) -> kube::Client {
        let shared = self.shared.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let shared = shared.clone();
            let name = name.clone();
            async move { Ok::<_, Infallible>(shared.handle(name, request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// From now on, requests of the client named `name` are never answered (nor logged,
    /// nor processed), as if its network were cut, until [`FakeApi::heal`].
    pub fn partition(&self, name: &str) {
        self.shared.lock().partitioned.push(name.to_owned());
    }

    pub fn heal(&self, name: &str) {
        self.shared
            .lock()
            .partitioned
            .retain(|partitioned| partitioned != name);
    }

    /// The object at `path` (e.g. `/api/v1/namespaces/ns/configmaps/name`).
    pub fn get(&self, path: &str) -> Option<Value> {
        let (collection, name) = object_path(path);
        self.shared.lock().object(&collection, &name).cloned()
    }

    /// Stores `object` in the collection at `collection_path` under its
    /// `metadata.name`, creating or overwriting it without any check, as seeding or
    /// another writer would; returns it as stored, with a new resourceVersion.
    pub fn insert(&self, collection_path: &str, object: Value) -> Value {
        let Some(Target::Collection(collection)) = parse_path(collection_path) else {
            panic!("not a collection path: {collection_path}");
        };
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("no metadata.name in {object}"))
            .to_owned();
        self.shared.store(&collection, &name, object)
    }

    /// Like [`FakeApi::insert`], at an object path (its last segment names the object).
    pub fn put_raw(&self, path: &str, object: Value) -> Value {
        let (collection, name) = object_path(path);
        self.shared.store(&collection, &name, object)
    }

    /// Changes the stored object at `path` as a concurrent writer would (a new
    /// resourceVersion, a MODIFIED event); `None` if there is no such object.
    pub fn update(&self, path: &str, change: impl FnOnce(&mut Value)) -> Option<Value> {
        let (collection, name) = object_path(path);
        let mut object = self.get(path)?;
        change(&mut object);
        Some(self.shared.store(&collection, &name, object))
    }

    pub fn delete(&self, path: &str) -> Option<Value> {
        let (collection, name) = object_path(path);
        self.shared.lock().remove(&collection, &name)
    }

    /// What a list of `collection_path` would return (a cluster-wide path of a
    /// namespaced resource lists every namespace).
    pub fn objects(&self, collection_path: &str) -> Vec<Value> {
        let Some(Target::Collection(collection)) = parse_path(collection_path) else {
            panic!("not a collection path: {collection_path}");
        };
        self.shared
            .lock()
            .list(&collection)
            .into_iter()
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Every request received, in order: method and path with query.
    pub fn requests(&self) -> Vec<(Method, String)> {
        self.shared
            .lock()
            .log
            .iter()
            .map(|entry| (entry.method.clone(), entry.target.clone()))
            .collect()
    }

    /// Every request answered, in order, with its status (a watch counts as answered
    /// when its stream starts).
    pub fn responses(&self) -> Vec<(Method, String, StatusCode)> {
        self.shared
            .lock()
            .log
            .iter()
            .filter_map(|entry| Some((entry.method.clone(), entry.target.clone(), entry.status?)))
            .collect()
    }

    /// The current (last assigned) resourceVersion.
    pub fn revision(&self) -> u64 {
        self.shared.lock().revision
    }

    /// The next request with `method` whose path starts with `path_prefix` is answered
    /// with a `Status` of `code`, and not processed.
    pub fn fail_next(&self, method: Method, path_prefix: &str, code: u16) {
        self.add_fault(method, path_prefix, Effect::Fail(code), true);
    }

    /// Like [`FakeApi::fail_next`], for every such request until [`FakeApi::clear_faults`].
    pub fn fail_always(&self, method: Method, path_prefix: &str, code: u16) {
        self.add_fault(method, path_prefix, Effect::Fail(code), false);
    }

    /// Every such request, until [`FakeApi::clear_faults`], is never answered.
    pub fn hang_always(&self, method: Method, path_prefix: &str) {
        self.add_fault(method, path_prefix, Effect::Hang, false);
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Watches that ask for bookmarks are considered for one every `every`, as the API
    /// server's watch cache considers them every minute. As there, one is sent only when
    /// the watch cache's resourceVersion has moved past the watch's: a quiet watch gets
    /// none until [`FakeApi::progress`].
    pub fn bookmark_every(&self, every: Duration) {
        self.shared.lock().bookmark_every = Some(every);
        self.shared.revisions.send_modify(|_| {});
    }

    /// etcd's progress notification (every ten minutes by default, or asked for by a
    /// consistent list): the watch caches learn the store's current resourceVersion, so
    /// the next bookmark of every watch behind it carries that version.
    pub fn progress(&self) {
        let mut state = self.shared.lock();
        state.progress_revision = state.revision;
        drop(state);
        self.shared.revisions.send_modify(|_| {});
    }

    /// The API server stops answering: open watches go silent (connections stay open),
    /// new requests hang, until [`FakeApi::resume`].
    pub fn stall(&self) {
        self.shared.lock().stalled = true;
    }

    /// Ends every open watch, as the API server does at a watch's timeout or when it
    /// restarts; clients watch again.
    pub fn end_watches(&self) {
        self.shared.lock().watch_epoch += 1;
        self.shared.revisions.send_modify(|_| {});
    }

    /// The next watch of the collection at `collection_path` that resumes from a
    /// resourceVersion is told that version is too old, as the API server's watch cache
    /// tells it once the version has left its window: HTTP 200 and one `ERROR` event
    /// carrying a 410 `Expired` Status, then the end of the stream. The client must list
    /// again.
    pub fn expire_next_watch(&self, collection_path: &str) {
        let Some(Target::Collection(collection)) = parse_path(collection_path) else {
            panic!("not a collection path: {collection_path}");
        };
        self.shared.lock().expiring.push(collection);
    }

    /// Open watches carry on from where they were; new requests are answered again.
    pub fn resume(&self) {
        self.shared.lock().stalled = false;
        self.shared.revisions.send_modify(|_| {});
    }

    /// Right before the next write (POST, PUT, PATCH or DELETE) of the object at `path`
    /// is processed, `change` modifies the stored object as a concurrent writer would (a
    /// new resourceVersion), so a write carrying the version read before gets a 409. If
    /// there is no such object, `change` gets `Null` and may create one (unless it
    /// leaves `Null`), so that a create gets a 409 AlreadyExists.
    pub fn before_next_write(&self, path: &str, change: impl FnOnce(&mut Value) + Send + 'static) {
        let (collection, name) = object_path(path);
        self.shared.lock().hooks.push(Hook {
            collection,
            name,
            change: Box::new(change),
        });
    }

    /// Whether every hook given to [`FakeApi::before_next_write`] has run.
    pub fn hooks_done(&self) -> bool {
        self.shared.lock().hooks.is_empty()
    }

    fn add_fault(&self, method: Method, path_prefix: &str, effect: Effect, once: bool) {
        self.shared.lock().faults.push(Fault {
            method,
            path_prefix: path_prefix.to_owned(),
            effect,
            once,
        });
    }
}
