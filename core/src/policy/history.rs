//! Decisions over time: the webhook's verdicts and the recorder's records played
//! together, event after event, as a cluster lives them. What one snapshot cannot show:
//! a refused clone that waits for its original's reboot, a node whose clock is off, a
//! pool that changes its machine-id together, a node deleted and joining again.

use jiff::{SignedDuration, Timestamp};

use crate::identity::{NodeClaim, NodeDoc};
use crate::inventory::Inventory;
use crate::ledger::{Evidence, NodeObservation, Record, RecordMeta};
use crate::policy::sharing::{self, Judging};
use crate::policy::{CheckId, Config, NodeReview, Operation, Outcome, Verdict, decide_node};
use crate::sample::{self as kubelet, Machine};

const NODE_UID: &str = "6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f";

fn start() -> Timestamp {
    "2026-12-01T08:00:00Z".parse().unwrap()
}

/// One node name as the API server stores it, with its ledger record, and what one
/// replica of nodeguard sees of it: the inventory and its own clock.
struct Cluster {
    /// Every Node as stored, by name.
    nodes: Vec<NodeClaim>,
    records: Vec<(String, Record)>,
    inventory: Inventory,
    config: Config,
    now: Timestamp,
    version: u64,
    /// Each Node's creation, before the ledger existed or not.
    created: Timestamp,
}

impl Cluster {
    fn new(config: Config) -> Self {
        Self {
            nodes: Vec::new(),
            records: Vec::new(),
            inventory: Inventory::new(),
            config,
            now: start(),
            version: 100,
            created: start() - SignedDuration::from_hours(24 * 400),
        }
    }

