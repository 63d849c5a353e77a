//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager (deployment, replicaset and endpointslice controllers), built by
//! `.ci/kube-control-plane`. The harness itself plays the node: it registers one, binds the
//! pods the ReplicaSets create to it, runs each as a real function process listening on a pod
//! IP in 127.1.0.0/16, and marks it Ready, so the controllers put its address in the slice.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{echo_script, TempDir};

/// The token of the harness (in `system:masters`).
pub const ADMIN_TOKEN: &str = "harness-admin-token";
/// The token of defrost's user, bound to the minimal Role only.
pub const DEFROST_TOKEN: &str = "defrost-token";
const NODE: &str = "harness-node";

/// The folder holding kube-apiserver and kube-controller-manager: `$DEFROST_K8S_BIN`, else the
/// newest build in `~/.cache/defrost-k8s/`. Fails (never skips) when there is none.
pub fn binaries() -> PathBuf {
    if let Ok(dir) = std::env::var("DEFROST_K8S_BIN") {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache = Path::new(&home).join(".cache/defrost-k8s");
    let newest = std::fs::read_dir(&cache).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("kube-apiserver").is_file())
            .max()
    });
    newest.unwrap_or_else(|| {
        panic!(
            "no Kubernetes control plane in {}: run .ci/kube-control-plane first",
            cache.display()
        )
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub fn until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
    )
}

/// A control plane with the harness's node.
pub struct Kube {
    pub dir: TempDir,
    bins: PathBuf,
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
    controllers: Option<Proc>,
    pub port: u16,
    etcd_port: u16,
    pub admin: Api,
    node: Option<Node>,
}

/// An API client with a token.
#[derive(Clone)]
pub struct Api {
    pub server: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(server: &str, ca: &Path, token: &str) -> Api {
        let pem = std::fs::read(ca).unwrap();
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .tls_config(tls)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .build()
            .into();
        Api {
            server: server.to_owned(),
            token: token.to_owned(),
            agent,
        }
    }

    /// One call; returns the status and the JSON answer (`Null` when not JSON).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        match self.try_call(method, path, body) {
            Ok(answer) => answer,
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ureq::Error> {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server))
            .header("Authorization", format!("Bearer {}", self.token));
        let content_type = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let response = match body {
            Some(body) => self.agent.run(
                request
                    .header("Content-Type", content_type)
                    .body(body.to_string().into_bytes())
                    .unwrap(),
            )?,
            None => self.agent.run(request.body(()).unwrap())?,
        };
        let status = response.status().as_u16();
        let mut text = String::new();
        response
            .into_body()
            .into_reader()
            .read_to_string(&mut text)?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// A call that must succeed (2xx).
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, answer) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path} answered {status}: {answer}"
        );
        answer
    }

    fn watch(&self, path: &str) -> Result<Box<dyn BufRead + Send>, ureq::Error> {
        let response = self
            .agent
            .get(format!("{}{path}", self.server))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()?;
        Ok(Box::new(BufReader::new(response.into_body().into_reader())))
    }
}

