//! Sidecar injection: what a pod gets to join the mesh, as Istio's injector gives it.
//!
//! * an init container `istio-init` running `weft iptables` (with the pod's
//!   `traffic.sidecar.istio.io/*` include and exclude annotations);
//! * the sidecar `istio-proxy` as a native sidecar (an init container with `restartPolicy:
//!   Always`, so it starts before the application and stops after it; its startup probe
//!   holds the application until the sidecar is ready), running `weft proxy`
//!   as user 1337 with the pod's projected service-account token (audience `istio-ca`) for
//!   its certificate, and the resources of the `sidecar.istio.io/proxyCPU`, `proxyMemory`,
//!   `proxyCPULimit` and `proxyMemoryLimit` annotations;
//! * the labels `security.istio.io/tlsMode: istio` (clients then use mTLS to it) and
//!   `service.istio.io/canonical-name`/`-revision`, and the `sidecar.istio.io/status`
//!   annotation that marks it injected: injecting twice changes nothing.
//!
//! [`decide`] says whether a pod is injected: never in `kube-system`, `kube-public` or the
//! control plane's namespace, nor with host networking; the pod's `sidecar.istio.io/inject`
//! label (then annotation) first, then the namespace's `istio-injection` or `istio.io/rev`
//! label.

use serde_json::{Map, Value, json};

/// The annotation that marks a pod as injected, with what was added.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Where the pod's token for the CA is mounted.
pub(super) const TOKEN_DIR: &str = "/var/run/secrets/tokens";

/// How to inject.
#[derive(Debug, Clone)]
pub struct Injector {
    /// The `weft` image of the init container and the sidecar.
    pub image: String,
    /// The control plane's xDS address, as the sidecar dials it.
    pub control: String,
    /// The control plane's namespace (never injected).
    pub control_namespace: String,
}

/// Whether and why (not) a pod is injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It gets a sidecar.
    Inject,
    /// It does not, for this reason.
    Skip(&'static str),
}

/// Whether a pod (its `metadata` and `spec`) in `namespace` gets a sidecar. `namespace_labels`
/// is `None` where the namespace is not known (`weft inject`, which injects unless told not
/// to, as `istioctl kube-inject` does).
pub fn decide(
    metadata: &Value,
    spec: &Value,
    namespace: &str,
    namespace_labels: Option<&Map<String, Value>>,
    control_namespace: &str,
) -> Decision {
    if ["kube-system", "kube-public", control_namespace].contains(&namespace) {
        return Decision::Skip("the namespace is never injected");
    }
    if spec["hostNetwork"] == true {
        return Decision::Skip("the pod uses the host's network");
    }
    let asked = metadata["labels"]["sidecar.istio.io/inject"]
        .as_str()
        .or_else(|| metadata["annotations"]["sidecar.istio.io/inject"].as_str());
    match asked {
        Some("false") => return Decision::Skip("sidecar.istio.io/inject is false"),
        Some("true") => return Decision::Inject,
        _ => {}
    }
    let Some(labels) = namespace_labels else {
        return Decision::Inject;
    };
    match labels.get("istio-injection").and_then(Value::as_str) {
        Some("enabled") => Decision::Inject,
        Some(_) => Decision::Skip("the namespace's istio-injection is not enabled"),
        None if labels.contains_key("istio.io/rev") => Decision::Inject,
        None => Decision::Skip("the namespace is not labelled istio-injection=enabled"),
    }
}

