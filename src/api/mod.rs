//! The resource contract: `Workspace` and `ToolBinding` in `hyperpage.dev/v1alpha1`.
//!
//! Every field carries a doc comment (it becomes the `kubectl explain` text) and every rule the
//! API server can check lives in the schema (enums, bounds, CEL), so bad input is refused at
//! `kubectl apply` time with a message a person understands.

pub mod conditions;
pub mod duration;
pub mod toolbinding;
pub mod workspace;

pub use toolbinding::{Provider, REQUESTED_AT_ANNOTATION, ToolBinding, ToolBindingSpec, ToolBindingStatus};
pub use workspace::{Workspace, WorkspaceSpec, WorkspaceStatus};

use kube::CustomResourceExt;

pub const GROUP: &str = "hyperpage.dev";
pub const VERSION: &str = "v1alpha1";

/// Each CRD with the file name it is committed under in `crds/` (sorted, so that
/// `cat crds/*.yaml` equals `hyperpage crd`).
pub fn crd_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = [ToolBinding::crd(), Workspace::crd()]
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            let yaml = format!("---\n{}", serde_norway::to_string(&crd).expect("a CRD serializes to YAML"));
            (name, yaml)
        })
        .collect();
    files.sort();
    files
}

/// Both CRDs as one multi-document YAML stream: what `hyperpage crd` prints.
pub fn crds_yaml() -> String {
    crd_files().into_iter().map(|(_, yaml)| yaml).collect()
}

/// CEL rule for names of Secrets and other DNS-1123 subdomain names.
pub(crate) const DNS1123_SUBDOMAIN_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";

/// Workspace names become the names of the portal's Service and Deployment, so they must be
/// DNS-1035 labels short enough to take a suffix.
pub(crate) const WORKSPACE_NAME_RULE: &str = "self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
pub(crate) const WORKSPACE_NAME_MESSAGE: &str =
    "must be a Workspace name: start with a lowercase letter, then lowercase letters, digits and '-', at most 50 characters";

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// The pattern inside a `self.matches('…')` rule.
    fn pattern(rule: &str) -> regex::Regex {
        let start = rule.find("self.matches('").unwrap() + "self.matches('".len();
        let end = start + rule[start..].find("')").unwrap();
        regex::Regex::new(&rule[start..end]).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Every Workspace name the schema accepts is also a DNS-1123 subdomain (what Secret
        /// and most object names must be), so children named after it are accepted too.
        #[test]
        fn workspace_names_are_dns_subdomains(name in "[a-z0-9.-]{1,50}") {
            if pattern(WORKSPACE_NAME_RULE).is_match(&name) {
                prop_assert!(pattern(DNS1123_SUBDOMAIN_RULE).is_match(&name), "{:?}", name);
                prop_assert!(name.as_bytes()[0].is_ascii_lowercase());
            }
        }
    }
}
