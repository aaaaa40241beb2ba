//! Hardening of the portal's front door: which `Host` it answers to, and how many live
//! `/events` streams one visitor and the whole pod may hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The names a portal answers to (the Ingress host, the Service's DNS names; loopback always).
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// Empty: no check (a portal started by hand); the operator always gives the list.
    pub fn new(hosts: impl IntoIterator<Item = String>) -> Self {
        Self(hosts.into_iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect())
    }

    pub fn is_enforced(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether a request with this `Host` header is for us.
    pub fn allows(&self, host: Option<&str>) -> bool {
        if !self.is_enforced() {
            return true;
        }
        let Some(host) = host else { return false };
        if super::oidc::is_loopback(host) {
            return true;
        }
        let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        self.0.contains(&name)
    }
}

/// `name` of `name:port` (a bracketed IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Caps on open `/events` streams.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    pub per_identity: usize,
    pub per_pod: usize,
    open: Arc<Mutex<Open>>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_identity: HashMap<String, usize>,
}

/// Why a stream was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamRefused {
    PerIdentity(usize),
    PerPod(usize),
}

impl std::fmt::Display for StreamRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PerIdentity(n) => write!(f, "too many live connections for you ({n}); close another tab"),
            Self::PerPod(n) => write!(f, "this portal serves {n} live connections already; try again shortly"),
        }
    }
}

/// One open stream, counted until dropped.
#[derive(Debug)]
pub struct StreamSlot {
    open: Arc<Mutex<Open>>,
    identity: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_identity.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_identity.remove(&self.identity);
            }
        }
    }
}

impl StreamLimits {
    pub fn new(per_identity: usize, per_pod: usize) -> Self {
        Self { per_identity, per_pod, open: Arc::default() }
    }

    /// A slot for `identity` (`None`: anonymous, public mode: only the pod's cap applies).
    pub fn acquire(&self, identity: Option<&str>) -> Result<StreamSlot, StreamRefused> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.per_pod {
            return Err(StreamRefused::PerPod(self.per_pod));
        }
        let key = identity.unwrap_or_default().to_string();
        if identity.is_some() && open.by_identity.get(&key).copied().unwrap_or(0) >= self.per_identity {
            return Err(StreamRefused::PerIdentity(self.per_identity));
        }
        open.total += 1;
        *open.by_identity.entry(key.clone()).or_default() += 1;
        Ok(StreamSlot { open: self.open.clone(), identity: key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_and_loopback_are_answered() {
        let hosts = AllowedHosts::new(["payments.portal.example".to_string(), "payments-portal.team-payments.svc".to_string()]);
        for ok in
            ["payments.portal.example", "Payments.Portal.Example:443", "payments.portal.example.", "payments-portal.team-payments.svc:80"]
        {
            assert!(hosts.allows(Some(ok)), "{ok}");
        }
        for ok in ["localhost:8080", "127.0.0.1:8080", "[::1]:8080"] {
            assert!(hosts.allows(Some(ok)), "{ok} (port-forward)");
        }
        for bad in ["evil.example", "payments.portal.example.evil.example", "10.244.1.7:8080", ""] {
            assert!(!hosts.allows(Some(bad)), "{bad}");
        }
        assert!(!hosts.allows(None));
        assert!(AllowedHosts::new(Vec::new()).allows(Some("anything")), "not configured: not enforced");
    }

    #[test]
    fn streams_are_capped_per_identity_and_per_pod_and_freed_on_drop() {
        let limits = StreamLimits::new(2, 3);
        let a1 = limits.acquire(Some("alice")).unwrap();
        let _a2 = limits.acquire(Some("alice")).unwrap();
        assert_eq!(limits.acquire(Some("alice")).unwrap_err(), StreamRefused::PerIdentity(2));
        let _b = limits.acquire(Some("bob")).unwrap();
        assert_eq!(limits.acquire(Some("carol")).unwrap_err(), StreamRefused::PerPod(3));
        drop(a1);
        let _a3 = limits.acquire(Some("alice")).expect("a closed stream frees its slot");
        assert!(limits.acquire(None).is_err(), "the pod is full again");
        let anonymous = StreamLimits::new(1, 3);
        let _x = anonymous.acquire(None).unwrap();
        let _y = anonymous.acquire(None).expect("anonymous viewers share only the pod's cap");
    }
}
