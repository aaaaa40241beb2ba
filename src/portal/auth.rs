//! Who may see this portal: exactly the people the cluster's RBAC allows to `get` its
//! Workspace.
//!
//! In `kubernetes` mode a request carries a credential (a bearer token, or the browser
//! session of an OpenID Connect sign-in); the API server says whose it is (a TokenReview)
//! and whether that identity may `get` this Workspace (a LocalSubjectAccessReview in the
//! Workspace's namespace). Both answers are cached for [`CACHE_TTL`] per credential and per
//! identity, so a page with live updates costs two API calls a minute at most.
//!
//! The decision itself is pure ([`identity_from_review`], [`access_review`],
//! [`verdict_from_review`]); [`Gate`] only adds the two API calls and the cache.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, ResourceAttributes, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an answer of the API server is reused: a revoked token or a removed
/// RoleBinding takes effect within this time.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Entries kept per cache before expired ones are dropped (and, if still full, all).
const CACHE_CAPACITY: usize = 10_000;

/// Who may see the portal: the Workspace API's mode, as the operator passes it (the
/// effective one, after its policy), never read from the spec here.
pub use crate::api::workspace::AccessMode;

/// A user as the API server knows them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.username)
    }
}

/// The permission that lets someone see the portal: `get` on this Workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub namespace: String,
    pub workspace: String,
}

impl Permission {
    pub const VERB: &str = "get";
    pub const RESOURCE: &str = "workspaces";
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}.{} \"{}\" in namespace \"{}\"", Self::VERB, Self::RESOURCE, crate::api::GROUP, self.workspace, self.namespace)
    }
}

/// Why a request has no identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No `Authorization: Bearer` header and no session.
    NoCredential,
    /// The API server did not accept the token (expired, revoked, unknown).
    Rejected,
}

/// The outcome for one request. The identity is shared with the caches and the request
/// (an `Arc`): a cached answer is a reference count per request, not a copy of the groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed(Arc<Identity>),
    Unauthenticated(Unauthenticated),
    /// Signed in, but RBAC does not grant the permission.
    Forbidden {
        identity: Arc<Identity>,
        permission: Permission,
    },
    /// The API server could not be asked (not cached: the next request asks again).
    Unavailable,
}

/// The credential a request carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Bearer(String),
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer(authorization: Option<&str>) -> Option<Credential> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| Credential::Bearer(token.to_string()))
}

/// The identity in a TokenReview's answer.
pub fn identity_from_review(status: Option<&TokenReviewStatus>) -> Result<Identity, Unauthenticated> {
    let status = status.ok_or(Unauthenticated::Rejected)?;
    let user = status.user.as_ref().filter(|_| status.authenticated == Some(true)).ok_or(Unauthenticated::Rejected)?;
    let username = user.username.clone().filter(|u| !u.is_empty()).ok_or(Unauthenticated::Rejected)?;
    Ok(Identity {
        username,
        uid: user.uid.clone().unwrap_or_default(),
        groups: user.groups.clone().unwrap_or_default(),
        extra: user.extra.clone().unwrap_or_default(),
    })
}

/// The question to ask the API server about `identity`.
pub fn access_review(identity: &Identity, permission: &Permission) -> LocalSubjectAccessReview {
    LocalSubjectAccessReview {
        metadata: ObjectMeta { namespace: Some(permission.namespace.clone()), ..Default::default() },
        spec: SubjectAccessReviewSpec {
            user: Some(identity.username.clone()),
            uid: (!identity.uid.is_empty()).then(|| identity.uid.clone()),
            groups: (!identity.groups.is_empty()).then(|| identity.groups.clone()),
            extra: (!identity.extra.is_empty()).then(|| identity.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(permission.namespace.clone()),
                verb: Some(Permission::VERB.into()),
                group: Some(crate::api::GROUP.into()),
                resource: Some(Permission::RESOURCE.into()),
                name: Some(permission.workspace.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        status: None,
    }
}

/// The verdict from the answer to [`access_review`].
pub fn verdict_from_review(identity: Arc<Identity>, permission: &Permission, status: Option<&SubjectAccessReviewStatus>) -> Verdict {
    match status {
        Some(s) if s.allowed && s.denied != Some(true) => Verdict::Allowed(identity),
        _ => Verdict::Forbidden { identity, permission: permission.clone() },
    }
}

/// The claims of a JWT, read without verifying it: only for what the portal checks beside
/// the API server (which verifies the token): its expiry and its nonce.
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `exp` claim of a JWT, to end a cached answer no later than the token itself.
pub fn jwt_expiry(token: &str) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_second(jwt_claims(token)?.get("exp")?.as_i64()?).ok()
}

/// An unsigned JWT with these claims, for tests of what is read from one.
#[cfg(test)]
pub fn test_jwt(claims: serde_json::Value) -> String {
    use base64::Engine as _;
    let b = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.sig", b(&serde_json::json!({"alg": "RS256"})), b(&claims))
}

/// How long an answer about `token` may be reused from `now`.
pub fn cache_lifetime(token: &str, now: jiff::Timestamp) -> Duration {
    match jwt_expiry(token) {
        Some(exp) => Duration::try_from(exp.duration_since(now)).unwrap_or(Duration::ZERO).min(CACHE_TTL),
        None => CACHE_TTL,
    }
}

/// A small map whose entries expire.
struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlCache<K, V> {
    fn new() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(until, _)| *until > Instant::now()).map(|(_, v)| v.clone())
    }

    fn insert(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            let now = Instant::now();
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now() + ttl, value));
    }
}