impl Kube {
    /// Starts etcd, the API server and the controllers, and registers the harness's node.
    pub fn start() -> Kube {
        let bins = binaries();
        let dir = TempDir::new("kube");
        let d = dir.path().to_owned();
        let etcd_port = free_port();
        let peer_port = free_port();
        let etcd = spawn(
            Command::new("etcd")
                .arg("--name=harness")
                .arg(format!("--data-dir={}", d.join("etcd").display()))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
                ))
                .arg(format!(
                    "--initial-cluster=harness=http://127.0.0.1:{peer_port}"
                ))
                .arg("--unsafe-no-fsync"),
            &d.join("etcd.log"),
        );
        assert!(
            until(Duration::from_secs(30), || crate::common::agent()
                .get(format!("http://127.0.0.1:{etcd_port}/health"))
                .call()
                .is_ok_and(|r| r.status() == 200)),
            "etcd did not start: {}",
            std::fs::read_to_string(d.join("etcd.log")).unwrap_or_default()
        );
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(d.join("sa.key"))
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{ADMIN_TOKEN},harness,1,system:masters\n{DEFROST_TOKEN},defrost,2\n"),
        )
        .unwrap();
        let port = free_port();
        let server = format!("https://127.0.0.1:{port}");
        let mut kube = Kube {
            admin: Api {
                server: server.clone(),
                token: ADMIN_TOKEN.into(),
                agent: ureq::Agent::new_with_defaults(),
            },
            dir,
            bins,
            etcd: Some(etcd),
            apiserver: None,
            controllers: None,
            port,
            etcd_port,
            node: None,
        };
        kube.start_apiserver();
        kube.admin = Api::new(&server, &kube.ca_file(), ADMIN_TOKEN);
        kube.write_kubeconfig("admin.kubeconfig", ADMIN_TOKEN, "default");
        let kubeconfig = d.join("admin.kubeconfig");
        kube.controllers = Some(spawn(
            Command::new(kube.bins.join("kube-controller-manager"))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg("--controllers=deployment,replicaset,endpointslice")
                .arg("--leader-elect=false")
                .arg("--port=0")
                .arg("--secure-port=0")
                .arg("--endpointslice-updates-batch-period=0s")
                .arg("--v=1"),
            &d.join("controller-manager.log"),
        ));
        kube.admin.ok(
            "POST",
            "/api/v1/nodes",
            Some(&json!({
                "metadata": {"name": NODE},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Harness"}]}
            })),
        );
        kube
    }

    fn start_apiserver(&mut self) {
        let d = self.dir.path().to_owned();
        let log = d.join(format!(
            "apiserver-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        ));
        self.apiserver = Some(spawn(
            Command::new(self.bins.join("kube-apiserver"))
                .arg(format!(
                    "--etcd-servers=http://127.0.0.1:{}",
                    self.etcd_port
                ))
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg(format!("--secure-port={}", self.port))
                .arg("--insecure-port=0")
                .arg(format!("--cert-dir={}", d.join("certs").display()))
                .arg(format!(
                    "--service-account-key-file={}",
                    d.join("sa.key").display()
                ))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    d.join("sa.key").display()
                ))
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg(format!(
                    "--token-auth-file={}",
                    d.join("tokens.csv").display()
                ))
                .arg("--authorization-mode=RBAC")
                .arg("--service-cluster-ip-range=10.96.0.0/24")
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg("--endpoint-reconciler-type=none")
                .arg("--anonymous-auth=false")
                .arg("--v=1"),
            &log,
        ));
        let ca = d.join("certs/apiserver.crt");
        assert!(
            until(Duration::from_secs(60), || ca.is_file()),
            "kube-apiserver wrote no certificate: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let api = Api::new(
            &format!("https://127.0.0.1:{}", self.port),
            &ca,
            ADMIN_TOKEN,
        );
        assert!(
            until(Duration::from_secs(90), || api
                .try_call("GET", "/readyz", None)
                .is_ok_and(|(s, _)| s == 200)),
            "kube-apiserver did not become ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The CA bundle the API server's certificate chains to.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("certs/apiserver.crt")
    }

    /// Stops the API server and starts it again on the same port and store.
    pub fn restart_apiserver(&mut self, down_for: Duration) {
        self.apiserver = None;
        thread::sleep(down_for);
        self.start_apiserver();
    }

    /// Writes a kubeconfig using `token` in `namespace`; returns its path.
    pub fn write_kubeconfig(&self, file: &str, token: &str, namespace: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Config
current-context: harness
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:{}
    certificate-authority: {}
contexts:
- name: harness
  context:
    cluster: local
    user: someone
    namespace: {namespace}
users:
- name: someone
  user:
    token: {token}
",
                self.port,
                self.ca_file().display()
            ),
        )
        .unwrap();
        path
    }

    /// A namespace where defrost's user holds the minimal Role, with the node playing its
    /// pods.
    pub fn namespace(&mut self, name: &str) {
        self.admin.ok(
            "POST",
            "/api/v1/namespaces",
            Some(&json!({"metadata": {"name": name}})),
        );
        let rbac = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{name}");
        self.admin.ok(
            "POST",
            &format!("{rbac}/roles"),
            Some(&json!({
                "metadata": {"name": "defrost"},
                "rules": [
                    {"apiGroups": ["apps"], "resources": ["deployments"],
                     "verbs": ["get", "list", "watch"]},
                    {"apiGroups": ["apps"], "resources": ["deployments/scale"],
                     "verbs": ["patch"]},
                    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                     "verbs": ["get", "list", "watch"]}
                ]
            })),
        );
        self.admin.ok(
            "POST",
            &format!("{rbac}/rolebindings"),
            Some(&json!({
                "metadata": {"name": "defrost"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "defrost"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "defrost"}]
            })),
        );
        assert!(self.node.is_none(), "one namespace per control plane");
        self.node = Some(Node::start(self.admin.clone(), name, self.dir.path()));
    }

    /// A function: a Deployment labelled `defrost.dev/function=NAME` running the echo function
    /// on `port`, and a Service of the same name. `annotations` go on the Deployment.
    pub fn function(
        &self,
        namespace: &str,
        name: &str,
        replicas: u64,
        port: u16,
        annotations: &[(&str, &str)],
    ) {
        let annotations: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        self.admin.ok(
            "POST",
            &format!("/apis/apps/v1/namespaces/{namespace}/deployments"),
            Some(&json!({
                "metadata": {"name": name, "labels": {"defrost.dev/function": name},
                             "annotations": annotations},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {
                            "terminationGracePeriodSeconds": 1,
                            "containers": [{"name": "fn", "image": "echo",
                                            "ports": [{"containerPort": port}]}]
                        }
                    }
                }
            })),
        );
        self.admin.ok(
            "POST",
            &format!("/api/v1/namespaces/{namespace}/services"),
            Some(&json!({
                "metadata": {"name": name},
                "spec": {"selector": {"app": name},
                         "ports": [{"port": 80, "targetPort": port}]}
            })),
        );
    }

    /// The Deployment as the API server has it.
    pub fn deployment(&self, namespace: &str, name: &str) -> Value {
        self.admin.ok(
            "GET",
            &format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}"),
            None,
        )
    }

    /// The ready addresses in the function's EndpointSlices.
    pub fn ready_addresses(&self, namespace: &str, service: &str) -> Vec<String> {
        let list = self.admin.ok(
            "GET",
            &format!(
                "/apis/discovery.k8s.io/v1beta1/namespaces/{namespace}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{service}"
            ),
            None,
        );
        let mut ready = Vec::new();
        for slice in list["items"].as_array().into_iter().flatten() {
            for e in slice["endpoints"].as_array().into_iter().flatten() {
                if e["conditions"]["ready"] != Value::Bool(false) {
                    for a in e["addresses"].as_array().into_iter().flatten() {
                        ready.push(a.as_str().unwrap_or_default().to_owned());
                    }
                }
            }
        }
        ready.sort();
        ready
    }

    /// The pods the node runs now, by name.
    pub fn pods(&self) -> Vec<PodRun> {
        let node = self.node.as_ref().expect("a namespace first");
        let pods = node.pods.lock().unwrap();
        pods.values().map(|p| p.info.clone()).collect()
    }

    /// Deletes a pod, as `kubectl delete pod` does (with its grace period).
    pub fn delete_pod(&self, namespace: &str, pod: &str) {
        self.admin.ok(
            "DELETE",
            &format!("/api/v1/namespaces/{namespace}/pods/{pod}"),
            None,
        );
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            node.stop();
        }
        self.controllers = None;
        self.apiserver = None;
        self.etcd = None;
    }
}

