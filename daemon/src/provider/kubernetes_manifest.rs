//! The objects the kubernetes provider creates, built as pure JSON from the cloud.yaml (no
//! cluster needed, so every rule is unit-tested): one bare Pod (the daemon owns restarts, so
//! `restartPolicy: Never`), one ReadWriteOnce PersistentVolumeClaim for the workspace, a
//! ConfigMap with the rendered entrypoint, and a Secret with the secret values that the pod
//! reads through `envFrom` (never literal in the pod spec). Also the readiness reading of a
//! pod's status, with the reason shown while it is not ready.

use crate::cloud_yaml::{CloudSpec, Kubernetes};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The label every object the daemon creates carries (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "megaplan-cloudd";
/// The label naming the registration (a digest of the cloud.yaml's key; label values are short).
pub const REGISTRATION_LABEL: &str = "megaplan-cloudd/registration";
/// The annotation holding the digest of what the pod runs (spec, entrypoint, secret names).
pub const DIGEST_ANNOTATION: &str = "megaplan-cloudd/spec-digest";
/// The annotation naming the cloud.yaml the pod belongs to.
pub const CLOUD_YAML_ANNOTATION: &str = "megaplan-cloudd/cloud-yaml";
/// The runner container's name.
pub const CONTAINER: &str = "agent";
/// Where the ConfigMap with `entrypoint.sh` and `health_server.py` is mounted.
pub const ENTRYPOINT_DIR: &str = "/opt/megaplan-cloud";

/// The names of one cloud.yaml's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub namespace: String,
    pub pod: String,
    pub pvc: String,
    pub config_map: String,
    pub secret: String,
    /// The registration label's value.
    pub registration: String,
}

/// The first `n` hex digits of the SHA-256 of `text`.
fn hex_digest(text: &[u8], n: usize) -> String {
    let d = hex::encode(Sha256::digest(text));
    d[..n.min(d.len())].to_string()
}

/// The names for `spec`: `kubernetes.name`, else `megaplan-<12 hex of the registration key>`.
pub fn names(spec: &CloudSpec, k: &Kubernetes) -> Names {
    let key = spec.key();
    let base = k
        .name
        .clone()
        .unwrap_or_else(|| format!("megaplan-{}", hex_digest(key.as_bytes(), 12)));
    Names {
        namespace: k.namespace.clone(),
        pvc: format!("{base}-workspace"),
        config_map: format!("{base}-entrypoint"),
        secret: format!("{base}-env"),
        registration: hex_digest(key.as_bytes(), 40),
        pod: base,
    }
}

/// The labels of every object (the selector `destroy` and the tests use).
pub fn labels(names: &Names) -> Value {
    json!({
        MANAGED_BY_LABEL: MANAGED_BY,
        REGISTRATION_LABEL: names.registration,
    })
}

/// `app.kubernetes.io/managed-by=megaplan-cloudd,megaplan-cloudd/registration=<digest>`.
pub fn label_selector(names: &Names) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY},{REGISTRATION_LABEL}={}",
        names.registration
    )
}

fn metadata(names: &Names, name: &str) -> Value {
    json!({"name": name, "namespace": names.namespace, "labels": labels(names)})
}

/// The workspace claim: ReadWriteOnce, `kubernetes.storage`, `kubernetes.storage_class`.
pub fn pvc(names: &Names, k: &Kubernetes) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": k.storage}},
    });
    if let (Some(class), Some(o)) = (&k.storage_class, spec.as_object_mut()) {
        o.insert("storageClassName".into(), json!(class));
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(names, &names.pvc),
        "spec": spec,
    })
}

/// The ConfigMap carrying the rendered files (`entrypoint.sh`, `health_server.py`).
pub fn config_map(names: &Names, files: &BTreeMap<String, String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(names, &names.config_map),
        "data": files,
    })
}

/// The Secret the pod reads with `envFrom`: one key per secret named in cloud.yaml.
pub fn secret(names: &Names, values: &BTreeMap<String, String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(names, &names.secret),
        "stringData": values,
    })
}

