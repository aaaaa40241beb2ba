//! The `hyperpage` binary: `operator`, `portal`, `crd`, `version`.

use clap::{Args, Parser, Subcommand};
use hyperpage::engine::EngineConfig;
use hyperpage::lease::LeaseConfig;
use hyperpage::operator::{OperatorConfig, children::BuildConfig};
use hyperpage::portal::PortalConfig;
use hyperpage::providers::http::ClientConfig;
use hyperpage::providers::safety::{Cidr, EndpointPolicy};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "hyperpage", version = hyperpage::VERSION, about = "Developer portals as Kubernetes resources")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (leader-elected; run two or more replicas).
    Operator(Box<OperatorArgs>),
    /// Run one Workspace's portal (started by the operator in the Workspace's namespace).
    Portal(Box<PortalArgs>),
    /// Print the CustomResourceDefinitions as YAML.
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(Args)]
struct OperatorArgs {
    /// Address of the admin server (/metrics, /healthz, /readyz).
    #[arg(long, env = "HYPERPAGE_ADMIN_ADDRESS", default_value = "0.0.0.0:9090")]
    admin_address: SocketAddr,

    /// Elect a leader through a Lease so that only one replica acts. Turn off only when
    /// exactly one replica runs.
    #[arg(long, env = "HYPERPAGE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,

    /// Namespace of the leader Lease; defaults to the pod's namespace, then the kubeconfig's.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,

    /// Name of the leader Lease.
    #[arg(long, env = "HYPERPAGE_LEASE_NAME", default_value = "hyperpage-operator")]
    lease_name: String,

    /// This replica's identity in the Lease; defaults to the pod name, then host name and pid.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// How long a Lease stays valid without renewal before a standby may take it.
    #[arg(long, env = "HYPERPAGE_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,

    /// How long the leader keeps acting without a successful renewal (must be shorter than
    /// the lease duration: this is what fences a partitioned leader).
    #[arg(long, env = "HYPERPAGE_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    renew_deadline: Duration,

    /// How often the leader renews and a standby retries.
    #[arg(long, env = "HYPERPAGE_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    retry_period: Duration,

    /// The ClusterRoleBinding (created by the chart, granting `create` on tokenreviews) whose
    /// subjects the operator keeps equal to the portals' ServiceAccounts. Empty: left alone.
    #[arg(long, env = "HYPERPAGE_PORTAL_TOKEN_REVIEW_BINDING", default_value = "")]
    portal_token_review_binding: String,

    /// OpenID Connect issuer every portal signs browsers in with (the one the API server
    /// trusts, so that the portal sees users as kubectl does). Unset: bearer tokens only.
    #[arg(long, env = "HYPERPAGE_PORTAL_OIDC_ISSUER_URL", requires = "portal_oidc_client_id")]
    portal_oidc_issuer_url: Option<String>,

    /// The portals' client ID at that issuer (an audience the API server accepts).
    #[arg(long, env = "HYPERPAGE_PORTAL_OIDC_CLIENT_ID")]
    portal_oidc_client_id: Option<String>,

    /// File holding the client secret (copied into each Workspace's session Secret).
    #[arg(long, env = "HYPERPAGE_PORTAL_OIDC_CLIENT_SECRET_FILE")]
    portal_oidc_client_secret_file: Option<std::path::PathBuf>,

    /// Image the portal Deployments run when a Workspace names none.
    #[arg(long, env = "HYPERPAGE_PORTAL_IMAGE", default_value = concat!("ghcr.io/hyperpage-dev/hyperpage:", env!("CARGO_PKG_VERSION")))]
    portal_image: String,

    /// How often converged objects are looked at again (reads only; no writes unless
    /// something drifted).
    #[arg(long, env = "HYPERPAGE_RESYNC", default_value = "10m", value_parser = humantime::parse_duration)]
    resync: Duration,

    /// Objects reconciled at once per controller.
    #[arg(long, env = "HYPERPAGE_CONCURRENCY", default_value_t = 4)]
    concurrency: u16,

    /// Poll the tools (the aggregation engine). Off: validate bindings and run portals only.
    #[arg(long, env = "HYPERPAGE_POLLING", default_value_t = true, action = clap::ArgAction::Set)]
    polling: bool,

    /// Redis for the engine's cache and rate-limit ledger, e.g. redis://redis:6379/0 (may
    /// hold a password; it is never logged). In-process cache when unset.
    #[arg(long, env = "HYPERPAGE_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,

    /// Prefix of every Redis key the engine writes.
    #[arg(long, env = "HYPERPAGE_REDIS_PREFIX", default_value = "hyperpage")]
    redis_prefix: String,