/// Asks the API server, with a cache in front.
pub struct Gate {
    client: Client,
    permission: Permission,
    /// sha256 of a token → whose it is (or that it was rejected).
    tokens: TtlCache<[u8; 32], Result<Arc<Identity>, Unauthenticated>>,
    /// identity → may they see the portal.
    access: TtlCache<Arc<Identity>, Verdict>,
}

impl Gate {
    pub fn new(client: Client, permission: Permission) -> Self {
        Self { client, permission, tokens: TtlCache::new(), access: TtlCache::new() }
    }

    pub fn permission(&self) -> &Permission {
        &self.permission
    }

    /// Whose token this is, according to the API server.
    pub async fn authenticate(&self, token: &str) -> Result<Result<Arc<Identity>, Unauthenticated>, kube::Error> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.tokens.get(&key) {
            return Ok(known);
        }
        let review = TokenReview { spec: TokenReviewSpec { token: token.to_string(), audiences: None }, ..Default::default() };
        let answer = Api::<TokenReview>::all(self.client.clone()).create(&PostParams::default(), &review).await?;
        let identity = identity_from_review(answer.status.as_ref()).map(Arc::new);
        let ttl = if identity.is_ok() { cache_lifetime(token, jiff::Timestamp::now()) } else { CACHE_TTL };
        self.tokens.insert(key, identity.clone(), ttl);
        Ok(identity)
    }

    /// Whether `identity` may see the portal, according to the API server.
    pub async fn authorize(&self, identity: Arc<Identity>) -> Result<Verdict, kube::Error> {
        if let Some(known) = self.access.get(&identity) {
            return Ok(known);
        }
        let review = access_review(&identity, &self.permission);
        let api = Api::<LocalSubjectAccessReview>::namespaced(self.client.clone(), &self.permission.namespace);
        let answer = api.create(&PostParams::default(), &review).await?;
        let verdict = verdict_from_review(identity.clone(), &self.permission, answer.status.as_ref());
        self.access.insert(identity, verdict.clone(), CACHE_TTL);
        Ok(verdict)
    }

    /// The verdict for a request carrying `credential`.
    pub async fn check(&self, credential: Option<Credential>) -> Verdict {
        let Some(Credential::Bearer(token)) = credential else {
            return Verdict::Unauthenticated(Unauthenticated::NoCredential);
        };
        let identity = match self.authenticate(&token).await {
            Ok(Ok(identity)) => identity,
            Ok(Err(reason)) => return Verdict::Unauthenticated(reason),
            Err(error) => {
                tracing::warn!(%error, "failed to review a token");
                return Verdict::Unavailable;
            }
        };
        self.authorize_logged(identity).await
    }

    async fn authorize_logged(&self, identity: Arc<Identity>) -> Verdict {
        match self.authorize(identity).await {
            Ok(verdict) => verdict,
            Err(error) => {
                tracing::warn!(%error, "failed to review access");
                Verdict::Unavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn permission() -> Permission {
        Permission { namespace: "team-payments".into(), workspace: "payments".into() }
    }

    fn alice() -> Identity {
        Identity {
            username: "oidc:alice".into(),
            uid: "u-1".into(),
            groups: vec!["oidc:team-payments".into(), "system:authenticated".into()],
            extra: BTreeMap::from([("scopes".to_string(), vec!["openid".to_string()])]),
        }
    }

    #[test]
    fn only_a_bearer_authorization_is_a_credential() {
        assert_eq!(bearer(Some("Bearer abc.def")), Some(Credential::Bearer("abc.def".into())));
        assert_eq!(bearer(Some("bearer  abc ")), Some(Credential::Bearer("abc".into())));
        assert_eq!(bearer(Some("Basic YWxpY2U6cHc=")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn a_token_review_gives_an_identity_only_when_authenticated() {
        let user = UserInfo {
            username: Some("oidc:alice".into()),
            uid: Some("u-1".into()),
            groups: Some(alice().groups),
            extra: Some(alice().extra),
        };
        let ok = TokenReviewStatus { authenticated: Some(true), user: Some(user.clone()), ..Default::default() };
        assert_eq!(identity_from_review(Some(&ok)), Ok(alice()));
        let expired = TokenReviewStatus {
            authenticated: Some(false),
            user: Some(user),
            error: Some("token has expired".into()),
            ..Default::default()
        };
        assert_eq!(identity_from_review(Some(&expired)), Err(Unauthenticated::Rejected));
        let nameless = TokenReviewStatus { authenticated: Some(true), user: Some(UserInfo::default()), ..Default::default() };
        assert_eq!(identity_from_review(Some(&nameless)), Err(Unauthenticated::Rejected));
        assert_eq!(identity_from_review(None), Err(Unauthenticated::Rejected));
    }

    #[test]
    fn the_access_review_asks_for_get_on_this_workspace_as_the_whole_identity() {
        let review = access_review(&alice(), &permission());
        let expected: LocalSubjectAccessReview = serde_norway::from_str(
            r#"
            apiVersion: authorization.k8s.io/v1
            kind: LocalSubjectAccessReview
            metadata: {namespace: team-payments}
            spec:
              user: "oidc:alice"
              uid: u-1
              groups: ["oidc:team-payments", "system:authenticated"]
              extra: {scopes: [openid]}
              resourceAttributes: {namespace: team-payments, verb: get, group: hyperpage.dev, resource: workspaces, name: payments}
            "#,
        )
        .unwrap();
        assert_eq!(review, expected);
        let bare = Identity { username: "system:serviceaccount:a:b".into(), uid: String::new(), groups: vec![], extra: BTreeMap::new() };
        let spec = access_review(&bare, &permission()).spec;
        assert!(spec.uid.is_none() && spec.groups.is_none() && spec.extra.is_none());
    }

    #[test]
    fn allowed_only_when_allowed_and_not_denied() {
        let allowed = SubjectAccessReviewStatus { allowed: true, ..Default::default() };
        assert_eq!(verdict_from_review(alice().into(), &permission(), Some(&allowed)), Verdict::Allowed(alice().into()));
        let forbidden = Verdict::Forbidden { identity: alice().into(), permission: permission() };
        let no = SubjectAccessReviewStatus { allowed: false, reason: Some("no RBAC policy matched".into()), ..Default::default() };
        assert_eq!(verdict_from_review(alice().into(), &permission(), Some(&no)), forbidden);
        let denied = SubjectAccessReviewStatus { allowed: true, denied: Some(true), ..Default::default() };
        assert_eq!(verdict_from_review(alice().into(), &permission(), Some(&denied)), forbidden);
        assert_eq!(verdict_from_review(alice().into(), &permission(), None), forbidden);
    }

    #[test]
    fn the_permission_reads_like_kubectl() {
        assert_eq!(permission().to_string(), "get workspaces.hyperpage.dev \"payments\" in namespace \"team-payments\"");
    }

    #[test]
    fn cached_answers_end_no_later_than_the_token() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let jwt = test_jwt;
        assert_eq!(cache_lifetime(&jwt(serde_json::json!({"exp": 1_800_000_020})), now), Duration::from_secs(20));
        assert_eq!(cache_lifetime(&jwt(serde_json::json!({"exp": 1_800_003_600})), now), CACHE_TTL);
        assert_eq!(cache_lifetime(&jwt(serde_json::json!({"exp": 1_700_000_000})), now), Duration::ZERO);
        assert_eq!(cache_lifetime("opaque-token", now), CACHE_TTL);
    }

    #[test]
    fn modes_parse_and_print() {
        assert_eq!("kubernetes".parse(), Ok(AccessMode::Kubernetes));
        assert_eq!("public".parse(), Ok(AccessMode::Public));
        assert!("open".parse::<AccessMode>().is_err());
        assert_eq!(AccessMode::default().to_string(), "kubernetes");
    }
}
