//! What `weft manifest generate` prints (and `weft install` applies): Istio's CRDs, the
//! control plane's objects and the sidecar-injection webhook, for one of Istio's install
//! profiles; `demo` adds Istio's ingress gateway.
//!
//! Objects come in the order they can be applied in: definitions, then the namespace, then
//! what lives in it.

use serde_json::{Value, json};

use super::crds::KINDS;

/// The namespace the control plane runs in, as Istio's.
pub const NAMESPACE: &str = "istio-system";
/// The name of the control plane's Deployment, Service, ServiceAccount and RBAC objects.
pub const CONTROL: &str = "weft-control";
/// The MutatingWebhookConfiguration of sidecar injection.
pub const INJECTOR_CONFIGURATION: &str = "weft-sidecar-injector";
/// The ValidatingWebhookConfiguration of Istio resources.
pub const VALIDATOR_CONFIGURATION: &str = "weft-validator";
/// The ingress gateway's Deployment and Service (profile `demo`), as Istio's.
pub const INGRESS_GATEWAY: &str = "istio-ingressgateway";
/// The label every generated object carries (`kubectl delete -l app.kubernetes.io/part-of=weft`).
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "weft");

/// An install profile, as Istio's `--set profile=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The CRDs and the control plane.
    Minimal,
    /// What most meshes run; today the same objects as `minimal`.
    Default,
    /// For trying the mesh out: the control plane asks for less CPU and memory, and an
    /// ingress gateway (`istio: ingressgateway`) comes with it.
    Demo,
}

impl Profile {
    /// The profile's name, as `--set profile=` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minimal => "minimal",
            Self::Default => "default",
            Self::Demo => "demo",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "minimal" => Ok(Self::Minimal),
            "default" => Ok(Self::Default),
            "demo" => Ok(Self::Demo),
            other => Err(format!(
                "unknown profile {other:?}; the profiles are minimal, default and demo"
            )),
        }
    }
}

/// What is installed besides the profile: the image and its version.
#[derive(Debug, Clone)]
pub struct Values {
    /// The install profile.
    pub profile: Profile,
    /// The container image of `weft` (`weft:<version>` unless `--set image=` says).
    pub image: String,
}

/// Every object of the install, in apply order.
pub fn generate(values: &Values) -> Vec<Value> {
    let mut objects: Vec<Value> = KINDS.iter().map(|kind| kind.definition()).collect();
    objects.push(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": labels(&[])},
    }));
    objects.push(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(CONTROL),
    }));
    objects.push(cluster_role());
    objects.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": CONTROL, "labels": labels(&[])},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONTROL},
        "subjects": [{"kind": "ServiceAccount", "name": CONTROL, "namespace": NAMESPACE}],
    }));
    objects.push(control_service());
    objects.push(control_deployment(values));
    objects.push(injection_webhooks());
    objects.push(validation_webhook());
    if values.profile == Profile::Demo {
        objects.extend(ingress_gateway(values));
    }
    objects
}

/// The control plane's plaintext xDS address inside the cluster, as proxies dial it.
pub fn control_xds_address() -> String {
    format!("{CONTROL}.{NAMESPACE}.svc:15010")
}

