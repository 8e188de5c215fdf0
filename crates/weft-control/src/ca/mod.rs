//! The certificate authority: signs workload CSRs into short-lived X.509 certificates whose
//! only identity is the URI SAN `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.
//!
//! Keys stay with the workloads: the CA sees CSRs only, checks their signature, and copies
//! nothing from them but the public key — the identity, lifetime and usages are its own.
//! The signing key is either a root generated on first start and kept in the state dir
//! (`root-cert.pem`, `root-key.pem`), or the user's own in Istio's plug-in layout
//! (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`). Root rotation is not
//! implemented yet.
//!
//! It is served as Istio's `IstioCertificateService/CreateCertificate`; callers authenticate
//! with a [join token](token) in `authorization: Bearer <token>` or, on Kubernetes, with
//! their pod's service-account token for the audience `istio-ca` (reviewed by the API
//! server), and may only get a certificate for the identity their token names.

pub mod token;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::kube::tokens::ServiceAccountTokens;
use token::JoinTokens;
use weft_xds::istio_ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use weft_xds::istio_ca::{IstioCertificateRequest, IstioCertificateResponse};

use crate::metrics::ControlMetrics;

/// A workload identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    /// The trust domain (`cluster.local`).
    pub trust_domain: String,
    /// The namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Errors loading or creating the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file of the state dir cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate or key does not parse, or signing failed.
    #[error("{what}: {source}")]
    Crypto {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: rcgen::Error,
    },
}

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignError {
    /// Not a CSR, or its signature does not verify.
    #[error("the CSR is malformed or its signature is invalid: {0}")]
    Malformed(String),
    /// The CSR asks for an identity other than the caller's.
    #[error("the CSR asks for {requested}, but the caller may only have {allowed}")]
    WrongIdentity {
        /// What the CSR's SANs hold.
        requested: String,
        /// The caller's identity.
        allowed: String,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// The signing key and chain.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// PEM certificates after the leaf: intermediates, then the root.
    chain: Vec<String>,
    root: String,
    trust_domain: String,
    default_ttl: Duration,
    max_ttl: Duration,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// Writes a file only its owner can read.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}

fn read(path: &Path) -> Result<Option<String>, CaError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CaError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn crypto(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CaError {
    let what = what.into();
    move |source| CaError::Crypto { what, source }
}

impl CertificateAuthority {
    /// The lifetime of a workload certificate when the caller asks for none (Istio's: 24h).
    pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

    /// Loads the CA from `state_dir`: the user's plug-in certificates if present, else the
    /// root generated on an earlier start, else a new root (saved there).
    pub fn load_or_create(
        state_dir: &Path,
        trust_domain: &str,
        ttl: Duration,
    ) -> Result<Self, CaError> {
        std::fs::create_dir_all(state_dir).map_err(|source| CaError::Io {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let file = |name: &str| state_dir.join(name);
        let (cert_pem, key_pem, chain, root) = if let (Some(cert), Some(key)) =
            (read(&file("ca-cert.pem"))?, read(&file("ca-key.pem"))?)
        {
            let root = read(&file("root-cert.pem"))?.unwrap_or_else(|| cert.clone());
            let mut chain = vec![cert.clone()];
            if let Some(rest) = read(&file("cert-chain.pem"))? {
                chain = split_pem(&rest);
            }
            if chain.last().map(|c| c.trim()) != Some(root.trim()) {
                chain.push(root.clone());
            }
            (cert, key, chain, root)
        } else if let (Some(cert), Some(key)) =
            (read(&file("root-cert.pem"))?, read(&file("root-key.pem"))?)
        {
            (cert.clone(), key, vec![cert.clone()], cert)
        } else {
            let (cert, key) = generate_root(trust_domain)?;
            for (name, contents) in [("root-key.pem", &key), ("root-cert.pem", &cert)] {
                write_private(&file(name), contents.as_bytes()).map_err(|source| CaError::Io {
                    path: file(name),
                    source,
                })?;
            }
            (cert.clone(), key, vec![cert.clone()], cert)
        };
        let key = KeyPair::from_pem(&key_pem).map_err(crypto("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(crypto("reading the CA certificate"))?;
        Ok(Self {
            issuer,
            chain,
            root,
            trust_domain: trust_domain.to_string(),
            default_ttl: ttl,
            max_ttl: ttl.max(Self::DEFAULT_TTL),
        })
    }

    /// The root certificate workloads trust, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root
    }

    /// The trust domain identities are issued in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs `csr_pem` for `identity`, valid for `ttl` (the default when `None`, capped at
    /// the maximum). Returns the leaf then the chain, PEM.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<Vec<String>, SignError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::Malformed(e.to_string()))?;
        let allowed = identity.to_string();
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if requested != [allowed.clone()] {
            return Err(SignError::WrongIdentity {
                requested: if requested.is_empty() {
                    "no identity".to_string()
                } else {
                    requested.join(", ")
                },
                allowed,
            });
        }
        let ttl = ttl.unwrap_or(self.default_ttl).min(self.max_ttl);
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.subject_alt_names = csr.params.subject_alt_names.clone();
        params.distinguished_name = DistinguishedName::new();
        // A little before now, so peers with slightly slow clocks accept it at once.
        params.not_before = now - time::Duration::minutes(1);
        params.not_after =
            now + time::Duration::try_from(ttl).map_err(|e| SignError::Signing(e.to_string()))?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial().map_err(SignError::Signing)?);
        csr.params = params;
        let leaf = csr
            .signed_by(&self.issuer)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        let mut chain = vec![leaf.pem()];
        chain.extend(self.chain.iter().cloned());
        Ok(chain)
    }
}

impl CertificateAuthority {
    /// A certificate for the control plane's own TLS port, for these DNS names and IP
    /// addresses, valid 30 days (a new one is made at every start). Returns the chain and
    /// the private key, PEM.
    pub fn serving_certificate(&self, names: &[String]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(crypto("generating the serving key"))?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => name.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()
            .map_err(crypto("a serving name"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "weft-control");
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(30);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(crypto("signing the serving certificate"))?;
        let mut chain = cert.pem();
        for link in &self.chain {
            chain.push_str(link);
        }
        Ok((chain, key.serialize_pem()))
    }
}

fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random generator failed".to_string())?;
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

fn generate_root(trust_domain: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(crypto("generating the root key"))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, "Weft root CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(3650);
    params.serial_number = Some(random_serial().map_err(|e| CaError::Io {
        path: PathBuf::from("<random>"),
        source: std::io::Error::other(e),
    })?);
    let cert = params
        .self_signed(&key)
        .map_err(crypto("signing the root"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn split_pem(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .map(str::trim)
        .filter(|block| block.contains("BEGIN CERTIFICATE"))
        .map(|block| format!("{block}\n"))
        .collect()
}

/// The gRPC service: `istio.v1.auth.IstioCertificateService`.
#[derive(Debug, Clone)]
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    tokens: Arc<JoinTokens>,
    service_accounts: Option<ServiceAccountTokens>,
    metrics: ControlMetrics,
}

impl CaService {
    /// A service signing with `ca` for callers holding tokens of `tokens`.
    pub fn new(ca: Arc<CertificateAuthority>, tokens: Arc<JoinTokens>) -> Self {
        Self {
            ca,
            tokens,
            service_accounts: None,
            metrics: ControlMetrics::default(),
        }
    }

    /// Also accepts service-account tokens the API server vouches for.
    pub fn with_service_accounts(mut self, tokens: ServiceAccountTokens) -> Self {
        self.service_accounts = Some(tokens);
        self
    }

    /// Counts issued and refused certificates in `metrics`.
    pub fn with_metrics(mut self, metrics: ControlMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// As a tonic service, to add to a server.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let result = self.create(request).await;
        match &result {
            Ok(_) => {
                self.metrics.certificates_issued.inc();
            }
            Err(status) => {
                let reason = match status.code() {
                    tonic::Code::Unauthenticated => "unauthenticated",
                    tonic::Code::PermissionDenied => "wrong_identity",
                    tonic::Code::InvalidArgument => "malformed",
                    tonic::Code::Unavailable => "unavailable",
                    _ => "internal",
                };
                self.metrics
                    .certificates_refused
                    .get_or_create(&vec![("reason", reason)])
                    .inc();
            }
        }
        result
    }
}

impl CaService {
    /// Whose the caller's token is: a join token of this control plane, else a service
    /// account's token the API server vouches for. Refused when neither says.
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(String, String), Status> {
        let token = token::bearer(metadata)
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        if let Some(identity) = self.tokens.verify(token) {
            return Ok(identity);
        }
        let Some(service_accounts) = &self.service_accounts else {
            return Err(Status::unauthenticated(
                "the join token is not valid for this control plane",
            ));
        };
        match service_accounts.verify(token).await {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => Err(Status::unauthenticated(
                "neither a join token of this control plane nor a valid service-account token for the audience istio-ca",
            )),
            Err(error) => {
                tracing::warn!(%error, "cannot review a service-account token");
                Err(Status::unavailable(
                    "cannot review the token with the API server",
                ))
            }
        }
    }

    async fn create(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let (namespace, service_account) = self.authenticate(request.metadata()).await?;
        let identity = SpiffeId {
            trust_domain: self.ca.trust_domain.clone(),
            namespace,
            service_account,
        };
        let request = request.into_inner();
        let ttl = u64::try_from(request.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        match self.ca.sign(&request.csr, &identity, ttl) {
            Ok(cert_chain) => {
                tracing::info!(%identity, "issued a workload certificate");
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(err @ SignError::Malformed(_)) => Err(Status::invalid_argument(err.to_string())),
            Err(err @ SignError::WrongIdentity { .. }) => {
                Err(Status::permission_denied(err.to_string()))
            }
            Err(err @ SignError::Signing(_)) => Err(Status::internal(err.to_string())),
        }
    }
}
