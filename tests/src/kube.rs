//! A real, single-node Kubernetes cluster for the kubernetes provider's end-to-end tests, built
//! from Debian packages only (see issue 25 and `tests/kube/build-cluster-binaries.sh`):
//! etcd (`etcd-server`), kube-apiserver with client-certificate auth and `Node,RBAC`
//! authorization, kube-controller-manager with the host-path provisioner, kube-scheduler, and
//! a kubelet (dockershim) on a dockerd of its own — own data and exec roots, socket and bridge,
//! never the machine's engine or `docker0` — whose default OCI runtime is a small wrapper that
//! clamps `process.oomScoreAdj` to ≥ 0 (this VM refuses negative values, which dockershim
//! gives every sandbox). No CNI: pods use `hostNetwork: true`.
//!
//! [`KubeCluster::start`] returns `None` after `SKIP:` when the binaries are not built (or
//! panics under `MEGAPLAN_E2E_REQUIRED=1`). The cluster is owned by the value: dropping it stops
//! every process it started (kubelet first, its containers, dockerd, then the control plane),
//! unmounts what the kubelet mounted, removes the bridge and the temporary folder.

use crate::util::{FileLock, run, run_ok, wait_until};
use crate::{bench, skip_or_panic};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where `build-cluster-binaries.sh` caches the binaries (`kubernetes-<version>/bin`).
const CACHE_DIR: &str = crate::image::CACHE_DIR;
/// Overrides the folder holding kube-apiserver, kube-controller-manager, kube-scheduler, kubelet.
pub const KUBE_BIN_ENV: &str = "MEGAPLAN_KUBE_BIN";
const BINARIES: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
];

