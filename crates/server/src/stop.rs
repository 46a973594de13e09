//! The member's stop signal, shared by every long-running task of every layer.

use tokio::sync::watch;

/// Resolves once the member's stop flag is set (or its sender is gone).
pub async fn until_stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
