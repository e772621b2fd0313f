//! The `kubernetes:` section of cloud.yaml (provider: kubernetes): which cluster, namespace and
//! image, the workspace volume, and what the operator adds to the pod. Every field is checked
//! here with an error naming it; the provider (`provider/kubernetes.rs`) only builds from it.

use super::error::ConfigError;
use crate::yaml::type_name;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The section's fields, for unknown-key warnings.
pub const KEYS: &[&str] = &[
    "context",
    "kubeconfig",
    "namespace",
    "name",
    "image",
    "storage_class",
    "storage",
    "resources",
    "node_selector",
    "service_account",
    "pod_template",
];

/// The workspace volume's size when `kubernetes.storage` is unset.
pub const DEFAULT_STORAGE: &str = "10Gi";

/// Longest `kubernetes.name`: the objects are named `<name>-workspace`, `<name>-entrypoint`
/// and `<name>-env`, and Kubernetes label values and names stay within 63 characters.
pub const MAX_NAME_BYTES: usize = 50;

/// The validated `kubernetes:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kubernetes {
    /// The kubeconfig context; `None`: the kubeconfig's current context.
    pub context: Option<String>,
    /// An absolute kubeconfig path; `None`: `$KUBECONFIG`, else `~/.kube/config`, else the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    pub namespace: String,
    /// The base name of the pod and its objects; `None`: derived from the registration key.
    pub name: Option<String>,
    pub image: String,
    pub storage_class: Option<String>,
    pub storage: String,
    /// `{requests: {cpu: .., memory: ..}, limits: {..}}`, quantities as strings.
    pub resources: BTreeMap<String, BTreeMap<String, String>>,
    pub node_selector: BTreeMap<String, String>,
    pub service_account: Option<String>,
    /// A partial Pod (`metadata`, `spec`) merged under the one the provider builds.
    pub pod_template: Option<Value>,
}

fn err(file: &Path, field: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::field(file, field, message)
}

/// The optional mapping at `field`: `None` when absent or null; anything but a mapping is an
/// error saying the field must be `shape` and what was found.
fn optional_mapping<'a>(
    file: &Path,
    field: &str,
    v: Option<&'a Value>,
    shape: &str,
) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(err(
            file,
            field,
            format!("{field} must be {shape}, found {}", type_name(other)),
        )),
    }
}

/// A DNS-1123 label: what Kubernetes accepts as a namespace and as most object names.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain (storage class and service account names).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|part| is_dns_label(part, 63))
}

/// A resource quantity as Kubernetes writes them: `10Gi`, `500m`, `1.5`, `2e3`.
pub fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 15] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|suf| s.strip_suffix(suf))
        .unwrap_or(s);
    let (mantissa, exponent) = match number.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (number, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => (a.is_empty() || digits(a)) && digits(b),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mantissa_ok && exponent_ok && s.len() <= 64
}

/// A label key (`prefix/name` or `name`) and value as Kubernetes accepts them.
fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns_subdomain) && is_label_value(name) && !name.is_empty()
}

fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

/// An optional string field that must pass `valid`; the error says it must be `what`.
fn checked_str(
    file: &Path,
    sec: Option<&Map<String, Value>>,
    key: &str,
    valid: impl Fn(&str) -> bool,
    what: &str,
) -> Result<Option<String>, ConfigError> {
    let v = opt_str(file, sec, key)?;
    match &v {
        Some(s) if !valid(s) => Err(err(
            file,
            &format!("kubernetes.{key}"),
            format!("kubernetes.{key} must be {what}, found {s:?}"),
        )),
        _ => Ok(v),
    }
}

