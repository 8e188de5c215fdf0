//! Join tokens: how a workload proves, in embedded mode, which identity it may get a
//! certificate for.
//!
//! A token names one namespace and service account and carries an HMAC-SHA256 of them under a
//! key the control plane keeps in its state dir (`join-token.key`, created on first start,
//! mode 0600). `weft control token --namespace NS --service-account SA` prints one. Anyone
//! holding a token can get certificates for that identity and no other; rotating the key
//! file invalidates every token.

use std::path::Path;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "weft-join";

/// The key tokens are signed with.
pub struct JoinTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTokens(..)")
    }
}

impl JoinTokens {
    /// File name of the key in the state dir.
    pub const KEY_FILE: &str = "join-token.key";

    /// Loads the key from `state_dir`, creating it on first use.
    pub fn load_or_create(state_dir: &Path) -> std::io::Result<Self> {
        let path = state_dir.join(Self::KEY_FILE);
        let secret = match std::fs::read_to_string(&path) {
            Ok(text) => decode_hex(text.trim()).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a hex key", path.display()),
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = vec![0u8; 32];
                SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| std::io::Error::other("the system random generator failed"))?;
                super::write_private(&path, encode_hex(&secret).as_bytes())?;
                secret
            }
            Err(err) => return Err(err),
        };
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        })
    }

    /// A token for one identity.
    pub fn issue(&self, namespace: &str, service_account: &str) -> String {
        let tag = hmac::sign(
            &self.key,
            format!("{namespace}/{service_account}").as_bytes(),
        );
        format!(
            "{PREFIX}.{namespace}.{service_account}.{}",
            encode_hex(tag.as_ref())
        )
    }

    /// The identity a token names, if it is genuine.
    pub fn verify(&self, token: &str) -> Option<(String, String)> {
        let mut parts = token.split('.');
        let (prefix, namespace, account, tag) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if prefix != PREFIX || parts.next().is_some() {
            return None;
        }
        let tag = decode_hex(tag)?;
        hmac::verify(&self.key, format!("{namespace}/{account}").as_bytes(), &tag).ok()?;
        Some((namespace.to_string(), account.to_string()))
    }
}

/// The token a gRPC request carries as `authorization: Bearer <token>`.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    Some(value.strip_prefix("Bearer ")?.trim())
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_bound_to_its_identity_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = JoinTokens::load_or_create(dir.path()).unwrap();
        let token = tokens.issue("shop", "reviews");
        assert_eq!(
            tokens.verify(&token),
            Some(("shop".into(), "reviews".into()))
        );
        assert_eq!(tokens.verify(&token.replace(".reviews.", ".admin.")), None);
        assert_eq!(tokens.verify("weft-join.shop.reviews.00"), None);
        let reloaded = JoinTokens::load_or_create(dir.path()).unwrap();
        assert_eq!(
            reloaded.verify(&token),
            Some(("shop".into(), "reviews".into()))
        );
        let other = tempfile::tempdir().unwrap();
        assert_eq!(
            JoinTokens::load_or_create(other.path())
                .unwrap()
                .verify(&token),
            None
        );
    }
}
