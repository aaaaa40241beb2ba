//! What the demo's GitHub, GitLab and Jira hold at each step: a pure function of the step
//! number and the start time, so that within a step every answer is the same (ETags match,
//! 304s happen as with the real APIs) and tests can check how the data moves.
//!
//! Things arrive on a conveyor: one every few steps, each staying a while that varies from
//! item to item, so counts go up and down. A CI workflow turns red and green, pipelines
//! follow their own rhythm, Jira tickets move To Do → In Progress → In Review → Done.

use crate::fakes::{github, gitlab, jira};
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub const GITHUB_REPOS: [&str; 2] = ["acme/payments-api", "acme/payments-web"];
pub const GITLAB_PROJECT: &str = "payments/ledger";
pub const GITLAB_PROJECT_ID: u64 = 4211;
pub const JIRA_PROJECT: &str = "PAY";
pub const JIRA_JQL: &str = "project = PAY AND statusCategory != Done ORDER BY updated DESC";

/// The data of one step.
#[derive(Clone, Debug)]
pub struct World {
    pub github: BTreeMap<String, github::Repo>,
    pub gitlab: BTreeMap<String, gitlab::Project>,
    pub jira: Vec<Value>,
}

/// Items opened one every `every` steps (serial n at step n·every, n may be negative: the
/// backlog at start), each open for `min_life` to `min_life + spread - 1` steps.
struct Flow {
    every: i64,
    min_life: i64,
    spread: i64,
}

impl Flow {
    fn life(&self, serial: i64) -> i64 {
        // A fixed scramble of the serial: lives look random but never change.
        self.min_life + (serial * 7919 + 13).rem_euclid(self.spread)
    }

    /// The serials open at `step`, oldest first, with the step each was opened at.
    fn open(&self, step: i64) -> Vec<(i64, i64)> {
        let longest = self.min_life + self.spread;
        let first = (step - longest).div_euclid(self.every);
        (first..=step.div_euclid(self.every))
            .map(|n| (n, n * self.every))
            .filter(|&(n, opened)| opened <= step && step < opened + self.life(n))
            .collect()
    }
}

/// A GitHub Actions workflow with one push run on main every `every` steps.
struct Workflow {
    id: u64,
    name: &'static str,
    fails: fn(i64) -> bool,
    every: i64,
}

const PR_TITLES: [&str; 12] = [
    "Retry idempotent payment captures",
    "Bump axum to 0.8",
    "Add refund reason codes to the ledger export",
    "Fix rounding of JPY amounts",
    "Cache exchange rates for 60 s",
    "Move webhook signing to the shared crate",
    "Show settlement delays on the dashboard",
    "Drop the legacy v1 checkout endpoint",
    "Tighten CSP on the payment page",
    "Parallelise the reconciliation job",
    "Add 3-D Secure challenge telemetry",
    "Document the chargeback runbook",
];
const ISSUE_TITLES: [&str; 8] = [
    "Checkout times out behind the corporate proxy",
    "Refund e-mails show the wrong currency",
    "Flaky test: settlement_report_is_stable",
    "Dashboard shows yesterday's totals after midnight UTC",
    "Webhook retries ignore Retry-After",
    "Ledger export misses cancelled captures",
    "Support SEPA Instant payouts",
    "PDF invoices render without the logo",
];
const TICKET_TITLES: [&str; 10] = [
    "Quarterly PCI scan findings",
    "Onboard the new acquirer in Brazil",
    "Payout report for finance is late",
    "Rotate the card vault keys",
    "Customer cannot add a second card",
    "Investigate duplicate captures on 11-14",
    "Dispute evidence upload fails for large files",
    "Migrate fraud rules to the new engine",
    "Reduce checkout p99 below 400 ms",
    "Audit access to production databases",
];
const PEOPLE: [&str; 6] = ["dana", "fox", "walter", "monica", "john", "alex"];

fn pick<T: Copy>(list: &[T], n: i64) -> T {
    list[n.rem_euclid(list.len() as i64) as usize]
}

/// The time of a step, as GitHub writes it (`2026-11-20T10:00:00Z`).
fn at(start: jiff::Timestamp, step: i64, step_length: jiff::SignedDuration) -> jiff::Timestamp {
    start + step_length * i32::try_from(step).unwrap_or(i32::MAX)
}

fn github_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn gitlab_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string()
}

fn jira_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.000+0000").to_string()
}

