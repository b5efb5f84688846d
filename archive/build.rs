//! Compiles the archive's .proto with the vendored protoc, so a fresh machine needs no system
//! protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    prost_build::compile_protos(&["../proto/keepsake/archive/v1/archive.proto"], &["../proto"])?;
    println!("cargo:rerun-if-changed=../proto/keepsake/archive");
    Ok(())
}
