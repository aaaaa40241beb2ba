//! The image `make image` builds (`target/image/hyperpage-<version>.oci.tar`), run with
//! `runc` the way a kubelet would run the chart's pods: the root filesystem unpacked from the
//! archive's layers, uid/gid 65532, a read-only root, no new privileges, no capabilities.
//! `version` and `crd` answer; `portal --api-only` with a ServiceAccount token mounted where
//! Kubernetes mounts it (the in-cluster configuration, as in a pod) answers `/healthz`, and
//! `/readyz` once it has read its Workspace from the suite's API server.
//!
//! The host's network namespace is kept: the API server listens on the host's loopback.
//! No `rlimits` in `config.json`: in this VM setting RLIMIT_NPROC fails (podman/crun too).
//! An e2e test rather than a script step: it needs the cluster for the portal, and its
//! guards delete the containers and the bundle even when an assertion fails.

use crate::support::*;
use base64::Engine;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const UID: u32 = 65532;

fn archive() -> PathBuf {
    let path = repo().join(format!("target/image/hyperpage-{}.oci.tar", env!("CARGO_PKG_VERSION")));
    assert!(path.is_file(), "{} is missing: run `make image` (e2e/test.sh builds it before this suite)", path.display());
    path
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program} on PATH: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// A work directory, and the runc containers started in it, removed when dropped.
struct Bundle {
    dir: PathBuf,
    containers: Vec<String>,
    children: Vec<Child>,
}

impl Bundle {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("hyperpage-e2e-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        Self { dir, containers: Vec::new(), children: Vec::new() }
    }

    fn state(&self) -> String {
        self.dir.join("state").to_string_lossy().into_owned()
    }

