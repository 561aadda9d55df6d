//! Per-RPC authentication and authorisation from the caller's certificate. (In progress.)
