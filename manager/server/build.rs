//! Generates the gRPC server stubs of `mesh-api`'s `proto/mesh.proto`,
//! against the messages `mesh-api` already generated (the client stubs come
//! from `mesh-client`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../api/proto/mesh.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../api/proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".mesh.v1", "::mesh_api::proto")
        .compile_fds(fds)?;
    Ok(())
}
