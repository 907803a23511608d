//! `GET …/pods/NAME/log`: the API server checks the request against the pod
//! (`pkg/registry/core/pod/strategy.go`, `LogLocation`) and the kubelet serves the container's
//! captured output. Here the kubelet part is any [`LogSource`] attached with
//! [`crate::KubeSim::serve_pod_logs`] (the `kube-sim` binary attaches the kubelet simulator's log
//! files; this library does not depend on it); without one (no kubelet runs) the pod has no host
//! to ask, as on a real cluster with the node gone.
//!
//! Supported: `container`, `previous`, `tailLines`, `limitBytes`. `follow` returns what was
//! written so far and ends (kubectl's `-f` then exits instead of streaming); `timestamps` and
//! `sinceSeconds`/`sinceTime` are ignored, the simulator keeps no per-line times.

use std::collections::HashMap;

use serde_json::Value;

use crate::status::ApiError;

/// Where `pods/log` reads containers' output: the kubelet's side of `kubectl logs`.
///
/// Any `Fn(namespace, pod, container, previous) -> Option<String>` closure is a source, so a
/// kubelet simulator plugs in without this crate depending on it:
///
/// ```no_run
/// # fn f(sim: &kube_sim::KubeSim) {
/// sim.serve_pod_logs(|_ns: &str, _pod: &str, _container: &str, _previous: bool| {
///     Some("hello\n".to_string())
/// });
/// # }
/// ```
pub trait LogSource: Send + Sync + 'static {
    /// A container's current output (with `previous`, the run before); None when there is no
    /// such pod, container or run.
    fn read(&self, namespace: &str, pod: &str, container: &str, previous: bool) -> Option<String>;
}

impl std::fmt::Debug for dyn LogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSource")
    }
}

impl<F> LogSource for F
where
    F: Fn(&str, &str, &str, bool) -> Option<String> + Send + Sync + 'static,
{
    fn read(&self, namespace: &str, pod: &str, container: &str, previous: bool) -> Option<String> {
        self(namespace, pod, container, previous)
    }
}

