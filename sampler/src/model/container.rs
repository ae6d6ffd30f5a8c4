//! Container identities from cgroup v2 paths: which runtime made the cgroup, the
//! container id, and the Kubernetes pod it belongs to. Pure string work on the paths
//! `cgroup` gives, unit tested against the layouts each runtime and cgroup driver
//! produces (systemd and cgroupfs drivers, rootful and rootless).
//!
//! | runtime | path (systemd driver / cgroupfs driver) |
//! |---|---|
//! | Docker | `/system.slice/docker-<id>.scope` / `/docker/<id>` |
//! | containerd (CRI) | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope` / `/kubepods/burstable/pod<uid>/<id>` |
//! | CRI-O | `.../kubepods-pod<uid>.slice/crio-<id>.scope` |
//! | Podman | `/machine.slice/libpod-<id>.scope`, `/user.slice/.../libpod-<id>.scope` / `/libpod_parent/libpod-<id>` |
//! | nerdctl | `/system.slice/nerdctl-<id>.scope` / `/<namespace>/<id>` |
//! | systemd | `/system.slice/<name>.service`, `/user.slice/.../<name>.service` |
//!
//! Anything else keeps its path.

use serde::Serialize;

/// What made a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    Nerdctl,
    /// A Kubernetes pod's container whose runtime the path does not tell (cgroupfs
    /// driver: `/kubepods/<qos>/pod<uid>/<id>`).
    Kubernetes,
    /// A systemd service (`.service`) or scope.
    Systemd,
    /// None of the above: the cgroup path is the identity.
    Cgroup,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
            Self::Nerdctl => "nerdctl",
            Self::Kubernetes => "kubernetes",
            Self::Systemd => "systemd",
            Self::Cgroup => "cgroup",
        }
    }
}

/// Who a cgroup belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Identity {
    pub runtime: Runtime,
    /// Container id (64 hex digits, as the runtime names it), systemd unit name, or
    /// the cgroup path.
    pub id: String,
    /// Kubernetes pod UID (with dashes), when the container is in a pod.
    pub pod: Option<String>,
    /// The container's cgroup (the directory named after it; its sub-cgroups, e.g. a
    /// container's own systemd tree, belong to it).
    pub cgroup: String,
}

impl Identity {
    /// Short display form: `docker:3f4e5d6c7b8a`, `systemd:nginx.service`, or the path.
    pub fn short(&self) -> String {
        match self.runtime {
            Runtime::Cgroup => self.id.clone(),
            Runtime::Systemd => format!("systemd:{}", self.id),
            r => format!("{}:{}", r.as_str(), &self.id[..self.id.len().min(12)]),
        }
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `prefix<id>suffix` with a 64-hex-digit id.
fn id_between<'a>(name: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    let id = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    is_container_id(id).then_some(id)
}

/// A pod UID from a path component: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(name: &str) -> Option<String> {
    let uid = if let Some(rest) = name.strip_suffix(".slice") {
        let i = rest.rfind("-pod")?;
        if !rest.starts_with("kubepods") {
            return None;
        }
        rest[i + 4..].replace('_', "-")
    } else {
        name.strip_prefix("pod")?.to_owned()
    };
    let ok = uid.len() >= 32
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

/// The runtime and container id a cgroup directory's name gives.
fn container(name: &str, parent: Option<&str>, in_pod: bool) -> Option<(Runtime, String)> {
    let systemd_scopes = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
        ("nerdctl-", Runtime::Nerdctl),
    ];
    for (prefix, runtime) in systemd_scopes {
        if let Some(id) = id_between(name, prefix, ".scope") {
            return Some((runtime, id.to_owned()));
        }
    }
    // cgroupfs drivers: the bare id (or libpod-<id>) under the runtime's directory.
    if let Some(id) = id_between(name, "libpod-", "") {
        return Some((Runtime::Podman, id.to_owned()));
    }
    if is_container_id(name) {
        let runtime = match parent {
            _ if in_pod => Runtime::Kubernetes,
            Some("docker") => Runtime::Docker,
            Some("libpod_parent") => Runtime::Podman,
            // containerd's cgroupfs layout: /<namespace>/<id> (nerdctl, ctr).
            Some(_) => Runtime::Containerd,
            None => return None,
        };
        return Some((runtime, name.to_owned()));
    }
    None
}

