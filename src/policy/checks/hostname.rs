//! `hostname`: the `kubernetes.io/hostname` label and `Hostname` addresses.

use super::{Claimed, collision, introduced_all};
use crate::policy::{CheckId, Finding, NodeInput};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    introduced_all(input, |c| c.hostnames.as_slice())
        .into_iter()
        .filter(|host| !host.is_placeholder())
        .filter_map(|host| {
            collision(
                CheckId::Hostname,
                &input.object.name,
                Claimed { field: "hostname", value: host.as_str() },
                input.inventory.hostname(host),
                |holder| {
                    format!(
                        "set a unique hostname on this machine (hostnamectl set-hostname <name>) \
                         and restart the kubelet, or delete node {holder} if it is gone"
                    )
                },
            )
        })
        .collect()
}
