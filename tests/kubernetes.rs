//! defrost in front of a real Kubernetes control plane: Deployments scaled from zero through
//! the API, replicas found in EndpointSlices, readiness followed through watches. Needs the
//! binaries `.ci/kube-control-plane` builds, and etcd; fails without them.
#![cfg(feature = "kubernetes")]

mod common;
#[path = "common/kube.rs"]
mod kube;

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::{get, lines_in, Defrost};
use kube::{free_port, until, Kube, DEFROST_TOKEN};

/// One control plane at a time: each takes most of a core while it starts.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// defrost with the Kubernetes provider, as the user `defrost` holding only the minimal Role.
fn defrost(kube: &Kube, namespace: &str, token: &str, gateway: &str) -> Defrost {
    let kubeconfig =
        kube.write_kubeconfig(&format!("defrost-{token}.kubeconfig"), token, namespace);
    Defrost::start(&format!(
        "[gateway]\nscale_from_zero = true\ndefault_namespace = \"{namespace}\"\n{gateway}\n\
         [provider]\nkind = \"kubernetes\"\nkubeconfig = \"{}\"\nnamespaces = [\"{namespace}\"]\n",
        kubeconfig.display()
    ))
}

/// A control plane with namespace `ns` holding function `echo` at `replicas` (all ready), and
/// defrost in front of it.
fn running(ns: &str, replicas: usize) -> (Kube, Defrost) {
    let mut kube = Kube::start();
    kube.namespace(ns);
    kube.function(ns, "echo", replicas as u64, free_port(), &[]);
    assert!(
        until(Duration::from_secs(60), || kube
            .ready_addresses(ns, "echo")
            .len()
            == replicas),
        "{replicas} ready addresses"
    );
    let gw = defrost(&kube, ns, DEFROST_TOKEN, "");
    (kube, gw)
}

/// `clients` threads each calling `url` `each` times; every status answered.
fn calls(clients: usize, each: usize, url: &str) -> Vec<u16> {
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let url = url.to_owned();
            thread::spawn(move || (0..each).map(|_| get(&url).status).collect::<Vec<_>>())
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

fn replicas(kube: &Kube, ns: &str, name: &str) -> (u64, u64) {
    let d = kube.deployment(ns, name);
    (
        d["spec"]["replicas"].as_u64().unwrap_or(1),
        d["status"]["availableReplicas"].as_u64().unwrap_or(0),
    )
}

#[test]
fn a_cold_call_scales_the_deployment_once_and_is_answered_when_the_pod_is_ready() {
    let _one = serial();
    let mut kube = Kube::start();
    kube.namespace("cold");
    kube.function("cold", "echo", 0, free_port(), &[]);
    let gw = defrost(&kube, "cold", DEFROST_TOKEN, "");
    let generation = kube.deployment("cold", "echo")["metadata"]["generation"].clone();

    let url = gw.url("/function/echo/hello");
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                let reply = get(&url);
                (reply, Instant::now())
            })
        })
        .collect();
    let answers: Vec<_> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    for (reply, _) in &answers {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["path"], "/hello");
    }
    assert_eq!(replicas(&kube, "cold", "echo").0, 1);
    assert_eq!(
        kube.deployment("cold", "echo")["metadata"]["generation"],
        generation.as_u64().unwrap() + 1,
        "one scale call changed the Deployment once"
    );
    assert_eq!(
        gw.log_count("kubernetes: scaling echo.cold"),
        1,
        "{}",
        gw.log_text()
    );
    let pods = kube.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let ready_at = pods[0].ready_at.expect("marked ready");
    let first = answers.iter().map(|(_, at)| *at).min().unwrap();
    // The figure quoted in README.md ("On Kubernetes"): from the pod marked Ready to the first
    // answer, over the watch. Printed, not asserted.
    eprintln!(
        "cold start overhead over the pod's readiness: {:?}",
        first.saturating_duration_since(ready_at)
    );
}

#[test]
fn warm_calls_are_balanced_over_the_ready_replicas() {
    let _one = serial();
    let mut kube = Kube::start();
    kube.namespace("warm");
    kube.function("warm", "echo", 3, free_port(), &[]);
    assert!(
        until(Duration::from_secs(60), || kube
            .ready_addresses("warm", "echo")
            .len()
            == 3),
        "three ready addresses"
    );
    let gw = defrost(&kube, "warm", DEFROST_TOKEN, "");
    let url = gw.url("/function/echo/sleep/0.05");
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || (0..10).map(|_| get(&url).status).collect::<Vec<_>>())
        })
        .collect();
    for client in clients {
        assert!(client.join().unwrap().iter().all(|s| *s == 200));
    }
    let per_pod: Vec<usize> = kube.pods().iter().map(|p| lines_in(&p.requests)).collect();
    assert_eq!(per_pod.iter().sum::<usize>(), 60, "{per_pod:?}");
    assert!(
        per_pod.iter().all(|n| *n > 0),
        "every replica took requests: {per_pod:?}"
    );
}

