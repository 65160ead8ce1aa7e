//! An in-memory fake of the Kubernetes API server, served in-process to a real
//! `kube::Client`: objects are JSON values kept per collection (the URL path), with one
//! global resourceVersion counter, optimistic concurrency, real-format `Status` errors,
//! paged lists and streaming watches, so that `kube::Api` and kube-runtime's `watcher`
//! work against it unchanged. Faults and concurrent writers are injected by the test.
//!
//! Include it in a test file with
//!
//! ```ignore
//! #[path = "support/fake_api.rs"]
//! mod fake_api;
//! ```
//!
//! Refused rather than answered wrongly: subresources (404), patches other than JSON
//! merge patches (415), field selectors and set-based label selectors (400), label
//! selectors on watches (400), `generateName` (422). Lists take equality-based label
//! selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated). Ignored:
//! delete options (a delete is immediate; there are no finalizers) and a list's
//! `resourceVersion` (lists serve the latest state, which satisfies the watcher's
//! "not older than"). Watches replay from any resourceVersion, so a 410 comes only when
//! a test asks for one ([`FakeApi::expire_next_watch`]), the way the API server sends it.

// Each test binary uses only part of this module.
#![allow(dead_code)]

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

// ---------------------------------------------------------------------------------
// Paths.

/// A collection: `/api/v1[/namespaces/{ns}]/{plural}` or
/// `/apis/{group}/{version}[/namespaces/{ns}]/{plural}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Collection {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
}

impl Collection {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `leases.coordination.k8s.io`, or `pods` for the core group, as in API messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether a list of `self` includes objects stored in `stored`.
    fn covers(&self, stored: &Collection) -> bool {
        self.group == stored.group
            && self.version == stored.version
            && self.plural == stored.plural
            && (self.namespace.is_none() || self.namespace == stored.namespace)
    }
}

enum Target {
    Collection(Collection),
    Object(Collection, String),
    Subresource(Collection, String, String),
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let collection = |namespace: Option<&str>, plural: &str| Collection {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace: namespace.map(str::to_owned),
        plural: plural.to_owned(),
    };
    let target = match rest {
        // `/api/v1/namespaces/{name}/status` is a subresource of a Namespace.
        ["namespaces", namespace, plural] if !matches!(*plural, "status" | "finalize") => {
            Target::Collection(collection(Some(namespace), plural))
        }
        ["namespaces", namespace, plural, name] => {
            Target::Object(collection(Some(namespace), plural), (*name).to_owned())
        }
        ["namespaces", namespace, plural, name, sub] => Target::Subresource(
            collection(Some(namespace), plural),
            (*name).to_owned(),
            (*sub).to_owned(),
        ),
        [plural] => Target::Collection(collection(None, plural)),
        [plural, name] => Target::Object(collection(None, plural), (*name).to_owned()),
        [plural, name, sub] => Target::Subresource(
            collection(None, plural),
            (*name).to_owned(),
            (*sub).to_owned(),
        ),
        _ => return None,
    };
    Some(target)
}

fn object_path(path: &str) -> (Collection, String) {
    match parse_path(path) {
        Some(Target::Object(collection, name)) => (collection, name),
        _ => panic!("not an object path: {path}"),
    }
}

fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding, as kube encodes its query.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------
// The store.

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change, waking the watches.
    revisions: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    collections: BTreeMap<Collection, BTreeMap<String, Value>>,
    /// Kinds learned from stored objects, by (group, plural).
    kinds: BTreeMap<(String, String), String>,
    revision: u64,
    uids: u64,
    changes: Vec<Change>,
    log: Vec<LogEntry>,
    faults: Vec<Fault>,
    hooks: Vec<Hook>,
    partitioned: Vec<String>,
    closed: bool,
    /// Watches that asked for bookmarks are considered for one this often (the API
    /// server: a minute).
    bookmark_every: Option<Duration>,
    /// The revision the last progress notification carried.
    progress_revision: u64,
    /// While set, open watches send nothing and new requests are not answered: an API
    /// server that stopped answering mid-watch.
    stalled: bool,
    /// Bumped to end every open watch.
    watch_epoch: u64,
    /// Collections whose next resumed watch is told its resourceVersion is too old.
    expiring: Vec<Collection>,
}

