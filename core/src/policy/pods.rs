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

use jiff::Timestamp;

use super::{CheckId, Config, Finding, Verdict};
use crate::identity::pod::PodRuntime;
use crate::ledger::{LedgerEntry, second_machine_remedy};

/// A kubelet's `pods/status` write, as admission sees it.
#[derive(Debug, Clone, Default)]
pub struct PodStatusReview {
    /// `spec.nodeName`: the node the pod is bound to, whose kubelet writes.
    pub node: String,
    /// `namespace/name`.
    pub pod: String,
    /// The status before the write (`oldObject`) and after it (`object`).
    pub stored: PodRuntime,
    /// The status after the write (`object`).
    pub written: PodRuntime,
    /// When the kubelet last changed the stored status: its `managedFields` entry for the
    /// status, stamped by the API server.
    pub stored_at: Option<Timestamp>,
    /// The pod is being deleted: its kubelet reports it stopping.
    pub deleting: bool,
}

/// The decision on a pod status write: allowed, nothing judged, unless the ledger
/// records another machine writing as the pod's node (`record`'s pod guard).
pub fn decide_pod_status(
    review: &PodStatusReview,
    record: Option<&LedgerEntry>,
    config: &Config,
    now: Timestamp,
) -> Verdict {
    let Some(guard) = record.and_then(|r| r.pod_guard(now)) else {
        return Verdict::default();
    };
    // A pod on its way out: both machines stop it, and nothing is left to move.
    if review.deleting {
        return Verdict::default();
    }
    let kept_rebooted = match (guard.kept_boot_since, review.stored_at) {
        (Some(boot), Some(stored)) => boot > stored,
        _ => false,
    };
    match follows(&review.stored, &review.written, kept_rebooted) {
        Ok(()) => Verdict::default(),
        Err(why) => Verdict::from_findings([refusal(review, &why)], config),
    }
}

fn refusal(review: &PodStatusReview, why: &Unfollowed) -> Finding {
    let node = &review.node;
    Finding::deny(
        CheckId::TwoKubelets,
        format!(
            "nodeguard [two-kubelets]: another machine is writing as node \"{node}\": its status \
             of pod {} is not the node's machine's ({}); {}",
            review.pod,
            why.describe(),
            second_machine_remedy(node)
        ),
        format!(
            "nodeguard [two-kubelets]: this status of pod {} looks like another machine's writing \
             as node \"{node}\": {}",
            review.pod,
            why.describe()
        ),
    )
}

