//! The platform's admin policy (pure): what a Workspace may ask the operator to do on its
//! behalf.
//!
//! Everything that would let a Workspace author do more than they could do themselves is
//! refused unless the platform allows it: another image under the portal's ServiceAccount, a
//! NodePort/LoadBalancer Service, an Ingress (with a host of someone else, a wildcard, no
//! TLS), a portal without sign-in. A refused part is never applied; see
//! [`Violation::refuses`] for which child each rule holds back.

use crate::api::Workspace;
use crate::api::workspace::{AccessMode, ServiceType};
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::fmt;

/// The policy, from the operator's `--policy-*` flags (chart values `policy.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Image prefixes a portal (or sidecar) container may run. A prefix matches at a path,
    /// tag or digest boundary: `ghcr.io/acme/portal` allows `ghcr.io/acme/portal:1` but not
    /// `ghcr.io/acme/portal-evil:1`.
    pub allowed_images: Vec<String>,
    /// Service types a Workspace may ask for.
    pub allowed_service_types: Vec<ServiceType>,
    pub ingress: IngressPolicy,
    /// Namespace of the ingress controller; its pods may reach every portal (NetworkPolicy).
    pub ingress_controller_namespace: Option<String>,
    /// Whether `spec.portal.access.mode: public` (no sign-in) is granted.
    pub allow_public_portals: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngressPolicy {
    /// DNS suffixes an Ingress host must end in (at a label boundary); `{namespace}` stands
    /// for the Workspace's namespace, so each team gets its own zone. Empty: no Ingress.
    pub allowed_host_suffixes: Vec<String>,
    /// IngressClass names a Workspace may pick; empty: any (and the cluster default).
    pub allowed_class_names: Vec<String>,
    /// Allow an Ingress without `tlsSecretName` (plain HTTP).
    pub allow_without_tls: bool,
    /// Annotations the platform puts on every portal Ingress (e.g. cert-manager's issuer).
    pub annotations: BTreeMap<String, String>,
}

impl Policy {
    /// The default-deny policy for an operator whose portals run `portal_image`: only that
    /// image's repository, ClusterIP Services, no Ingress, no public portals.
    pub fn restrictive(portal_image: &str) -> Self {
        Self {
            allowed_images: vec![image_repository(portal_image).to_string()],
            allowed_service_types: vec![ServiceType::ClusterIP],
            ingress: IngressPolicy::default(),
            ingress_controller_namespace: None,
            allow_public_portals: false,
        }
    }
}

/// The repository part of an image reference: without `@digest` and without `:tag` (a colon
/// after the last `/` is a tag; before it, a registry port).
pub fn image_repository(image: &str) -> &str {
    let without_digest = image.split_once('@').map_or(image, |(repo, _)| repo);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    }
}

/// Which policy rule a Workspace broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `policy.allowedImages`
    Image,
    /// `policy.allowedServiceTypes`
    ServiceType,
    /// `policy.ingress.allowedHostSuffixes` is empty: no Ingress at all.
    IngressNotAllowed,
    /// `policy.ingress.allowedHostSuffixes`
    IngressHost,
    /// Wildcard hosts are always refused.
    WildcardHost,
    /// `policy.ingress.allowedClassNames`
    IngressClass,
    /// `policy.ingress.allowWithoutTLS`
    IngressTls,
    /// `policy.allowPublicPortals`
    PublicPortal,
}

impl Rule {
    /// The policy value (chart key) that decides this rule.
    pub fn setting(self) -> &'static str {
        match self {
            Rule::Image => "policy.allowedImages",
            Rule::ServiceType => "policy.allowedServiceTypes",
            Rule::IngressNotAllowed | Rule::IngressHost => "policy.ingress.allowedHostSuffixes",
            Rule::WildcardHost => "no wildcard hosts",
            Rule::IngressClass => "policy.ingress.allowedClassNames",
            Rule::IngressTls => "policy.ingress.allowWithoutTLS",
            Rule::PublicPortal => "policy.allowPublicPortals",
        }
    }
}

