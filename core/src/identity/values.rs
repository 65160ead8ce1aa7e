//! Typed, normalised identity values. Normalising (case, whitespace) and recognising
//! placeholder values happens once, here, where a claim is built.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A Node's name, shared cheaply between the inventory's indexes.
pub type NodeName = Arc<str>;

/// Values that firmware, hypervisors or OS images give to many machines at once.
/// They say nothing about which machine is which, so they never collide.
const PLACEHOLDER_SYSTEM_UUIDS: &[&str] = &[
    // Boards whose firmware never sets a UUID (AMI/Gigabyte/Supermicro defaults), in
    // both DMI byte orders.
    "03000200-0400-0500-0006-000700080009",
    "00020003-0004-0005-0006-000700080009",
    "12345678-1234-5678-90ab-cddeefaabbcc",
    // KubeVirt's documented example SMBIOS UUID, copied into many VM templates.
    "11223344-5566-7788-99aa-bbcc11223344",
];

const PLACEHOLDER_MACHINE_IDS: &[&str] = &[
    // systemd writes this before the first boot has committed a machine-id.
    "uninitialized",
    // AKS node images 2023.01.20 to 2023.02.01 shipped one machine-id to every node.
    "de1dd9ede40041b7bceb409b0a3b12cb",
    "c82bf5de25c44e56a41d3c75b74967d6",
    "4813896e0be44568a53fb331dcb4af79",
    "8b30ea1c06764b83aef59f790313e369",
    // Talos releases that baked the machine-id into the kubelet image.
    "ad432f2cb0c28bbcd1f87a20199237f9",
    // Harvester v1.3.2 ISO installs.
    "f93c751c5aa9e98da8a607da66d82d3c",
];

/// True when every character but dashes is the same one: all zeros, all `f`, and the
/// `xxxx…` that anonymised support archives put in place of real ids.
fn is_one_repeated_char(value: &str) -> bool {
    let mut chars = value.chars().filter(|c| *c != '-');
    match chars.next() {
        None => true,
        Some(first) => chars.all(|c| c == first),
    }
}

fn normalise(raw: &str) -> Option<Arc<str>> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        None
    } else {
        Some(Arc::from(trimmed.to_ascii_lowercase()))
    }
}

