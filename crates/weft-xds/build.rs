//! Generates the client and server of Istio's certificate API (`src/istio_ca.rs` holds its
//! messages) with tonic's manual builder, and compiles the protobuf descriptors of the Envoy types Weft sends (listeners, routes,
//! clusters, endpoints, secrets, the filters inside them, and the admin config dump) into
//! one `FileDescriptorSet`, so resources can be shown as JSON with their field names
//! (`/debug/config_dump`). The `.proto` files come from the `envoy-types` crate that
//! provides the Rust types, found with `cargo metadata`; `protox` compiles them, no `protoc`
//! needed.

use std::path::PathBuf;
use std::process::Command;

/// The files whose messages (and everything they import) go into the set.
const ROOTS: &[&str] = &[
    "envoy/admin/v3/config_dump.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
];

/// Import roots inside the crate's `proto/` folder.
const INCLUDES: &[&str] = &[
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    certificate_service();
    let protos = envoy_types_dir()?.join("proto");
    let includes: Vec<PathBuf> = INCLUDES.iter().map(|i| protos.join(i)).collect();
    let descriptors = protox::Compiler::new(&includes)?
        .include_imports(true)
        .include_source_info(false)
        .open_files(ROOTS)?
        .encode_file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("envoy_descriptors.bin");
    std::fs::write(out, descriptors)?;
    println!("cargo::rerun-if-changed=build.rs");
    Ok(())
}

fn certificate_service() {
    let method = tonic_build::manual::Method::builder()
        .name("create_certificate")
        .route_name("CreateCertificate")
        .input_type("crate::istio_ca::IstioCertificateRequest")
        .output_type("crate::istio_ca::IstioCertificateResponse")
        .codec_path("tonic_prost::ProstCodec")
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("IstioCertificateService")
        .package("istio.v1.auth")
        .method(method)
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
}

/// Where cargo unpacked the `envoy-types` package this build uses.
///
/// `cargo metadata` lists every package of the workspace's dependency graph, and unpacks any
/// that a build did not need (dev-dependencies when only building). `--filter-platform`
/// keeps it to the packages of the target being built, so it never wants Windows-only
/// crates; and it may fetch, because on a new machine `cargo build` has not downloaded the
/// dev-dependencies that metadata lists (with a full cache it reads only local files).
fn envoy_types_dir() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--filter-platform"])
        .arg(std::env::var("TARGET")?)
        .arg("--manifest-path")
        .arg(&manifest)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let package = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .ok_or("envoy-types is not among the dependencies")?;
    let manifest_path = package["manifest_path"]
        .as_str()
        .ok_or("envoy-types has no manifest path")?;
    Ok(PathBuf::from(manifest_path)
        .parent()
        .ok_or("envoy-types' manifest has no folder")?
        .to_path_buf())
}
