//! What a pod's status says about the machine running it: its sandbox's addresses and,
//! per container, the runtime's container id, its restart count and the container it
//! replaced (`lastState.terminated.containerID`). A kubelet's reports of one pod form a
//! chain: each new container names the one before it, and the addresses change only
//! with a new sandbox. Decoded only for the pods of a node that another machine writes
//! as.

use serde::Deserialize;

/// The runtime facts of one pod's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRuntime {
    /// `status.podIPs` (or `status.podIP` alone), in the order written; empty while the
    /// pod has no ready sandbox.
    pub ips: Vec<String>,
    pub containers: Vec<ContainerRun>,
}

/// One container of a pod's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRun {
    /// The container's name, prefixed `init/` or `ephemeral/` for those kinds.
    pub slot: String,
    /// `containerID`; `None` when the kubelet reports none (not created yet).
    pub id: Option<String>,
    pub restart_count: i64,
    /// `lastState.terminated.containerID`: the container this one replaced.
    pub replaced: Option<String>,
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
                    restart_count: c.restart_count,
                    replaced: c
                        .last_state
                        .terminated
                        .and_then(|t| non_empty(t.container_id)),
                }
            }));
        }
        Ok(PodRuntime { ips, containers })
    }

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
    restart_count: i64,
    last_state: LastStateDoc,
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
        assert_eq!(
            (app.restart_count, app.replaced.as_deref()),
            (1, Some("containerd://b0"))
        );
        let side = pod.container("side").unwrap();
        assert_eq!((side.id.as_deref(), side.replaced.as_deref()), (None, None));
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