    /// The Node a machine's kubelet writes, its heartbeat on the kubelet's clock.
    fn written(&mut self, machine: &Machine, skew: SignedDuration) -> NodeClaim {
        let mut machine = machine.clone();
        machine.heartbeat = Timestamp::from_second((self.now + skew).as_second()).unwrap();
        let mut object = kubelet::node_object(&machine);
        self.version += 1;
        object["metadata"]["uid"] = (format!("{NODE_UID}-{}", machine.name)).into();
        object["metadata"]["resourceVersion"] = self.version.to_string().into();
        object["metadata"]["creationTimestamp"] = self.created.to_string().into();
        let text = object.to_string();
        NodeClaim::from_doc(&serde_json::from_str::<NodeDoc<'_>>(&text).unwrap()).unwrap()
    }

    fn stored(&self, name: &str) -> Option<&NodeClaim> {
        self.nodes.iter().find(|n| &*n.name == name)
    }

    fn record(&mut self, name: &str) -> &mut Record {
        if !self.records.iter().any(|(n, _)| n == name) {
            self.records.push((name.to_string(), Record::default()));
        }
        &mut self.records.iter_mut().find(|(n, _)| n == name).unwrap().1
    }

    /// What the watchers and the recorder do with a Node that changed.
    fn store(&mut self, claim: NodeClaim) {
        let name = claim.name.to_string();
        self.nodes.retain(|n| n.name != claim.name);
        self.nodes.push(claim.clone());
        self.inventory.apply_node(claim.clone(), self.now);
        let observation = NodeObservation::of(&claim);
        let (now, config) = (self.now, self.config.clone());
        let mut record = std::mem::take(self.record(&name));
        let judging = Judging {
            inventory: &self.inventory,
            config: &config,
            now,
        };
        let change = sharing::record_node(&mut record, &observation, Evidence::Watch, judging);
        if change.needs_confirmation {
            // The recorder reads the Node again: it still shows what was written.
            sharing::record_node(&mut record, &observation, Evidence::Confirmed, judging);
        }
        *self.record(&name) = record;
        self.publish(&name);
    }

    /// The record as every replica's watch delivers it.
    fn publish(&mut self, name: &str) {
        let created = self.now;
        let entry = self.record(name).entry(RecordMeta {
            name,
            created: Some(created),
            ..RecordMeta::default()
        });
        if let Some(entry) = entry {
            let created = self
                .inventory
                .identity(name)
                .and_then(|known| known.created)
                .unwrap_or(created);
            let mut entry = entry;
            entry.created = Some(created);
            self.inventory.apply_identity(entry);
        }
    }

    /// A kubelet registering: the webhook's answer, the refusal recorded by the replica
    /// that gave it, and, if admitted for a name not yet stored, the Node created.
    fn register(&mut self, machine: &Machine, skew: SignedDuration) -> Verdict {
        let claim = self.written(machine, skew);
        let mut create = claim.clone();
        create.uid = None;
        create.resource_version = None;
        create.created = None;
        let review = NodeReview::new(Operation::Create, Some(create), None);
        let verdict = decide_node(&review, &self.inventory, &self.config, self.now);
        self.record_refusals(&verdict);
        if verdict.allowed() && self.stored(&machine.name).is_none() {
            self.store(claim);
        }
        verdict
    }

    /// A kubelet writing its Node's status (after its registration passed).
    fn write_status(&mut self, machine: &Machine, skew: SignedDuration) -> Verdict {
        let Some(old) = self.stored(&machine.name).cloned() else {
            return Verdict::default();
        };
        let mut claim = self.written(machine, skew);
        claim.uid.clone_from(&old.uid);
        let review = NodeReview::new(Operation::Update, Some(claim.clone()), Some(old));
        let verdict = decide_node(&review, &self.inventory, &self.config, self.now);
        self.record_refusals(&verdict);
        if verdict.allowed() {
            self.store(claim);
        }
        verdict
    }

    fn record_refusals(&mut self, verdict: &Verdict) {
        let now = self.now;
        for refusal in verdict.refusals().cloned().collect::<Vec<_>>() {
            self.record(&refusal.node).observe_refusal(&refusal, now);
            self.publish(&refusal.node);
        }
    }

    fn pass(&mut self, time: SignedDuration) {
        self.now += time;
    }
}

fn worker() -> Machine {
    Machine::new("worker-1", 1, "10.0.0.11")
}

/// The incident's clone: worker-1's disk and credentials, its own VM UUID.
fn clone_of(original: &Machine) -> Machine {
    let mut clone = original.clone();
    clone.system_uuid = "564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61".into();
    clone.boot_id = "c10e0000-5b7a-4d8e-a6f1-0b2c3d4e5f60".into();
    clone
}

const NO_SKEW: SignedDuration = SignedDuration::ZERO;

#[test]
fn the_clone_that_waits_never_takes_the_node_when_its_original_reboots() {
    let mut cluster = Cluster::new(Config::default());
    let mut original = worker();
    assert!(cluster.register(&original, NO_SKEW).allowed());
    cluster.pass(SignedDuration::from_mins(30));
    assert!(cluster.write_status(&original, NO_SKEW).allowed());

    let clone = clone_of(&original);
    cluster.pass(SignedDuration::from_secs(5));
    let refused = cluster.register(&clone, NO_SKEW);
    assert_eq!(refused.deciding_check(), Some(CheckId::NameTakeover));
    assert_eq!(cluster.record("worker-1").spec.refused_machines.len(), 1);
    // The original's next status report, within five minutes: two machines proven.
    cluster.pass(SignedDuration::from_mins(5));
    assert!(cluster.write_status(&original, NO_SKEW).allowed());
    assert!(
        cluster.record("worker-1").spec.refused_machines[0]
            .proven
            .is_some()
    );

    // The original reboots and stays down for half an hour; the clone retries every 7 s.
    for _ in 0..(30 * 60 / 7) {
        cluster.pass(SignedDuration::from_secs(7));
        let verdict = cluster.register(&clone, NO_SKEW);
        assert_eq!(verdict.outcome(), Outcome::Denied, "at {}", cluster.now);
    }
    assert!(
        cluster
            .register(&clone, NO_SKEW)
            .denial_message()
            .unwrap()
            .contains("stays refused for the name even while worker-1 is down")
    );
    // The original comes back with a new boot: its own name, at once.
    original.boot_id = "b007b007-40ea-4cf5-9f24-53d6e200ef01".into();
    assert_eq!(
        cluster.register(&original, NO_SKEW).outcome(),
        Outcome::Allowed
    );
    assert_eq!(
        cluster.write_status(&original, NO_SKEW).outcome(),
        Outcome::Allowed
    );
    assert_eq!(cluster.register(&clone, NO_SKEW).outcome(), Outcome::Denied);
}

#[test]
fn a_pxe_booted_node_whose_old_self_never_writes_again_gets_its_name_after_the_timeout() {
    let mut cluster = Cluster::new(Config::default());
    let original = worker();
    assert!(cluster.register(&original, NO_SKEW).allowed());
    cluster.pass(SignedDuration::from_mins(2));
    assert!(cluster.write_status(&original, NO_SKEW).allowed());
    // Reinstalled over PXE: a new machine-id, a board without a real UUID.
    let mut reinstalled = original.clone();
    reinstalled.machine_id = "2f3e4d5c6b7a49887766554433221100".into();
    reinstalled.system_uuid = "03000200-0400-0500-0006-000700080009".into();
    reinstalled.boot_id = "1a0427b0-40ea-4cf5-9f24-53d6e200ef21".into();
    // A board that reported a real UUID before, now a placeholder: nothing ties it to
    // the registered machine, and the registered Node was written a minute ago.
    let mut first_allowed = None;
    for attempt in 0..200 {
        cluster.pass(SignedDuration::from_secs(7));
        let verdict = cluster.register(&reinstalled, NO_SKEW);
        if verdict.allowed() {
            first_allowed = Some(attempt);
            break;
        }
        assert_eq!(verdict.deciding_check(), Some(CheckId::NameTakeover));
    }
    // Let through at the first retry after the heartbeat timeout: 10 min after the last
    // status write, the 86th retry 7 s apart.
    let attempt = first_allowed.expect("the reinstalled node never got its name back");
    assert_eq!(attempt, 85, "let through at retry {attempt}");
}

#[test]
fn a_node_whose_clock_is_half_an_hour_slow_keeps_its_name_while_it_runs() {
    let mut cluster = Cluster::new(Config::default());
    let slow = SignedDuration::from_mins(-30);
    let original = worker();
    assert!(cluster.register(&original, slow).allowed());
    let mut impostor = clone_of(&original);
    impostor.machine_id = "7e7e7e7e7e7e4e7e8e7e7e7e7e7e7e7e".into();
    // An hour of status reports every five minutes, each with a heartbeat thirty
    // minutes old by nodeguard's clock: the node runs throughout.
    for _ in 0..12 {
        cluster.pass(SignedDuration::from_mins(5));
        assert!(cluster.write_status(&original, slow).allowed());
        cluster.pass(SignedDuration::from_secs(30));
        assert_eq!(
            cluster.register(&impostor, NO_SKEW).outcome(),
            Outcome::Denied
        );
    }
}

#[test]
fn a_replica_that_has_just_started_takes_every_node_as_running_for_the_timeout() {
    let mut cluster = Cluster::new(Config::default());
    let original = worker();
    // Seen for the first time, a Node whose heartbeat is two hours old by the kubelet's
    // clock: the replica cannot tell a stopped kubelet from a slow clock yet.
    let claim = cluster.written(&original, SignedDuration::from_hours(-2));
    cluster.store(claim);
    let mut impostor = clone_of(&original);
    impostor.machine_id = "7e7e7e7e7e7e4e7e8e7e7e7e7e7e7e7e".into();
    assert_eq!(
        cluster.register(&impostor, NO_SKEW).outcome(),
        Outcome::Denied
    );
    cluster.pass(SignedDuration::from_mins(10));
    assert_eq!(
        cluster.register(&impostor, NO_SKEW).outcome(),
        Outcome::Denied
    );
    // No status seen for longer than the timeout: not running.
    cluster.pass(SignedDuration::from_secs(61));
    let verdict = cluster.register(&impostor, NO_SKEW);
    assert_eq!(verdict.outcome(), Outcome::Warned, "{verdict:?}");
}

/// A small deterministic generator, so that a failure replays.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

/// Two machines claiming one name, whatever they do and however time passes: once
/// one of them was refused for the name and the other then wrote the node's status,
/// the refused one never gets the name (no registration, no status write) without
/// `forget` or the Node's deletion. And while the copy never got in, the original is
/// never refused.
#[test]
fn once_a_refused_machine_is_proven_it_never_takes_the_name() {
    let mut dice = Dice(0x2545_f491_4f6c_dd1d);
    let mut proven_runs = 0;
    for round in 0..150 {
        let mut cluster = Cluster::new(Config::default());
        let mut machines = [worker(), clone_of(&worker())];
        assert!(cluster.register(&machines[0], NO_SKEW).allowed());
        let skews = [
            SignedDuration::from_mins(dice.roll(61) as i64 - 30),
            NO_SKEW,
        ];
        let mut up = [true, false];
        let mut registered = [true, false];
        let mut refused = [false, false];
        let mut proven = [false, false];
        let mut copy_got_in = false;
        for step in 0..80 {
            cluster.pass(SignedDuration::from_secs(1 + dice.roll(900) as i64));
            let i = usize::from(dice.roll(3) == 0);
            let other = 1 - i;
            let verdict = if dice.roll(5) == 0 {
                up[i] = !up[i];
                registered[i] = false;
                if !up[i] {
                    continue;
                }
                machines[i].boot_id = format!("b007{:04x}-40ea-4cf5-9f24-53d6e200ef0{i}", step);
                let verdict = cluster.register(&machines[i], skews[i]);
                registered[i] = verdict.allowed();
                verdict
            } else if up[i] && !registered[i] {
                let verdict = cluster.register(&machines[i], skews[i]);
                registered[i] = verdict.allowed();
                verdict
            } else if up[i] {
                let verdict = cluster.write_status(&machines[i], skews[i]);
                if verdict.allowed() && refused[other] {
                    proven[other] = true;
                }
                verdict
            } else {
                continue;
            };
            if proven[i] {
                assert!(
                    !verdict.allowed(),
                    "round {round} step {step}: machine {i}, proven a second machine, got in: {verdict:?}"
                );
            }
            if i == 0 && !copy_got_in {
                assert!(
                    verdict.allowed(),
                    "round {round} step {step}: the original refused: {verdict:?}"
                );
            }
            copy_got_in |= i == 1 && verdict.allowed();
            refused[i] |= verdict.refusals().next().is_some();
        }
        proven_runs += usize::from(proven.iter().any(|p| *p));
    }
    assert!(
        proven_runs > 50,
        "only {proven_runs} runs reached the proven state"
    );
}

impl Cluster {
    /// An admin deletes the Node; the garbage collector deletes its record with it.
    fn delete(&mut self, name: &str) {
        self.nodes.retain(|n| &*n.name != name);
        self.records.retain(|(n, _)| n != name);
        self.inventory.delete_node(name);
        self.inventory.delete_identity(name);
    }

