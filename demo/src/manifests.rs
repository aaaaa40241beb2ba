//! The demo's objects: one Workspace (`demo`, a public portal), one credential Secret per
//! tool — opted in with the label and pinned with the endpoints annotation, as every
//! credential must be (README, "Credentials") — and a ToolBinding per tool. All point at the
//! demo APIs, except GitHub when `GITHUB_TOKEN` is set: then the GitHub binding reads the
//! real api.github.com (the repositories in `HYPERPAGE_DEMO_REPOS`) with that token.

use crate::world;
use serde_json::{Value, json};

pub const WORKSPACE: &str = "demo";
/// What the GitHub binding reads from the real GitHub when `HYPERPAGE_DEMO_REPOS` is unset.
pub const DEFAULT_REAL_REPOS: &str = "kube-rs/kube,tokio-rs/axum";
pub const REAL_GITHUB: &str = "https://api.github.com";

#[derive(clap::Args)]
pub struct Args {
    /// The demo GitHub API (`serve` writes it as DEMO_GITHUB_URL).
    #[arg(long)]
    github_url: String,
    /// The demo GitLab API.
    #[arg(long)]
    gitlab_url: String,
    /// The demo Jira API.
    #[arg(long)]
    jira_url: String,
}

/// The objects as YAML documents. `env` looks up `GITHUB_TOKEN` and `HYPERPAGE_DEMO_REPOS`.
pub fn render(args: &Args, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    for object in objects(args, env)? {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&object).map_err(|e| format!("failed to write YAML: {e}"))?);
    }
    Ok(out)
}

fn objects(args: &Args, env: impl Fn(&str) -> Option<String>) -> Result<Vec<Value>, String> {
    for url in [&args.github_url, &args.gitlab_url, &args.jira_url] {
        url::Url::parse(url).map_err(|e| format!("failed to parse the demo API URL {url:?}: {e}"))?;
    }
    let real_token = env("GITHUB_TOKEN").map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    let github = match &real_token {
        Some(token) => {
            let repos = env("HYPERPAGE_DEMO_REPOS").filter(|r| !r.trim().is_empty()).unwrap_or_else(|| DEFAULT_REAL_REPOS.into());
            let repos = repositories(&repos)?;
            // Real quota: poll once a minute and leave most of it to people and CI.
            let mut binding = binding("github", REAL_GITHUB, json!({"github": {"repositories": repos}}));
            binding["spec"]["refreshInterval"] = "1m".into();
            binding["spec"]["rateLimit"] = json!({"minRemaining": 500});
            [secret("github-token", REAL_GITHUB, token), binding]
        }
        None => [
            secret("github-token", &args.github_url, crate::GITHUB_TOKEN),
            binding("github", &args.github_url, json!({"github": {"repositories": world::GITHUB_REPOS}})),
        ],
    };
    let [github_secret, github_binding] = github;
    Ok(vec![
        json!({
            "apiVersion": "hyperpage.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": WORKSPACE, "labels": part_of()},
            "spec": {
                "displayName": "Demo team (data from the hyperpage-demo server)",
                // The shortest interval the API allows, so the page moves while you watch.
                "refreshInterval": "30s",
                "portal": {"replicas": 1, "service": {"type": "ClusterIP", "port": 80},
                           // Allowed because make run starts the operator with --allow-public-portals.
                           "access": {"mode": "public"}},
            },
        }),
        github_secret,
        secret("gitlab-token", &args.gitlab_url, crate::GITLAB_TOKEN),
        secret("jira-token", &args.jira_url, crate::JIRA_TOKEN),
        github_binding,
        binding("gitlab", &args.gitlab_url, json!({"gitlab": {"projects": [world::GITLAB_PROJECT]}})),
        binding("jira", &args.jira_url, json!({"jira": {"jql": world::JIRA_JQL}})),
    ])
}

fn part_of() -> Value {
    json!({"app.kubernetes.io/part-of": "hyperpage-demo"})
}

