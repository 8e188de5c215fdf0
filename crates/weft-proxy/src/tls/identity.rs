//! The workload's identity: a key generated here that never leaves the process, and a
//! certificate for `spiffe://<trust-domain>/ns/<namespace>/sa/<account>` obtained from the
//! control plane's CA with a CSR (Istio's `IstioCertificateService`).
//!
//! [`CurrentIdentity`] holds the identity in force and is what TLS reads at each handshake, so
//! a renewed certificate is used by new connections while established ones finish with the
//! old one. [`renew_forever`] renews it when two thirds of its lifetime have passed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tonic::transport::Channel;
use weft_xds::istio_ca::IstioCertificateRequest;
use weft_xds::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why no certificate could be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Generating the key or the CSR failed.
    #[error("cannot make a certificate request: {0}")]
    Csr(#[from] rcgen::Error),
    /// The CA refused or could not be reached.
    #[error("the CA refused the certificate request: {0}")]
    Refused(#[from] tonic::Status),
    /// The CA's answer is not a usable certificate chain.
    #[error("the CA's answer is not usable: {0}")]
    BadChain(String),
    /// The token file cannot be read.
    #[error("reading the token file {0}: {1}")]
    TokenFile(PathBuf, std::io::Error),
}

/// What the proxy presents to the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A token given once: a join token.
    Token(String),
    /// A file read again before every request: a pod's projected service-account token,
    /// which the kubelet replaces before it expires.
    File(PathBuf),
}

impl Credential {
    /// The token to present now.
    pub fn token(&self) -> Result<String, IdentityError> {
        match self {
            Self::Token(token) => Ok(token.clone()),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim().to_string())
                .map_err(|error| IdentityError::TokenFile(path.clone(), error)),
        }
    }
}

/// A certificate and its key, ready for TLS, with what the admin page shows.
#[derive(Debug)]
pub struct Identity {
    /// The SPIFFE ID the certificate carries.
    pub spiffe_id: String,
    /// Certificate chain (leaf first) and signing key, for rustls.
    pub certified: Arc<CertifiedKey>,
    /// The mesh root every peer must chain to.
    pub root: CertificateDer<'static>,
    /// When the certificate was issued.
    pub not_before: SystemTime,
    /// When the certificate expires.
    pub not_after: SystemTime,
    /// The certificate's serial number, hex.
    pub serial: String,
    /// The root's expiry.
    pub root_not_after: SystemTime,
}

/// The SPIFFE ID of a namespace and service account.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// Generates a key, sends a CSR for `spiffe_id` with `token`, and returns the
/// identity the CA signed.
pub async fn request(
    channel: Channel,
    token: &str,
    spiffe_id: &str,
) -> Result<Identity, IdentityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names =
        vec![SanType::URI(spiffe_id.to_string().try_into().map_err(
            |_| IdentityError::BadChain(format!("{spiffe_id} is not a valid URI")),
        )?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 0,
        metadata: None,
    });
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| IdentityError::BadChain("the token is not a valid header".into()))?;
    request.metadata_mut().insert("authorization", bearer);
    let response = IstioCertificateServiceClient::new(channel)
        .create_certificate(request)
        .await?
        .into_inner();
    let mut chain = Vec::new();
    for pem in &response.cert_chain {
        let cert = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| IdentityError::BadChain(format!("a certificate is not PEM: {e}")))?;
        chain.push(cert);
    }
    let (Some(leaf), Some(root)) = (chain.first().cloned(), chain.last().cloned()) else {
        return Err(IdentityError::BadChain("the chain is empty".into()));
    };
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| IdentityError::BadChain(format!("the key is not usable: {e}")))?;
    let (not_before, not_after, serial) = validity(&leaf)?;
    let (_, root_not_after, _) = validity(&root)?;
    // The leaf and any intermediates; peers have the root already.
    let presented: Vec<CertificateDer<'static>> = if chain.len() > 1 {
        chain[..chain.len() - 1].to_vec()
    } else {
        chain
    };
    Ok(Identity {
        spiffe_id: spiffe_id.to_string(),
        certified: Arc::new(CertifiedKey::new(presented, signing_key)),
        root,
        not_before,
        not_after,
        serial,
        root_not_after,
    })
}

/// Where a workload's certificate comes from when something other than Weft's CA issues it
/// (Istio's file-mounted certificates, e.g. cert-manager): PEM files read at start and again
/// whenever they change.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    /// The certificate chain, leaf first.
    pub chain: std::path::PathBuf,
    /// The leaf's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: std::path::PathBuf,
    /// The root peers must chain to.
    pub root: std::path::PathBuf,
}

