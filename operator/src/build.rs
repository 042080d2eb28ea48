//! Renders a StreamJob into its child objects: the job document ConfigMap, the JobManager
//! Deployment and Service, and the TaskManager Deployment. Pure functions; the controller
//! server-side applies the results. Every object carries an owner reference to the StreamJob.
//!
//! Children are rendered from the validated model ([`Desired`], which only
//! [`Desired::from_job`] makes), never from the raw spec; what needs the StreamJob object
//! itself (names, namespace, the uid of owner references) comes from its [`Owner`].
//!
//! The pod template carries a hash of everything that needs new pods. The `restore` field of
//! the job document is left out of that hash on purpose: the operator flips it from a pinned
//! savepoint to `latest` once the new job has checkpointed, and that must not restart pods.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde::Serialize;
use weir_spec::{JobDocument, JobRef, RestoreSource};

use crate::crd::{
    ImagePullPolicy, JobManagerSpec, S3CredentialsSecret, StreamJob, StreamJobSpec,
    TaskManagerSpec, job_labels, selector_labels,
};
use crate::lifecycle::Desired;
use crate::peer_tls::PeerCertificates;
use crate::{Error, Result};
use weir_spec::layout::ports;

/// Where the job document is mounted.
pub const JOB_FILE: &str = "/etc/weir/job.yaml";
/// RocksDB instances and in-progress sink files (an emptyDir; the root filesystem is read-only).
pub const STATE_DIR: &str = "/var/lib/weir";
/// Pod annotation that changes whenever pods must be replaced.
pub const POD_HASH_ANNOTATION: &str = "weir.dev/pod-hash";
/// Digest of the JobManager's REST token on its pod template: a new token replaces the pod.
pub const REST_TOKEN_ANNOTATION: &str = "weir.dev/rest-token-sha256";
/// Where the JobManager finds its REST token (a mounted Secret), and the key in that Secret.
pub const REST_TOKEN_DIR: &str = "/var/run/weir/rest-token";
pub const REST_TOKEN_KEY: &str = "token";
/// Where job pods find their TLS certificate, key and the job's CA (`crate::peer_tls`).
pub const PEER_TLS_DIR: &str = "/var/run/weir/peer-tls";
/// UID/GID the worker runs as: non-root, matching the stock image.
const RUN_AS: i64 = 65532;

pub fn job_id(namespace: &str, name: &str) -> String {
    format!("{namespace}-{name}")
}
pub fn jobmanager_name(name: &str) -> String {
    format!("{name}-jobmanager")
}
pub fn taskmanager_name(name: &str) -> String {
    format!("{name}-taskmanager")
}
pub fn rest_token_secret_name(name: &str) -> String {
    format!("{name}-rest-token")
}

/// The job's peer TLS Secret, named after the StreamJob's uid too: a StreamJob deleted and
/// created again under the same name must not find (and mount) its predecessor's Secret,
/// which the garbage collector is about to delete; its own is created and never replaced.
pub fn peer_tls_secret_name(owner: &Owner) -> String {
    let uid = owner.uid().unwrap_or_default();
    let short = uid.get(..8).unwrap_or(uid);
    format!("{}-peer-tls-{short}", owner.name)
}

pub fn network_policy_name(name: &str) -> String {
    format!("{name}-peers")
}

pub fn config_map_name(name: &str) -> String {
    format!("{name}-job")
}

/// TaskManager pods for a parallelism: `ceil(parallelism / slots)`.
pub fn taskmanager_replicas(parallelism: u32, slots: u32) -> i32 {
    let pods = parallelism.div_ceil(slots.max(1));
    i32::try_from(pods).unwrap_or(i32::MAX)
}

/// The worker's job document for this StreamJob with the given restore source.
pub fn job_document(
    namespace: &str,
    name: &str,
    spec: &StreamJobSpec,
    restore: RestoreSource,
) -> JobDocument {
    let template = &spec.job;
    let mut state = template.state.clone();
    if state.local_dir.is_none() {
        state.local_dir = Some(format!("{STATE_DIR}/state"));
    }
    // The JobManager writes savepoints only under checkpoint storage and the directories
    // listed here; the operator's savepoints go to `savepoints.directory` (default: under
    // checkpoint storage, already allowed).
    let mut checkpointing = template.checkpointing.clone();
    if let (Some(config), Some(dir)) = (checkpointing.as_mut(), &spec.savepoints.directory)
        && !config.savepoint_directories.contains(dir)
    {
        config.savepoint_directories.push(dir.clone());
    }
    JobDocument {
        job: JobRef {
            name: template.name.clone(),
            args: template.args.clone(),
        },
        job_id: Some(job_id(namespace, name)),
        parallelism: spec.parallelism,
        max_parallelism: template.max_parallelism,
        checkpointing,
        restart_strategy: template.restart_strategy.clone(),
        restore,
        malformed_records: template.malformed_records,
        s3: template.s3.clone(),
        kafka: template.kafka.clone(),
        state,
        cached_files: template.cached_files.clone(),
    }
}

