//! cgroup v2 ids to paths.
//!
//! The BPF program keys samples by `bpf_get_current_cgroup_id()`: the inode number of
//! the task's cgroup directory in the v2 hierarchy. This finds the v2 mount (also the
//! `unified` mount beside a v1 hierarchy) in `/proc/self/mountinfo` and maps inode
//! numbers to paths by walking it; an id not seen yet triggers a new walk, at most
//! once per [`RESCAN_AFTER`].

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// An unknown id rescans the hierarchy no more often than this.
pub const RESCAN_AFTER: Duration = Duration::from_secs(2);
/// Bounds on a walk: directories visited and depth.
const MAX_DIRS: usize = 200_000;
const MAX_DEPTH: usize = 32;

#[derive(Debug, Default)]
pub struct CgroupNames {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    scanned: Option<Instant>,
}

/// The mount point of the cgroup v2 hierarchy in a `mountinfo` text.
pub fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        // "36 25 0:31 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw"
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(unescape)
            .map(PathBuf::from)
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl CgroupNames {
    /// Names from this machine's cgroup v2 mount (none when there is none).
    pub fn new() -> Self {
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| v2_mount(&m));
        Self::at(root)
    }

    pub fn at(root: Option<PathBuf>) -> Self {
        Self {
            root,
            ..Self::default()
        }
    }

    fn scan(&mut self) {
        self.scanned = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        self.by_id.clear();
        let mut stack = vec![(root.clone(), 0usize)];
        let mut visited = 0;
        while let Some((dir, depth)) = stack.pop() {
            visited += 1;
            if visited > MAX_DIRS {
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = dir.strip_prefix(&root).unwrap_or(Path::new(""));
            self.by_id
                .insert(meta.ino(), format!("/{}", rel.to_string_lossy()));
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }

    /// The path of cgroup `id` below the v2 mount (`/` is the root), or `#id` when it
    /// is unknown (gone, or no v2 hierarchy).
    pub fn name(&mut self, id: u64) -> String {
        if !self.by_id.contains_key(&id) && self.scanned.is_none_or(|t| t.elapsed() >= RESCAN_AFTER)
        {
            self.scan();
        }
        self.by_id
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount_also_beside_v1() {
        let pure =
            "29 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(v2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "25 1 0:22 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755\n\
             26 25 0:23 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw\n\
             27 25 0:24 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(
            v2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            v2_mount("27 25 0:24 / /x rw - cgroup cgroup rw,cpu\n"),
            None
        );
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
    }

    #[test]
    fn names_come_from_directory_inodes() {
        let dir = std::env::temp_dir().join(format!("sampler-cg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("system.slice/docker-abc.scope")).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let mut names = CgroupNames::at(Some(dir.clone()));
        assert_eq!(names.name(ino(&dir)), "/");
        assert_eq!(
            names.name(ino(&dir.join("system.slice/docker-abc.scope"))),
            "/system.slice/docker-abc.scope"
        );
        // Unknown: rescanned at most every RESCAN_AFTER, shown by number meanwhile.
        assert_eq!(names.name(u64::MAX), format!("#{}", u64::MAX));
        std::fs::create_dir(dir.join("late")).unwrap();
        assert_eq!(
            names.name(ino(&dir.join("late"))),
            format!("#{}", ino(&dir.join("late")))
        );
        assert_eq!(CgroupNames::at(None).name(5), "#5");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
