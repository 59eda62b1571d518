//! Generates the gRPC code from proto/scistream.proto with protox (a pure-Rust
//! protobuf compiler), so no system `protoc` is needed.

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto/scistream.proto");
    let fds = protox::compile(["proto/scistream.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
