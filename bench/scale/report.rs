//! BENCHMARKS.md and its plot from bench/results/: `<run>/N.json` per size (the current run,
//! and `baseline/` when present: the same suite before the memory and write changes).

use crate::operator::{Outcome, Trial};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// bench/results: `current/` and optionally `baseline/`, plus `env.txt`, `shards.md` and
    /// `notes.md` (the hand-written analysis, included as it is).
    #[arg(long, default_value = "bench/results")]
    results: PathBuf,
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    #[arg(long, default_value = "bench/plot.svg")]
    svg: PathBuf,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn load(dir: &Path) -> Vec<Outcome> {
    let mut out: Vec<Outcome> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    out.sort_by_key(|o| o.n);
    out
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("not reached".into(), |v| format!("{v:.1} {unit}"))
}

fn percentile(mut values: Vec<f64>, p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values.get(rank).copied()
}

pub fn ratio(o: &Outcome) -> Option<f64> {
    if o.reference.applies == 0 {
        return None;
    }
    o.cold.applied_seconds.map(|s| s / o.reference.seconds.max(1e-9))
}

fn reference_cell(o: &Outcome) -> String {
    match o.reference.applies {
        0 => "not run".into(),
        applies => format!("{:.1} s ({applies} applies)", o.reference.seconds),
    }
}

/// Marginal bytes per cached object between the smallest and largest size.
fn bytes_per_object(runs: &[Outcome]) -> Option<f64> {
    let (a, b) = (runs.first()?, runs.last()?);
    let objects = b.memory.cached_objects.checked_sub(a.memory.cached_objects).filter(|d| *d > 0)?;
    Some((b.memory.rss_kib as f64 - a.memory.rss_kib as f64) * 1024.0 / objects as f64)
}

fn sum(writes: &std::collections::BTreeMap<String, u64>) -> u64 {
    writes.values().sum()
}

/// All writes in the cold start's window over all writes in the reference's (the operator's
/// or the reference's plus the cluster's own), where the run counted the cluster's.
fn write_ratio(o: &Outcome) -> Option<f64> {
    if o.cold.cluster_writes.is_empty() || o.reference.cluster_writes.is_empty() {
        return None;
    }
    let reference = o.reference.applies + sum(&o.reference.cluster_writes);
    Some((o.cold.writes_total + sum(&o.cold.cluster_writes)) as f64 / reference.max(1) as f64)
}

/// Writes per second the API server took in the cold start's window and in the reference's:
/// the time ratio is the write ratio times the ratio of these two rates, so the rates show
/// how much of the time ratio is not the operator's extra writes.
fn write_rates(o: &Outcome) -> Option<(f64, f64)> {
    write_ratio(o)?;
    let cold = o.cold.applied_seconds?;
    let all_cold = (o.cold.writes_total + sum(&o.cold.cluster_writes)) as f64;
    let all_reference = (o.reference.applies + sum(&o.reference.cluster_writes)) as f64;
    Some((all_cold / cold.max(1e-9), all_reference / o.reference.seconds.max(1e-9)))
}

