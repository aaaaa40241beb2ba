//! The `hyperpage` binary: `operator`, `portal`, `crd`, `version`.

use clap::{Args, Parser, Subcommand};
use hyperpage::api::workspace::ServiceType;
use hyperpage::engine::EngineConfig;
use hyperpage::lease::LeaseConfig;
use hyperpage::operator::policy::{IngressPolicy, Policy, image_repository};
use hyperpage::operator::{OperatorConfig, children::BuildConfig};
use hyperpage::portal::PortalConfig;
use hyperpage::providers::http::CacheKey;
use hyperpage::providers::http::ClientConfig;
use hyperpage::providers::safety::{Cidr, EndpointPolicy};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// jemalloc rather than glibc's malloc: see Cargo.toml (memory per cached object).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

    /// File holding the per-install key of the engine's cache digests (the chart mounts it
    /// from a Secret it creates). `HYPERPAGE_CACHE_KEY` may hold the key itself. Without
    /// either, a random key per process: a new leader cannot use what Redis holds.
    #[arg(long, env = "HYPERPAGE_CACHE_KEY_FILE")]
    cache_key_file: Option<std::path::PathBuf>,

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

    /// Send tool requests through this HTTP(S) proxy, e.g. http://egress-proxy.infra:3128.
    /// Proxy variables from the environment (HTTPS_PROXY …) are ignored: with them the
    /// endpoint policy would see only the proxy. With a proxy, the policy checks each
    /// endpoint's name and the addresses it resolves to here before the request.
    #[arg(long, env = "HYPERPAGE_UPSTREAM_PROXY", value_parser = parse_proxy)]
    upstream_proxy: Option<url::Url>,

    /// Time limit of one upstream request.
    #[arg(long, env = "HYPERPAGE_UPSTREAM_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    upstream_timeout: Duration,

    /// Watch and act only in these namespaces (comma-separated); empty: the whole cluster.
    #[arg(long, env = "HYPERPAGE_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,

    /// Serve the webhook receiver (POST /hooks/<digest>) on --webhook-address, on every replica.
    #[arg(long, env = "HYPERPAGE_WEBHOOKS", default_value_t = true, action = clap::ArgAction::Set)]
    webhooks: bool,

    /// Address of the webhook receiver (plain HTTP: terminate TLS at the Ingress).
    #[arg(long, env = "HYPERPAGE_WEBHOOK_ADDRESS", default_value = "0.0.0.0:8090")]
    webhook_address: SocketAddr,

    /// Largest webhook body accepted, in bytes (larger: 413, before any signature is computed).
    #[arg(long, env = "HYPERPAGE_WEBHOOK_MAX_BODY", default_value_t = hyperpage::webhook::DEFAULT_MAX_BODY)]
    webhook_max_body: usize,

    #[command(flatten)]
    policy: PolicyArgs,
}

/// The admin policy: what a Workspace may ask for. Everything not allowed here is refused
/// with `Ready=False` reason `PolicyViolation`.
#[derive(Args)]
struct PolicyArgs {
    /// Image prefixes a Workspace's portal or sidecar image must start with (comma-separated;
    /// matched at a '/', ':' or '@' boundary). Default: the repository of --portal-image.
    #[arg(long, env = "HYPERPAGE_POLICY_ALLOWED_IMAGES", value_delimiter = ',')]
    policy_allowed_images: Vec<String>,

    /// Service types a Workspace may ask for (comma-separated: ClusterIP, NodePort, LoadBalancer).
    #[arg(long, env = "HYPERPAGE_POLICY_ALLOWED_SERVICE_TYPES", value_delimiter = ',', default_value = "ClusterIP")]
    policy_allowed_service_types: Vec<String>,

    /// DNS suffixes an Ingress host must end in (comma-separated; `{namespace}` stands for the
    /// Workspace's namespace). Empty: no Ingress is allowed. Wildcard hosts are always refused.
    #[arg(long, env = "HYPERPAGE_POLICY_INGRESS_HOST_SUFFIXES", value_delimiter = ',')]
    policy_ingress_host_suffixes: Vec<String>,

    /// IngressClass names a Workspace may pick (comma-separated); empty: any.
    #[arg(long, env = "HYPERPAGE_POLICY_INGRESS_CLASS_NAMES", value_delimiter = ',')]
    policy_ingress_class_names: Vec<String>,

