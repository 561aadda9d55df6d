//! `meshctl service ...`'s pure parts: its flags and how they build or
//! change a [`mesh_api::spec::ServiceSpec`] ([`flags`]), its tables and
//! summaries ([`view`]), and when a create, update or rollback has
//! converged ([`progress`]); `meshctl network ...`'s flags and output
//! ([`network`]). The binary only adds the gRPC calls.

pub mod container;
pub mod file;
pub mod flags;
pub mod format;
pub mod network;
pub mod progress;
pub mod table;
pub mod view;
