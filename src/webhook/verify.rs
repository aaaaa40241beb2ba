//! Checking that a webhook comes from the tool (pure): each provider's documented scheme.
//!
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`
//!   (<https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries>).
//! - Jira Cloud (secure admin webhooks) and Jira Data Center 10+: `X-Hub-Signature:
//!   sha256=<hex>`, the WebSub `method=signature` form
//!   (<https://developer.atlassian.com/cloud/jira/platform/webhooks/#secure-admin-webhooks>).
//! - GitLab: the secret token itself in `X-Gitlab-Token`
//!   (<https://docs.gitlab.com/user/project/integrations/webhooks/#validate-requests-with-a-secret-token>).
//! - Harbor: the policy's "Auth Header" value sent verbatim as `Authorization`
//!   (<https://goharbor.io/docs/main/working-with-projects/project-configuration/configure-webhooks/>).
//! - Jenkins has no built-in signing: a pipeline step sends `X-Hyperpage-Signature-256:
//!   sha256=<hex>` in GitHub's format (the README shows the `curl` line).
//!
//! Every comparison is constant-time (`hmac`'s `verify_slice`, `subtle` for tokens), so a
//! timing difference tells an attacker nothing about how much of a guess was right.

use crate::api::Provider;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The header Jenkins (or any other sender) signs with, in GitHub's format.
pub const GENERIC_SIGNATURE_HEADER: &str = "x-hyperpage-signature-256";

/// Why a request was refused; each is a metric label, and none carries request data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The header the provider authenticates with is absent.
    MissingHeader,
    /// The header is there but not in the provider's format.
    Malformed,
    /// Well-formed, but the signature or token does not match.
    Mismatch,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::MissingHeader => "missing_header",
            Rejection::Malformed => "malformed",
            Rejection::Mismatch => "mismatch",
        }
    }
}

/// The header that authenticates a provider's webhook.
pub fn header_name(provider: Provider) -> &'static str {
    match provider {
        Provider::Github => "x-hub-signature-256",
        Provider::Jira => "x-hub-signature",
        Provider::Gitlab => "x-gitlab-token",
        Provider::Harbor => "authorization",
        Provider::Jenkins => GENERIC_SIGNATURE_HEADER,
    }
}

/// Checks a request against the binding's shared secret: `header` is the value of
/// [`header_name`] (if present), `body` the raw bytes as received.
pub fn verify(provider: Provider, secret: &[u8], header: Option<&[u8]>, body: &[u8]) -> Result<(), Rejection> {
    let header = header.ok_or(Rejection::MissingHeader)?;
    match provider {
        Provider::Github | Provider::Jira | Provider::Jenkins => verify_hmac(secret, header, body),
        Provider::Gitlab | Provider::Harbor => {
            if tokens_equal(secret, header) {
                Ok(())
            } else {
                Err(Rejection::Mismatch)
            }
        }
    }
}

/// `sha256=<64 hex digits>`, checked with the HMAC crate's constant-time comparison.
fn verify_hmac(secret: &[u8], header: &[u8], body: &[u8]) -> Result<(), Rejection> {
    let hex = header.strip_prefix(b"sha256=").ok_or(Rejection::Malformed)?;
    let expected = decode_hex(hex).ok_or(Rejection::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| Rejection::Mismatch)?;
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| Rejection::Mismatch)
}

/// Token equality that leaks neither the content nor the length: both sides are hashed to
/// 32 bytes first, then compared in constant time.
fn tokens_equal(secret: &[u8], presented: &[u8]) -> bool {
    Sha256::digest(secret).ct_eq(&Sha256::digest(presented)).into()
}

fn decode_hex(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// The binding's path segment: hex HMAC-SHA256 keyed with the shared secret over
/// `namespace/name`. It names the binding without revealing it, and only someone who knows the
/// secret can compute it (`printf %s ns/name | openssl dgst -sha256 -hmac "$secret"`).
pub fn path_digest(namespace: &str, name: &str, secret: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(format!("{namespace}/{name}").as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// GitHub's signature header for `body` (for senders and tests).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"It's a Secret to Everybody";

    #[test]
    fn githubs_documented_example_verifies() {
        // The test values from GitHub's "Validating webhook deliveries" page.
        let header = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(verify(Provider::Github, SECRET, Some(header), b"Hello, World!"), Ok(()));
        assert_eq!(sign(SECRET, b"Hello, World!").as_bytes(), header);
    }

    #[test]
    fn signatures_are_refused_when_missing_malformed_or_wrong() {
        let body = b"{\"ref\":\"refs/heads/main\"}";
        let good = sign(SECRET, body);
        for provider in [Provider::Github, Provider::Jira, Provider::Jenkins] {
            assert_eq!(verify(provider, SECRET, Some(good.as_bytes()), body), Ok(()));
            assert_eq!(verify(provider, SECRET, None, body), Err(Rejection::MissingHeader));
            assert_eq!(verify(provider, SECRET, Some(b"sha1=abcd"), body), Err(Rejection::Malformed));
            assert_eq!(verify(provider, SECRET, Some(&good.as_bytes()[..70]), body), Err(Rejection::Malformed));
            assert_eq!(verify(provider, SECRET, Some(good.to_uppercase().as_bytes()), body), Err(Rejection::Malformed));
            assert_eq!(verify(provider, b"another secret", Some(good.as_bytes()), body), Err(Rejection::Mismatch));
            assert_eq!(verify(provider, SECRET, Some(good.as_bytes()), b"{\"ref\":\"refs/heads/evil\"}"), Err(Rejection::Mismatch));
        }
    }

    #[test]
    fn tokens_must_match_exactly() {
        for provider in [Provider::Gitlab, Provider::Harbor] {
            assert_eq!(verify(provider, b"s3cret-token", Some(b"s3cret-token"), b"anything"), Ok(()));
            for wrong in [&b"s3cret-toke"[..], b"s3cret-token ", b"S3cret-token", b""] {
                assert_eq!(verify(provider, b"s3cret-token", Some(wrong), b"anything"), Err(Rejection::Mismatch));
            }
            assert_eq!(verify(provider, b"s3cret-token", None, b""), Err(Rejection::MissingHeader));
        }
    }

    #[test]
    fn paths_depend_on_the_binding_and_the_secret() {
        let path = path_digest("team-a", "github", SECRET);
        assert_eq!(path.len(), 64);
        assert!(path.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(path, path_digest("team-a", "github", SECRET));
        assert_ne!(path, path_digest("team-a", "gitlab", SECRET));
        assert_ne!(path, path_digest("team-b", "github", SECRET));
        assert_ne!(path, path_digest("team-a", "github", b"other"));
        // "a/b" + "c" and "a" + "b/c" cannot collide: names have no '/'.
        assert_eq!(path_digest("ns", "n", b"k"), {
            let mut mac = HmacSha256::new_from_slice(b"k").unwrap();
            mac.update(b"ns/n");
            mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>()
        });
    }
}