/// The API server's writes in each window, the cluster's own beside the operator's or the
/// reference's: the time ratio follows the ratio of all writes once the API server is what
/// both wait for. Sizes measured before the bench counted them are left out.
fn write_cluster_share(w: &mut String, runs: &[Outcome]) -> std::fmt::Result {
    let counted: Vec<(&Outcome, f64)> = runs.iter().filter_map(|o| Some((o, write_ratio(o)?))).collect();
    if counted.is_empty() {
        return Ok(());
    }
    writeln!(w, "\nAll writes the API server took in each window (the cold start's until the work was done, the")?;
    writeln!(w, "reference's until its last apply; audit log, Leases aside): the operator's or the reference's, and the")?;
    writeln!(w, "cluster's own components' for the same children (the controller manager's ReplicaSets, Pods, EndpointSlices,")?;
    writeln!(w, "statuses and Events; the scheduler's bindings; kwok's pod statuses; the API server's own). Both windows")?;
    writeln!(w, "carry the same cluster work; what the operator adds to it is its status writes and Events. The time ratio")?;
    writeln!(w, "is the write ratio times the ratio of the two windows' write rates; a slower rate in the operator's window")?;
    writeln!(w, "is what the API server spends there on more than writes (the operator's start, its watches, its reads).\n")?;
    writeln!(
        w,
        "| N | operator | cluster, operator's window | reference | cluster, reference's window | all writes, operator's / reference's window | writes/s, operator's / reference's window |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|")?;
    let per_client = |writes: &std::collections::BTreeMap<String, u64>| {
        writes.iter().map(|(client, n)| format!("{client} {n}")).collect::<Vec<_>>().join(", ")
    };
    for (o, all) in counted {
        let (cluster, reference_cluster) = (sum(&o.cold.cluster_writes), sum(&o.reference.cluster_writes));
        let rates = write_rates(o).map_or("–".to_string(), |(cold, reference)| format!("{cold:.0} / {reference:.0}"));
        writeln!(
            w,
            "| {} | {} | {cluster} ({}) | {} | {reference_cluster} ({}) | {all:.2}× | {rates} |",
            o.n,
            o.cold.writes_total,
            per_client(&o.cold.cluster_writes),
            o.reference.applies,
            per_client(&o.reference.cluster_writes),
        )?;
    }
    Ok(())
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

fn trials_of<'a>(o: &'a Outcome, signal: &str) -> Vec<&'a Trial> {
    o.failover.iter().filter(|t| t.signal == signal).collect()
}