/// The identity of the cgroup at `path` (below the v2 mount, `/`-separated). The
/// innermost container in the path wins (Kubernetes in Docker, as with kind); the
/// sub-cgroups of a container (its own systemd tree) belong to it.
pub fn identify(path: &str) -> Identity {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut pod: Option<(usize, String)> = None;
    let mut found: Option<Identity> = None;
    let mut found_at = 0;
    for (i, name) in parts.iter().enumerate() {
        if let Some(uid) = pod_uid(name) {
            pod = Some((i, uid));
            continue;
        }
        // Conmon (Podman's and CRI-O's monitor) is not the container.
        if name.starts_with("libpod-conmon-") || name.starts_with("crio-conmon-") {
            continue;
        }
        let parent = i.checked_sub(1).map(|j| parts[j]);
        if let Some((runtime, id)) = container(name, parent, pod.is_some()) {
            found = Some(Identity {
                runtime,
                id,
                pod: pod.as_ref().map(|(_, uid)| uid.clone()),
                cgroup: format!("/{}", parts[..=i].join("/")),
            });
            found_at = i;
        }
    }
    match (found, pod) {
        // A pod below the last container: the pod's own cgroup (pause, overhead).
        (found, Some((at, pod))) if found.is_none() || at > found_at => {
            return Identity {
                runtime: Runtime::Kubernetes,
                id: format!("pod{pod}"),
                pod: Some(pod),
                cgroup: format!("/{}", parts[..=at].join("/")),
            };
        }
        (Some(found), _) => return found,
        _ => {}
    }
    // The innermost systemd service.
    if let Some(i) = parts.iter().rposition(|p| p.ends_with(".service")) {
        return Identity {
            runtime: Runtime::Systemd,
            id: parts[i].to_owned(),
            pod: None,
            cgroup: format!("/{}", parts[..=i].join("/")),
        };
    }
    Identity {
        runtime: Runtime::Cgroup,
        id: if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        },
        pod: None,
        cgroup: path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a9f0e1d2c3b4a5968778695a4b3c2d1e0f9e8d7c6b5a493827161";
    const UID: &str = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901";

    fn check(path: &str, runtime: Runtime, id: &str, pod: Option<&str>, cgroup: &str) {
        let got = identify(path);
        assert_eq!(
            got,
            Identity {
                runtime,
                id: id.to_owned(),
                pod: pod.map(str::to_owned),
                cgroup: cgroup.to_owned(),
            },
            "{path}"
        );
    }

    #[test]
    fn docker_both_drivers() {
        let p = format!("/system.slice/docker-{ID}.scope");
        check(&p, Runtime::Docker, ID, None, &p);
        let p = format!("/docker/{ID}");
        check(&p, Runtime::Docker, ID, None, &p);
        // A container running systemd: its sub-cgroups are the container's.
        let p = format!("/system.slice/docker-{ID}.scope/init.scope");
        check(
            &p,
            Runtime::Docker,
            ID,
            None,
            &format!("/system.slice/docker-{ID}.scope"),
        );
    }

    #[test]
    fn kubernetes_containerd_crio_and_cgroupfs() {
        let uid_ = UID.replace('-', "_");
        let pod =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice");
        let p = format!("{pod}/cri-containerd-{ID}.scope");
        check(&p, Runtime::Containerd, ID, Some(UID), &p);
        let p = format!("{pod}/crio-{ID}.scope");
        check(&p, Runtime::CriO, ID, Some(UID), &p);
        // Conmon is skipped: it counts for the pod's own cgroup.
        let p = format!("{pod}/crio-conmon-{ID}.scope");
        check(
            &p,
            Runtime::Kubernetes,
            &format!("pod{UID}"),
            Some(UID),
            &pod,
        );
        // Kubernetes in Docker (kind): the innermost container.
        let p = format!(
            "/system.slice/docker-{ID}.scope{pod}/cri-containerd-{}.scope",
            ID[..63].to_owned() + "0"
        );
        assert_eq!(identify(&p).runtime, Runtime::Containerd);
        assert_eq!(identify(&p).pod.as_deref(), Some(UID));
        // Guaranteed QoS: no QoS slice.
        let p = format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope");
        check(&p, Runtime::Containerd, ID, Some(UID), &p);
        let p = format!("/kubepods/besteffort/pod{UID}/{ID}");
        check(&p, Runtime::Kubernetes, ID, Some(UID), &p);
        let p = format!("/kubepods/pod{UID}");
        check(&p, Runtime::Kubernetes, &format!("pod{UID}"), Some(UID), &p);
        // kind / nested: the node's cgroup above kubepods.
        let p = format!("/system.slice/docker-{ID}.scope/kubelet.slice");
        assert_eq!(identify(&p).runtime, Runtime::Docker);
    }

    #[test]
    fn podman_rootful_rootless_cgroupfs_and_conmon() {
        let p = format!("/machine.slice/libpod-{ID}.scope");
        check(&p, Runtime::Podman, ID, None, &p);
        let p =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        check(&p, Runtime::Podman, ID, None, &p);
        let p = format!("/libpod_parent/libpod-{ID}");
        check(&p, Runtime::Podman, ID, None, &p);
        let p = format!("/machine.slice/libpod-{ID}.scope/container");
        check(
            &p,
            Runtime::Podman,
            ID,
            None,
            &format!("/machine.slice/libpod-{ID}.scope"),
        );
        // Conmon of a rootless container: the user's systemd, not the container.
        let p = format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{ID}.scope"
        );
        assert_eq!(identify(&p).runtime, Runtime::Systemd);
        assert_eq!(identify(&p).id, "user@1000.service");
    }

    #[test]
    fn nerdctl_and_containerd_namespaces() {
        let p = format!("/system.slice/nerdctl-{ID}.scope");
        check(&p, Runtime::Nerdctl, ID, None, &p);
        let p = format!("/default/{ID}");
        check(&p, Runtime::Containerd, ID, None, &p);
    }

    #[test]
    fn systemd_services_and_plain_paths() {
        check(
            "/system.slice/nginx.service",
            Runtime::Systemd,
            "nginx.service",
            None,
            "/system.slice/nginx.service",
        );
        check(
            "/system.slice/docker.service/extra",
            Runtime::Systemd,
            "docker.service",
            None,
            "/system.slice/docker.service",
        );
        check(
            "/user.slice/user-0.slice/session-3.scope",
            Runtime::Cgroup,
            "/user.slice/user-0.slice/session-3.scope",
            None,
            "/user.slice/user-0.slice/session-3.scope",
        );
        check("/", Runtime::Cgroup, "/", None, "/");
        check("", Runtime::Cgroup, "/", None, "");
        // Near misses stay paths: short ids, non-hex, a top-level bare id.
        for p in [
            "/system.slice/docker-3f4e.scope".to_owned(),
            format!("/system.slice/docker-{}.scope", "g".repeat(64)),
            format!("/{ID}"),
            "/kubepods/podnot-a-uid".to_owned(),
        ] {
            assert_eq!(identify(&p).runtime, Runtime::Cgroup, "{p}");
        }
    }

    #[test]
    fn short_forms() {
        assert_eq!(
            identify(&format!("/docker/{ID}")).short(),
            "docker:3f4e5d6c7b8a"
        );
        assert_eq!(
            identify("/system.slice/cron.service").short(),
            "systemd:cron.service"
        );
        assert_eq!(identify("/a/b").short(), "/a/b");
    }

    #[test]
    fn hostile_paths_do_not_panic() {
        for p in [
            "//",
            "/.slice",
            "/-pod.slice",
            "/kubepods-pod.slice",
            "/pod",
            "\u{0}/\u{ff}",
        ] {
            let _ = identify(p);
        }
    }
}
