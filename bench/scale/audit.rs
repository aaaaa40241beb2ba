//! The API server's audit log (written by e2e/cluster.sh with bench/audit-policy.yaml): who
//! sent which request, read back to count the operator's writes, lists and watches.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub verb: String,
    #[serde(default)]
    pub stage: String,
    #[serde(default)]
    pub user_agent: String,
    #[serde(default)]
    pub object_ref: ObjectRef,
    pub request_received_timestamp: jiff::Timestamp,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

impl Entry {
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection")
    }

    pub fn is_lease(&self) -> bool {
        self.object_ref.resource == "leases"
    }

    /// `resource` or `resource/subresource`.
    pub fn kind(&self) -> String {
        match self.object_ref.subresource.as_str() {
            "" => self.object_ref.resource.clone(),
            sub => format!("{}/{sub}", self.object_ref.resource),
        }
    }

    /// Sent by the operator replica `identity` (its user agent names it).
    pub fn by(&self, identity: &str) -> bool {
        self.client() == OPERATOR_AGENT && self.user_agent.contains(&format!("({identity})"))
    }

    /// The client's product, the user agent up to its first '/' (empty: the bench itself).
    pub fn client(&self) -> &str {
        self.user_agent.split('/').next().unwrap_or_default()
    }
}

/// The product name in the operator's user agent (`hyperpage-operator/VERSION (IDENTITY)`).
const OPERATOR_AGENT: &str = "hyperpage-operator";

pub struct Log {
    path: PathBuf,
}

impl Log {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self { path: path.as_ref().to_path_buf() }
    }

    pub fn offset(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// The operator's requests (any replica) logged after byte `offset`. Lines of other
    /// clients are skipped before parsing: the log holds the controller manager's too.
    pub fn operator_entries(&self, offset: u64) -> Vec<Entry> {
        let marker = format!("{OPERATOR_AGENT}/");
        self.lines(offset, u64::MAX)
            .filter(|l| l.contains(&marker))
            .filter_map(|l| serde_json::from_str::<Entry>(&l).ok())
            // A watch is logged when it starts and again when it ends: count it once.
            .filter(|e| !(e.verb == "watch" && e.stage == "ResponseComplete"))
            .collect()
    }

    /// Mutating requests (Leases aside) of the cluster's own components logged between bytes
    /// `from` and `to`, per client (kube-controller-manager, kube-scheduler, kwok,
    /// kube-apiserver): the work the applied children cause (ReplicaSets, Pods,
    /// EndpointSlices, their statuses and Events), which the reference pays for too. The
    /// operator's requests and the bench's own (it sends no user agent) are left out.
    pub fn cluster_writes(&self, from: u64, to: u64) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for entry in self.lines(from, to).filter_map(|l| serde_json::from_str::<Entry>(&l).ok()) {
            let client = entry.client();
            if entry.is_write() && !entry.is_lease() && !client.is_empty() && client != OPERATOR_AGENT {
                *out.entry(client.to_string()).or_insert(0) += 1;
            }
        }
        out
    }

    /// The log's lines between bytes `from` and `to` (none if it cannot be read).
    fn lines(&self, from: u64, to: u64) -> impl Iterator<Item = String> {
        let file = std::fs::File::open(&self.path).ok().and_then(|mut file| file.seek(SeekFrom::Start(from)).ok().map(|_| file));
        file.into_iter().flat_map(move |file| BufReader::new(file.take(to.saturating_sub(from))).lines().map_while(Result::ok))
    }
}

