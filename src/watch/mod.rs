//! kube-runtime watchers over Nodes, CertificateSigningRequests and the ledger's
//! NodeIdentities feeding the inventory (and telling the recorder what changed);
//! readiness once all three have completed their first full list.

pub mod feed;
pub mod freshness;
pub mod metrics;
pub mod objects;
pub mod observations;
pub mod readiness;

pub use feed::{Feed, Watched};
pub use freshness::{View, Views, watch_timeout};
pub use objects::{WatchedCsr, WatchedNode};
pub use readiness::Readiness;

use std::pin::pin;

use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};

use crate::inventory::SharedInventory;
use crate::record::NodeIdentity;
use observations::Observations;

/// Watches Nodes, CSRs and NodeIdentities until the process ends, keeping `inventory`
/// current, passing changes to `observations` (the recorder), and setting `readiness`
/// once all three watchers have completed their first full list.
///
/// Watch errors are logged and retried with backoff; the function returns only if a
/// watcher stream ends, which kube-runtime's watchers never do, and then it is an
/// error (with readiness withdrawn, since nothing keeps the inventory current anymore).
pub async fn run(
    client: kube::Client,
    inventory: SharedInventory,
    readiness: Readiness,
    observations: Option<Observations>,
) -> anyhow::Result<()> {
    // Under a freshness bound, each watch ends within it (see `freshness`).
    let config = match readiness.views() {
        Some(views) => watcher::Config::default().timeout(watch_timeout(views.stale_after())),
        None => watcher::Config::default(),
    };
    let mut nodes = pin!(watch::<WatchedNode>(client.clone(), config.clone()));
    let mut csrs = pin!(watch::<WatchedCsr>(client.clone(), config.clone()));
    let mut ledger = pin!(watch::<NodeIdentity>(client, config));
    let mut node_feed = Feed::<WatchedNode>::new();
    let mut csr_feed = Feed::<WatchedCsr>::new();
    let mut ledger_feed = Feed::<NodeIdentity>::new();
    let observations = observations.as_ref();

    let ended = loop {
        // `StreamExt::next` is cancel-safe, so losing the race drops no event.
        let listed = tokio::select! {
            event = nodes.next() => match event {
                Some(event) => step(&mut node_feed, event, &inventory, observations),
                None => break WatchedNode::plural(&()),
            },
            event = csrs.next() => match event {
                Some(event) => step(&mut csr_feed, event, &inventory, observations),
                None => break WatchedCsr::plural(&()),
            },
            event = ledger.next() => match event {
                Some(event) => step(&mut ledger_feed, event, &inventory, observations),
                None => break NodeIdentity::plural(&()),
            },
        };
        if listed
            && node_feed.is_synced()
            && csr_feed.is_synced()
            && ledger_feed.is_synced()
            && !readiness.is_ready()
        {
            tracing::info!("nodes, CSRs and node identities listed; the inventory is current");
            readiness.set(true);
        }
    };
    readiness.set(false);
    anyhow::bail!("the {ended} watch stream ended")
}

/// A cluster-wide watch of one kind, retried with kube-runtime's default backoff.
fn watch<K: Watched>(
    client: kube::Client,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send {
    watcher::watcher(Api::<K>::all(client), config).default_backoff()
}

/// Applies one item of a watch stream; true when it completed a full list.
fn step<K: Watched>(
    feed: &mut Feed<K>,
    event: Result<Event<K>, watcher::Error>,
    inventory: &SharedInventory,
    observations: Option<&Observations>,
) -> bool {
    match event {
        Ok(event) => feed.handle(event, inventory, observations),
        Err(watcher::Error::InitialListFailed(kube::Error::Api(status))) if status.code == 404 => {
            tracing::warn!(
                resource = %K::plural(&()),
                "the API server does not serve this resource (is the NodeIdentity CRD \
                 installed? kubectl apply -k deploy/); retrying with backoff, not ready until then"
            );
            false
        }
        Err(error) => {
            tracing::warn!(resource = %K::plural(&()), %error, "watch failed; retrying with backoff");
            false
        }
    }
}
