//! ToolBindings by the Workspace they belong to, kept in step with the bindings' watch cache.
//!
//! Every Workspace reconcile needs its own bindings, and every new Workspace spec wakes its
//! bindings. A scan of the cache for each costs O(bindings), so a cold start of N Workspaces
//! cost O(N²): at 10,000 Workspaces, hundreds of millions of comparisons and as many `Arc`
//! clones. The index answers in O(bindings of that Workspace).

use crate::api::ToolBinding;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// (namespace, name): a binding's or a Workspace's place.
type Place = (String, String);

#[derive(Clone, Default)]
pub struct BindingIndex {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// (namespace, workspace) → the names of the bindings that reference it.
    by_workspace: HashMap<Place, BTreeSet<String>>,
    /// (namespace, binding) → the workspace it references, to move it when its spec changes.
    workspace_of: HashMap<Place, String>,
}

/// Which Workspace a binding belongs to: the one of `spec.workspaceRef.name` in its own
/// namespace (the same rule as [`super::workspace::bindings_of`]).
fn place(binding: &ToolBinding) -> Option<(Place, String)> {
    let namespace = binding.metadata.namespace.clone()?;
    let name = binding.metadata.name.clone()?;
    Some(((namespace, name), binding.spec.workspace_ref.name.clone()))
}

impl BindingIndex {
    /// The bindings of Workspace `namespace/workspace`, sorted by name.
    pub fn bindings_of(&self, namespace: &str, workspace: &str) -> Vec<ObjectRef<ToolBinding>> {
        let inner = self.inner.read().expect("binding index lock poisoned");
        let key = (namespace.to_string(), workspace.to_string());
        inner.by_workspace.get(&key).into_iter().flatten().map(|name| ObjectRef::new(name).within(namespace)).collect()
    }

    /// Follows one event of the bindings' watch (after the store applied it).
    pub fn follow(&self, event: &Event<ToolBinding>, all: impl FnOnce() -> Vec<Arc<ToolBinding>>) {
        let mut inner = self.inner.write().expect("binding index lock poisoned");
        match event {
            Event::Apply(binding) => inner.insert(binding),
            Event::Delete(binding) => {
                if let Some((place, _)) = place(binding) {
                    inner.remove(&place);
                }
            }
            Event::InitDone => {
                *inner = Inner::default();
                for binding in all() {
                    inner.insert(&binding);
                }
            }
            Event::Init | Event::InitApply(_) => {}
        }
    }
}

impl Inner {
    fn insert(&mut self, binding: &ToolBinding) {
        let Some((place, workspace)) = place(binding) else { return };
        if self.workspace_of.get(&place) == Some(&workspace) {
            return;
        }
        self.remove(&place);
        self.by_workspace.entry((place.0.clone(), workspace.clone())).or_default().insert(place.1.clone());
        self.workspace_of.insert(place, workspace);
    }

    fn remove(&mut self, place: &Place) {
        let Some(workspace) = self.workspace_of.remove(place) else { return };
        let key = (place.0.clone(), workspace);
        if let Some(names) = self.by_workspace.get_mut(&key) {
            names.remove(&place.1);
            if names.is_empty() {
                self.by_workspace.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(namespace: &str, name: &str, workspace: &str) -> ToolBinding {
        serde_norway::from_str(&format!(
            "{{apiVersion: hyperpage.dev/v1alpha1, kind: ToolBinding, metadata: {{name: {name}, namespace: {namespace}}},
              spec: {{workspaceRef: {{name: {workspace}}}, provider: github, credentialsSecretRef: {{name: t, key: token}},
                      github: {{repositories: [a/b]}}}}}}"
        ))
        .unwrap()
    }

    fn names(index: &BindingIndex, namespace: &str, workspace: &str) -> Vec<String> {
        index.bindings_of(namespace, workspace).into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn follows_creates_moves_deletes_and_relists() {
        let index = BindingIndex::default();
        let none = Vec::new;
        index.follow(&Event::Apply(binding("a", "gh", "web")), none);
        index.follow(&Event::Apply(binding("a", "jira", "web")), none);
        index.follow(&Event::Apply(binding("b", "gh", "web")), none);
        assert_eq!(names(&index, "a", "web"), ["gh", "jira"]);
        assert_eq!(names(&index, "b", "web"), ["gh"], "same Workspace name, other namespace: another Workspace");

        index.follow(&Event::Apply(binding("a", "jira", "payments")), none);
        assert_eq!(names(&index, "a", "web"), ["gh"], "a binding whose workspaceRef changed moves");
        assert_eq!(names(&index, "a", "payments"), ["jira"]);

        index.follow(&Event::Delete(binding("a", "gh", "web")), none);
        assert!(names(&index, "a", "web").is_empty());

        index.follow(&Event::InitDone, || vec![Arc::new(binding("c", "x", "w"))]);
        assert_eq!(names(&index, "c", "w"), ["x"]);
        assert!(names(&index, "a", "payments").is_empty() && names(&index, "b", "web").is_empty(), "a relist replaces everything");
    }
}
