//! spark-shuffle-agent: Spark's external shuffle service, as a per-node agent.
//!
//! The crate is layered so that each layer can be tested without the ones above it:
//!
//! * [`protocol`] is pure: Spark's transport frames (spark-network-common) and shuffle messages
//!   (spark-network-shuffle), block ids, and the Java-style error texts clients expect. It touches
//!   no socket, file or clock.
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
//! * [`metrics`] is for operators: the Prometheus registry, readiness and liveness, per-app disk
//!   use, and the HTTP server for `/metrics`, `/healthz`, `/readyz` and `/status`, on a thread
//!   of its own so a saturated data path cannot starve it.
//! * [`config`] is the one configuration tree, parsed and validated once before any port is bound.
//! * [`preflight`] (`check`) and [`prepare_dirs`] (`prepare-dirs`, the DaemonSet's init step) are
//!   node-side commands that start no server: one says what would stop executors from using the
//!   agent, the other gives the roots and the state dir their owner and mode.

pub mod clock;
pub mod config;
pub mod k8s;
pub mod lifecycle;
pub mod metrics;
pub mod preflight;
pub mod prepare_dirs;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod store;
pub mod sync;
pub mod thread_priority;
