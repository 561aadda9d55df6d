//! The mesh's control plane. Not built yet: the dataplane runs standalone from
//! `lb-agent --config`; the Raft-replicated manager and `meshctl` come next.
#![forbid(unsafe_code)]