/// `owner/name` entries of a comma-separated list, refused here with the variable named
/// rather than later by the API server.
fn repositories(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once('/') {
            Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => Ok(r.to_string()),
            _ => Err(format!("HYPERPAGE_DEMO_REPOS: {r:?} is not a repository written owner/name, e.g. kube-rs/kube")),
        })
        .collect()
}

/// A credential Secret: opted in, and pinned to the one endpoint it is for.
fn secret(name: &str, endpoint: &str, token: &str) -> Value {
    let mut labels = part_of();
    labels[hyperpage::providers::credential::LABEL] = "true".into();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {(hyperpage::providers::credential::ENDPOINTS_ANNOTATION): endpoint}},
        "type": "Opaque",
        "stringData": {"token": token},
    })
}

fn binding(provider: &str, endpoint: &str, block: Value) -> Value {
    let mut spec = json!({
        "workspaceRef": {"name": WORKSPACE},
        "provider": provider,
        "endpoint": endpoint,
        "credentialsSecretRef": {"name": format!("{provider}-token"), "key": "token"},
    });
    if let (Some(spec), Some(block)) = (spec.as_object_mut(), block.as_object()) {
        spec.extend(block.clone());
    }
    json!({"apiVersion": "hyperpage.dev/v1alpha1", "kind": "ToolBinding",
           "metadata": {"name": provider, "labels": part_of()}, "spec": spec})
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperpage::api::{ToolBinding, Workspace};
    use hyperpage::providers::credential::{Target, check};
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;

    fn args() -> Args {
        Args {
            github_url: "http://127.0.0.1:40001".into(),
            gitlab_url: "http://127.0.0.1:40002".into(),
            jira_url: "http://127.0.0.1:40003".into(),
        }
    }

    /// The YAML read back into the product's own types, in the demo namespace.
    fn parse(yaml: &str) -> (Vec<Workspace>, Vec<Secret>, Vec<ToolBinding>) {
        let (mut workspaces, mut secrets, mut bindings) = (vec![], vec![], vec![]);
        for document in serde_norway::Deserializer::from_str(yaml) {
            let value: Value = serde::Deserialize::deserialize(document).unwrap();
            let mut value = value;
            value["metadata"]["namespace"] = "hyperpage-demo".into();
            match value["kind"].as_str().unwrap() {
                "Workspace" => workspaces.push(serde_json::from_value(value).unwrap()),
                "ToolBinding" => bindings.push(serde_json::from_value(value).unwrap()),
                "Secret" => {
                    // What the API server makes of stringData.
                    let mut secret: Secret = serde_json::from_value(value).unwrap();
                    let data = secret.string_data.take().unwrap().into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect();
                    secret.data = Some(data);
                    secrets.push(secret);
                }
                other => panic!("unexpected kind {other}"),
            }
        }
        (workspaces, secrets, bindings)
    }

    /// Each binding's credential passes the operator's own check (label, endpoint, key),
    /// and yields `token`.
    fn credentials(secrets: &[Secret], bindings: &[ToolBinding]) -> Vec<(String, String)> {
        bindings
            .iter()
            .map(|b| {
                let target = Target::for_binding(b);
                let secret = secrets.iter().find(|s| s.metadata.name.as_deref() == Some(target.secret.as_str()));
                let token = check(&target, secret).unwrap_or_else(|p| panic!("{}: {p}", b.metadata.name.as_deref().unwrap_or_default()));
                (b.metadata.name.clone().unwrap(), token.expose().to_string())
            })
            .collect()
    }

    #[test]
    fn the_demo_objects_point_every_tool_at_the_demo_apis_with_pinned_credentials() {
        let yaml = render(&args(), |_| None).unwrap();
        let (workspaces, secrets, bindings) = parse(&yaml);
        assert_eq!(workspaces.len(), 1);
        assert_eq!(
            serde_json::to_value(&workspaces[0].spec.portal.access).unwrap(),
            json!({"mode": "public"}),
            "the demo portal is public (make run allows it)"
        );
        let endpoints: Vec<_> = bindings.iter().map(|b| (b.metadata.name.clone().unwrap(), b.spec.endpoint.clone().unwrap())).collect();
        assert_eq!(
            endpoints,
            [
                ("github".to_string(), "http://127.0.0.1:40001".to_string()),
                ("gitlab".into(), "http://127.0.0.1:40002".into()),
                ("jira".into(), "http://127.0.0.1:40003".into())
            ]
        );
        assert_eq!(
            credentials(&secrets, &bindings),
            [
                ("github".to_string(), crate::GITHUB_TOKEN.to_string()),
                ("gitlab".into(), crate::GITLAB_TOKEN.into()),
                ("jira".into(), crate::JIRA_TOKEN.into())
            ]
        );
        // A demo token is pinned to its demo API only: aimed elsewhere, the operator refuses it.
        let mut elsewhere = bindings[1].clone();
        elsewhere.spec.endpoint = Some("http://127.0.0.1:40001".into());
        let problem = check(&Target::for_binding(&elsewhere), secrets.iter().find(|s| s.metadata.name.as_deref() == Some("gitlab-token")));
        assert_eq!(problem.err().map(|p| p.reason().as_str()), Some("EndpointNotAllowed"));
    }

    #[test]
    fn with_github_token_the_github_binding_reads_the_real_github_and_nothing_else_changes() {
        let env = |name: &str| match name {
            "GITHUB_TOKEN" => Some("ghp_exampleToken123\n".to_string()),
            "HYPERPAGE_DEMO_REPOS" => Some("octo-org/api, octo-org/web".to_string()),
            _ => None,
        };
        let yaml = render(&args(), env).unwrap();
        let (_, secrets, bindings) = parse(&yaml);
        let github = bindings.iter().find(|b| b.metadata.name.as_deref() == Some("github")).unwrap();
        assert_eq!(github.spec.endpoint.as_deref(), Some(REAL_GITHUB));
        assert_eq!(github.spec.github.as_ref().unwrap().repositories, ["octo-org/api", "octo-org/web"]);
        let secret = secrets.iter().find(|s| s.metadata.name.as_deref() == Some("github-token")).unwrap();
        assert_eq!(secret.metadata.annotations.as_ref().unwrap()["hyperpage.dev/endpoints"], REAL_GITHUB);
        let tokens = credentials(&secrets, &bindings);
        assert_eq!(tokens[0], ("github".to_string(), "ghp_exampleToken123".to_string()), "the token, trimmed");
        assert_eq!(tokens[1].1, crate::GITLAB_TOKEN, "GitLab stays on the demo API");
        // The real token may not go to the demo API (or anywhere but api.github.com).
        let mut demo = github.clone();
        demo.spec.endpoint = Some(args().github_url);
        assert!(check(&Target::for_binding(&demo), Some(secret)).is_err());

        let default = render(&args(), |name| (name == "GITHUB_TOKEN").then(|| "t".to_string())).unwrap();
        let (_, _, bindings) = parse(&default);
        assert_eq!(bindings[0].spec.github.as_ref().unwrap().repositories, ["kube-rs/kube", "tokio-rs/axum"]);
    }

    #[test]
    fn a_blank_token_means_demo_data_and_bad_repositories_are_refused_by_name() {
        let yaml = render(&args(), |name| (name == "GITHUB_TOKEN").then(|| "  ".to_string())).unwrap();
        assert!(!yaml.contains(REAL_GITHUB), "a blank GITHUB_TOKEN is no token");
        let error = render(&args(), |name| match name {
            "GITHUB_TOKEN" => Some("t".into()),
            _ => Some("kube-rs".into()),
        })
        .unwrap_err();
        assert!(error.contains("HYPERPAGE_DEMO_REPOS") && error.contains("\"kube-rs\""), "{error}");
        let bad = Args { github_url: "not a url".into(), ..args() };
        assert!(render(&bad, |_| None).unwrap_err().contains("not a url"));
    }
}