    /// A blob of the unpacked OCI layout, its digest checked.
    fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let path = self.dir.join("oci/blobs/sha256").join(hex);
        let sum = ok("sha256sum", &[path.to_str().unwrap()]);
        assert_eq!(sum.split_whitespace().next(), Some(hex), "blob {digest} has its digest");
        std::fs::read(path).unwrap()
    }

    /// `runc run` of the image's root filesystem with `args`, as uid/gid 65532.
    fn spec(&self, name: &str, args: &[&str], env: &[String], mounts: &[Value]) -> PathBuf {
        let bundle = self.dir.join(name);
        std::fs::create_dir_all(&bundle).unwrap();
        ok("runc", &["spec", "--bundle", bundle.to_str().unwrap()]);
        let path = bundle.join("config.json");
        let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let process = &mut spec["process"];
        process["terminal"] = json!(false);
        process["args"] = json!(args);
        process["env"] = json!(env);
        process["user"] = json!({"uid": UID, "gid": UID});
        process["noNewPrivileges"] = json!(true);
        // As `capabilities: drop: [ALL]` in the chart.
        process["capabilities"] = json!({"bounding": [], "effective": [], "permitted": [], "ambient": []});
        process.as_object_mut().unwrap().remove("rlimits");
        spec["root"] = json!({"path": self.dir.join("rootfs"), "readonly": true});
        spec["hostname"] = json!(name);
        let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
        namespaces.retain(|n| n["type"] != "network");
        spec["mounts"].as_array_mut().unwrap().extend(mounts.iter().cloned());
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        bundle
    }

    /// Runs a container to its end; its stdout.
    fn run(&mut self, name: &str, args: &[&str], env: &[String]) -> String {
        let bundle = self.spec(name, args, env, &[]);
        let id = self.id(name);
        let output = run("runc", &["--root", &self.state(), "run", "--bundle", bundle.to_str().unwrap(), &id]);
        assert!(output.status.success(), "runc run {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }

    /// Starts a long-running container (its output to NAME.log); `runc run` is the child.
    fn start(&mut self, name: &str, args: &[&str], env: &[String], mounts: &[Value]) {
        let bundle = self.spec(name, args, env, mounts);
        let id = self.id(name);
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new("runc")
            .args(["--root", &self.state(), "run", "--bundle", bundle.to_str().unwrap(), &id])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("runc on PATH");
        self.children.push(child);
    }

    /// Waits for the last started container's `runc run` to end.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.children.last_mut()?;
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .ok()
    }

    fn id(&mut self, name: &str) -> String {
        let id = format!("hyperpage-e2e-{name}-{}", std::process::id());
        self.containers.push(id.clone());
        id
    }

    /// `runc state`: the container's status and its init process on the host.
    fn container_state(&self, name: &str) -> Option<Value> {
        let id = format!("hyperpage-e2e-{name}-{}", std::process::id());
        let output = run("runc", &["--root", &self.state(), "state", &id]);
        output.status.success().then(|| serde_json::from_slice(&output.stdout).unwrap())
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = Command::new("runc").args(["--root", &self.state(), "delete", "--force", id]).output();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Status code of a plain GET on loopback (the probes skip the Host check).
async fn status(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// A `/proc/PID/status` field, e.g. `Uid`.
fn proc_status(pid: u64, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).map(|v| v.trim().to_string()).unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs a cluster, root and runc: make e2e"]
async fn the_image_runs_with_runc_as_nonroot_on_a_read_only_root() {
    let _serial = serial().await;
    assert_eq!(ok("id", &["-u"]).trim(), "0", "runc runs the image as uid 65532 only for root (CI runs as root)");
    let archive = archive();
    let mut bundle = Bundle::new();
    let layout = bundle.dir.join("oci");
    std::fs::create_dir_all(&layout).unwrap();
    ok("tar", &["-xf", archive.to_str().unwrap(), "-C", layout.to_str().unwrap()]);

    // The archive is an OCI layout: one image, named by its version.
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let marker: Value = serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(marker, json!({"imageLayoutVersion": "1.0.0"}));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(manifests[0]["annotations"]["org.opencontainers.image.ref.name"], env!("CARGO_PKG_VERSION"));
    let manifest: Value = serde_json::from_slice(&bundle.blob(manifests[0]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let config: Value = serde_json::from_slice(&bundle.blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["Entrypoint"], json!(["/usr/local/bin/hyperpage"]));
    assert_eq!(c["Cmd"], json!(["operator"]));
    assert_eq!(c["ExposedPorts"], json!({"8080/tcp": {}, "9090/tcp": {}}), "the Dockerfile's EXPOSE");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap();
    assert!(revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()), "a commit: {revision}");
    assert!(labels["org.opencontainers.image.source"].as_str().unwrap().starts_with("https://"), "{labels}");
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");

    // The root filesystem: every layer, in order, each checked against its digest.
    let rootfs = bundle.dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), config["rootfs"]["diff_ids"].as_array().unwrap().len());
    for layer in layers {
        assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        let digest = layer["digest"].as_str().unwrap();
        bundle.blob(digest);
        let blob = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        ok("tar", &["-xzf", blob.to_str().unwrap(), "-C", rootfs.to_str().unwrap(), "--same-owner"]);
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("nonroot:x:65532:65532:")), "{passwd}");
    assert!(std::fs::metadata(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap().len() > 100_000, "a CA bundle");
    let env: Vec<String> = c["Env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    let entrypoint = "/usr/local/bin/hyperpage";

    let version = bundle.run("version", &[entrypoint, "version"], &env);
    assert_eq!(version.trim(), format!("hyperpage {}", env!("CARGO_PKG_VERSION")));
    let crds = bundle.run("crd", &[entrypoint, "crd"], &env);
    // crds/ holds `hyperpage crd` split by file (the CRD drift check compares the same way).
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("crds")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let committed: String = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    assert!(crds.contains("name: workspaces.hyperpage.dev") && crds.contains("name: toolbindings.hyperpage.dev"), "{crds}");
    assert_eq!(crds, committed, "the image's `crd` prints the committed CRDs");

    // The portal, as its Deployment runs it: a ServiceAccount token, the cluster's CA and the
    // namespace where Kubernetes mounts them, the API server's address in the environment.
    let client = crate::setup().await;
    let ns = TestNamespace::create(&client, "e2e-image").await;
    apply_file(&client, &ns.name, &repo().join("examples/workspace.yaml")).await;
    apply_yaml(
        &client,
        &ns.name,
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: image-portal}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: image-portal}
rules:
- apiGroups: [hyperpage.dev]
  resources: [workspaces, toolbindings]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: image-portal}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: image-portal}
subjects:
- {kind: ServiceAccount, name: image-portal}
"#,
    )
    .await;
    let secrets = bundle.dir.join("serviceaccount");
    std::fs::create_dir_all(&secrets).unwrap();
    let token = ok("kubectl", &["create", "token", "image-portal", "-n", &ns.name, "--duration=10m"]);
    let view: Value = serde_json::from_str(&ok("kubectl", &["config", "view", "--minify", "--raw", "-o", "json"])).unwrap();
    let cluster = &view["clusters"][0]["cluster"];
    let ca = base64::engine::general_purpose::STANDARD.decode(cluster["certificate-authority-data"].as_str().unwrap()).unwrap();
    std::fs::write(secrets.join("token"), token.trim()).unwrap();
    std::fs::write(secrets.join("ca.crt"), ca).unwrap();
    std::fs::write(secrets.join("namespace"), &ns.name).unwrap();
    // Readable by uid 65532, as the kubelet's projected volume is.
    ok("chmod", &["-R", "a+rX", secrets.to_str().unwrap()]);
    let server = cluster["server"].as_str().unwrap().strip_prefix("https://").expect("an https server");
    let (host, port) = server.rsplit_once(':').expect("host:port");
    let mut portal_env = env.clone();
    portal_env.push(format!("KUBERNETES_SERVICE_HOST={host}"));
    portal_env.push(format!("KUBERNETES_SERVICE_PORT={port}"));
    let mount = json!({"destination": "/var/run/secrets/kubernetes.io/serviceaccount", "type": "bind",
        "source": secrets.to_str().unwrap(), "options": ["rbind", "ro"]});
    let (listen, metrics) = (free_port(), free_port());
    let (listen_arg, metrics_arg) = (format!("127.0.0.1:{listen}"), format!("127.0.0.1:{metrics}"));
    let args = [
        entrypoint,
        "portal",
        "--api-only",
        "--namespace",
        &ns.name,
        "--workspace",
        "payments",
        "--listen",
        &listen_arg,
        "--metrics-listen",
        &metrics_arg,
    ];
    bundle.start("portal", &args, &portal_env, &[mount]);

    let log = |b: &Bundle| b.log("portal");
    let healthz = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if status(listen, "/healthz").await == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(healthz.is_ok(), "/healthz did not answer 200 within 30 s; log:\n{}", log(&bundle));
    // Ready needs the Workspace from the API server: the token, the CA bundle and TLS work.
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while status(listen, "/readyz").await != Some(200) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "/readyz did not answer 200 within 30 s; log:\n{}", log(&bundle));
    assert_eq!(status(listen, "/").await, Some(404), "--api-only serves no page");
    assert_eq!(status(metrics, "/healthz").await, Some(200));

    // The running process: uid/gid 65532, no new privileges, no capabilities, root read-only.
    let state = bundle.container_state("portal").expect("runc state of the portal");
    assert_eq!(state["status"], "running", "{state}");
    let pid = state["pid"].as_u64().unwrap();
    assert_eq!(proc_status(pid, "Uid").split_whitespace().collect::<Vec<_>>(), ["65532"; 4]);
    assert_eq!(proc_status(pid, "Gid").split_whitespace().collect::<Vec<_>>(), ["65532"; 4]);
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");
    assert_eq!(proc_status(pid, "CapBnd"), "0000000000000000");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).rfind(|f| f[4] == "/").expect("a root mount");
    assert!(root[5].split(',').any(|o| o == "ro"), "root mounted read-only: {root:?}");

    // SIGTERM: the portal drains and exits 0, and runc removes the container.
    ok("runc", &["--root", &bundle.state(), "kill", &format!("hyperpage-e2e-portal-{}", std::process::id()), "TERM"]);
    let exit = bundle.wait_exit(Duration::from_secs(30)).await.expect("the portal exits within 30 s of SIGTERM");
    assert!(exit.success(), "exit {exit:?}; log:\n{}", log(&bundle));
    assert!(bundle.container_state("portal").is_none(), "runc removed the stopped container");
    let text = log(&bundle);
    assert!(!text.contains(token.trim()), "the token is not logged");
    let dir = bundle.dir.clone();
    drop(bundle);
    assert!(!dir.exists(), "the bundle is removed");
}
