//! ToolBindings by the Workspace they belong to, kept in step with the bindings' watch cache.
//!
//! Every Workspace reconcile needs its own bindings, and every new Workspace spec wakes its
//! bindings. A scan of the cache for each costs O(bindings), so a cold start of N Workspaces
//! cost O(N²): at 10,000 Workspaces, hundreds of millions of comparisons and as many `Arc`
//! clones. The index answers in O(bindings of that Workspace).

use crate::api::ToolBinding;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Clone, Default)]
pub struct BindingIndex {
    inner: Arc<RwLock<Inner>>,
}

/// Keys are `namespace/name` in one allocation, and a Workspace's bindings a sorted list:
/// the index holds an entry per binding at 10,000 of them, so a pair of `String`s per key
/// and a B-tree node per Workspace (~500 B per binding) were most of its memory.
#[derive(Default)]
struct Inner {
    /// `namespace/workspace` → the names of the bindings that belong to it, sorted.
    by_workspace: HashMap<Box<str>, Vec<Box<str>>>,
    /// `namespace/binding` → the workspace it belongs to, to move it when its spec changes.
    workspace_of: HashMap<Box<str>, Box<str>>,
}

fn key(namespace: &str, name: &str) -> Box<str> {
    format!("{namespace}/{name}").into_boxed_str()
}

impl BindingIndex {
    /// The bindings of Workspace `namespace/workspace`, sorted by name.
    pub fn bindings_of(&self, namespace: &str, workspace: &str) -> Vec<ObjectRef<ToolBinding>> {
        let inner = self.inner.read().expect("binding index lock poisoned");
        inner
            .by_workspace
            .get(&key(namespace, workspace))
            .into_iter()
            .flatten()
            .map(|name| ObjectRef::new(name).within(namespace))
            .collect()
    }

    /// Follows one event of the bindings' watch (after the store applied it).
    pub fn follow(&self, event: &Event<ToolBinding>, all: impl FnOnce() -> Vec<Arc<ToolBinding>>) {
        let mut inner = self.inner.write().expect("binding index lock poisoned");
        match event {
            Event::Apply(binding) => inner.insert(binding),
            Event::Delete(binding) => {
                if let (Some(namespace), Some(name)) = (binding.metadata.namespace.as_deref(), binding.metadata.name.as_deref()) {
                    inner.remove(namespace, name);
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
        let (Some((namespace, workspace)), Some(name)) = (binding.workspace(), binding.metadata.name.as_deref()) else { return };
        if self.workspace_of.get(&key(namespace, name)).is_some_and(|w| w.as_ref() == workspace) {
            return;
        }
        self.remove(namespace, name);
        let names = self.by_workspace.entry(key(namespace, workspace)).or_default();
        if let Err(at) = names.binary_search_by(|n| n.as_ref().cmp(name)) {
            names.insert(at, name.into());
        }
        self.workspace_of.insert(key(namespace, name), workspace.into());
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(workspace) = self.workspace_of.remove(&key(namespace, name)) else { return };
        let workspace_key = key(namespace, &workspace);
        if let Some(names) = self.by_workspace.get_mut(&workspace_key) {
            names.retain(|n| n.as_ref() != name);
            if names.is_empty() {
                self.by_workspace.remove(&workspace_key);
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
