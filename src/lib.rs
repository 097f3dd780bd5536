//! spark-shuffle-agent: Spark's external shuffle service, as a per-node agent.
//!
//! The crate is layered, and every layer only uses the ones below it (src/layers.rs reads every
//! `crate::` path and fails the suite on a circle). From the bottom:
//!
//! * [`clock`], [`sync`], [`thread_priority`]: small helpers every layer may use.
//! * [`metrics`]: Prometheus plumbing only ([`metrics::Series`], [`metrics::Source`],
//!   [`metrics::Exporter`]); it knows no other layer. Each component defines and exports its own
//!   series through it.
//! * [`auth`] is pure: Spark's authentication handshakes (AuthEngine, SASL DIGEST-MD5) and the
//!   AES-CTR session cipher, with secrets that never print and are zeroed on drop. Not yet wired
//!   into connections.
//! * [`tls`]: TLS on the shuffle port (`spark.ssl.rpc.*`): its keys, the rustls server
//!   configuration, and one connection's session, driven by the server's transport.
//! * [`protocol`] is pure: Spark's transport frames (spark-network-common) and shuffle messages
//!   (spark-network-shuffle), block ids, and the one error type a client receives
//!   ([`protocol::JavaError`]). It touches no socket, file or clock.
//! * [`store`] owns the on-disk layout executors write: path hashing, index files and their cache,
//!   checksum diagnosis, and reading block segments from files that must stay inside the
//!   executor's registered directories.
//! * [`registry`] owns executor registrations (who wrote where) and the journal that makes
//!   each one durable before it is acknowledged.
//! * [`lifecycle`] decides what happens when executors and applications go away: which files
//!   are deleted, in the background, never outside the roots.
//! * [`server`] owns sockets: the accept loop, one task per connection, in-order request
//!   dispatch, and zero-copy writes of file segments.
//! * [`k8s`] talks to the Kubernetes API server: it watches executor pods on this node and driver
//!   pods cluster-wide, and tells the lifecycle engine when executors and applications end (only
//!   on a definite answer); it also implements the 2.2 fork's shuffle-pod discovery.
//! * [`podnet`] is pod network mode's kernel side: finding executor pods' network namespaces,
//!   listeners opened inside them, and the nftables redirects of dead executors' IPs.
//! * [`disk_usage`] measures per-app disk use and free space per root, on a thread of its own.
//! * [`config`] is the one configuration tree, parsed and validated once before any port is bound;
//!   it turns into each component's settings.
//! * [`admin`] is for operators: readiness and liveness, the `/status` document and the `status`
//!   command, and the HTTP server for `/metrics`, `/healthz`, `/readyz` and `/status` on a thread
//!   of its own, so a saturated data path cannot starve it.
//! * [`app`] is the composition root: [`app::build`] wires all of the above from a
//!   [`config::Config`]; the binary and the tests both start the agent through it.
//! * [`preflight`] (`check`) and [`prepare_dirs`] (`prepare-dirs`, the DaemonSet's init step) are
//!   node-side commands that start no server: one says what would stop executors from using the
//!   agent, the other gives the roots and the state dir their owner and mode.

// Zero-copy sends go through rustix's safe sendfile wrapper; nothing in the agent needs unsafe.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod disk_usage;
pub mod k8s;
pub mod lifecycle;
pub mod metrics;
pub mod podnet;
pub mod preflight;
pub mod prepare_dirs;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod store;
pub mod sync;
pub mod thread_priority;
pub mod tls;

#[cfg(test)]
mod layers;