impl Injector {
    /// Adds the sidecar to a pod template (`{metadata, spec}`, or a Pod); a template already
    /// injected is left as it is. Errors name the annotation that cannot be read.
    pub fn inject(&self, template: &mut Value) -> Result<(), String> {
        if !template["metadata"].is_object() {
            template["metadata"] = json!({});
        }
        if template["metadata"]["annotations"][STATUS_ANNOTATION].is_string() {
            return Ok(());
        }
        let annotations = template["metadata"]["annotations"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let labels = template["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let spec = template["spec"]
            .as_object_mut()
            .ok_or("the pod template has no spec")?;
        let app_container = spec["containers"][0]["name"].as_str().map(str::to_string);

        let init = self.init_container(&annotations)?;
        let proxy = self.proxy_container(&labels, &annotations)?;
        let mut init_containers = vec![init, proxy];
        if let Some(Value::Array(existing)) = spec.remove("initContainers") {
            init_containers.extend(existing);
        }
        spec.insert("initContainers".into(), Value::Array(init_containers));
        let token = token_volume();
        match spec.get_mut("volumes") {
            Some(Value::Array(volumes)) => volumes.push(token),
            _ => {
                spec.insert("volumes".into(), json!([token]));
            }
        }

        let metadata = template["metadata"]
            .as_object_mut()
            .ok_or("the pod template's metadata is not an object")?;
        let labels_out = object_entry(metadata, "labels");
        labels_out.insert("security.istio.io/tlsMode".into(), "istio".into());
        let name = labels
            .get("app.kubernetes.io/name")
            .or_else(|| labels.get("app"))
            .cloned();
        if let Some(name) = name {
            labels_out
                .entry("service.istio.io/canonical-name")
                .or_insert(name);
        }
        let revision = labels
            .get("app.kubernetes.io/version")
            .or_else(|| labels.get("version"))
            .cloned()
            .unwrap_or_else(|| "latest".into());
        labels_out
            .entry("service.istio.io/canonical-revision")
            .or_insert(revision);
        let annotations_out = object_entry(metadata, "annotations");
        let status = json!({
            "initContainers": ["istio-init", "istio-proxy"],
            "containers": [],
            "volumes": ["istio-token"],
            "revision": "default",
        });
        annotations_out.insert(STATUS_ANNOTATION.into(), status.to_string().into());
        if let Some(app) = app_container {
            annotations_out
                .entry("kubectl.kubernetes.io/default-container")
                .or_insert(app.into());
        }
        Ok(())
    }

    fn init_container(&self, annotations: &Map<String, Value>) -> Result<Value, String> {
        let annotation = |name: &str| annotations.get(name).and_then(Value::as_str);
        let mut args: Vec<String> = ["iptables", "-p", "15001", "-z", "15006", "-u", "1337"]
            .map(String::from)
            .to_vec();
        for (name, flag) in [
            ("includeOutboundIPRanges", "-i"),
            ("excludeOutboundIPRanges", "-x"),
            ("excludeOutboundPorts", "-o"),
            ("includeOutboundPorts", "-q"),
            ("includeInboundPorts", "-b"),
            ("excludeInboundPorts", "-d"),
        ] {
            let key = format!("traffic.sidecar.istio.io/{name}");
            if let Some(value) = annotation(&key) {
                check_list(&key, value)?;
                args.push(flag.to_string());
                args.push(value.to_string());
            }
        }
        Ok(json!({
            "name": "istio-init",
            "image": self.image,
            "args": args,
            "resources": {
                "requests": {"cpu": "10m", "memory": "40Mi"},
                "limits": {"cpu": "2000m", "memory": "1024Mi"},
            },
            "securityContext": {
                "runAsUser": 0,
                "runAsGroup": 0,
                "runAsNonRoot": false,
                "privileged": false,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": false,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            },
        }))
    }

    fn proxy_container(
        &self,
        labels: &Map<String, Value>,
        annotations: &Map<String, Value>,
    ) -> Result<Value, String> {
        let annotation = |name: &str| annotations.get(name).and_then(Value::as_str);
        let labels = labels
            .iter()
            .filter_map(|(key, value)| Some(format!("{key}={}", value.as_str()?)))
            .collect::<Vec<String>>()
            .join(",");
        let mut args: Vec<String> = [
            "proxy",
            "--control",
            &self.control,
            "--name",
            "$(POD_NAME)",
            "--namespace",
            "$(POD_NAMESPACE)",
            "--service-account",
            "$(SERVICE_ACCOUNT)",
            "--instance-ip",
            "$(INSTANCE_IP)",
            "--bind",
            "0.0.0.0",
            "--token-file",
            &format!("{TOKEN_DIR}/istio-token"),
            "--labels",
            &labels,
        ]
        .map(String::from)
        .to_vec();
        if let Some(config) = annotation("proxy.istio.io/config") {
            args.extend(proxy_config_args(config)?);
        }
        let quantity = |name: &str, default: &str| -> Result<String, String> {
            let key = format!("sidecar.istio.io/{name}");
            match annotation(&key) {
                Some(value) if is_quantity(value) => Ok(value.to_string()),
                Some(value) => Err(format!("{key}: {value:?} is not a resource quantity")),
                None => Ok(default.to_string()),
            }
        };
        let env = pod_env();
        Ok(json!({
            "name": "istio-proxy",
            "image": self.image,
            "restartPolicy": "Always",
            "args": args,
            "env": env,
            "ports": [{"name": "http-envoy-prom", "containerPort": 15020, "protocol": "TCP"}],
            // The application starts once the sidecar has its certificate and configuration
            // (Istio's holdApplicationUntilProxyStarts, which a native sidecar's startup
            // probe gives).
            "startupProbe": readiness_probe(1, 600),
            "readinessProbe": readiness_probe(15, 4),
            "resources": {
                "requests": {"cpu": quantity("proxyCPU", "100m")?, "memory": quantity("proxyMemory", "128Mi")?},
                "limits": {"cpu": quantity("proxyCPULimit", "2000m")?, "memory": quantity("proxyMemoryLimit", "1024Mi")?},
            },
            "securityContext": {
                "runAsUser": 1337,
                "runAsGroup": 1337,
                "runAsNonRoot": true,
                "privileged": false,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "istio-token", "mountPath": TOKEN_DIR}],
        }))
    }
}

/// The pod's projected service-account token for the CA (audience `istio-ca`), mounted at
/// [`TOKEN_DIR`]`/istio-token`.
pub(super) fn token_volume() -> Value {
    json!({"name": "istio-token", "projected": {"sources": [
        {"serviceAccountToken": {"audience": super::tokens::AUDIENCE, "expirationSeconds": 43200, "path": "istio-token"}},
    ]}})
}

/// What a proxy knows of its pod, from the downward API: `POD_NAME`, `POD_NAMESPACE`,
/// `INSTANCE_IP`, `SERVICE_ACCOUNT`, `HOST_IP`.
pub(super) fn pod_env() -> Vec<Value> {
    [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("INSTANCE_IP", "status.podIP"),
        ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ("HOST_IP", "status.hostIP"),
    ]
    .iter()
    .map(|(name, path)| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}))
    .collect()
}