/// What the node knows of one pod it runs.
#[derive(Debug, Clone)]
pub struct PodRun {
    pub name: String,
    pub ip: Ipv4Addr,
    /// When the pod was marked Ready.
    pub ready_at: Option<Instant>,
    /// The function process's request log (one line per request).
    pub requests: PathBuf,
}

struct Running {
    info: PodRun,
    process: Option<Proc>,
}

/// The harness's kubelet: binds pods, runs them, marks them Ready, stops them when deleted.
struct Node {
    stop: Arc<AtomicBool>,
    pods: Arc<Mutex<HashMap<String, Running>>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Pod IPs handed out by this test process: 127.1.0.1 on.
static NEXT_IP: AtomicU32 = AtomicU32::new(1);

impl Node {
    fn start(api: Api, namespace: &str, dir: &Path) -> Node {
        let stop = Arc::new(AtomicBool::new(false));
        let pods: Arc<Mutex<HashMap<String, Running>>> = Arc::default();
        let (s, p, ns, d) = (
            Arc::clone(&stop),
            Arc::clone(&pods),
            namespace.to_owned(),
            dir.to_owned(),
        );
        let thread = thread::spawn(move || {
            let kubelet = Kubelet {
                api,
                namespace: ns,
                dir: d,
                pods: p,
            };
            while !s.load(Ordering::SeqCst) {
                kubelet.sync_once(&s);
            }
        });
        Node {
            stop,
            pods,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.pods.lock().unwrap().clear();
    }
}

struct Kubelet {
    api: Api,
    namespace: String,
    dir: PathBuf,
    pods: Arc<Mutex<HashMap<String, Running>>>,
}

impl Kubelet {
    /// Lists the pods, handles each, then follows a short watch.
    fn sync_once(&self, stop: &AtomicBool) {
        let path = format!("/api/v1/namespaces/{}/pods", self.namespace);
        let Ok((200, list)) = self.api.try_call("GET", &path, None) else {
            thread::sleep(Duration::from_millis(200));
            return;
        };
        for pod in list["items"].as_array().into_iter().flatten() {
            self.handle(pod);
        }
        let version = list["metadata"]["resourceVersion"].as_str().unwrap_or("");
        let watch = format!("{path}?watch=true&timeoutSeconds=2&resourceVersion={version}");
        let Ok(stream) = self.api.watch(&watch) else {
            thread::sleep(Duration::from_millis(200));
            return;
        };
        for line in stream.lines() {
            let Ok(line) = line else { break };
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            match event["type"].as_str() {
                Some("DELETED") => {
                    let name = event["object"]["metadata"]["name"].as_str().unwrap_or("");
                    self.pods.lock().unwrap().remove(name);
                }
                Some("ADDED" | "MODIFIED") => self.handle(&event["object"]),
                _ => break,
            }
        }
    }

