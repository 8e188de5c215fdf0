//! The certificate authority over its real gRPC API: what it issues, and what it refuses.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

use std::path::Path;
use std::sync::Arc;

use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::transport::Channel;
use weft_control::ca::token::JoinTokens;
use weft_control::ca::{CaService, CertificateAuthority};
use weft_xds::istio_ca::IstioCertificateRequest;
use weft_xds::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

struct Ca {
    client: IstioCertificateServiceClient<Channel>,
    tokens: Arc<JoinTokens>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(state_dir: &Path) -> Ca {
    let authority = CertificateAuthority::load_or_create(
        state_dir,
        "cluster.local",
        CertificateAuthority::DEFAULT_TTL,
    )
    .unwrap();
    let tokens = Arc::new(JoinTokens::load_or_create(state_dir).unwrap());
    let service = CaService::new(Arc::new(authority), tokens.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let client = IstioCertificateServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Ca {
        client,
        tokens,
        _stop: stop,
    }
}

fn csr(uris: &[&str]) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

async fn request(
    ca: &mut Ca,
    csr: String,
    token: Option<&str>,
    ttl_seconds: i64,
) -> Result<Vec<String>, tonic::Status> {
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl_seconds,
        metadata: None,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    ca.client
        .create_certificate(request)
        .await
        .map(|r| r.into_inner().cert_chain)
}

fn der(pem_text: &str) -> Vec<u8> {
    let block = pem_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    base64_decode(&block)
}

/// A small base64 decoder, so the test needs no extra crate.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|a| *a == byte).unwrap() as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.extensions()
        .iter()
        .filter_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(san.general_names.clone()),
            _ => None,
        })
        .flatten()
        .map(|name| match name {
            GeneralName::URI(uri) => uri.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn issues_a_short_lived_certificate_with_exactly_the_callers_spiffe_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = start(dir.path()).await;
    let token = ca.tokens.issue("shop", "reviews");
    let identity = "spiffe://cluster.local/ns/shop/sa/reviews";
    let chain = request(&mut ca, csr(&[identity]), Some(&token), 0)
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf and root");

    let leaf_der = der(&chain[0]);
    let root_der = der(&chain[1]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    assert_eq!(uris(&leaf), [identity], "the URI SAN is the only identity");
    assert_eq!(leaf.issuer(), root.subject());
    leaf.verify_signature(Some(root.public_key()))
        .expect("the leaf chains to the root");
    assert!(!leaf.is_ca());
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(
        lifetime,
        24 * 3600 + 60,
        "24h, issued a minute back for clock skew"
    );
    assert_eq!(
        chain[1],
        std::fs::read_to_string(dir.path().join("root-cert.pem")).unwrap()
    );

    // A shorter lifetime when asked for one.
    let chain = request(&mut ca, csr(&[identity]), Some(&token), 3600)
        .await
        .unwrap();
    let short_der = der(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&short_der).unwrap();
    assert_eq!(
        leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp(),
        3600 + 60
    );

    // The root persists across restarts.
    drop(ca);
    let mut again = start(dir.path()).await;
    let chain = request(&mut again, csr(&[identity]), Some(&token), 0)
        .await
        .unwrap();
    assert_eq!(der(&chain[1]), root_der);
}

#[tokio::test]
async fn refuses_other_identities_bad_tokens_and_malformed_csrs() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = start(dir.path()).await;
    let token = ca.tokens.issue("shop", "reviews");

    let other = request(
        &mut ca,
        csr(&["spiffe://cluster.local/ns/shop/sa/admin"]),
        Some(&token),
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other:?}");
    assert!(other.message().contains("ns/shop/sa/admin"), "{other:?}");

    let extra = csr(&[
        "spiffe://cluster.local/ns/shop/sa/reviews",
        "spiffe://cluster.local/ns/shop/sa/admin",
    ]);
    assert_eq!(
        request(&mut ca, extra, Some(&token), 0)
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );

    let forged = token.replace(".reviews.", ".admin.");
    let forged = request(
        &mut ca,
        csr(&["spiffe://cluster.local/ns/shop/sa/admin"]),
        Some(&forged),
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated, "{forged:?}");

    let missing = request(
        &mut ca,
        csr(&["spiffe://cluster.local/ns/shop/sa/reviews"]),
        None,
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);

    for garbage in [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let status = request(&mut ca, garbage.to_string(), Some(&token), 0)
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{garbage:?}: {status:?}"
        );
    }
    // The service is still up after all that.
    assert!(
        request(
            &mut ca,
            csr(&["spiffe://cluster.local/ns/shop/sa/reviews"]),
            Some(&token),
            0
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn signs_with_a_plugged_in_intermediate() {
    use rcgen::{BasicConstraints, IsCa, Issuer, KeyUsagePurpose};
    let dir = tempfile::tempdir().unwrap();
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::new(vec![]).unwrap();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "company root");
    let root = root_params.self_signed(&root_key).unwrap();
    let intermediate_key = KeyPair::generate().unwrap();
    let mut intermediate_params = CertificateParams::new(vec![]).unwrap();
    intermediate_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    intermediate_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    intermediate_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mesh intermediate");
    let intermediate = intermediate_params
        .signed_by(&intermediate_key, &Issuer::new(root_params, root_key))
        .unwrap();
    std::fs::write(dir.path().join("ca-cert.pem"), intermediate.pem()).unwrap();
    std::fs::write(
        dir.path().join("ca-key.pem"),
        intermediate_key.serialize_pem(),
    )
    .unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(
        dir.path().join("cert-chain.pem"),
        format!("{}{}", intermediate.pem(), root.pem()),
    )
    .unwrap();

    let mut ca = start(dir.path()).await;
    let token = ca.tokens.issue("shop", "reviews");
    let chain = request(
        &mut ca,
        csr(&["spiffe://cluster.local/ns/shop/sa/reviews"]),
        Some(&token),
        0,
    )
    .await
    .unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    let leaf_der = der(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let intermediate_der = der(&chain[1]);
    let (_, intermediate) = X509Certificate::from_der(&intermediate_der).unwrap();
    leaf.verify_signature(Some(intermediate.public_key()))
        .expect("signed by the plugged-in key");
    assert_eq!(der(&chain[2]), der(&root.pem()));
    assert!(
        !dir.path().join("root-key.pem").exists(),
        "no root is generated when one is plugged in"
    );
}