    /// Private or cluster-internal networks tool endpoints may resolve to (comma-separated
    /// CIDRs, e.g. 10.20.0.0/16 for a self-hosted GitLab). Link-local and cloud-metadata
    /// addresses are refused regardless.
    #[arg(long, env = "HYPERPAGE_ALLOW_PRIVATE_CIDRS", value_delimiter = ',')]
    allow_private_cidrs: Vec<String>,

    /// Allow plain-http tool endpoints (tokens would cross the network unencrypted).
    #[arg(long, env = "HYPERPAGE_ALLOW_INSECURE_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    allow_insecure_http: bool,

    /// Bindings polled at once.
    #[arg(long, env = "HYPERPAGE_POLL_CONCURRENCY", default_value_t = 8)]
    poll_concurrency: usize,

    /// Time limit of one upstream request.
    #[arg(long, env = "HYPERPAGE_UPSTREAM_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    upstream_timeout: Duration,
}

#[derive(Args)]
struct PortalArgs {
    /// Namespace of the Workspace.
    #[arg(long, env = "HYPERPAGE_NAMESPACE")]
    namespace: String,

    /// Name of the Workspace.
    #[arg(long, env = "HYPERPAGE_WORKSPACE")]
    workspace: String,

    /// Address to serve the page, the JSON API and the probes on.
    #[arg(long, env = "HYPERPAGE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// Address to serve /metrics on (and the probes again); keep it away from users.
    #[arg(long, env = "HYPERPAGE_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,

    /// Serve only the JSON API and probes (sidecar mode, beside a portal image of your own).
    #[arg(long, env = "HYPERPAGE_API_ONLY")]
    api_only: bool,

    /// Who may see the portal: `kubernetes` (whoever the cluster's RBAC allows to get the
    /// Workspace, signed in with a bearer token) or `public` (anyone who can reach it).
    #[arg(long, env = "HYPERPAGE_ACCESS_MODE", default_value = "kubernetes")]
    access_mode: hyperpage::portal::auth::AccessMode,

    /// OpenID Connect issuer for browser sign-in (the one the API server trusts); without
    /// it, only bearer tokens sign in.
    #[arg(long, env = "HYPERPAGE_OIDC_ISSUER_URL", requires_all = ["oidc_client_id", "session_key_file"])]
    oidc_issuer_url: Option<String>,

    /// The portals' client ID at the issuer (an audience the API server accepts).
    #[arg(long, env = "HYPERPAGE_OIDC_CLIENT_ID")]
    oidc_client_id: Option<String>,

    /// File holding the client secret; without it the portal is a public client (PKCE only).
    #[arg(long, env = "HYPERPAGE_OIDC_CLIENT_SECRET_FILE")]
    oidc_client_secret_file: Option<std::path::PathBuf>,

    /// CA certificate (PEM) of the issuer, when it is not publicly trusted.
    #[arg(long, env = "HYPERPAGE_OIDC_CA_FILE")]
    oidc_ca_file: Option<std::path::PathBuf>,

    /// The portal's address as browsers reach it (https://<ingress host>/); the redirect URI
    /// is <external-url>/auth/callback. Unset: only loopback hosts (a port-forward).
    #[arg(long, env = "HYPERPAGE_EXTERNAL_URL")]
    external_url: Option<url::Url>,

    /// File holding the session key (64 bytes; the operator's per-Workspace Secret).
    #[arg(long, env = "HYPERPAGE_SESSION_KEY_FILE")]
    session_key_file: Option<std::path::PathBuf>,

    /// Host names served besides loopback (comma-separated: the Ingress host, the Service's
    /// names); requests for any other Host get 421. Empty: any Host.
    #[arg(long, env = "HYPERPAGE_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,

    /// Live `/events` connections allowed per signed-in identity.
    #[arg(long, env = "HYPERPAGE_MAX_STREAMS_PER_IDENTITY", default_value_t = hyperpage::portal::MAX_STREAMS_PER_IDENTITY)]
    max_streams_per_identity: usize,

    /// Live `/events` connections allowed per portal process.
    #[arg(long, env = "HYPERPAGE_MAX_STREAMS", default_value_t = hyperpage::portal::MAX_STREAMS)]
    max_streams: usize,

    /// On SIGTERM, how long to wait for open requests after ending the live streams.
    #[arg(long, env = "HYPERPAGE_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "hyperpage".into());
    format!("{host}-{}", std::process::id())
}

