//! The engine's cache on a real Redis (Debian's redis-server, started here on a free port):
//! a restarted operator starts warm, a Redis outage falls back to memory and recovers, and
//! `rediss://` (TLS, with a password) works.

mod fakes;

use fakes::github::{self, Github, Repo};
use hyperpage::api::{Provider, ToolBindingSpec};
use hyperpage::engine::cache::{Cache, CacheMetrics};
use hyperpage::providers::http::{CacheKey, ClientConfig, UpstreamClient};
use hyperpage::providers::{self, Budget, Credential, PollRequest};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; make test installs it: e2e/setup.sh)");
        Self::wait_for(port, child)
    }

    /// Waits until `child` accepts connections on `port`.
    fn wait_for(port: u16, child: Child) -> Self {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

const TOKEN: &str = "ghp_redisTestToken";

/// The install's key, as the chart's Secret gives every replica the same one.
fn client(cache: Cache) -> UpstreamClient {
    fakes::loopback_client(ClientConfig { cache_key: CacheKey::new(b"test-install-key-0123456789"), ..ClientConfig::default() }, cache)
}

fn repos() -> BTreeMap<String, Repo> {
    let name = "acme/api";
    let repo = Repo {
        default_branch: "main".into(),
        pulls: (1..=40).map(|n| github::pull(name, n, "change")).collect(),
        issues: vec![github::issue(name, 100, "bug", false)],
        runs: vec![github::run(1, 1, "build", "success", "2026-11-20T10:00:00Z")],
        ..Repo::default()
    };
    BTreeMap::from([(name.to_string(), repo)])
}

async fn poll(client: &UpstreamClient, fake: &Github) -> providers::Snapshot {
    let spec: ToolBindingSpec = serde_norway::from_str(
        "workspaceRef: {name: w}\nprovider: github\ncredentialsSecretRef: {name: s, key: k}\ngithub: {repositories: [acme/api]}\n",
    )
    .unwrap();
    let credential = Credential::new(Provider::Github, TOKEN).unwrap();
    let budget = Budget::new(None);
    let request = PollRequest {
        spec: &spec,
        endpoint: url::Url::parse(&fake.url()).unwrap(),
        credential: &credential,
        reserve: 0,
        budget: &budget,
        scope: Default::default(),
    };
    providers::poll(client, &request).await.unwrap()
}

#[tokio::test]
async fn a_restarted_operator_starts_warm_and_spends_no_quota() {
    let redis = RedisServer::start();
    let fake = Github::start(repos()).await;

    let first = client(Cache::redis(&redis.url(), "test-warm", CacheMetrics::default()).unwrap());
    let before = poll(&first, &fake).await;
    assert!(fake.shared.requests().iter().all(|s| s.status == 200));
    let quota_after_first = fake.shared.quota.lock().unwrap().remaining;
    drop(first);

    // A new process: empty memory, the same Redis.
    fake.shared.clear();
    let metrics = CacheMetrics::default();
    let second = client(Cache::redis(&redis.url(), "test-warm", metrics.clone()).unwrap());
    let after = poll(&second, &fake).await;
    assert_eq!(before, after);
    let seen = fake.shared.requests();
    assert!(!seen.is_empty() && seen.iter().all(|s| s.status == 304), "only 304s after a restart: {seen:?}");
    assert_eq!(fake.shared.quota.lock().unwrap().remaining, quota_after_first, "no quota spent");
    let credential = Credential::new(Provider::Github, TOKEN).unwrap();
    assert_eq!(second.ledger_entry(&credential).and_then(|e| e.limit), Some(5000), "the ledger came from Redis too");
}

#[tokio::test]
async fn a_redis_outage_falls_back_to_memory_and_recovers() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let fake = Github::start(repos()).await;
    let metrics = CacheMetrics::default();
    let cache = Cache::redis(&redis.url(), "test-outage", metrics.clone()).unwrap();
    let client = client(cache.clone());
    poll(&client, &fake).await;
    assert!(!cache.in_fallback());
    // Polls per second with Redis up, then down: the figure the README quotes (not asserted).
    let rate = || async {
        let started = std::time::Instant::now();
        for _ in 0..20 {
            poll(&client, &fake).await;
        }
        20.0 / started.elapsed().as_secs_f64()
    };
    let up = rate().await;

    redis.stop();
    fake.shared.clear();
    let during = poll(&client, &fake).await;
    let down = rate().await;
    eprintln!("polls per second (6 requests each, all 304): {up:.0} with Redis, {down:.0} in fallback");
    assert_eq!(during.summary.code_reviews, 40, "polling goes on without Redis");
    assert!(cache.in_fallback(), "the fallback is noticed");
    assert_eq!(metrics.redis_fallback.get(), 1);
    assert!(fake.shared.requests().iter().all(|s| s.status == 304), "the memory copy still serves ETags");

    let _redis = RedisServer::start_on(port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cache.in_fallback() {
        assert!(tokio::time::Instant::now() < deadline, "reconnected to Redis");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metrics.redis_fallback.get(), 0);
}

/// A redis-server speaking only TLS (with a password) on a free loopback port, with a CA and
/// a server certificate for 127.0.0.1 generated by openssl into a temporary directory.
struct TlsRedis {
    server: RedisServer,
    dir: std::path::PathBuf,
}

impl TlsRedis {
    fn start(password: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hyperpage-redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        openssl(
            &[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=hyperpage test CA"]]
                .concat(),
        );
        openssl(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat());
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &file("server.crt"), "--tls-key-file", &file("server.key"), "--tls-ca-cert-file", &file("ca.crt")])
            .args(["--tls-auth-clients", "no", "--requirepass", password])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; make test installs it: e2e/setup.sh)");
        let server = RedisServer::wait_for(port, child);
        Self { server, dir }
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.crt")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn rediss_with_a_password_works() {
    let redis = TlsRedis::start("s3cret-pw");
    // The operator trusts the system's roots plus SSL_CERT_FILE (rustls-native-certs); this
    // test's CA comes in that way. No other test here makes TLS connections.
    // SAFETY: the only other readers are Rust code going through std's environment lock.
    unsafe { std::env::set_var("SSL_CERT_FILE", redis.ca()) };
    let port = redis.server.port;
    let fake = Github::start(repos()).await;

    let url = format!("rediss://:s3cret-pw@127.0.0.1:{port}/");
    let first = client(Cache::redis(&url, "test-tls", CacheMetrics::default()).unwrap());
    let before = poll(&first, &fake).await;
    drop(first);
    fake.shared.clear();
    let cache = Cache::redis(&url, "test-tls", CacheMetrics::default()).unwrap();
    let second = client(cache.clone());
    assert_eq!(poll(&second, &fake).await, before);
    assert!(!cache.in_fallback(), "the TLS connection holds");
    let seen = fake.shared.requests();
    assert!(!seen.is_empty() && seen.iter().all(|s| s.status == 304), "warm through Redis over TLS: {seen:?}");

    // The same server refuses what is not TLS with the password: the cache falls back.
    for wrong in [format!("redis://:s3cret-pw@127.0.0.1:{port}/"), format!("rediss://:wrong@127.0.0.1:{port}/")] {
        let cache = Cache::redis(&wrong, "test-tls", CacheMetrics::default()).unwrap();
        poll(&client(cache.clone()), &fake).await;
        assert!(cache.in_fallback(), "{} is refused", wrong.replace("s3cret-pw", "***"));
    }
}