macro_rules! identity_value {
    ($(#[$doc:meta])* $name:ident, $placeholders:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Normalises a raw value; empty values are no value at all.
            pub fn parse(raw: &str) -> Option<Self> {
                normalise(raw).map(Self)
            }

            /// The normalised value: trimmed and lowercase.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// A value that is known to be given to many machines, so never proof of a clone.
            pub fn is_placeholder(&self) -> bool {
                let placeholders: &[&str] = $placeholders;
                is_one_repeated_char(&self.0) || placeholders.contains(&&*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

identity_value!(
    /// `/etc/machine-id`, as the kubelet reports it in `status.nodeInfo.machineID`.
    MachineId,
    PLACEHOLDER_MACHINE_IDS
);
identity_value!(
    /// `/sys/class/dmi/id/product_uuid`, reported in `status.nodeInfo.systemUUID`.
    SystemUuid,
    PLACEHOLDER_SYSTEM_UUIDS
);
impl SystemUuid {
    /// The same UUID in the other SMBIOS byte order: its first three fields byte-swapped.
    /// SMBIOS 2.6 stores them little-endian, firmware before it big-endian, and a
    /// hypervisor upgrade can move a VM from one to the other (vSphere's virtual
    /// hardware upgrade, kubernetes/kubernetes#58927). `None` for a value that is not a
    /// UUID.
    pub fn byte_swapped(&self) -> Option<SystemUuid> {
        let text = self.as_str();
        let groups: Vec<&str> = text.split('-').collect();
        let sizes: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if sizes != [8, 4, 4, 4, 12] || !text.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
            return None;
        }
        let swap = |group: &str| -> String {
            let bytes: Vec<&str> = (0..group.len())
                .step_by(2)
                .filter_map(|i| group.get(i..i + 2))
                .collect();
            bytes.into_iter().rev().collect()
        };
        let swapped = format!(
            "{}-{}-{}-{}-{}",
            swap(groups[0]),
            swap(groups[1]),
            swap(groups[2]),
            groups[3],
            groups[4]
        );
        SystemUuid::parse(&swapped)
    }

    /// Whether two UUIDs name the same machine: equal, or equal in the other byte order.
    pub fn same_machine_as(&self, other: &SystemUuid) -> bool {
        self == other || self.byte_swapped().as_ref() == Some(other)
    }
}

identity_value!(
    /// `/proc/sys/kernel/random/boot_id`: changes on every boot, never otherwise.
    BootId,
    &[]
);
identity_value!(
    /// `spec.providerID`, the cloud's name for the instance.
    ProviderId,
    &[]
);
identity_value!(
    /// The `kubernetes.io/hostname` label or a `Hostname` address. DNS names compare
    /// case-insensitively.
    Hostname,
    &["localhost", "localhost.localdomain"]
);

/// Addresses that every machine has, or that no other machine can reach: never proof.
pub fn is_placeholder_ip(ip: &IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || match ip {
            IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        }
}

/// SHA-256 of a public key's DER SubjectPublicKeyInfo: the identity of a kubelet key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyFingerprint(pub [u8; 32]);

impl KeyFingerprint {
    /// The fingerprint of a public key's DER SubjectPublicKeyInfo.
    pub fn of_spki_der(spki_der: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Self(Sha256::digest(spki_der).into())
    }

    /// The first bytes, enough to tell keys apart in a log line.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyFingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_trimmed_and_lowercased_and_empty_is_none() {
        assert_eq!(
            SystemUuid::parse(" EC2A1B2C-0000-1111-2222-333344445555\n").map(|v| v.to_string()),
            Some("ec2a1b2c-0000-1111-2222-333344445555".to_string())
        );
        assert!(MachineId::parse("   ").is_none());
        assert!(MachineId::parse("").is_none());
    }

    #[test]
    fn placeholders_are_recognised() {
        for raw in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "03000200-0400-0500-0006-000700080009",
            "11223344-5566-7788-99AA-BBCC11223344",
            "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
        ] {
            assert!(
                SystemUuid::parse(raw).is_some_and(|v| v.is_placeholder()),
                "{raw}"
            );
        }
        for raw in [
            "uninitialized",
            "00000000000000000000000000000000",
            "de1dd9ede40041b7bceb409b0a3b12cb",
        ] {
            assert!(
                MachineId::parse(raw).is_some_and(|v| v.is_placeholder()),
                "{raw}"
            );
        }
        assert!(
            !MachineId::parse("9cbf8e2fbf5540cd8ff218ef016ba690")
                .is_some_and(|v| v.is_placeholder())
        );
        assert!(
            !SystemUuid::parse("3f39a350-3cd4-400f-875d-c270379817b0")
                .is_some_and(|v| v.is_placeholder())
        );
    }

    #[test]
    fn a_uuid_in_the_other_smbios_byte_order_is_the_same_machine() {
        // kubernetes/kubernetes#58927: the node's systemUUID and its vSphere providerID.
        let node = SystemUuid::parse("8FCF0B42-F2A2-54D1-329B-575D9BC5E19C").unwrap();
        let vsphere = SystemUuid::parse("420bcf8f-a2f2-d154-329b-575d9bc5e19c").unwrap();
        assert_eq!(node.byte_swapped().as_ref(), Some(&vsphere));
        assert!(node.same_machine_as(&vsphere) && vsphere.same_machine_as(&node));
        assert!(node.same_machine_as(&node));
        let other = SystemUuid::parse("420bcf8f-a2f2-d154-329b-575d9bc5e19d").unwrap();
        assert!(!node.same_machine_as(&other));
        assert!(
            SystemUuid::parse("not-a-uuid")
                .unwrap()
                .byte_swapped()
                .is_none()
        );
    }

    #[test]
    fn loopback_and_link_local_addresses_are_placeholders() {
        for ip in ["127.0.0.1", "::1", "0.0.0.0", "169.254.1.1", "fe80::1"] {
            assert!(
                is_placeholder_ip(&ip.parse().unwrap_or_else(|_| unreachable!())),
                "{ip}"
            );
        }
        assert!(!is_placeholder_ip(
            &"10.0.0.5".parse().unwrap_or_else(|_| unreachable!())
        ));
    }

    #[test]
    fn fingerprint_is_sha256_of_the_der() {
        // SHA-256 of the empty input, a known vector.
        assert_eq!(
            KeyFingerprint::of_spki_der(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
