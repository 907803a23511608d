//! The pod builder (sans-IO): an AutoCraneDeployment and one `CreatePod` decision → the `Pod` to
//! create.
//!
//! What AutoCrane adds to the user's template:
//! - identity: the owner reference to the deployment (controller, blocking its deletion, so the
//!   garbage collector removes the pods with it), the deployment/revision/slot labels, the
//!   app-version annotation and the initial `data.autocrane.io/<source>` annotations;
//! - the app version: the app container (`spec.version.container`, else the first) gets the version
//!   as its image tag and as env `AUTOCRANE_APP_VERSION`;
//! - the readiness gate `autocrane.io/healthy`, which the WatchdogListener keeps in step with the
//!   watchdog rollup, so a pod in `error` leaves its Services at once;
//! - with `spec.data`: the DataDeployer as init container (blocks until the desired data is live)
//!   and as sidecar (follows changes), the downward-API file of the pod's annotations they read,
//!   one shared `emptyDir` (read-write in the deployer, read-only at each `data[].mountPath` in the
//!   app container), and a projected ServiceAccount token (audience: the WatchdogListener) for the
//!   `data-<source>` watchdog. The injected containers are hardened like `deploy/`.
//!
//! The deployer writes `<root>/<source>/current` as a *relative* link, so the app sees
//! `<mountPath>/<source>/current` whatever the mount path.

use std::collections::BTreeMap;

use autocrane_api::{
    crd::{AutoCraneDeployment, pod_labels},
    keys::{APP_VERSION_ANNOTATION, SLOT_LABEL, data_annotation},
};
use autocrane_controller::model::Action;
use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource,
        EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodReadinessGate,
        PodSpec, ProjectedVolumeSource, SeccompProfile, SecretVolumeSource, SecurityContext,
        ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::Resource;

use crate::Error;

pub use autocrane_api::keys::HEALTHY_CONDITION;
/// The env var telling the app which version it runs.
pub const APP_VERSION_ENV: &str = "AUTOCRANE_APP_VERSION";
/// The env var listing, comma-separated, the live directory of each data source in the app
/// container (`<mountPath>/<source>/current`).
pub const DATA_DIRS_ENV: &str = "AUTOCRANE_DATA_DIRS";
/// Name of the injected init container.
pub const DATA_INIT_CONTAINER: &str = "autocrane-data-init";
/// Name of the injected sidecar.
pub const DATA_SIDECAR: &str = "autocrane-data";
/// The shared data volume.
pub const DATA_VOLUME: &str = "autocrane-data";
/// The downward-API volume with the pod's annotations.
pub const PODINFO_VOLUME: &str = "autocrane-podinfo";
/// The projected token volume.
pub const TOKEN_VOLUME: &str = "autocrane-token";
/// The volume of the deployer's TLS Secret (`--data-deployer-tls-secret`).
pub const TLS_VOLUME: &str = "autocrane-tls";
/// Where the deployer mounts its TLS Secret: `ca.crt`, `tls.crt`, `tls.key` (the layout
/// cert-manager writes). Mounted as a directory, never with `subPath`, so that the kubelet's
/// updates reach the files and the deployer picks a renewed certificate up without a restart.
pub const TLS_DIR: &str = "/autocrane/tls";
/// Where the deployer mounts the shared data volume.
pub const DATA_ROOT: &str = "/autocrane/data";
/// Where the deployer mounts the downward-API volume.
pub const PODINFO_DIR: &str = "/autocrane/podinfo";
/// Where the deployer mounts the token volume.
pub const TOKEN_DIR: &str = "/autocrane/token";
/// The non-root user of the AutoCrane image (`Dockerfile`: `USER 65532:65532`).
pub const NONROOT_UID: i64 = 65532;
/// Lifetime asked for the projected token (the kubelet refreshes it at 80 %).
const TOKEN_SECONDS: i64 = 3600;

