//! The upstream client and proxies: environment proxy variables are ignored (through a proxy
//! the endpoint policy's resolver would see only the proxy), and a proxy named by the admin
//! (`--upstream-proxy`) is used with the policy checking each target before the request.
//!
//! One test in this binary on purpose: it sets process environment variables.

mod fakes;

use fakes::github::{Github, Repo};
use hyperpage::api::Provider;
use hyperpage::engine::cache::{Cache, CacheMetrics};
use hyperpage::providers::http::{ClientConfig, Request, UpstreamClient, UpstreamMetrics};
use hyperpage::providers::safety::EndpointPolicy;
use hyperpage::providers::{Budget, Credential, ProviderError, Scope};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A stand-in HTTP proxy: records each request line and answers `[]`.
struct Proxy {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    let mut line = String::new();
                    let _ = stream.read_line(&mut line).await;
                    log.lock().unwrap().push(line.trim_end().to_string());
                    loop {
                        let mut header = String::new();
                        if stream.read_line(&mut header).await.unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]";
                    let _ = stream.get_mut().write_all(answer.as_bytes()).await;
                });
            }
        });
        Self { port, seen, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn client(policy: EndpointPolicy, proxy: Option<&str>) -> UpstreamClient {
    let config = ClientConfig { policy, proxy: proxy.map(|p| url::Url::parse(p).unwrap()), ..ClientConfig::default() };
    UpstreamClient::new(config, Cache::memory(CacheMetrics::default()), UpstreamMetrics::default())
}

async fn get(client: &UpstreamClient, url: &str) -> Result<serde_json::Value, ProviderError> {
    let credential = Credential::new(Provider::Github, "ghp_proxyTestToken").unwrap();
    let budget = Budget::new(None);
    let request = Request {
        provider: "github",
        url: url::Url::parse(url).unwrap(),
        credential: &credential,
        reserve: 0,
        budget: &budget,
        extra_headers: &[],
        json: None,
        scope: Scope { namespace: "team-a", binding: "proxied", secret: "token" },
    };
    client.get::<serde_json::Value>(&request).await.map(|f| f.body)
}

#[tokio::test]
async fn environment_proxies_are_ignored_and_a_named_proxy_is_checked() {
    let proxy = Proxy::start().await;
    // SAFETY: the only test in this binary, run before any client exists.
    unsafe {
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
            std::env::set_var(name, proxy.url());
        }
    }
    let repo = Repo { default_branch: "main".into(), ..Repo::default() };
    let fake = Github::start(BTreeMap::from([("acme/api".to_string(), repo)])).await;
    let target = format!("{}/repos/acme/api", fake.url());
    let loopback = || EndpointPolicy { allowed: vec!["127.0.0.0/8".parse().unwrap()], allow_http: true };

    // No --upstream-proxy: straight to the tool, whatever the environment says.
    let direct = client(loopback(), None);
    let body = get(&direct, &target).await.expect("the direct request succeeds");
    assert_eq!(body["default_branch"], "main");
    assert_eq!(fake.shared.requests().len(), 1);
    assert!(proxy.seen().is_empty(), "the environment's proxy was used: {:?}", proxy.seen());

    // --upstream-proxy: the request goes through it (absolute form, as to an HTTP proxy).
    let proxied = client(loopback(), Some(&proxy.url()));
    assert_eq!(get(&proxied, &target).await.unwrap(), serde_json::json!([]));
    assert_eq!(proxy.seen(), [format!("GET {target} HTTP/1.1")]);
    assert_eq!(fake.shared.requests().len(), 1, "the tool heard only the direct request");

    // ... but only after the policy checked the target, which the proxy, not this process,
    // would resolve: metadata and unlisted private addresses never reach the proxy.
    for refused in ["http://169.254.169.254/latest/meta-data", "http://metadata.google.internal/", "http://[fd00:ec2::254]/"] {
        let error = get(&proxied, refused).await.unwrap_err();
        assert!(matches!(error, ProviderError::EndpointRefused(_)), "{refused}: {error:?}");
    }
    let strict = client(EndpointPolicy { allowed: vec![], allow_http: true }, Some(&proxy.url()));
    let error = get(&strict, &target).await.unwrap_err();
    assert!(error.to_string().contains("private"), "{error}");
    assert_eq!(proxy.seen().len(), 1, "nothing refused reached the proxy: {:?}", proxy.seen());
}
