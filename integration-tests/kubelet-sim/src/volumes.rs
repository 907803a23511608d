//! Pod volumes: what each volume contains (pure payload computation) and where each container
//! sees it. `emptyDir` is a plain per-pod directory; `downwardAPI`, `configMap`, `secret` and
//! `projected` volumes are written with the [atomic writer](crate::atomic_writer); every container
//! also gets the service-account volume (token, `ca.crt`, `namespace`) at
//! `/var/run/secrets/kubernetes.io/serviceaccount`, which the API server's admission would add as
//! a projected volume in a real cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume};

use crate::atomic_writer::{FileProjection, Payload};
use crate::env::{self, Runtime, SourceKind, Sources};
use crate::runtime::Mount;

/// Where the service-account volume is mounted.
pub const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The name of the synthesized service-account volume.
pub const SA_VOLUME: &str = "kube-api-access-sim";
/// Expiry the kubelet asks for the default service-account token (seconds).
pub const SA_TOKEN_SECONDS: i64 = 3607;

/// A token the pod needs: audience (None: the API server) and requested lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenKey {
    /// Audience, None for the API server's.
    pub audience: Option<String>,
    /// `expirationSeconds`.
    pub expiration_seconds: i64,
}

/// What to put in one volume's directory.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A plain directory (emptyDir): created once, never rewritten.
    Dir,
    /// A host directory (hostPath): bound as is.
    Host(PathBuf),
    /// Files written atomically.
    Files(Payload),
}

/// Names of the ConfigMaps and Secrets the pod's volumes and containers reference.
pub fn referenced(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut cms, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    let Some(spec) = &pod.spec else {
        return (cms, secrets);
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.insert(c.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(s);
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &src.config_map {
                cms.insert(c.name.clone());
            }
            if let Some(s) = &src.secret {
                secrets.insert(s.name.clone());
            }
        }
    }
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        for e in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(r) = &e.config_map_key_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &e.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &f.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// Whether the pod gets the synthesized service-account volume: `automountServiceAccountToken`
/// not false, and the API server's ServiceAccount admission has not already added its
/// `kube-api-access-*` projected volume (a real API server does; then that volume is used).
pub fn automount(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    spec.automount_service_account_token != Some(false)
        && !spec.volumes.iter().flatten().any(|v| {
            v.name.starts_with("kube-api-access-") && v.name != SA_VOLUME && v.projected.is_some()
        })
}

/// The tokens the pod's volumes need.
pub fn tokens_needed(pod: &Pod) -> BTreeSet<TokenKey> {
    let mut keys = BTreeSet::new();
    if automount(pod) {
        keys.insert(TokenKey {
            audience: None,
            expiration_seconds: SA_TOKEN_SECONDS,
        });
    }
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(t) = &src.service_account_token {
                keys.insert(TokenKey {
                    audience: t.audience.clone().filter(|a| !a.is_empty()),
                    expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                });
            }
        }
    }
    keys
}

/// Everything a volume payload can be computed from.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The pod's IP, node IP, API server.
    pub rt: &'a Runtime<'a>,
    /// Fetched ConfigMaps and Secrets.
    pub sources: &'a Sources,
    /// Tokens by key.
    pub tokens: &'a HashMap<TokenKey, String>,
    /// The cluster CA (PEM).
    pub ca_pem: &'a str,
}

/// The content of every volume of the pod (plus the service-account volume), by volume name.
/// `Err` carries a mount failure message (`configmap "x" not found`).
pub fn contents(pod: &Pod, inp: &Inputs<'_>) -> Result<BTreeMap<String, Content>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        out.insert(v.name.clone(), content(pod, ns, v, inp)?);
    }
    if automount(pod) {
        let mut p = Payload::new();
        let key = TokenKey {
            audience: None,
            expiration_seconds: SA_TOKEN_SECONDS,
        };
        let token = inp
            .tokens
            .get(&key)
            .ok_or("service account token not issued yet")?;
        p.insert("token".into(), file(token.as_bytes(), 0o644));
        p.insert("ca.crt".into(), file(inp.ca_pem.as_bytes(), 0o644));
        p.insert("namespace".into(), file(ns.as_bytes(), 0o644));
        out.insert(SA_VOLUME.into(), Content::Files(p));
    }
    Ok(out)
}

