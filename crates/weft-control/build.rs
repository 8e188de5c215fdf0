//! Generates the gRPC service code of Istio's certificate API (`istio.v1.auth`). The messages
//! are written by hand in `src/ca/proto.rs`; only the service plumbing is generated, with
//! tonic's manual builder, so no `protoc` is needed.

fn main() {
    let method = tonic_build::manual::Method::builder()
        .name("create_certificate")
        .route_name("CreateCertificate")
        .input_type("crate::ca::proto::IstioCertificateRequest")
        .output_type("crate::ca::proto::IstioCertificateResponse")
        .codec_path("tonic_prost::ProstCodec")
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("IstioCertificateService")
        .package("istio.v1.auth")
        .method(method)
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
}