pub fn run(args: Args) -> Result<(), BoxError> {
    let current = load(&args.results.join("current"));
    if current.is_empty() {
        return Err(format!("no results in {}/current", args.results.display()).into());
    }
    let baseline = load(&args.results.join("baseline"));
    let env = std::fs::read_to_string(args.results.join("env.txt")).unwrap_or_default();
    let mut md = String::new();
    let w = &mut md;
    writeln!(w, "# Benchmarks\n")?;
    writeln!(w, "Generated by `make bench` (bench/run.sh, bench/scale/) from the run in `bench/results/current/`; do not edit by hand.")?;
    writeln!(w, "Every timing is measured, never asserted in a test. This 2-core machine is noisy (its speed differs from day")?;
    writeln!(w, "to day, and it may be shared: the header says what else ran), so each time is also given as a ratio to a")?;
    writeln!(w, "reference measured in the same cluster in the same run.\n")?;
    writeln!(w, "## Machine and versions\n\n```\n{}```\n", env)?;
    writeln!(w, "![memory and convergence time against N](bench/plot.svg)\n")?;

    writeln!(w, "## Cold convergence\n")?;
    writeln!(w, "N Workspaces, each with one GitHub ToolBinding (polling off), 100 per namespace; the operator (release build,")?;
    writeln!(w, "`--concurrency 4`) starts after every object exists. *Work done*: every Workspace has a status for its")?;
    writeln!(w, "generation (its children are applied before) and every ToolBinding is Ready=True. *Ready*: every")?;
    writeln!(w, "Workspace Ready=True, which also waits for the controller manager and kwok to run the pods. *Reference*:")?;
    writeln!(w, "a trivial kube-rs client server-side applying the same children (the operator's own builder), 4")?;
    writeln!(w, "Workspaces at once, into namespaces of its own in the same cluster, with no operator running.\n")?;
    writeln!(
        w,
        "| N | work done | operator CPU | Ready | reference | ratio (goal ≤ 1.2) | operator writes | of which Events | writes per Workspace |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|---|---|")?;
    for o in &current {
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            o.n,
            opt(o.cold.applied_seconds, "s"),
            o.cold.operator_cpu_seconds.map_or("–".into(), |s| format!("{s:.1} s")),
            opt(o.cold.ready_seconds, "s"),
            reference_cell(o),
            ratio(o).map_or("–".into(), |r| format!("{r:.2}×")),
            o.cold.writes_total,
            o.cold.events,
            o.cold.writes_total as f64 / o.n as f64,
        )?;
    }
    writeln!(w, "\nThe operator's writes during the cold start, per request, and its reconciles (its own counters):\n")?;
    for o in &current {
        let list: Vec<String> = o.cold.writes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let reconciles: Vec<String> =
            o.cold.reconciles.iter().map(|(k, v)| format!("{k} {v} ({:.1} per object)", *v as f64 / o.n.max(1) as f64)).collect();
        let reconciles = if reconciles.is_empty() { String::new() } else { format!("; reconciles: {}", reconciles.join(", ")) };
        writeln!(w, "- N = {}: {}{reconciles}", o.n, list.join(", "))?;
    }
    write_cluster_share(w, &current)?;

    writeln!(w, "\n## Memory\n")?;
    writeln!(w, "Operator RSS and peak (VmHWM) five seconds after convergence. Cached objects: Workspaces, ToolBindings and")?;
    writeln!(w, "every labelled child in the cluster. Bytes per cached object: the RSS difference between the largest and")?;
    writeln!(w, "smallest N over the difference in cached objects (the fixed cost of the process left out).\n")?;
    writeln!(w, "| N | cached objects | RSS | peak (VmHWM) | RSS / cached object |")?;
    writeln!(w, "|---|---|---|---|---|")?;
    for o in &current {
        writeln!(
            w,
            "| {} | {} | {:.1} MiB | {:.1} MiB | {:.0} B |",
            o.n,
            o.memory.cached_objects,
            mib(o.memory.rss_kib),
            mib(o.memory.hwm_kib),
            o.memory.rss_kib as f64 * 1024.0 / o.memory.cached_objects.max(1) as f64
        )?;
    }
    let per_object = bytes_per_object(&current);
    writeln!(w, "\nMarginal: {} per cached object.", per_object.map_or("–".into(), |b| format!("{b:.0} B")))?;
    if let Ok(kinds) = std::fs::read_to_string(args.results.join("current/cache-memory.md")) {
        writeln!(w, "\nThe heap each cached object takes, by kind (`scale cache-memory`: 10,000 objects per kind from fixtures")?;
        writeln!(w, "captured from the API server, stored as the operator's caches store them; counted by the allocator, so")?;
        writeln!(w, "neither fragmentation nor the rest of the process counts):\n\n{kinds}")?;
    }

    if !baseline.is_empty() {
        writeln!(w, "\n## Before and after\n")?;
        writeln!(w, "The same suite before the changes listed in the goals below (`bench/results/baseline/`), same machine.\n")?;
        writeln!(
            w,
            "| N | work done before → after | ratio before → after | writes before → after | Events before → after | RSS before → after | peak before → after |"
        )?;
        writeln!(w, "|---|---|---|---|---|---|---|")?;
        for o in &current {
            let Some(b) = baseline.iter().find(|b| b.n == o.n) else { continue };
            writeln!(
                w,
                "| {} | {} → {} | {} → {} | {} → {} | {} → {} | {:.1} → {:.1} MiB | {:.1} → {:.1} MiB |",
                o.n,
                opt(b.cold.applied_seconds, "s"),
                opt(o.cold.applied_seconds, "s"),
                ratio(b).map_or("–".into(), |r| format!("{r:.2}×")),
                ratio(o).map_or("–".into(), |r| format!("{r:.2}×")),
                b.cold.writes_total,
                o.cold.writes_total,
                b.cold.events,
                o.cold.events,
                mib(b.memory.rss_kib),
                mib(o.memory.rss_kib),
                mib(b.memory.hwm_kib),
                mib(o.memory.hwm_kib),
            )?;
        }
        writeln!(
            w,
            "\nMarginal bytes per cached object before: {}.",
            bytes_per_object(&baseline).map_or("–".into(), |b| format!("{b:.0} B"))
        )?;
    }

    writeln!(w, "\n## Converged resync\n")?;
    writeln!(w, "Mutating requests by the operator's user agent (audit log), Lease renewals aside, over three resync periods")?;
    writeln!(w, "after convergence: a second replica with `--resync` shortened for the bench takes over from the cold start's")?;
    writeln!(w, "leader (SIGTERM) and is watched from the signal on, so its takeover counts too. (The cold start runs with")?;
    writeln!(w, "the default `--resync`, 10 minutes, as the chart installs it.)\n")?;
    writeln!(w, "| N | period | watched | writes |")?;
    writeln!(w, "|---|---|---|---|")?;
    for o in &current {
        let list: Vec<String> = o.resync.writes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        writeln!(
            w,
            "| {} | {} s | {:.0} s | {}{} |",
            o.n,
            o.resync.period_seconds,
            o.resync.watched_seconds,
            o.resync.writes_total,
            if list.is_empty() { String::new() } else { format!(" ({})", list.join(", ")) }
        )?;
    }

    writeln!(w, "\n## API load\n")?;
    writeln!(w, "The leader's reads per resource (audit log), from its start to the end of the resync row.\n")?;
    writeln!(w, "| N | seconds | requests |")?;
    writeln!(w, "|---|---|---|")?;
    for o in &current {
        let list: Vec<String> = o.api_load.requests.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        writeln!(w, "| {} | {:.0} | {} |", o.n, o.api_load.seconds, list.join(", "))?;
    }

    writeln!(w, "\n## Leader failover\n")?;
    writeln!(w, "Two replicas (`--lease-duration 6s --renew-deadline 4s --retry-period 1s`). Each trial signals the leader")?;
    writeln!(w, "and, at the same moment, changes one Workspace's replicas, so the new leader has exactly one thing to write.")?;
    writeln!(w, "First write: signal → the new leader's first write other than its Lease (from the audit log).\n")?;
    writeln!(
        w,
        "| N | signal | trials | Lease taken p50 / max | first write p50 / max | writes by the deposed | status writes for unchanged objects | other unrelated writes |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|---|")?;
    for o in &current {
        for signal in ["TERM", "KILL"] {
            let t = trials_of(o, signal);
            if t.is_empty() {
                continue;
            }
            let lease: Vec<f64> = t.iter().filter_map(|t| t.lease_ms).collect();
            let first: Vec<f64> = t.iter().filter_map(|t| t.first_write_ms).collect();
            let s = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.2} s", v / 1000.0));
            writeln!(
                w,
                "| {} | SIG{signal} | {} | {} / {} | {} / {} | {} | {} | {} |",
                o.n,
                t.len(),
                s(percentile(lease.clone(), 50.0)),
                s(lease.iter().copied().reduce(f64::max)),
                s(percentile(first.clone(), 50.0)),
                s(first.iter().copied().reduce(f64::max)),
                t.iter().map(|t| t.deposed_writes).sum::<u64>(),
                t.iter().map(|t| t.unchanged_status_writes).sum::<u64>(),
                t.iter().map(|t| t.unrelated_writes).sum::<u64>(),
            )?;
        }
    }

    // The engine rows (bench/engine/) bring their own fragments: engine.md with the operator's
    // defaults, engine-concurrency-N.md for other --poll-concurrency values.
    let mut fragments: Vec<PathBuf> = std::fs::read_dir(args.results.join("current"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("engine") && n.ends_with(".md")))
        .collect();
    fragments.sort();
    for fragment in fragments {
        writeln!(w, "\n{}", std::fs::read_to_string(fragment)?)?;
    }
    if let Ok(shards) = std::fs::read_to_string(args.results.join("shards.md")) {
        writeln!(w, "\n## Shard assignment (simulation, docs/scaling.md)\n\n{shards}")?;
    }

    writeln!(w, "\n## Goals\n")?;
    let largest = current.last().expect("not empty");
    for o in &current {
        if let Some(r) = ratio(o) {
            let writes = write_ratio(o).map_or(String::new(), |x| format!("; the API server took {x:.2}× the writes in its window"));
            writeln!(w, "- Cold convergence at N = {}: {:.2}× the reference (goal ≤ 1.2×): {}{writes}.", o.n, r, met(r <= 1.2))?;
        } else if o.reference.applies == 0 {
            let why = if o.complete {
                "no reference run at this size (HYPERPAGE_BENCH_REFERENCE_MAX)"
            } else {
                "the run stopped before the reference finished"
            };
            writeln!(w, "- Cold convergence at N = {}: {} with {why}: **not measured**.", o.n, opt(o.cold.applied_seconds, "s"))?;
        } else {
            writeln!(w, "- Cold convergence at N = {}: did not finish: **not met**.", o.n)?;
        }
    }
    let rss = mib(largest.memory.rss_kib);
    if largest.n >= 10_000 {
        writeln!(w, "- Memory at N = 10,000: {rss:.1} MiB RSS (goal ≤ 128 MiB): {}.", met(rss <= 128.0))?;
    } else {
        let projected = per_object.map(|b| rss + b * (80_000.0 - largest.memory.cached_objects as f64) / 1048576.0);
        writeln!(
            w,
            "- Memory at N = 10,000: not run here; projected from the marginal cost: {} (goal ≤ 128 MiB): {}.",
            projected.map_or("–".into(), |p| format!("{p:.0} MiB")),
            met(projected.is_some_and(|p| p <= 128.0))
        )?;
    }
    if let Some(b) = per_object {
        writeln!(w, "- Bytes per cached object: {b:.0} B (goal < 2 KiB): {}.", met(b < 2048.0))?;
    }
    for o in &current {
        writeln!(w, "- Converged resync at N = {}: {} writes (goal 0): {}.", o.n, o.resync.writes_total, met(o.resync.writes_total == 0))?;
    }
    for o in current.iter().filter(|o| !o.failover.is_empty()) {
        let term: Vec<f64> = trials_of(o, "TERM").iter().filter_map(|t| t.first_write_ms).collect();
        let kill: Vec<f64> = trials_of(o, "KILL").iter().filter_map(|t| t.first_write_ms).collect();
        let deposed: u64 = o.failover.iter().map(|t| t.deposed_writes).sum();
        let unchanged: u64 = o.failover.iter().map(|t| t.unchanged_status_writes).sum();
        if let Some(p) = percentile(term.clone(), 50.0) {
            writeln!(
                w,
                "- Graceful failover at N = {}: median {:.2} s over {} trials (goal ≤ 1 s): {}.",
                o.n,
                p / 1000.0,
                term.len(),
                met(p <= 1000.0)
            )?;
        }
        if let Some(p) = percentile(kill.clone(), 50.0) {
            writeln!(
                w,
                "- Crash failover at N = {}: median {:.2} s over {} trials (goal ≤ lease 6 s + 1 s): {}.",
                o.n,
                p / 1000.0,
                kill.len(),
                met(p <= 7000.0)
            )?;
        }
        writeln!(w, "- Writes by the deposed leader at N = {}: {deposed} (goal 0): {}.", o.n, met(deposed == 0))?;
        writeln!(w, "- Status writes for unchanged objects after takeover at N = {}: {unchanged} (goal 0): {}.", o.n, met(unchanged == 0))?;
    }
    if let Ok(notes) = std::fs::read_to_string(args.results.join("notes.md")) {
        writeln!(w, "\n## What was changed, and what is left\n\n{notes}")?;
    }
    std::fs::write(&args.out, md)?;
    std::fs::write(&args.svg, plot(&current, &baseline))?;
    eprintln!("wrote {} and {}", args.out.display(), args.svg.display());
    Ok(())
}