    /// Allow an Ingress without TLS (plain HTTP).
    #[arg(long, env = "HYPERPAGE_POLICY_INGRESS_ALLOW_WITHOUT_TLS", default_value_t = false, action = clap::ArgAction::Set)]
    policy_ingress_allow_without_tls: bool,

    /// Annotations put on every portal Ingress, as a JSON object (e.g.
    /// '{"cert-manager.io/cluster-issuer":"letsencrypt"}').
    #[arg(long, env = "HYPERPAGE_POLICY_INGRESS_ANNOTATIONS")]
    policy_ingress_annotations: Option<String>,

    /// Namespace of the ingress controller: its pods may reach the portals (NetworkPolicy).
    #[arg(long, env = "HYPERPAGE_INGRESS_CONTROLLER_NAMESPACE")]
    ingress_controller_namespace: Option<String>,

    /// Allow `spec.portal.access.mode: public` (portals anyone who reaches them may read).
    #[arg(long, env = "HYPERPAGE_ALLOW_PUBLIC_PORTALS", default_value_t = false, action = clap::ArgAction::Set)]
    allow_public_portals: bool,
}

impl PolicyArgs {
    fn into_policy(self, portal_image: &str) -> Result<Policy, String> {
        let non_empty =
            |items: Vec<String>| -> Vec<String> { items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect() };
        let mut allowed_images = non_empty(self.policy_allowed_images);
        if allowed_images.is_empty() {
            allowed_images.push(image_repository(portal_image).to_string());
        }
        let mut service_types = non_empty(self.policy_allowed_service_types);
        if service_types.is_empty() {
            // ClusterIP is what every portal needs; an empty list cannot mean "none".
            service_types.push("ClusterIP".into());
        }
        let allowed_service_types = service_types
            .iter()
            .map(|t| match t.as_str() {
                "ClusterIP" => Ok(ServiceType::ClusterIP),
                "NodePort" => Ok(ServiceType::NodePort),
                "LoadBalancer" => Ok(ServiceType::LoadBalancer),
                other => {
                    Err(format!("failed to parse --policy-allowed-service-types: {other:?} is not ClusterIP, NodePort or LoadBalancer"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let annotations = match self.policy_ingress_annotations.as_deref().map(str::trim) {
            None | Some("") => Default::default(),
            Some(json) => serde_json::from_str(json)
                .map_err(|e| format!("failed to parse --policy-ingress-annotations as a JSON object of strings: {e}"))?,
        };
        Ok(Policy {
            allowed_images,
            allowed_service_types,
            ingress: IngressPolicy {
                allowed_host_suffixes: non_empty(self.policy_ingress_host_suffixes),
                allowed_class_names: non_empty(self.policy_ingress_class_names),
                allow_without_tls: self.policy_ingress_allow_without_tls,
                annotations,
            },
            ingress_controller_namespace: self.ingress_controller_namespace.map(|ns| ns.trim().to_string()).filter(|ns| !ns.is_empty()),
            allow_public_portals: self.allow_public_portals,
        })
    }
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

fn parse_proxy(value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|e| format!("failed to parse the proxy URL: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.host_str().is_some() => Ok(url),
        _ => Err("the proxy must be an http:// or https:// URL with a host, e.g. http://egress-proxy:3128".into()),
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "hyperpage".into());
    format!("{host}-{}", std::process::id())
}

/// The in-cluster config or KUBECONFIG, announcing itself in the User-Agent so that audit
/// logs and `apiserver_request_total` tell the operator's requests apart.
async fn kube_config(user_agent: String) -> Result<kube::Config, Box<dyn std::error::Error + Send + Sync>> {
    let mut config = kube::Config::infer().await.map_err(|e| format!("failed to load a Kubernetes config: {e}"))?;
    let value = http::HeaderValue::from_str(&user_agent).map_err(|e| format!("failed to build the user agent: {e}"))?;
    config.headers.push((http::header::USER_AGENT, value));
    Ok(config)
}

async fn client(user_agent: String) -> Result<kube::Client, Box<dyn std::error::Error + Send + Sync>> {
    Ok(kube::Client::try_from(kube_config(user_agent).await?).map_err(|e| format!("failed to create a Kubernetes client: {e}"))?)
}

async fn run_operator(args: OperatorArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let identity = args.identity.unwrap_or_else(default_identity);
    let kube_config = kube_config(format!("hyperpage-operator/{} ({identity})", hyperpage::VERSION)).await?;
    let default_namespace = kube_config.default_namespace.clone();
    let lease = if args.leader_elect {
        let lease = LeaseConfig {
            namespace: args.lease_namespace.unwrap_or(default_namespace),
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
        let cache_key = match (&args.cache_key_file, std::env::var("HYPERPAGE_CACHE_KEY").ok().filter(|k| !k.is_empty())) {
            (Some(path), _) => {
                let key = std::fs::read(path).map_err(|e| format!("failed to read --cache-key-file {}: {e}", path.display()))?;
                if key.trim_ascii().len() < 16 {
                    return Err(format!("failed to use --cache-key-file {}: the key must be at least 16 bytes", path.display()).into());
                }
                CacheKey::new(key.trim_ascii())
            }
            (None, Some(key)) => CacheKey::new(key.as_bytes()),
            (None, None) => {
                if args.redis_url.is_some() {
                    tracing::warn!("no --cache-key-file: a random cache key, so a new leader starts without the Redis cache");
                }
                CacheKey::random()
            }
        };
        let client = ClientConfig {
            timeout: args.upstream_timeout,
            policy: EndpointPolicy { allowed, allow_http: args.allow_insecure_http },
            proxy: args.upstream_proxy,
            cache_key,
            ..ClientConfig::default()
        };
        Some(EngineConfig { redis_url: args.redis_url, redis_prefix: args.redis_prefix, client, concurrency: args.poll_concurrency.max(1) })
    } else {
        None
    };
    let policy = args.policy.into_policy(&args.portal_image)?;
    let watch_namespaces: Vec<String> = args.watch_namespaces.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
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
        ?watch_namespaces,
        ?policy,
        portal_sign_in = portal_oidc.is_some(),
        "starting hyperpage operator"
    );
    let config = OperatorConfig {
        admin_address: args.admin_address,
        lease,
        build: BuildConfig {
            portal_access: hyperpage::operator::portal_access::PortalAccess::new(Some(args.portal_token_review_binding), portal_oidc),
            portal_image: args.portal_image,
            policy,
        },
        resync: args.resync,
        concurrency: args.concurrency.max(1),
        engine,
        webhook: args.webhooks.then(|| hyperpage::webhook::WebhookConfig {
            address: args.webhook_address,
            max_body: args.webhook_max_body,
            watch_namespaces: watch_namespaces.clone(),
        }),
        watch_namespaces,
    };
    hyperpage::operator::run(kube_config, config).await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(args: &[&str]) -> Result<Policy, String> {
        let argv =
            ["hyperpage", "operator", "--portal-image", "registry.example.com/hp/hyperpage:1.2.3"].into_iter().chain(args.iter().copied());
        match Cli::try_parse_from(argv).expect("arguments parse").command {
            Command::Operator(operator) => operator.policy.into_policy(&operator.portal_image),
            _ => unreachable!("an operator command"),
        }
    }

    #[test]
    fn the_default_policy_denies_every_escalation() {
        let p = policy(&[]).unwrap();
        assert_eq!(p, Policy::restrictive("registry.example.com/hp/hyperpage:1.2.3"));
        assert_eq!(p.allowed_images, ["registry.example.com/hp/hyperpage"], "the repository of --portal-image");
    }

    #[test]
    fn policy_flags_are_parsed_and_bad_ones_refused_with_the_flag_named() {
        let p = policy(&[
            "--policy-allowed-service-types=ClusterIP,LoadBalancer",
            "--policy-ingress-host-suffixes={namespace}.apps.example.com",
            r#"--policy-ingress-annotations={"cert-manager.io/cluster-issuer":"letsencrypt"}"#,
            "--ingress-controller-namespace=ingress-nginx",
        ])
        .unwrap();
        assert_eq!(p.allowed_service_types, [ServiceType::ClusterIP, ServiceType::LoadBalancer]);
        assert_eq!(p.ingress.annotations["cert-manager.io/cluster-issuer"], "letsencrypt");
        assert_eq!(p.ingress_controller_namespace.as_deref(), Some("ingress-nginx"));
        let error = policy(&["--policy-allowed-service-types=ExternalName"]).unwrap_err();
        assert!(error.contains("--policy-allowed-service-types") && error.contains("ExternalName"), "{error}");
        let error = policy(&["--policy-ingress-annotations=cert-manager.io/issuer=x"]).unwrap_err();
        assert!(error.contains("--policy-ingress-annotations"), "{error}");
    }
}
