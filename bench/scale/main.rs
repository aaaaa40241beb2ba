//! `make bench`: the operator at N Workspaces, measured against references run in the same
//! cluster at the same time (see BENCHMARKS.md for what each row means).
//!
//! A Rust program rather than a script because the reference client must apply exactly the
//! children the operator applies: it calls the operator's own pure builder
//! (`operator::children::build`) through kube-rs, and reads convergence through the same
//! watch caches the operator uses. `bench/run.sh` brings the cluster up and down around it.
//!
//!   scale operator --n N --out FILE   one size: cold convergence, memory, resync, API load,
//!                                      leader failover, then the reference client
//!   scale report --results DIR        BENCHMARKS.md and bench/plot.svg from the results
//!   scale shards                      the shard-assignment simulation of docs/scaling.md
//!   scale cache-memory                heap bytes per cached object, per kind

mod audit;
mod memory;
mod operator;
mod report;
mod shards;

use clap::{Parser, Subcommand};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting live heap bytes and allocations (for `cache-memory`).
pub struct CountingAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

impl CountingAllocator {
    /// (bytes, allocations) live now.
    pub fn live() -> (usize, usize) {
        (LIVE_BYTES.load(Ordering::Relaxed), LIVE_ALLOCATIONS.load(Ordering::Relaxed))
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters move.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout as asked for.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(Parser)]
#[command(about = "Hyperpage benchmarks (make bench)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Operator(operator::Args),
    Report(report::Args),
    Shards(shards::Args),
    CacheMemory(memory::Args),
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match Cli::parse().command {
        Command::Operator(args) => operator::run(args).await,
        Command::Report(args) => report::run(args),
        Command::Shards(args) => shards::run(args),
        Command::CacheMemory(args) => memory::run(args),
    }
}