/// The pod as the daemon builds it, before `kubernetes.pod_template` is merged under it and
/// before the digest annotation.
fn own_pod(spec: &CloudSpec, k: &Kubernetes, names: &Names, mount: &str) -> Value {
    let port = spec.resources.port;
    let mut container = json!({
        "name": CONTAINER,
        "image": k.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["bash", format!("{ENTRYPOINT_DIR}/entrypoint.sh")],
        "env": [{"name": "PORT", "value": port.to_string()}],
        "envFrom": [{"secretRef": {"name": names.secret}}],
        // The health server entrypoint.sh starts first answers any GET on $PORT.
        "readinessProbe": {
            "httpGet": {"path": "/", "port": port},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            {"name": "workspace", "mountPath": mount},
            {"name": "entrypoint", "mountPath": ENTRYPOINT_DIR, "readOnly": true},
        ],
    });
    if !k.resources.is_empty()
        && let Some(o) = container.as_object_mut()
    {
        o.insert("resources".into(), json!(k.resources));
    }
    let mut pod_spec = json!({
        // The daemon restarts what it supervises; the cluster never starts a second runner.
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 10,
        // No API credentials inside the runner unless the operator names an account.
        "automountServiceAccountToken": k.service_account.is_some(),
        "containers": [container],
        "volumes": [
            {"name": "workspace", "persistentVolumeClaim": {"claimName": names.pvc}},
            {"name": "entrypoint", "configMap": {"name": names.config_map, "defaultMode": 0o755}},
        ],
    });
    if let Some(o) = pod_spec.as_object_mut() {
        if let Some(sa) = &k.service_account {
            o.insert("serviceAccountName".into(), json!(sa));
        }
        if !k.node_selector.is_empty() {
            o.insert("nodeSelector".into(), json!(k.node_selector));
        }
    }
    let mut meta = metadata(names, &names.pod);
    if let Some(o) = meta.as_object_mut() {
        o.insert(
            "annotations".into(),
            json!({CLOUD_YAML_ANNOTATION: spec.path.display().to_string()}),
        );
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec})
}

/// Merge `ours` over `template`: mappings merge key by key, ours winning; the named lists of a
/// pod (`containers`, `initContainers`, `volumes`, `volumeMounts`, `env`) merge item by `name`
/// (an item of ours merges over the template's item of that name; the template's other items
/// stay); any other value of ours replaces the template's.
pub fn merge_under(template: &Value, ours: &Value) -> Value {
    const NAMED_LISTS: [&str; 5] = [
        "containers",
        "initContainers",
        "volumes",
        "volumeMounts",
        "env",
    ];
    match (template, ours) {
        (Value::Object(t), Value::Object(o)) => {
            let mut out: Map<String, Value> = t.clone();
            for (k, v) in o {
                let merged = match (t.get(k), v) {
                    (Some(Value::Array(ta)), Value::Array(oa))
                        if NAMED_LISTS.contains(&k.as_str()) =>
                    {
                        Value::Array(merge_named(ta, oa))
                    }
                    (Some(tv), _) => merge_under(tv, v),
                    (None, _) => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        _ => ours.clone(),
    }
}

fn merge_named(template: &[Value], ours: &[Value]) -> Vec<Value> {
    let name = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_string);
    let mut out: Vec<Value> = Vec::new();
    for t in template {
        match ours
            .iter()
            .find(|o| name(o).is_some() && name(o) == name(t))
        {
            Some(o) => out.push(merge_under(t, o)),
            None => out.push(t.clone()),
        }
    }
    for o in ours {
        if !template
            .iter()
            .any(|t| name(t).is_some() && name(t) == name(o))
        {
            out.push(o.clone());
        }
    }
    out
}

/// The pod to create: ours merged over `kubernetes.pod_template`, annotated with the digest of
/// the pod, the ConfigMap's files and the secret names (never their values).
pub fn pod(
    spec: &CloudSpec,
    k: &Kubernetes,
    names: &Names,
    files: &BTreeMap<String, String>,
) -> Value {
    let mount = crate::cloud_yaml::kubernetes::workspace_mount(&spec.repo.workspace)
        .unwrap_or_else(|| "/workspace".to_string());
    let ours = own_pod(spec, k, names, &mount);
    let mut merged = match &k.pod_template {
        Some(t) => merge_under(t, &ours),
        None => ours,
    };
    let digest = spec_digest(&merged, files, &spec.secrets);
    if let Some(a) = merged
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.insert(DIGEST_ANNOTATION.into(), json!(digest));
    }
    merged
}

/// `sha256:<hex>` of the pod, the entrypoint files and the secret names.
pub fn spec_digest(
    pod: &Value,
    files: &BTreeMap<String, String>,
    secret_names: &[String],
) -> String {
    let text = json!({"pod": pod, "files": files, "secrets": secret_names}).to_string();
    format!("sha256:{}", hex_digest(text.as_bytes(), 64))
}

/// Where a pod stands, read from its phase, conditions and container states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Running with the Ready condition true (the readiness probe on the health server passed).
    Ready,
    /// Not ready yet; the reason (`Pending: Unschedulable: …`, `ContainerCreating`).
    Waiting(String),
    /// It will not become ready by itself: `ImagePullBackOff`, `CrashLoopBackOff`, `Evicted`,
    /// a container that exited, a Failed or Succeeded phase.
    Failed(String),
}

