//! `sampler serve` for real: scraped by a real Prometheus server, with two test
//! cgroups laid out like a Docker container and a Kubernetes pod's container, under
//! bad requests, floods and slow clients, and with only CAP_BPF + CAP_PERFMON.
//!
//! Root only (CI runs as root); without it each test prints why it skipped.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Busy, TestResult, require_root, sampler_bin, skip};

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 request; the response's status (`200 OK`) and body.
fn get(port: u16, path: &str, accept: Option<&str>) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{accept}\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    // "HTTP/1.x 200 OK" -> "200 OK"
    let status = head.lines().next().unwrap_or("");
    let status = status.split_once(' ').map_or("", |(_, s)| s);
    Ok((status.to_owned(), body.to_owned()))
}

/// `sampler serve` on `port`, killed on drop.
struct Serve(Child);

impl Serve {
    fn start(port: u16, extra: &[&str]) -> Self {
        Self::start_with(Command::new(sampler_bin()), port, extra)
    }

    fn start_with(mut cmd: Command, port: u16, extra: &[&str]) -> Self {
        let child = cmd
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "-i",
                "0.5",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sampler serve");
        let serve = Self(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(port, "/healthz", None).map(|r| r.0).unwrap_or_default() != "200 OK" {
            assert!(Instant::now() < deadline, "sampler serve did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        serve
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the first sample line starting with `prefix` and holding `with`.
fn value(text: &str, prefix: &str, with: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(with))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .reduce(|a, b| a + b)
}

/// A cgroup made by the test under the v2 hierarchy, removed on drop.
struct TestCgroup(Vec<PathBuf>);

impl TestCgroup {
    /// `rel` below `root`, each level created.
    fn create(root: &Path, rel: &str) -> Self {
        let mut made = Vec::new();
        let mut dir = root.to_path_buf();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap();
                made.push(dir.clone());
            }
        }
        Self(made)
    }

    fn leaf(&self) -> &Path {
        self.0.last().unwrap()
    }

    fn adopt(&self, pid: u32) {
        std::fs::write(self.leaf().join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            // Processes first: move any left to the root.
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                let root = self.0[0].parent().unwrap().join("cgroup.procs");
                for pid in procs.lines() {
                    let _ = std::fs::write(&root, pid);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn v2_root() -> Option<PathBuf> {
    sampler::discover::cgroup::v2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

const DOCKER_ID: &str = "d0c4e7a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d";
const POD_UID: &str = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
const CRI_ID: &str = "c1c2c3c4c5c6c7c8c9d0d1d2d3d4d5d6d7d8d9e0e1e2e3e4e5e6e7e8e9f0f1f2";

/// Two cgroups like a Docker container and a Kubernetes pod's container, a busy
/// process pinned to its own CPU in each; a real Prometheus scrapes `sampler serve`.
fn prometheus_scrapes_per_container_series_with_fair_shares() -> TestResult {
    let _serial = require_root()?;
    let Some(root) = v2_root() else {
        return Err(skip("no cgroup v2 hierarchy mounted"));
    };
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(skip(
            "Debian's `prometheus` is not installed (`cargo xtask test` installs it)",
        ));
    }
    let base = format!("sampler-test-{}", std::process::id());
    let docker = TestCgroup::create(
        &root,
        &format!("{base}/system.slice/docker-{DOCKER_ID}.scope"),
    );
    let pod = TestCgroup::create(
        &root,
        &format!("{base}/kubepods/besteffort/pod{POD_UID}/{CRI_ID}"),
    );
    let a = Busy::pinned_to(0);
    let b = Busy::pinned_to(1);
    docker.adopt(a.pid());
    pod.adopt(b.pid());

    let port = free_port();
    let serve = Serve::start(port, &[]);
    let dir = std::env::temp_dir().join(format!("sampler-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
             - job_name: sampler\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");

    let query = |q: &str| -> Option<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let (_, body) = get(prom_port, &path, None).ok()?;
        let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(doc["data"]["result"].clone())
    };
    let docker_series = format!(
        "sampler_samples_total{{runtime=\"docker\",container=\"docker:{}\"}}",
        &DOCKER_ID[..12]
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let first = loop {
        if let Some(r) = query(&docker_series)
            && let Some(v) = r.get(0)
        {
            break v.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had {docker_series}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    std::thread::sleep(Duration::from_secs(3));
    let later = query(&docker_series).unwrap()[0].clone();
    let num = |v: &serde_json::Value| v["value"][1].as_str().unwrap().parse::<f64>().unwrap();
    assert!(
        num(&later) > num(&first),
        "counter did not grow: {first} -> {later}"
    );
    // Prometheus drops empty labels: no pod.
    assert!(first["metric"].get("pod").is_none(), "{first}");
    assert_eq!(first["metric"]["job"], "sampler");
    // The pod's container: its pod UID and runtime from the path.
    let pod_rows = query(&format!("sampler_samples_total{{pod=\"{POD_UID}\"}}")).unwrap();
    let row = &pod_rows[0]["metric"];
    assert_eq!(row["runtime"], "kubernetes", "{pod_rows}");
    assert_eq!(row["container"], format!("kubernetes:{}", &CRI_ID[..12]));
    let up = query("up{job=\"sampler\"}").unwrap();
    assert_eq!(up[0]["value"][1], "1", "{up}");
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = std::fs::remove_dir_all(&dir);

    // Shares, from the exposition: each busy process had a CPU of its own.
    let (_, text) = get(port, "/metrics", None).unwrap();
    let docker_samples = value(&text, "sampler_samples_total{", "docker:").unwrap();
    let pod_samples = value(&text, "sampler_samples_total{", POD_UID).unwrap();
    let ratio = docker_samples / pod_samples;
    assert!(
        (0.8..1.25).contains(&ratio),
        "docker {docker_samples} vs pod {pod_samples} samples: each had one CPU"
    );
    let total = value(&text, "sampler_samples_total{", "").unwrap();
    assert!(
        docker_samples + pod_samples > 0.6 * total,
        "the two busy cgroups had {docker_samples} + {pod_samples} of {total} samples"
    );
    // promtool accepts the Prometheus text format.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(serve);
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Garbage, oversized heads, unknown paths, bad methods, 300 concurrent scrapes and
/// 30 clients that never finish their request: the exporter keeps answering and
/// sampling, cuts the slow clients off, and its memory stays bounded.
fn bad_requests_floods_and_slow_clients_do_not_stop_it() -> TestResult {
    let _serial = require_root()?;
    let port = free_port();
    let serve = Serve::start(port, &[]);
    let refreshes = |text: &str| value(text, "sampler_refreshes_total", "").unwrap();
    let before = refreshes(&get(port, "/metrics", None).unwrap().1);

    // Slow clients: half a request head, then nothing.
    let slow: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // Bad requests: each gets its 4xx answer.
    let huge = [
        b"GET /metrics HTTP/1.1\r\nX: ".as_slice(),
        &[b'a'; 64 * 1024],
        b"\r\n\r\n",
    ]
    .concat();
    for (raw, want) in [
        (&b"\x00\x01\x02garbage\r\n\r\n"[..], "400"),
        (b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "404"),
        (
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            "405",
        ),
        (&huge[..], "431"),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(raw);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let response = String::from_utf8_lossy(&out);
        let status = response.lines().next().unwrap_or("");
        assert!(status.starts_with(&format!("HTTP/1.1 {want}")), "want {want}: {status:?}");
    }
    // A flood of concurrent scrapes: every one answered.
    let flood: Vec<_> = (0..300)
        .map(|_| std::thread::spawn(move || get(port, "/metrics", None)))
        .collect();
    let mut ok = 0;
    let mut failures = Vec::new();
    for t in flood {
        match t.join() {
            Ok(Ok((status, body)))
                if status == "200 OK" && body.contains("sampler_refreshes_total") =>
            {
                ok += 1;
            }
            other => failures.push(format!("{other:?}").chars().take(200).collect::<String>()),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(ok, 300, "scrapes answered during the flood");
    // The slow clients are cut off (header timeout, 5 s).
    let started = Instant::now();
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
    }
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "slow clients held on for {:?}",
        started.elapsed()
    );
    // Sampling went on, and memory stayed bounded.
    std::thread::sleep(Duration::from_secs(1));
    let after = refreshes(&get(port, "/metrics", None).unwrap().1);
    assert!(after > before + 2.0, "refreshes {before} -> {after}");
    let rss = rss_kib(serve.pid());
    assert!(
        rss < 64 * 1024,
        "sampler serve uses {rss} KiB after the flood"
    );
    Ok(())
}

/// Started with only CAP_BPF and CAP_PERFMON, as an unprivileged user: it samples
/// and serves, and holds no capability afterwards.
fn serves_with_only_cap_bpf_and_cap_perfmon_then_drops_them() -> TestResult {
    let _serial = require_root()?;
    if Command::new("setpriv").arg("--version").output().is_err() {
        return Err(skip("setpriv (util-linux) is missing"));
    }
    let port = free_port();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all,+bpf,+perfmon",
        "--ambient-caps=-all,+bpf,+perfmon",
        "--bounding-set=-all,+bpf,+perfmon",
        "--",
    ])
    .arg(sampler_bin());
    let _busy = Busy::pinned_to(0);
    let serve = Serve::start_with(cmd, port, &["--no-bpf-stats"]);
    // The pid is setpriv's, which exec()ed sampler.
    let status = std::fs::read_to_string(format!("/proc/{}/status", serve.pid())).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");
    assert!(field("Uid:").starts_with("65534"), "{status}");
    std::thread::sleep(Duration::from_secs(1));
    let (_, text) = get(port, "/metrics", None).unwrap();
    let samples = value(&text, "sampler_samples_total{", "").unwrap_or(0.0);
    assert!(samples > 100.0, "{text}");
    Ok(())
}

/// The deployment files next to the crate.
fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `sampler` containers of every document in a manifest.
fn sampler_containers(text: &str) -> Vec<yaml_rust2::Yaml> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).expect("valid YAML");
    let mut out = Vec::new();
    for doc in docs {
        let spec = if doc["kind"].as_str() == Some("Pod") {
            doc["spec"].clone()
        } else {
            doc["spec"]["template"]["spec"].clone()
        };
        let Some(containers) = spec["containers"].as_vec() else {
            continue;
        };
        for c in containers {
            if c["name"].as_str() == Some("sampler") {
                let mut c = c.clone();
                // Carry the pod's volumes along for the mount check.
                if let yaml_rust2::Yaml::Hash(h) = &mut c {
                    h.insert(
                        yaml_rust2::Yaml::String("_volumes".into()),
                        spec["volumes"].clone(),
                    );
                }
                out.push(c);
            }
        }
    }
    out
}

/// The manifests grant exactly CAP_BPF and CAP_PERFMON, drop the rest, run
/// unprivileged with a read-only root, mount only the host's cgroup hierarchy
/// read-only, probe /healthz on the port sampler listens on, and the Dockerfile's
/// entry point and port agree. Then the binary runs with the DaemonSet's arguments
/// (the address on loopback, the cgroup mount at this host's) and those two
/// capabilities alone (root only).
fn manifests_ask_for_least_privilege_and_their_arguments_work() -> TestResult {
    let dockerfile = deploy("Dockerfile");
    assert!(
        dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/sampler", "serve"]"#),
        "{dockerfile}"
    );
    assert!(dockerfile.contains("EXPOSE 9464"));
    let mut daemonset_args = None;
    for file in ["kubernetes/daemonset.yaml", "kubernetes/sidecar.yaml"] {
        let containers = sampler_containers(&deploy(file));
        assert_eq!(containers.len(), 1, "{file}: one sampler container");
        let c = &containers[0];
        let sc = &c["securityContext"];
        let caps = |k: &str| -> Vec<String> {
            sc["capabilities"][k]
                .as_vec()
                .unwrap_or_else(|| panic!("{file}: capabilities.{k}"))
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(caps("add"), ["BPF", "PERFMON"], "{file}");
        assert_eq!(caps("drop"), ["ALL"], "{file}");
        assert_eq!(sc["privileged"].as_bool(), Some(false), "{file}");
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{file}"
        );
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{file}");
        let args: Vec<String> = c["args"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let arg = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].clone())
                .unwrap_or_else(|| panic!("{file}: no {flag}"))
        };
        let port = c["ports"][0]["containerPort"].as_i64().unwrap();
        assert_eq!(arg("--listen"), format!("0.0.0.0:{port}"), "{file}");
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz")
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["port"].as_str(),
            c["ports"][0]["name"].as_str()
        );
        let mounts = c["volumeMounts"].as_vec().unwrap();
        assert_eq!(mounts.len(), 1, "{file}: only the cgroup hierarchy");
        assert_eq!(mounts[0]["readOnly"].as_bool(), Some(true), "{file}");
        assert_eq!(
            mounts[0]["mountPath"].as_str(),
            Some(arg("--cgroup-root").as_str())
        );
        let volume = &c["_volumes"][0];
        assert_eq!(volume["name"], mounts[0]["name"]);
        assert_eq!(volume["hostPath"]["path"].as_str(), Some("/sys/fs/cgroup"));
        if file.contains("daemonset") {
            daemonset_args = Some(args);
        }
    }

    let _serial = require_root()?;
    let Some(root) = v2_root() else {
        return Err(skip("no cgroup v2 hierarchy to stand in for the host's"));
    };
    let mut args = daemonset_args.unwrap();
    let port = free_port();
    for (flag, value) in [
        ("--listen", format!("127.0.0.1:{port}")),
        ("--cgroup-root", root.display().to_string()),
    ] {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value;
    }
    let _busy = Busy::pinned_to(0);
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--inh-caps=-all,+bpf,+perfmon",
        "--ambient-caps=-all,+bpf,+perfmon",
        "--bounding-set=-all,+bpf,+perfmon",
        "--",
    ])
    .arg(sampler_bin())
    .arg("serve")
    .args(&args)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("setpriv");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Ok((status, body)) = get(port, "/metrics", None)
            && status == "200 OK"
            && body.contains("sampler_samples_total{")
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no samples served with the manifest's arguments"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("sampler_run_info{"), "{text}");
    Ok(())
}

crate::test_main!(
    prometheus_scrapes_per_container_series_with_fair_shares,
    bad_requests_floods_and_slow_clients_do_not_stop_it,
    serves_with_only_cap_bpf_and_cap_perfmon_then_drops_them,
    manifests_ask_for_least_privilege_and_their_arguments_work,
);