#[test]
fn an_idle_function_is_scaled_to_zero() {
    let _one = serial();
    let mut kube = Kube::start();
    kube.namespace("idle");
    kube.function(
        "idle",
        "echo",
        0,
        free_port(),
        &[
            ("com.openfaas.scale.zero", "true"),
            ("com.openfaas.scale.zero-duration", "2s"),
        ],
    );
    let gw = defrost(
        &kube,
        "idle",
        DEFROST_TOKEN,
        "autoscale_interval = \"200ms\"",
    );
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
    assert_eq!(replicas(&kube, "idle", "echo").0, 1);
    assert!(
        until(Duration::from_secs(60), || replicas(&kube, "idle", "echo")
            .0
            == 0),
        "scaled to zero after idling: {}",
        gw.log_text()
    );
    assert!(
        until(Duration::from_secs(30), || kube.pods().is_empty()),
        "the pod went away"
    );
    // And back from zero.
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
}

#[test]
fn a_pod_deleted_under_load_leaves_the_slice_and_requests_go_to_the_others() {
    let _one = serial();
    let (kube, gw) = running("churn", 3);
    let url = gw.url("/function/echo/sleep/0.02");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            thread::spawn(move || {
                let mut statuses = Vec::new();
                let started = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::SeqCst)
                    && started.elapsed() < Duration::from_secs(60)
                    && statuses.len() < 2000
                {
                    statuses.push(get(&url).status);
                }
                statuses
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let victim = kube.pods().into_iter().next().expect("a pod");
    kube.delete_pod("churn", &victim.name);
    let gone = victim.ip.to_string();
    assert!(
        until(Duration::from_secs(30), || !kube
            .ready_addresses("churn", "echo")
            .contains(&gone)),
        "the deleted pod's address left the slice"
    );
    thread::sleep(Duration::from_secs(1));
    let served_by_victim = lines_in(&victim.requests);
    thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses: Vec<u16> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    assert_eq!(
        lines_in(&victim.requests),
        served_by_victim,
        "requests still went to the deleted pod"
    );
    let others: usize = kube
        .pods()
        .iter()
        .filter(|p| p.name != victim.name)
        .map(|p| lines_in(&p.requests))
        .sum();
    assert!(others > 0);
}

#[test]
fn the_api_server_restarting_mid_watch_is_followed() {
    let _one = serial();
    let (mut kube, gw) = running("restart", 1);
    assert_eq!(get(&gw.url("/function/echo")).status, 200);

    kube.restart_apiserver(Duration::from_secs(2));
    // Scaled behind defrost's back once the server is back: the resumed watch must see it.
    kube.admin.ok(
        "PATCH",
        "/apis/apps/v1/namespaces/restart/deployments/echo",
        Some(&serde_json::json!({"spec": {"replicas": 2}})),
    );
    let listing = gw.url("/system/function/echo?namespace=restart");
    assert!(
        until(Duration::from_secs(60), || get(&listing).json()
            ["availableReplicas"]
            == 2),
        "defrost saw the second replica: {}",
        get(&listing).body
    );
    let statuses = calls(4, 10, &gw.url("/function/echo/sleep/0.05"));
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        kube.pods().iter().all(|p| lines_in(&p.requests) > 0),
        "both replicas took requests"
    );
}

#[test]
fn wrong_credentials_give_a_clear_502_and_a_log_line() {
    let _one = serial();
    let mut kube = Kube::start();
    kube.namespace("denied");
    kube.function("denied", "echo", 0, free_port(), &[]);
    let gw = defrost(&kube, "denied", "not-a-valid-token", "");
    let reply = get(&gw.url("/function/echo"));
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(
        reply.body.contains("refused defrost's credentials"),
        "{}",
        reply.body
    );
    assert!(
        until(Duration::from_secs(10), || gw
            .log_count("refused defrost's credentials")
            > 0),
        "{}",
        gw.log_text()
    );
    assert_eq!(replicas(&kube, "denied", "echo").0, 0, "nothing was scaled");
}
