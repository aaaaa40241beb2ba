//! Reading a credential: the one place that decides whether a Secret may be used for a
//! binding, shared by the ToolBinding validation and the engine's poll.
//!
//! A tenant who may create ToolBindings but not read Secrets must not be able to make the
//! operator read a Secret for it or send one anywhere (a confused deputy). So a Secret is a
//! credential only when its owner opted it in with the label `hyperpage.dev/credential: "true"`,
//! and it goes only to the URL prefixes its annotation `hyperpage.dev/endpoints` lists (without
//! the annotation: the provider's public default, if it has one). Both are checked on the
//! Secret's metadata before its value is fetched, and the value is fetched by a LIST that
//! selects the label, so the API server never hands the operator an unlabelled Secret's
//! value. A missing and an unlabelled Secret give the same answer (no existence oracle).

use crate::api::{Provider, ToolBinding};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The label that opts a Secret in as a credential.
pub const LABEL: &str = "hyperpage.dev/credential";
/// The annotation listing the URL prefixes a credential may be sent to (comma-separated).
pub const ENDPOINTS_ANNOTATION: &str = "hyperpage.dev/endpoints";
/// Time limit of one credential read (both requests together).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a Secret cannot serve as this binding's credential; each is a condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    SecretNotOptedIn,
    EndpointNotAllowed,
    KeyNotFound,
    KeyEmpty,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SecretNotOptedIn => "SecretNotOptedIn",
            Reason::EndpointNotAllowed => "EndpointNotAllowed",
            Reason::KeyNotFound => "KeyNotFound",
            Reason::KeyEmpty => "KeyEmpty",
        }
    }
}

/// What a binding asks of a credential: which Secret and key, for which endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub secret: String,
    pub key: String,
    pub provider: Provider,
    /// `spec.endpoint`, or the provider's public default; `None` when it is not a URL.
    pub endpoint: Option<url::Url>,
}

impl Target {
    pub fn for_binding(binding: &ToolBinding) -> Self {
        let endpoint = binding.spec.endpoint.as_deref().or(super::default_endpoint(binding.spec.provider));
        Self {
            namespace: binding.namespace().unwrap_or_default(),
            secret: binding.spec.credentials_secret_ref.name.clone(),
            key: binding.spec.credentials_secret_ref.key.clone(),
            provider: binding.spec.provider,
            endpoint: endpoint.and_then(|e| url::Url::parse(e).ok()),
        }
    }

    fn endpoint_text(&self) -> String {
        self.endpoint.as_ref().map_or_else(|| "(no endpoint)".into(), |u| u.as_str().trim_end_matches('/').to_string())
    }
}

/// A credential that may not be used, with the message that says how to fix it. Messages
/// name the Secret, key and endpoint, never anything read from the Secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(
        "Secret {secret:?} is not available as a credential: it does not exist in this namespace or is not labelled \
         {LABEL}=true. Opt it in with `kubectl -n {namespace} label secret {secret} {LABEL}=true`, or create it with \
         the token under key {key:?} and that label"
    )]
    NotOptedIn { namespace: String, secret: String, key: String },

    #[error(
        "Secret {secret:?} may not be sent to {endpoint}: {why}. Allow it with `kubectl -n {namespace} annotate secret \
         {secret} {ENDPOINTS_ANNOTATION}={endpoint} --overwrite` (comma-separate it from the prefixes already listed)"
    )]
    EndpointNotAllowed { namespace: String, secret: String, endpoint: String, why: String },

    #[error("Secret {secret:?} has no key {key:?}")]
    KeyNotFound { secret: String, key: String },

    #[error("key {key:?} of Secret {secret:?} is empty")]
    KeyEmpty { secret: String, key: String },
}

impl Problem {
    pub fn reason(&self) -> Reason {
        match self {
            Problem::NotOptedIn { .. } => Reason::SecretNotOptedIn,
            Problem::EndpointNotAllowed { .. } => Reason::EndpointNotAllowed,
            Problem::KeyNotFound { .. } => Reason::KeyNotFound,
            Problem::KeyEmpty { .. } => Reason::KeyEmpty,
        }
    }
}