struct Change {
    revision: u64,
    collection: Collection,
    kind: &'static str,
    object: Value,
}

struct LogEntry {
    method: Method,
    target: String,
    status: Option<StatusCode>,
}

#[derive(Clone, Copy)]
enum Effect {
    Fail(u16),
    Hang,
}

struct Fault {
    method: Method,
    path_prefix: String,
    effect: Effect,
    once: bool,
}

struct Hook {
    collection: Collection,
    name: String,
    change: Box<dyn FnOnce(&mut Value) + Send>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn store(&self, collection: &Collection, name: &str, object: Value) -> Value {
        let stored = self.lock().put(collection, name, object);
        self.notify();
        stored
    }
}

impl State {
    fn object(&self, collection: &Collection, name: &str) -> Option<&Value> {
        self.collections.get(collection)?.get(name)
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Stores `object` as `name` with a new resourceVersion, keeping the uid and creation
    /// time of the object it replaces, and records the change.
    fn put(&mut self, collection: &Collection, name: &str, mut object: Value) -> Value {
        let previous = self.object(collection, name).cloned();
        let revision = self.next_revision();
        if !object.is_object() {
            object = json!({});
        }
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let metadata = &mut object["metadata"];
        metadata["name"] = json!(name);
        if let Some(namespace) = &collection.namespace {
            metadata["namespace"] = json!(namespace);
        }
        metadata["resourceVersion"] = json!(revision.to_string());
        for field in ["uid", "creationTimestamp"] {
            if let Some(kept) = previous
                .as_ref()
                .map(|previous| &previous["metadata"][field])
                .filter(|v| !v.is_null())
            {
                metadata[field] = kept.clone();
            }
        }
        if metadata["uid"].is_null() {
            self.uids += 1;
            metadata["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
        }
        if metadata["creationTimestamp"].is_null() {
            metadata["creationTimestamp"] = json!(
                jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
            );
        }
        if let Some(kind) = object["kind"].as_str() {
            self.kinds.insert(
                (collection.group.clone(), collection.plural.clone()),
                kind.to_owned(),
            );
        }
        self.collections
            .entry(collection.clone())
            .or_default()
            .insert(name.to_owned(), object.clone());
        self.changes.push(Change {
            revision,
            collection: collection.clone(),
            kind: if previous.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            object: object.clone(),
        });
        object
    }

    fn remove(&mut self, collection: &Collection, name: &str) -> Option<Value> {
        let mut object = self.collections.get_mut(collection)?.remove(name)?;
        // A deletion has its own resourceVersion, which the watch event carries.
        let revision = self.next_revision();
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        self.changes.push(Change {
            revision,
            collection: collection.clone(),
            kind: "DELETED",
            object: object.clone(),
        });
        Some(object)
    }

    /// Every object a list of `collection` holds, by (namespace, name).
    fn list(&self, collection: &Collection) -> Vec<(String, &Value)> {
        let mut items: Vec<(String, &Value)> = self
            .collections
            .iter()
            .filter(|(stored, _)| collection.covers(stored))
            .flat_map(|(stored, objects)| {
                let namespace = stored.namespace.clone().unwrap_or_default();
                objects
                    .iter()
                    .map(move |(name, object)| (format!("{namespace}/{name}"), object))
            })
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items
    }

    fn kind(&self, collection: &Collection) -> String {
        if let Some(kind) = self
            .kinds
            .get(&(collection.group.clone(), collection.plural.clone()))
        {
            return kind.clone();
        }
        let known = [
            ("configmaps", "ConfigMap"),
            ("leases", "Lease"),
            ("nodes", "Node"),
            ("pods", "Pod"),
            ("events", "Event"),
            ("namespaces", "Namespace"),
            ("secrets", "Secret"),
            ("certificatesigningrequests", "CertificateSigningRequest"),
        ];
        if let Some((_, kind)) = known
            .iter()
            .find(|(plural, _)| *plural == collection.plural)
        {
            return (*kind).to_owned();
        }
        // A guess: the plural, singular and capitalized.
        let singular = collection
            .plural
            .strip_suffix('s')
            .unwrap_or(&collection.plural);
        let mut chars = singular.chars();
        chars
            .next()
            .map(|first| first.to_uppercase().chain(chars).collect())
            .unwrap_or_default()
    }

    /// Consumes the fault, if any, that matches this request.
    fn take_fault(&mut self, method: &Method, path: &str) -> Option<Effect> {
        let index = self
            .faults
            .iter()
            .position(|fault| fault.method == *method && path.starts_with(&fault.path_prefix))?;
        let effect = self.faults[index].effect;
        if self.faults[index].once {
            self.faults.remove(index);
        }
        Some(effect)
    }

    /// Runs the hook, if any, registered for a write of this object.
    fn run_hook(&mut self, collection: &Collection, name: &str) {
        let Some(index) = self
            .hooks
            .iter()
            .position(|hook| hook.collection == *collection && hook.name == name)
        else {
            return;
        };
        let hook = self.hooks.remove(index);
        let mut object = self
            .object(collection, name)
            .cloned()
            .unwrap_or(Value::Null);
        (hook.change)(&mut object);
        if !object.is_null() {
            self.put(collection, name, object);
        }
    }
}

// ---------------------------------------------------------------------------------
// Requests.

impl Shared {
    async fn handle(
        self: Arc<Self>,
        client: Option<String>,
        request: Request<kube::client::Body>,
    ) -> Response<Body> {
        if client.is_some_and(|client| self.lock().partitioned.contains(&client)) {
            return std::future::pending().await;
        }
        // A stalled server answers a request once it resumes.
        let mut revisions = self.revisions.subscribe();
        while self.lock().stalled {
            if revisions.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
        let (parts, body) = request.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), ToString::to_string);
        let index = {
            let mut state = self.lock();
            state.log.push(LogEntry {
                method: parts.method.clone(),
                target,
                status: None,
            });
            state.log.len() - 1
        };
        let fault = self.lock().take_fault(&parts.method, parts.uri.path());
        let response = match fault {
            Some(Effect::Hang) => std::future::pending::<Response<Body>>().await,
            Some(Effect::Fail(code)) => {
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                failure(code, default_reason(code), "injected by the fake API", None).response()
            }
            None => match body.collect().await {
                Ok(body) => {
                    let content_type = parts
                        .headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let query = parse_query(parts.uri.query());
                    self.serve(
                        &parts.method,
                        parts.uri.path(),
                        &query,
                        content_type,
                        &body.to_bytes(),
                    )
                }
                Err(error) => bad_request(format!("reading the body: {error}")).response(),
            },
        };
        self.lock().log[index].status = Some(response.status());
        response
    }

    fn serve(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        query: &BTreeMap<String, String>,
        content_type: &str,
        body: &[u8],
    ) -> Response<Body> {
        let Some(target) = parse_path(path) else {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
                None,
            )
            .response();
        };
        let parsed_body = || {
            serde_json::from_slice::<Value>(body)
                .map_err(|error| format!("the body is not JSON: {error}"))
        };
        let response = match (method, target) {
            (&Method::GET, Target::Collection(collection)) => {
                if query
                    .get("watch")
                    .is_some_and(|watch| watch == "true" || watch == "1")
                {
                    return self.watch(collection, query);
                }
                self.list(&collection, query)
            }
            (&Method::GET, Target::Object(collection, name)) => {
                match self.lock().object(&collection, &name) {
                    Some(object) => Ok(json_response(StatusCode::OK, object)),
                    None => Err(not_found(&collection, &name)),
                }
            }
            (&Method::POST, Target::Collection(collection)) => parsed_body()
                .map_err(bad_request)
                .and_then(|object| self.create(&collection, object)),
            (&Method::PUT, Target::Object(collection, name)) => parsed_body()
                .map_err(bad_request)
                .and_then(|object| self.replace(&collection, &name, object)),
            (&Method::PATCH, Target::Object(collection, name)) => {
                if content_type != "application/merge-patch+json" {
                    return failure(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        &format!(
                            "the fake API serves only application/merge-patch+json patches, not {content_type:?}"
                        ),
                        None,
                    )
                    .response();
                }
                parsed_body()
                    .map_err(bad_request)
                    .and_then(|patch| self.patch(&collection, &name, &patch))
            }
            (&Method::DELETE, Target::Object(collection, name)) => {
                // DeleteOptions' preconditions: the object must still be that uid and
                // that resourceVersion, as the API server checks them.
                let preconditions = parsed_body()
                    .ok()
                    .map(|options| options["preconditions"].clone())
                    .unwrap_or(Value::Null);
                let removed = {
                    let mut state = self.lock();
                    state.run_hook(&collection, &name);
                    let current = state.object(&collection, &name).cloned();
                    let unmet = current.as_ref().and_then(|object| {
                        ["uid", "resourceVersion"].into_iter().find(|field| {
                            preconditions[*field].is_string()
                                && preconditions[*field] != object["metadata"][*field]
                        })
                    });
                    match unmet {
                        Some(field) => Err(failure(
                            StatusCode::CONFLICT,
                            "Conflict",
                            &format!("Precondition failed: {field} does not match"),
                            None,
                        )),
                        None => Ok(state.remove(&collection, &name)),
                    }
                };
                self.notify();
                removed.and_then(|removed| {
                    removed
                        .map(|object| json_response(StatusCode::OK, &object))
                        .ok_or_else(|| not_found(&collection, &name))
                })
            }
            (_, Target::Subresource(collection, name, sub)) => Err(failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!(
                    "the fake API serves no subresources ({}/{name}/{sub})",
                    collection.qualified()
                ),
                None,
            )),
            _ => Err(failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{method} is not supported on {path}"),
                None,
            )),
        };
        response.unwrap_or_else(Failure::response)
    }

    fn notify(&self) {
        let revision = self.lock().revision;
        self.revisions.send_replace(revision);
    }

    fn create(&self, collection: &Collection, object: Value) -> Result<Response<Body>, Failure> {
        let Some(name) = object["metadata"]["name"]
            .as_str()
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
        else {
            return Err(failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                &format!(
                    "{} \"\" is invalid: metadata.name: Required value: name is required",
                    collection.qualified()
                ),
                None,
            ));
        };
        check_namespace(collection, &object)?;
        let created = {
            let mut state = self.lock();
            state.run_hook(collection, &name);
            if state.object(collection, &name).is_some() {
                return Err(failure(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", collection.qualified()),
                    Some((collection, &name)),
                ));
            }
            state.put(collection, &name, object)
        };
        self.notify();
        Ok(json_response(StatusCode::CREATED, &created))
    }

    fn replace(
        &self,
        collection: &Collection,
        name: &str,
        object: Value,
    ) -> Result<Response<Body>, Failure> {
        if let Some(body_name) = object["metadata"]["name"]
            .as_str()
            .filter(|body_name| *body_name != name)
        {
            return Err(bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        check_namespace(collection, &object)?;
        let replaced = {
            let mut state = self.lock();
            state.run_hook(collection, name);
            let stored = state
                .object(collection, name)
                .ok_or_else(|| not_found(collection, name))?;
            check_version(collection, name, stored, &object)?;
            state.put(collection, name, object)
        };
        self.notify();
        Ok(json_response(StatusCode::OK, &replaced))
    }

    /// RFC 7386 JSON merge patch; a resourceVersion in the patch is a precondition.
    fn patch(
        &self,
        collection: &Collection,
        name: &str,
        patch: &Value,
    ) -> Result<Response<Body>, Failure> {
        let patched = {
            let mut state = self.lock();
            state.run_hook(collection, name);
            let stored = state
                .object(collection, name)
                .ok_or_else(|| not_found(collection, name))?;
            check_version(collection, name, stored, patch)?;
            let mut object = stored.clone();
            merge_patch(&mut object, patch);
            state.put(collection, name, object)
        };
        self.notify();
        Ok(json_response(StatusCode::OK, &patched))
    }

    fn list(
        &self,
        collection: &Collection,
        query: &BTreeMap<String, String>,
    ) -> Result<Response<Body>, Failure> {
        let mut rest = query.clone();
        let selector = rest.remove("labelSelector").unwrap_or_default();
        refuse_selectors(&rest)?;
        let selector = LabelSelector::parse(&selector)?;
        let limit = match query.get("limit").map(|limit| limit.parse::<usize>()) {
            None | Some(Ok(0)) => usize::MAX,
            Some(Ok(limit)) => limit,
            Some(Err(_)) => return Err(bad_request("invalid limit".to_owned())),
        };
        // The continue token is the (namespace/name) key of the last object returned.
        let after = query.get("continue").filter(|token| !token.is_empty());
        let state = self.lock();
        // One more than the page, to know whether another page follows; only the page
        // is copied.
        let mut items: Vec<(String, Value)> = state
            .list(collection)
            .into_iter()
            .filter(|(key, _)| after.is_none_or(|after| key > after))
            .filter(|(_, object)| selector.matches(object))
            .take(limit.saturating_add(1))
            .map(|(key, object)| (key, object.clone()))
            .collect();
        let mut metadata = json!({ "resourceVersion": state.revision.to_string() });
        if items.len() > limit {
            items.truncate(limit);
            if let Some((last, _)) = items.last() {
                metadata["continue"] = json!(last);
            }
        }
        let list = json!({
            "apiVersion": collection.api_version(),
            "kind": format!("{}List", state.kind(collection)),
            "metadata": metadata,
            "items": items.into_iter().map(|(_, object)| object).collect::<Vec<_>>(),
        });
        Ok(json_response(StatusCode::OK, &list))
    }

    fn watch(
        self: &Arc<Self>,
        collection: Collection,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        if let Err(failure) = refuse_selectors(query) {
            return failure.response();
        }
        let resource_version = query
            .get("resourceVersion")
            .map(String::as_str)
            .unwrap_or_default();
        let send_initial = query
            .get("sendInitialEvents")
            .is_some_and(|value| value == "true");
        let deadline = query
            .get("timeoutSeconds")
            .and_then(|seconds| seconds.parse::<u64>().ok())
            .map(|seconds| tokio::time::Instant::now() + Duration::from_secs(seconds));
        let resumes = !(resource_version.is_empty() || resource_version == "0" || send_initial);
        {
            let mut state = self.lock();
            if let Some(at) = state.expiring.iter().position(|c| *c == collection)
                && resumes
            {
                state.expiring.remove(at);
                let gone = json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("too old resource version: {resource_version} ({})", state.revision),
                    "reason": "Expired",
                    "code": 410,
                });
                return respond(
                    StatusCode::OK,
                    BodyExt::boxed_unsync(Full::new(event_line("ERROR", &gone))),
                );
            }
        }
        // Under one lock: the state to start from and the revision it is at.
        let (mut lines, mut seen) = {
            let state = self.lock();
            let mut lines = Vec::new();
            let seen = if resource_version.is_empty() || resource_version == "0" || send_initial {
                // "Any" version: the current state as ADDED events, then what follows.
                for (_, object) in state.list(&collection) {
                    lines.push(event_line("ADDED", object));
                }
                if send_initial {
                    let bookmark = json!({
                        "apiVersion": collection.api_version(),
                        "kind": state.kind(&collection),
                        "metadata": {
                            "resourceVersion": state.revision.to_string(),
                            "annotations": { "k8s.io/initial-events-end": "true" },
                        },
                    });
                    lines.push(event_line("BOOKMARK", &bookmark));
                }
                state.revision
            } else {
                match resource_version.parse::<u64>() {
                    Ok(revision) => revision,
                    Err(_) => {
                        return bad_request(format!(
                            "invalid resourceVersion {resource_version:?}"
                        ))
                        .response();
                    }
                }
            };
            (lines, seen)
        };
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|value| value == "true");
        let api_version = collection.api_version();
        let kind = self.lock().kind(&collection);
        let (sender, receiver) = mpsc::channel::<Bytes>(64);
        let shared = self.clone();
        let epoch = self.lock().watch_epoch;
        tokio::spawn(async move {
            let mut revisions = shared.revisions.subscribe();
            let mut next_bookmark: Option<tokio::time::Instant> = None;
            // The resourceVersion this watch has reached: where it started, then its last
            // event's, then its last bookmark's.
            let mut sent = seen;
            loop {
                revisions.borrow_and_update();
                let (closed, stalled, every, progress) = {
                    let state = shared.lock();
                    if state.watch_epoch != epoch {
                        return;
                    }
                    (
                        state.closed,
                        state.stalled,
                        state.bookmark_every.filter(|_| bookmarks),
                        state.progress_revision,
                    )
                };
                if stalled && !closed {
                    tokio::select! {
                        changed = revisions.changed() => if changed.is_err() { return },
                        () = sleep_until(deadline) => return,
                        () = sender.closed() => return,
                    }
                    continue;
                }
                let now = tokio::time::Instant::now();
                if let Some(every) = every {
                    let due = *next_bookmark.get_or_insert(now + every);
                    if due <= now {
                        // Only a bookmark that moves the watch forward is sent.
                        if progress > sent {
                            let bookmark = json!({
                                "apiVersion": api_version,
                                "kind": kind,
                                "metadata": { "resourceVersion": progress.to_string() },
                            });
                            lines.push(event_line("BOOKMARK", &bookmark));
                            sent = progress;
                        }
                        next_bookmark = Some(now + every);
                    }
                }
                let closed = {
                    let state = shared.lock();
                    let from = seen;
                    // Changes are kept in revision order.
                    let start = state
                        .changes
                        .partition_point(|change| change.revision <= from);
                    for change in &state.changes[start..] {
                        seen = change.revision;
                        if collection.covers(&change.collection) {
                            lines.push(event_line(change.kind, &change.object));
                            sent = change.revision;
                        }
                    }
                    state.closed
                };
                for line in lines.drain(..) {
                    if sender.send(line).await.is_err() {
                        return;
                    }
                }
                if closed {
                    return;
                }
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    () = sleep_until(deadline) => return,
                    () = sender.closed() => return,
                    () = sleep_until(next_bookmark) => {}
                }
            }
        });
        let frames = futures::stream::unfold(receiver, |mut receiver| async move {
            let line = receiver.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(line)), receiver))
        });
        respond(
            StatusCode::OK,
            BodyExt::boxed_unsync(StreamBody::new(frames)),
        )
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// An equality-based label selector, as lists take it.
struct LabelSelector(Vec<(String, Option<String>, bool)>);