    /// Nodes that exist before nodeguard is installed, then its first sync.
    fn before_nodeguard(machines: &[Machine], config: Config) -> Self {
        let mut cluster = Cluster::new(config);
        for machine in machines {
            let claim = cluster.written(machine, NO_SKEW);
            cluster.nodes.push(claim.clone());
            cluster.inventory.apply_node(claim, cluster.now);
        }
        cluster.pass(SignedDuration::from_mins(1));
        for machine in machines {
            let claim = cluster.stored(&machine.name).cloned().unwrap();
            cluster.store(claim);
        }
        cluster
    }

    /// From now on Nodes are created after the ledger: they join under nodeguard, a few
    /// seconds after it first saw the cluster.
    fn joining(&mut self) {
        self.pass(SignedDuration::from_secs(5));
        self.created = self.now;
    }
}

fn fleet(names: &[&str], machine_id: &str) -> Vec<Machine> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut machine = Machine::new(name, 0x20 + i as u8, &format!("10.1.0.{}", 10 + i));
            machine.machine_id = machine_id.into();
            machine
        })
        .collect()
}

#[test]
fn nodes_that_shared_a_machine_id_before_nodeguard_can_be_deleted_and_join_again() {
    let pool = fleet(&["aks-1", "aks-2"], "0a1b2c3d4e5f60718293a4b5c6d7e8f9");
    let mut cluster = Cluster::before_nodeguard(&pool, Config::default());
    cluster.joining();
    cluster.pass(SignedDuration::from_hours(5));
    cluster.delete("aks-2");
    let verdict = cluster.register(&pool[1], NO_SKEW);
    assert_eq!(verdict.outcome(), Outcome::Warned, "{verdict:?}");
    assert_eq!(
        verdict.warnings(),
        vec![
            "nodeguard [machine-id]: machine-id 0a1b2c3d4e5f6… is shared with \"aks-1\" (since first seen), not a clone"
        ]
    );
    // Joined while the value was shared, it keeps it shared once the other is gone.
    cluster.delete("aks-1");
    let verdict = cluster.register(&pool[0], NO_SKEW);
    assert_eq!(verdict.outcome(), Outcome::Warned, "{verdict:?}");
}

