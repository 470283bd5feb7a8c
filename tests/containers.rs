//! Beyond the host's own processes: a traced service put by the test into a cgroup of the
//! shape containerd makes for a Kubernetes pod (with the pod's service-account namespace file
//! in its own mount namespace and HOSTNAME set) carries container.id and the pod's identity on
//! its span resource and in `traceo_container_info`; and a `port:N` selector finds a server
//! in a network namespace of its own.

mod support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use support::cgroup::{CONTAINER_ID, POD_UID, PodCgroup, cgroup2_root};
use support::otlp::Receiver;
use support::prometheus::{Prometheus, require_prometheus};
use support::*;

#[test]
fn a_pod_shaped_cgroup_gives_container_and_pod_identity() {
    if !require_root("container_identity")
        || !require_python("container_identity")
        || !require_prometheus("container_identity")
    {
        return;
    }
    let Some(root) = cgroup2_root() else {
        eprintln!("SKIPPED: container_identity: no cgroup2 hierarchy mounted");
        return;
    };
    let dir = temp_dir("containers");
    let port = free_port();
    // The pod's filesystem: its own mount namespace with the service-account namespace file.
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount && \
         echo traceo-demo > /run/secrets/kubernetes.io/serviceaccount/namespace && \
         exec {} -m uvicorn echo_app:app --host 127.0.0.1 --port {port} --no-access-log",
        python().display()
    );
    let server = Proc::spawn(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("HOSTNAME", "engine-5f7d9c-x2k4q")
            .current_dir(repo().join("tests/apps"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    let _cgroup = PodCgroup::create(&root, server.pid());
    let receiver = Receiver::start();
    let metrics_port = free_port();
    let mut agent = Agent::run(&[
        "--service",
        &format!("engine=port:{port}"),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        "--otlp-endpoint",
        &receiver.endpoint(),
        "--log",
        dir.join("exchanges.jsonl").to_str().unwrap(),
    ]);
    let prom = Prometheus::scraping(&dir, &format!("127.0.0.1:{metrics_port}"));
    for _ in 0..3 {
        curl(&[&format!("http://127.0.0.1:{port}/hello")]);
    }
    let spans = receiver.wait_for("the server's spans", Duration::from_secs(30), |s| s.len() >= 3);
    for s in &spans {
        let r = |k: &str| s.resource.get(k).map(String::as_str);
        assert_eq!(r("service.name"), Some("engine"), "{}", s.describe());
        assert_eq!(r("container.id"), Some(CONTAINER_ID), "resource {:?}", s.resource);
        assert_eq!(r("k8s.pod.uid"), Some(POD_UID), "resource {:?}", s.resource);
        assert_eq!(r("k8s.pod.name"), Some("engine-5f7d9c-x2k4q"), "resource {:?}", s.resource);
        assert_eq!(r("k8s.namespace.name"), Some("traceo-demo"), "resource {:?}", s.resource);
    }
    let query = "traceo_container_info{service=\"engine\"}";
    let result = prom.query_until(query, Duration::from_secs(20), |r| !r.is_empty());
    assert_eq!(result.len(), 1, "{result:?}");
    let m = &result[0]["metric"];
    assert_eq!(m["container_id"], CONTAINER_ID, "{m}");
    assert_eq!(m["k8s_pod_uid"], POD_UID, "{m}");
    assert_eq!(m["k8s_pod_name"], "engine-5f7d9c-x2k4q", "{m}");
    assert_eq!(m["k8s_namespace_name"], "traceo-demo", "{m}");
    // The documented join: HTTP counts by pod.
    let joined = prom.query(
        "sum by (k8s_pod_name) (traceo_http_requests_total{service=\"engine\"} \
         * on(service) group_left(k8s_pod_name) traceo_container_info)",
    );
    assert_eq!(joined.len(), 1, "{joined:?}");
    agent.stop();
    drop(server);
}

/// A network namespace made by the test, deleted when dropped.
struct NetNs(String);

impl NetNs {
    fn create() -> NetNs {
        let name = format!("traceo-t{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status().expect("ip netns add").success();
        assert!(ok, "ip netns add {name} failed");
        let ns = NetNs(name);
        assert!(ns.exec(&["ip", "link", "set", "lo", "up"]).status().expect("ip link").success());
        ns
    }
    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn port_selector_finds_a_server_in_another_network_namespace() {
    if !require_root("netns_port") || !require_python("netns_port") {
        return;
    }
    let dir = temp_dir("netns");
    let ns = NetNs::create();
    // The same port is free in the new namespace whatever the host uses.
    let port = free_port();
    let py = python();
    let server = Proc::spawn(
        ns.exec(&[py.to_str().unwrap(), "-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let url = format!("http://127.0.0.1:{port}/");
    let up = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        ns.exec(&["curl", "-s", "-o", "/dev/null", &url]).status().is_ok_and(|s| s.success())
    });
    assert!(up, "the server in {} did not answer", ns.0);
    let log = dir.join("exchanges.jsonl");
    let mut agent = Agent::run(&["--service", &format!("web=port:{port}"), "--log", log.to_str().unwrap()]);
    for _ in 0..3 {
        assert!(ns.exec(&["curl", "-s", "-o", "/dev/null", &url]).status().expect("curl").success());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut lines = vec![];
    while std::time::Instant::now() < deadline {
        lines = if log.exists() { json_lines(&log) } else { vec![] };
        if lines.iter().filter(|l| l["service"] == "web" && l["direction"] == "server").count() >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.stop();
    drop(server);
    let served: Vec<_> = lines.iter().filter(|l| l["service"] == "web" && l["direction"] == "server").collect();
    assert!(served.len() >= 3, "the server in another netns was not traced by port:{port}; lines: {lines:?}");
    assert!(served.iter().all(|l| l["status"] == 200), "{served:?}");
    // Addresses are the namespace's own (read from the socket, not from the host's tables).
    assert!(served.iter().all(|l| l["local"] == format!("127.0.0.1:{port}")), "{served:?}");
    assert!(served.iter().all(|l| l["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:"))), "{served:?}");
}