    fn handle(&self, pod: &Value) {
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let pods_path = format!("/api/v1/namespaces/{}/pods/{name}", self.namespace);
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            // The kubelet's part of a graceful deletion: stop the container after a moment
            // (a preStop pause), then remove the pod for good.
            let running = self.pods.lock().unwrap().remove(&name);
            if running.is_some() {
                thread::sleep(Duration::from_millis(500));
            }
            drop(running);
            let _ = self.api.try_call(
                "DELETE",
                &pods_path,
                Some(&json!({"gracePeriodSeconds": 0})),
            );
            return;
        }
        let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
        if node.is_empty() {
            let _ = self.api.try_call(
                "POST",
                &format!("{pods_path}/binding"),
                Some(&json!({
                    "metadata": {"name": name},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}
                })),
            );
            return;
        }
        if node != NODE || self.pods.lock().unwrap().contains_key(&name) {
            return;
        }
        self.run(&name, pod, &pods_path);
    }

    /// Starts the pod's function process on a fresh pod IP and marks the pod Ready once it
    /// listens.
    fn run(&self, name: &str, pod: &Value, pods_path: &str) {
        let n = NEXT_IP.fetch_add(1, Ordering::SeqCst);
        let ip = Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8);
        let port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
            .as_u64()
            .unwrap_or(8080) as u16;
        let requests = self.dir.join(format!("requests-{name}"));
        let process = Proc(
            Command::new("python3")
                .arg(echo_script())
                .env("HOST", ip.to_string())
                .env("PORT", port.to_string())
                .env("REQUESTS_FILE", &requests)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 runs"),
        );
        let addr = SocketAddr::from((ip, port));
        let listening = until(Duration::from_secs(20), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(listening, "pod {name}'s function never listened on {addr}");
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"}
            ],
            "containerStatuses": [{"name": "fn", "ready": true, "restartCount": 0,
                                   "image": "echo", "imageID": "", "started": true,
                                   "state": {"running": {}}}]
        }});
        let ready_at = Instant::now();
        let (code, answer) = self
            .api
            .call("PATCH", &format!("{pods_path}/status"), Some(&status));
        assert_eq!(code, 200, "marking {name} Ready: {answer}");
        self.pods.lock().unwrap().insert(
            name.to_owned(),
            Running {
                info: PodRun {
                    name: name.to_owned(),
                    ip,
                    ready_at: Some(ready_at),
                    requests,
                },
                process: Some(process),
            },
        );
    }
}