impl CertificateFiles {
    /// Reads the files into an identity. The SPIFFE ID is the one the leaf carries.
    pub fn load(&self) -> Result<Identity, IdentityError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| IdentityError::BadChain(format!("reading {}: {e}", path.display())))
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(&self.chain)?)
                .collect::<Result<_, _>>()
                .map_err(|e| IdentityError::BadChain(format!("{}: {e}", self.chain.display())))?;
        let root = CertificateDer::from_pem_slice(&read(&self.root)?)
            .map_err(|e| IdentityError::BadChain(format!("{}: {e}", self.root.display())))?;
        let key_der = PrivateKeyDer::from_pem_slice(&read(&self.key)?)
            .map_err(|e| IdentityError::BadChain(format!("{}: {e}", self.key.display())))?;
        let Some(leaf) = chain.first() else {
            return Err(IdentityError::BadChain(format!(
                "{} holds no certificate",
                self.chain.display()
            )));
        };
        let spiffe_id = peer_spiffe_id(leaf).ok_or_else(|| {
            IdentityError::BadChain(format!("{} has no SPIFFE ID", self.chain.display()))
        })?;
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|e| IdentityError::BadChain(format!("the key is not usable: {e}")))?;
        let (not_before, not_after, serial) = validity(leaf)?;
        let (_, root_not_after, _) = validity(&root)?;
        Ok(Identity {
            spiffe_id,
            certified: Arc::new(CertifiedKey::new(chain, signing_key)),
            root,
            not_before,
            not_after,
            serial,
            root_not_after,
        })
    }

    fn modified(&self) -> Vec<Option<SystemTime>> {
        [&self.chain, &self.key, &self.root]
            .iter()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// Loads the identity from `files`, then reloads it whenever a file changes (checked every
/// ten seconds). A change that does not load is logged and the identity in force stays.
pub async fn watch_files(current: CurrentIdentity, files: CertificateFiles) {
    let mut seen = Vec::new();
    loop {
        let modified = files.modified();
        if modified != seen {
            match files.load() {
                Ok(identity) => {
                    tracing::info!(
                        spiffe_id = identity.spiffe_id,
                        serial = identity.serial,
                        "certificate loaded from files"
                    );
                    current.set(identity);
                    seen = modified;
                }
                Err(error) => tracing::warn!(%error, "cannot load the certificate files"),
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime, String), IdentityError> {
    let (_, parsed) = X509Certificate::from_der(cert)
        .map_err(|e| IdentityError::BadChain(format!("a certificate does not parse: {e}")))?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok((
        at(parsed.validity().not_before),
        at(parsed.validity().not_after),
        parsed.raw_serial_as_string().replace(':', ""),
    ))
}

/// The URI SAN of a certificate that is a SPIFFE ID, if any.
pub fn peer_spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
            Some(uri.to_string())
        }
        _ => None,
    })
}

/// The DNS and URI subject alternative names of a certificate.
pub fn subject_alt_names(cert: &CertificateDer<'_>) -> Vec<crate::tls::ServerSan> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = X509Certificate::from_der(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(crate::tls::ServerSan::Uri(uri.to_string())),
            GeneralName::DNSName(dns) => Some(crate::tls::ServerSan::Dns(dns.to_string())),
            _ => None,
        })
        .collect()
}

/// The trust domain of a SPIFFE ID.
pub fn trust_domain(spiffe_id: &str) -> Option<&str> {
    spiffe_id.strip_prefix("spiffe://")?.split('/').next()
}

/// The identity in force, swapped on renewal.
#[derive(Debug, Clone)]
pub struct CurrentIdentity {
    inner: Arc<watch::Sender<Option<Arc<Identity>>>>,
}

impl Default for CurrentIdentity {
    fn default() -> Self {
        Self {
            inner: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl CurrentIdentity {
    /// How long a connection that arrives before the first certificate waits for it.
    const FIRST_CERTIFICATE_WAIT: Duration = Duration::from_secs(10);

    /// The identity now, if one was obtained.
    pub fn get(&self) -> Option<Arc<Identity>> {
        self.inner.borrow().clone()
    }

    /// Makes `identity` the one new connections use.
    pub fn set(&self, identity: Identity) {
        self.inner.send_replace(Some(Arc::new(identity)));
    }

    /// Waits, however long it takes, until there is an identity.
    pub async fn obtained(&self) {
        let mut changes = self.inner.subscribe();
        let _ = changes.wait_for(Option::is_some).await;
    }

    /// Waits, for at most ten seconds, until there is an identity.
    pub async fn wait(&self) {
        let mut changes = self.inner.subscribe();
        let _ = tokio::time::timeout(
            Self::FIRST_CERTIFICATE_WAIT,
            changes.wait_for(Option::is_some),
        )
        .await;
    }
}

/// How long to wait before renewing: two thirds into the certificate's life, at least a
/// second from now.
fn renew_after(identity: &Identity) -> Duration {
    let life = identity
        .not_after
        .duration_since(identity.not_before)
        .unwrap_or_default();
    let renew_at = identity.not_before + life * 2 / 3;
    renew_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .max(Duration::from_secs(1))
}

/// Gets the first certificate (retrying with backoff until the CA answers), then renews it
/// before it expires, forever. Failures are logged and retried; the old certificate stays in
/// force meanwhile.
pub async fn renew_forever(
    current: CurrentIdentity,
    channel: Channel,
    credential: Credential,
    spiffe_id: String,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let requested = match credential.token() {
            Ok(token) => request(channel.clone(), &token, &spiffe_id).await,
            Err(error) => Err(error),
        };
        match requested {
            Ok(identity) => {
                tracing::info!(spiffe_id, serial = identity.serial, "certificate obtained");
                let wait = renew_after(&identity);
                current.set(identity);
                backoff = Duration::from_millis(100);
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "no certificate");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Credential;

    #[test]
    fn a_token_file_is_read_again_each_time_so_a_rotated_token_is_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("istio-token");
        std::fs::write(&path, "first\n").expect("write");
        let credential = Credential::File(path.clone());
        assert_eq!(credential.token().expect("read"), "first");
        std::fs::write(&path, "second").expect("write");
        assert_eq!(credential.token().expect("read"), "second");
        std::fs::remove_file(&path).expect("remove");
        assert!(credential.token().is_err());
    }
}
