//! The Rust integration tests, in one test binary: the crate and its dependencies (kube among
//! them) are linked once instead of once per file. Each module is what used to be a file of its
//! own under tests/; cargo nextest still runs every test in a process of its own.

mod common;
mod k8s_support;
mod podnet_support;

mod exit_codes;
mod frame_budget;
mod golden_vectors;
mod k8s_binary;
mod k8s_discovery;
mod k8s_lifecycle;
mod k8s_volumes;
mod large_stream;
mod lifecycle;
mod metrics_dashboard;
mod metrics_endpoints;
mod podnet_agent;
mod podnet_dead;
mod podnet_live;
mod podnet_restart;
mod preflight;
mod thread_priorities;
mod wire_protocol;
