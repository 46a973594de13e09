//! Network plumbing of a member: binding listen URLs, TLS termination, the `:authority`
//! repair for Go clients, the HTTP endpoints (`/health`, `/livez`, `/readyz`, `/metrics`,
//! `/version`) and the JSON gateway (`/v3/...`) on the client port.
//!
//! May depend on `etcdserver` (the endpoints read the server's state); must not depend on
//! `api` or `node`.

pub mod authority;
pub mod coalesce;
pub mod gateway;
pub mod http;
pub mod listen;
pub mod tls;