/// FNV-1a over canonical JSON: stable across processes and releases, unlike `DefaultHasher`.
fn fingerprint(value: &impl Serialize) -> Result<String> {
    let json = serde_json::to_vec(value).map_err(|source| Error::Serialize {
        what: "spec fingerprint",
        source,
    })?;
    let hash = json.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Ok(format!("{hash:016x}"))
}

/// Hash of everything that shapes the pods except parallelism and slots, so a parallelism or
/// slots change reads as a rescale and anything else as an upgrade.
pub fn spec_hash(spec: &StreamJobSpec) -> Result<String> {
    // Every field by name, no `..`: a new spec field does not compile until it is sorted into
    // "shapes the pods" (hashed below) or not (named here with the reason).
    let StreamJobSpec {
        image,
        image_pull_policy,
        job,
        task_manager,
        job_manager,
        s3_credentials_secret,
        service_account_name,
        // A rescale, not an upgrade: `pod_hash` adds it.
        parallelism: _,
        // How the operator rolls out, suspends, savepoints and cleans up, not what runs.
        upgrade_mode: _,
        state: _,
        savepoint_trigger_nonce: _,
        on_delete: _,
        // Read for the first deployment only.
        initial_savepoint_path: _,
        // Operator policy; `savepoints.directory` reaches the JobManager (its allowed
        // targets) with the next deployment, as documented on the field.
        savepoints: _,
    } = spec;
    let crate::crd::TaskManagerSpec {
        // A rescale, not an upgrade: `pod_hash` adds it.
        slots: _,
        resources: tm_resources,
        pod_template: tm_template,
    } = task_manager;
    #[derive(Serialize)]
    struct Shape<'a> {
        image: &'a str,
        pull_policy: Option<&'static str>,
        job: &'a crate::crd::JobTemplate,
        tm_resources: &'a Option<ResourceRequirements>,
        tm_template: &'a Option<PodTemplateSpec>,
        jm: &'a crate::crd::JobManagerSpec,
        s3_secret: &'a Option<crate::crd::S3CredentialsSecret>,
        service_account: &'a Option<String>,
    }
    fingerprint(&Shape {
        image,
        pull_policy: image_pull_policy.map(|p| p.as_str()),
        job,
        tm_resources,
        tm_template,
        jm: job_manager,
        s3_secret: s3_credentials_secret,
        service_account: service_account_name,
    })
}

/// The pod template's hash: [`spec_hash`] plus what makes a rescale or a restart.
fn pod_hash(desired: &Desired, restart_nonce: u32) -> Result<String> {
    fingerprint(&(
        &desired.spec_hash,
        desired.parallelism,
        desired.slots,
        restart_nonce,
    ))
}

/// The StreamJob object its children belong to: their names and namespace, and the owner
/// reference every child carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub name: String,
    pub namespace: String,
    /// kube's controller reference to the StreamJob; `None` for one that never went through
    /// the API server (no uid), which nothing can be owned by.
    reference: Option<OwnerReference>,
}

impl Owner {
    pub fn of(job: &StreamJob) -> Owner {
        Owner {
            name: job.metadata.name.clone().unwrap_or_default(),
            namespace: job
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            reference: job.controller_owner_ref(&()),
        }
    }

    /// The StreamJob's uid, assigned by the API server.
    pub fn uid(&self) -> Option<&str> {
        self.reference.as_ref().map(|r| r.uid.as_str())
    }

    /// The worker's job id (and checkpoint directory name) of this StreamJob.
    pub fn job_id(&self) -> String {
        job_id(&self.namespace, &self.name)
    }

    fn reference(&self) -> Result<OwnerReference> {
        self.reference.clone().ok_or_else(|| {
            Error::InvalidSpec("StreamJob has no uid yet; it must come from the API server".into())
        })
    }

    fn meta(&self, name: String, component: &str) -> Result<ObjectMeta> {
        Ok(ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(selector_labels(&self.name, component)),
            owner_references: Some(vec![self.reference()?]),
            ..ObjectMeta::default()
        })
    }
}