fn file(data: &[u8], mode: i32) -> FileProjection {
    FileProjection {
        data: data.to_vec(),
        mode: u32::try_from(mode).unwrap_or(0o644) & 0o7777,
    }
}

fn content(pod: &Pod, ns: &str, v: &Volume, inp: &Inputs<'_>) -> Result<Content, String> {
    if v.empty_dir.is_some() {
        return Ok(Content::Dir);
    }
    if let Some(h) = &v.host_path {
        return Ok(Content::Host(PathBuf::from(&h.path)));
    }
    let mut p = Payload::new();
    if let Some(d) = &v.downward_api {
        downward(
            pod,
            d.items.iter().flatten(),
            d.default_mode.unwrap_or(0o644),
            inp,
            &mut p,
        )?;
    } else if let Some(c) = &v.config_map {
        keys(
            inp.sources,
            SourceKind::ConfigMap,
            ns,
            &c.name,
            c.items.as_deref(),
            c.default_mode.unwrap_or(0o644),
            c.optional.unwrap_or(false),
            &mut p,
        )?;
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        keys(
            inp.sources,
            SourceKind::Secret,
            ns,
            &name,
            s.items.as_deref(),
            s.default_mode.unwrap_or(0o644),
            s.optional.unwrap_or(false),
            &mut p,
        )?;
    } else if let Some(pr) = &v.projected {
        let mode = pr.default_mode.unwrap_or(0o644);
        for src in pr.sources.iter().flatten() {
            if let Some(d) = &src.downward_api {
                downward(pod, d.items.iter().flatten(), mode, inp, &mut p)?;
            }
            if let Some(c) = &src.config_map {
                keys(
                    inp.sources,
                    SourceKind::ConfigMap,
                    ns,
                    &c.name,
                    c.items.as_deref(),
                    mode,
                    c.optional.unwrap_or(false),
                    &mut p,
                )?;
            }
            if let Some(s) = &src.secret {
                keys(
                    inp.sources,
                    SourceKind::Secret,
                    ns,
                    &s.name,
                    s.items.as_deref(),
                    mode,
                    s.optional.unwrap_or(false),
                    &mut p,
                )?;
            }
            if let Some(t) = &src.service_account_token {
                let key = TokenKey {
                    audience: t.audience.clone().filter(|a| !a.is_empty()),
                    expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                };
                let token = inp
                    .tokens
                    .get(&key)
                    .ok_or("service account token not issued yet")?;
                p.insert(t.path.clone(), file(token.as_bytes(), mode));
            }
        }
    } else {
        return Err(format!(
            "volume {:?}: only emptyDir, hostPath, downwardAPI, configMap, secret and projected volumes are simulated",
            v.name
        ));
    }
    Ok(Content::Files(p))
}

fn downward<'a>(
    pod: &Pod,
    items: impl Iterator<Item = &'a DownwardAPIVolumeFile>,
    default_mode: i32,
    inp: &Inputs<'_>,
    p: &mut Payload,
) -> Result<(), String> {
    for item in items {
        let Some(f) = &item.field_ref else { continue };
        let value = env::field(pod, f, inp.rt)?;
        p.insert(
            item.path.clone(),
            file(value.as_bytes(), item.mode.unwrap_or(default_mode)),
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn keys(
    src: &Sources,
    kind: SourceKind,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    mode: i32,
    optional: bool,
    p: &mut Payload,
) -> Result<(), String> {
    let data = match src.object(kind, name) {
        Ok(d) => d,
        Err(_) if optional => return Ok(()),
        Err(e) => return Err(e),
    };
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        p.insert(it.path.clone(), file(v, it.mode.unwrap_or(mode)));
                    }
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "configmap references non-existent config key: {} ({ns}/{name})",
                            it.key
                        ));
                    }
                }
            }
        }
        _ => {
            for (k, v) in data {
                p.insert(k.clone(), file(v, mode));
            }
        }
    }
    Ok(())
}