impl LabelSelector {
    fn parse(text: &str) -> Result<Self, Failure> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.contains(" in ") || part.contains(" notin ") || part.contains('(') {
                return Err(bad_request(format!(
                    "the fake API serves no set-based label selector ({part})"
                )));
            }
            let requirement = if let Some((key, value)) = part.split_once("!=") {
                (key.trim().to_owned(), Some(value.trim().to_owned()), false)
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                (key.trim().to_owned(), Some(value.trim().to_owned()), true)
            } else if let Some(key) = part.strip_prefix('!') {
                (key.trim().to_owned(), None, false)
            } else {
                (part.to_owned(), None, true)
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0.iter().all(|(key, value, positive)| {
            let actual = labels.get(key).and_then(Value::as_str);
            match (value, positive) {
                (Some(value), true) => actual == Some(value.as_str()),
                (Some(value), false) => actual != Some(value.as_str()),
                (None, true) => actual.is_some(),
                (None, false) => actual.is_none(),
            }
        })
    }
}

/// Selectors are refused rather than ignored, which would answer wrongly.
fn refuse_selectors(query: &BTreeMap<String, String>) -> Result<(), Failure> {
    match ["labelSelector", "fieldSelector"]
        .into_iter()
        .find(|selector| query.get(*selector).is_some_and(|value| !value.is_empty()))
    {
        Some(selector) => Err(bad_request(format!("the fake API serves no {selector}"))),
        None => Ok(()),
    }
}