#[test]
fn a_clone_let_in_while_nodeguard_only_warned_does_not_make_its_original_s_values_shared() {
    let original = worker();
    let mut cluster = Cluster::before_nodeguard(
        std::slice::from_ref(&original),
        Config::from_yaml("mode: warn\n").unwrap(),
    );
    cluster.joining();
    let mut copy = Machine::new("worker-7", 7, "10.0.0.77");
    copy.machine_id = original.machine_id.clone();
    assert_eq!(cluster.register(&copy, NO_SKEW).outcome(), Outcome::Warned);
    assert!(cluster.stored("worker-7").is_some(), "let in by warn mode");
    cluster.config = Config::default();
    let mut next = Machine::new("worker-8", 8, "10.0.0.88");
    next.machine_id = original.machine_id.clone();
    let verdict = cluster.register(&next, NO_SKEW);
    assert_eq!(verdict.deciding_check(), Some(CheckId::MachineId));
    assert!(
        verdict
            .denial_message()
            .unwrap()
            .contains("is already used by node \"worker-1\" and 1 other node"),
        "{verdict:?}"
    );
}

#[test]
fn a_pool_whose_image_bakes_a_new_machine_id_moves_to_it_node_by_node() {
    // Boards without a real UUID: the machine-id is all that names a machine.
    let mut pool = fleet(
        &["talos-1", "talos-2", "talos-3"],
        "ad432f2cb0c28bbcd1f87a20199237fa",
    );
    for node in &mut pool {
        node.system_uuid = "03000200-0400-0500-0006-000700080009".into();
    }
    let mut cluster = Cluster::before_nodeguard(&pool, Config::default());
    cluster.joining();
    let new_image = "5e1f0c9d8b7a69584736251403f2e1d0";
    for (i, node) in pool.iter_mut().enumerate() {
        cluster.pass(SignedDuration::from_mins(10));
        node.machine_id = new_image.into();
        node.boot_id = format!("5e1f0000-40ea-4cf5-9f24-53d6e200ef0{i}");
        let restart = cluster.register(node, NO_SKEW);
        assert!(restart.allowed(), "{}: {restart:?}", node.name);
        let status = cluster.write_status(node, NO_SKEW);
        assert!(status.allowed(), "{}: {status:?}", node.name);
        if i > 0 {
            assert_eq!(
                status.warnings(),
                vec![format!(
                    "nodeguard [machine-id]: machine-id 5e1f0c9d8b7a6… is {}",
                    if i == 1 {
                        "shared with \"talos-1\" (moved together), not a clone".to_string()
                    } else {
                        "shared by 2 nodes (e.g. talos-1); not proof of a clone".to_string()
                    }
                )]
            );
        }
    }
    // A node joining with the new image afterwards.
    let mut joiner = fleet(&["talos-4"], new_image).remove(0);
    joiner.system_uuid = "03000200-0400-0500-0006-000700080009".into();
    assert_eq!(
        cluster.register(&joiner, NO_SKEW).outcome(),
        Outcome::Warned
    );
}

