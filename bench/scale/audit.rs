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
