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

mod audit;
mod operator;
mod report;
mod shards;

use clap::{Parser, Subcommand};

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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match Cli::parse().command {
        Command::Operator(args) => operator::run(args).await,
        Command::Report(args) => report::run(args),
        Command::Shards(args) => shards::run(args),
    }
}
