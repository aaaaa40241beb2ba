//! Browser sign-in with OpenID Connect: the authorization code flow with PKCE (S256),
//! `state` and `nonce`, against the one issuer the platform configures for all portals.
//!
//! The portal does not verify or map the ID token itself: it hands it to the API server in a
//! TokenReview, exactly as `kubectl` would present it. The API server checks the signature,
//! issuer, audience and expiry with its own `--oidc-*` settings (or AuthenticationConfiguration)
//! and applies its username and groups claims and prefixes, so the portal sees the user
//! exactly as RBAC does. The portal checks what only it can: `state` (this browser started
//! this sign-in) and `nonce` (this ID token was issued for it).

use super::session::{self, KeyFile, Opened, SessionKey};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The issuer and client, the same for every portal (chart values `portal.oidc.*`).
#[derive(Clone, Debug)]
pub struct OidcConfig {
    pub issuer_url: String,
    pub client_id: String,
    /// File holding the client secret; a public client (PKCE only) without.
    pub client_secret_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) for the issuer, when its certificate is not publicly trusted.
    pub ca_file: Option<PathBuf>,
    /// The portal's own address as browsers reach it (the Ingress host), for the redirect URI;
    /// without it only a loopback address works (`kubectl port-forward`).
    pub external_url: Option<url::Url>,
    /// The per-Workspace session key (mounted from the Secret the operator keeps).
    pub session_key_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("failed to configure sign-in: {0}")]
    Config(String),
    #[error("failed to reach the OpenID provider: {0}")]
    Provider(String),
    #[error("failed to sign in: {0}")]
    Callback(&'static str),
    #[error("failed to read the session key: {0}")]
    Key(String),
    #[error("failed to review the ID token: {0}")]
    Review(String),
}

impl OidcError {
    /// What the person signing in is told: what they can act on, not the portal's internals
    /// (those go to the log).
    pub fn public_message(&self) -> String {
        match self {
            Self::Callback(_) => self.to_string(),
            _ => "failed to sign in: the portal could not complete the sign-in; try again, or ask the platform team (the portal's log has the details)".into(),
        }
    }
}

/// The provider's endpoints, from its discovery document.
#[derive(Clone, Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

/// A sign-in under way, kept in the login cookie.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub return_to: String,
}

/// The signed-in session, kept in the session cookie.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id_token: String,
}

/// A random URL-safe string of `bytes` random bytes.
fn random(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), buf.as_mut_slice());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

impl Login {
    pub fn start(return_to: &str) -> Self {
        Self { state: random(24), nonce: random(24), verifier: random(32), return_to: safe_return_path(Some(return_to)) }
    }
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Where to go after signing in: a path on this portal only (no other host, no `//host`).
pub fn safe_return_path(raw: Option<&str>) -> String {
    match raw {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.starts_with("/\\") && !p.contains(['\r', '\n']) => p.to_string(),
        _ => "/".to_string(),
    }
}

/// The redirect URI registered at the provider: `<external URL>/auth/callback`, or, without an
/// external URL, the loopback address the browser used (a port-forward). Any other `Host`
/// is the visitor's to choose, so it is never used.
pub fn redirect_uri(external_url: Option<&url::Url>, host: Option<&str>) -> Result<String, OidcError> {
    let mut url = match (external_url, host) {
        (Some(external), _) => external.clone(),
        (None, Some(host)) if is_loopback(host) => {
            url::Url::parse(&format!("http://{host}/")).map_err(|_| OidcError::Callback("the Host header is not an address"))?
        }
        _ => return Err(OidcError::Config("no external URL (--external-url) to send the provider back to".into())),
    };
    url.set_path("/auth/callback");
    url.set_query(None);
    url.set_fragment(None);
    Ok(url.to_string())
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, port)| if port.chars().all(|c| c.is_ascii_digit()) { name } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The URL that sends the browser to the provider's login.
pub fn authorization_url(discovery: &Discovery, config: &OidcConfig, login: &Login, redirect: &str) -> Result<url::Url, OidcError> {
    let mut url =
        url::Url::parse(&discovery.authorization_endpoint).map_err(|e| OidcError::Provider(format!("authorization endpoint: {e}")))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &config.client_id)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", "openid email profile groups")
        .append_pair("state", &login.state)
        .append_pair("nonce", &login.nonce)
        .append_pair("code_challenge", &pkce_challenge(&login.verifier))
        .append_pair("code_challenge_method", "S256");
    Ok(url)
}