/// What the pods are made of: the parts of a validated spec that shape them. Part of
/// [`Desired`], so only a spec that passed [`Desired::from_job`] gets rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The job document, checked the way the worker will check it, with `restore: latest`:
    /// each deploy sets its own restore source.
    pub document: JobDocument,
    pub image: String,
    pub image_pull_policy: Option<ImagePullPolicy>,
    pub job_manager: JobManagerSpec,
    pub task_manager: TaskManagerSpec,
    pub s3_credentials_secret: Option<S3CredentialsSecret>,
    pub service_account_name: Option<String>,
}

impl Workload {
    /// The pod-shaping parts of `spec`, with `document` (made from `spec` and checked).
    pub fn new(spec: &StreamJobSpec, document: JobDocument) -> Workload {
        Workload {
            document,
            image: spec.image.clone(),
            image_pull_policy: spec.image_pull_policy,
            job_manager: spec.job_manager.clone(),
            task_manager: spec.task_manager.clone(),
            s3_credentials_secret: spec.s3_credentials_secret.clone(),
            service_account_name: spec.service_account_name.clone(),
        }
    }
}

/// Everything the operator applies for one StreamJob.
#[derive(Debug, Clone)]
pub struct Children {
    pub config_map: ConfigMap,
    pub jobmanager_service: Service,
    pub jobmanager: Deployment,
    pub taskmanagers: Deployment,
}

