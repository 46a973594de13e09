//! Listening sockets: binding a listen URL and the accepted-connection streams (Nagle off,
//! writes coalesced, and for client ports the `:authority` repair). Must not depend on the
//! gRPC services.

use tokio::net::TcpListener;

use super::coalesce::Coalesce;
use crate::error::{Error, Result};

/// Accepted connections with Nagle's algorithm off. `serve_with_incoming` does not apply the
/// builder's `tcp_nodelay`, and small gRPC replies held back by Nagle add tens of ms to every
/// request that follows a write on the same connection. Replies ready together leave in one
/// write ([`Coalesce`]).
pub fn nodelay_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<Coalesce<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(Coalesce::new(stream))
    })
}

/// Client connections: Nagle off, and the `:authority` repair of [`super::authority`] so
/// that Go clients which put a URL there are served as etcd serves them.
pub fn client_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<
    Item = std::io::Result<super::authority::AuthorityFix<Coalesce<tokio::net::TcpStream>>>,
> {
    use tokio_stream::StreamExt;
    nodelay_incoming(listener).map(|s| s.map(super::authority::AuthorityFix::new))
}

pub async fn bind(u: &url::Url) -> Result<TcpListener> {
    let host = u
        .host_str()
        .ok_or_else(|| Error::Config(format!("listen URL {u} has no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = u
        .port_or_known_default()
        .ok_or_else(|| Error::Config(format!("listen URL {u} has no port")))?;
    TcpListener::bind((host, port))
        .await
        .map_err(|e| Error::Io(format!("listen on {u}: {e}")))
}