/// The callback belongs to the sign-in in this browser.
pub fn check_state(login: &Login, state: Option<&str>) -> Result<(), OidcError> {
    use subtle::ConstantTimeEq;
    match state {
        Some(s) if bool::from(s.as_bytes().ct_eq(login.state.as_bytes())) => Ok(()),
        _ => Err(OidcError::Callback("the sign-in state does not match (start again from the portal)")),
    }
}

/// The ID token was issued for this sign-in.
pub fn check_nonce(id_token: &str, login: &Login) -> Result<(), OidcError> {
    match super::auth::jwt_claims(id_token).as_ref().and_then(|c| c.get("nonce")?.as_str().map(str::to_string)) {
        Some(n) if n == login.nonce => Ok(()),
        _ => Err(OidcError::Callback("the ID token was not issued for this sign-in (nonce)")),
    }
}

/// How long a session with this ID token may last from `now`: until the token expires.
pub fn session_lifetime(id_token: &str, now: jiff::Timestamp) -> Duration {
    super::auth::jwt_expiry(id_token).and_then(|exp| Duration::try_from(exp.duration_since(now)).ok()).unwrap_or(Duration::ZERO)
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

/// Sign-in: the provider, the client, and the session key.
pub struct Oidc {
    pub config: OidcConfig,
    http: reqwest::Client,
    discovery: OnceCell<Discovery>,
    keys: KeyFile,
}

impl Oidc {
    pub fn new(config: OidcConfig) -> Result<Arc<Self>, OidcError> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10)).redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| OidcError::Config(format!("failed to read {}: {e}", path.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| OidcError::Config(format!("{}: {e}", path.display())))?;
            http = http.add_root_certificate(cert);
        }
        let http = http.build().map_err(|e| OidcError::Config(e.to_string()))?;
        let keys = KeyFile::new(config.session_key_file.clone());
        keys.key().map_err(OidcError::Key)?;
        let oidc = Self { config, http, discovery: OnceCell::new(), keys };
        oidc.client_secret()?;
        Ok(Arc::new(oidc))
    }

    /// The client secret, read from its file on every sign-in so that a rotated Secret is
    /// picked up without a restart.
    fn client_secret(&self) -> Result<Option<String>, OidcError> {
        let Some(path) = &self.config.client_secret_file else { return Ok(None) };
        let secret = std::fs::read_to_string(path)
            .map_err(|e| OidcError::Config(format!("failed to read the client secret {}: {e}", path.display())))?;
        Ok(Some(secret.trim().to_string()))
    }

    pub fn key(&self) -> Result<Arc<SessionKey>, OidcError> {
        self.keys.key().map_err(OidcError::Key)
    }

    /// The discovery document, fetched once (and again after a failure).
    pub async fn discovery(&self) -> Result<&Discovery, OidcError> {
        self.discovery
            .get_or_try_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.config.issuer_url.trim_end_matches('/'));
                let response = self.http.get(&url).send().await.map_err(|e| OidcError::Provider(format!("{url}: {e}")))?;
                let response = response.error_for_status().map_err(|e| OidcError::Provider(format!("{url}: {e}")))?;
                let discovery: Discovery = response.json().await.map_err(|e| OidcError::Provider(format!("{url}: {e}")))?;
                if discovery.issuer.trim_end_matches('/') != self.config.issuer_url.trim_end_matches('/') {
                    return Err(OidcError::Provider(format!("{url} names the issuer {:?}", discovery.issuer)));
                }
                Ok(discovery)
            })
            .await
    }

    /// Exchanges the authorization code for an ID token at the token endpoint.
    pub async fn exchange(&self, code: &str, login: &Login, redirect: &str) -> Result<String, OidcError> {
        let discovery = self.discovery().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect),
            ("code_verifier", login.verifier.as_str()),
        ];
        let mut request = self.http.post(&discovery.token_endpoint);
        match &self.client_secret()? {
            Some(secret) => request = request.basic_auth(&self.config.client_id, Some(secret)),
            None => form.push(("client_id", self.config.client_id.as_str())),
        }
        let response = request.form(&form).send().await.map_err(|e| OidcError::Provider(format!("token endpoint: {e}")))?;
        if !response.status().is_success() {
            return Err(OidcError::Provider(format!("the token endpoint answered {}", response.status())));
        }
        let tokens: TokenResponse = response.json().await.map_err(|e| OidcError::Provider(format!("token endpoint: {e}")))?;
        tokens.id_token.ok_or(OidcError::Callback("the provider returned no ID token"))
    }

    /// The session in a request's cookies.
    pub fn session<'a>(&self, cookies: impl Iterator<Item = &'a str>) -> Opened<Session> {
        match self.key() {
            Ok(key) => session::open(&key, session::SESSION_COOKIE, cookies),
            Err(error) => {
                tracing::warn!(%error, "no session key");
                Opened::Invalid
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OidcConfig {
        OidcConfig {
            issuer_url: "https://idp.example".into(),
            client_id: "hyperpage-portal".into(),
            client_secret_file: None,
            ca_file: None,
            external_url: Some(url::Url::parse("https://payments.portal.example/some/page?x=1").unwrap()),
            session_key_file: PathBuf::from("/nonexistent"),
        }
    }

    use crate::portal::auth::test_jwt as jwt;

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        assert_eq!(pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn the_authorization_url_carries_pkce_state_nonce_and_the_ingress_redirect() {
        let discovery = Discovery {
            issuer: "https://idp.example".into(),
            authorization_endpoint: "https://idp.example/auth?tenant=a".into(),
            token_endpoint: "https://idp.example/token".into(),
        };
        let login = Login::start("/");
        let redirect = redirect_uri(config().external_url.as_ref(), Some("evil.example")).unwrap();
        let url = authorization_url(&discovery, &config(), &login, &redirect).unwrap();
        let query: std::collections::BTreeMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query["tenant"], "a", "the endpoint's own parameters stay");
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["client_id"], "hyperpage-portal");
        assert_eq!(query["redirect_uri"], "https://payments.portal.example/auth/callback");
        assert_eq!(query["state"], login.state);
        assert_eq!(query["nonce"], login.nonce);
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(query["code_challenge"], pkce_challenge(&login.verifier));
        assert!(!url.as_str().contains(&login.verifier), "the verifier never leaves the portal before the exchange");
        let other = Login::start("/");
        assert!(other.state != login.state && other.nonce != login.nonce && other.verifier != login.verifier);
        assert!(login.verifier.len() >= 43, "RFC 7636: at least 43 characters");
    }

    #[test]
    fn without_an_external_url_only_a_loopback_host_is_trusted_for_the_redirect() {
        assert_eq!(redirect_uri(None, Some("127.0.0.1:8080")).unwrap(), "http://127.0.0.1:8080/auth/callback");
        assert_eq!(redirect_uri(None, Some("localhost:8080")).unwrap(), "http://localhost:8080/auth/callback");
        assert_eq!(redirect_uri(None, Some("[::1]:8080")).unwrap(), "http://[::1]:8080/auth/callback");
        for host in [Some("evil.example"), Some("127.0.0.1.evil.example:80"), Some("localhost.evil.example"), None] {
            assert!(redirect_uri(None, host).is_err(), "{host:?}");
        }
    }

    #[test]
    fn only_paths_on_this_portal_are_returned_to() {
        assert_eq!(safe_return_path(Some("/fragment?x=1")), "/fragment?x=1");
        for evil in ["https://evil.example/", "//evil.example/", "/\\evil.example", "evil", "/x\r\nSet-Cookie: a=b"] {
            assert_eq!(safe_return_path(Some(evil)), "/", "{evil:?}");
        }
        assert_eq!(safe_return_path(None), "/");
    }

    #[test]
    fn state_and_nonce_must_match_the_sign_in() {
        let login = Login::start("/");
        assert!(check_state(&login, Some(&login.state)).is_ok());
        assert!(check_state(&login, Some("forged")).is_err());
        assert!(check_state(&login, None).is_err());
        assert!(check_nonce(&jwt(serde_json::json!({"nonce": login.nonce})), &login).is_ok());
        assert!(check_nonce(&jwt(serde_json::json!({"nonce": "replayed"})), &login).is_err());
        assert!(check_nonce(&jwt(serde_json::json!({})), &login).is_err());
        assert!(check_nonce("not a jwt", &login).is_err());
    }

    #[test]
    fn a_session_lasts_until_the_id_token_expires() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(session_lifetime(&jwt(serde_json::json!({"exp": 1_800_003_600})), now), Duration::from_secs(3600));
        assert_eq!(session_lifetime(&jwt(serde_json::json!({"exp": 1_700_000_000})), now), Duration::ZERO);
        assert_eq!(session_lifetime("opaque", now), Duration::ZERO);
    }
}
