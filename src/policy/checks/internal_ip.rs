//! `internal-ip`: `InternalIP` addresses. ExternalIPs are not compared here: nodes behind
//! one NAT legitimately report the same one.

use super::{Claimed, collision, introduced_all};
use crate::identity::is_placeholder_ip;
use crate::policy::{CheckId, Finding, NodeInput};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    introduced_all(input, |c| c.internal_ips.as_slice())
        .into_iter()
        .filter(|ip| !is_placeholder_ip(ip))
        .filter_map(|ip| {
            collision(
                CheckId::InternalIp,
                &input.object.name,
                Claimed { field: "InternalIP", value: &ip.to_string() },
                input.inventory.internal_ip(ip),
                |holder| {
                    format!(
                        "give this machine its own address (a cloned /etc/machine-id also \
                         clones the DHCP lease: regenerate it and reboot), or delete node \
                         {holder} if it is gone"
                    )
                },
            )
        })
        .collect()
}