fn opt_str(
    file: &Path,
    sec: Option<&Map<String, Value>>,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    let field = format!("kubernetes.{key}");
    match sec.and_then(|m| m.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(err(
            file,
            &field,
            format!("{field} must not be empty; remove it to use the default"),
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(err(
            file,
            &field,
            format!(
                "{field} must be a string, found {}; quote it, e.g. {key}: \"...\"",
                type_name(other)
            ),
        )),
    }
}

/// Parse the section. `section` is the raw `kubernetes:` value (absent = `None`); `required`:
/// the cloud.yaml says `provider: kubernetes` (then `image` is required and the section is
/// returned even when absent). `workspace` is `repo.workspace`, whose parent folder is the
/// volume's mount point. `home` expands `~/` in `kubeconfig`.
pub fn parse(
    file: &Path,
    section: Option<&Value>,
    required: bool,
    workspace: &str,
) -> Result<Option<Kubernetes>, ConfigError> {
    let sec = optional_mapping(file, "kubernetes", section, "a mapping")?;
    if sec.is_none() && !required {
        return Ok(None);
    }
    if required && workspace_mount(workspace).is_none() {
        return Err(err(
            file,
            "repo.workspace",
            format!(
                "with provider: kubernetes, repo.workspace must be at least two folders deep (e.g. /workspace/app): its parent folder is where the workspace volume is mounted, found {workspace:?}"
            ),
        ));
    }
    let context = opt_str(file, sec, "context")?;
    let base_dir = file.parent().unwrap_or(Path::new("/"));
    let kubeconfig = opt_str(file, sec, "kubeconfig")?.map(|p| {
        let expanded = match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
            (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => PathBuf::from(&p),
        };
        megaplan_cloud_api::paths::absolutize(&expanded, base_dir)
    });
    let namespace = opt_str(file, sec, "namespace")?.unwrap_or_else(|| "default".to_string());
    if !is_dns_label(&namespace, 63) {
        return Err(err(
            file,
            "kubernetes.namespace",
            format!(
                "kubernetes.namespace must be a namespace name (lowercase letters, digits and -, at most 63), found {namespace:?}"
            ),
        ));
    }
    let name = checked_str(
        file,
        sec,
        "name",
        |n| is_dns_label(n, MAX_NAME_BYTES),
        &format!(
            "lowercase letters, digits and - (at most {MAX_NAME_BYTES}, starting and ending with a letter or digit)"
        ),
    )?;
    let image = match opt_str(file, sec, "image")? {
        Some(i) if i.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err(err(
                file,
                "kubernetes.image",
                format!("kubernetes.image must be an image reference without spaces, found {i:?}"),
            ));
        }
        Some(i) => i,
        None => {
            return Err(err(
                file,
                "kubernetes.image",
                "kubernetes.image is required: an image the cluster can pull that has bash, python3, git and tmux (what the runner's entrypoint needs), e.g. kubernetes:\\n  image: registry.example/megaplan-runner:1",
            ));
        }
    };
    let storage_class = checked_str(
        file,
        sec,
        "storage_class",
        is_dns_subdomain,
        "a StorageClass name",
    )?;
    let storage = checked_str(
        file,
        sec,
        "storage",
        is_quantity,
        "a size such as 10Gi or 500Mi",
    )?
    .unwrap_or_else(|| DEFAULT_STORAGE.to_string());
    let resources = resources(file, sec.and_then(|m| m.get("resources")))?;
    let node_selector = node_selector(file, sec.and_then(|m| m.get("node_selector")))?;
    let service_account = checked_str(
        file,
        sec,
        "service_account",
        is_dns_subdomain,
        "a ServiceAccount name",
    )?;
    let pod_template = pod_template(file, sec.and_then(|m| m.get("pod_template")))?;
    Ok(Some(Kubernetes {
        context,
        kubeconfig,
        namespace,
        name,
        image,
        storage_class,
        storage,
        resources,
        node_selector,
        service_account,
        pod_template,
    }))
}

/// Where the workspace volume is mounted: the parent folder of `repo.workspace` (so the clone
/// lands in an empty folder on it, and `extra_repos` next to it share it). `None` when that
/// parent is `/`.
pub fn workspace_mount(workspace: &str) -> Option<String> {
    let trimmed = workspace.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(i) if i > 0 => Some(trimmed[..i].to_string()),
        _ => None,
    }
}

fn resources(
    file: &Path,
    v: Option<&Value>,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, ConfigError> {
    const FIELD: &str = "kubernetes.resources";
    let mut out = BTreeMap::new();
    let shape = r#"a mapping such as {requests: {cpu: "1", memory: 2Gi}, limits: {memory: 4Gi}}"#;
    let Some(m) = optional_mapping(file, FIELD, v, shape)? else {
        return Ok(out);
    };
    for (kind, amounts) in m {
        let field = format!("{FIELD}.{kind}");
        if kind != "requests" && kind != "limits" {
            return Err(err(
                file,
                &field,
                format!("{FIELD} takes requests and limits only, found {kind:?}"),
            ));
        }
        let Value::Object(amounts) = amounts else {
            return Err(err(
                file,
                &field,
                format!(
                    "{field} must be a mapping of resource names to quantities, found {}",
                    type_name(amounts)
                ),
            ));
        };
        let mut parsed = BTreeMap::new();
        for (resource, q) in amounts {
            let field = format!("{field}.{resource}");
            let q = match q {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(err(
                        file,
                        &field,
                        format!(
                            "{field} must be a quantity such as \"500m\" or 2Gi, found {}",
                            type_name(other)
                        ),
                    ));
                }
            };
            if !is_label_key(resource) || !is_quantity(&q) {
                return Err(err(
                    file,
                    &field,
                    format!(
                        "{field} must be a resource name with a quantity such as \"500m\" or 2Gi, found {q:?}"
                    ),
                ));
            }
            parsed.insert(resource.clone(), q);
        }
        out.insert(kind.clone(), parsed);
    }
    Ok(out)
}