/// A child of the Workspace that a violation keeps from being applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refused {
    Deployment,
    Service,
    Ingress,
}

/// One broken rule: which, the field, and the value asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    pub field: &'static str,
    pub value: String,
    /// What the policy allows, for the message.
    pub allowed: String,
}

impl Violation {
    /// The child this violation keeps from being applied. A refused public mode refuses no
    /// child: the portal then runs in `kubernetes` mode (the effective mode).
    pub fn refuses(&self) -> Option<Refused> {
        match self.rule {
            Rule::Image => Some(Refused::Deployment),
            Rule::ServiceType => Some(Refused::Service),
            Rule::IngressNotAllowed | Rule::IngressHost | Rule::WildcardHost | Rule::IngressClass | Rule::IngressTls => {
                Some(Refused::Ingress)
            }
            Rule::PublicPortal => None,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} refused by {} ({})", self.field, self.value, self.rule.setting(), self.allowed)
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "none allowed".into() } else { format!("allowed: {}", items.join(", ")) }
}

/// Whether `image` starts with `prefix` at a path, tag or digest boundary.
fn image_allowed(image: &str, prefix: &str) -> bool {
    let Some(rest) = image.strip_prefix(prefix) else { return false };
    prefix.ends_with(['/', ':', '@']) || rest.is_empty() || rest.starts_with(['/', ':', '@'])
}

/// Whether `host` ends in `suffix` at a DNS label boundary (or equals it).
fn host_allowed(host: &str, suffix: &str) -> bool {
    let suffix = suffix.trim_start_matches("*.").trim_start_matches('.');
    !suffix.is_empty() && (host == suffix || host.strip_suffix(suffix).is_some_and(|head| head.ends_with('.')))
}

/// Validate (pure): every rule the Workspace breaks, in spec order.
pub fn validate(ws: &Workspace, policy: &Policy) -> Vec<Violation> {
    let mut violations = Vec::new();
    let portal = &ws.spec.portal;
    let namespace = ws.namespace().unwrap_or_default();

    let images =
        [("spec.portal.image", portal.image.as_deref()), ("spec.portal.sidecar.image", portal.sidecar.as_ref().map(|s| s.image.as_str()))];
    for (field, image) in images {
        if let Some(image) = image
            && !policy.allowed_images.iter().any(|prefix| image_allowed(image, prefix))
        {
            violations.push(Violation { rule: Rule::Image, field, value: image.into(), allowed: list(&policy.allowed_images) });
        }
    }

    let service_type = portal.service.type_;
    if !policy.allowed_service_types.contains(&service_type) {
        let allowed: Vec<String> = policy.allowed_service_types.iter().map(|t| t.as_str().to_string()).collect();
        violations.push(Violation {
            rule: Rule::ServiceType,
            field: "spec.portal.service.type",
            value: service_type.as_str().into(),
            allowed: list(&allowed),
        });
    }

    if let Some(ingress) = &portal.ingress {
        let suffixes: Vec<String> = policy.ingress.allowed_host_suffixes.iter().map(|s| s.replace("{namespace}", &namespace)).collect();
        if ingress.host.contains('*') {
            violations.push(Violation {
                rule: Rule::WildcardHost,
                field: "spec.portal.ingress.host",
                value: ingress.host.clone(),
                allowed: "a portal serves one host".into(),
            });
        } else if suffixes.is_empty() {
            violations.push(Violation {
                rule: Rule::IngressNotAllowed,
                field: "spec.portal.ingress.host",
                value: ingress.host.clone(),
                allowed: "no Ingress is allowed".into(),
            });
        } else if !suffixes.iter().any(|s| host_allowed(&ingress.host, s)) {
            violations.push(Violation {
                rule: Rule::IngressHost,
                field: "spec.portal.ingress.host",
                value: ingress.host.clone(),
                allowed: list(&suffixes),
            });
        }
        let classes = &policy.ingress.allowed_class_names;
        if !classes.is_empty() {
            match &ingress.class_name {
                Some(class) if classes.contains(class) => {}
                class => violations.push(Violation {
                    rule: Rule::IngressClass,
                    field: "spec.portal.ingress.className",
                    value: class.clone().unwrap_or_else(|| "(cluster default)".into()),
                    allowed: list(classes),
                }),
            }
        }
        if ingress.tls_secret_name.is_none() && !policy.ingress.allow_without_tls {
            violations.push(Violation {
                rule: Rule::IngressTls,
                field: "spec.portal.ingress.tlsSecretName",
                value: "(unset)".into(),
                allowed: "TLS is required".into(),
            });
        }
    }

    if portal.requested_access_mode() == AccessMode::Public && !policy.allow_public_portals {
        violations.push(Violation {
            rule: Rule::PublicPortal,
            field: "spec.portal.access.mode",
            value: AccessMode::Public.as_str().into(),
            allowed: "portals require sign-in".into(),
        });
    }
    violations
}

