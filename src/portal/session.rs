//! The browser session of an OpenID Connect sign-in: an encrypted, authenticated cookie.
//!
//! The cookie crate's private jar does the cryptography (AES-256-GCM with a random nonce per
//! cookie, the cookie's name as associated data), so a cookie cannot be read, changed or
//! moved to another name without the key. The key is the per-Workspace Secret the operator
//! keeps (64 random bytes), mounted as a file and read again every [`KEY_RELOAD`]: every
//! replica accepts every replica's cookies, and replacing the Secret signs everyone out.

use cookie::{Cookie, CookieJar, Key, SameSite};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The signed-in session: the ID token (which the API server reviews on every use, so it is
/// checked exactly like `kubectl` would check it) until it expires.
pub const SESSION_COOKIE: &str = "hyperpage_session";
/// The state of a sign-in under way (state, nonce, PKCE verifier, where to go back to).
pub const LOGIN_COOKIE: &str = "hyperpage_login";
/// How long a sign-in may take at the provider.
pub const LOGIN_LIFETIME: Duration = Duration::from_secs(600);
/// How often the key file is read again (a rotated Secret reaches the pod's volume within
/// the kubelet's sync period; this only bounds the extra delay).
pub const KEY_RELOAD: Duration = Duration::from_secs(10);
/// Bytes of key material the Secret holds.
pub const KEY_BYTES: usize = 64;

/// What a request's cookie turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<T> {
    Missing,
    /// Present but not ours: tampered with, from an old key, or unreadable.
    Invalid,
    Valid(T),
}

/// The key cookies are sealed with.
#[derive(Clone)]
pub struct SessionKey(Key);

impl SessionKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < KEY_BYTES {
            return Err(format!("the session key has {} bytes; it needs at least {KEY_BYTES}", bytes.len()));
        }
        Ok(Self(Key::from(&bytes[..KEY_BYTES])))
    }
}

/// A `Set-Cookie` value carrying `value`, encrypted, for `max_age`.
pub fn seal<T: Serialize>(key: &SessionKey, name: &'static str, value: &T, max_age: Duration) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(value)?;
    let mut jar = CookieJar::new();
    jar.private_mut(&key.0).add(attributes(Cookie::build((name, json)), max_age));
    Ok(jar.get(name).map(|c| c.encoded().to_string()).unwrap_or_default())
}

/// A `Set-Cookie` value that removes the cookie.
pub fn clear(name: &'static str) -> String {
    attributes(Cookie::build((name, "")), Duration::ZERO).encoded().to_string()
}

/// Every cookie of ours carries the same flags: only over HTTPS (browsers treat
/// `localhost` as secure too), never to scripts, not on cross-site subrequests.
fn attributes(builder: cookie::CookieBuilder<'static>, max_age: Duration) -> Cookie<'static> {
    builder
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX)))
        .build()
}

/// The cookie `name` among the request's `Cookie` headers, decrypted.
pub fn open<'a, T: DeserializeOwned>(key: &SessionKey, name: &str, cookie_headers: impl Iterator<Item = &'a str>) -> Opened<T> {
    // Found by its name before the value is decoded: a value whose percent-encoding is broken
    // (or decodes to no text) is a tampered cookie of ours, to be cleared, not an absent one.
    let found = cookie_headers.flat_map(Cookie::split_parse).filter_map(Result::ok).find(|c| c.name() == name);
    let Some(raw) = found else { return Opened::Missing };
    let Ok(cookie) = Cookie::parse_encoded(format!("{}={}", raw.name(), raw.value())) else { return Opened::Invalid };
    let jar = CookieJar::new();
    match jar.private(&key.0).decrypt(cookie.into_owned()).and_then(|c| serde_json::from_str(c.value()).ok()) {
        Some(value) => Opened::Valid(value),
        None => Opened::Invalid,
    }
}

/// The key, read from the mounted Secret and read again every [`KEY_RELOAD`].
pub struct KeyFile {
    path: PathBuf,
    cached: Mutex<Option<(Instant, Arc<SessionKey>)>>,
}

impl KeyFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path, cached: Mutex::new(None) }
    }

    pub fn key(&self) -> Result<Arc<SessionKey>, String> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((read, key)) = cached.as_ref()
            && read.elapsed() < KEY_RELOAD
        {
            return Ok(key.clone());
        }
        let bytes = std::fs::read(&self.path).map_err(|e| format!("failed to read the session key {}: {e}", self.path.display()))?;
        let key = Arc::new(SessionKey::from_bytes(&bytes)?);
        *cached = Some((Instant::now(), key.clone()));
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SessionKey {
        SessionKey::from_bytes(&[byte; 64]).unwrap()
    }

    /// The `name=value` part of a Set-Cookie value, as a browser would send it back.
    fn sent(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_string()
    }

    #[test]
    fn a_sealed_cookie_opens_only_with_its_key_and_name() {
        let set = seal(&key(1), SESSION_COOKIE, &"the id token", Duration::from_secs(300)).unwrap();
        assert!(!set.contains("the id token") && !set.contains("the%20id%20token"), "encrypted: {set}");
        let header = format!("theme=dark; {}", sent(&set));
        assert_eq!(open::<String>(&key(1), SESSION_COOKIE, [header.as_str()].into_iter()), Opened::Valid("the id token".into()));
        assert_eq!(open::<String>(&key(2), SESSION_COOKIE, [header.as_str()].into_iter()), Opened::Invalid, "another key (a rotation)");
        let renamed = sent(&set).replacen(SESSION_COOKIE, LOGIN_COOKIE, 1);
        assert_eq!(open::<String>(&key(1), LOGIN_COOKIE, [renamed.as_str()].into_iter()), Opened::Invalid, "the name is authenticated");
        assert_eq!(open::<String>(&key(1), SESSION_COOKIE, ["theme=dark"].into_iter()), Opened::Missing);
    }

    #[test]
    fn a_tampered_cookie_is_invalid() {
        let set = seal(&key(1), SESSION_COOKIE, &"the id token", Duration::from_secs(300)).unwrap();
        let pair = sent(&set);
        let (name, value) = pair.split_once('=').unwrap();
        // Every position, escapes included (the value is percent-encoded base64: a changed
        // hex digit of "%2B" decodes to a byte that is no text).
        for i in 0..value.len() {
            let mut bytes = value.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = format!("{name}={}", String::from_utf8(bytes).unwrap());
            assert_eq!(open::<String>(&key(1), SESSION_COOKIE, [tampered.as_str()].into_iter()), Opened::Invalid, "{tampered}");
        }
        for broken in ["%ZZ", "%FF", "%"] {
            let header = format!("{name}={broken}{value}");
            assert_eq!(open::<String>(&key(1), SESSION_COOKIE, [header.as_str()].into_iter()), Opened::Invalid, "{header}");
        }
    }

    #[test]
    fn cookies_are_secure_http_only_same_site_lax_and_bounded() {
        let set = seal(&key(1), SESSION_COOKIE, &1, Duration::from_secs(90)).unwrap();
        for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=90"] {
            assert!(set.split("; ").any(|a| a == flag), "{flag} in {set}");
        }
        let cleared = clear(SESSION_COOKIE);
        assert!(cleared.starts_with("hyperpage_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    }

    #[test]
    fn a_short_key_is_refused() {
        assert!(SessionKey::from_bytes(&[0; 32]).is_err());
    }
}