/// Whether the `CI` workflow of acme/payments-api fails at `step`: red for two steps, green
/// for two.
pub fn api_ci_fails(step: i64) -> bool {
    step.rem_euclid(4) < 2
}

/// Whether the newest finished pipeline of payments/ledger fails at `step`.
pub fn ledger_pipeline_fails(step: i64) -> bool {
    step.rem_euclid(6) == 3
}

/// The world at `step` (0 at start; a step lasts `step_length`).
pub fn world(step: i64, start: jiff::Timestamp, step_length: std::time::Duration) -> World {
    let length = jiff::SignedDuration::try_from(step_length).unwrap_or(jiff::SignedDuration::from_secs(15));
    let when = |s: i64| at(start, s, length);
    World { github: github_repos(step, &when), gitlab: gitlab_projects(step, &when), jira: jira_tickets(step, &when) }
}

fn github_repos(step: i64, when: &dyn Fn(i64) -> jiff::Timestamp) -> BTreeMap<String, github::Repo> {
    let mut repos = BTreeMap::new();
    for (index, repo) in GITHUB_REPOS.iter().enumerate() {
        let offset = index as i64 * 5;
        let pulls_flow = if index == 0 { Flow { every: 2, min_life: 6, spread: 7 } } else { Flow { every: 3, min_life: 5, spread: 6 } };
        let pulls = pulls_flow
            .open(step)
            .into_iter()
            .map(|(n, opened)| {
                let number = 200 + n * 2 + index as i64;
                let mut pr = github::pull(repo, number.unsigned_abs(), pick(&PR_TITLES, n + offset));
                pr["user"]["login"] = pick(&PEOPLE, n).into();
                pr["draft"] = (n.rem_euclid(5) == 4).into();
                // A review or a push a few steps after opening counts as an update.
                let updated = opened + (step - opened).min(n.rem_euclid(3));
                pr["updated_at"] = github_time(when(updated)).into();
                pr
            })
            .collect();
        let issues = Flow { every: 3, min_life: 9, spread: 12 }
            .open(step + offset)
            .into_iter()
            .map(|(n, opened)| {
                let number = 100 + n * 2 + index as i64;
                let mut issue = github::issue(repo, number.unsigned_abs(), pick(&ISSUE_TITLES, n + offset), false);
                issue["user"]["login"] = pick(&PEOPLE, n + 2).into();
                issue["updated_at"] = github_time(when(opened - offset)).into();
                issue
            })
            .collect();
        let workflows = if index == 0 {
            [
                Workflow { id: 11, name: "CI", fails: api_ci_fails, every: 1 },
                Workflow { id: 12, name: "Deploy", fails: |_| false, every: 4 },
            ]
        } else {
            [
                Workflow { id: 21, name: "CI", fails: |s| s.rem_euclid(7) == 5, every: 1 },
                Workflow { id: 22, name: "Lighthouse", fails: |_| false, every: 3 },
            ]
        };
        let mut runs = Vec::new();
        for Workflow { id: workflow, name, fails, every } in workflows {
            // The ten newest push runs on main, one every `every` steps.
            let newest = step.div_euclid(every) * every;
            for s in (0..10).map(|i| newest - i * every) {
                let id = 900_000 + workflow * 10_000 + (s + 5_000).unsigned_abs();
                let conclusion = if fails(s) { "failure" } else { "success" };
                let mut run = github::run(id, workflow, name, conclusion, &github_time(when(s)));
                run["head_repository"]["full_name"] = (*repo).into();
                run["html_url"] = format!("https://github.com/{repo}/actions/runs/{id}").into();
                run["display_title"] = pick(&PR_TITLES, s + offset).into();
                runs.push(run);
            }
        }
        repos.insert(repo.to_string(), github::Repo { default_branch: "main".into(), pulls, issues, runs, issues_enabled: true });
    }
    repos
}

