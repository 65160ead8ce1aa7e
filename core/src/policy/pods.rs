//! Whose write is a pod's status write, on a node that two machines write as.
//!
//! Both kubelets hold the node's credentials and write the same pods, each reporting
//! its own runtime. Measured with a copy of a containerd machine's whole disk
//! (`core/tests/pod_writes.rs`): the copy's kubelet first reports the pods' containers
//! as exited and their addresses gone (its runtime knows the original's containers from
//! the copied disk but runs none of them), then its own sandboxes: other addresses, new
//! containers naming the original's as the ones they replaced. A running machine's own
//! reports do neither: its pods keep their sandboxes (and addresses) until it reboots,
//! and a container it restarts names the one it replaced. So, with the stored status the
//! kept machine's, a write that drops or moves the pod's sandbox while the kept machine
//! has not rebooted is the other machine's, and so is one that replaces a container by
//! one that does not name it.
//!
//! The other way round, when the other machine's status is stored (it wrote before the
//! guard armed), the kept machine's next write brings back the very containers the
//! stored status names as replaced: no kubelet returns to a container it replaced, so
//! that write is the original's, restoring its pods.
//!
//! Judged only for a node with a second machine (the shell arms the guard): a node one
//! machine writes never reaches this code.

use crate::identity::pod::PodRuntime;

/// Why a pod status write does not follow from the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfollowed {
    /// The pod's addresses change to another sandbox's.
    Moved {
        stored: Vec<String>,
        written: Vec<String>,
    },
    /// The pod's addresses are dropped while its containers are not replaced.
    SandboxGone { stored: Vec<String> },
    /// A container the stored status has is reported as never created.
    Dropped { slot: String, stored: String },
    /// A container is replaced by one that does not name it as the one it replaced.
    Replaced {
        slot: String,
        stored: String,
        written: String,
    },
}

impl Unfollowed {
    /// What in the write shows it, for the refusal.
    pub fn describe(&self) -> String {
        match self {
            Unfollowed::Moved { stored, written } => format!(
                "it moves the pod from {} to {}, another sandbox",
                stored.join(","),
                written.join(",")
            ),
            Unfollowed::SandboxGone { stored } => {
                format!("it reports the pod's sandbox ({}) gone", stored.join(","))
            }
            Unfollowed::Dropped { slot, stored } => format!(
                "it reports container {slot} ({}) as not created",
                short(stored)
            ),
            Unfollowed::Replaced {
                slot,
                stored,
                written,
            } => format!(
                "it replaces container {slot} ({}) by {}, which does not name it as the container it replaced",
                short(stored),
                short(written)
            ),
        }
    }
}

/// A runtime's id without its scheme, to 12 characters, as `crictl` shows it.
pub fn short(id: &str) -> &str {
    let bare = id.split_once("://").map_or(id, |(_, rest)| rest);
    bare.get(..12).unwrap_or(bare)
}

