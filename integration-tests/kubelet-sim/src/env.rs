//! Container environment and downward-API field resolution, as the kubelet does it: the
//! kubelet-provided variables first (`KUBERNETES_SERVICE_*`, `HOSTNAME`, a default `PATH`), then
//! `envFrom`, then `env` in order with `$(VAR)` expansion against what came before. Pure: the
//! ConfigMaps and Secrets a container references are fetched beforehand into [`Sources`].

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, ObjectFieldSelector, Pod};

/// ConfigMap and Secret data a pod references, keyed by name; `None` when the object does not
/// exist. Values are raw bytes (secrets decoded, configmap `binaryData` included).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// ConfigMaps by name.
    pub config_maps: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    /// Secrets by name.
    pub secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

/// Which kind of object a key reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

impl Sources {
    /// Look up one object's data. `Err` carries the kubelet's message (`configmap "x" not found`).
    pub fn object(
        &self,
        kind: SourceKind,
        name: &str,
    ) -> Result<&BTreeMap<String, Vec<u8>>, String> {
        let (map, word) = match kind {
            SourceKind::ConfigMap => (&self.config_maps, "configmap"),
            SourceKind::Secret => (&self.secrets, "secret"),
        };
        map.get(name)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("{word} \"{name}\" not found"))
    }

    /// One key of an object; `optional` references resolve to None when missing.
    pub fn key(
        &self,
        kind: SourceKind,
        ns: &str,
        name: &str,
        key: &str,
        optional: bool,
    ) -> Result<Option<Vec<u8>>, String> {
        let data = match self.object(kind, name) {
            Ok(d) => d,
            Err(_) if optional => return Ok(None),
            Err(e) => return Err(e),
        };
        match data.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {} {ns}/{name}",
                if kind == SourceKind::ConfigMap {
                    "ConfigMap"
                } else {
                    "Secret"
                }
            )),
        }
    }
}

/// What the kubelet knows besides the pod object: where the API server is, and the pod's IP.
#[derive(Debug, Clone)]
pub struct Runtime<'a> {
    /// `KUBERNETES_SERVICE_HOST`.
    pub service_host: &'a str,
    /// `KUBERNETES_SERVICE_PORT`.
    pub service_port: u16,
    /// The pod's IP (also written to `status.podIP`).
    pub pod_ip: &'a str,
    /// The node's IP.
    pub host_ip: &'a str,
}