/// Istio's ingress gateway: `weft gateway` in a Deployment labelled `istio: ingressgateway`
/// (what Gateway resources select), behind a LoadBalancer Service on 80 and 443. The pod
/// may bind ports below 1024 as user 1337 (the `ip_unprivileged_port_start` sysctl, as
/// Istio's gateways do), so each Gateway port is the port the gateway listens on.
fn ingress_gateway(values: &Values) -> Vec<Value> {
    let account = format!("{INGRESS_GATEWAY}-service-account");
    let selector = json!({"app": INGRESS_GATEWAY, "istio": "ingressgateway"});
    let pod_labels = labels(&[("app", INGRESS_GATEWAY), ("istio", "ingressgateway")]);
    let token = format!("{}/istio-token", super::inject::TOKEN_DIR);
    let args = [
        "gateway",
        "--control",
        &control_xds_address(),
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
        &token,
        "--labels",
        "app=istio-ingressgateway,istio=ingressgateway",
    ];
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": INGRESS_GATEWAY, "namespace": NAMESPACE, "labels": pod_labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {"sidecar.istio.io/inject": "false"},
                },
                "spec": {
                    "serviceAccountName": account,
                    "securityContext": {
                        "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
                    },
                    "containers": [{
                        "name": "istio-proxy",
                        "image": values.image,
                        "args": args,
                        "env": super::inject::pod_env(),
                        "ports": [
                            {"name": "http2", "containerPort": 80},
                            {"name": "https", "containerPort": 443},
                            {"name": "http-envoy-prom", "containerPort": 15020},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15020}},
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "40Mi"},
                            "limits": {"cpu": "2000m", "memory": "1024Mi"},
                        },
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": 1337,
                            "runAsGroup": 1337,
                            "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "istio-token", "mountPath": super::inject::TOKEN_DIR}],
                    }],
                    "volumes": [super::inject::token_volume()],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": INGRESS_GATEWAY, "namespace": NAMESPACE, "labels": pod_labels},
        "spec": {
            "type": "LoadBalancer",
            "selector": selector,
            "ports": [
                {"name": "http2", "port": 80, "protocol": "TCP"},
                {"name": "https", "port": 443, "protocol": "TCP"},
            ],
        },
    });
    let service_account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": account, "namespace": NAMESPACE, "labels": labels(&[("app", INGRESS_GATEWAY)])},
    });
    vec![service_account, deployment, service]
}

/// Istio's resources are checked when written, with the analyzer's messages. Its
/// `failurePolicy` is `Ignore`, as Istio's: with the control plane down they can still be
/// written, and the control plane keeps the last valid version of one that is invalid.
fn validation_webhook() -> Value {
    let mut groups: Vec<&str> = KINDS.iter().map(|kind| kind.group).collect();
    groups.dedup();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATOR_CONFIGURATION, "labels": labels(&[])},
        "webhooks": [{
            "name": "validation.istio.io",
            "clientConfig": {"service": {"name": CONTROL, "namespace": NAMESPACE, "path": "/validate", "port": 443}},
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": groups, "apiVersions": ["*"], "resources": ["*"]}],
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }],
    })
}

/// Istio's two injection webhooks: pods in namespaces labelled `istio-injection=enabled`
/// (unless the pod says `sidecar.istio.io/inject: "false"`), and pods labelled
/// `sidecar.istio.io/inject: "true"` in namespaces without the label. System namespaces are
/// never sent. `failurePolicy: Fail`: with the webhook down such pods are refused rather
/// than started outside the mesh. The control plane fills in the `caBundle`.
fn injection_webhooks() -> Value {
    let never = json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-public", NAMESPACE]});
    let webhook = |name: &str, namespaces: Value, objects: Value| {
        json!({
            "name": name,
            "clientConfig": {"service": {"name": CONTROL, "namespace": NAMESPACE, "path": "/inject", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchExpressions": namespaces},
            "objectSelector": {"matchExpressions": objects},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 10,
        })
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": INJECTOR_CONFIGURATION, "labels": labels(&[])},
        "webhooks": [
            webhook(
                "namespace.sidecar-injector.istio.io",
                json!([{"key": "istio-injection", "operator": "In", "values": ["enabled"]}, never]),
                json!([{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]),
            ),
            webhook(
                "object.sidecar-injector.istio.io",
                json!([
                    {"key": "istio-injection", "operator": "DoesNotExist"},
                    {"key": "istio.io/rev", "operator": "DoesNotExist"},
                    never,
                ]),
                json!([{"key": "sidecar.istio.io/inject", "operator": "In", "values": ["true"]}]),
            ),
        ],
    })
}

/// What the control plane reads (Istio's resources and the registry's kinds), writes (the
/// status of Istio's resources) and asks (whose a pod's token is, for the CA).
fn cluster_role() -> Value {
    let mut istio_groups: Vec<&str> = KINDS.iter().map(|kind| kind.group).collect();
    istio_groups.dedup();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": CONTROL, "labels": labels(&[])},
        "rules": [
            {"apiGroups": istio_groups, "resources": ["*"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": istio_groups, "resources": ["*/status"], "verbs": ["get", "update", "patch"]},
            {"apiGroups": [""], "resources": ["services", "pods", "namespaces", "nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"], "verbs": ["get", "list", "watch", "update", "patch"]},
        ],
    })
}

/// The control plane's ports under Istio's numbers and names: plaintext xDS, xDS and the
/// CA over TLS, the debug pages and the injection webhook.
fn control_service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(CONTROL),
        "spec": {
            "selector": {"app": CONTROL},
            "ports": [
                {"name": "grpc-xds", "port": 15010, "protocol": "TCP"},
                {"name": "https-dns", "port": 15012, "protocol": "TCP"},
                {"name": "http-monitoring", "port": 15014, "protocol": "TCP"},
                {"name": "https-webhook", "port": 443, "targetPort": 15017, "protocol": "TCP"},
            ],
        },
    })
}

