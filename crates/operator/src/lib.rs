//! ferrokv operator: turns `EtcdCluster` resources into running, healthy member pods.
//!
//! Pipeline per reconcile (`controller::reconcile`), one module per step:
//! `observe` (Kubernetes objects, and the members through the etcd v3 API) → `tls` (which
//! certificates to keep or issue) → `plan` (the one next step) → `build` (every object to
//! write) → `apply` (server-side apply; the step through `executor`) → `status`; `events`
//! holds the Event texts. `tls`, `plan`, `build`, `events`, `certs` and `resources` are pure
//! and take no client; only `observe` and `apply` hold the kube client. This crate talks to
//! members only through the etcd v3 API (`etcd-client`), never through ferrokv's internal
//! crates, so it manages ferrokv and the reference etcd alike.

pub mod apply;
pub mod backup;
pub mod backup_io;
pub mod build;
pub mod certs;
pub mod controller;
pub mod drill;
pub mod etcdbackup;
pub mod events;
pub mod executor;
pub mod members;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod recorder;
pub mod resources;
pub mod restore;
pub mod status;
pub mod tls;

/// Field manager of every server-side apply, and the operator's client certificate name.
pub const MANAGER: &str = "ferrokv-operator";

/// Everything that can fail in the operator; one variant per failed step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("kubernetes API call {op} failed: {source}")]
    Kube {
        op: String,
        #[source]
        source: kube::Error,
    },
    #[error("member API call {op} failed: {source}")]
    Member {
        op: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("member {0} not found")]
    MemberNotFound(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("missing object field: {0}")]
    MissingField(&'static str),
    #[error("serialization: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

impl Error {
    /// The API server's message when it refused a write for good: a 4xx other than
    /// not-found, conflict and too-many-requests (forbidden by RBAC or admission, invalid).
    /// Retrying such a write every few seconds changes nothing until a human acts.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Error::Kube {
                op,
                source: kube::Error::Api(s),
            } if (400..500).contains(&s.code) && ![404, 409, 429].contains(&s.code) => {
                Some(format!("{op}: {}", s.message))
            }
            _ => None,
        }
    }

    /// Short label for the `errors` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Kube { .. } if self.refusal().is_some() => "refused",
            Error::Kube { .. } => "kube",
            Error::Member { .. } => "member",
            Error::MemberNotFound(_) => "member_not_found",
            Error::Certificate(_) => "certificate",
            Error::MissingField(_) => "missing_field",
            Error::Serialize(_) => "serialize",
            Error::Yaml(_) => "yaml",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `EtcdCluster` CRD as YAML, exactly what `ferrokv-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String> {
    use kube::CustomResourceExt;
    Ok(serde_yaml::to_string(
        &ferrokv_cluster_api::EtcdCluster::crd(),
    )?)
}

/// A duration as the operator's flags take it: numbers with a unit each, `s`, `m`, `h` or `d`,
/// run together (`90s`, `10m`, `23h59m50s`, `7d`).
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let bad = || format!("invalid duration {s:?}: want e.g. 90s, 10m, 23h59m50s or 7d");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || s.trim().is_empty() {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

/// The `EtcdBackup` CRD as YAML (`ferrokv-operator crd etcdbackup`, `crds/etcdbackup.yaml`).
pub fn backup_crd_yaml() -> Result<String> {
    use kube::CustomResourceExt;
    Ok(serde_yaml::to_string(
        &ferrokv_cluster_api::EtcdBackup::crd(),
    )?)
}

#[cfg(test)]
mod drift_tests {
    /// `make crds` regenerates both files; this fails when the Rust types changed without it.
    #[test]
    fn committed_crds_match_the_types() {
        let cluster = super::crd_yaml().expect("crd");
        let backup = super::backup_crd_yaml().expect("crd");
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        for (path, want) in [
            ("crds/etcdcluster.yaml", &cluster),
            ("charts/ferrokv-operator/crds/etcdcluster.yaml", &cluster),
            ("crds/etcdbackup.yaml", &backup),
            ("charts/ferrokv-operator/crds/etcdbackup.yaml", &backup),
        ] {
            let got = std::fs::read_to_string(format!("{root}/{path}")).unwrap_or_default();
            assert!(&got == want, "{path} is out of date: run `make crds`");
        }
    }

    fn read(path: &str) -> String {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        std::fs::read_to_string(format!("{root}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The rules of a ClusterRole file, parsed: everything from `rules:` to the end of its
    /// YAML document (the chart's templated metadata comes before it).
    fn rules_of(text: &str) -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
        #[derive(serde::Deserialize)]
        struct Rules {
            rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
        }
        let start = text.find("\nrules:\n").expect("rules block");
        let rest = &text[start..];
        let block = rest.split("\n---").next().unwrap_or(rest);
        serde_yaml::from_str::<Rules>(block)
            .expect("rules parse as PolicyRules")
            .rules
    }

    /// The chart and the plain install grant the same rules (parsed, so formatting and
    /// comments may differ). Whether those rules let the operator do its work is checked on a
    /// real kube-apiserver: `shipped_rbac_allows_every_operator_call_and_no_more` and the
    /// scenarios in tests/tests/operator_kube.rs, where the operator runs as this ServiceAccount.
    #[test]
    fn chart_and_plain_install_grant_the_same_rbac() {
        let chart = rules_of(&read("charts/ferrokv-operator/templates/clusterrole.yaml"));
        let install = read("manifests/install.yaml");
        let plain = rules_of(&install);
        assert!(!plain.is_empty());
        assert_eq!(chart, plain);
        // The plain install is valid YAML, one object per document.
        use serde::Deserialize;
        let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&install)
            .map(|doc| {
                let v = serde_yaml::Value::deserialize(doc).expect("valid YAML");
                v["kind"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Deployment",
                "Service"
            ]
        );
    }

    #[test]
    fn example_cluster_parses_and_is_valid() {
        let ec: ferrokv_cluster_api::EtcdCluster =
            serde_yaml::from_str(&read("manifests/examples/etcdcluster.yaml"))
                .expect("example parses");
        assert_eq!(ec.spec.replicas, 3);
        assert!(crate::plan::validate_replicas(ec.spec.replicas)
            .expect("valid")
            .is_empty());
        let pod = crate::resources::member_pod(
            &{
                let mut ec = ec.clone();
                ec.metadata.uid = Some("u".into());
                ec
            },
            &crate::resources::MemberPod {
                member: "demo-0",
                initial_members: vec!["demo-0".into()],
                state: crate::resources::InitialState::New,
                config_hash: "",
            },
        )
        .expect("pod");
        let args = pod
            .spec
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.args)
            .unwrap_or_default();
        for flag in [
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=1h",
            "--quota-backend-bytes=2147483648",
        ] {
            assert!(
                args.iter().any(|a| a == flag),
                "{flag} missing from {args:?}"
            );
        }
    }

    #[test]
    fn durations_of_flags() {
        use std::time::Duration;
        for (text, secs) in [
            ("90s", 90),
            ("10m", 600),
            ("23h59m50s", 86390),
            ("7d", 604800),
        ] {
            assert_eq!(
                super::parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in ["", "10", "5x", "m", "1.5h"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }
}
