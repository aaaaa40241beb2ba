//! `scale cache-memory`: bytes per cached object, per kind, as the operator's caches hold
//! them. Each kind's fixture (`bench/scale/fixtures/`, captured from the local API server
//! after a bench run, managedFields included) is renamed `--count` times, deserialized as the
//! watcher does, stripped as the operator's watches strip it, and stored as the operator
//! stores it (Workspaces and ToolBindings in a kube reflector store, children in a
//! `ChildCache`); the heap growth is counted by the bench binary's counting allocator. Unlike RSS,
//! this does not depend on the allocator's fragmentation or on what else the process did.

use crate::CountingAllocator;
use hyperpage::api::{ToolBinding, Workspace};
use hyperpage::operator::cached::Cached;
use hyperpage::operator::child_cache::ChildCache;
use hyperpage::operator::scope::strip;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Resource;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Write as _;

#[derive(clap::Args)]
pub struct Args {
    /// Objects per kind (as many as at N = 10,000).
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Write the table here (markdown) as well as to stdout.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Row {
    kind: &'static str,
    bytes: f64,
    allocations: f64,
}

/// The fixture's name and uid, replaced to make `count` distinct objects of the same shape.
const NAME: &str = "ws-00345";
const UID_PREFIX: usize = 8;

/// `count` distinct copies of `fixture`.
fn copies(fixture: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let renamed = fixture.replace(NAME, &format!("ws-{i:05}"));
            // Every uid of the fixture gets a distinct first segment per copy.
            let mut out = String::with_capacity(renamed.len());
            let mut rest = renamed.as_str();
            while let Some(at) = rest.find("\"uid\": \"") {
                let start = at + 8;
                out.push_str(&rest[..start]);
                out.push_str(&format!("{i:0UID_PREFIX$x}"));
                rest = &rest[(start + UID_PREFIX).min(rest.len())..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

fn measure<K>(kind: &'static str, fixture: &str, count: usize) -> Row
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + 'static,
{
    let mut writer: Writer<K> = Writer::default();
    let texts = copies(fixture, count);
    let (bytes_before, allocations_before) = CountingAllocator::live();
    for text in &texts {
        let mut object: K = serde_json::from_str(text).expect("the fixture deserializes");
        strip(&mut object);
        writer.apply_watcher_event(&Event::Apply(object));
    }
    let (bytes, allocations) = CountingAllocator::live();
    drop(writer);
    Row { kind, bytes: (bytes - bytes_before) as f64 / count as f64, allocations: (allocations - allocations_before) as f64 / count as f64 }
}

fn measure_child<K>(kind: &'static str, fixture: &str, count: usize) -> Row
where
    K: Resource<DynamicType = ()> + 'static,
{
    let cache: ChildCache<K> = ChildCache::new(1);
    let texts = copies(fixture, count);
    let (bytes_before, allocations_before) = CountingAllocator::live();
    for text in &texts {
        let mut object: Cached<K> = serde_json::from_str(text).expect("the fixture deserializes");
        strip(&mut object);
        cache.follow("", Event::Apply(object));
    }
    let (bytes, allocations) = CountingAllocator::live();
    assert_eq!(cache.len(), count, "every copy is a distinct child");
    drop(cache);
    Row { kind, bytes: (bytes - bytes_before) as f64 / count as f64, allocations: (allocations - allocations_before) as f64 / count as f64 }
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let n = args.count;
    let rows = [
        measure::<Workspace>("Workspace", include_str!("fixtures/ws.json"), n),
        measure::<ToolBinding>("ToolBinding", include_str!("fixtures/tb.json"), n),
        measure_child::<Deployment>("Deployment", include_str!("fixtures/deploy.json"), n),
        measure_child::<Service>("Service", include_str!("fixtures/svc.json"), n),
        measure_child::<ServiceAccount>("ServiceAccount", include_str!("fixtures/sa.json"), n),
        measure_child::<Role>("Role", include_str!("fixtures/role.json"), n),
        measure_child::<RoleBinding>("RoleBinding", include_str!("fixtures/rolebinding.json"), n),
        measure_child::<NetworkPolicy>("NetworkPolicy", include_str!("fixtures/networkpolicy.json"), n),
    ];
    let mut md = String::new();
    writeln!(md, "| cached as | heap bytes per object | allocations per object |")?;
    writeln!(md, "|---|---|---|")?;
    for row in &rows {
        writeln!(md, "| {} | {:.0} B | {:.1} |", row.kind, row.bytes, row.allocations)?;
    }
    let total: f64 = rows.iter().map(|r| r.bytes).sum();
    let objects = rows.len() as f64;
    writeln!(
        md,
        "\nOne Workspace with one binding and its six children: {total:.0} B over {objects} objects, {:.0} B per object (heap, before the allocator's own overhead).",
        total / objects
    )?;
    print!("{md}");
    if let Some(out) = args.out {
        std::fs::write(out, md)?;
    }
    Ok(())
}