fn gitlab_projects(step: i64, when: &dyn Fn(i64) -> jiff::Timestamp) -> BTreeMap<String, gitlab::Project> {
    let project = GITLAB_PROJECT;
    let merge_requests = Flow { every: 3, min_life: 6, spread: 9 }
        .open(step)
        .into_iter()
        .map(|(n, opened)| {
            let iid = (60 + n).unsigned_abs();
            gitlab::merge_request(project, iid, pick(&PR_TITLES, n + 7), "opened", n.rem_euclid(4) == 3, &gitlab_time(when(opened)))
        })
        .collect();
    let issues = Flow { every: 4, min_life: 10, spread: 15 }
        .open(step)
        .into_iter()
        .map(|(n, opened)| {
            let iid = (30 + n).unsigned_abs();
            let assignee = (n.rem_euclid(3) != 0).then(|| pick(&PEOPLE, n));
            gitlab::issue(project, iid, pick(&ISSUE_TITLES, n + 3), "opened", assignee, &gitlab_time(when(opened)))
        })
        .collect();
    // One pipeline per step on main; on every third step the newest is still running.
    let mut pipelines: Vec<Value> = (0..10)
        .map(|i| step - i)
        .map(|s| {
            let status = if ledger_pipeline_fails(s) { "failed" } else { "success" };
            gitlab::pipeline(project, (7_000 + s).unsigned_abs(), status, "main", &gitlab_time(when(s)))
        })
        .collect();
    if step.rem_euclid(3) == 1 {
        pipelines.push(gitlab::pipeline(project, (7_001 + step).unsigned_abs(), "running", "main", &gitlab_time(when(step))));
    }
    let ledger =
        gitlab::Project { id: GITLAB_PROJECT_ID, default_branch: "main".into(), merge_requests, issues, pipelines, disabled: vec![] };
    BTreeMap::from([(project.to_string(), ledger)])
}

/// Where a ticket is `age` steps after it was opened, and when it got there.
fn ticket_status(age: i64) -> (&'static str, &'static str, i64) {
    match age {
        0..2 => ("To Do", "new", 0),
        2..5 => ("In Progress", "indeterminate", 2),
        _ => ("In Review", "indeterminate", 5),
    }
}

fn jira_tickets(step: i64, when: &dyn Fn(i64) -> jiff::Timestamp) -> Vec<Value> {
    // A ticket leaves the JQL's result (statusCategory != Done) when it is done.
    Flow { every: 2, min_life: 8, spread: 9 }
        .open(step)
        .into_iter()
        .map(|(n, opened)| {
            let (status, category, since) = ticket_status(step - opened);
            let key = format!("{JIRA_PROJECT}-{}", 300 + n);
            let assignee = (status != "To Do").then(|| pick(&["Dana Scully", "Fox Mulder", "Walter Skinner", "Monica Reyes"], n));
            let mut ticket = jira::issue(&key, pick(&TICKET_TITLES, n), status, assignee, &jira_time(when(opened + since)));
            ticket["fields"]["status"]["statusCategory"]["key"] = category.into();
            ticket
        })
        .collect()
}