fn control_deployment(values: &Values) -> Value {
    let (cpu, memory) = match values.profile {
        Profile::Demo => ("10m", "64Mi"),
        Profile::Minimal | Profile::Default => ("100m", "256Mi"),
    };
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(CONTROL),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": CONTROL}},
            "template": {
                "metadata": {
                    "labels": labels(&[("app", CONTROL)]),
                    "annotations": {"sidecar.istio.io/inject": "false"},
                },
                "spec": {
                    "serviceAccountName": CONTROL,
                    "containers": [{
                        "name": "control",
                        "image": values.image,
                        "args": [
                            "control", "--kubernetes", "--state-dir", "/var/lib/weft",
                            "--xds-addr", "0.0.0.0:15010",
                            "--xds-tls-addr", "0.0.0.0:15012",
                            "--tls-name", format!("{CONTROL}.{NAMESPACE}.svc"),
                            "--debug-addr", "0.0.0.0:15014",
                            "--webhook-addr", "0.0.0.0:15017",
                            "--sidecar-image", values.image,
                        ],
                        "ports": [
                            {"name": "grpc-xds", "containerPort": 15010},
                            {"name": "https-dns", "containerPort": 15012},
                            {"name": "http-monitoring", "containerPort": 15014},
                            {"name": "https-webhook", "containerPort": 15017},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 15014}},
                        "resources": {"requests": {"cpu": cpu, "memory": memory}},
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": 1337,
                            "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "state", "mountPath": "/var/lib/weft"}],
                    }],
                    "volumes": [{"name": "state", "emptyDir": {}}],
                },
            },
        },
    })
}

fn metadata(name: &str) -> Value {
    json!({"name": name, "namespace": NAMESPACE, "labels": labels(&[("app", name)])})
}

fn labels(extra: &[(&str, &str)]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(PART_OF.0.to_string(), Value::from(PART_OF.1));
    for (key, value) in extra {
        labels.insert((*key).to_string(), Value::from(*value));
    }
    Value::Object(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crds_come_before_the_namespace_and_the_namespace_before_what_lives_in_it() {
        let values = Values {
            profile: Profile::Default,
            image: "weft:test".to_string(),
        };
        let objects = generate(&values);
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        let namespace = kinds.iter().position(|k| *k == "Namespace");
        let last_crd = kinds.iter().rposition(|k| *k == "CustomResourceDefinition");
        assert!(last_crd < namespace, "{kinds:?}");
        for object in &objects {
            assert_eq!(object["metadata"]["labels"][PART_OF.0], PART_OF.1);
            if let Some(ns) = object["metadata"]["namespace"].as_str() {
                assert_eq!(ns, NAMESPACE);
            }
        }
    }

    #[test]
    fn only_the_demo_profile_has_the_ingress_gateway() {
        let names = |profile| {
            let values = Values {
                profile,
                image: "weft:test".to_string(),
            };
            generate(&values)
                .iter()
                .filter(|o| o["metadata"]["name"] == INGRESS_GATEWAY)
                .filter_map(|o| o["kind"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Profile::Demo), ["Deployment", "Service"]);
        assert!(names(Profile::Default).is_empty());
        assert!(names(Profile::Minimal).is_empty());
    }

    #[test]
    fn an_unknown_profile_is_refused_with_the_known_ones() {
        let error = "ambient".parse::<Profile>().expect_err("unknown");
        assert!(error.contains("minimal, default and demo"), "{error}");
    }
}
