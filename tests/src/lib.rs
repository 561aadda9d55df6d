//! Harness for the mesh's end-to-end tests: network-namespace topologies, agents, tasks.
#![forbid(unsafe_code)]