/// Two panels against N (log scale): RSS, and seconds to converge (operator vs reference).
fn plot(current: &[Outcome], baseline: &[Outcome]) -> String {
    let (width, height, pad) = (420.0, 260.0, 50.0);
    let n_min = current.iter().map(|o| o.n).min().unwrap_or(100).max(1) as f64;
    let n_max = current.iter().map(|o| o.n).max().unwrap_or(1000).max(n_min as usize + 1) as f64;
    let x = |n: usize, left: f64| left + pad + ((n as f64).ln() - n_min.ln()) / (n_max.ln() - n_min.ln()).max(1e-9) * (width - 2.0 * pad);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11">"#,
        2.0 * width
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    type Series<'a> = (&'a str, &'a str, Vec<(usize, f64)>);
    let panels: [(&str, f64, Vec<Series>); 2] = [
        (
            "operator RSS (MiB)",
            0.0,
            vec![
                ("after", "#1f77b4", current.iter().map(|o| (o.n, mib(o.memory.rss_kib))).collect()),
                ("before", "#aaaaaa", baseline.iter().map(|o| (o.n, mib(o.memory.rss_kib))).collect()),
            ],
        ),
        (
            "cold convergence (s)",
            width,
            vec![
                ("operator", "#d62728", current.iter().filter_map(|o| Some((o.n, o.cold.applied_seconds?))).collect()),
                ("reference", "#2ca02c", current.iter().filter(|o| o.reference.applies > 0).map(|o| (o.n, o.reference.seconds)).collect()),
                ("before", "#aaaaaa", baseline.iter().filter_map(|o| Some((o.n, o.cold.applied_seconds?))).collect()),
            ],
        ),
    ];
    for (title, left, series) in panels {
        let y_max = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(1.0_f64, f64::max) * 1.1;
        let y = |v: f64| height - pad - v / y_max * (height - 2.0 * pad);
        let _ = writeln!(svg, r#"<text x="{}" y="20" font-size="13">{title}</text>"#, left + pad);
        let _ = writeln!(
            svg,
            r#"<path d="M{l} {t} V{b} H{r}" stroke="black" fill="none"/>"#,
            l = left + pad,
            t = pad,
            b = height - pad,
            r = left + width - pad
        );
        for n in current.iter().map(|o| o.n) {
            let _ = writeln!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle">{n}</text>"#, x(n, left), height - pad + 15.0);
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">N (Workspaces, log scale)</text>"#,
            left + width / 2.0,
            height - 12.0
        );
        for tick in 0..=4 {
            let v = y_max * tick as f64 / 4.0;
            let _ = writeln!(svg, r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"#, left + pad - 4.0, y(v) + 4.0);
        }
        for (i, (label, color, points)) in series.iter().enumerate() {
            if points.is_empty() {
                continue;
            }
            let d: Vec<String> = points.iter().map(|(n, v)| format!("{:.1},{:.1}", x(*n, left), y(*v))).collect();
            let _ = writeln!(svg, r#"<polyline points="{}" stroke="{color}" stroke-width="2" fill="none"/>"#, d.join(" "));
            for (n, v) in points {
                let _ = writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, x(*n, left), y(*v));
            }
            let _ = writeln!(svg, r#"<text x="{}" y="{}" fill="{color}">{label}</text>"#, left + pad + 8.0, pad + 12.0 + 14.0 * i as f64);
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn outcome(n: usize, counted: bool) -> Outcome {
        let mut o = Outcome { n, ..Default::default() };
        o.cold.writes_total = 1_100;
        o.cold.applied_seconds = Some(7.0);
        o.reference.applies = 600;
        o.reference.seconds = 5.0;
        if counted {
            o.cold.cluster_writes = BTreeMap::from([("kube-controller-manager".into(), 1_500), ("kube-scheduler".into(), 200)]);
            o.reference.cluster_writes = BTreeMap::from([("kube-controller-manager".into(), 1_500), ("kube-scheduler".into(), 100)]);
        }
        o
    }

    #[test]
    fn the_write_ratio_counts_the_clusters_writes_on_both_sides() {
        let ratio = write_ratio(&outcome(100, true)).unwrap();
        assert!((ratio - 2_800.0 / 2_200.0).abs() < 1e-9, "{ratio}");
        assert_eq!(write_ratio(&outcome(100, false)), None, "a run that did not count them shows none");
    }

    #[test]
    fn the_time_ratio_is_the_write_ratio_times_the_rate_ratio() {
        let o = outcome(1_000, true);
        let (cold, reference) = write_rates(&o).unwrap();
        assert!((cold - 2_800.0 / 7.0).abs() < 1e-9 && (reference - 2_200.0 / 5.0).abs() < 1e-9, "{cold} {reference}");
        let product = write_ratio(&o).unwrap() * reference / cold;
        assert!((product - ratio(&o).unwrap()).abs() < 1e-9, "{product}");
        let mut still_running = o.clone();
        still_running.cold.applied_seconds = None;
        assert_eq!(write_rates(&still_running), None, "no rate for a cold start that did not finish");
    }

    #[test]
    fn the_share_table_lists_only_the_sizes_that_counted_the_clusters_writes() {
        let mut text = String::new();
        write_cluster_share(&mut text, &[outcome(100, false), outcome(1_000, true)]).unwrap();
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| 1")).collect();
        assert_eq!(
            rows,
            [
                "| 1000 | 1100 | 1700 (kube-controller-manager 1500, kube-scheduler 200) | 600 | 1600 (kube-controller-manager 1500, kube-scheduler 100) | 1.27× | 400 / 440 |"
            ]
        );
        let mut none = String::new();
        write_cluster_share(&mut none, &[outcome(100, false)]).unwrap();
        assert!(none.is_empty(), "no table without the figures: {none}");
    }
}
