//! Prometheus metrics of the controller and the HTTP endpoint serving them with `/healthz`.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

/// Per-cluster backup metrics (`backup` records them), for the chart's PrometheusRule.
#[derive(Clone, Default)]
pub struct BackupMetrics {
    pub last_success: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    pub duration: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    pub bytes: Family<ClusterLabels, Gauge>,
    pub failures: Family<ClusterLabels, Counter>,
    pub missed: Family<ClusterLabels, Counter>,
    pub interval: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
}

/// Controller metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub steps: Family<StepLabels, Counter>,
    pub duration: Histogram,
    pub backup: BackupMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let steps = Family::<StepLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let mut registry = Registry::with_prefix("ferrokv_operator");
        registry.register("reconciles", "Reconciliations started", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by error",
            errors.clone(),
        );
        registry.register("steps", "Planned steps applied, by kind", steps.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconciliation",
            duration.clone(),
        );
        let backup = BackupMetrics::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the last successful backup, by cluster (namespace/name)",
            backup.last_success.clone(),
        );
        registry.register(
            "backup_duration_seconds",
            "Duration of the last backup attempt, by cluster",
            backup.duration.clone(),
        );
        registry.register(
            "backup_bytes",
            "Stored size of the last successful backup, by cluster",
            backup.bytes.clone(),
        );
        registry.register(
            "backup_failures",
            "Failed backup attempts, by cluster",
            backup.failures.clone(),
        );
        registry.register(
            "backup_missed_schedules",
            "Scheduled backups found missed (taken late), by cluster",
            backup.missed.clone(),
        );
        registry.register(
            "backup_schedule_interval_seconds",
            "Time between two scheduled backups, by cluster",
            backup.interval.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciles,
            errors,
            steps,
            duration,
            backup,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn start(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            hist: self.duration.clone(),
        }
    }

    pub fn error(&self, label: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: label.to_string(),
            })
            .inc();
    }

    pub fn step(&self, label: &str) {
        self.steps
            .get_or_create(&StepLabels {
                step: label.to_string(),
            })
            .inc();
    }

    pub fn backup_succeeded(&self, cluster: &str, took: std::time::Duration, bytes: u64) {
        let l = ClusterLabels {
            cluster: cluster.to_string(),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.backup.last_success.get_or_create(&l).set(now);
        self.backup
            .duration
            .get_or_create(&l)
            .set(took.as_secs_f64());
        self.backup
            .bytes
            .get_or_create(&l)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn backup_failed(&self, cluster: &str, took: std::time::Duration) {
        let l = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.backup
            .duration
            .get_or_create(&l)
            .set(took.as_secs_f64());
        self.backup.failures.get_or_create(&l).inc();
    }

    /// A scheduled cluster's interval and the time of its newest backup as status records it.
    pub fn backup_schedule(&self, cluster: &str, interval: f64, last_success: Option<f64>) {
        let l = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.backup.interval.get_or_create(&l).set(interval);
        if let Some(t) = last_success {
            let g = self.backup.last_success.get_or_create(&l);
            if g.get() < t {
                g.set(t);
            }
        }
    }

    pub fn backup_missed(&self, cluster: &str) {
        let l = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.backup.missed.get_or_create(&l).inc();
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an empty page is the only possible degradation.
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub struct ReconcileTimer {
    start: Instant,
    hist: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.hist.observe(self.start.elapsed().as_secs_f64());
    }
}

/// `/metrics` and `/healthz`.
pub fn router(metrics: Metrics) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_healthz_over_http() {
        let m = Metrics::default();
        {
            let _t = m.start();
        }
        m.error("kube");
        m.step("AddLearner");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, router(m)).await });
        let health = get(addr, "/healthz").await;
        assert!(
            health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
            "{health}"
        );
        let body = get(addr, "/metrics").await;
        assert!(
            body.contains("ferrokv_operator_reconciles_total 1"),
            "{body}"
        );
        assert!(
            body.contains("ferrokv_operator_reconcile_errors_total{error=\"kube\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("ferrokv_operator_steps_total{step=\"AddLearner\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("ferrokv_operator_reconcile_duration_seconds_count 1"),
            "{body}"
        );
        server.abort();
    }
}