fn names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The container a request without `container` means, as the API server picks it.
fn container_of(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let containers = names(pod, "containers");
    let init = names(pod, "initContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().chain(&init).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// The count in `key`, at least `min`; otherwise `PodLogOptions "NAME" is invalid: tailLines:
/// Invalid value: -1: must be …`, as `ValidatePodLogOptions` reports it.
fn count_at_least(
    q: &HashMap<String, String>,
    key: &str,
    min: i64,
    pod_name: &str,
) -> Result<Option<usize>, ApiError> {
    let Some(v) = q.get(key) else {
        return Ok(None);
    };
    match v.parse::<i64>().ok().filter(|n| *n >= min) {
        Some(n) => Ok(usize::try_from(n).ok()),
        None => Err(ApiError::invalid(
            "PodLogOptions",
            "",
            pod_name,
            vec![crate::status::Cause {
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: {v}: must be {}",
                    if min == 0 {
                        "greater than or equal to 0"
                    } else {
                        "greater than 0"
                    }
                ),
                field: key.into(),
            }],
        )),
    }
}

/// The body of a `pods/log` GET for `pod` (the stored object); `None` for a pod not yet on a
/// node, which the real API server answers with 204 No Content.
pub(crate) fn pod_log(
    pod: &Value,
    q: &HashMap<String, String>,
    source: Option<&dyn LogSource>,
) -> Result<Option<String>, ApiError> {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let container = container_of(pod, name, q.get("container").map(String::as_str))?;
    let previous = q.get("previous").is_some_and(|v| v == "true");
    let tail = count_at_least(q, "tailLines", 0, name)?;
    let limit = count_at_least(q, "limitBytes", 1, name)?;
    let scheduled = pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    if !scheduled {
        return Ok(None);
    }
    let Some(source) = source else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let Some(text) = source.read(namespace, name, &container, previous) else {
        return Err(ApiError::bad_request(if previous {
            format!("previous terminated container \"{container}\" in pod \"{name}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            )
        }));
    };
    let mut text = match tail {
        Some(n) => {
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            lines[lines.len().saturating_sub(n)..].concat()
        }
        None => text,
    };
    if let Some(limit) = limit
        && text.len() > limit
    {
        let mut cut = limit;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Logs;
    impl LogSource for Logs {
        fn read(&self, ns: &str, pod: &str, container: &str, previous: bool) -> Option<String> {
            match (ns, pod, container, previous) {
                ("default", "web", "app", false) => Some("one\ntwo\nthree\n".into()),
                ("default", "web", "app", true) => Some("crashed\n".into()),
                _ => None,
            }
        }
    }

    fn pod(containers: &[&str], init: &[&str]) -> Value {
        let list = |names: &[&str]| {
            names
                .iter()
                .map(|n| json!({"name": n, "image": "x"}))
                .collect::<Vec<_>>()
        };
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"nodeName": "sim-node", "containers": list(containers), "initContainers": list(init)}})
    }

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn message(e: ApiError) -> String {
        e.to_status()["message"].as_str().unwrap().to_string()
    }

    #[test]
    fn the_only_container_is_the_default_and_tail_and_limit_cut_the_output() {
        let p = pod(&["app"], &[]);
        assert_eq!(
            pod_log(&p, &q(&[]), Some(&Logs)).unwrap().unwrap(),
            "one\ntwo\nthree\n"
        );
        assert_eq!(
            pod_log(&p, &q(&[("tailLines", "2")]), Some(&Logs))
                .unwrap()
                .unwrap(),
            "two\nthree\n"
        );
        assert_eq!(
            pod_log(&p, &q(&[("limitBytes", "5")]), Some(&Logs))
                .unwrap()
                .unwrap(),
            "one\nt"
        );
        assert_eq!(
            pod_log(&p, &q(&[("previous", "true")]), Some(&Logs))
                .unwrap()
                .unwrap(),
            "crashed\n"
        );
    }

    #[test]
    fn errors_say_what_the_api_server_says() {
        let two = pod(&["app", "sidecar"], &["init"]);
        assert_eq!(
            message(pod_log(&two, &q(&[]), Some(&Logs)).unwrap_err()),
            "a container name must be specified for pod web, choose one of: [app sidecar] or one of the init containers: [init]"
        );
        assert_eq!(
            message(pod_log(&two, &q(&[("container", "nope")]), Some(&Logs)).unwrap_err()),
            "container nope is not valid for pod web"
        );
        assert_eq!(
            message(pod_log(&two, &q(&[("container", "sidecar")]), Some(&Logs)).unwrap_err()),
            "container \"sidecar\" in pod \"web\" is waiting to start: ContainerCreating"
        );
        assert_eq!(
            message(
                pod_log(
                    &two,
                    &q(&[("container", "sidecar"), ("previous", "true")]),
                    Some(&Logs)
                )
                .unwrap_err()
            ),
            "previous terminated container \"sidecar\" in pod \"web\" not found"
        );
        assert_eq!(
            message(pod_log(&pod(&["app"], &[]), &q(&[]), None).unwrap_err()),
            "pod web does not have a host assigned"
        );
        let mut pending = pod(&["app"], &[]);
        pending["spec"]
            .as_object_mut()
            .map(|s| s.remove("nodeName"));
        assert_eq!(pod_log(&pending, &q(&[]), Some(&Logs)).unwrap(), None);
        let err = pod_log(&pod(&["app"], &[]), &q(&[("tailLines", "-1")]), Some(&Logs))
            .unwrap_err()
            .to_status();
        assert_eq!(err["code"], 422);
        assert_eq!(err["details"]["causes"][0]["field"], "tailLines");
        assert_eq!(
            err["message"],
            "PodLogOptions \"web\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"
        );
    }
}