/// A client from the in-cluster config or KUBECONFIG, announcing itself in the User-Agent so
/// that audit logs and `apiserver_request_total` tell the operator's requests apart.
async fn client(user_agent: String) -> Result<kube::Client, Box<dyn std::error::Error + Send + Sync>> {
    let mut config = kube::Config::infer().await.map_err(|e| format!("failed to load a Kubernetes config: {e}"))?;
    let value = http::HeaderValue::from_str(&user_agent).map_err(|e| format!("failed to build the user agent: {e}"))?;
    config.headers.push((http::header::USER_AGENT, value));
    Ok(kube::Client::try_from(config).map_err(|e| format!("failed to create a Kubernetes client: {e}"))?)
}

async fn run_operator(args: OperatorArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let identity = args.identity.unwrap_or_else(default_identity);
    let client = client(format!("hyperpage-operator/{} ({identity})", hyperpage::VERSION)).await?;
    let lease = if args.leader_elect {
        let lease = LeaseConfig {
            namespace: args.lease_namespace.unwrap_or_else(|| client.default_namespace().to_string()),
            name: args.lease_name,
            identity,
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
        };
        lease.validate()?;
        Some(lease)
    } else {
        None
    };
    let engine = if args.polling {
        let allowed = args
            .allow_private_cidrs
            .iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| c.parse::<Cidr>().map_err(|e| format!("failed to parse --allow-private-cidrs: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let client = ClientConfig {
            timeout: args.upstream_timeout,
            policy: EndpointPolicy { allowed, allow_http: args.allow_insecure_http },
            ..ClientConfig::default()
        };
        Some(EngineConfig { redis_url: args.redis_url, redis_prefix: args.redis_prefix, client, concurrency: args.poll_concurrency.max(1) })
    } else {
        None
    };
    let portal_oidc = match (args.portal_oidc_issuer_url, args.portal_oidc_client_id) {
        (Some(issuer_url), Some(client_id)) => {
            let client_secret = match &args.portal_oidc_client_secret_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("failed to read --portal-oidc-client-secret-file {}: {e}", path.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            Some(hyperpage::operator::portal_access::PortalOidc { issuer_url, client_id, client_secret })
        }
        _ => None,
    };
    tracing::info!(
        version = hyperpage::VERSION,
        leader_elect = lease.is_some(),
        polling = engine.is_some(),
        portal_sign_in = portal_oidc.is_some(),
        "starting hyperpage operator"
    );
    let config = OperatorConfig {
        admin_address: args.admin_address,
        lease,
        build: BuildConfig {
            portal_image: args.portal_image,
            portal_access: hyperpage::operator::portal_access::PortalAccess::new(Some(args.portal_token_review_binding), portal_oidc),
        },
        resync: args.resync,
        concurrency: args.concurrency.max(1),
        engine,
    };
    hyperpage::operator::run(client, config).await
}

async fn run_portal(args: PortalArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = client(format!("hyperpage-portal/{}", hyperpage::VERSION)).await?;
    let config = PortalConfig {
        namespace: args.namespace,
        workspace: args.workspace,
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        api_only: args.api_only,
        access_mode: args.access_mode,
        allowed_hosts: args.allowed_hosts,
        max_streams_per_identity: args.max_streams_per_identity,
        max_streams: args.max_streams,
        drain_timeout: args.drain_timeout,
        oidc: match (args.oidc_issuer_url, args.oidc_client_id, args.session_key_file) {
            (Some(issuer_url), Some(client_id), Some(session_key_file)) => Some(hyperpage::portal::oidc::OidcConfig {
                issuer_url,
                client_id,
                client_secret_file: args.oidc_client_secret_file,
                ca_file: args.oidc_ca_file,
                external_url: args.external_url,
                session_key_file,
            }),
            _ => None,
        },
    };
    hyperpage::portal::run(client, config).await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd { out_dir: None } => {
            print!("{}", hyperpage::api::crds_yaml());
            Ok(())
        }
        Command::Crd { out_dir: Some(dir) } => write_crds(&dir),
        Command::Version => {
            println!("hyperpage {}", hyperpage::VERSION);
            Ok(())
        }
        Command::Operator(args) => runtime().and_then(|rt| {
            hyperpage::telemetry::init();
            rt.block_on(run_operator(*args))
        }),
        Command::Portal(args) => runtime().and_then(|rt| {
            hyperpage::telemetry::init();
            rt.block_on(run_portal(*args))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "exiting");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn write_crds(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(dir)?;
    for (name, yaml) in hyperpage::api::crd_files() {
        std::fs::write(dir.join(&name), yaml).map_err(|e| format!("failed to write {}: {e}", dir.join(&name).display()))?;
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, Box<dyn std::error::Error + Send + Sync>> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
