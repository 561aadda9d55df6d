//! `cargo xtask`: the project's tasks.
#![forbid(unsafe_code)]

fn main() {}