fn node_selector(file: &Path, v: Option<&Value>) -> Result<BTreeMap<String, String>, ConfigError> {
    const FIELD: &str = "kubernetes.node_selector";
    let Some(m) = optional_mapping(file, FIELD, v, "a mapping of node labels to values")? else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let field = format!("{FIELD}.{k}");
        let Value::String(v) = v else {
            return Err(err(
                file,
                &field,
                format!(
                    "{field} must be a string label value, found {}; quote it",
                    type_name(v)
                ),
            ));
        };
        if !is_label_key(k) || !is_label_value(v) {
            return Err(err(
                file,
                &field,
                format!(
                    "{field} must be a label key and value as Kubernetes accepts them (e.g. kubernetes.io/arch: amd64), found {k:?}: {v:?}"
                ),
            ));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

/// `kubernetes.pod_template`: a partial Pod of `metadata` and `spec` that the typed Pod of the
/// Kubernetes API accepts (checked by reading it as one).
fn pod_template(file: &Path, v: Option<&Value>) -> Result<Option<Value>, ConfigError> {
    const FIELD: &str = "kubernetes.pod_template";
    let Some(m) = optional_mapping(file, FIELD, v, "a partial Pod mapping (metadata:, spec:)")?
    else {
        return Ok(None);
    };
    for k in m.keys() {
        if !["apiVersion", "kind", "metadata", "spec"].contains(&k.as_str()) {
            return Err(err(
                file,
                &format!("{FIELD}.{k}"),
                format!("{FIELD} takes metadata and spec (a partial Pod), found {k:?}"),
            ));
        }
    }
    let mut typed = m.clone();
    typed.remove("apiVersion");
    typed.remove("kind");
    if let Err(e) = serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(Value::Object(typed))
    {
        return Err(err(
            file,
            FIELD,
            format!("{FIELD} is not a valid partial Pod: {e}"),
        ));
    }
    let mut kept = m.clone();
    kept.remove("apiVersion");
    kept.remove("kind");
    Ok(Some(Value::Object(kept)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value) -> Result<Option<Kubernetes>, ConfigError> {
        parse(Path::new("/p/cloud.yaml"), Some(&v), true, "/workspace/app")
    }

    #[test]
    fn defaults_apply_when_only_the_image_is_given() {
        let k = parse_json(json!({"image": "reg/runner:1"}))
            .unwrap()
            .unwrap();
        assert_eq!(k.namespace, "default");
        assert_eq!(k.storage, DEFAULT_STORAGE);
        assert_eq!(k.context, None);
        assert_eq!(k.kubeconfig, None);
        assert!(k.resources.is_empty() && k.node_selector.is_empty());
        assert_eq!(k.pod_template, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let table: &[(Value, &str)] = &[
            (json!({}), "kubernetes.image"),
            (json!({"image": "a b"}), "kubernetes.image"),
            (
                json!({"image": "i", "namespace": "Bad_NS"}),
                "kubernetes.namespace",
            ),
            (
                json!({"image": "i", "name": "x".repeat(51)}),
                "kubernetes.name",
            ),
            (
                json!({"image": "i", "storage": "ten gigs"}),
                "kubernetes.storage",
            ),
            (json!({"image": "i", "storage": 10}), "kubernetes.storage"),
            (
                json!({"image": "i", "storage_class": "a/b"}),
                "kubernetes.storage_class",
            ),
            (
                json!({"image": "i", "resources": []}),
                "kubernetes.resources",
            ),
            (
                json!({"image": "i", "resources": {"asks": {}}}),
                "kubernetes.resources.asks",
            ),
            (
                json!({"image": "i", "resources": {"limits": {"memory": "lots"}}}),
                "kubernetes.resources.limits.memory",
            ),
            (
                json!({"image": "i", "node_selector": {"disk": 1}}),
                "kubernetes.node_selector.disk",
            ),
            (
                json!({"image": "i", "node_selector": {"bad key!": "x"}}),
                "kubernetes.node_selector.bad key!",
            ),
            (
                json!({"image": "i", "service_account": "A B"}),
                "kubernetes.service_account",
            ),
            (
                json!({"image": "i", "pod_template": "x"}),
                "kubernetes.pod_template",
            ),
            (
                json!({"image": "i", "pod_template": {"status": {}}}),
                "kubernetes.pod_template.status",
            ),
            (
                json!({"image": "i", "pod_template": {"spec": {"hostNetwork": "yes"}}}),
                "kubernetes.pod_template",
            ),
            (json!({"image": "i", "context": 3}), "kubernetes.context"),
            (json!("text"), "kubernetes"),
        ];
        for (section, field) in table {
            let e = parse_json(section.clone()).expect_err(&section.to_string());
            let e = megaplan_cloud_api::ErrorBody::from(e);
            assert_eq!(
                e.error,
                megaplan_cloud_api::ErrorCode::InvalidSpec,
                "{section}"
            );
            assert_eq!(e.extra["field"], *field, "{section}: {e}");
            assert!(e.message.starts_with("/p/cloud.yaml: "), "{e}");
        }
    }

    #[test]
    fn a_field_that_is_not_a_mapping_says_the_shape_it_takes() {
        let table: &[(Value, &str)] = &[
            (
                json!("text"),
                "kubernetes must be a mapping, found a string",
            ),
            (
                json!({"image": "i", "resources": []}),
                r#"kubernetes.resources must be a mapping such as {requests: {cpu: "1", memory: 2Gi}, limits: {memory: 4Gi}}, found a list"#,
            ),
            (
                json!({"image": "i", "node_selector": 3}),
                "kubernetes.node_selector must be a mapping of node labels to values, found a number",
            ),
            (
                json!({"image": "i", "pod_template": true}),
                "kubernetes.pod_template must be a partial Pod mapping (metadata:, spec:), found a boolean",
            ),
        ];
        for (section, said) in table {
            let e = parse_json(section.clone()).expect_err(&section.to_string());
            let e = megaplan_cloud_api::ErrorBody::from(e);
            assert_eq!(e.message, format!("/p/cloud.yaml: {said}"), "{section}");
        }
    }

    #[test]
    fn the_workspace_needs_a_parent_folder_for_the_volume() {
        let e = parse(
            Path::new("/p/cloud.yaml"),
            Some(&json!({"image": "i"})),
            true,
            "/app",
        )
        .unwrap_err();
        let e = megaplan_cloud_api::ErrorBody::from(e);
        assert_eq!(e.extra["field"], "repo.workspace");
        assert_eq!(workspace_mount("/workspace/app"), Some("/workspace".into()));
        assert_eq!(workspace_mount("/a/b/c/"), Some("/a/b".into()));
        assert_eq!(workspace_mount("/app"), None);
    }

    #[test]
    fn full_section_round_trips() {
        let k = parse_json(json!({
            "image": "reg/runner:1",
            "context": "kind-dev",
            "kubeconfig": "kube/config",
            "namespace": "agents",
            "name": "runner-1",
            "storage_class": "fast.ssd",
            "storage": "20Gi",
            "resources": {"requests": {"cpu": 1, "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
            "node_selector": {"kubernetes.io/arch": "amd64"},
            "service_account": "megaplan-runner",
            "pod_template": {"apiVersion": "v1", "kind": "Pod", "spec": {"hostNetwork": true}},
        }))
        .unwrap()
        .unwrap();
        assert_eq!(k.kubeconfig, Some(PathBuf::from("/p/kube/config")));
        assert_eq!(k.resources["requests"]["cpu"], "1");
        assert_eq!(k.node_selector["kubernetes.io/arch"], "amd64");
        assert_eq!(k.pod_template, Some(json!({"spec": {"hostNetwork": true}})));
    }

    #[test]
    fn quantities() {
        for ok in ["10Gi", "500m", "1", "1.5", "2e3", ".5", "100M"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "10 Gi", "1.", "-1", "10GB", "1e"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn every_init_scaffold_loads_with_its_provider() {
        for provider in megaplan_cloud_api::SCAFFOLD_PROVIDERS {
            if provider == "ssh" {
                continue; // ssh.host is left for the operator to fill in.
            }
            let text = megaplan_cloud_api::cloud_yaml_scaffold(provider).unwrap();
            let spec = crate::cloud_yaml::parse_bytes(text.as_bytes(), Path::new("/p/cloud.yaml"))
                .unwrap_or_else(|e| panic!("{provider}: {e}"));
            assert_eq!(spec.provider.as_str(), provider);
            assert!(spec.warnings.is_empty(), "{provider}: {:?}", spec.warnings);
        }
        let text = megaplan_cloud_api::cloud_yaml_scaffold("kubernetes").unwrap();
        let spec =
            crate::cloud_yaml::parse_bytes(text.as_bytes(), Path::new("/p/cloud.yaml")).unwrap();
        let k = spec.kubernetes.unwrap();
        assert_eq!(k.image, "registry.example.com/megaplan-runner:1");
        assert_eq!(k.storage, "10Gi");
        assert_eq!(megaplan_cloud_api::cloud_yaml_scaffold("fly"), None);
    }

    #[test]
    fn absent_section_is_none_unless_required() {
        assert_eq!(
            parse(Path::new("/p/cloud.yaml"), None, false, "/app").unwrap(),
            None
        );
        assert_eq!(
            megaplan_cloud_api::ErrorBody::from(
                parse(Path::new("/p/cloud.yaml"), None, true, "/workspace/app").unwrap_err()
            )
            .extra["field"],
            "kubernetes.image"
        );
    }
}