/// A token read from a Secret; its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Whether `prefix` covers `endpoint`: same scheme, host and port, and the endpoint's path
/// is the prefix's path or below it on a `/` boundary (`/api` covers `/api/v4`, not `/apix`).
pub fn covers(prefix: &url::Url, endpoint: &url::Url) -> bool {
    let plain = |u: &url::Url| u.username().is_empty() && u.password().is_none() && u.query().is_none() && u.fragment().is_none();
    if !plain(prefix) || !plain(endpoint) {
        return false;
    }
    if prefix.scheme() != endpoint.scheme()
        || prefix.host() != endpoint.host()
        || prefix.port_or_known_default() != endpoint.port_or_known_default()
    {
        return false;
    }
    let base = prefix.path().trim_end_matches('/');
    let path = endpoint.path();
    base.is_empty() || path == base || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
}

/// One answer for a missing and an unlabelled Secret.
fn not_opted_in(target: &Target) -> Problem {
    Problem::NotOptedIn { namespace: target.namespace.clone(), secret: target.secret.clone(), key: target.key.clone() }
}

/// Checks the Secret's metadata (pure): opted in, and allowed to go to the endpoint.
pub fn check_metadata(target: &Target, labels: &BTreeMap<String, String>, annotations: &BTreeMap<String, String>) -> Result<(), Problem> {
    if labels.get(LABEL).map(String::as_str) != Some("true") {
        return Err(not_opted_in(target));
    }
    let refuse = |why: String| Problem::EndpointNotAllowed {
        namespace: target.namespace.clone(),
        secret: target.secret.clone(),
        endpoint: target.endpoint_text(),
        why,
    };
    let Some(endpoint) = &target.endpoint else { return Err(refuse("the endpoint is not a URL".into())) };
    match annotations.get(ENDPOINTS_ANNOTATION) {
        Some(list) => {
            let allowed = list.split(',').filter_map(|p| url::Url::parse(p.trim()).ok()).any(|prefix| covers(&prefix, endpoint));
            if allowed { Ok(()) } else { Err(refuse(format!("no prefix in its {ENDPOINTS_ANNOTATION} annotation covers it"))) }
        }
        None => match super::default_endpoint(target.provider) {
            Some(default) if url::Url::parse(default).is_ok_and(|d| covers(&d, endpoint)) => Ok(()),
            Some(default) => Err(refuse(format!("without a {ENDPOINTS_ANNOTATION} annotation it may only go to {default}"))),
            None => Err(refuse(format!(
                "{} has no public default address, so the Secret must list the endpoint in its {ENDPOINTS_ANNOTATION} annotation",
                target.provider.as_str()
            ))),
        },
    }
}

/// Checks a whole Secret (pure) and returns the token: metadata first, then the key.
pub fn check(target: &Target, secret: Option<&Secret>) -> Result<Token, Problem> {
    let Some(secret) = secret else { return Err(not_opted_in(target)) };
    check_metadata(target, secret.labels(), secret.annotations())?;
    check_value(target, secret.data.as_ref())
}

fn check_value(target: &Target, data: Option<&BTreeMap<String, ByteString>>) -> Result<Token, Problem> {
    let Some(value) = data.and_then(|d| d.get(&target.key)) else {
        return Err(Problem::KeyNotFound { secret: target.secret.clone(), key: target.key.clone() });
    };
    let token = String::from_utf8_lossy(&value.0);
    let token = token.trim();
    if token.is_empty() {
        return Err(Problem::KeyEmpty { secret: target.secret.clone(), key: target.key.clone() });
    }
    Ok(Token(token.to_string()))
}

/// Why a credential could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Problem(#[from] Problem),
    #[error("failed to read Secret {secret:?}: {source}")]
    Api { secret: String, source: kube::Error },
    #[error("failed to read Secret {secret:?} within {}s", READ_TIMEOUT.as_secs())]
    Timeout { secret: String },
}

impl From<ReadError> for super::ProviderError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Problem(problem) => super::ProviderError::Credential(problem),
            other => super::ProviderError::Config(other.to_string()),
        }
    }
}

