//! `scale shards`: a simulation of the shard assignment docs/scaling.md proposes: quota
//! domains (one credential each, weighted by its ToolBindings) placed on shards by
//! consistent hashing with bounded loads, against plain consistent hashing and `hash mod k`.
//! It prints the balance across shards and how many bindings move when a shard is added or
//! lost, and checks the properties the design relies on (panics if one does not hold).

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(clap::Args)]
pub struct Args {
    /// ToolBindings in total.
    #[arg(long, default_value_t = 100_000)]
    bindings: usize,
    /// Quota domains (credentials); their sizes follow a Zipf law (a few big teams).
    #[arg(long, default_value_t = 5_000)]
    domains: usize,
    /// Write the tables here (markdown) as well as to stdout.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn hash(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// Points on the ring per shard: enough that plain consistent hashing is within ~10%.
const VIRTUAL_NODES: usize = 200;
/// Bounded loads: no shard holds more than this times the mean weight.
pub const BOUND: f64 = 1.25;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    Modulo,
    Consistent,
    Bounded,
}

/// Domain (name, weight) → shard, for shards named `shards`.
fn assign(strategy: Strategy, domains: &[(String, u64)], shards: &[String]) -> BTreeMap<String, usize> {
    let mut ring: Vec<(u64, usize)> =
        shards.iter().enumerate().flat_map(|(i, s)| (0..VIRTUAL_NODES).map(move |v| (hash(&[s, &v.to_string()]), i))).collect();
    ring.sort_unstable();
    let total: u64 = domains.iter().map(|d| d.1).sum();
    let capacity = (BOUND * total as f64 / shards.len() as f64).ceil() as u64;
    let mut load = vec![0u64; shards.len()];
    // Bounded loads depends on the order of placement: largest domains first (the usual
    // order for packing unequal weights), ties by the domain's hash, so the result is a
    // function of the set alone and every replica computes the same.
    let mut order: Vec<&(String, u64)> = domains.iter().collect();
    order.sort_by_cached_key(|d| (std::cmp::Reverse(d.1), hash(&[&d.0])));
    let mut out = BTreeMap::new();
    for (name, weight) in order {
        let h = hash(&[name]);
        let shard = match strategy {
            Strategy::Modulo => (h % shards.len() as u64) as usize,
            Strategy::Consistent | Strategy::Bounded => {
                let start = ring.partition_point(|p| p.0 < h);
                let mut chosen = ring[start % ring.len()].1;
                if strategy == Strategy::Bounded {
                    // Walk clockwise to the first shard with room (a domain never splits:
                    // it is one rate-limit budget and one cache); a domain no shard has
                    // room for goes to the least loaded one.
                    let with_room = (0..ring.len()).map(|step| ring[(start + step) % ring.len()].1).find(|s| load[*s] + weight <= capacity);
                    chosen = with_room.unwrap_or_else(|| (0..shards.len()).min_by_key(|s| load[*s]).unwrap_or(chosen));
                }
                chosen
            }
        };
        load[shard] += weight;
        out.insert(name.clone(), shard);
    }
    out
}

struct Figures {
    max_load: u64,
    max_over_mean: f64,
    moved_add: f64,
    moved_lose: f64,
}

fn figures(strategy: Strategy, domains: &[(String, u64)], k: usize) -> Figures {
    let names = |k: usize| (0..k).map(|i| format!("shard-{i}")).collect::<Vec<_>>();
    let weight: BTreeMap<&str, u64> = domains.iter().map(|d| (d.0.as_str(), d.1)).collect();
    let total: u64 = domains.iter().map(|d| d.1).sum();
    let base_names = names(k);
    let base = assign(strategy, domains, &base_names);
    let mut load = vec![0u64; k];
    for (d, s) in &base {
        load[*s] += weight[d.as_str()];
    }
    let max_over_mean = *load.iter().max().unwrap_or(&0) as f64 / (total as f64 / k as f64);
    // Moved: bindings whose shard (by name) changed.
    let moved = |other: &BTreeMap<String, usize>, other_names: &[String]| {
        base.iter().filter(|(d, s)| base_names[**s] != other_names[other[*d]]).map(|(d, _)| weight[d.as_str()]).sum::<u64>() as f64
            / total as f64
    };
    let added_names = names(k + 1);
    let added = assign(strategy, domains, &added_names);
    // Lose shard-0: the others keep their names.
    let lost_names: Vec<String> = base_names[1..].to_vec();
    let lost = assign(strategy, domains, &lost_names);
    Figures {
        max_load: *load.iter().max().unwrap_or(&0),
        max_over_mean,
        moved_add: moved(&added, &added_names),
        moved_lose: moved(&lost, &lost_names),
    }
}

/// Zipf-sized quota domains summing to `bindings` (every domain at least one binding).
fn domains(bindings: usize, count: usize) -> Vec<(String, u64)> {
    let harmonic: f64 = (1..=count).map(|r| 1.0 / r as f64).sum();
    let spare = bindings.saturating_sub(count) as f64;
    let mut out: Vec<(String, u64)> =
        (1..=count).map(|r| (format!("team-{r:05}/credential"), 1 + (spare / harmonic / r as f64).floor() as u64)).collect();
    let assigned: u64 = out.iter().map(|d| d.1).sum();
    out[0].1 += bindings as u64 - assigned.min(bindings as u64);
    out
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let domains = domains(args.bindings, args.domains);
    let largest = domains.iter().map(|d| d.1).max().unwrap_or(0);
    let mut md = String::new();
    writeln!(
        md,
        "{} ToolBindings in {} quota domains (Zipf sizes; the largest holds {largest}), {VIRTUAL_NODES} ring points per shard, bound {BOUND}× the mean.\n",
        args.bindings, args.domains
    )?;
    writeln!(md, "| shards | strategy | busiest shard / mean | bindings moved when a shard is added | … when one is lost |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    for k in [4, 10, 20] {
        let ideal_add = 1.0 / (k + 1) as f64;
        let ideal_lose = 1.0 / k as f64;
        for (label, strategy) in
            [("hash mod k", Strategy::Modulo), ("consistent hashing", Strategy::Consistent), ("bounded loads", Strategy::Bounded)]
        {
            let f = figures(strategy, &domains, k);
            writeln!(
                md,
                "| {k} | {label} | {:.2} | {:.1}% (ideal {:.1}%) | {:.1}% (ideal {:.1}%) |",
                f.max_over_mean,
                100.0 * f.moved_add,
                100.0 * ideal_add,
                100.0 * f.moved_lose,
                100.0 * ideal_lose
            )?;
            if strategy == Strategy::Bounded {
                // The properties the design relies on (not timings): no shard above the bound,
                // or above the one domain that alone exceeds it; far less moves than `mod k`.
                let bound = (BOUND * args.bindings as f64 / k as f64).ceil() as u64;
                assert!(f.max_load <= bound.max(largest), "bounded loads exceeded its bound at {k} shards: {}", f.max_load);
                let modulo = figures(Strategy::Modulo, &domains, k);
                assert!(f.moved_add < modulo.moved_add / 2.0, "bounded loads moved {} vs mod k {}", f.moved_add, modulo.moved_add);
            }
        }
    }
    print!("{md}");
    if let Some(out) = args.out {
        std::fs::write(out, &md)?;
    }
    Ok(())
}
