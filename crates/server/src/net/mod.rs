//! Network plumbing of a member: binding listen URLs, TLS termination, the `:authority`
//! repair for Go clients, and the HTTP endpoints (`/health`, `/livez`, `/readyz`, `/metrics`,
//! `/version`).
//!
//! May depend on `etcdserver` (the endpoints read the server's state); must not depend on
//! `api` or `node`.

pub mod authority;
pub mod http;
pub mod listen;
pub mod tls;