/// How the DataDeployer is injected (from the controller's flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// `--data-deployer-image`.
    pub image: String,
    /// `--data-repository`: the URL the deployer fetches from.
    pub repository: Option<String>,
    /// The WatchdogListener URL the deployer posts its `data-<source>` watchdog to.
    pub watchdog_listener: Option<String>,
    /// The audience of the projected token (what the WatchdogListener's TokenReview expects).
    pub token_audience: String,
    /// The audience of the projected token the deployer presents to the DataRepository (what the
    /// DataRepository's TokenReview expects): a second token, so neither server can replay what
    /// it receives against the other.
    pub data_repository_audience: String,
    /// `--data-deployer-tls-secret`: a Secret in the deployment's namespace (keys `ca.crt`,
    /// `tls.crt`, `tls.key`) that the deployer uses for its `https://` connections to the
    /// DataRepository and the WatchdogListener: the CA it trusts and its client certificate.
    pub tls_secret: Option<String>,
}

/// The file of the token for the DataRepository, in [`TOKEN_DIR`].
pub const DATA_REPOSITORY_TOKEN: &str = "data-repository-token";

/// One `CreatePod` decision, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct NewPod<'a> {
    /// The pod name.
    pub name: &'a str,
    /// The slot label value.
    pub slot: &'a str,
    /// The revision label value.
    pub revision: &'a str,
    /// The app version, when the deployment has versions.
    pub version: Option<&'a str>,
    /// Initial `data.autocrane.io/<source>` values.
    pub data: &'a BTreeMap<String, String>,
}

impl<'a> NewPod<'a> {
    /// The `CreatePod` fields of `action`, if it is one.
    pub fn from_action(action: &'a Action) -> Option<Self> {
        match action {
            Action::CreatePod {
                name,
                slot,
                revision,
                version,
                data,
            } => Some(Self {
                name,
                slot,
                revision,
                version: version.as_deref(),
                data,
            }),
            _ => None,
        }
    }
}

/// Builds the pod for `new` of `deployment`. `source_ids` maps data source names to their
/// DataRepository source ids (a name without one is passed as is, which the deployer takes as the
/// id).
pub fn build_pod(
    deployment: &AutoCraneDeployment,
    new: NewPod<'_>,
    injection: &Injection,
    source_ids: &BTreeMap<String, String>,
) -> Result<Pod, Error> {
    let deployment_name = deployment.metadata.name.clone().unwrap_or_default();
    let spec = &deployment.spec;
    let template = &spec.template;
    let mut pod_spec: PodSpec = template.spec.clone().ok_or_else(|| Error::InvalidSpec {
        field: "spec.template.spec",
        rule: "is required".into(),
    })?;

    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.extend(pod_labels(&deployment_name, new.revision));
    labels.insert(SLOT_LABEL.to_string(), new.slot.to_string());
    let mut annotations = template_meta.annotations.unwrap_or_default();
    if let Some(version) = new.version {
        annotations.insert(APP_VERSION_ANNOTATION.to_string(), version.to_string());
    }
    for (source, version) in new.data {
        annotations.insert(data_annotation(source), version.clone());
    }

    let app = app_container(
        &mut pod_spec,
        spec.version.as_ref().and_then(|v| v.container.as_deref()),
    )?;
    if let Some(version) = new.version {
        app.image = Some(with_tag(app.image.as_deref().unwrap_or_default(), version));
        let env = app.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != APP_VERSION_ENV);
        env.push(EnvVar {
            name: APP_VERSION_ENV.into(),
            value: Some(version.to_string()),
            value_from: None,
        });
    }
    let gates = pod_spec.readiness_gates.get_or_insert_with(Vec::new);
    if !gates.iter().any(|g| g.condition_type == HEALTHY_CONDITION) {
        gates.push(PodReadinessGate {
            condition_type: HEALTHY_CONDITION.into(),
        });
    }
    if !spec.data.is_empty() {
        inject_data_deployer(deployment, &mut pod_spec, injection, source_ids)?;
    }

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(new.name.to_string()),
            namespace: deployment.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_reference(deployment)?]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    })
}

