//! Generates the gRPC server stubs of `mesh-api`'s `proto/mesh.proto`,
//! against the messages `mesh-api` already generated (the client stubs come
//! from `mesh-client`), and the list of its RPC paths (`rpc_methods.rs`)
//! the metrics label calls by.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../api/proto/mesh.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../api/proto"])?;
    let mut methods = String::from(
        "/// Every RPC of `mesh.proto`: its request path and its method name.\n\
         pub(crate) const RPC_METHODS: &[(&str, &str)] = &[\n",
    );
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                methods.push_str(&format!(
                    "    (\"/{}.{}/{}\", \"{}\"),\n",
                    file.package(),
                    service.name(),
                    method.name(),
                    method.name()
                ));
            }
        }
    }
    methods.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("rpc_methods.rs"), methods)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".mesh.v1", "::mesh_api::proto")
        .compile_fds(fds)?;
    Ok(())
}