/// Why a pod status write does not follow from the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfollowed {
    /// The pod's addresses change to another sandbox's.
    Moved {
        /// The addresses stored.
        stored: Vec<String>,
        /// The addresses written.
        written: Vec<String>,
    },
    /// The pod's addresses are dropped while its containers are not replaced.
    SandboxGone {
        /// The addresses stored.
        stored: Vec<String>,
    },
    /// A container the stored status has is reported as never created.
    Dropped {
        /// The container's name, prefixed `init/` or `ephemeral/` for those kinds.
        slot: String,
        /// The stored container's id.
        stored: String,
    },
    /// A container is replaced by one that does not name it as the one it replaced.
    Replaced {
        /// The container's name, prefixed `init/` or `ephemeral/` for those kinds.
        slot: String,
        /// The stored container's id.
        stored: String,
        /// The written container's id.
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

/// Whether `written` brings back, running in a sandbox, each container it changes as the
/// container the stored status names as replaced: a write of the machine whose
/// containers those are. A copy made from an older disk reports its original's earlier
/// containers too, but exited and without a sandbox: that is no return.
fn returns(stored: &PodRuntime, written: &PodRuntime) -> bool {
    if written.ips.is_empty() {
        return false;
    }
    let mut returned = false;
    for container in &written.containers {
        let Some(now) = stored.container(&container.slot) else {
            continue;
        };
        if container.id == now.id {
            continue;
        }
        if container.id.is_none() || container.id != now.replaced || !container.running {
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

    fn pod(ips: &[&str], containers: &[(&str, Option<&str>, Option<&str>)]) -> PodRuntime {
        PodRuntime {
            ips: ips.iter().map(|s| s.to_string()).collect(),
            containers: containers
                .iter()
                .map(|(slot, id, replaced)| ContainerRun {
                    slot: slot.to_string(),
                    id: id.map(str::to_string),
                    replaced: replaced.map(str::to_string),
                    running: id.is_some(),
                })
                .collect(),
        }
    }

    mod decision {
        use super::*;
        use crate::inventory::{LedgerConflict, LedgerEntry};
        use crate::ledger::RefusedEntry;
        use crate::policy::{Config, Outcome};

        fn at(s: &str) -> Timestamp {
            s.parse().unwrap()
        }

        fn moved() -> PodStatusReview {
            PodStatusReview {
                node: "worker-1".into(),
                pod: "shop/web-5bd69c4696-45hgf".into(),
                stored: pod(
                    &["10.244.2.3"],
                    &[("app", Some("containerd://d5048065130f5"), None)],
                ),
                written: pod(
                    &["10.244.2.6"],
                    &[(
                        "app",
                        Some("containerd://5151ae7fc38a1"),
                        Some("containerd://d5048065130f5"),
                    )],
                ),
                stored_at: Some(at("2026-12-06T22:04:07Z")),
                deleting: false,
            }
        }

        fn in_conflict() -> LedgerEntry {
            let mut entry = LedgerEntry::named("worker-1");
            entry.kept_boot_since = Some(at("2026-12-01T08:00:00Z"));
            entry.conflict = Some(Box::new(LedgerConflict {
                check: "two-kubelets".into(),
                kept_boot: "32b0070a".into(),
                refused_boot: "42b0070a".into(),
                detected: at("2026-12-06T22:04:19Z"),
                message: "".into(),
            }));
            entry
        }

        const NOW: &str = "2026-12-06T22:04:30Z";

        #[test]
        fn a_node_one_machine_writes_is_never_judged() {
            let entry = LedgerEntry::named("worker-1");
            let verdict = decide_pod_status(&moved(), Some(&entry), &Config::default(), at(NOW));
            assert_eq!(verdict.outcome(), Outcome::Allowed);
            assert!(verdict.findings.is_empty());
            let verdict = decide_pod_status(&moved(), None, &Config::default(), at(NOW));
            assert!(verdict.findings.is_empty());
        }

        #[test]
        fn on_a_node_in_conflict_the_other_machines_sandbox_is_refused_in_one_line() {
            let verdict =
                decide_pod_status(&moved(), Some(&in_conflict()), &Config::default(), at(NOW));
            assert_eq!(verdict.outcome(), Outcome::Denied);
            assert_eq!(
                verdict.denial_message().unwrap(),
                "nodeguard [two-kubelets]: another machine is writing as node \"worker-1\": its status of \
                 pod shop/web-5bd69c4696-45hgf is not the node's machine's (it moves the pod from \
                 10.244.2.3 to 10.244.2.6, another sandbox); stop this machine's kubelet and give it its \
                 own identity (hostname, rm /etc/machine-id && systemd-machine-id-setup, remove \
                 /var/lib/kubelet/pki/kubelet-client-* and /etc/kubernetes/kubelet.conf, re-join with a \
                 bootstrap token), then run nodeguard forget worker-1"
            );
        }

        #[test]
        fn a_pod_being_deleted_or_stored_before_the_kept_machine_rebooted_is_let_through() {
            let mut deleting = moved();
            deleting.deleting = true;
            assert!(
                decide_pod_status(&deleting, Some(&in_conflict()), &Config::default(), at(NOW))
                    .allowed()
            );
            let mut rebooted = in_conflict();
            rebooted.kept_boot_since = Some(at("2026-12-06T22:04:20Z"));
            assert!(
                decide_pod_status(&moved(), Some(&rebooted), &Config::default(), at(NOW)).allowed()
            );
        }

        #[test]
        fn a_refused_machine_arms_the_guard_while_it_is_still_refused() {
            let mut entry = LedgerEntry::named("worker-1");
            entry.refused = vec![RefusedEntry {
                machine_id: None,
                system_uuid: None,
                provider_id: None,
                boot_id: None,
                check: "name-takeover".into(),
                first_refused: at("2026-12-06T22:04:09Z"),
                last_refused: at("2026-12-06T22:04:09Z"),
                node_resource_version: None,
                node_heartbeat: None,
                proven: None,
            }]
            .into();
            let config = Config::default();
            assert!(!decide_pod_status(&moved(), Some(&entry), &config, at(NOW)).allowed());
            assert_eq!(
                entry.pod_guard(at(NOW)).unwrap().since,
                at("2026-12-06T22:04:09Z")
            );
            // Not refused for more than two refresh intervals: the machine is gone.
            assert!(
                decide_pod_status(&moved(), Some(&entry), &config, at("2026-12-06T22:30:00Z"))
                    .allowed()
            );
        }
    }

    #[test]
    fn a_container_restarted_by_its_kubelet_follows() {
        let stored = pod(&["10.244.2.5"], &[("app", Some("containerd://a1"), None)]);
        let restarted = pod(
            &["10.244.2.5"],
            &[("app", Some("containerd://a2"), Some("containerd://a1"))],
        );
        assert_eq!(follows(&stored, &restarted, false), Ok(()));
    }

    #[test]
    fn another_runtimes_container_does_not() {
        let stored = pod(&["10.244.2.5"], &[("app", Some("containerd://a1"), None)]);
        let other = pod(&["10.244.2.5"], &[("app", Some("containerd://b1"), None)]);
        let refused = follows(&stored, &other, false).unwrap_err();
        assert_eq!(
            refused.describe(),
            "it replaces container app (a1) by b1, which does not name it as the container it replaced"
        );
    }

    #[test]
    fn a_report_without_the_stored_containers_does_not() {
        let stored = pod(&["10.244.2.5"], &[("app", Some("containerd://a1"), None)]);
        let creating = pod(&["10.244.2.5"], &[("app", None, None)]);
        assert!(matches!(
            follows(&stored, &creating, false),
            Err(Unfollowed::Dropped { .. })
        ));
        let gone = pod(&[], &[("app", Some("containerd://a1"), None)]);
        assert_eq!(
            follows(&stored, &gone, false).unwrap_err().describe(),
            "it reports the pod's sandbox (10.244.2.5) gone"
        );
    }

    #[test]
    fn another_sandbox_does_not_unless_the_kept_machine_rebooted() {
        let stored = pod(&["10.244.2.5"], &[("app", Some("containerd://a1"), None)]);
        let moved = pod(
            &["10.244.2.9"],
            &[("app", Some("containerd://c1"), Some("containerd://a1"))],
        );
        assert!(matches!(
            follows(&stored, &moved, false),
            Err(Unfollowed::Moved { .. })
        ));
        assert_eq!(follows(&stored, &moved, true), Ok(()));
    }

    #[test]
    fn the_first_start_and_an_unchanged_report_follow() {
        let pending = pod(&[], &[("app", None, None)]);
        let started = pod(&["10.244.2.5"], &[("app", Some("containerd://a1"), None)]);
        assert_eq!(follows(&pending, &started, false), Ok(()));
        assert_eq!(follows(&started, &started, false), Ok(()));
    }

    #[test]
    fn the_containers_a_stored_status_replaced_coming_back_are_the_originals() {
        let copys = pod(
            &["10.244.2.6"],
            &[("app", Some("containerd://b1"), Some("containerd://a1"))],
        );
        let originals = pod(
            &["10.244.2.3"],
            &[("app", Some("containerd://a1"), Some("containerd://a0"))],
        );
        assert_eq!(follows(&copys, &originals, false), Ok(()));
        // Never the other way round.
        assert!(follows(&originals, &copys, false).is_err());
    }

    #[test]
    fn a_copy_of_an_older_disk_reporting_the_originals_earlier_container_is_no_return() {
        // The original restarted its container (a0 → a1) after the disk was copied: the
        // copy's runtime knows a0, exited, and reports it first, without a sandbox.
        let originals = pod(
            &["10.244.2.3"],
            &[("app", Some("containerd://a1"), Some("containerd://a0"))],
        );
        let mut stale = pod(&[], &[("app", Some("containerd://a0"), None)]);
        stale.containers[0].running = false;
        assert!(matches!(
            follows(&originals, &stale, false),
            Err(Unfollowed::SandboxGone { .. })
        ));
    }
}
