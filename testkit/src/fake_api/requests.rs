//! Requests: get, list, create, update, merge patch, delete and watch, answered as the API server answers them.

use super::*;

impl Shared {
    pub(super) async fn handle(
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

    pub(super) fn serve(
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

    pub(super) fn notify(&self) {
        let revision = self.lock().revision;
        self.revisions.send_replace(revision);
    }

    pub(super) fn create(
        &self,
        collection: &Collection,
        object: Value,
    ) -> Result<Response<Body>, Failure> {
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

    pub(super) fn replace(
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
    pub(super) fn patch(
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

    pub(super) fn list(
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

    pub(super) fn watch(
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

pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

pub(super) fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// An equality-based label selector, as lists take it.
pub(super) struct LabelSelector(pub(super) Vec<(String, Option<String>, bool)>);

impl LabelSelector {
    pub(super) fn parse(text: &str) -> Result<Self, Failure> {
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

    pub(super) fn matches(&self, object: &Value) -> bool {
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
pub(super) fn refuse_selectors(query: &BTreeMap<String, String>) -> Result<(), Failure> {
    match ["labelSelector", "fieldSelector"]
        .into_iter()
        .find(|selector| query.get(*selector).is_some_and(|value| !value.is_empty()))
    {
        Some(selector) => Err(bad_request(format!("the fake API serves no {selector}"))),
        None => Ok(()),
    }
}

pub(super) fn check_namespace(collection: &Collection, object: &Value) -> Result<(), Failure> {
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
pub(super) fn check_version(
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

pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
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
