//! The store: collections of JSON objects, one resourceVersion counter, the log watches replay, and the faults and hooks tests inject.

use super::*;

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Bumped on every change, waking the watches.
    pub(super) revisions: watch::Sender<u64>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) collections: BTreeMap<Collection, BTreeMap<String, Value>>,
    /// Kinds learned from stored objects, by (group, plural).
    pub(super) kinds: BTreeMap<(String, String), String>,
    pub(super) revision: u64,
    pub(super) uids: u64,
    pub(super) changes: Vec<Change>,
    pub(super) log: Vec<LogEntry>,
    pub(super) faults: Vec<Fault>,
    pub(super) hooks: Vec<Hook>,
    pub(super) partitioned: Vec<String>,
    pub(super) closed: bool,
    /// Watches that asked for bookmarks are considered for one this often (the API
    /// server: a minute).
    pub(super) bookmark_every: Option<Duration>,
    /// The revision the last progress notification carried.
    pub(super) progress_revision: u64,
    /// While set, open watches send nothing and new requests are not answered: an API
    /// server that stopped answering mid-watch.
    pub(super) stalled: bool,
    /// Bumped to end every open watch.
    pub(super) watch_epoch: u64,
    /// Collections whose next resumed watch is told its resourceVersion is too old.
    pub(super) expiring: Vec<Collection>,
}

pub(super) struct Change {
    pub(super) revision: u64,
    pub(super) collection: Collection,
    pub(super) kind: &'static str,
    pub(super) object: Value,
}

pub(super) struct LogEntry {
    pub(super) method: Method,
    pub(super) target: String,
    pub(super) status: Option<StatusCode>,
}

#[derive(Clone, Copy)]
pub(super) enum Effect {
    Fail(u16),
    Hang,
}

pub(super) struct Fault {
    pub(super) method: Method,
    pub(super) path_prefix: String,
    pub(super) effect: Effect,
    pub(super) once: bool,
}

pub(super) struct Hook {
    pub(super) collection: Collection,
    pub(super) name: String,
    pub(super) change: Box<dyn FnOnce(&mut Value) + Send>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn store(&self, collection: &Collection, name: &str, object: Value) -> Value {
        let stored = self.lock().put(collection, name, object);
        self.notify();
        stored
    }
}

impl State {
    pub(super) fn object(&self, collection: &Collection, name: &str) -> Option<&Value> {
        self.collections.get(collection)?.get(name)
    }

    pub(super) fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Stores `object` as `name` with a new resourceVersion, keeping the uid and creation
    /// time of the object it replaces, and records the change.
    pub(super) fn put(&mut self, collection: &Collection, name: &str, mut object: Value) -> Value {
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

    pub(super) fn remove(&mut self, collection: &Collection, name: &str) -> Option<Value> {
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
    pub(super) fn list(&self, collection: &Collection) -> Vec<(String, &Value)> {
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

    pub(super) fn kind(&self, collection: &Collection) -> String {
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
    pub(super) fn take_fault(&mut self, method: &Method, path: &str) -> Option<Effect> {
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
    pub(super) fn run_hook(&mut self, collection: &Collection, name: &str) {
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
