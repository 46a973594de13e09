//! Runs one member for manual checks with etcdctl:
//! `cargo run -p ferrokv-server --example single_member -- <data-dir> <client-port>`
//! then `ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:<client-port> put a b`.

use ferrokv_server::{Config, Member};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "single.etcd".into());
    let port = args.next().unwrap_or_else(|| "2379".into());
    let mut cfg = Config::with_defaults("single");
    cfg.data_dir = dir.into();
    // FKV_CERT/FKV_KEY/FKV_CA switch to https with client certificate auth.
    let scheme = if std::env::var_os("FKV_CERT").is_some() {
        "https"
    } else {
        "http"
    };
    cfg.client_tls.cert_file = std::env::var_os("FKV_CERT").map(Into::into);
    cfg.client_tls.key_file = std::env::var_os("FKV_KEY").map(Into::into);
    cfg.client_tls.trusted_ca_file = std::env::var_os("FKV_CA").map(Into::into);
    cfg.client_tls.client_cert_auth = cfg.client_tls.trusted_ca_file.is_some();
    let u = url::Url::parse(&format!("{scheme}://127.0.0.1:{port}"))?;
    cfg.listen_client_urls = vec![u.clone()];
    cfg.advertise_client_urls = vec![u];
    cfg.listen_metrics_urls = vec![url::Url::parse("http://127.0.0.1:0")?];
    let m = Member::start(cfg).await?;
    println!(
        "serving {:?} metrics {:?}",
        m.client_urls(),
        m.metrics_urls()
    );
    let stop = m.shutdown_handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.shutdown();
    });
    m.wait().await?;
    Ok(())
}