#[test]
fn nodes_in_containers_on_one_host_join_with_a_warning() {
    let host_kernel = "8ae9952f-63cd-46a4-b013-ffe977e95508";
    // minikube: one machine-id baked into the image, a UUID of their own, the host's
    // kernel.
    let mut minikube = fleet(
        &["minikube", "minikube-m02"],
        "e366bd4b77b9d6be2d67552f69964f40",
    );
    for node in &mut minikube {
        node.boot_id = host_kernel.into();
    }
    let mut cluster = Cluster::new(Config::default());
    assert!(cluster.register(&minikube[0], NO_SKEW).allowed());
    let verdict = cluster.register(&minikube[1], NO_SKEW);
    assert_eq!(verdict.outcome(), Outcome::Warned, "{verdict:?}");
    assert_eq!(
        verdict.warnings(),
        vec![
            "nodeguard [machine-id]: machine-id e366bd4b77b9d… is shared with \"minikube\" (same host kernel), not a clone"
        ]
    );
    // k3d: no machine-id, the host's DMI UUID.
    let mut k3d: Vec<Machine> = ["k3d-server-0", "k3d-agent-0"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut node = Machine::new(name, 0x40 + i as u8, &format!("172.19.0.{}", 2 + i));
            node.machine_id = String::new();
            node.system_uuid = "55d6de56-18c0-9e4f-bdf9-efa42ddf4f22".into();
            node.boot_id = host_kernel.into();
            node
        })
        .collect();
    let mut cluster = Cluster::new(Config::default());
    assert!(cluster.register(&k3d[0], NO_SKEW).allowed());
    assert_eq!(
        cluster.register(&k3d[1], NO_SKEW).outcome(),
        Outcome::Warned
    );
    // The same disk as a VM: its own kernel, so its own boot id.
    k3d[1].boot_id = "0b0b0b0b-40ea-4cf5-9f24-53d6e200ef02".into();
    k3d[1].name = "vm-copy".into();
    assert_eq!(
        cluster.register(&k3d[1], NO_SKEW).outcome(),
        Outcome::Denied
    );
}