fn check_namespace(collection: &Collection, object: &Value) -> Result<(), Failure> {
    match (
        object["metadata"]["namespace"]
            .as_str()
            .filter(|ns| !ns.is_empty()),
        &collection.namespace,
    ) {
        (Some(theirs), Some(ours)) if theirs != ours => Err(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
                .to_owned(),
        )),
        _ => Ok(()),
    }
}

/// Optimistic concurrency: a write naming a resourceVersion must name the current one.
fn check_version(
    collection: &Collection,
    name: &str,
    stored: &Value,
    written: &Value,
) -> Result<(), Failure> {
    let wanted = written["metadata"]["resourceVersion"]
        .as_str()
        .filter(|version| !version.is_empty());
    match wanted {
        Some(wanted) if Some(wanted) != stored["metadata"]["resourceVersion"].as_str() => {
            Err(failure(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                    collection.qualified()
                ),
                Some((collection, name)),
            ))
        }
        _ => Ok(()),
    }
}

fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Responses.

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string()));
    respond(status, BodyExt::boxed_unsync(body))
}

fn respond(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let json = header::HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

/// A `Status` as the API server sends it, with its HTTP status.
struct Failure {
    code: StatusCode,
    status: Value,
}

impl Failure {
    fn response(self) -> Response<Body> {
        json_response(self.code, &self.status)
    }
}

fn failure(
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

fn not_found(collection: &Collection, name: &str) -> Failure {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", collection.qualified()),
        Some((collection, name)),
    )
}

fn bad_request(message: String) -> Failure {
    failure(StatusCode::BAD_REQUEST, "BadRequest", &message, None)
}

fn default_reason(code: StatusCode) -> &'static str {
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

// ---------------------------------------------------------------------------------
// Over TCP.

impl FakeApi {
    /// A kubeconfig whose one context talks to this fake served at `addr` (see
    /// [`FakeApi::serve_http`]), anonymously.
    pub fn kubeconfig(addr: std::net::SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: fake\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n"
        )
    }

    /// Serves this fake over plain HTTP on a loopback port, for a client in another
    /// process (a kubeconfig naming `http://{addr}`); each connection is served until it
    /// closes or the runtime ends. Requests are anonymous: [`FakeApi::partition`] cannot
    /// cut them off.
    pub async fn serve_http(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = self.shared.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            async move {
                let (parts, body) = request.into_parts();
                let response = match body.collect().await {
                    Ok(body) => {
                        let body = kube::client::Body::from(body.to_bytes());
                        shared.handle(None, Request::from_parts(parts, body)).await
                    }
                    Err(error) => bad_request(format!("reading the body: {error}")).response(),
                };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            while let Ok((tcp, _)) = listener.accept().await {
                let connection = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service.clone())
                    .into_owned();
                tokio::spawn(connection);
            }
        });
        addr
    }
}