/// `weft proxy` flags for the `proxy.istio.io/config` fields Weft supports (`concurrency`,
/// `terminationDrainDuration`); any other field is refused, not ignored.
fn proxy_config_args(text: &str) -> Result<Vec<String>, String> {
    let key = "proxy.istio.io/config";
    let documents = weft_api::load::documents(text, &weft_api::load::Limits::default())
        .map_err(|error| format!("{key}: {error}"))?;
    let mut args = Vec::new();
    let Some(config) = documents.first() else {
        return Ok(args);
    };
    let fields = config
        .as_object()
        .ok_or_else(|| format!("{key}: not a ProxyConfig object"))?;
    for (field, value) in fields {
        match (field.as_str(), value) {
            ("concurrency", Value::Number(n)) if n.as_u64().is_some() => {
                args.extend(["--concurrency".to_string(), n.to_string()]);
            }
            ("terminationDrainDuration", Value::String(duration))
                if weft_api::Duration::parse(duration).is_ok() =>
            {
                args.extend(["--drain-duration".to_string(), duration.clone()]);
            }
            ("concurrency" | "terminationDrainDuration", other) => {
                return Err(format!("{key}: {field}: {other} is not valid"));
            }
            _ => {
                return Err(format!(
                    "{key}: {field} is not supported by Weft (supported: concurrency, terminationDrainDuration)"
                ));
            }
        }
    }
    Ok(args)
}

/// A probe of the sidecar's `/healthz/ready` on its metrics port.
fn readiness_probe(period_seconds: u32, failure_threshold: u32) -> Value {
    json!({
        "httpGet": {"path": "/healthz/ready", "port": 15020},
        "periodSeconds": period_seconds,
        "timeoutSeconds": 3,
        "failureThreshold": failure_threshold,
    })
}