/// The controller owner reference to `deployment`.
fn owner_reference(deployment: &AutoCraneDeployment) -> Result<OwnerReference, Error> {
    let uid = deployment
        .metadata
        .uid
        .clone()
        .ok_or_else(|| Error::InvalidSpec {
            field: "metadata.uid",
            rule: "the deployment has no uid yet".into(),
        })?;
    Ok(OwnerReference {
        api_version: AutoCraneDeployment::api_version(&()).into_owned(),
        kind: AutoCraneDeployment::kind(&()).into_owned(),
        name: deployment.metadata.name.clone().unwrap_or_default(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The app container: the one named by `spec.version.container`, else the first.
fn app_container<'s>(
    spec: &'s mut PodSpec,
    named: Option<&str>,
) -> Result<&'s mut Container, Error> {
    match named {
        Some(name) => spec
            .containers
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| Error::InvalidSpec {
                field: "spec.version.container",
                rule: format!("the template has no container named {name:?}"),
            }),
        None => spec
            .containers
            .first_mut()
            .ok_or_else(|| Error::InvalidSpec {
                field: "spec.template.spec.containers",
                rule: "must have at least one container".into(),
            }),
    }
}

/// `image` with its tag set to `version`: a digest (`@sha256:…`) is dropped, since the version
/// names a tag; a registry port (`host:5000/app`) is not a tag.
pub fn with_tag(image: &str, version: &str) -> String {
    let name = image.split_once('@').map_or(image, |(name, _)| name);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let repository = match name[last_slash..].rfind(':') {
        Some(colon) => &name[..last_slash + colon],
        None => name,
    };
    format!("{repository}:{version}")
}

/// The hardening of every injected container (the same as `deploy/`).
pub fn hardened() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NONROOT_UID),
        run_as_group: Some(NONROOT_UID),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// Adds the DataDeployer (init + sidecar), its volumes and the app's read-only data mounts.