/// Read a pod's readiness (`None`: it does not exist).
pub fn readiness(pod: Option<&Pod>) -> Readiness {
    let Some(pod) = pod else {
        return Readiness::Waiting("the pod does not exist yet".into());
    };
    let Some(status) = &pod.status else {
        return Readiness::Waiting("Pending: no status yet".into());
    };
    let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
    let said = |reason: &Option<String>, message: &Option<String>| match (
        reason.as_deref(),
        message.as_deref(),
    ) {
        (Some(r), Some(m)) if !m.is_empty() => format!("{r}: {m}"),
        (Some(r), _) => r.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => String::new(),
    };
    if phase == "Failed" || phase == "Succeeded" {
        let why = said(&status.reason, &status.message);
        return Readiness::Failed(if why.is_empty() {
            format!("the pod is {phase}")
        } else {
            format!("the pod is {phase}: {why}")
        });
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(state) = &cs.state {
            if let Some(w) = &state.waiting {
                let reason = w.reason.clone().unwrap_or_default();
                const HOPELESS: [&str; 6] = [
                    "ImagePullBackOff",
                    "ErrImagePull",
                    "CrashLoopBackOff",
                    "InvalidImageName",
                    "CreateContainerConfigError",
                    "CreateContainerError",
                ];
                if HOPELESS.contains(&reason.as_str()) {
                    return Readiness::Failed(said(&w.reason, &w.message));
                }
            }
            if let Some(t) = &state.terminated {
                return Readiness::Failed(format!(
                    "container {} exited with code {}{}",
                    cs.name,
                    t.exit_code,
                    t.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    let conditions = status.conditions.iter().flatten();
    let mut waiting = Vec::new();
    for c in conditions {
        if c.type_ == "Ready" && c.status == "True" && phase == "Running" {
            return Readiness::Ready;
        }
        if c.status != "True" {
            let why = said(&c.reason, &c.message);
            if !why.is_empty() {
                waiting.push(format!("{}: {why}", c.type_));
            }
        }
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            waiting.push(said(&w.reason, &w.message));
        }
    }
    waiting.retain(|w| !w.is_empty());
    Readiness::Waiting(if waiting.is_empty() {
        phase
    } else {
        format!("{phase}: {}", waiting.join("; "))
    })
}

/// `--since` as seconds: a duration (`90s`, `10m`, `2h`, `1h30m`, `3d`) or an RFC 3339 time
/// (seconds before `now`, at least 1). `None`: neither.
pub fn since_seconds(since: &str, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(since) {
        return Some((now - t.with_timezone(&chrono::Utc)).num_seconds().max(1));
    }
    let total = megaplan_cloud_api::duration::parse(since, true)
        .ok()?
        .as_secs();
    i64::try_from(total).ok().filter(|t| *t > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::test_support::spec;

    fn kube_spec(extra: &str) -> CloudSpec {
        spec(&format!(
            "provider: kubernetes\nrepo: {{url: u, workspace: /workspace/app}}\nsecrets: [API_TOKEN]\nresources: {{port: 9000}}\nkubernetes:\n  image: reg/runner:1\n  namespace: agents\n{extra}"
        ))
    }

    fn files() -> BTreeMap<String, String> {
        BTreeMap::from([("entrypoint.sh".to_string(), "echo hi\n".to_string())])
    }

    fn built(extra: &str) -> (Names, Value) {
        let s = kube_spec(extra);
        let k = s.kubernetes.clone().unwrap();
        let n = names(&s, &k);
        let p = pod(&s, &k, &n, &files());
        (n, p)
    }

    #[test]
    fn names_derive_from_the_key_unless_given() {
        let (n, _) = built("");
        assert!(
            n.pod.starts_with("megaplan-") && n.pod.len() == 21,
            "{}",
            n.pod
        );
        assert_eq!(n.pvc, format!("{}-workspace", n.pod));
        assert_eq!(n.secret, format!("{}-env", n.pod));
        assert_eq!(n.config_map, format!("{}-entrypoint", n.pod));
        assert_eq!(n.registration.len(), 40);
        let (n, _) = built("  name: runner-a\n");
        assert_eq!(n.pod, "runner-a");
        assert_eq!(n.namespace, "agents");
    }

    #[test]
    fn the_pod_table() {
        // (extra cloud.yaml lines, JSON pointer, expected value)
        let table: &[(&str, &str, Value)] = &[
            ("", "/spec/restartPolicy", json!("Never")),
            ("", "/spec/automountServiceAccountToken", json!(false)),
            ("", "/spec/containers/0/name", json!("agent")),
            ("", "/spec/containers/0/image", json!("reg/runner:1")),
            (
                "",
                "/spec/containers/0/command",
                json!(["bash", "/opt/megaplan-cloud/entrypoint.sh"]),
            ),
            (
                "",
                "/spec/containers/0/env",
                json!([{"name": "PORT", "value": "9000"}]),
            ),
            (
                "",
                "/spec/containers/0/readinessProbe/httpGet/port",
                json!(9000),
            ),
            (
                "",
                "/spec/containers/0/volumeMounts/0/mountPath",
                json!("/workspace"),
            ),
            ("", "/spec/volumes/1/configMap/defaultMode", json!(0o755)),
            (
                "",
                "/metadata/labels/app.kubernetes.io~1managed-by",
                json!("megaplan-cloudd"),
            ),
            (
                "",
                "/metadata/annotations/megaplan-cloudd~1cloud-yaml",
                json!("/home/op/proj/cloud.yaml"),
            ),
            ("", "/spec/serviceAccountName", Value::Null),
            ("", "/spec/nodeSelector", Value::Null),
            ("", "/spec/containers/0/resources", Value::Null),
            (
                "  service_account: runner\n",
                "/spec/serviceAccountName",
                json!("runner"),
            ),
            (
                "  service_account: runner\n",
                "/spec/automountServiceAccountToken",
                json!(true),
            ),
            (
                "  node_selector: {disk: ssd}\n",
                "/spec/nodeSelector",
                json!({"disk": "ssd"}),
            ),
            (
                "  resources: {limits: {memory: 4Gi}}\n",
                "/spec/containers/0/resources",
                json!({"limits": {"memory": "4Gi"}}),
            ),
            (
                "  pod_template: {spec: {hostNetwork: true}}\n",
                "/spec/hostNetwork",
                json!(true),
            ),
            // Ours wins over the template.
            (
                "  pod_template: {spec: {restartPolicy: Always}}\n",
                "/spec/restartPolicy",
                json!("Never"),
            ),
            (
                "  pod_template: {metadata: {labels: {team: a}}}\n",
                "/metadata/labels/team",
                json!("a"),
            ),
            (
                "  pod_template: {spec: {containers: [{name: agent, securityContext: {runAsUser: 1000}}, {name: sidecar, image: s}]}}\n",
                "/spec/containers/0/securityContext/runAsUser",
                json!(1000),
            ),
            (
                "  pod_template: {spec: {containers: [{name: agent, image: other}, {name: sidecar, image: s}]}}\n",
                "/spec/containers/0/image",
                json!("reg/runner:1"),
            ),
            (
                "  pod_template: {spec: {containers: [{name: agent}, {name: sidecar, image: s}]}}\n",
                "/spec/containers/1/name",
                json!("sidecar"),
            ),
        ];
        for (extra, pointer, want) in table {
            let (_, p) = built(extra);
            let got = p.pointer(pointer).cloned().unwrap_or(Value::Null);
            assert_eq!(&got, want, "{extra:?} {pointer}\n{p:#}");
        }
    }

    #[test]
    fn secret_values_never_enter_the_pod() {
        let s = kube_spec("");
        let k = s.kubernetes.clone().unwrap();
        let n = names(&s, &k);
        let p = pod(&s, &k, &n, &files());
        let text = p.to_string();
        assert!(!text.contains("s3cr3t-value"));
        assert_eq!(
            p.pointer("/spec/containers/0/envFrom/0/secretRef/name"),
            Some(&json!(n.secret))
        );
        let values = BTreeMap::from([("API_TOKEN".to_string(), "s3cr3t-value".to_string())]);
        let sec = secret(&n, &values);
        assert_eq!(sec["stringData"]["API_TOKEN"], "s3cr3t-value");
        assert_eq!(sec["metadata"]["labels"], labels(&n));
        // The digest covers names, never values.
        let d1 = spec_digest(&p, &files(), &s.secrets);
        assert!(d1.starts_with("sha256:") && d1.len() == 71);
        assert_eq!(
            p.pointer("/metadata/annotations/megaplan-cloudd~1spec-digest")
                .and_then(Value::as_str)
                .map(str::len),
            Some(71)
        );
    }

    #[test]
    fn the_digest_follows_what_the_pod_runs() {
        let (_, a) = built("");
        let (_, b) = built("");
        let (_, c) = built("  storage: 20Gi\n  resources: {limits: {cpu: \"2\"}}\n");
        let d = |p: &Value| {
            p.pointer("/metadata/annotations/megaplan-cloudd~1spec-digest")
                .cloned()
        };
        assert_eq!(d(&a), d(&b));
        assert_ne!(d(&a), d(&c));
    }

    #[test]
    fn every_built_object_reads_as_its_typed_kubernetes_object() {
        let (n, p) = built("  pod_template: {spec: {hostNetwork: true}}\n  storage_class: local\n");
        let typed: Pod = serde_json::from_value(p).unwrap();
        assert_eq!(typed.spec.unwrap().host_network, Some(true));
        let s = kube_spec("  storage_class: local\n");
        let k = s.kubernetes.clone().unwrap();
        let claim: k8s_openapi::api::core::v1::PersistentVolumeClaim =
            serde_json::from_value(pvc(&n, &k)).unwrap();
        let cs = claim.spec.unwrap();
        assert_eq!(cs.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
        assert_eq!(cs.storage_class_name.as_deref(), Some("local"));
        let _: k8s_openapi::api::core::v1::ConfigMap =
            serde_json::from_value(config_map(&n, &files())).unwrap();
        let _: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(secret(&n, &BTreeMap::new())).unwrap();
        assert_eq!(
            label_selector(&n),
            format!(
                "app.kubernetes.io/managed-by=megaplan-cloudd,megaplan-cloudd/registration={}",
                n.registration
            )
        );
    }

    fn pod_status(v: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": v})).unwrap()
    }

    #[test]
    fn readiness_table() {
        let table: &[(Value, Readiness)] = &[
            (
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
                Readiness::Ready,
            ),
            (
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available"}]}),
                Readiness::Waiting(
                    "Pending: PodScheduled: Unschedulable: 0/1 nodes are available".into(),
                ),
            ),
            (
                json!({"phase": "Pending", "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"i\""}}}]}),
                Readiness::Failed("ImagePullBackOff: Back-off pulling image \"i\"".into()),
            ),
            (
                json!({"phase": "Running", "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
                Readiness::Failed("CrashLoopBackOff".into()),
            ),
            (
                json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}),
                Readiness::Failed(
                    "the pod is Failed: Evicted: The node was low on resource: memory.".into(),
                ),
            ),
            (
                json!({"phase": "Running", "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}),
                Readiness::Failed("container agent exited with code 2 (Error)".into()),
            ),
            (
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}]}),
                Readiness::Waiting("Running: Ready: ContainersNotReady".into()),
            ),
            (json!({}), Readiness::Waiting("Pending".into())),
        ];
        for (status, want) in table {
            assert_eq!(
                &readiness(Some(&pod_status(status.clone()))),
                want,
                "{status}"
            );
        }
        assert!(matches!(readiness(None), Readiness::Waiting(_)));
    }

    #[test]
    fn since_reads_durations_and_times() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(since_seconds("90s", now), Some(90));
        assert_eq!(since_seconds("10m", now), Some(600));
        assert_eq!(since_seconds("1h30m", now), Some(5400));
        assert_eq!(since_seconds("2d", now), Some(172800));
        assert_eq!(since_seconds("2026-12-01T09:59:00Z", now), Some(60));
        assert_eq!(since_seconds("10x", now), None);
        assert_eq!(since_seconds("0s", now), None);
        assert_eq!(since_seconds("m", now), None);
    }
}