/// Renders all child objects for the validated spec.
pub fn children(desired: &Desired, restore: RestoreSource, restart_nonce: u32) -> Result<Children> {
    let owner = &desired.owner;
    let workload = &desired.workload;
    let name = &owner.name;
    let document = JobDocument {
        restore,
        ..workload.document.clone()
    };
    let yaml = serde_yaml_ng::to_string(&document)
        .map_err(|e| Error::InvalidSpec(format!("job document does not serialize: {e}")))?;
    let hash = pod_hash(desired, restart_nonce)?;

    let config_map = ConfigMap {
        metadata: owner.meta(config_map_name(name), "config")?,
        data: Some(BTreeMap::from([("job.yaml".to_string(), yaml)])),
        ..ConfigMap::default()
    };

    let jobmanager_service = Service {
        metadata: owner.meta(jobmanager_name(name), "jobmanager")?,
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(name, "jobmanager")),
            // TaskManagers must reach a JobManager that is not "ready" yet: it only turns ready
            // once they have connected and the job runs.
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![
                service_port("rest", ports::REST),
                service_port("rpc", ports::RPC),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let jm_container = Container {
        name: "jobmanager".into(),
        args: Some(vec!["jobmanager".into(), "--job".into(), JOB_FILE.into()]),
        ports: Some(vec![
            container_port("rest", ports::REST),
            container_port("rpc", ports::RPC),
        ]),
        resources: workload.job_manager.resources.clone(),
        liveness_probe: Some(http_probe("/v1/health/live", 10, 6)),
        readiness_probe: Some(http_probe("/v1/health/ready", 5, 3)),
        ..worker_container(workload)
    };
    let jobmanager = deployment(
        desired,
        jobmanager_name(name),
        "jobmanager",
        1,
        &hash,
        jm_container,
        workload.job_manager.pod_template.as_ref(),
    )?;

    let tm_container = Container {
        name: "taskmanager".into(),
        args: Some(vec![
            "taskmanager".into(),
            "--jobmanager".into(),
            format!("{}:{}", jobmanager_name(name), ports::RPC),
            "--slots".into(),
            desired.slots.to_string(),
        ]),
        ports: Some(vec![container_port("data", ports::DATA)]),
        resources: workload.task_manager.resources.clone(),
        ..worker_container(workload)
    };
    let taskmanagers = deployment(
        desired,
        taskmanager_name(name),
        "taskmanager",
        taskmanager_replicas(desired.parallelism, desired.slots),
        &hash,
        tm_container,
        workload.task_manager.pod_template.as_ref(),
    )?;

    Ok(Children {
        config_map,
        jobmanager_service,
        jobmanager,
        taskmanagers,
    })
}

/// The job's REST token: a Secret owned by the StreamJob, mounted into the JobManager, which
/// then wants it from every caller but the health probes (see [`crate::rest_token`]).
pub fn rest_token_secret(owner: &Owner, token: &str) -> Result<Secret> {
    Ok(Secret {
        metadata: owner.meta(rest_token_secret_name(&owner.name), "rest-token")?,
        // `data`, not `stringData`: the API server turns the latter into the former, which a
        // server-side apply would then see as a change on every reconcile.
        data: Some(BTreeMap::from([(
            REST_TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
}

/// Has the JobManager of `children` read its REST token from the job's Secret.
pub fn require_rest_token(children: &mut Children, owner: &Owner, token: &str) {
    let template = &mut children.jobmanager.spec.template;
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            REST_TOKEN_ANNOTATION.to_string(),
            crate::rest_token::fingerprint(token),
        );
    let Some(pod) = template.spec.as_mut() else {
        return;
    };
    mount_secret(
        pod,
        "rest-token",
        &rest_token_secret_name(&owner.name),
        REST_TOKEN_DIR,
    );
    if let Some(container) = pod.containers.iter_mut().find(|c| c.name == "jobmanager") {
        container.args.get_or_insert_with(Vec::new).extend([
            "--rest-token-file".to_string(),
            format!("{REST_TOKEN_DIR}/{REST_TOKEN_KEY}"),
        ]);
    }
}

/// The job's peer certificates (`crate::peer_tls`) as its Secret, owned by the StreamJob.
pub fn peer_tls_secret(owner: &Owner, certificates: &PeerCertificates) -> Result<Secret> {
    let entry = |key: &str, pem: &str| (key.to_string(), ByteString(pem.as_bytes().to_vec()));
    Ok(Secret {
        metadata: owner.meta(peer_tls_secret_name(owner), "peer-tls")?,
        data: Some(BTreeMap::from([
            entry(crate::peer_tls::CA_KEY, &certificates.ca),
            entry(crate::peer_tls::CERT_KEY, &certificates.cert),
            entry(crate::peer_tls::KEY_KEY, &certificates.key),
        ])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
}

/// Has every pod of the job use mutual TLS with the job's certificates for RPC and data.
pub fn require_peer_tls(children: &mut Children, owner: &Owner) {
    for deployment in [&mut children.jobmanager, &mut children.taskmanagers] {
        let Some(pod) = deployment.spec.template.spec.as_mut() else {
            continue;
        };
        mount_secret(pod, "peer-tls", &peer_tls_secret_name(owner), PEER_TLS_DIR);
        for container in pod.containers.iter_mut().filter(|c| is_worker(c)) {
            let env = container.env.get_or_insert_with(Vec::new);
            for (variable, key) in [
                ("WEIR_TLS_CA", crate::peer_tls::CA_KEY),
                ("WEIR_TLS_CERT", crate::peer_tls::CERT_KEY),
                ("WEIR_TLS_KEY", crate::peer_tls::KEY_KEY),
            ] {
                env.push(EnvVar {
                    name: variable.into(),
                    value: Some(format!("{PEER_TLS_DIR}/{key}")),
                    ..EnvVar::default()
                });
            }
        }
    }
}

/// The Weir containers of a job pod (a pod template may add sidecars, which get no secrets).
fn is_worker(container: &Container) -> bool {
    container.name == "jobmanager" || container.name == "taskmanager"
}

/// Mounts Secret `secret` read-only at `dir` into the pod's Weir container, readable by the
/// worker's group only.
fn mount_secret(pod: &mut PodSpec, volume: &str, secret: &str, dir: &str) {
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    for container in pod.containers.iter_mut().filter(|c| is_worker(c)) {
        container
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: volume.into(),
                mount_path: dir.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
    }
}

/// The job's own NetworkPolicy: its pods admit the JobManager's RPC port and the TaskManagers'
/// data port from this job's TaskManagers only. One policy for both kinds of pod: a named
/// port matches only on pods that declare it (`rpc` on the JobManager, `data` on
/// TaskManagers). It must be per job because a policy cannot say "the same job as the pod it
/// selects"; the chart's policy adds the operator (and `networkPolicy.restFrom`) on the
/// JobManager's REST port.
pub fn network_policy(owner: &Owner) -> Result<NetworkPolicy> {
    let name = &owner.name;
    let port = |name: &str| NetworkPolicyPort {
        port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    };
    Ok(NetworkPolicy {
        metadata: owner.meta(network_policy_name(name), "network-policy")?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(job_labels(name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(name, "taskmanager")),
                        ..LabelSelector::default()
                    }),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![port("rpc"), port("data")]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    })
}

fn service_port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.into())),
        ..ServicePort::default()
    }
}

fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("rest".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

/// The parts both worker containers share: image, restricted security context, mounts, S3
/// credentials.
fn worker_container(workload: &Workload) -> Container {
    let mut env = vec![EnvVar {
        name: "TMPDIR".into(),
        value: Some("/tmp".into()),
        ..EnvVar::default()
    }];
    if let Some(secret) = &workload.s3_credentials_secret {
        for (var, key) in [
            ("AWS_ACCESS_KEY_ID", &secret.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", &secret.secret_access_key_key),
        ] {
            env.push(EnvVar {
                name: var.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: key.clone(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
    Container {
        image: Some(workload.image.clone()),
        image_pull_policy: workload.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["weir-worker".into()]),
        env: Some(env),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "job".into(),
                mount_path: "/etc/weir".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "state".into(),
                mount_path: STATE_DIR.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

fn deployment(
    desired: &Desired,
    name: String,
    component: &str,
    replicas: i32,
    pod_hash: &str,
    container: Container,
    overrides: Option<&PodTemplateSpec>,
) -> Result<Deployment> {
    let owner = &desired.owner;
    let labels = selector_labels(&owner.name, component);
    let pod_spec = PodSpec {
        containers: vec![container],
        service_account_name: desired.workload.service_account_name.clone(),
        // Workers never call the Kubernetes API: no token in the pod, whatever account it runs as.
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        volumes: Some(vec![
            Volume {
                name: "job".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map_name(&owner.name),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "state".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    };
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                POD_HASH_ANNOTATION.to_string(),
                pod_hash.to_string(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec),
    };
    if let Some(overrides) = overrides {
        merge_pod_template(&mut template, overrides);
    }
    Ok(Deployment {
        metadata: owner.meta(name, component)?,
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels),
                ..LabelSelector::default()
            },
            // Never two generations side by side: two JobManagers would both write checkpoints.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            template,
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    })
}

/// Applies user overrides without letting them break what the operator relies on: selector
/// labels, the pod hash, the worker container's command and security context win.
fn merge_pod_template(template: &mut PodTemplateSpec, overrides: &PodTemplateSpec) {
    if let (Some(meta), Some(extra)) = (template.metadata.as_mut(), overrides.metadata.as_ref()) {
        for (target, source) in [
            (&mut meta.labels, &extra.labels),
            (&mut meta.annotations, &extra.annotations),
        ] {
            if let Some(source) = source {
                let target = target.get_or_insert_with(BTreeMap::new);
                for (key, value) in source {
                    target.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
        }
    }
    let (Some(spec), Some(extra)) = (template.spec.as_mut(), overrides.spec.as_ref()) else {
        return;
    };
    if extra.node_selector.is_some() {
        spec.node_selector = extra.node_selector.clone();
    }
    if extra.tolerations.is_some() {
        spec.tolerations = extra.tolerations.clone();
    }
    if extra.affinity.is_some() {
        spec.affinity = extra.affinity.clone();
    }
    if extra.priority_class_name.is_some() {
        spec.priority_class_name = extra.priority_class_name.clone();
    }
    if extra.image_pull_secrets.is_some() {
        spec.image_pull_secrets = extra.image_pull_secrets.clone();
    }
    if extra.termination_grace_period_seconds.is_some() {
        spec.termination_grace_period_seconds = extra.termination_grace_period_seconds;
    }
    let worker = spec
        .containers
        .first()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    for container in &extra.containers {
        if container.name == worker {
            // Same-named container: take extra env and mounts, keep the operator's essentials.
            if let Some(ours) = spec.containers.first_mut() {
                if let Some(env) = &container.env {
                    ours.env
                        .get_or_insert_with(Vec::new)
                        .extend(env.iter().cloned());
                }
                if let Some(mounts) = &container.volume_mounts {
                    ours.volume_mounts
                        .get_or_insert_with(Vec::new)
                        .extend(mounts.iter().cloned());
                }
            }
        } else {
            spec.containers.push(container.clone());
        }
    }
    if let Some(volumes) = &extra.volumes {
        spec.volumes
            .get_or_insert_with(Vec::new)
            .extend(volumes.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::S3CredentialsSecret;
    use k8s_openapi::api::core::v1::Toleration;

    fn desired(job: &StreamJob) -> Desired {
        Desired::from_job(job).expect("valid spec")
    }

    fn built(job: &StreamJob) -> Children {
        children(&desired(job), RestoreSource::Latest, 0).expect("builds")
    }

    fn owner(job: &StreamJob) -> Owner {
        Owner::of(job)
    }

    fn pod(deployment: &Deployment) -> &PodSpec {
        deployment.spec.template.spec.as_ref().expect("pod spec")
    }

    /// The Secret behind the pod's volume `volume`.
    fn mounted_secret<'a>(pod: &'a PodSpec, volume: &str) -> Option<&'a str> {
        let volume = pod.volumes.iter().flatten().find(|v| v.name == volume)?;
        volume.secret.as_ref()?.secret_name.as_deref()
    }

    fn pod_hash_of(deployment: &Deployment) -> String {
        deployment
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(POD_HASH_ANNOTATION))
            .cloned()
            .expect("hash")
    }

    #[test]
    fn the_jobmanager_reads_its_token_from_the_job_secret_and_nothing_else_changes() {
        let job = StreamJob::test();
        let plain = built(&job);
        let mut secured = built(&job);
        require_rest_token(&mut secured, &owner(&job), "t0ken");
        let jm = pod(&secured.jobmanager);
        let container = &jm.containers[0];
        let args = container.args.clone().expect("args");
        let file = format!("{REST_TOKEN_DIR}/{REST_TOKEN_KEY}");
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--rest-token-file" && w[1] == file),
            "{args:?}"
        );
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == REST_TOKEN_DIR)
            .expect("mounted");
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(mounted_secret(jm, &mount.name), Some("clicks-rest-token"));
        let annotations = secured
            .jobmanager
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .expect("annotations");
        let fingerprint = &annotations[REST_TOKEN_ANNOTATION];
        assert!(!fingerprint.contains("t0ken"));
        assert_eq!(
            secured.taskmanagers, plain.taskmanagers,
            "TaskManagers need no token"
        );
        let secret = rest_token_secret(&owner(&job), "t0ken").expect("secret");
        assert_eq!(secret.metadata.name.as_deref(), Some("clicks-rest-token"));
        assert_eq!(
            secret.data.as_ref().map(|d| d[REST_TOKEN_KEY].0.as_slice()),
            Some(b"t0ken".as_slice())
        );
        let owner = &secret.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!(owner.kind, "StreamJob");
    }

    #[test]
    fn every_pod_of_the_job_mounts_the_peer_certificates() {
        let job = StreamJob::test();
        let mut children = built(&job);
        require_peer_tls(&mut children, &owner(&job));
        for deployment in [&children.jobmanager, &children.taskmanagers] {
            let spec = pod(deployment);
            assert_eq!(
                mounted_secret(spec, "peer-tls"),
                Some("clicks-peer-tls-uid-1")
            );
            let container = &spec.containers[0];
            let env: Vec<(String, String)> = container
                .env
                .iter()
                .flatten()
                .filter(|e| e.name.starts_with("WEIR_TLS_"))
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect();
            assert_eq!(env.len(), 3, "{env:?}");
            assert!(env.iter().all(|(_, path)| path.starts_with(PEER_TLS_DIR)));
        }
        let certificates = crate::peer_tls::generate("streams", "clicks").expect("certs");
        let secret = peer_tls_secret(&owner(&job), &certificates).expect("secret");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("clicks-peer-tls-uid-1")
        );
        assert_eq!(secret.data.as_ref().map(|d| d.len()), Some(3));
    }

    #[test]
    fn a_streamjob_created_again_under_its_name_gets_a_peer_secret_of_its_own() {
        let mut first = StreamJob::test();
        first.metadata.uid = Some("0b5e2f8a-1111-4c3d-9e2f-000000000001".into());
        let mut second = first.clone();
        second.metadata.uid = Some("7c1d9a33-2222-4c3d-9e2f-000000000002".into());
        assert_eq!(
            peer_tls_secret_name(&owner(&first)),
            "clicks-peer-tls-0b5e2f8a"
        );
        assert_ne!(
            peer_tls_secret_name(&owner(&first)),
            peer_tls_secret_name(&owner(&second))
        );
    }

    #[test]
    fn the_job_policy_fences_all_its_pods_and_admits_only_its_own_taskmanagers() {
        let job = StreamJob::test();
        let children = built(&job);
        let policy = network_policy(&owner(&job)).expect("policy");
        assert_eq!(policy.metadata.name.as_deref(), Some("clicks-peers"));
        assert_eq!(
            policy.metadata.owner_references.as_ref().expect("owned")[0].kind,
            "StreamJob"
        );
        let spec = policy.spec.expect("spec");
        let matches = |selector: &Option<LabelSelector>, labels: &BTreeMap<String, String>| {
            let wanted = selector.as_ref().and_then(|s| s.match_labels.as_ref());
            wanted.is_some_and(|w| w.iter().all(|(k, v)| labels.get(k) == Some(v)))
        };
        let labels = |deployment: &Deployment| {
            let template = deployment.spec.template.metadata.as_ref();
            template.and_then(|m| m.labels.clone()).expect("labels")
        };
        let (jm, tm) = (labels(&children.jobmanager), labels(&children.taskmanagers));
        assert!(matches(&spec.pod_selector, &jm) && matches(&spec.pod_selector, &tm));
        let mut other_job = tm.clone();
        other_job.insert("app.kubernetes.io/instance".into(), "other".into());
        assert!(!matches(&spec.pod_selector, &other_job));

        let rules = spec.ingress.expect("ingress");
        assert_eq!(rules.len(), 1);
        let peers = rules[0].from.clone().expect("from");
        assert_eq!(
            peers.len(),
            1,
            "never an empty `from`: that admits everyone"
        );
        let peer = &peers[0].pod_selector;
        assert!(matches(peer, &tm), "the job's TaskManagers get in");
        assert!(!matches(peer, &jm), "the JobManager connects to no one");
        assert!(
            !matches(peer, &other_job),
            "another job's TaskManagers do not"
        );
        assert!(peers[0].namespace_selector.is_none(), "same namespace only");
        let ports: Vec<_> = rules[0]
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.clone())
            .collect();
        assert_eq!(
            ports,
            [
                IntOrString::String("rpc".into()),
                IntOrString::String("data".into())
            ]
        );
        // The named ports are the ones the containers declare.
        let declared = |deployment: &Deployment| -> Vec<String> {
            pod(deployment).containers[0]
                .ports
                .iter()
                .flatten()
                .filter_map(|p| p.name.clone())
                .collect()
        };
        assert!(declared(&children.jobmanager).contains(&"rpc".to_string()));
        assert!(declared(&children.taskmanagers).contains(&"data".to_string()));
    }

    #[test]
    fn taskmanager_replicas_round_up() {
        assert_eq!(taskmanager_replicas(1, 1), 1);
        assert_eq!(taskmanager_replicas(4, 2), 2);
        assert_eq!(taskmanager_replicas(5, 2), 3);
        assert_eq!(taskmanager_replicas(3, 4), 1);
    }

    #[test]
    fn config_map_holds_a_valid_document_with_the_operator_job_id() {
        let job = StreamJob::test().with_parallelism(3);
        let children =
            children(&desired(&job), RestoreSource::Path("s3://b/sp/1".into()), 0).expect("builds");
        let yaml = children
            .config_map
            .data
            .as_ref()
            .and_then(|d| d.get("job.yaml"))
            .expect("job.yaml");
        let doc = JobDocument::from_yaml(yaml, "job.yaml").expect("valid document");
        assert_eq!(doc.job_id(), "streams-clicks");
        assert_eq!(doc.parallelism, 3);
        assert_eq!(doc.restore, RestoreSource::Path("s3://b/sp/1".into()));
        assert_eq!(doc.state.local_dir.as_deref(), Some("/var/lib/weir/state"));
    }

    #[test]
    fn every_child_is_owned_by_the_stream_job() {
        let children = built(&StreamJob::test());
        let metas = [
            &children.config_map.metadata,
            &children.jobmanager_service.metadata,
            &children.jobmanager.metadata,
            &children.taskmanagers.metadata,
        ];
        for meta in metas {
            let owner = &meta.owner_references.as_ref().expect("owner refs")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("StreamJob", "uid-1")
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("streams"));
        }
    }

    #[test]
    fn taskmanagers_scale_with_parallelism_and_slots() {
        let children = built(&StreamJob::test().with_parallelism(5).with_slots(2));
        assert_eq!(children.taskmanagers.spec.replicas, Some(3));
        assert_eq!(children.jobmanager.spec.replicas, Some(1));
        let args = pod(&children.taskmanagers).containers[0]
            .args
            .clone()
            .expect("args");
        assert_eq!(
            args,
            [
                "taskmanager",
                "--jobmanager",
                "clicks-jobmanager:6123",
                "--slots",
                "2"
            ]
        );
    }

    #[test]
    fn pods_run_restricted() {
        let children = built(&StreamJob::test());
        for deployment in [&children.jobmanager, &children.taskmanagers] {
            let pod = pod(deployment);
            assert_eq!(
                pod.automount_service_account_token,
                Some(false),
                "job pods get no API token"
            );
            let pod_security = pod.security_context.as_ref().expect("pod security");
            assert_eq!(pod_security.run_as_non_root, Some(true));
            assert_eq!(
                pod_security
                    .seccomp_profile
                    .as_ref()
                    .map(|s| s.type_.as_str()),
                Some("RuntimeDefault")
            );
            let container = &pod.containers[0];
            let security = container
                .security_context
                .as_ref()
                .expect("container security");
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_eq!(security.allow_privilege_escalation, Some(false));
            assert_eq!(
                security.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_string()])
            );
            let mounts: Vec<_> = container
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| m.mount_path.as_str())
                .collect();
            assert_eq!(mounts, ["/etc/weir", "/var/lib/weir", "/tmp"]);
        }
    }

    #[test]
    fn jobmanager_probes_hit_the_health_endpoints() {
        let children = built(&StreamJob::test());
        let container = &pod(&children.jobmanager).containers[0];
        let path = |probe: &Option<Probe>| {
            probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(
            path(&container.liveness_probe).as_deref(),
            Some("/v1/health/live")
        );
        assert_eq!(
            path(&container.readiness_probe).as_deref(),
            Some("/v1/health/ready")
        );
        assert_eq!(
            container.args.clone().expect("args"),
            ["jobmanager", "--job", "/etc/weir/job.yaml"]
        );
        let service = children.jobmanager_service.spec.expect("service spec");
        assert_eq!(service.publish_not_ready_addresses, Some(true));
    }

    #[test]
    fn s3_credentials_come_from_the_secret() {
        let mut job = StreamJob::test();
        job.spec.s3_credentials_secret = Some(S3CredentialsSecret {
            name: "minio".into(),
            access_key_id_key: "user".into(),
            secret_access_key_key: "password".into(),
        });
        let children = built(&job);
        let env = pod(&children.taskmanagers).containers[0]
            .env
            .clone()
            .expect("env");
        let key = env
            .iter()
            .find(|e| e.name == "AWS_SECRET_ACCESS_KEY")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secret ref");
        assert_eq!((key.name.as_str(), key.key.as_str()), ("minio", "password"));
    }

    #[test]
    fn restore_source_does_not_restart_pods_but_parallelism_and_nonce_do() {
        let job = StreamJob::test();
        let desired = desired(&job);
        let pinned =
            children(&desired, RestoreSource::Path("s3://b/sp".into()), 0).expect("builds");
        let latest = children(&desired, RestoreSource::Latest, 0).expect("builds");
        assert_eq!(
            pod_hash_of(&pinned.jobmanager),
            pod_hash_of(&latest.jobmanager)
        );
        let rescaled = built(&job.clone().with_parallelism(4));
        assert_ne!(
            pod_hash_of(&rescaled.jobmanager),
            pod_hash_of(&latest.jobmanager)
        );
        let restarted = children(&desired, RestoreSource::Latest, 1).expect("builds");
        assert_ne!(
            pod_hash_of(&restarted.taskmanagers),
            pod_hash_of(&latest.taskmanagers)
        );
    }

    #[test]
    fn cached_files_reach_the_job_document_and_changing_them_is_an_upgrade() {
        let job = StreamJob::test().with_cached_file("url-names", "s3://b/cache/names.txt");
        let children = children(&desired(&job), RestoreSource::Latest, 0).expect("builds");
        let yaml = children
            .config_map
            .data
            .as_ref()
            .and_then(|d| d.get("job.yaml"))
            .expect("job.yaml");
        let doc = JobDocument::from_yaml(yaml, "job.yaml").expect("valid document");
        assert_eq!(
            doc.cached_files.get("url-names").map(String::as_str),
            Some("s3://b/cache/names.txt")
        );
        assert_ne!(
            spec_hash(&job.spec).expect("hash"),
            spec_hash(&StreamJob::test().spec).expect("hash")
        );
    }

    #[test]
    fn rescale_keeps_the_spec_hash_upgrade_changes_it() {
        let job = StreamJob::test();
        let hash = spec_hash(&job.spec).expect("hash");
        assert_eq!(
            spec_hash(&job.clone().with_parallelism(7).with_slots(3).spec).expect("hash"),
            hash
        );
        assert_ne!(
            spec_hash(&job.with_image("weir:2").spec).expect("hash"),
            hash
        );
    }

    #[test]
    fn pod_template_overrides_merge_without_breaking_essentials() {
        let mut job = StreamJob::test();
        job.spec.task_manager.pod_template = Some(PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([
                    ("team".to_string(), "data".to_string()),
                    (
                        "app.kubernetes.io/component".to_string(),
                        "hijack".to_string(),
                    ),
                ])),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                tolerations: Some(vec![Toleration {
                    key: Some("spot".into()),
                    ..Toleration::default()
                }]),
                containers: vec![Container {
                    name: "log-shipper".into(),
                    image: Some("fluent-bit".into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        });
        let children = built(&job);
        let template = &children.taskmanagers.spec.template;
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("data"));
        assert_eq!(
            labels
                .get("app.kubernetes.io/component")
                .map(String::as_str),
            Some("taskmanager")
        );
        let pod = template.spec.as_ref().expect("pod");
        assert_eq!(pod.containers.len(), 2);
        assert_eq!(pod.containers[0].name, "taskmanager");
        assert!(pod.tolerations.is_some());
    }
}