/// The watch that feeds [`Credentials::watched`]: opted-in Secrets only.
pub fn opted_in() -> watcher::Config {
    watcher::Config::default().labels(&format!("{LABEL}=true"))
}

/// Reads bindings' credentials.
///
/// Watched ([`Credentials::watched`], the operator): the label and endpoint checks run on the
/// operator's watch of the opted-in Secrets' metadata, and a Secret's value is fetched (a LIST
/// selecting the label and the name) only when the watch shows a resourceVersion it has not
/// been read at; until then the outcome of the last read of that key is reused. So a converged
/// operator makes no Secret request per reconcile or per poll, and an edited, relabelled or
/// deleted Secret is noticed as soon as the watch delivers it. The token kept for reuse lives
/// in this process's memory only, and is dropped when its Secret leaves the watch.
///
/// Direct ([`Credentials::direct`]): every read asks the API server, metadata first.
#[derive(Clone)]
pub struct Credentials {
    client: Client,
    opted_in: Option<Store<PartialObjectMeta<Secret>>>,
    values: Arc<Mutex<HashMap<ValueKey, ReadValue>>>,
}

/// Namespace, Secret, key.
type ValueKey = (String, String, String);

/// A key's value check, at the Secret's resourceVersion it was read at.
struct ReadValue {
    resource_version: Option<String>,
    outcome: Result<Token, Problem>,
}

impl Credentials {
    pub fn direct(client: Client) -> Self {
        Self { client, opted_in: None, values: Arc::default() }
    }

    /// `opted_in`: a store fed by a metadata watch with [`opted_in`]'s selector.
    pub fn watched(client: Client, opted_in: Store<PartialObjectMeta<Secret>>) -> Self {
        Self { client, opted_in: Some(opted_in), values: Arc::default() }
    }

    /// The binding's credential: label, then endpoint, then key and value.
    pub async fn read(&self, target: &Target) -> Result<Token, ReadError> {
        let Some(store) = &self.opted_in else { return read_direct(&self.client, target).await };
        let key = (target.namespace.clone(), target.secret.clone(), target.key.clone());
        let Some(meta) = store.get(&ObjectRef::new(&target.secret).within(&target.namespace)) else {
            self.forget_secret(&target.namespace, &target.secret);
            return Err(not_opted_in(target).into());
        };
        check_metadata(target, meta.labels(), meta.annotations())?;
        if let Some(known) = self.values.lock().expect("credential values lock").get(&key)
            && known.resource_version == meta.metadata.resource_version
        {
            return Ok(known.outcome.clone()?);
        }
        let secret = list_opted_in(&self.client, target).await?;
        let Some(secret) = secret else {
            self.forget_secret(&target.namespace, &target.secret);
            return Err(not_opted_in(target).into());
        };
        // The Secret as listed may be newer than the watch: its own metadata decides.
        check_metadata(target, secret.labels(), secret.annotations())?;
        let outcome = check_value(target, secret.data.as_ref());
        let read = ReadValue { resource_version: secret.metadata.resource_version.clone(), outcome: outcome.clone() };
        self.values.lock().expect("credential values lock").insert(key, read);
        Ok(outcome?)
    }

    fn forget_secret(&self, namespace: &str, secret: &str) {
        self.values.lock().expect("credential values lock").retain(|(ns, name, _), _| !(ns == namespace && name == secret));
    }
}

fn list_params(target: &Target) -> ListParams {
    ListParams::default().labels(&format!("{LABEL}=true")).fields(&format!("metadata.name={}", target.secret))
}

/// The opted-in Secret, value included, selected by the label and its name.
async fn list_opted_in(client: &Client, target: &Target) -> Result<Option<Secret>, ReadError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let params = list_params(target);
    match tokio::time::timeout(READ_TIMEOUT, secrets.list(&params)).await {
        Ok(Ok(list)) => Ok(list.items.into_iter().next()),
        Ok(Err(source)) => Err(ReadError::Api { secret: target.secret.clone(), source }),
        Err(_) => Err(ReadError::Timeout { secret: target.secret.clone() }),
    }
}