/// One line for the demo server's log: what changed at this step.
pub fn describe(world: &World) -> String {
    let pulls: usize = world.github.values().map(|r| r.pulls.len()).sum();
    let issues: usize = world.github.values().map(|r| r.issues.len()).sum();
    let ledger = &world.gitlab[GITLAB_PROJECT];
    let newest_finished = |runs: &[Value], field: &str, done: &[&str]| -> String {
        runs.iter()
            .filter(|r| r[field].as_str().is_some_and(|s| done.contains(&s)))
            .max_by_key(|r| r["created_at"].as_str().map(str::to_string))
            .and_then(|r| r[field].as_str())
            .unwrap_or("none")
            .to_string()
    };
    let api_ci: Vec<Value> = world.github[GITHUB_REPOS[0]].runs.iter().filter(|r| r["name"] == "CI").cloned().collect();
    json!({
        "github": {"pullRequests": pulls, "issues": issues,
                   "paymentsApiCI": newest_finished(&api_ci, "conclusion", &["success", "failure"])},
        "gitlab": {"mergeRequests": ledger.merge_requests.len(), "issues": ledger.issues.len(),
                   "ledgerPipeline": newest_finished(&ledger.pipelines, "status", &["success", "failed"])},
        "jira": {"openTickets": world.jira.len()},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const STEP: Duration = Duration::from_secs(15);

    fn start() -> jiff::Timestamp {
        "2026-11-23T19:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_step_always_gives_the_same_data_so_etags_match_within_it() {
        let a = world(7, start(), STEP);
        let b = world(7, start(), STEP);
        assert_eq!(serde_json::to_string(&a.jira).unwrap(), serde_json::to_string(&b.jira).unwrap());
        assert_eq!(format!("{:?}", a.github), format!("{:?}", b.github));
        assert_eq!(format!("{:?}", a.gitlab), format!("{:?}", b.gitlab));
    }

    #[test]
    fn the_ci_workflow_turns_red_and_green() {
        let newest_ci = |step: i64| {
            let w = world(step, start(), STEP);
            let runs = &w.github["acme/payments-api"].runs;
            let newest = runs.iter().filter(|r| r["name"] == "CI").max_by_key(|r| r["created_at"].as_str().unwrap().to_string()).unwrap();
            newest["conclusion"].as_str().unwrap().to_string()
        };
        let seen: Vec<String> = (0..8).map(newest_ci).collect();
        assert_eq!(seen, ["failure", "failure", "success", "success", "failure", "failure", "success", "success"]);
    }

    #[test]
    fn the_ledger_pipeline_fails_now_and_then_and_a_running_one_never_hides_it() {
        let statuses: Vec<bool> = (0..12).map(ledger_pipeline_fails).collect();
        assert!(statuses.contains(&true) && statuses.contains(&false));
        let w = world(4, start(), STEP); // 4 % 3 == 1: the newest is running; step 3 failed
        let pipelines = &w.gitlab[GITLAB_PROJECT].pipelines;
        assert!(pipelines.iter().any(|p| p["status"] == "running"));
        let newest_done = pipelines.iter().filter(|p| p["status"] != "running").max_by_key(|p| p["id"].as_u64()).unwrap()["status"].clone();
        assert_eq!(newest_done, "success", "step 4 itself succeeded");
        let w = world(3, start(), STEP);
        let newest = w.gitlab[GITLAB_PROJECT].pipelines.iter().max_by_key(|p| p["id"].as_u64()).unwrap()["status"].clone();
        assert_eq!(newest, "failed");
    }

    #[test]
    fn new_pull_requests_appear_and_old_ones_go() {
        let numbers = |step: i64| -> Vec<u64> {
            world(step, start(), STEP).github["acme/payments-api"].pulls.iter().map(|p| p["number"].as_u64().unwrap()).collect()
        };
        let (before, after) = (numbers(0), numbers(12));
        assert!(!before.is_empty() && !after.is_empty(), "{before:?} {after:?}");
        assert!(after.iter().any(|n| !before.contains(n)), "new PRs at step 12: {after:?} vs {before:?}");
        assert!(before.iter().any(|n| !after.contains(n)), "some PRs of step 0 are closed by step 12");
        // Counts move: not the same number of PRs at every step.
        let counts: std::collections::BTreeSet<usize> = (0..20).map(|s| numbers(s).len()).collect();
        assert!(counts.len() > 1, "{counts:?}");
    }

    #[test]
    fn every_step_changes_something_a_poll_would_see() {
        for step in 0..40 {
            assert_ne!(describe(&world(step, start(), STEP)), "", "step {step}");
            let (a, b) = (world(step, start(), STEP), world(step + 1, start(), STEP));
            assert_ne!(format!("{:?}", a.github), format!("{:?}", b.github), "GitHub changes from step {step} to {}", step + 1);
        }
    }

    #[test]
    fn tickets_move_through_the_workflow_and_leave_when_done() {
        let status_of = |step: i64, key: &str| -> Option<String> {
            world(step, start(), STEP).jira.iter().find(|t| t["key"] == key).map(|t| t["fields"]["status"]["name"].as_str().unwrap().into())
        };
        // PAY-305 is opened at step 10.
        assert_eq!(status_of(9, "PAY-305"), None);
        assert_eq!(status_of(10, "PAY-305").as_deref(), Some("To Do"));
        assert_eq!(status_of(12, "PAY-305").as_deref(), Some("In Progress"));
        assert_eq!(status_of(15, "PAY-305").as_deref(), Some("In Review"));
        assert_eq!(status_of(40, "PAY-305"), None, "done: out of the JQL's result");
        assert!(!world(0, start(), STEP).jira.is_empty(), "a backlog at start");
    }

    #[test]
    fn every_tool_has_data_from_the_first_step() {
        let w = world(0, start(), STEP);
        for repo in GITHUB_REPOS {
            assert!(!w.github[repo].pulls.is_empty() && !w.github[repo].runs.is_empty(), "{repo}");
        }
        assert!(GITHUB_REPOS.iter().any(|r| !w.github[*r].issues.is_empty()));
        let ledger = &w.gitlab[GITLAB_PROJECT];
        assert!(!ledger.merge_requests.is_empty() && !ledger.issues.is_empty() && !ledger.pipelines.is_empty());
        assert!(api_ci_fails(0), "a red pipeline to look at from the start");
    }
}