/// Whether `written` can be the kept machine's next report of a pod whose stored status
/// is `stored`.
///
/// `kept_rebooted`: the kept machine booted since `stored` was written. A reboot makes
/// new sandboxes, and a runtime that lost its state reports containers without the ones
/// they replaced, so after one nothing holds the next write to the stored status.
pub fn follows(
    stored: &PodRuntime,
    written: &PodRuntime,
    kept_rebooted: bool,
) -> Result<(), Unfollowed> {
    if kept_rebooted || returns(stored, written) {
        return Ok(());
    }
    if !stored.ips.is_empty() && stored.ips != written.ips {
        if written.ips.is_empty() {
            return Err(Unfollowed::SandboxGone {
                stored: stored.ips.clone(),
            });
        }
        return Err(Unfollowed::Moved {
            stored: stored.ips.clone(),
            written: written.ips.clone(),
        });
    }
    for container in &written.containers {
        let Some(before) = stored
            .container(&container.slot)
            .and_then(|c| c.id.as_deref())
        else {
            // Not created when stored: its first start.
            continue;
        };
        match container.id.as_deref() {
            Some(id) if id == before || container.replaced.as_deref() == Some(before) => {}
            None => {
                return Err(Unfollowed::Dropped {
                    slot: container.slot.clone(),
                    stored: before.to_string(),
                });
            }
            Some(id) => {
                return Err(Unfollowed::Replaced {
                    slot: container.slot.clone(),
                    stored: before.to_string(),
                    written: id.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Whether `written` brings back, for each container it changes, the container the
/// stored status names as replaced: a write of the machine whose containers those were.
fn returns(stored: &PodRuntime, written: &PodRuntime) -> bool {
    let mut returned = false;
    for container in &written.containers {
        let Some(now) = stored.container(&container.slot) else {
            continue;
        };
        if container.id == now.id {
            continue;
        }
        if container.id.is_none() || container.id != now.replaced {
            return false;
        }
        returned = true;
    }
    returned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::pod::ContainerRun;

    fn pod(ips: &[&str], containers: &[(&str, Option<&str>, i64, Option<&str>)]) -> PodRuntime {
        PodRuntime {
            ips: ips.iter().map(|s| s.to_string()).collect(),
            containers: containers
                .iter()
                .map(|(slot, id, restarts, replaced)| ContainerRun {
                    slot: slot.to_string(),
                    id: id.map(str::to_string),
                    restart_count: *restarts,
                    replaced: replaced.map(str::to_string),
                })
                .collect(),
        }
    }

    #[test]
    fn a_container_restarted_by_its_kubelet_follows() {
        let stored = pod(
            &["10.244.2.5"],
            &[("app", Some("containerd://a1"), 0, None)],
        );
        let restarted = pod(
            &["10.244.2.5"],
            &[("app", Some("containerd://a2"), 1, Some("containerd://a1"))],
        );
        assert_eq!(follows(&stored, &restarted, false), Ok(()));
    }

    #[test]
    fn another_runtimes_container_does_not() {
        let stored = pod(
            &["10.244.2.5"],
            &[("app", Some("containerd://a1"), 0, None)],
        );
        let other = pod(
            &["10.244.2.5"],
            &[("app", Some("containerd://b1"), 1, None)],
        );
        let refused = follows(&stored, &other, false).unwrap_err();
        assert_eq!(
            refused.describe(),
            "it replaces container app (a1) by b1, which does not name it as the container it replaced"
        );
    }

    #[test]
    fn a_report_without_the_stored_containers_does_not() {
        let stored = pod(
            &["10.244.2.5"],
            &[("app", Some("containerd://a1"), 0, None)],
        );
        let creating = pod(&["10.244.2.5"], &[("app", None, 1, None)]);
        assert!(matches!(
            follows(&stored, &creating, false),
            Err(Unfollowed::Dropped { .. })
        ));
        let gone = pod(&[], &[("app", Some("containerd://a1"), 0, None)]);
        assert_eq!(
            follows(&stored, &gone, false).unwrap_err().describe(),
            "it reports the pod's sandbox (10.244.2.5) gone"
        );
    }

    #[test]
    fn another_sandbox_does_not_unless_the_kept_machine_rebooted() {
        let stored = pod(
            &["10.244.2.5"],
            &[("app", Some("containerd://a1"), 0, None)],
        );
        let moved = pod(
            &["10.244.2.9"],
            &[("app", Some("containerd://c1"), 1, Some("containerd://a1"))],
        );
        assert!(matches!(
            follows(&stored, &moved, false),
            Err(Unfollowed::Moved { .. })
        ));
        assert_eq!(follows(&stored, &moved, true), Ok(()));
    }

    #[test]
    fn the_first_start_and_an_unchanged_report_follow() {
        let pending = pod(&[], &[("app", None, 0, None)]);
        let started = pod(
            &["10.244.2.5"],
            &[("app", Some("containerd://a1"), 0, None)],
        );
        assert_eq!(follows(&pending, &started, false), Ok(()));
        assert_eq!(follows(&started, &started, false), Ok(()));
    }

    #[test]
    fn the_containers_a_stored_status_replaced_coming_back_are_the_originals() {
        let copys = pod(
            &["10.244.2.6"],
            &[("app", Some("containerd://b1"), 2, Some("containerd://a1"))],
        );
        let originals = pod(
            &["10.244.2.3"],
            &[("app", Some("containerd://a1"), 1, Some("containerd://a0"))],
        );
        assert_eq!(follows(&copys, &originals, false), Ok(()));
        // Never the other way round.
        assert!(follows(&originals, &copys, false).is_err());
    }
}
