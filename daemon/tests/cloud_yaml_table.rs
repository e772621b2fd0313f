//! Table tests over every cloud.yaml field of docs/configuration.md (the original tool's and
//! ours): the default is
//! applied when the field is absent, and a value of the wrong type is rejected with an error
//! that names the field. Plus the whole-file rules and a property test that no byte string
//! makes the loader panic.

use megaplan_cloud_api::ErrorCode;
use megaplan_cloudd::cloud_yaml::{self, CloudSpec, Mode, ProviderKind, Toolchain};
use proptest::prelude::*;
use std::path::Path;

const FILE: &str = "/home/op/proj/cloud.yaml";

fn load(text: &str) -> Result<CloudSpec, megaplan_cloud_api::ErrorBody> {
    cloud_yaml::parse_bytes(text.as_bytes(), Path::new(FILE)).map_err(Into::into)
}

fn minimal() -> &'static str {
    "repo:\n  url: /srv/repo.git\n"
}

/// Field defaults: (description, check on the spec loaded from the minimal file).
#[test]
fn defaults_for_every_field() {
    let s = load(minimal()).unwrap();
    let checks: Vec<(&str, bool)> = vec![
        ("provider = railway", s.provider == ProviderKind::Railway),
        ("mode = idle", s.mode == Mode::Idle),
        ("secrets = []", s.secrets.is_empty()),
        ("toolchains = []", s.toolchains.is_empty()),
        ("repo.branch = main", s.repo.branch == "main"),
        (
            "repo.workspace = /workspace/app",
            s.repo.workspace == "/workspace/app",
        ),
        ("agents.default = codex", s.agents.default == "codex"),
        ("agents.<step> inherits", s.agents.steps.is_empty()),
        ("codex.model = gpt-5.4", s.codex.model == "gpt-5.4"),
        ("codex.reasoning = high", s.codex.reasoning == "high"),
        (
            "megaplan.codex_auth = chatgpt",
            s.megaplan.codex_auth == "chatgpt",
        ),
        ("megaplan.ref = main", s.megaplan.git_ref == "main"),
        (
            "megaplan.launcher unset (probed on the runner)",
            s.megaplan.launcher.is_none(),
        ),
        ("auto.plan_name unset", s.auto.plan_name.is_none()),
        ("auto.idea_file unset", s.auto.idea_file.is_none()),
        (
            "auto.robustness = standard",
            s.auto.robustness == "standard",
        ),
        ("chain.spec unset", s.chain.spec.is_none()),
        ("resources.volume unset", s.resources.volume.is_none()),
        ("resources.port = 8080", s.resources.port == 8080),
        ("resources.network unset", s.resources.network.is_none()),
        ("railway.service = agent", s.railway.service == "agent"),
        ("railway.session = agent", s.railway.session == "agent"),
        ("railway.project unset", s.railway.project.is_none()),
        ("railway.environment unset", s.railway.environment.is_none()),
        (
            "local.compose_project = megaplan-cloud",
            s.local.compose_project == "megaplan-cloud",
        ),
        ("local.workdir = workspace", s.local.workdir == "workspace"),
        ("ssh unset for railway", s.ssh.is_none()),
        ("extra_repos = []", s.extra_repos.is_empty()),
        ("image.dockerfile unset", s.image.dockerfile.is_none()),
    ];
    for (what, ok) in checks {
        assert!(ok, "default not applied: {what}");
    }
    assert_eq!(s.path, Path::new(FILE));
}

#[test]
fn ssh_defaults() {
    let s = load("provider: ssh\nssh:\n  host: box.example\nrepo:\n  url: /r.git\n").unwrap();
    let ssh = s.ssh.unwrap();
    assert_eq!(ssh.host, "box.example");
    assert_eq!(ssh.user, None);
    assert_eq!(ssh.port, 22);
    assert_eq!(ssh.identity_file, None);
    assert_eq!(ssh.remote_dir, "/tmp/megaplan-cloud");
    assert_eq!(ssh.container, "megaplan-cloud-agent");
}

