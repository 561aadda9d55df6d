//! Compiles `proto/mesh.proto`'s messages with protox (pure Rust, so no system
//! protoc). The gRPC stubs are generated where they are used: the clients in
//! `mesh-client`, the servers in `mesh-manager`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/mesh.proto");
    let fds = protox::compile(["proto/mesh.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // The routing parts of assignments are the same bytes for every node:
        // shared (reference-counted), not copied per session.
        .bytes(".mesh.v1.AssignmentWhole.routing")
        .bytes(".mesh.v1.AssignmentDelta.routing")
        .build_client(false)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