/// The folder with the four cluster binaries, if built.
pub fn binaries() -> Result<PathBuf, String> {
    let complete = |d: &Path| BINARIES.iter().all(|b| d.join(b).is_file());
    if let Some(d) = std::env::var_os(KUBE_BIN_ENV) {
        let d = PathBuf::from(d);
        return if complete(&d) {
            Ok(d)
        } else {
            Err(format!(
                "{KUBE_BIN_ENV}={} lacks one of {BINARIES:?}",
                d.display()
            ))
        };
    }
    let mut found: Vec<PathBuf> = fs::read_dir(CACHE_DIR)
        .map_err(|e| format!("cannot read {CACHE_DIR}: {e}"))?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| {
            d.parent()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n.to_string_lossy().starts_with("kubernetes-"))
                && complete(d)
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        format!(
            "the Kubernetes cluster binaries are not built: run tests/kube/build-cluster-binaries.sh as root (test.sh does; it caches them in {CACHE_DIR}/kubernetes-<version>/bin)"
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One process of the cluster, with its log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A running single-node cluster (see the module docs). Dropping it tears everything down.
pub struct KubeCluster {
    pub dir: PathBuf,
    /// An admin kubeconfig (`system:masters`): for the tests' own checks.
    pub admin_kubeconfig: PathBuf,
    /// A kubeconfig of the user `megaplan-cloudd`, bound to the Role docs/providers.md names in
    /// namespace [`KubeCluster::namespace`]: what the daemon gets.
    pub daemon_kubeconfig: PathBuf,
    pub namespace: String,
    pub node: String,
    /// The bench image, loaded into the kubelet's dockerd.
    pub image: String,
    /// The StorageClass (host-path provisioner) that is the default.
    pub storage_class: String,
    docker_sock: PathBuf,
    bridge: String,
    procs: Vec<Proc>,
    kubelet_root: PathBuf,
    _lock: Option<FileLock>,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    run_ok(Command::new("openssl").current_dir(dir).args(args)).map(|_| ())
}

/// A v3 certificate for `cn`/`org` signed by the CA in `dir` (rustls refuses v1 certificates).
fn issue(dir: &Path, name: &str, subject: &str, ext: &str) -> Result<(), String> {
    fs::write(dir.join(format!("{name}.ext")), ext).map_err(|e| e.to_string())?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    )
}

fn kubeconfig(dir: &Path, name: &str, server: &str, user: &str) -> Result<PathBuf, String> {
    let path = dir.join(format!("{name}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {user}\ncurrent-context: e2e\n",
        ca = dir.join("ca.crt").display(),
        crt = dir.join(format!("{name}.crt")).display(),
        key = dir.join(format!("{name}.key")).display(),
    );
    fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

impl KubeCluster {
    /// Start a cluster; `None` (after `SKIP:`) when the bench or the binaries are missing.
    pub fn start() -> Option<KubeCluster> {
        let b = bench()?;
        let bin = match binaries() {
            Ok(b) => b,
            Err(why) => {
                skip_or_panic(&why);
                return None;
            }
        };
        match KubeCluster::start_with(&bin, &b.image) {
            Ok(c) => Some(c),
            Err(e) => panic!("the kubernetes test cluster did not start: {e}"),
        }
    }

    fn spawn(&mut self, name: &'static str, program: &Path, args: &[String]) -> Result<(), String> {
        let log = self.dir.join(format!("{name}.log"));
        let f = fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().map_err(|e| e.to_string())?)
            .stderr(f)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        self.procs.push(Proc { name, child, log });
        Ok(())
    }

    /// The last lines of every component's log (for failure messages).
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let text = fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} ---\n", p.name));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// `docker -H <the kubelet's dockerd> args…`.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.docker_sock.display()));
        c
    }

    fn start_with(bin: &Path, image: &str) -> Result<KubeCluster, String> {
        // One kubelet dockerd data root per machine, so the bench image is loaded once; the
        // lock keeps two clusters from sharing it.
        let data_root = Path::new(CACHE_DIR).join("kube-docker");
        fs::create_dir_all(&data_root).map_err(|e| e.to_string())?;
        let lock = FileLock::acquire(&Path::new(CACHE_DIR).join("kube-cluster.lock"))?;
        let dir = tempfile::Builder::new()
            .prefix("mp-kube-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?
            .keep();
        let suffix = crate::unique_suffix().replace('-', "");
        let node = format!("mpk-node-{}", &suffix[suffix.len().saturating_sub(8)..]);
        let bridge = format!("mpk{}", &suffix[suffix.len().saturating_sub(8)..]);
        let mut c = KubeCluster {
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            daemon_kubeconfig: dir.join("daemon.kubeconfig"),
            namespace: "megaplan-e2e".to_string(),
            node,
            image: image.to_string(),
            storage_class: "hostpath".to_string(),
            docker_sock: dir.join("docker.sock"),
            bridge,
            procs: Vec::new(),
            kubelet_root: dir.join("kubelet"),
            dir,
            _lock: Some(lock),
        };
        c.certificates()?;
        c.control_plane(bin)?;
        c.node_runtime(&data_root)?;
        c.kubelet(bin)?;
        c.objects()?;
        Ok(c)
    }

    fn certificates(&self) -> Result<(), String> {
        let d = &self.dir;
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=megaplan-e2e-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            ],
        )?;
        let client = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";
        issue(
            d,
            "apiserver",
            "/CN=kube-apiserver",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,IP:10.0.0.1\n",
        )?;
        issue(d, "admin", "/O=system:masters/CN=e2e-admin", client)?;
        issue(d, "daemon", "/CN=megaplan-cloudd", client)?;
        issue(
            d,
            "kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            client,
        )?;
        issue(
            d,
            "node",
            &format!("/O=system:nodes/CN=system:node:{}", self.node),
            client,
        )?;
        openssl(d, &["genrsa", "-out", "sa.key", "2048"])?;
        openssl(d, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(())
    }

    fn control_plane(&mut self, bin: &Path) -> Result<(), String> {
        let d = self.dir.clone();
        let p = |f: &str| d.join(f).display().to_string();
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd = format!("http://127.0.0.1:{etcd_port}");
        self.spawn(
            "etcd",
            Path::new("/usr/bin/etcd"),
            &[
                "--data-dir".into(),
                p("etcd"),
                "--listen-client-urls".into(),
                etcd.clone(),
                "--advertise-client-urls".into(),
                etcd.clone(),
                "--listen-peer-urls".into(),
                format!("http://127.0.0.1:{peer_port}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://127.0.0.1:{peer_port}"),
                "--initial-cluster".into(),
                format!("default=http://127.0.0.1:{peer_port}"),
            ],
        )?;
        let server = format!("https://127.0.0.1:{api_port}");
        self.spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                "--insecure-port=0".into(),
                format!("--advertise-address={}", primary_ip()),
                format!("--cert-dir={}", p("apiserver-certs")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                "--authorization-mode=Node,RBAC".into(),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--kubelet-client-certificate={}", p("kubelet-client.crt")),
                format!("--kubelet-client-key={}", p("kubelet-client.key")),
                "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
            ],
        )?;
        let admin = kubeconfig(&d, "admin", &server, "e2e-admin")?;
        kubeconfig(&d, "daemon", &server, "megaplan-cloudd")?;
        kubeconfig(&d, "node", &server, &format!("system:node:{}", self.node))?;
        // The API answers once RBAC's bootstrap roles exist.
        let healthy = wait_until(Duration::from_secs(60), || {
            self.kubectl_raw("/readyz")
                .is_some_and(|t| t.trim() == "ok")
        });
        if !healthy {
            return Err(format!(
                "kube-apiserver did not become ready\n{}",
                self.logs_tail()
            ));
        }
        let common = [
            format!("--kubeconfig={}", admin.display()),
            "--leader-elect=false".into(),
            "--port=0".into(),
            "--secure-port=0".into(),
        ];
        let mut cm = common.to_vec();
        cm.extend([
            "--enable-hostpath-provisioner=true".into(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            "--use-service-account-credentials=false".into(),
        ]);
        self.spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &cm,
        )?;
        self.spawn("kube-scheduler", &bin.join("kube-scheduler"), &common)?;
        Ok(())
    }

    /// The kubelet's dockerd: own roots, socket, bridge, and the oomScoreAdj-clamping runtime;
    /// the bench image loaded into it, and a pause image (the bench image sleeping).
    fn node_runtime(&mut self, data_root: &Path) -> Result<(), String> {
        let d = self.dir.clone();
        run_ok(Command::new("ip").args(["link", "add", &self.bridge, "type", "bridge"]))?;
        run_ok(Command::new("ip").args(["addr", "add", "10.244.77.1/24", "dev", &self.bridge]))?;
        run_ok(Command::new("ip").args(["link", "set", &self.bridge, "up"]))?;
        let wrapper = d.join("runc-clamp");
        fs::write(
            &wrapper,
            "#!/bin/sh\n# This VM refuses a negative oom_score_adj; dockershim gives sandboxes -998.\nprev=\nfor a in \"$@\"; do\n  if [ \"$prev\" = --bundle ] || [ \"$prev\" = -b ]; then\n    [ -f \"$a/config.json\" ] && sed -i 's/\"oomScoreAdj\": *-[0-9]*/\"oomScoreAdj\":0/g' \"$a/config.json\"\n  fi\n  prev=$a\ndone\nexec /usr/sbin/runc \"$@\"\n",
        )
        .map_err(|e| e.to_string())?;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let exec_root = Path::new("/run").join(format!("mpk-{}", self.bridge));
        self.spawn(
            "dockerd",
            Path::new("/usr/sbin/dockerd"),
            &[
                format!("--data-root={}", data_root.display()),
                format!("--exec-root={}", exec_root.display()),
                format!("--host=unix://{}", self.docker_sock.display()),
                format!("--pidfile={}", d.join("dockerd.pid").display()),
                format!("--bridge={}", self.bridge),
                "--iptables=false".into(),
                "--ip-masq=false".into(),
                "--exec-opt=native.cgroupdriver=cgroupfs".into(),
                format!("--add-runtime=clamp={}", wrapper.display()),
                "--default-runtime=clamp".into(),
            ],
        )?;
        let up = wait_until(Duration::from_secs(60), || {
            run(self.docker().arg("info")).is_ok_and(|o| o.status.success())
        });
        if !up {
            return Err(format!(
                "the kubelet's dockerd did not answer\n{}",
                self.logs_tail()
            ));
        }
        // Containers a killed earlier run left behind.
        if let Ok(o) = run(self.docker().args(["ps", "-aq"])) {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = run(self.docker().args(["rm", "-f", id]));
            }
        }
        let has = |tag: &str| {
            run(self.docker().args(["image", "inspect", tag])).is_ok_and(|o| o.status.success())
        };
        if !has(&self.image) {
            let save = Command::new("docker")
                .args(["save", &self.image])
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            let out = save.stdout.ok_or("docker save has no stdout")?;
            run_ok(self.docker().arg("load").stdin(out))?;
        }
        let pause = self.pause_image();
        if !has(&pause) {
            let name = format!("mpk-pause-{}", self.bridge);
            run_ok(self.docker().args([
                "create",
                "--name",
                &name,
                &self.image,
                "sleep",
                "infinity",
            ]))?;
            let committed = run_ok(self.docker().args([
                "commit",
                "--change",
                "CMD [\"sleep\", \"infinity\"]",
                &name,
                &pause,
            ]));
            let _ = run(self.docker().args(["rm", "-f", &name]));
            committed?;
        }
        Ok(())
    }

    /// The sandbox ("pause") image: the bench image whose command sleeps (no registry here).
    fn pause_image(&self) -> String {
        let tag = self.image.rsplit(':').next().unwrap_or("latest");
        format!("megaplan-e2e-pause:{tag}")
    }

    fn kubelet(&mut self, bin: &Path) -> Result<(), String> {
        let d = self.dir.clone();
        let root = self.kubelet_root.clone();
        fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        let port = free_port();
        let args = vec![
            format!("--kubeconfig={}", d.join("node.kubeconfig").display()),
            "--container-runtime=docker".into(),
            format!("--docker-endpoint=unix://{}", self.docker_sock.display()),
            format!(
                "--container-runtime-endpoint=unix://{}",
                d.join("dockershim.sock").display()
            ),
            format!(
                "--image-service-endpoint=unix://{}",
                d.join("dockershim.sock").display()
            ),
            format!("--hostname-override={}", self.node),
            format!("--pod-infra-container-image={}", self.pause_image()),
            "--cgroups-per-qos=false".into(),
            "--enforce-node-allocatable=".into(),
            "--cgroup-driver=cgroupfs".into(),
            "--fail-swap-on=false".into(),
            format!("--root-dir={}", root.display()),
            format!("--cert-dir={}", root.join("pki").display()),
            format!("--port={port}"),
            "--read-only-port=0".into(),
            "--healthz-port=0".into(),
            format!("--client-ca-file={}", d.join("ca.crt").display()),
            "--anonymous-auth=false".into(),
            "--authorization-mode=AlwaysAllow".into(),
            "--eviction-hard=memory.available<1Mi,nodefs.available<1%,imagefs.available<1%".into(),
            "--image-gc-high-threshold=100".into(),
            format!("--volume-plugin-dir={}", root.join("plugins").display()),
            "--resolv-conf=/etc/resolv.conf".into(),
            "--max-pods=20".into(),
        ];
        self.spawn("kubelet", &bin.join("kubelet"), &args)?;
        Ok(())
    }

    /// GET `path` from the API server as the admin; the body, or `None`.
    pub fn kubectl_raw(&self, path: &str) -> Option<String> {
        let server = fs::read_to_string(&self.admin_kubeconfig)
            .ok()?
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_string))?;
        let o = Command::new("curl")
            .args(["-sS", "--http1.1", "--max-time", "10", "--cacert"])
            .arg(self.dir.join("ca.crt"))
            .arg("--cert")
            .arg(self.dir.join("admin.crt"))
            .arg("--key")
            .arg(self.dir.join("admin.key"))
            .arg(format!("{server}{path}"))
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Send `method` with a JSON body to `path` as the admin; the response body.
    pub fn api_send(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<String, String> {
        let server = fs::read_to_string(&self.admin_kubeconfig)
            .map_err(|e| e.to_string())?
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_string))
            .ok_or("no server in the admin kubeconfig")?;
        let send = || {
            run_ok(
                Command::new("curl")
                    .args([
                        "-sS",
                        "--http1.1",
                        "--fail-with-body",
                        "--max-time",
                        "20",
                        "-X",
                        method,
                        "-H",
                        "Content-Type: application/json",
                        "--data-binary",
                        &body.to_string(),
                        "--cacert",
                    ])
                    .arg(self.dir.join("ca.crt"))
                    .arg("--cert")
                    .arg(self.dir.join("admin.crt"))
                    .arg("--key")
                    .arg(self.dir.join("admin.key"))
                    .arg(format!("{server}{path}")),
            )
        };
        // A freshly started API server may still refuse while its caches fill: a few tries.
        let mut last = String::new();
        for _ in 0..10 {
            match send() {
                Ok(o) => return Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        Err(format!("{last}\n{}", self.logs_tail()))
    }

    /// GET `path` as JSON (`Null` when it cannot be read).
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        self.kubectl_raw(path)
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The namespace, the Role of docs/providers.md bound to `megaplan-cloudd`, the default
    /// StorageClass; then waits for the node to be Ready and the namespace's default
    /// ServiceAccount (pods are refused before it exists).
    fn objects(&self) -> Result<(), String> {
        use serde_json::json;
        let ns = &self.namespace;
        self.api_send(
            "POST",
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )?;
        let role = role_manifest(ns);
        self.api_send(
            "POST",
            &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles"),
            &role,
        )?;
        self.api_send(
            "POST",
            &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "megaplan-cloudd", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "megaplan-cloudd"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "megaplan-cloudd"}],
            }),
        )?;
        self.api_send(
            "POST",
            "/apis/storage.k8s.io/v1/storageclasses",
            &json!({
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": self.storage_class, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                "provisioner": "kubernetes.io/host-path",
                "reclaimPolicy": "Delete",
            }),
        )?;
        let node_ready = wait_until(Duration::from_secs(120), || {
            self.get_json(&format!("/api/v1/nodes/{}", self.node))["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        });
        if !node_ready {
            return Err(format!(
                "node {} did not become Ready: {}\n{}",
                self.node,
                self.get_json(&format!("/api/v1/nodes/{}", self.node))["status"]["conditions"],
                self.logs_tail()
            ));
        }
        let account = wait_until(Duration::from_secs(60), || {
            self.get_json(&format!("/api/v1/namespaces/{ns}/serviceaccounts/default"))["metadata"]["name"]
                == "default"
        });
        if !account {
            return Err(format!(
                "no default ServiceAccount in {ns}\n{}",
                self.logs_tail()
            ));
        }
        Ok(())
    }
}

/// The Role docs/providers.md gives the daemon: pods (with exec and log), claims, Secrets and
/// ConfigMaps in one namespace.
pub fn role_manifest(ns: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "megaplan-cloudd", "namespace": ns},
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims", "secrets", "configmaps"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        ],
    })
}