fn inject_data_deployer(
    deployment: &AutoCraneDeployment,
    spec: &mut PodSpec,
    injection: &Injection,
    source_ids: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let repository = injection
        .repository
        .clone()
        .ok_or_else(|| Error::InvalidSpec {
            field: "spec.data",
            rule: "data sources need a DataRepository: start the controller with --data-repository"
                .into(),
        })?;
    let data = &deployment.spec.data;
    let app = app_container(
        spec,
        deployment
            .spec
            .version
            .as_ref()
            .and_then(|v| v.container.as_deref()),
    )?;
    let mounts = app.volume_mounts.get_or_insert_with(Vec::new);
    let mut paths: Vec<&str> = data.iter().map(|d| d.mount_path.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    for path in paths {
        mounts.push(mount(DATA_VOLUME, path, true));
    }
    // Where each source's live version is, so the app need not know the deployer's layout.
    let dirs: Vec<String> = data
        .iter()
        .map(|d| format!("{}/{}/current", d.mount_path.trim_end_matches('/'), d.name))
        .collect();
    let env = app.env.get_or_insert_with(Vec::new);
    env.retain(|e| e.name != DATA_DIRS_ENV);
    env.push(EnvVar {
        name: DATA_DIRS_ENV.into(),
        value: Some(dirs.join(",")),
        value_from: None,
    });

    let mut args_tail = vec![
        "--repository".to_string(),
        repository,
        "--root".into(),
        DATA_ROOT.into(),
        "--desired-file".into(),
        format!("{PODINFO_DIR}/annotations"),
    ];
    for source in data {
        let id = source_ids.get(&source.name).unwrap_or(&source.name);
        args_tail.push("--source".into());
        args_tail.push(format!("{}={id}", source.name));
    }
    // The pod-bound token lets the deployer read manifests and fetch, and nothing else.
    args_tail.extend([
        "--data-repository-token-file".into(),
        format!("{TOKEN_DIR}/{DATA_REPOSITORY_TOKEN}"),
    ]);
    let mut deployer_mounts = vec![
        mount(DATA_VOLUME, DATA_ROOT, false),
        mount(PODINFO_VOLUME, PODINFO_DIR, true),
        mount(TOKEN_VOLUME, TOKEN_DIR, true),
    ];
    let mut deployer_env = vec![
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_NAME", "metadata.name"),
    ];
    if injection.tls_secret.is_some() {
        deployer_mounts.push(mount(TLS_VOLUME, TLS_DIR, true));
        for (name, file) in [
            ("AUTOCRANE_CLIENT_TLS_CA", "ca.crt"),
            ("AUTOCRANE_CLIENT_TLS_CERT", "tls.crt"),
            ("AUTOCRANE_CLIENT_TLS_KEY", "tls.key"),
        ] {
            deployer_env.push(EnvVar {
                name: name.into(),
                value: Some(format!("{TLS_DIR}/{file}")),
                value_from: None,
            });
        }
    }
    if let Some(listener) = &injection.watchdog_listener {
        args_tail.extend([
            "--watchdog-listener".into(),
            listener.clone(),
            "--token-file".into(),
            format!("{TOKEN_DIR}/token"),
        ]);
    }
    let deployer = |name: &str, mode: &str| Container {
        name: name.into(),
        image: Some(injection.image.clone()),
        args: Some(
            ["data-deployer".to_string(), mode.to_string()]
                .into_iter()
                .chain(args_tail.iter().cloned())
                .collect(),
        ),
        env: Some(deployer_env.clone()),
        volume_mounts: Some(deployer_mounts.clone()),
        security_context: Some(hardened()),
        ..Container::default()
    };
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .push(deployer(DATA_INIT_CONTAINER, "init"));
    spec.containers.push(deployer(DATA_SIDECAR, "sidecar"));

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: DATA_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    volumes.push(Volume {
        name: PODINFO_VOLUME.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "annotations".into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.annotations".into(),
                    api_version: None,
                }),
                ..DownwardAPIVolumeFile::default()
            }]),
            ..DownwardAPIVolumeSource::default()
        }),
        ..Volume::default()
    });
    let token = |audience: &str, path: &str| VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            audience: Some(audience.to_string()),
            expiration_seconds: Some(TOKEN_SECONDS),
            path: path.into(),
            ..ServiceAccountTokenProjection::default()
        }),
        ..VolumeProjection::default()
    };
    let mut tokens = Vec::new();
    if injection.watchdog_listener.is_some() {
        tokens.push(token(&injection.token_audience, "token"));
    }
    tokens.push(token(
        &injection.data_repository_audience,
        DATA_REPOSITORY_TOKEN,
    ));
    volumes.push(Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(tokens),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    });
    if let Some(secret) = &injection.tls_secret {
        volumes.push(Volume {
            name: TLS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn deployment(extra: Value) -> AutoCraneDeployment {
        let mut spec = json!({
            "replicas": 3,
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"team": "a"}},
                "spec": {"containers": [
                    {"name": "web", "image": "registry.local:5000/acme/web:1.0",
                     "env": [{"name": "MODE", "value": "x"}]},
                    {"name": "proxy", "image": "envoy:1"}
                ]}
            }
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let mut d: AutoCraneDeployment = serde_json::from_value(json!({
            "apiVersion": "autocrane.io/v1alpha1", "kind": "AutoCraneDeployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
            "spec": spec
        }))
        .unwrap();
        d.metadata.generation = Some(1);
        d
    }

    fn injection() -> Injection {
        Injection {
            image: "autocrane:0.1".into(),
            repository: Some("http://repo:7070".into()),
            watchdog_listener: Some("http://listener:7070".into()),
            token_audience: "autocrane-watchdog-listener".into(),
            data_repository_audience: "autocrane-data-repository".into(),
            tls_secret: None,
        }
    }

    fn build(d: &AutoCraneDeployment, version: Option<&str>, data: &[(&str, &str)]) -> Value {
        let data: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let new = NewPod {
            name: "web-abc12",
            slot: "web-0",
            revision: "r1",
            version,
            data: &data,
        };
        let ids = BTreeMap::from([("config".to_string(), "git-0123".to_string())]);
        serde_json::to_value(build_pod(d, new, &injection(), &ids).unwrap()).unwrap()
    }

    #[test]
    fn a_pod_is_owned_labelled_and_runs_the_chosen_version() {
        let d = deployment(json!({"version": {"pinned": "1.4.2"}}));
        let pod = build(&d, Some("1.4.2"), &[]);
        let meta = &pod["metadata"];
        assert_eq!(meta["name"], "web-abc12");
        assert_eq!(meta["namespace"], "shop");
        assert_eq!(
            meta["ownerReferences"],
            json!([{"apiVersion": "autocrane.io/v1alpha1", "kind": "AutoCraneDeployment",
                    "name": "web", "uid": "u-1", "controller": true, "blockOwnerDeletion": true}])
        );
        assert_eq!(
            meta["labels"],
            json!({"app": "web", "autocrane.io/deployment": "web",
                   "autocrane.io/revision": "r1", "autocrane.io/slot": "web-0"})
        );
        assert_eq!(
            meta["annotations"],
            json!({"team": "a", "autocrane.io/app-version": "1.4.2"})
        );
        let web = &pod["spec"]["containers"][0];
        assert_eq!(web["image"], "registry.local:5000/acme/web:1.4.2");
        assert_eq!(
            web["env"],
            json!([{"name": "MODE", "value": "x"}, {"name": "AUTOCRANE_APP_VERSION", "value": "1.4.2"}])
        );
        assert_eq!(pod["spec"]["containers"][1]["image"], "envoy:1");
        assert_eq!(
            pod["spec"]["readinessGates"],
            json!([{"conditionType": "autocrane.io/healthy"}])
        );
        assert!(pod["spec"].get("initContainers").is_none());
        assert!(pod["spec"].get("volumes").is_none());
    }

    #[test]
    fn the_named_container_gets_the_version() {
        let d = deployment(json!({"version": {"pinned": "2", "container": "proxy"}}));
        let pod = build(&d, Some("2"), &[]);
        assert_eq!(
            pod["spec"]["containers"][0]["image"],
            "registry.local:5000/acme/web:1.0"
        );
        assert_eq!(pod["spec"]["containers"][1]["image"], "envoy:2");
        let missing = deployment(json!({"version": {"pinned": "2", "container": "nope"}}));
        let new = NewPod {
            name: "p",
            slot: "s",
            revision: "r",
            version: Some("2"),
            data: &BTreeMap::new(),
        };
        let err = build_pod(&missing, new, &injection(), &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("spec.version.container"), "{err}");
    }

    #[test]
    fn image_tags_are_replaced_not_registry_ports() {
        assert_eq!(with_tag("web", "2"), "web:2");
        assert_eq!(with_tag("web:1", "2"), "web:2");
        assert_eq!(with_tag("host:5000/a/web", "2"), "host:5000/a/web:2");
        assert_eq!(
            with_tag("host:5000/a/web:1@sha256:ab", "2"),
            "host:5000/a/web:2"
        );
    }

    #[test]
    fn data_sources_inject_the_deployer_with_its_volumes() {
        let d = deployment(json!({"data": [
            {"name": "config", "source": {"git": {"url": "git://g/c"}}, "mountPath": "/etc/web"},
            {"name": "rules", "source": {"directory": {"path": "/r"}}, "mountPath": "/etc/web"}
        ]}));
        let pod = build(&d, None, &[("config", "c1"), ("rules", "r1")]);
        assert_eq!(
            pod["metadata"]["annotations"]["data.autocrane.io/config"],
            "c1"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["data.autocrane.io/rules"],
            "r1"
        );
        let spec = &pod["spec"];
        assert_eq!(
            spec["containers"][0]["volumeMounts"],
            json!([{"name": "autocrane-data", "mountPath": "/etc/web", "readOnly": true}])
        );
        let app_env = spec["containers"][0]["env"].as_array().unwrap();
        assert!(
            app_env.contains(&json!({"name": "AUTOCRANE_DATA_DIRS",
                "value": "/etc/web/config/current,/etc/web/rules/current"})),
            "the app learns where each source's live data is: {app_env:?}"
        );
        let init = &spec["initContainers"][0];
        assert_eq!(init["name"], "autocrane-data-init");
        assert_eq!(init["image"], "autocrane:0.1");
        let args: Vec<&str> = init["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "data-deployer",
                "init",
                "--repository",
                "http://repo:7070",
                "--root",
                "/autocrane/data",
                "--desired-file",
                "/autocrane/podinfo/annotations",
                "--source",
                "config=git-0123",
                "--source",
                "rules=rules",
                "--data-repository-token-file",
                "/autocrane/token/data-repository-token",
                "--watchdog-listener",
                "http://listener:7070",
                "--token-file",
                "/autocrane/token/token"
            ]
        );
        let sidecar = &spec["containers"][2];
        assert_eq!(sidecar["name"], "autocrane-data");
        assert_eq!(sidecar["args"][1], "sidecar");
        assert_eq!(
            sidecar["volumeMounts"],
            json!([
                {"name": "autocrane-data", "mountPath": "/autocrane/data", "readOnly": false},
                {"name": "autocrane-podinfo", "mountPath": "/autocrane/podinfo", "readOnly": true},
                {"name": "autocrane-token", "mountPath": "/autocrane/token", "readOnly": true}
            ])
        );
        assert_eq!(
            sidecar["env"][1]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            spec["volumes"],
            json!([
                {"name": "autocrane-data", "emptyDir": {}},
                {"name": "autocrane-podinfo", "downwardAPI": {"items": [
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}},
                {"name": "autocrane-token", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "autocrane-watchdog-listener",
                        "expirationSeconds": 3600, "path": "token"}},
                    {"serviceAccountToken": {"audience": "autocrane-data-repository",
                        "expirationSeconds": 3600, "path": "data-repository-token"}}]}}
            ])
        );
    }

    #[test]
    fn a_tls_secret_is_mounted_into_both_deployers_as_a_directory() {
        let d = deployment(json!({"data": [
            {"name": "config", "source": {"git": {"url": "git://g/c"}}, "mountPath": "/etc/web"}
        ]}));
        let injection = Injection {
            repository: Some("https://repo.autocrane-system.svc:7070".into()),
            watchdog_listener: Some("https://listener.autocrane-system.svc:7070".into()),
            tls_secret: Some("autocrane-data-deployer-tls".into()),
            ..injection()
        };
        let ids = BTreeMap::from([("config".to_string(), "git-0123".to_string())]);
        let data = BTreeMap::from([("config".to_string(), "c1".to_string())]);
        let new = NewPod {
            name: "web-abc12",
            slot: "web-0",
            revision: "r1",
            version: None,
            data: &data,
        };
        let pod = serde_json::to_value(build_pod(&d, new, &injection, &ids).unwrap()).unwrap();
        let spec = &pod["spec"];
        let sidecar = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "autocrane-data")
            .unwrap();
        for deployer in [&spec["initContainers"][0], sidecar] {
            assert!(
                deployer["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("autocrane-data")
            );
            let mounts = deployer["volumeMounts"].as_array().unwrap();
            // A directory mount, never `subPath`: the kubelet's updates must reach the files.
            assert!(mounts.contains(
                &json!({"name": "autocrane-tls", "mountPath": "/autocrane/tls", "readOnly": true})
            ));
            let env = deployer["env"].as_array().unwrap();
            for (name, value) in [
                ("AUTOCRANE_CLIENT_TLS_CA", "/autocrane/tls/ca.crt"),
                ("AUTOCRANE_CLIENT_TLS_CERT", "/autocrane/tls/tls.crt"),
                ("AUTOCRANE_CLIENT_TLS_KEY", "/autocrane/tls/tls.key"),
            ] {
                assert!(
                    env.contains(&json!({"name": name, "value": value})),
                    "{name}: {env:?}"
                );
            }
        }
        // The app container sees none of it.
        let app = serde_json::to_string(&spec["containers"][0]).unwrap();
        assert!(!app.contains("autocrane-tls"), "{app}");
        let volumes = spec["volumes"].as_array().unwrap();
        assert!(volumes.contains(&json!({"name": "autocrane-tls",
            "secret": {"secretName": "autocrane-data-deployer-tls"}})));
        // Without the flag, nothing of it.
        let plain = serde_json::to_string(&build(&d, None, &[("config", "c1")])).unwrap();
        assert!(!plain.contains("autocrane-tls"));
    }

    #[test]
    fn injected_containers_are_hardened() {
        let d = deployment(json!({"data": [
            {"name": "config", "source": {"git": {"url": "git://g/c"}}, "mountPath": "/etc/web"}
        ]}));
        let pod = build(&d, None, &[("config", "c1")]);
        for container in [
            &pod["spec"]["initContainers"][0],
            &pod["spec"]["containers"][2],
        ] {
            assert_eq!(
                container["securityContext"],
                json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                       "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                       "capabilities": {"drop": ["ALL"]},
                       "seccompProfile": {"type": "RuntimeDefault"}}),
                "{}",
                container["name"]
            );
        }
        // The user's containers are left as they are.
        assert!(
            pod["spec"]["containers"][0]
                .get("securityContext")
                .is_none()
        );
    }

    #[test]
    fn data_sources_without_a_repository_are_refused() {
        let d = deployment(json!({"data": [
            {"name": "config", "source": {"git": {"url": "git://g/c"}}, "mountPath": "/etc/web"}
        ]}));
        let mut inj = injection();
        inj.repository = None;
        let new = NewPod {
            name: "p",
            slot: "s",
            revision: "r",
            version: None,
            data: &BTreeMap::new(),
        };
        let err = build_pod(&d, new, &inj, &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("--data-repository"), "{err}");
    }
}