/// The mounts of one container: its `volumeMounts` (host dir `volumes/<name>`, or the hostPath)
/// plus the service-account volume unless the container mounts something there itself.
/// `subPath` is not simulated: such a mount gets the whole volume.
pub fn mounts(pod: &Pod, c: &Container, volume_root: &Path) -> Vec<Mount> {
    let host_path = |name: &str| -> PathBuf {
        pod.spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| PathBuf::from(&h.path))
            .unwrap_or_else(|| volume_root.join(name))
    };
    let mut out: Vec<Mount> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| Mount {
            source: host_path(&m.name),
            target: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
        })
        .collect();
    if automount(pod)
        && !out
            .iter()
            .any(|m| m.target.trim_end_matches('/') == SA_MOUNT)
    {
        out.push(Mount {
            source: volume_root.join(SA_VOLUME),
            target: SA_MOUNT.into(),
            read_only: true,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"a": "1"}, "annotations": {"x": "y"}},
            "spec": {"containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "info", "mountPath": "/etc/info"}]}], "volumes": volumes}
        }))
        .unwrap()
    }

    fn files(c: &Content) -> BTreeMap<String, String> {
        match c {
            Content::Files(p) => p
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8(v.data.clone()).unwrap()))
                .collect(),
            other => panic!("not files: {other:?}"),
        }
    }

    #[test]
    fn downward_api_and_service_account_volumes_have_the_kubelet_files() {
        let p = pod(json!([{"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        ]}}]));
        let rt = Runtime {
            service_host: "127.0.0.1",
            service_port: 1,
            pod_ip: "127.1.0.2",
            host_ip: "127.0.0.1",
        };
        let tokens = [(
            TokenKey {
                audience: None,
                expiration_seconds: SA_TOKEN_SECONDS,
            },
            "tok".to_string(),
        )]
        .into();
        let inp = Inputs {
            rt: &rt,
            sources: &Sources::default(),
            tokens: &tokens,
            ca_pem: "CA",
        };
        let c = contents(&p, &inp).unwrap();
        assert_eq!(
            files(&c["info"]),
            [
                ("annotations".to_string(), "x=\"y\"".to_string()),
                ("labels".into(), "a=\"1\"".into())
            ]
            .into()
        );
        assert_eq!(
            files(&c[SA_VOLUME]),
            [
                ("ca.crt".to_string(), "CA".to_string()),
                ("namespace".into(), "ns".into()),
                ("token".into(), "tok".into())
            ]
            .into()
        );
        let m = mounts(&p, &p.spec.as_ref().unwrap().containers[0], Path::new("/v"));
        assert_eq!(m.len(), 2);
        assert_eq!((m[1].target.as_str(), m[1].read_only), (SA_MOUNT, true));
    }

    #[test]
    fn a_missing_config_map_fails_the_mount_unless_optional() {
        let rt = Runtime {
            service_host: "h",
            service_port: 1,
            pod_ip: "i",
            host_ip: "h",
        };
        let tokens = HashMap::new();
        let mut src = Sources::default();
        src.config_maps.insert("cm".into(), None);
        let inp = Inputs {
            rt: &rt,
            sources: &src,
            tokens: &tokens,
            ca_pem: "",
        };
        let mut p = pod(json!([{"name": "info", "configMap": {"name": "cm"}}]));
        p.spec.as_mut().unwrap().automount_service_account_token = Some(false);
        assert_eq!(
            contents(&p, &inp).unwrap_err(),
            "configmap \"cm\" not found"
        );
        let mut p = pod(json!([{"name": "info", "configMap": {"name": "cm", "optional": true}}]));
        p.spec.as_mut().unwrap().automount_service_account_token = Some(false);
        assert_eq!(
            contents(&p, &inp).unwrap()["info"],
            Content::Files(Payload::new())
        );
    }
}
