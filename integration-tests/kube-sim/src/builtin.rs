//! Defaults and light validation of built-in kinds (pods, secrets, namespaces, services, CRDs), as the
//! real registry strategies apply them on create and update.

use serde_json::{Value, json};

use crate::resources::ResourceType;
use crate::status::Cause;
use crate::verbs::now;

/// Built-in defaults and validation.
pub(crate) fn builtin_prepare(
    rt: &ResourceType,
    obj: &mut Value,
    create: bool,
) -> Result<(), Vec<Cause>> {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => {
            let containers = obj["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if containers.is_empty() {
                return Err(vec![Cause {
                    reason: "FieldValueRequired",
                    message: "Required value".into(),
                    field: "spec.containers".into(),
                }]);
            }
            let mut causes = Vec::new();
            for (i, c) in containers.iter().enumerate() {
                for f in ["name", "image"] {
                    if c[f].as_str().is_none_or(str::is_empty) {
                        causes.push(Cause {
                            reason: "FieldValueRequired",
                            message: "Required value".into(),
                            field: format!("spec.containers[{i}].{f}"),
                        });
                    }
                }
            }
            if !causes.is_empty() {
                return Err(causes);
            }
            if create {
                let spec = obj["spec"].as_object_mut().expect("spec");
                spec.entry("restartPolicy").or_insert(json!("Always"));
                spec.entry("terminationGracePeriodSeconds")
                    .or_insert(json!(30));
                spec.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
                spec.entry("schedulerName")
                    .or_insert(json!("default-scheduler"));
                spec.entry("serviceAccountName").or_insert(json!("default"));
                spec.entry("securityContext").or_insert(json!({}));
                spec.entry("enableServiceLinks").or_insert(json!(true));
                for c in spec
                    .get_mut("containers")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    let img = c["image"].as_str().unwrap_or_default().to_string();
                    let tag_latest = !img.rsplit('/').next().unwrap_or_default().contains(':')
                        || img.ends_with(":latest");
                    let c = c.as_object_mut().expect("container");
                    c.entry("imagePullPolicy").or_insert(json!(if tag_latest {
                        "Always"
                    } else {
                        "IfNotPresent"
                    }));
                    c.entry("terminationMessagePath")
                        .or_insert(json!("/dev/termination-log"));
                    c.entry("terminationMessagePolicy").or_insert(json!("File"));
                    c.entry("resources").or_insert(json!({}));
                }
                if obj["status"]["phase"].is_null() {
                    obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
                }
            }
        }
        ("", "Secret") => {
            // `stringData` is write-only: its keys are base64-encoded into `data` (overriding
            // keys there) and it is never stored, as the Secret strategy does on create and update.
            if let Some(Value::Object(plain)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                use base64::Engine;
                let mut data = obj["data"].as_object().cloned().unwrap_or_default();
                for (key, value) in plain {
                    let text = value.as_str().unwrap_or_default();
                    data.insert(
                        key,
                        json!(base64::engine::general_purpose::STANDARD.encode(text)),
                    );
                }
                obj["data"] = Value::Object(data);
            }
            if create && obj["type"].as_str().is_none_or(str::is_empty) {
                obj["type"] = json!("Opaque");
            }
        }
        ("", "Namespace") if create => {
            let name = obj["metadata"]["name"].clone();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        ("", "Service") if create => {
            let spec = obj["spec"].as_object_mut().ok_or_else(|| {
                vec![Cause {
                    reason: "FieldValueRequired",
                    message: "Required value".into(),
                    field: "spec".into(),
                }]
            })?;
            spec.entry("type").or_insert(json!("ClusterIP"));
            let ip = format!(
                "10.96.{}.{}",
                rand::random::<u8>(),
                rand::random::<u8>().max(1)
            );
            if spec.get("clusterIP").is_none() {
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
            }
            spec.entry("sessionAffinity").or_insert(json!("None"));
            obj["status"] = json!({"loadBalancer": {}});
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let s = &obj["spec"];
            let (plural, group) = (
                s["names"]["plural"].as_str().unwrap_or_default(),
                s["group"].as_str().unwrap_or_default(),
            );
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            if name != format!("{plural}.{group}") {
                return Err(vec![Cause {
                    reason: "FieldValueInvalid",
                    message: format!(
                        "Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
                    ),
                    field: "metadata.name".into(),
                }]);
            }
            if s["versions"].as_array().is_none_or(Vec::is_empty) {
                return Err(vec![Cause {
                    reason: "FieldValueRequired",
                    message:
                        "Required value: must have exactly one version marked as storage version"
                            .into(),
                    field: "spec.versions".into(),
                }]);
            }
            let names = s["names"].clone();
            obj["status"] = json!({
                "acceptedNames": names, "storedVersions": s["versions"].as_array().into_iter().flatten().filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>(),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()}
                ]
            });
        }
        _ => {}
    }
    Ok(())
}