/// A Kubernetes resource quantity: digits, an optional fraction, an optional suffix.
fn is_quantity(text: &str) -> bool {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    !number.is_empty()
        && number.parse::<f64>().is_ok()
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

/// A comma-separated list of CIDRs, ports or `*`, with nothing an argument could smuggle.
fn check_list(key: &str, value: &str) -> Result<(), String> {
    let valid = value
        .chars()
        .all(|c| c.is_ascii_hexdigit() || ".,/:*".contains(c) || c == ' ');
    if valid {
        Ok(())
    } else {
        Err(format!("{key}: {value:?} is not a list of ranges or ports"))
    }
}

fn object_entry<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = object.entry(key).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    match entry {
        Value::Object(map) => map,
        _ => unreachable!("made an object above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injector() -> Injector {
        Injector {
            image: "weft:test".into(),
            control: "weft-control.istio-system.svc:15010".into(),
            control_namespace: "istio-system".into(),
        }
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "metadata": {"name": "reviews-v1", "labels": {"app": "reviews", "version": "v1"}, "annotations": annotations},
            "spec": {"containers": [{"name": "reviews", "image": "reviews:1"}]},
        })
    }

    #[test]
    fn a_pod_gets_the_init_container_the_native_sidecar_and_the_token_volume() {
        let mut pod = pod(json!({}));
        injector().inject(&mut pod).expect("injected");
        let init = &pod["spec"]["initContainers"];
        assert_eq!(init[0]["name"], "istio-init");
        assert_eq!(init[0]["args"][0], "iptables");
        assert_eq!(init[1]["name"], "istio-proxy");
        assert_eq!(init[1]["restartPolicy"], "Always");
        assert_eq!(init[1]["securityContext"]["runAsUser"], 1337);
        assert_eq!(init[1]["startupProbe"]["httpGet"]["port"], 15020);
        let args: Vec<&str> = init[1]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--labels", "app=reviews,version=v1"])
        );
        assert_eq!(
            pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "istio-ca"
        );
        assert_eq!(
            pod["metadata"]["labels"]["security.istio.io/tlsMode"],
            "istio"
        );
        assert_eq!(
            pod["metadata"]["labels"]["service.istio.io/canonical-name"],
            "reviews"
        );
        assert_eq!(
            pod["metadata"]["labels"]["service.istio.io/canonical-revision"],
            "v1"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
            "reviews"
        );
        // The application container is untouched.
        assert_eq!(pod["spec"]["containers"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let mut once = pod(json!({}));
        injector().inject(&mut once).expect("injected");
        let mut twice = once.clone();
        injector().inject(&mut twice).expect("injected");
        assert_eq!(once, twice);
    }

    #[test]
    fn resource_and_traffic_annotations_reach_the_containers() {
        let mut pod = pod(json!({
            "sidecar.istio.io/proxyCPU": "100m",
            "sidecar.istio.io/proxyMemory": "512Mi",
            "sidecar.istio.io/proxyCPULimit": "2000m",
            "sidecar.istio.io/proxyMemoryLimit": "1Gi",
            "traffic.sidecar.istio.io/excludeOutboundPorts": "5432,6379",
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.96.0.0/12",
            "proxy.istio.io/config": "concurrency: 4\nterminationDrainDuration: 30s\n",
        }));
        injector().inject(&mut pod).expect("injected");
        let proxy = &pod["spec"]["initContainers"][1];
        assert_eq!(
            proxy["resources"],
            json!({"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"cpu": "2000m", "memory": "1Gi"}})
        );
        let args = proxy["args"].to_string();
        assert!(args.contains(r#""--concurrency","4""#), "{args}");
        assert!(args.contains(r#""--drain-duration","30s""#), "{args}");
        let iptables = pod["spec"]["initContainers"][0]["args"].to_string();
        assert!(iptables.contains(r#""-o","5432,6379""#), "{iptables}");
        assert!(iptables.contains(r#""-i","10.96.0.0/12""#), "{iptables}");
    }

    #[test]
    fn annotations_that_cannot_be_honoured_refuse_the_pod() {
        for (key, value) in [
            ("sidecar.istio.io/proxyMemory", "lots"),
            (
                "traffic.sidecar.istio.io/excludeOutboundPorts",
                "5432; rm -rf /",
            ),
            ("proxy.istio.io/config", "tracing: {zipkin: {address: x}}"),
            ("proxy.istio.io/config", "concurrency: many"),
        ] {
            let mut pod = pod(json!({ key: value }));
            let error = injector().inject(&mut pod).expect_err(value);
            assert!(error.contains(key), "{error}");
        }
    }

    #[test]
    fn the_pod_then_the_namespace_decide_and_system_namespaces_never_get_one() {
        let spec = json!({});
        let enabled = json!({"istio-injection": "enabled"});
        let enabled = enabled.as_object();
        let none = Map::new();
        let meta = |inject: Option<&str>| match inject {
            Some(value) => json!({"labels": {"sidecar.istio.io/inject": value}}),
            None => json!({}),
        };
        let decide = |m: &Value, ns: &str, labels: Option<&Map<String, Value>>| {
            decide(m, &spec, ns, labels, "istio-system")
        };
        assert_eq!(decide(&meta(None), "shop", enabled), Decision::Inject);
        assert!(matches!(
            decide(&meta(Some("false")), "shop", enabled),
            Decision::Skip(_)
        ));
        assert!(matches!(
            decide(&meta(None), "shop", Some(&none)),
            Decision::Skip(_)
        ));
        assert_eq!(
            decide(&meta(Some("true")), "shop", Some(&none)),
            Decision::Inject
        );
        assert!(matches!(
            decide(&meta(Some("true")), "kube-system", enabled),
            Decision::Skip(_)
        ));
        assert!(matches!(
            decide(&meta(Some("true")), "istio-system", enabled),
            Decision::Skip(_)
        ));
        assert_eq!(decide(&meta(None), "shop", None), Decision::Inject);
        let host = json!({"hostNetwork": true});
        assert!(matches!(
            super::decide(&meta(None), &host, "shop", enabled, "istio-system"),
            Decision::Skip(_)
        ));
    }
}
