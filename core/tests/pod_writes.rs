//! `policy::pods::follows` replayed on what real kubelets wrote (tests/e2e's pods
//! suite, `pod-status-writes.json`: the API server's audit log of every pods/status write
//! of one node's kubelets, each attributed by its source address): a Deployment's pods on
//! a machine with containerd, one container killed and restarted by its kubelet, then a
//! copy of the machine's whole disk (containerd's state and the CNI allocations
//! included) booted beside it for a minute, then the original rebooted.
//!
//! Replayed as if the guard were armed throughout, each write judged against what the
//! guard would have let be stored: every write of the original follows, none of the
//! copy's does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use nodeguard_core::identity::pod::PodRuntime;
use nodeguard_core::policy::pods::follows;
use serde::Deserialize;

#[derive(Deserialize)]
struct Write {
    phase: String,
    from: String,
    pod: String,
    status: Option<serde_json::Value>,
}

#[derive(Default, Debug)]
struct Tally {
    original_followed: usize,
    original_refused: Vec<String>,
    copy_followed: Vec<String>,
    copy_refused: usize,
}

fn replay(recorded: &str) -> Tally {
    let writes: Vec<Write> = serde_json::from_str(recorded).unwrap();
    // Per pod: what is stored, and whether it was stored before the original rebooted.
    let mut stored: BTreeMap<String, (PodRuntime, bool)> = BTreeMap::new();
    let mut tally = Tally::default();
    for (i, w) in writes.iter().enumerate() {
        let Some(status) = &w.status else { continue };
        let written = PodRuntime::from_status(status).unwrap();
        let rebooting = w.phase == "reboot";
        let (before, before_reboot) = stored.get(&w.pod).cloned().unwrap_or_default();
        let kept_rebooted = rebooting && before_reboot;
        let verdict = follows(&before, &written, kept_rebooted);
        match (w.from.as_str(), &verdict) {
            ("original", Ok(())) => tally.original_followed += 1,
            ("original", Err(why)) => tally.original_refused.push(format!(
                "#{i} {} {}: {}",
                w.phase,
                w.pod,
                why.describe()
            )),
            ("copy", Ok(())) => tally
                .copy_followed
                .push(format!("#{i} {} {}", w.phase, w.pod)),
            ("copy", Err(_)) => tally.copy_refused += 1,
            (who, _) => panic!("write #{i} from {who}"),
        }
        if verdict.is_ok() {
            stored.insert(w.pod.clone(), (written, !rebooting));
        }
    }
    tally
}

#[test]
fn every_write_of_the_original_follows_and_none_of_the_copys() {
    let tally = replay(include_str!(
        "fixtures/pod-status-writes-copy-and-reboot.json"
    ));
    assert!(
        tally.original_refused.is_empty(),
        "{:#?}",
        tally.original_refused
    );
    assert!(tally.copy_followed.is_empty(), "{:#?}", tally.copy_followed);
    // The recording has them all: the restart, the copy's minute, the reboot.
    assert_eq!((tally.original_followed, tally.copy_refused), (24, 19));
}

/// Armed only once the copy had written (as when its first identity-bearing node write
/// comes ten seconds after its pods'): its status is stored, and the original's next
/// write, bringing back its containers, restores the pods; none of the copy's after.
#[test]
fn armed_after_the_copy_wrote_the_originals_next_write_restores_its_pods() {
    let writes: Vec<Write> = serde_json::from_str(include_str!(
        "fixtures/pod-status-writes-copy-and-reboot.json"
    ))
    .unwrap();
    let copy_phase: Vec<&Write> = writes.iter().filter(|w| w.phase == "copy").collect();
    // Unguarded, every write is stored, until the original's first write after the
    // copy's first sandboxes: then armed.
    let first_copy_sandbox = copy_phase
        .iter()
        .position(|w| {
            w.from == "copy"
                && !PodRuntime::from_status(w.status.as_ref().unwrap())
                    .unwrap()
                    .ips
                    .is_empty()
        })
        .unwrap();
    let mut stored: BTreeMap<&str, PodRuntime> = BTreeMap::new();
    for w in writes.iter().take_while(|w| w.phase == "restart") {
        stored.insert(
            &w.pod,
            PodRuntime::from_status(w.status.as_ref().unwrap()).unwrap(),
        );
    }
    let (before, after) = copy_phase.split_at(first_copy_sandbox + 2);
    for w in before {
        stored.insert(
            &w.pod,
            PodRuntime::from_status(w.status.as_ref().unwrap()).unwrap(),
        );
    }
    let mut refused_copy = 0;
    for w in after {
        let written = PodRuntime::from_status(w.status.as_ref().unwrap()).unwrap();
        let verdict = follows(&stored[w.pod.as_str()], &written, false);
        match w.from.as_str() {
            "original" => assert_eq!(verdict, Ok(()), "{}", w.pod),
            _ => {
                assert!(verdict.is_err(), "the copy's write of {} followed", w.pod);
                refused_copy += 1;
            }
        }
        if verdict.is_ok() {
            stored.insert(&w.pod, written);
        }
    }
    assert_eq!(refused_copy, 15);
}