/// Count per `verb kind`.
pub fn tally<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in entries {
        *out.entry(format!("{} {}", e.verb, e.kind())).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An audit log line as the API server writes it (`--audit-log-format=json`), trimmed to
    /// the fields read here plus one the reader must ignore.
    fn line(verb: &str, stage: &str, agent: &str, resource: &str, subresource: &str, at: &str) -> String {
        let mut entry = serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": "x",
            "verb": verb, "stage": stage,
            "objectRef": {"resource": resource, "subresource": subresource, "namespace": "bench-0", "name": "ws-0"},
            "requestReceivedTimestamp": at,
        });
        // The bench's own client sends no user agent: the field is absent.
        if !agent.is_empty() {
            entry["userAgent"] = agent.into();
        }
        entry.to_string()
    }

    const LEADER: &str = "hyperpage-operator/0.1.0 (bench-a)";
    const STANDBY: &str = "hyperpage-operator/0.1.0 (bench-b)";
    const KCM: &str =
        "kube-controller-manager/v1.34.0 (linux/amd64) kubernetes/abc/system:serviceaccount:kube-system:deployment-controller";

    struct TempLog(PathBuf);

    impl TempLog {
        fn with(lines: &[String]) -> Self {
            let path =
                std::env::temp_dir().join(format!("hyperpage-audit-test-{}-{:?}.log", std::process::id(), std::thread::current().id()));
            let mut file = std::fs::File::create(&path).unwrap();
            for l in lines {
                writeln!(file, "{l}").unwrap();
            }
            Self(path)
        }

        fn append(&self, lines: &[String]) {
            let mut file = std::fs::OpenOptions::new().append(true).open(&self.0).unwrap();
            for l in lines {
                writeln!(file, "{l}").unwrap();
            }
        }
    }

    impl Drop for TempLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const T: &str = "2026-12-02T10:00:00.000000Z";

    #[test]
    fn operator_entries_are_the_operators_after_the_offset_with_each_watch_once() {
        let before = line("patch", "ResponseComplete", LEADER, "deployments", "", T);
        let file = TempLog::with(std::slice::from_ref(&before));
        let log = Log::new(&file.0);
        let offset = log.offset();
        assert_eq!(offset, before.len() as u64 + 1);
        file.append(&[
            line("watch", "ResponseStarted", LEADER, "workspaces", "", T),
            line("watch", "ResponseComplete", LEADER, "workspaces", "", T),
            line("patch", "ResponseComplete", LEADER, "workspaces", "status", T),
            line("create", "ResponseComplete", KCM, "replicasets", "", T),
            line("get", "ResponseComplete", STANDBY, "leases", "", T),
            "not json, a line cut short by a crash".to_string(),
        ]);
        let entries = log.operator_entries(offset);
        let seen: Vec<(&str, String, bool)> = entries.iter().map(|e| (e.verb.as_str(), e.kind(), e.by("bench-a"))).collect();
        assert_eq!(
            seen,
            [("watch", "workspaces".into(), true), ("patch", "workspaces/status".into(), true), ("get", "leases".into(), false)]
        );
        assert!(entries[2].by("bench-b") && entries[2].is_lease() && !entries[2].is_write());
        assert_eq!(
            tally(&entries),
            BTreeMap::from([("get leases".into(), 1), ("patch workspaces/status".into(), 1), ("watch workspaces".into(), 1)])
        );
        assert_eq!(log.operator_entries(0).len(), 4, "from the start, the write before the offset too");
    }

    #[test]
    fn an_identity_is_matched_whole_and_only_in_the_operators_agent() {
        let e = |agent: &str| serde_json::from_str::<Entry>(&line("patch", "", agent, "services", "", T)).unwrap();
        assert!(e(LEADER).by("bench-a"));
        assert!(!e("hyperpage-operator/0.1.0 (bench-ab)").by("bench-a"));
        assert!(!e("kubectl/v1.34.0 (bench-a)").by("bench-a"), "another client naming the identity is not the operator");
        assert_eq!(e(KCM).client(), "kube-controller-manager");
        assert_eq!(e("").client(), "", "the bench sends no user agent");
    }

    #[test]
    fn cluster_writes_count_other_components_writes_between_the_offsets() {
        let file = TempLog::with(&[line("create", "ResponseComplete", KCM, "pods", "", T)]);
        let log = Log::new(&file.0);
        let from = log.offset();
        file.append(&[
            line("create", "ResponseComplete", KCM, "replicasets", "", T),
            line("update", "ResponseComplete", KCM, "replicasets", "status", T),
            line("update", "ResponseComplete", KCM, "leases", "", T),
            line("get", "ResponseComplete", KCM, "deployments", "", T),
            line("create", "ResponseComplete", "kube-scheduler/v1.34.0 (linux/amd64)", "pods", "binding", T),
            line("patch", "ResponseComplete", LEADER, "services", "", T),
            line("patch", "ResponseComplete", "", "deployments", "", T),
        ]);
        let to = log.offset();
        file.append(&[line("create", "ResponseComplete", KCM, "pods", "", T)]);
        let writes = log.cluster_writes(from, to);
        assert_eq!(writes, BTreeMap::from([("kube-controller-manager".into(), 2), ("kube-scheduler".into(), 1)]));
        assert_eq!(log.cluster_writes(0, u64::MAX)["kube-controller-manager"], 4);
        assert!(Log::new("/nonexistent/audit.log").cluster_writes(0, u64::MAX).is_empty(), "an unreadable log counts nothing");
    }
}
