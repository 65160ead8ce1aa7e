//! Pure: what a Node or a kubelet CSR claims to be. No I/O, no clock.

pub mod csr;
pub mod node;
pub mod pod;
mod text;
pub mod values;

pub use csr::{CsrClaim, CsrDoc, CsrError, KeyBinding, KubeletSigner};
pub use node::{NodeClaim, NodeDoc, Readiness};
pub use text::clip;
pub use values::{
    BootId, Hostname, KeyFingerprint, MachineId, NodeName, ProviderId, SystemUuid,
    is_placeholder_ip,
};