/// The address of the default route's interface (the apiserver advertises it; loopback is
/// refused there).
fn primary_ip() -> String {
    let o = Command::new("ip")
        .args(["-4", "route", "get", "1.1.1.1"])
        .output();
    let text = o
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "src")
        .map(|w| w[1].to_string())
        .unwrap_or_else(|| "10.0.2.15".to_string())
}

fn stop(p: &mut Proc) {
    // SAFETY: kill(2) on the pid of a child we own and have not reaped.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    let exited = crate::util::poll_until(Duration::from_secs(20), || {
        p.child.try_wait().is_ok_and(|s| s.is_some())
    });
    if !exited {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        // The host-path provisioner's volumes a failed test did not destroy (read while the API
        // server still answers; removed once nothing uses them).
        let volumes: Vec<String> = self.get_json("/api/v1/persistentvolumes")["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|pv| pv["spec"]["hostPath"]["path"].as_str())
                    .filter(|p| p.starts_with("/tmp/hostpath_pv/") && !p.contains(".."))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        // The kubelet first (it would restart what is removed), then its containers.
        if let Some(i) = self.procs.iter().position(|p| p.name == "kubelet") {
            let mut p = self.procs.remove(i);
            stop(&mut p);
        }
        if let Ok(o) = run(self.docker().args(["ps", "-aq"])) {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = run(self.docker().args(["rm", "-f", id]));
            }
        }
        while let Some(mut p) = self.procs.pop() {
            stop(&mut p);
        }
        // What the kubelet mounted (ConfigMap and Secret volumes are tmpfs mounts).
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&*self.dir.to_string_lossy()))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        for v in volumes {
            let _ = fs::remove_dir_all(v);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        if std::env::var_os("MEGAPLAN_KUBE_KEEP_LOGS").is_some() {
            // For debugging the rig: only the component logs are kept.
            eprintln!(
                "kubernetes test cluster logs kept in {}",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
        let _ = fs::remove_dir_all(Path::new("/run").join(format!("mpk-{}", self.bridge)));
    }
}

/// A daemon with a `provider: kubernetes` cloud.yaml on `cluster` (the daemon's kubeconfig,
/// the test namespace, the bench image, `hostNetwork: true`, a free port for the health
/// server), and the client run against it with `env` (the secret values).
pub struct KubeRunner {
    pub daemon: crate::Daemon,
    pub project: PathBuf,
    pub cloud_yaml: PathBuf,
    /// `kubernetes.name`: the pod's name (`<name>-workspace` the claim's, `<name>-env` the Secret's).
    pub name: String,
    pub env: Vec<(String, String)>,
}

impl KubeRunner {
    /// `secrets`: the names listed under `secrets:` with the values the client sends.
    pub fn start(cluster: &KubeCluster, secrets: &[(&str, &str)]) -> KubeRunner {
        KubeRunner::start_with_args(cluster, secrets, &[])
    }

    /// [`KubeRunner::start`] with the daemon started with `daemon_args` (e.g.
    /// `--notify-config <file>`).
    pub fn start_with_args(
        cluster: &KubeCluster,
        secrets: &[(&str, &str)],
        daemon_args: &[&str],
    ) -> KubeRunner {
        let daemon = crate::Daemon::start(&[], daemon_args);
        let project = daemon.dir.join("project");
        fs::create_dir_all(&project).expect("project dir");
        let name = format!(
            "mpk{}",
            crate::unique_suffix().replace(|c: char| !c.is_ascii_alphanumeric(), "")
        );
        // hostNetwork: the health server listens on the node, so its port must be free there.
        let port = std::net::TcpListener::bind("0.0.0.0:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let names: Vec<&str> = secrets.iter().map(|(n, _)| *n).collect();
        let cloud_yaml = project.join("cloud.yaml");
        fs::write(
            &cloud_yaml,
            format!(
                "provider: kubernetes\nrepo: {{url: /srv/repo.git, workspace: /workspace/app}}\nsecrets: [{secrets}]\nresources: {{port: {port}}}\nkubernetes:\n  kubeconfig: {kc}\n  namespace: {ns}\n  name: {name}\n  image: {image}\n  storage: 1Gi\n  pod_template:\n    spec:\n      hostNetwork: true\n",
                secrets = names.join(", "),
                kc = cluster.daemon_kubeconfig.display(),
                ns = cluster.namespace,
                image = cluster.image,
            ),
        )
        .expect("cloud.yaml");
        KubeRunner {
            daemon,
            project,
            cloud_yaml,
            name,
            env: secrets
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                .collect(),
        }
    }

    /// `megaplan-cloudctl --cloud-yaml <file> args…` with the secret values in its environment.
    pub fn ctl_with(&self, cloud_yaml: &Path, args: &[&str]) -> crate::rig::Run {
        crate::rig::ctl_in(&self.daemon, &self.project, &self.env, cloud_yaml, args)
    }

    /// [`KubeRunner::ctl_with`] on this runner's cloud.yaml.
    pub fn ctl(&self, args: &[&str]) -> crate::rig::Run {
        self.ctl_with(&self.cloud_yaml, args)
    }

    /// `ticks --json --limit <limit>`, newest first (empty when it cannot be read).
    pub fn ticks(&self, limit: u32) -> Vec<megaplan_cloud_api::wire::TickRecord> {
        self.ctl(&["ticks", "--json", "--limit", &limit.to_string()])
            .try_decode()
            .unwrap_or_default()
    }

    /// How many resident observers (`resident.py`, recognised by its source on its command
    /// line) run in the pod, `None` when the pod cannot be asked. The pattern is bracketed so
    /// that the asking command's own argv never matches it.
    pub fn observers_in_pod(&self) -> Option<usize> {
        let r = self.ctl(&[
            "exec",
            "n=0; for f in /proc/[0-9]*/cmdline; do grep -q 'def [s]erve(python)' \"$f\" 2>/dev/null && n=$((n+1)); done; echo \"observers=$n\"",
        ]);
        r.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("observers="))
            .and_then(|n| n.parse().ok())
    }

    /// The pod's processes (pid, parent, group, command line cut at 160 bytes), for a
    /// failure's message.
    pub fn pod_processes(&self) -> String {
        self.ctl(&[
            "exec",
            "for d in /proc/[0-9]*; do p=${d#/proc/}; s=$(cut -d' ' -f4,5 $d/stat 2>/dev/null); c=$(tr '\\000' ' ' < $d/cmdline 2>/dev/null | cut -c1-160); echo \"$p $s $c\"; done; ls -l /tmp/megaplan-cloudd-calls 2>&1",
        ])
        .stdout
    }

    /// Deploy, give the runner a repository (it has no network) and its clone in the workspace
    /// with the stand-in core's `control` file, then launch a chain of `labels` written under
    /// the project folder. `Err` says which step failed.
    pub fn deploy_and_launch(&self, labels: &[&str], control: &str) -> Result<(), String> {
        let step = |what: &str, r: crate::rig::Run| {
            if r.code == Some(0) {
                Ok(())
            } else {
                Err(format!(
                    "{what} failed\nstdout: {}\nstderr: {}",
                    r.stdout, r.stderr
                ))
            }
        };
        step("deploy", self.ctl(&["deploy"]))?;
        step(
            "creating the repo",
            self.ctl(&[
                "exec",
                "set -e; git init -q --bare -b main /srv/repo.git; s=$(mktemp -d); cd $s; git init -q -b main; echo hi > README; git add README; git -c user.name=t -c user.email=t@e commit -qm i; git push -q /srv/repo.git main",
            ]),
        )?;
        step(
            "the workspace clone",
            self.ctl(&[
                "exec",
                &format!(
                    "git clone -q /srv/repo.git /workspace/app && mkdir -p /workspace/app/.megaplan && printf '%s' {} > /workspace/app/.megaplan/standin-control.json",
                    megaplan_cloudd::shell::quote(control)
                ),
            ]),
        )?;
        let spec = crate::rig::write_chain(&self.project.join("epic"), "chain.yaml", labels);
        step(
            "chain",
            self.ctl(&["chain", spec.to_str().unwrap_or_default()]),
        )
    }
}
