//! `nodeguard certs`: a development CA and serving certificate for the Service, written
//! where an overlay turns them into the Secret and every `caBundle`.

use crate::plumbing::dev_pki::{DEV_DNS_NAMES, write_dev_pki};

/// Where `nodeguard certs` writes, and for which names.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory for ca.crt, tls.crt and tls.key.
    #[arg(long, default_value = "certs")]
    pub out: std::path::PathBuf,
    /// DNS name of the serving certificate; repeatable. Defaults to the Service's names.
    #[arg(long = "dns-name", value_name = "NAME")]
    pub dns_names: Vec<String>,
}

/// Writes the files; its exit code.
pub fn run(args: &CertsArgs) -> anyhow::Result<u8> {
    let names: Vec<&str> = if args.dns_names.is_empty() {
        DEV_DNS_NAMES.to_vec()
    } else {
        args.dns_names.iter().map(String::as_str).collect()
    };
    for path in write_dev_pki(&args.out, &names)? {
        println!("wrote {}", path.display());
    }
    Ok(0)
}
