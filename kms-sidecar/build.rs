//! Compiles `proto/kms/v1/kms.proto` and `proto/k8s/kms/v2/api.proto` with a vendored `protoc` (no system install needed),
//! and writes the descriptor set used by gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // The vendored protoc is handed to prost-build directly (no PROTOC environment variable).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("kms_v1_descriptor.bin")).compile_with_config(
        config,
        &["proto/kms/v1/kms.proto"],
        &["proto"],
    )?;
    // The Kubernetes KMS v2 plugin API (server side only).
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().build_client(true).compile_with_config(
        config,
        &["proto/k8s/kms/v2/api.proto"],
        &["proto/k8s/kms"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