/// The default `PATH` of a container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Resolve a container's environment. `Err` carries the message of a `CreateContainerConfigError`.
pub fn resolve(
    pod: &Pod,
    c: &Container,
    rt: &Runtime<'_>,
    src: &Sources,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    set(&mut env, "PATH".into(), DEFAULT_PATH.into());
    set(
        &mut env,
        "HOSTNAME".into(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    set(&mut env, "HOME".into(), "/root".into());
    let (h, p) = (rt.service_host, rt.service_port);
    set(&mut env, "KUBERNETES_SERVICE_HOST".into(), h.into());
    set(&mut env, "KUBERNETES_SERVICE_PORT".into(), p.to_string());
    set(
        &mut env,
        "KUBERNETES_SERVICE_PORT_HTTPS".into(),
        p.to_string(),
    );
    set(&mut env, "KUBERNETES_PORT".into(), format!("tcp://{h}:{p}"));
    set(
        &mut env,
        format!("KUBERNETES_PORT_{p}_TCP"),
        format!("tcp://{h}:{p}"),
    );
    set(
        &mut env,
        format!("KUBERNETES_PORT_{p}_TCP_PROTO"),
        "tcp".into(),
    );
    set(
        &mut env,
        format!("KUBERNETES_PORT_{p}_TCP_PORT"),
        p.to_string(),
    );
    set(&mut env, format!("KUBERNETES_PORT_{p}_TCP_ADDR"), h.into());
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = if let Some(r) = &from.config_map_ref {
            (
                SourceKind::ConfigMap,
                r.name.clone(),
                r.optional.unwrap_or(false),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                SourceKind::Secret,
                r.name.clone(),
                r.optional.unwrap_or(false),
            )
        } else {
            continue;
        };
        match src.object(kind, &name) {
            Ok(data) => {
                for (k, v) in data {
                    set(
                        &mut env,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(v).into_owned(),
                    );
                }
            }
            Err(_) if optional => {}
            Err(e) => return Err(e),
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            let v = if let Some(f) = &from.field_ref {
                Some(field(pod, f, rt)?)
            } else if let Some(r) = &from.config_map_key_ref {
                src.key(
                    SourceKind::ConfigMap,
                    ns,
                    &r.name,
                    &r.key,
                    r.optional.unwrap_or(false),
                )?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
            } else if let Some(r) = &from.secret_key_ref {
                src.key(
                    SourceKind::Secret,
                    ns,
                    &r.name,
                    &r.key,
                    r.optional.unwrap_or(false),
                )?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
            } else {
                // resourceFieldRef: no resource accounting here; the kubelet would report node
                // allocatable for unset limits. Left unset rather than invented.
                None
            };
            match v {
                Some(v) => v,
                None => continue,
            }
        } else {
            expand(e.value.as_deref().unwrap_or_default(), &env)
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

/// Expand `$(VAR)` references against `env`; `$$` is a literal `$`; unknown references stay.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("$(")
            && let Some(end) = t.find(')')
        {
            let name = &t[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..end + 3]),
            }
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Resolve a `fieldRef` for env or downward-API files.
pub fn field(pod: &Pod, f: &ObjectFieldSelector, rt: &Runtime<'_>) -> Result<String, String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let path = f.field_path.as_str();
    let by_key = |map: &Option<BTreeMap<String, String>>, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(v) = by_key(&m.labels, "metadata.labels['") {
        return Ok(v);
    }
    if let Some(v) = by_key(&m.annotations, "metadata.annotations['") {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(m.labels.as_ref()),
        "metadata.annotations" => format_map(m.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => rt.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => rt.host_ip.to_string(),
        other => return Err(format!("unsupported fieldPath: {other}")),
    })
}

/// The downward-API file format of a label or annotation map (`fieldpath.FormatMap`): sorted
/// `key="value"` lines, values quoted like Go's `%q`, no trailing newline.
pub fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote` for the characters that matter in labels and annotations.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "a", "tier": "web"}, "annotations": {"note": "say \"hi\"\n"}},
            "spec": {"nodeName": "sim-node", "serviceAccountName": "sa", "containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap()
    }

    fn rt() -> Runtime<'static> {
        Runtime {
            service_host: "127.0.0.1",
            service_port: 6443,
            pod_ip: "127.9.0.2",
            host_ip: "127.0.0.1",
        }
    }

    fn container(env: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "c", "image": "i", "env": env})).unwrap()
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn field_refs_resolve_like_the_kubelet() {
        let c = container(json!([
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        ]));
        let env = resolve(&pod(), &c, &rt(), &Sources::default()).unwrap();
        let want = [
            ("NAME", "p"),
            ("NS", "ns"),
            ("UID", "u-1"),
            ("IP", "127.9.0.2"),
            ("APP", "a"),
            ("NOTE", "say \"hi\"\n"),
            ("NODE", "sim-node"),
            ("SA", "sa"),
        ];
        for (k, v) in want {
            assert_eq!(get(&env, k), Some(v), "{k}");
        }
        assert_eq!(get(&env, "KUBERNETES_SERVICE_HOST"), Some("127.0.0.1"));
        assert_eq!(get(&env, "KUBERNETES_SERVICE_PORT"), Some("6443"));
    }

    #[test]
    fn config_map_and_secret_keys_resolve_and_missing_ones_fail_unless_optional() {
        let mut src = Sources::default();
        src.config_maps
            .insert("cm".into(), Some([("k".to_string(), b"v".to_vec())].into()));
        src.secrets.insert(
            "s".into(),
            Some([("pw".to_string(), b"hunter2".to_vec())].into()),
        );
        src.config_maps.insert("gone".into(), None);
        let c = container(json!([
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}},
        ]));
        let env = resolve(&pod(), &c, &rt(), &src).unwrap();
        assert_eq!(
            (get(&env, "A"), get(&env, "B"), get(&env, "C")),
            (Some("v"), Some("hunter2"), None)
        );
        let bad = container(
            json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}]),
        );
        assert_eq!(
            resolve(&pod(), &bad, &rt(), &src).unwrap_err(),
            "configmap \"gone\" not found"
        );
        let nokey = container(
            json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "x"}}}]),
        );
        assert_eq!(
            resolve(&pod(), &nokey, &rt(), &src).unwrap_err(),
            "couldn't find key x in ConfigMap ns/cm"
        );
    }

    #[test]
    fn values_expand_earlier_variables() {
        let c = container(
            json!([{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-$(NOPE)-$$(A)"}]),
        );
        let env = resolve(&pod(), &c, &rt(), &Sources::default()).unwrap();
        assert_eq!(get(&env, "B"), Some("x-$(NOPE)-$(A)"));
    }

    #[test]
    fn label_maps_are_formatted_as_sorted_go_quoted_lines() {
        let p = pod();
        assert_eq!(
            format_map(p.metadata.labels.as_ref()),
            "app=\"a\"\ntier=\"web\""
        );
        assert_eq!(
            format_map(p.metadata.annotations.as_ref()),
            "note=\"say \\\"hi\\\"\\n\""
        );
    }
}
