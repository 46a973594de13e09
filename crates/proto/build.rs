// Generates the etcd v3 API and ferrokv's peer API. protoc comes from a crate so a fresh
// machine needs nothing installed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let protos = [
        "proto/kv.proto",
        "proto/auth.proto",
        "proto/rpc.proto",
        "proto/ferrokv.proto",
    ];
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("descriptors.bin");
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        // etcd's answers to undecodable bytes (src/codec.rs); the types are unchanged.
        .codec_path("crate::codec::EtcdCodec")
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&protos, &["proto"])?;
    #[cfg(feature = "json")]
    json(&descriptors)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}

/// The serde impls of the etcd API types, shaped as etcd's grpc-gateway marshals them
/// (`OrigName`: the proto field names, not camelCase) and reads them (unknown fields ignored).
#[cfg(feature = "json")]
fn json(descriptors: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let set = std::fs::read(descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".etcdserverpb", ".mvccpb", ".authpb"])?;
    Ok(())
}
