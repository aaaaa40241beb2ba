//! Structured logs: human-readable on a terminal, JSON lines everywhere else.

use std::io::IsTerminal;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. `RUST_LOG` overrides the default level (`info`, with the
/// chatty HTTP internals at `warn`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,hyper=warn,tower=warn,rustls=warn,kube_client=warn,kube_runtime=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::io::stdout().is_terminal() {
        registry.with(fmt::layer().compact()).init();
    } else {
        registry.with(fmt::layer().json().flatten_event(true).with_current_span(false)).init();
    }
}