#[test]
fn a_vsphere_hardware_upgrade_that_flips_the_uuid_s_byte_order_is_the_same_machine() {
    let mut node = worker();
    node.system_uuid = "8fcf0b42-f2a2-54d1-329b-575d9bc5e19c".into();
    let mut cluster = Cluster::before_nodeguard(
        &[node.clone(), Machine::new("worker-2", 2, "10.0.0.12")],
        Config::default(),
    );
    cluster.pass(SignedDuration::from_mins(2));
    node.system_uuid = "420bcf8f-a2f2-d154-329b-575d9bc5e19c".into();
    node.boot_id = "0fe0fe0f-40ea-4cf5-9f24-53d6e200ef01".into();
    assert_eq!(cluster.register(&node, NO_SKEW).outcome(), Outcome::Allowed);
    assert_eq!(
        cluster.write_status(&node, NO_SKEW).outcome(),
        Outcome::Allowed
    );
}

/// A machine nothing ties to the registered one (a PXE reinstall: a new machine-id, a
/// board without a real UUID), retrying at random, while the node's old self writes its
/// status at random and then stops for good: refused while the node's status was seen
/// within the heartbeat timeout, let through at its first attempt after.
#[test]
fn a_machine_nothing_ties_to_the_node_gets_it_once_the_node_stops_writing() {
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let timeout = Config::default().heartbeat_timeout();
    for round in 0..100 {
        let mut cluster = Cluster::new(Config::default());
        let original = worker();
        assert!(cluster.register(&original, NO_SKEW).allowed());
        let mut last_status = cluster.now;
        let mut reinstalled = original.clone();
        reinstalled.machine_id = "2f3e4d5c6b7a49887766554433221100".into();
        reinstalled.system_uuid = "03000200-0400-0500-0006-000700080009".into();
        reinstalled.boot_id = "1a0427b0-40ea-4cf5-9f24-53d6e200ef21".into();
        // The old self's last status reports, then the reinstall: it never writes again.
        for _ in 0..dice.roll(6) {
            cluster.pass(SignedDuration::from_secs(1 + dice.roll(300) as i64));
            assert!(cluster.write_status(&original, NO_SKEW).allowed());
            last_status = cluster.now;
        }
        loop {
            cluster.pass(SignedDuration::from_secs(1 + dice.roll(240) as i64));
            let verdict = cluster.register(&reinstalled, NO_SKEW);
            let due = cluster.now.duration_since(last_status) > timeout;
            assert_eq!(
                verdict.allowed(),
                due,
                "round {round}: at {} (status last written {last_status}): {verdict:?}",
                cluster.now
            );
            if due {
                break;
            }
        }
    }
}

#[test]
fn an_upgrade_takes_the_cluster_as_it_is_for_its_first_sight() {
    // Records written by a release that kept no shared values, long ago; the pool's
    // nodes all joined since (a rotated AKS pool, every node the image's machine-id).
    let pool = fleet(&["aks-5", "aks-6"], "0a1b2c3d4e5f60718293a4b5c6d7e8f9");
    let mut cluster = Cluster::new(Config::default());
    cluster.created = cluster.now;
    for machine in &pool {
        let claim = cluster.written(machine, NO_SKEW);
        cluster.nodes.push(claim.clone());
        cluster.inventory.apply_node(claim.clone(), cluster.now);
        let (observation, now) = (NodeObservation::of(&claim), cluster.now);
        cluster
            .record(&machine.name)
            .observe_node(&observation, now, Evidence::Watch);
        cluster.publish(&machine.name);
        assert!(cluster.record(&machine.name).spec.first_sight.is_none());
    }
    // The upgraded recorder's first resync judges every record: first sight now.
    cluster.pass(SignedDuration::from_hours(24 * 30));
    for machine in &pool {
        let claim = cluster.stored(&machine.name).cloned().unwrap();
        cluster.store(claim);
    }
    cluster.joining();
    let mut newcomer = Machine::new("aks-7", 0x27, "10.1.0.17");
    newcomer.machine_id = "0a1b2c3d4e5f60718293a4b5c6d7e8f9".into();
    let verdict = cluster.register(&newcomer, NO_SKEW);
    assert_eq!(verdict.outcome(), Outcome::Warned, "{verdict:?}");
}
