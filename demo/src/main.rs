//! `hyperpage-demo`: the demo data source of `make run`. Not part of the product.
//!
//! `serve` starts GitHub-, GitLab- and Jira-shaped APIs on loopback — the very fakes the
//! product's tests use (`tests/fakes/`, which follow each tool's documentation: pagination,
//! ETags and 304s, rate-limit headers, token checks) — and moves their data on every step
//! (see `world.rs`). `manifests` prints the demo Workspace, credential Secrets and
//! ToolBindings pointing at them (or, with `GITHUB_TOKEN`, GitHub bindings at the real
//! api.github.com).

#[path = "../../tests/fakes/mod.rs"]
mod fakes;
mod manifests;
mod world;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "hyperpage-demo", about = "Demo data source for `make run` (not part of hyperpage itself)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve demo GitHub, GitLab and Jira APIs on loopback until SIGINT/SIGTERM.
    Serve {
        /// Where to write the servers' URLs (KEY=value lines, for a shell to source); removed on exit.
        #[arg(long)]
        endpoints_file: PathBuf,
        /// How often the data moves on.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        step: Duration,
    },
    /// Print the demo Workspace, Secrets and ToolBindings (YAML, without a namespace).
    Manifests(manifests::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { endpoints_file, step } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("failed to start the runtime: {e}"))
            .and_then(|rt| rt.block_on(serve(endpoints_file, step))),
        Command::Manifests(args) => manifests::render(&args, |name| std::env::var(name).ok()).map(|yaml| print!("{yaml}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hyperpage-demo: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The tokens the demo APIs accept; the manifests put them into the Secrets. Not secrets:
/// they open nothing but this demo.
pub const GITHUB_TOKEN: &str = "demo-github-token";
pub const GITLAB_TOKEN: &str = "demo-gitlab-token";
pub const JIRA_TOKEN: &str = "demo-jira-token";

async fn serve(endpoints_file: PathBuf, step: Duration) -> Result<(), String> {
    if step.is_zero() {
        return Err("--step must be longer than 0s".into());
    }
    let start = jiff::Timestamp::now();
    let first = world::world(0, start, step);
    let github = fakes::github::Github::start(first.github.clone()).await;
    let gitlab = fakes::gitlab::Gitlab::start(first.gitlab.clone()).await;
    let jira = fakes::jira::Jira::start(first.jira.clone()).await;
    // The real APIs refuse other tokens; so do these, exactly in the header each tool uses.
    github.shared.expect_auth(&format!("Bearer {GITHUB_TOKEN}"));
    gitlab.shared.expect_auth(GITLAB_TOKEN);
    jira.shared.expect_auth(&format!("Bearer {JIRA_TOKEN}"));

    let endpoints = format!("DEMO_GITHUB_URL={}\nDEMO_GITLAB_URL={}\nDEMO_JIRA_URL={}\n", github.url(), gitlab.url(), jira.url());
    // Written whole, then renamed: a reader never sees half a file.
    let partial = endpoints_file.with_extension("partial");
    std::fs::write(&partial, &endpoints).map_err(|e| format!("failed to write {}: {e}", partial.display()))?;
    std::fs::rename(&partial, &endpoints_file).map_err(|e| format!("failed to write {}: {e}", endpoints_file.display()))?;
    println!("demo APIs up (data moves every {}):\n{endpoints}", humantime::format_duration(step));
    println!("step 0: {}", world::describe(&first));

    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| format!("failed to handle SIGTERM: {e}"))?;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    let mut number: i64 = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = ticks.tick() => {
                number += 1;
                let now = world::world(number, start, step);
                *github.repos.lock().unwrap() = now.github.clone();
                *gitlab.projects.lock().unwrap() = now.gitlab.clone();
                *jira.issues.lock().unwrap() = now.jira.clone();
                println!("step {number}: {}", world::describe(&now));
            }
        }
    }
    let _ = std::fs::remove_file(&endpoints_file);
    println!("demo APIs stopped");
    Ok(())
}
