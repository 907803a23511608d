//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler, so no system `protoc`)
//! and tonic-prost-build, and exports the encoded descriptor set for gRPC server reflection.

use std::{env, error::Error, fs, path::PathBuf};

/// Every proto file of the public API, relative to `proto/`.
const PROTO_FILES: &[&str] = &[
    "autocrane/watchdog/v1/watchdog.proto",
    "autocrane/version/v1/version.proto",
    "autocrane/data/v1/data.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let file_descriptors = protox::compile(PROTO_FILES, ["proto"])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("autocrane_descriptor.bin"),
        prost::Message::encode_to_vec(&file_descriptors),
    )?;

    // The client and server stubs need tonic; the messages only prost. They are compiled only with
    // the `grpc` feature (on by default), so a crate that needs the messages, the CRD types and the
    // codecs — the controller's decision core — depends on neither tonic nor tokio.
    let grpc_only = r#"#[cfg(feature = "grpc")]"#;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .client_mod_attribute(".", grpc_only)
        .server_mod_attribute(".", grpc_only)
        // Unimplemented RPCs answer UNIMPLEMENTED, so a service can be served before every RPC exists.
        .generate_default_stubs(true)
        .compile_fds(file_descriptors)?;
    Ok(())
}
