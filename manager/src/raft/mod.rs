//! Raft plumbing: openraft types, redb log storage, the state machine and the gRPC network. (In progress.)
