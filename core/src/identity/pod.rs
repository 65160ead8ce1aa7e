//! What a pod's status says about the machine running it: its sandbox's addresses and,
//! per container, the runtime's container id, its restart count and the container it
//! replaced (`lastState.terminated.containerID`). A kubelet's reports of one pod form a
//! chain: each new container names the one before it, and the addresses change only
//! with a new sandbox. Decoded only for the pods of a node that another machine writes
//! as.

use jiff::Timestamp;
use serde::Deserialize;

/// A Pod as a review carries it, read only as far as the pod guard needs: which node,
/// whether it is being deleted, when its kubelet last changed its status, and the
/// status itself (decoded into [`PodRuntime`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodDoc {
    /// `v1` in a review.
    pub api_version: Option<String>,
    /// `Pod` in a review.
    pub kind: Option<String>,
    /// `metadata`: name, namespace, deletion and who last wrote the status.
    pub metadata: PodMetaDoc,
    /// `spec`: the node the pod is bound to.
    pub spec: PodSpecDoc,
    /// `status`, undecoded until [`PodRuntime::from_status`] reads it for a judged write.
    pub status: serde_json::Value,
}

/// The `metadata` of a Pod, as far as the pod guard reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodMetaDoc {
    /// `metadata.name`: the pod's name.
    pub name: String,
    /// `metadata.namespace`: the pod's namespace.
    pub namespace: String,
    /// `metadata.deletionTimestamp`: set once the pod is being deleted.
    pub deletion_timestamp: Option<String>,
    /// `metadata.managedFields`: who wrote which part of the pod, and when.
    pub managed_fields: Vec<ManagedFieldsDoc>,
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ManagedFieldsDoc {
    /// `manager`: the writer, e.g. `kubelet`.
    pub manager: String,
    /// `subresource`: `status` for writes of the status; empty for the pod itself.
    pub subresource: String,
    /// `time`: when the API server last recorded a change by this manager.
    pub time: Option<Timestamp>,
}

/// The `spec` of a Pod, as far as the pod guard reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpecDoc {
    /// `spec.nodeName`: the node the pod is bound to; empty while unscheduled.
    pub node_name: String,
}

impl PodDoc {
    /// When the kubelet last changed the pod's status: the time the API server stamped
    /// on the kubelet's `managedFields` entry for the status.
    pub fn status_changed_at(&self) -> Option<Timestamp> {
        self.metadata
            .managed_fields
            .iter()
            .filter(|m| m.manager == "kubelet" && m.subresource == "status")
            .filter_map(|m| m.time)
            .max()
    }
}

/// The runtime facts of one pod's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRuntime {
    /// `status.podIPs` (or `status.podIP` alone), in the order written; empty while the
    /// pod has no ready sandbox.
    pub ips: Vec<String>,
    /// Init, regular and ephemeral containers, in that order.
    pub containers: Vec<ContainerRun>,
}

/// One container of a pod's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRun {
    /// The container's name, prefixed `init/` or `ephemeral/` for those kinds.
    pub slot: String,
    /// `containerID`; `None` when the kubelet reports none (not created yet).
    pub id: Option<String>,
    /// `lastState.terminated.containerID`: the container this one replaced.
    pub replaced: Option<String>,
    /// `state.running` is set: the container runs.
    pub running: bool,
}

impl PodRuntime {
    /// Decodes a pod's `status` object (or `null`).
    pub fn from_status(status: &serde_json::Value) -> Result<Self, serde_json::Error> {
        if status.is_null() {
            return Ok(PodRuntime::default());
        }
        let doc = StatusDoc::deserialize(status)?;
        let mut ips: Vec<String> = doc
            .pod_ips
            .into_iter()
            .filter_map(|p| non_empty(p.ip))
            .collect();
        if ips.is_empty() {
            ips.extend(non_empty(doc.pod_ip));
        }
        let mut containers = Vec::new();
        for (prefix, list) in [
            ("init/", doc.init_container_statuses),
            ("", doc.container_statuses),
            ("ephemeral/", doc.ephemeral_container_statuses),
        ] {
            containers.extend(list.into_iter().map(|c| {
                ContainerRun {
                    slot: format!("{prefix}{}", c.name),
                    id: non_empty(c.container_id),
                    replaced: c
                        .last_state
                        .terminated
                        .and_then(|t| non_empty(t.container_id)),
                    running: c.state.running.is_some(),
                }
            }));
        }
        Ok(PodRuntime { ips, containers })
    }