/// The access mode the portal runs with: `public` only where the spec asks for it and the
/// policy grants it.
pub fn effective_access_mode(ws: &Workspace, policy: &Policy) -> AccessMode {
    match ws.spec.portal.requested_access_mode() {
        AccessMode::Public if policy.allow_public_portals => AccessMode::Public,
        _ => AccessMode::Kubernetes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR_IMAGE: &str = "ghcr.io/hyperpage-dev/hyperpage:0.1.0";

    fn ws(yaml: &str) -> Workspace {
        serde_norway::from_str(yaml).expect("fixture parses")
    }

    fn with_portal(portal: &str) -> Workspace {
        ws(&format!(
            "apiVersion: hyperpage.dev/v1alpha1\nkind: Workspace\nmetadata: {{name: x, namespace: team-a}}\nspec:\n  portal:\n{portal}"
        ))
    }

    fn rules(violations: &[Violation]) -> Vec<Rule> {
        violations.iter().map(|v| v.rule).collect()
    }

    #[test]
    fn the_default_image_repository_comes_from_the_portal_image() {
        assert_eq!(image_repository("ghcr.io/hyperpage-dev/hyperpage:0.1.0"), "ghcr.io/hyperpage-dev/hyperpage");
        assert_eq!(image_repository("registry:5000/hp/hyperpage@sha256:abc"), "registry:5000/hp/hyperpage");
        assert_eq!(image_repository("registry:5000/hp/hyperpage:1@sha256:abc"), "registry:5000/hp/hyperpage");
        assert_eq!(image_repository("hyperpage"), "hyperpage");
    }

    #[test]
    fn a_basic_workspace_passes_the_restrictive_policy() {
        let policy = Policy::restrictive(OPERATOR_IMAGE);
        assert!(validate(&ws(include_str!("../../tests/fixtures/workspace-basic.yaml")), &policy).is_empty());
        let own = with_portal("    image: ghcr.io/hyperpage-dev/hyperpage:0.2.0\n");
        assert!(validate(&own, &policy).is_empty(), "another tag of the operator's own image");
    }

    #[test]
    fn the_ha_fixture_breaks_image_service_type_and_ingress_rules() {
        let policy = Policy::restrictive(OPERATOR_IMAGE);
        let violations = validate(&ws(include_str!("../../tests/fixtures/workspace-ha-ingress.yaml")), &policy);
        assert_eq!(rules(&violations), [Rule::Image, Rule::ServiceType, Rule::IngressNotAllowed]);
        let message = violations[0].to_string();
        assert!(message.contains("registry.example.com/mirror/hyperpage:0.1.0") && message.contains("policy.allowedImages"), "{message}");
        assert!(violations[1].to_string().contains("\"LoadBalancer\""), "{}", violations[1]);
        let refused: Vec<_> = violations.iter().filter_map(Violation::refuses).collect();
        assert_eq!(refused, [Refused::Deployment, Refused::Service, Refused::Ingress]);
    }

    #[test]
    fn image_prefixes_match_only_at_a_boundary() {
        let policy = Policy::restrictive(OPERATOR_IMAGE);
        for image in
            ["ghcr.io/hyperpage-dev/hyperpage-evil:1", "ghcr.io/hyperpage-dev/hyperpagex", "evil.io/ghcr.io/hyperpage-dev/hyperpage:1"]
        {
            let v = validate(&with_portal(&format!("    image: {image}\n")), &policy);
            assert_eq!(rules(&v), [Rule::Image], "{image}");
        }
        let sidecar = with_portal("    sidecar: {image: docker.io/evil/portal:1, port: 3000}\n");
        let v = validate(&sidecar, &policy);
        assert_eq!((v[0].rule, v[0].field), (Rule::Image, "spec.portal.sidecar.image"));
        let mut open = policy.clone();
        open.allowed_images.push("registry.example.com/teams/".into());
        assert!(validate(&with_portal("    image: registry.example.com/teams/a/portal:2\n"), &open).is_empty());
    }

    #[test]
    fn ingress_hosts_need_an_allowed_suffix_tls_and_no_wildcard() {
        let mut policy = Policy::restrictive(OPERATOR_IMAGE);
        policy.ingress.allowed_host_suffixes = vec!["{namespace}.apps.example.com".into()];
        let ok = with_portal("    ingress: {host: portal.team-a.apps.example.com, tlsSecretName: tls}\n");
        assert!(validate(&ok, &policy).is_empty());
        let other_team = with_portal("    ingress: {host: portal.team-b.apps.example.com, tlsSecretName: tls}\n");
        let v = validate(&other_team, &policy);
        assert_eq!(rules(&v), [Rule::IngressHost]);
        assert!(v[0].to_string().contains("team-a.apps.example.com"), "the message names the allowed suffix: {}", v[0]);
        let lookalike = with_portal("    ingress: {host: portal.evilteam-a.apps.example.com, tlsSecretName: tls}\n");
        assert_eq!(rules(&validate(&lookalike, &policy)), [Rule::IngressHost]);
        let wildcard = with_portal("    ingress: {host: '*.team-a.apps.example.com', tlsSecretName: tls}\n");
        assert_eq!(rules(&validate(&wildcard, &policy)), [Rule::WildcardHost]);
        let plain = with_portal("    ingress: {host: portal.team-a.apps.example.com}\n");
        assert_eq!(rules(&validate(&plain, &policy)), [Rule::IngressTls]);
        policy.ingress.allow_without_tls = true;
        assert!(validate(&plain, &policy).is_empty());
    }

    #[test]
    fn ingress_classes_are_checked_when_listed() {
        let mut policy = Policy::restrictive(OPERATOR_IMAGE);
        policy.ingress.allowed_host_suffixes = vec!["example.com".into()];
        let nginx = with_portal("    ingress: {host: p.example.com, className: nginx, tlsSecretName: t}\n");
        let default_class = with_portal("    ingress: {host: p.example.com, tlsSecretName: t}\n");
        assert!(validate(&nginx, &policy).is_empty() && validate(&default_class, &policy).is_empty(), "empty list: any class");
        policy.ingress.allowed_class_names = vec!["internal".into()];
        assert_eq!(rules(&validate(&nginx, &policy)), [Rule::IngressClass]);
        assert_eq!(rules(&validate(&default_class, &policy)), [Rule::IngressClass]);
    }

    #[test]
    fn public_portals_need_the_policy_and_the_effective_mode_follows_it() {
        let public = with_portal("    access: {mode: public}\n");
        let mut policy = Policy::restrictive(OPERATOR_IMAGE);
        let v = validate(&public, &policy);
        assert_eq!(rules(&v), [Rule::PublicPortal]);
        assert_eq!(v[0].refuses(), None, "the portal still runs, with sign-in");
        assert_eq!(effective_access_mode(&public, &policy), AccessMode::Kubernetes);
        policy.allow_public_portals = true;
        assert!(validate(&public, &policy).is_empty());
        assert_eq!(effective_access_mode(&public, &policy), AccessMode::Public);
        assert_eq!(effective_access_mode(&with_portal("    replicas: 1\n"), &policy), AccessMode::Kubernetes);
    }
}
