//! Hyperpage Operator: developer portals as Kubernetes resources.

pub mod admin;
pub mod api;
pub mod engine;
pub mod lease;
pub mod metrics;
pub mod notify;
pub mod operator;
pub mod portal;
pub mod providers;
pub mod telemetry;
pub mod webhook;

/// The version of this build, reported by `hyperpage version` and `hyperpage_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