    /// The container in `slot` (see [`ContainerRun::slot`]); `None` if there is none.
    pub fn container(&self, slot: &str) -> Option<&ContainerRun> {
        self.containers.iter().find(|c| c.slot == slot)
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct StatusDoc {
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Vec<IpDoc>,
    container_statuses: Vec<ContainerDoc>,
    init_container_statuses: Vec<ContainerDoc>,
    ephemeral_container_statuses: Vec<ContainerDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IpDoc {
    ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ContainerDoc {
    name: String,
    #[serde(rename = "containerID")]
    container_id: Option<String>,
    state: StateDoc,
    last_state: LastStateDoc,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StateDoc {
    running: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LastStateDoc {
    terminated: Option<TerminatedDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TerminatedDoc {
    #[serde(rename = "containerID")]
    container_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_addresses_containers_and_what_each_replaced() {
        let status = json!({
            "podIP": "10.244.2.7",
            "podIPs": [{"ip": "10.244.2.7"}, {"ip": "fd00:10:244:2::7"}],
            "initContainerStatuses": [{"name": "setup", "containerID": "containerd://aa", "restartCount": 0}],
            "containerStatuses": [
                {"name": "app", "containerID": "containerd://bb", "restartCount": 1,
                 "lastState": {"terminated": {"exitCode": 137, "containerID": "containerd://b0"}}},
                {"name": "side", "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}},
                 "lastState": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown"}}}
            ]
        });
        let pod = PodRuntime::from_status(&status).unwrap();
        assert_eq!(pod.ips, ["10.244.2.7", "fd00:10:244:2::7"]);
        assert_eq!(
            pod.container("init/setup").unwrap().id.as_deref(),
            Some("containerd://aa")
        );
        let app = pod.container("app").unwrap();
        assert_eq!(app.replaced.as_deref(), Some("containerd://b0"));
        let side = pod.container("side").unwrap();
        assert_eq!((side.id.as_deref(), side.replaced.as_deref()), (None, None));
    }

    #[test]
    fn reads_the_node_and_when_the_kubelet_last_changed_the_status() {
        let pod: PodDoc = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "time": "2026-12-06T22:04:01Z"},
                {"manager": "kubelet", "operation": "Update", "subresource": "status", "time": "2026-12-06T22:04:07Z"}
            ]},
            "spec": {"nodeName": "worker-1", "containers": [{"name": "app", "image": "nginx"}]},
            "status": {"podIP": "10.244.2.3"}
        }))
        .unwrap();
        assert_eq!(pod.spec.node_name, "worker-1");
        assert_eq!(
            pod.status_changed_at(),
            Some("2026-12-06T22:04:07Z".parse().unwrap())
        );
        assert_eq!(
            PodRuntime::from_status(&pod.status).unwrap().ips,
            ["10.244.2.3"]
        );
    }

    #[test]
    fn a_pod_without_sandbox_or_status_has_no_addresses() {
        assert_eq!(
            PodRuntime::from_status(&json!({"podIP": ""})).unwrap().ips,
            Vec::<String>::new()
        );
        assert_eq!(
            PodRuntime::from_status(&serde_json::Value::Null).unwrap(),
            PodRuntime::default()
        );
        assert!(PodRuntime::from_status(&json!({"containerStatuses": "x"})).is_err());
    }
}