/// Issue 14: a leader polled a binding and died before writing its status. The next leader
/// (a new process, the same Redis) takes the poll the first one recorded, not the older
/// `status.lastSyncTime`, and does not poll again at once — whether the controller announces
/// the binding before or after the engine's warm start reads Redis.
#[tokio::test]
async fn a_poll_whose_status_died_with_its_leader_is_not_repeated() {
    use hyperpage::api::{ToolBinding, ToolBindingStatus};
    use hyperpage::engine::{Engine, EngineConfig, EngineMetrics};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::reflector::ObjectRef;

    let redis = RedisServer::start();
    let engine = || {
        // No API server: the poll fails at reading the credential, and is recorded all the same.
        let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
        let config = EngineConfig { redis_url: Some(redis.url()), redis_prefix: "test-polled".into(), ..EngineConfig::default() };
        Engine::new(hyperpage::providers::credential::Credentials::direct(kube), config, EngineMetrics::register(&mut Default::default()))
            .unwrap()
    };
    let mut binding: ToolBinding = serde_norway::from_str(include_str!("fixtures/toolbinding-github.yaml")).unwrap();
    binding.metadata.generation = Some(1);
    binding.spec.refresh_interval = Some("5m".into());
    let interval = Duration::from_secs(300);
    // The last status write names a poll 290 s ago: by status alone, due in 10 s.
    let synced = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(290);
    binding.status = Some(ToolBindingStatus { last_sync_time: Some(Time(synced)), observed_generation: Some(1), ..Default::default() });
    let key = ObjectRef::from_obj(&binding);

    let first = engine();
    first.notice(&binding, None);
    let due = first.next_poll(&key).unwrap();
    assert!(due <= tokio::time::Instant::now() + Duration::from_secs(10), "due by its status");
    first.poll_and_record(&binding, interval).await;
    drop(first); // killed: its status write never happens

    for notice_first in [true, false] {
        let next = engine();
        if notice_first {
            next.notice(&binding, None);
        }
        next.warm_start(std::slice::from_ref(&key)).await;
        if !notice_first {
            next.notice(&binding, None);
        }
        let wait = next.next_poll(&key).unwrap().duration_since(tokio::time::Instant::now());
        assert!(wait >= Duration::from_secs(280), "not polled again at once (notice first: {notice_first}): due in {wait:?}");
    }

    // A new spec is due at once, whatever the earlier leader polled.
    binding.metadata.generation = Some(2);
    let next = engine();
    next.warm_start(std::slice::from_ref(&key)).await;
    next.notice(&binding, None);
    assert!(next.next_poll(&key).unwrap() <= tokio::time::Instant::now() + Duration::from_secs(10));
}

/// A standby's connection breaks while it is not used (Redis restarted, its data kept by the
/// other replica's writes since): at takeover its first read still finds Redis, not the memory
/// fallback, so the polls the old leader recorded are seen.
#[tokio::test]
async fn a_connection_broken_while_unused_reconnects_instead_of_falling_back() {
    use hyperpage::engine::cache::Polled;
    let mut redis = RedisServer::start();
    let port = redis.port;
    let standby = Cache::redis(&redis.url(), "test-broken", CacheMetrics::default()).unwrap();
    assert!(standby.get_polled(&["team-a/github".into()]).await.is_empty(), "connected, nothing recorded yet");

    redis.stop();
    let _redis = RedisServer::start_on(port);
    let leader = Cache::redis(&_redis.url(), "test-broken", CacheMetrics::default()).unwrap();
    let polled = Polled { at: jiff::Timestamp::now(), generation: Some(1) };
    leader.put_polled("team-a/github", polled).await;

    let found = standby.get_polled(&["team-a/github".into()]).await;
    assert!(!standby.in_fallback(), "a broken idle connection is re-made, not a reason to fall back");
    assert_eq!(found.get("team-a/github").map(|p| p.at), Some(polled.at));
}
