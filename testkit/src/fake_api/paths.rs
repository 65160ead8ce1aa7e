//! Paths: which collection or object a URL names, and its query.

use super::*;

/// A collection: `/api/v1[/namespaces/{ns}]/{plural}` or
/// `/apis/{group}/{version}[/namespaces/{ns}]/{plural}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Collection {
    pub(super) group: String,
    pub(super) version: String,
    pub(super) namespace: Option<String>,
    pub(super) plural: String,
}

impl Collection {
    pub(super) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `leases.coordination.k8s.io`, or `pods` for the core group, as in API messages.
    pub(super) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether a list of `self` includes objects stored in `stored`.
    pub(super) fn covers(&self, stored: &Collection) -> bool {
        self.group == stored.group
            && self.version == stored.version
            && self.plural == stored.plural
            && (self.namespace.is_none() || self.namespace == stored.namespace)
    }
}

pub(super) enum Target {
    Collection(Collection),
    Object(Collection, String),
    Subresource(Collection, String, String),
}

pub(super) fn parse_path(path: &str) -> Option<Target> {
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

pub(super) fn object_path(path: &str) -> (Collection, String) {
    match parse_path(path) {
        Some(Target::Object(collection, name)) => (collection, name),
        _ => panic!("not an object path: {path}"),
    }
}

pub(super) fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
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
pub(super) fn percent_decode(text: &str) -> String {
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