/// (field, YAML with a wrong-typed or invalid value, expected error code)
fn bad_rows() -> Vec<(&'static str, String, ErrorCode)> {
    let with = |extra: &str| format!("repo:\n  url: /srv/repo.git\n{extra}");
    vec![
        ("provider", with("provider: 3\n"), ErrorCode::InvalidSpec),
        (
            "provider",
            with("provider: heroku\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "provider",
            with("provider: fly\n"),
            ErrorCode::FutureProvider,
        ),
        ("mode", with("mode: turbo\n"), ErrorCode::InvalidSpec),
        ("mode", with("mode: [auto]\n"), ErrorCode::InvalidSpec),
        (
            "secrets",
            with("secrets: OPENAI_API_KEY\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "secrets[0]",
            with("secrets: ['']\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "secrets[1]",
            with("secrets: [A, 7]\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "secrets[0]",
            with("secrets: ['NOT A NAME']\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "toolchains",
            with("toolchains: rust\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "toolchains[0]",
            with("toolchains: [cobol]\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "toolchains[0].name",
            with("toolchains: [{install: 'RUN x'}]\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "toolchains[0].install",
            with("toolchains: [{name: x}]\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "toolchains[0]",
            with("toolchains: [5]\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "repo.url",
            "repo:\n  branch: main\n".to_string(),
            ErrorCode::InvalidSpec,
        ),
        (
            "repo.url",
            "repo:\n  url: 5\n".to_string(),
            ErrorCode::InvalidSpec,
        ),
        (
            "repo",
            "repo: /srv/x.git\n".to_string(),
            ErrorCode::InvalidSpec,
        ),
        (
            "repo.branch",
            with("").replace(
                "url: /srv/repo.git\n",
                "url: /srv/repo.git\n  branch: [x]\n",
            ),
            ErrorCode::InvalidSpec,
        ),
        (
            "repo.workspace",
            "repo:\n  url: /r.git\n  workspace: relative/path\n".to_string(),
            ErrorCode::InvalidSpec,
        ),
        ("agents", with("agents: codex\n"), ErrorCode::InvalidSpec),
        (
            "agents.default",
            with("agents:\n  default: 1\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "agents.plan",
            with("agents:\n  plan: [a]\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "codex.model",
            with("codex:\n  model: 5\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "codex.reasoning",
            with("codex:\n  reasoning: extreme\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "megaplan.codex_auth",
            with("megaplan:\n  codex_auth: oauth\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "megaplan.ref",
            with("megaplan:\n  ref: {a: 1}\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "auto.plan_name",
            with("mode: auto\nauto:\n  idea_file: /w/idea.txt\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "auto.idea_file",
            with("mode: auto\nauto:\n  plan_name: p\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "auto.idea_file",
            with("auto:\n  idea_file: idea.txt\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "auto.robustness",
            with("auto:\n  robustness: 3\n"),
            ErrorCode::InvalidSpec,
        ),
        ("chain.spec", with("mode: chain\n"), ErrorCode::InvalidSpec),
        (
            "chain.spec",
            with("chain:\n  spec: chain.yaml\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "resources.port",
            with("resources:\n  port: 0\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "resources.port",
            with("resources:\n  port: 70000\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "resources.port",
            with("resources:\n  port: '8080'\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "resources.volume",
            with("resources:\n  volume: 12\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "resources.network",
            with("resources:\n  network: 'a b'\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "railway.service",
            with("railway:\n  service: [a]\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "railway.session",
            with("railway:\n  session: 1\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "railway.project",
            with("railway:\n  project: true\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "railway.environment",
            with("railway:\n  environment: {}\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "local.compose_project",
            with("local:\n  compose_project: 'Has Spaces'\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "local.workdir",
            with("local:\n  workdir: /abs\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "local.workdir",
            with("local:\n  workdir: ../up\n"),
            ErrorCode::InvalidSpec,
        ),
        ("ssh.host", with("provider: ssh\n"), ErrorCode::InvalidSpec),
        (
            "ssh.host",
            with("provider: ssh\nssh:\n  host: 5\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "ssh.host",
            with("provider: ssh\nssh:\n  host: -oProxyCommand=x\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "ssh.user",
            with("provider: ssh\nssh:\n  host: h\n  user: 'a@b'\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "ssh.port",
            with("provider: ssh\nssh:\n  host: h\n  port: -1\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "ssh.port",
            with("provider: ssh\nssh:\n  host: h\n  port: twenty\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "ssh.identity_file",
            with("provider: ssh\nssh:\n  host: h\n  identity_file: 1\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "ssh.remote_dir",
            with("provider: ssh\nssh:\n  host: h\n  remote_dir: rel\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "ssh.container",
            with("provider: ssh\nssh:\n  host: h\n  container: 'Bad Name'\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "extra_repos",
            with("extra_repos: x\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "extra_repos[0].url",
            with("extra_repos: [{branch: b}]\n"),
            ErrorCode::InvalidSpec,
        ),
        (
            "image.dockerfile",
            with("image:\n  dockerfile: 3\n"),
            ErrorCode::InvalidSpec,
        ),
    ]
}

#[test]
fn bad_values_are_rejected_naming_the_field() {
    for (field, text, code) in bad_rows() {
        let err = match load(&text) {
            Ok(_) => panic!("accepted bad {field}:\n{text}"),
            Err(e) => e,
        };
        assert_eq!(err.error, code, "{field}: {err}");
        assert_eq!(
            err.extra.get("field").and_then(|v| v.as_str()),
            Some(field),
            "error does not name {field}: {err}"
        );
        assert!(
            err.message.contains(FILE),
            "error does not name the file: {err}"
        );
        let short = field.split('[').next().unwrap_or(field);
        assert!(
            err.message.contains(short),
            "message does not mention {field}: {}",
            err.message
        );
    }
}

#[test]
fn values_are_read() {
    let s = load(
        "provider: ssh\nmode: chain\nsecrets: [OPENAI_API_KEY, GITHUB_TOKEN]\n\
         toolchains: [rust, {name: zig, install: 'RUN echo zig'}]\n\
         repo: {url: /srv/r.git, branch: dev, workspace: /w/app}\n\
         agents: {default: claude, plan: codex}\ncodex: {model: m, reasoning: low}\n\
         megaplan: {ref: v1, codex_auth: apikey}\nchain: {spec: /w/app/chain.yaml}\n\
         resources: {volume: data, port: 9000, network: none}\n\
         ssh: {host: 127.0.0.1, user: root, port: 2222, identity_file: /k, remote_dir: /srv/mp, container: c1}\n",
    )
    .unwrap();
    assert_eq!(s.provider, ProviderKind::Ssh);
    assert_eq!(s.mode, Mode::Chain);
    assert_eq!(s.secrets, vec!["OPENAI_API_KEY", "GITHUB_TOKEN"]);
    assert_eq!(
        s.toolchains,
        vec![
            Toolchain::Alias("rust".into()),
            Toolchain::Custom {
                name: "zig".into(),
                install: "RUN echo zig".into()
            }
        ]
    );
    assert_eq!(s.repo.branch, "dev");
    assert_eq!(
        s.agents.steps.get("plan").map(String::as_str),
        Some("codex")
    );
    assert_eq!(s.codex.reasoning, "low");
    assert_eq!(s.megaplan.codex_auth, "apikey");
    assert_eq!(s.chain.spec.as_deref(), Some("/w/app/chain.yaml"));
    assert_eq!(s.resources.port, 9000);
    assert_eq!(s.resources.network.as_deref(), Some("none"));
    let ssh = s.ssh.unwrap();
    assert_eq!((ssh.port, ssh.container.as_str()), (2222, "c1"));
}

#[test]
fn whole_file_rules() {
    // Empty file: all defaults, so repo.url is missing.
    let e = load("").unwrap_err();
    assert_eq!(e.extra["field"], "repo.url");
    // Not a mapping.
    for text in ["- a\n- b\n", "just a string\n", "42\n"] {
        let e = load(text).unwrap_err();
        assert_eq!(e.error, ErrorCode::InvalidSpec);
        assert!(e.message.contains("mapping"), "{e}");
    }
    // Not YAML.
    let e = load("repo: [unclosed\n").unwrap_err();
    assert!(e.message.contains("not valid YAML"), "{e}");
    // Duplicate keys are refused (serde-saphyr), with a location.
    let e = load("repo:\n  url: /a\nrepo:\n  url: /b\n").unwrap_err();
    assert!(e.message.to_lowercase().contains("duplicate"), "{e}");
    // Not UTF-8.
    let e = cloud_yaml::parse_bytes(b"repo:\n  url: /a\xff\n", Path::new(FILE)).unwrap_err();
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert!(e.message.contains("UTF-8"), "{e}");
    // Unknown keys warn, they do not fail.
    let s = load("repo:\n  url: /a\nfuture_knob: 1\nrepo_extra: 2\n").unwrap();
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    assert!(s.warnings[0].contains("future_knob"));
}

#[test]
fn init_scaffold_parses_as_written() {
    let s = load(megaplan_cloud_api::CLOUD_YAML_SCAFFOLD).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(s.provider, ProviderKind::Railway);
    assert_eq!(s.secrets, vec!["OPENAI_API_KEY"]);
}

#[test]
fn missing_file_names_it() {
    let e = cloud_yaml::load(Path::new("/nonexistent/dir/cloud.yaml")).unwrap_err();
    let e = megaplan_cloud_api::ErrorBody::from(e);
    assert_eq!(e.error, ErrorCode::InvalidSpec);
    assert!(e.message.contains("/nonexistent/dir/cloud.yaml"));
    assert!(e.message.contains("init"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = cloud_yaml::parse_bytes(&bytes, Path::new(FILE));
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-z_:\\-\\[\\]{}, \\n'\"#&*!|>0-9.]{0,300}") {
        let _ = cloud_yaml::parse_bytes(text.as_bytes(), Path::new(FILE));
    }

    #[test]
    fn mutated_valid_files_never_panic(cut in 0usize..2000, byte in any::<u8>()) {
        let mut b = megaplan_cloud_api::CLOUD_YAML_SCAFFOLD.as_bytes().to_vec();
        let i = cut % b.len();
        b[i] = byte;
        let _ = cloud_yaml::parse_bytes(&b, Path::new(FILE));
    }
}
