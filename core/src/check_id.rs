//! The stable id of every check, defined once: the messages, the metric labels, the
//! configuration, the ledger, the Events and the docs all use these words.

/// Defines [`CheckId`] from one list of variants and their ids.
macro_rules! check_ids {
    ($($(#[$doc:meta])* $variant:ident => $id:literal,)+) => {
        /// The stable id of every check: used in messages, metric labels, configuration
        /// and docs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum CheckId {
            $($(#[$doc])* $variant,)+
        }

        impl CheckId {
            /// Every check, in the order the docs list them.
            pub const ALL: [CheckId; [$($id),+].len()] = [$(CheckId::$variant),+];

            /// The id as messages, metrics and the configuration spell it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(CheckId::$variant => $id,)+
                }
            }
        }
    };
}

check_ids! {
    /// Another machine registering a running node's name.
    NameTakeover => "name-takeover",
    /// A node's writes reporting another machine than the one that registered it.
    IdentityDrift => "identity-drift",
    /// Two kubelets writing one node, their boot ids alternating.
    TwoKubelets => "two-kubelets",
    /// `/etc/machine-id` held by another node.
    MachineId => "machine-id",
    /// The SMBIOS UUID held by another node.
    SystemUuid => "system-uuid",
    /// `spec.providerID` held by another node.
    ProviderId => "provider-id",
    /// The hostname label or address held by another node.
    Hostname => "hostname",
    /// An InternalIP held by another node.
    InternalIp => "internal-ip",
    /// A kubelet CSR that is not one well-formed request for one node.
    CsrFormat => "csr-format",
    /// A CSR's key bound to another node.
    KeyFingerprint => "key-fingerprint",
    /// A serving CSR naming another node's InternalIP.
    ServingSan => "serving-san",
}

impl std::fmt::Display for CheckId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_has_its_own_id_and_all_lists_each_once() {
        let ids: std::collections::BTreeSet<&str> =
            CheckId::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(ids.len(), CheckId::ALL.len());
        assert_eq!(CheckId::ALL.len(), 11);
        assert_eq!(CheckId::TwoKubelets.to_string(), "two-kubelets");
    }
}
