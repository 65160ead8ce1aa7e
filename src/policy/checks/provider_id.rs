//! `provider-id`: the cloud instance behind the node; two nodes are never one instance.

use super::{Claimed, collision, introduced};
use crate::policy::{CheckId, Finding, NodeInput};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    let Some(value) = introduced(input, |c| c.provider_id.as_ref()) else {
        return Vec::new();
    };
    collision(
        CheckId::ProviderId,
        &input.object.name,
        Claimed { field: "provider ID", value: value.as_str() },
        input.inventory.provider_id(value),
        |holder| {
            format!(
                "two nodes cannot be one instance: check this kubelet's --provider-id \
                 and cloud configuration, or delete node {holder} if it is gone"
            )
        },
    )
    .into_iter()
    .collect()
}
