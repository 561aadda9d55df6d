//! The cluster PKI: CA, certificate issuance, join tokens, TLS configuration. (In progress.)