/// Without a watch: the Secret's metadata, selected by name and label, is checked first; only
/// then is the Secret itself listed, again selected by the label, and checked again (it may
/// have changed in between).
async fn read_direct(client: &Client, target: &Target) -> Result<Token, ReadError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let params = list_params(target);
    let api_error = |source| ReadError::Api { secret: target.secret.clone(), source };
    let read = async {
        let metadata = secrets.list_metadata(&params).await.map_err(api_error)?;
        let Some(meta) = metadata.items.first() else { return Err(not_opted_in(target).into()) };
        check_metadata(target, meta.labels(), meta.annotations())?;
        let full = secrets.list(&params).await.map_err(api_error)?;
        Ok(check(target, full.items.first())?)
    };
    tokio::time::timeout(READ_TIMEOUT, read).await.unwrap_or_else(|_| Err(ReadError::Timeout { secret: target.secret.clone() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn target(provider: Provider, endpoint: &str) -> Target {
        Target { namespace: "team-a".into(), secret: "tok".into(), key: "token".into(), provider, endpoint: url::Url::parse(endpoint).ok() }
    }

    fn secret(labelled: bool, endpoints: Option<&str>, data: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("tok".into());
        if labelled {
            s.metadata.labels = Some(BTreeMap::from([(LABEL.to_string(), "true".to_string())]));
        }
        if let Some(e) = endpoints {
            s.metadata.annotations = Some(BTreeMap::from([(ENDPOINTS_ANNOTATION.to_string(), e.to_string())]));
        }
        s.data = Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect());
        s
    }

    fn reason(target: &Target, secret: Option<&Secret>) -> Option<Reason> {
        check(target, secret).err().map(|p| p.reason())
    }

    fn u(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn prefixes_match_whole_hosts_ports_and_path_segments() {
        let prefix = u("https://gitlab.example.com/api");
        assert!(covers(&prefix, &u("https://gitlab.example.com/api")));
        assert!(covers(&prefix, &u("https://gitlab.example.com/api/")));
        assert!(covers(&prefix, &u("https://gitlab.example.com/api/v4")));
        assert!(covers(&prefix, &u("https://GITLAB.example.com:443/api/v4")));
        for other in [
            "https://gitlab.example.com.evil.io/api",
            "https://gitlab.example.com/apix",
            "https://gitlab.example.com/",
            "http://gitlab.example.com/api",
            "https://gitlab.example.com:8443/api",
            "https://evil.io/gitlab.example.com/api",
            "https://x@gitlab.example.com/api",
            "https://gitlab.example.com/api?x=1",
        ] {
            assert!(!covers(&prefix, &u(other)), "{other}");
        }
        assert!(covers(&u("https://gitlab.example.com"), &u("https://gitlab.example.com/anything")));
        assert!(covers(&u("https://gitlab.example.com/"), &u("https://gitlab.example.com/anything")));
        assert!(covers(&u("https://[fd00::1]:8443"), &u("https://[fd00::1]:8443/api")));
        assert!(!covers(&u("https://10.0.0.1"), &u("https://10.0.0.10")));
    }

    #[test]
    fn missing_and_unlabelled_secrets_look_the_same() {
        let t = target(Provider::Github, "https://api.github.com");
        let missing = check(&t, None).unwrap_err();
        let unlabelled = check(&t, Some(&secret(false, None, &[("token", "ghp_x")]))).unwrap_err();
        assert_eq!(missing, unlabelled);
        assert_eq!(missing.to_string(), unlabelled.to_string());
        assert_eq!(missing.reason(), Reason::SecretNotOptedIn);
        assert!(missing.to_string().contains("kubectl -n team-a label secret tok hyperpage.dev/credential=true"), "{missing}");
        let wrong_value = secret(false, None, &[("token", "ghp_x")]);
        let mut wrong_label = wrong_value.clone();
        wrong_label.metadata.labels = Some(BTreeMap::from([(LABEL.to_string(), "yes".to_string())]));
        assert_eq!(reason(&t, Some(&wrong_label)), Some(Reason::SecretNotOptedIn));
    }

    #[test]
    fn without_the_annotation_only_the_public_default_is_allowed() {
        let labelled = secret(true, None, &[("token", "ghp_x")]);
        assert_eq!(reason(&target(Provider::Github, "https://api.github.com"), Some(&labelled)), None);
        assert_eq!(reason(&target(Provider::Gitlab, "https://gitlab.com"), Some(&labelled)), None);
        let elsewhere = check(&target(Provider::Github, "https://attacker.example"), Some(&labelled)).unwrap_err();
        assert_eq!(elsewhere.reason(), Reason::EndpointNotAllowed);
        let message = elsewhere.to_string();
        assert!(message.contains("https://attacker.example"), "{message}");
        assert!(
            message.contains("kubectl -n team-a annotate secret tok hyperpage.dev/endpoints=https://attacker.example --overwrite"),
            "{message}"
        );
        for provider in [Provider::Jira, Provider::Jenkins, Provider::Harbor] {
            let p = check(&target(provider, "https://tools.example.com"), Some(&labelled)).unwrap_err();
            assert_eq!(p.reason(), Reason::EndpointNotAllowed);
            assert!(p.to_string().contains("no public default"), "{p}");
        }
    }

    #[test]
    fn the_annotation_lists_the_allowed_prefixes() {
        let s = secret(true, Some(" https://jira.example.com/jira , https://ci.example.com"), &[("token", "t")]);
        assert_eq!(reason(&target(Provider::Jira, "https://jira.example.com/jira"), Some(&s)), None);
        assert_eq!(reason(&target(Provider::Jenkins, "https://ci.example.com"), Some(&s)), None);
        assert_eq!(reason(&target(Provider::Jira, "https://jira.example.com/other"), Some(&s)), Some(Reason::EndpointNotAllowed));
        // The annotation replaces the default: a GitHub token pinned elsewhere cannot go to GitHub.
        assert_eq!(reason(&target(Provider::Github, "https://api.github.com"), Some(&s)), Some(Reason::EndpointNotAllowed));
        let junk = secret(true, Some("not a url,"), &[("token", "t")]);
        assert_eq!(reason(&target(Provider::Jira, "https://jira.example.com"), Some(&junk)), Some(Reason::EndpointNotAllowed));
    }

    #[test]
    fn keys_must_hold_a_non_blank_value() {
        let t = target(Provider::Github, "https://api.github.com");
        assert_eq!(reason(&t, Some(&secret(true, None, &[("other", "x")]))), Some(Reason::KeyNotFound));
        assert_eq!(reason(&t, Some(&secret(true, None, &[("token", "")]))), Some(Reason::KeyEmpty));
        assert_eq!(reason(&t, Some(&secret(true, None, &[("token", " \n\t")]))), Some(Reason::KeyEmpty));
        let token = check(&t, Some(&secret(true, None, &[("token", " ghp_x\n")]))).unwrap();
        assert_eq!(token.expose(), "ghp_x");
        assert_eq!(format!("{token:?}"), "Token(..)");
    }

    #[test]
    fn the_endpoint_is_checked_before_the_key() {
        // An unpinned endpoint must not learn which keys a labelled Secret has.
        let t = target(Provider::Github, "https://attacker.example");
        assert_eq!(reason(&t, Some(&secret(true, None, &[("other", "x")]))), Some(Reason::EndpointNotAllowed));
    }

    #[test]
    fn messages_never_contain_the_value() {
        let value = "ghp_secretValue";
        for s in [secret(false, None, &[("token", value)]), secret(true, Some("https://x.example"), &[("token", value)])] {
            let p = check(&target(Provider::Github, "https://api.github.com"), Some(&s)).unwrap_err();
            assert!(!p.to_string().contains(value));
        }
    }

    /// The API server as the credential reader sees it: a Secret LIST answers with `answer`'s
    /// current Secret (or none); every request is counted.
    fn fake_api(answer: Arc<Mutex<Option<Secret>>>) -> (Client, Arc<Mutex<Vec<String>>>) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                log.lock().unwrap().push(format!(
                    "{} {}?{}",
                    request.method(),
                    request.uri().path(),
                    request.uri().query().unwrap_or_default()
                ));
                let items: Vec<Secret> = answer.lock().unwrap().iter().cloned().collect();
                let list =
                    serde_json::json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "9"}, "items": items});
                send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&list).unwrap())).unwrap());
            }
        });
        (Client::new(service, "default"), asked)
    }

    fn versioned(mut secret: Secret, version: &str) -> Secret {
        secret.metadata.namespace = Some("team-a".into());
        secret.metadata.resource_version = Some(version.into());
        secret
    }

    fn metadata(secret: &Secret) -> PartialObjectMeta<Secret> {
        PartialObjectMeta { types: None, metadata: secret.metadata.clone(), _phantom: Default::default() }
    }

    /// A converged operator asks the API server nothing per read; an edit, a label removed or a
    /// deletion (as the watch reports them) is seen at the next read.
    #[tokio::test]
    async fn a_secret_is_read_once_per_version_and_its_changes_are_seen_at_once() {
        let t = target(Provider::Github, "https://api.github.com");
        let v1 = versioned(secret(true, None, &[("token", "ghp_one")]), "1");
        let answer = Arc::new(Mutex::new(Some(v1.clone())));
        let (client, asked) = fake_api(answer.clone());
        let (store, mut watch) = kube::runtime::reflector::store::<PartialObjectMeta<Secret>>();
        watch.apply_watcher_event(&watcher::Event::Apply(metadata(&v1)));
        let credentials = Credentials::watched(client, store);
        let requests = || std::mem::take(&mut *asked.lock().unwrap());

        assert_eq!(credentials.read(&t).await.unwrap().expose(), "ghp_one");
        let first = requests();
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(
            first[0].contains("labelSelector=hyperpage.dev%2Fcredential%3Dtrue") && first[0].contains("metadata.name%3Dtok"),
            "{first:?}"
        );
        for _ in 0..3 {
            assert_eq!(credentials.read(&t).await.unwrap().expose(), "ghp_one");
        }
        assert!(requests().is_empty(), "an unchanged Secret is not read again");

        // The same Secret for an endpoint it is not pinned to: refused on the watched metadata.
        let elsewhere = credentials.read(&target(Provider::Github, "https://attacker.example")).await.unwrap_err();
        assert!(matches!(elsewhere, ReadError::Problem(Problem::EndpointNotAllowed { .. })), "{elsewhere}");
        assert!(requests().is_empty());

        // Edited: a new version, read once.
        let v2 = versioned(secret(true, None, &[("token", "ghp_two")]), "2");
        *answer.lock().unwrap() = Some(v2.clone());
        watch.apply_watcher_event(&watcher::Event::Apply(metadata(&v2)));
        assert_eq!(credentials.read(&t).await.unwrap().expose(), "ghp_two");
        assert_eq!(credentials.read(&t).await.unwrap().expose(), "ghp_two");
        assert_eq!(requests().len(), 1);

        // A key problem is remembered for the version too, and the message is the same.
        let other_key = Target { key: "missing".into(), ..t.clone() };
        let missing = credentials.read(&other_key).await.unwrap_err().to_string();
        assert_eq!(credentials.read(&other_key).await.unwrap_err().to_string(), missing);
        assert_eq!(requests().len(), 1);

        // Label removed (the labelled watch reports a delete): refused at once, without a request.
        watch.apply_watcher_event(&watcher::Event::Delete(metadata(&v2)));
        let gone = credentials.read(&t).await.unwrap_err();
        assert!(matches!(gone, ReadError::Problem(Problem::NotOptedIn { .. })), "{gone}");
        assert!(requests().is_empty());
        assert!(credentials.values.lock().unwrap().is_empty(), "nothing of the Secret is kept once it left the watch");

        // The watch is behind: it still shows the label the Secret no longer has.
        let unlabelled = versioned(secret(false, None, &[("token", "ghp_three")]), "3");
        *answer.lock().unwrap() = None;
        watch.apply_watcher_event(&watcher::Event::Apply(metadata(&versioned(secret(true, None, &[]), "3"))));
        let refused = credentials.read(&t).await.unwrap_err();
        assert!(matches!(refused, ReadError::Problem(Problem::NotOptedIn { .. })), "{refused}");
        assert_eq!(refused.to_string(), check(&t, Some(&unlabelled)).unwrap_err().to_string(), "the same answer as for a missing Secret");
    }
}
