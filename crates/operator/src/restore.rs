//! Bootstrapping a new cluster from a backup (`spec.restore`).
//!
//! The seed restores, the others join as learners: only the seed pod gets an init container
//! that runs `ferrokv snapshot restore <backup>` into its empty claim, and the cluster then
//! grows exactly as any cluster does (a learner added, its pod started with
//! `--initial-cluster-state=existing`, caught up by the leader's raft snapshot, promoted).
//! Every-member-restores would need every member's init container to see the same backup
//! (a `latest` chosen at different moments could differ) and the whole initial member list up
//! front, which this operator never has: it grows from one member. One restore also means one
//! download.
//!
//! A restore never overwrites data: `ferrokv snapshot restore` refuses a data dir that
//! exists, the init container runs once per pod (a restarted container does not run it
//! again), and only the bootstrap pod of the seed gets it (members started later, and any
//! pod made after the cluster bootstrapped, do not). `spec.restore` can be set only when the
//! cluster is created and never changed (the CRD's validation rules). The restored data dir
//! is a subdirectory of the claim (`/var/lib/ferrokv/member`), because the claim's mount
//! point always exists and restore creates its target; every member of a restored cluster
//! uses that path.

use crate::resources::{self, InitialState, MemberPod, Names, DATA_DIR};
use ferrokv_cluster_api::EtcdCluster;
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, EnvVarSource, SecretEnvSource, SecretKeySelector,
    SecretVolumeSource, Volume, VolumeMount,
};

/// Name of the restore init container; `observe` reads its status to report a failed restore.
pub const CONTAINER: &str = "restore";

/// Mount path of the encryption key Secret in the init container.
const KEY_DIR: &str = "/etc/ferrokv/restore-key";

/// `--data-dir` of every member of the cluster.
pub fn data_dir(ec: &EtcdCluster) -> String {
    if ec.spec.restore.is_some() {
        format!("{DATA_DIR}/member")
    } else {
        DATA_DIR.to_string()
    }
}

/// The restore init container (and the volume it needs) of pod `p`: only the seed's
/// bootstrap pod of a cluster with `spec.restore`.
pub fn init_container(
    ec: &EtcdCluster,
    names: &Names,
    p: &MemberPod<'_>,
    data_mount: VolumeMount,
) -> Option<(Container, Vec<Volume>)> {
    let r = ec.spec.restore.as_ref()?;
    if p.state != InitialState::New {
        return None;
    }
    let peer = resources::peer_url(ec, names, p.member);
    let mut args = vec!["snapshot".to_string(), "restore".to_string()];
    match &r.source.uri {
        Some(uri) => args.push(uri.clone()),
        None => {
            args.push(r.store.destination.clone());
            let cluster = r
                .source
                .cluster
                .clone()
                .unwrap_or_else(|| format!("{}/{}", names.namespace, names.cluster));
            args.push(format!("--cluster={cluster}"));
            if let Some(rev) = r.source.revision {
                args.push(format!("--revision={rev}"));
            }
        }
    }
    args.extend([
        format!("--name={}", p.member),
        format!("--data-dir={}", data_dir(ec)),
        format!("--initial-cluster={}={peer}", p.member),
        format!("--initial-advertise-peer-urls={peer}"),
        format!(
            "--initial-cluster-token={}-{}",
            names.namespace, names.cluster
        ),
    ]);
    let mut env = Vec::new();
    let plain = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    if let Some(e) = &r.store.endpoint {
        env.push(plain("AWS_ENDPOINT_URL", e.clone()));
        env.push(plain(
            "AWS_S3_FORCE_PATH_STYLE",
            r.store.path_style.to_string(),
        ));
    }
    if let Some(region) = &r.store.region {
        env.push(plain("AWS_REGION", region.clone()));
    }
    if let Some(ca) = &r.store.ca_secret {
        env.push(EnvVar {
            name: "AWS_CA_BUNDLE".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: ca.name.clone(),
                    key: ca.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        });
    }
    let mut mounts = vec![data_mount];
    let mut volumes = Vec::new();
    if let Some(k) = &r.store.encryption_key_secret {
        args.push(format!("--encryption-key-file={KEY_DIR}/{}", k.key));
        volumes.push(Volume {
            name: "restore-key".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(k.name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "restore-key".into(),
            mount_path: KEY_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(resources::image(ec)),
        // kubelet then puts the log tail of a failed restore in the container's terminated
        // message, which the operator reports on the EtcdCluster.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        args: Some(args),
        env: Some(env),
        env_from: r.store.credentials_secret.as_ref().map(|s| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: s.clone(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            }]
        }),
        volume_mounts: Some(mounts),
        security_context: Some(resources::member_container_security()),
        ..Container::default()
    };
    Some((container, volumes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::cluster;
    use ferrokv_cluster_api::{BackupStore, RestoreSource, RestoreSpec};

    fn restored() -> EtcdCluster {
        let mut ec = cluster("kv", 3);
        ec.spec.restore = Some(RestoreSpec {
            store: BackupStore {
                destination: "s3://b/prod".into(),
                endpoint: Some("http://minio:9000".into()),
                path_style: true,
                credentials_secret: Some("creds".into()),
                ..BackupStore::default()
            },
            source: RestoreSource {
                cluster: Some("prod/old".into()),
                revision: Some(42),
                uri: None,
            },
        });
        ec
    }

    fn pod(ec: &EtcdCluster, state: InitialState) -> k8s_openapi::api::core::v1::Pod {
        resources::member_pod(
            ec,
            &MemberPod {
                member: "kv-0",
                initial_members: vec!["kv-0".into()],
                state,
                config_hash: "",
            },
        )
        .expect("pod")
    }

    #[test]
    fn only_the_seeds_bootstrap_pod_restores() {
        let ec = restored();
        let spec = pod(&ec, InitialState::New).spec.expect("spec");
        let init = spec.init_containers.expect("init container");
        assert_eq!(init.len(), 1);
        let args = init[0].args.clone().unwrap_or_default();
        for want in [
            "restore",
            "s3://b/prod",
            "--cluster=prod/old",
            "--revision=42",
            "--name=kv-0",
            "--data-dir=/var/lib/ferrokv/member",
            "--initial-cluster-token=prod-kv",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
        }
        let from = init[0].env_from.clone().expect("envFrom");
        assert_eq!(
            from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
            Some("creds")
        );
        let main = &spec.containers[0];
        assert!(main
            .args
            .iter()
            .flatten()
            .any(|a| a == "--data-dir=/var/lib/ferrokv/member"));
        // A joining member and any cluster without spec.restore get none.
        assert!(pod(&ec, InitialState::Existing)
            .spec
            .and_then(|s| s.init_containers)
            .is_none());
        assert!(pod(&cluster("kv", 3), InitialState::New)
            .spec
            .and_then(|s| s.init_containers)
            .is_none());
    }
}
