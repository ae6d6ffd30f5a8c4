//! The arm64 test bed: a QEMU (TCG) guest whose kernel has the real `arm_pmu` driver,
//! so the hardware path runs against a real PMU driver on machines without one.
//!
//! Assets come from Debian's arm64 packages (kernel `Image` and static busybox),
//! downloaded once with `apt-get download` into `~/.cache/sampler-vm/<series>` and
//! reused offline afterwards. Each run packs a fresh initramfs: busybox, an `/init`
//! that mounts the pseudo file systems, opens up the PMU sysctls and runs the payload,
//! and the payload itself (the static `sampler` and the guest test binary). The
//! heterogeneous variant boots with a device tree that puts two PMUs on disjoint CPU
//! halves (see `dts.rs`).

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    display, output,
    setup::{apt_install, privileged},
    status,
};

/// Kernel series the test bed boots: 5.10 (Debian 11: no `perf_user_access`, no
/// extended hardware type), 6.1 (arm_pmu without the extended hardware type) and 6.12
/// (with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Series {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
}

impl Series {
    pub fn name(self) -> &'static str {
        match self {
            Self::V5_10 => "5.10",
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
        }
    }

    /// The `apt-cache search --names-only` pattern of the series' unsigned image.
    fn package_pattern(self) -> &'static str {
        match self {
            Self::V5_10 => r"^linux-image-5\.10\.0-[0-9]+-arm64-unsigned$",
            Self::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-arm64-unsigned$",
            Self::V6_12 => r"^linux-image-6\.12\.[0-9.]+\+deb12-arm64-unsigned$",
        }
    }

    /// The Debian release whose archive has the series, when it is not the host's
    /// own (bookworm: 6.1, and 6.12 from bookworm's updates): 5.10 is Debian 11's.
    fn foreign_suite(self) -> Option<&'static str> {
        match self {
            Self::V5_10 => Some("bullseye"),
            Self::V6_1 | Self::V6_12 => None,
        }
    }
}

/// The CPU QEMU emulates. `max` has every feature QEMU implements, FEAT_PMUv3p5 (64-bit
/// event counters) among them; Cortex-A57 has PMUv3 without it (32-bit event
/// counters, a 64-bit cycle counter), like most deployed arm64 cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuModel {
    #[value(name = "max")]
    Max,
    #[value(name = "cortex-a57")]
    CortexA57,
}

impl CpuModel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Max => "max",
            Self::CortexA57 => "cortex-a57",
        }
    }

    fn qemu_arg(self) -> &'static str {
        match self {
            Self::Max => "max,pauth-impdef=on",
            Self::CortexA57 => "cortex-a57",
        }
    }
}

pub struct Guest {
    pub series: Series,
    pub cpu: CpuModel,
    pub hetero: bool,
    /// `-icount shift=0`: QEMU counts instructions (then IPC is exactly 1).
    pub icount: bool,
    pub smp: u32,
    pub timeout: Duration,
}

pub struct Assets {
    pub image: PathBuf,
    pub busybox: PathBuf,
    pub kernel_release: String,
}

fn cache_dir(series: Series) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("sampler-vm").join(series.name())
}

/// QEMU, dtc and cpio on the host, and the arm64 package lists for the downloads.
pub fn ensure_host_tools() -> Result<()> {
    let missing: Vec<&str> = ["qemu-system-arm", "device-tree-compiler", "cpio"]
        .into_iter()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    let arches =
        output(Command::new("dpkg").arg("--print-foreign-architectures")).unwrap_or_default();
    let add_arch = !arches.lines().any(|l| l.trim() == "arm64");
    if add_arch {
        status(privileged("dpkg").args(["--add-architecture", "arm64"]))?;
    }
    if add_arch || !missing.is_empty() {
        status(privileged("apt-get").args(["update", "-q"]))?;
    }
    if !missing.is_empty() {
        apt_install(&missing, "the arm64 test bed")?;
    }
    Ok(())
}

/// The kernel image and busybox of `series`, from the cache or downloaded once.
pub fn assets(series: Series) -> Result<Assets> {
    let dir = cache_dir(series);
    let (image, busybox, release) = (dir.join("Image"), dir.join("busybox"), dir.join("release"));
    if image.exists() && busybox.exists() && release.exists() {
        return Ok(Assets {
            image,
            busybox,
            kernel_release: fs::read_to_string(&release)?.trim().to_owned(),
        });
    }
    fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    // A series from another Debian release is looked up in an apt state of its own
    // (its lists under the cache directory), so the host's sources stay as they are.
    let apt_options = match series.foreign_suite() {
        Some(suite) => foreign_apt(&dir, suite)?,
        None => Vec::new(),
    };
    let search = || {
        output(Command::new("apt-cache").args(&apt_options).args([
            "search",
            "--names-only",
            series.package_pattern(),
        ]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect::<Vec<_>>()
    };
    let mut packages = search();
    if packages.is_empty() && apt_options.is_empty() {
        status(privileged("apt-get").args(["update", "-q"]))?;
        packages = search();
    }
    // Newest by version order of the names.
    packages.sort_by_key(|p| version_key(p));
    let Some(package) = packages.pop() else {
        bail!(
            "no Debian arm64 kernel package matches {} (is the arm64 architecture added \
             and `apt-get update` done?)",
            series.package_pattern()
        );
    };
    let kernel_release = package
        .trim_start_matches("linux-image-")
        .trim_end_matches("-unsigned")
        .to_owned();
    let debs = dir.join("debs");
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs)?;
    for (p, options) in [
        (format!("{package}:arm64"), &apt_options),
        // busybox is static: the host release's works with any kernel.
        ("busybox-static:arm64".to_owned(), &Vec::new()),
    ] {
        status(
            Command::new("apt-get")
                .args(options)
                .args(["download", "-q", &p])
                .current_dir(&debs),
        )?;
    }
    let extract = dir.join("x");
    for deb in fs::read_dir(&debs)?.flatten() {
        let _ = fs::remove_dir_all(&extract);
        status(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb.path())
                .arg(&extract),
        )?;
        let vmlinuz = extract.join(format!("boot/vmlinuz-{kernel_release}"));
        if vmlinuz.exists() {
            // Debian's arm64 vmlinuz is an uncompressed Image: it goes straight to -kernel.
            fs::copy(&vmlinuz, &image)?;
        }
        let bb = extract.join("bin/busybox");
        if bb.exists() {
            fs::copy(&bb, &busybox)?;
        }
    }
    let _ = fs::remove_dir_all(&extract);
    let _ = fs::remove_dir_all(&debs);
    if !image.exists() || !busybox.exists() {
        bail!("the downloaded packages had no kernel Image or busybox");
    }
    fs::write(&release, &kernel_release)?;
    Ok(Assets {
        image,
        busybox,
        kernel_release,
    })
}

/// The apt options of a private apt state for Debian release `suite`, arm64, under
/// `dir`, with its package lists updated. The archive is the one the host's own
/// sources name for the host's release (`apt-get indextargets`), so mirrors and
/// proxies configured for apt apply, and the release's signatures are checked with
/// the host's Debian keyring.
fn foreign_apt(dir: &Path, suite: &str) -> Result<Vec<String>> {
    let codename = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .context("/etc/os-release names no VERSION_CODENAME (is this Debian?)")?;
    let targets = output(Command::new("apt-get").args([
        "indextargets",
        "--format",
        "$(REPO_URI) $(RELEASE) $(TARGET_OF)",
    ]))
    .context("apt-get indextargets")?;
    let uri = archive_uri(&targets, &codename).with_context(|| {
        format!(
            "apt's sources name no archive for {codename} to take {suite}'s kernel from \
             (`apt-get indextargets` lists none)"
        )
    })?;
    let state = dir.join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(state.join(d))?;
    }
    let sources = state.join("sources.list");
    fs::write(&sources, format!("deb [arch=arm64] {uri} {suite} main\n"))?;
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let options = vec![
        "-o".to_owned(),
        format!("Dir::Etc::SourceList={}", path(&sources)),
        "-o".to_owned(),
        "Dir::Etc::SourceParts=/nonexistent".to_owned(),
        "-o".to_owned(),
        format!("Dir::State::Lists={}", path(&state.join("lists"))),
        "-o".to_owned(),
        format!("Dir::Cache={}", path(&state.join("cache"))),
        "-o".to_owned(),
        "APT::Architecture=arm64".to_owned(),
        "-o".to_owned(),
        "APT::Architectures::=arm64".to_owned(),
        // The lists live under root's cache, which apt's own user cannot enter.
        "-o".to_owned(),
        "APT::Sandbox::User=root".to_owned(),
    ];
    status(
        Command::new("apt-get")
            .args(&options)
            .args(["update", "-q"]),
    )
    .with_context(|| format!("apt-get update of {suite} from {uri}"))?;
    Ok(options)
}

/// The archive of release `codename` in `apt-get indextargets` lines
/// (`URI RELEASE TARGET_OF`): its binary-package (`deb`) source.
fn archive_uri(targets: &str, codename: &str) -> Option<String> {
    targets.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (uri, release, of) = (f.next()?, f.next()?, f.next()?);
        (release == codename && of == "deb").then(|| uri.trim_end_matches('/').to_owned())
    })
}

/// Sort key for names like `linux-image-6.1.0-44-...`: the numbers in order.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The payload of a guest run: files copied into the initramfs and the command `/init`
/// runs (through busybox sh) between the markers.
pub struct Payload {
    pub files: Vec<(PathBuf, &'static str)>,
    pub command: String,
}

/// What a guest run printed between the markers, and the payload's exit status.
pub struct Run {
    pub output: String,
    pub rc: i32,
}

const BEGIN: &str = "=== TEST-BEGIN";
const EXIT: &str = "=== TEST-EXIT rc=";

fn init_script(command: &str) -> String {
    format!(
        r#"#!/bin/sh
/bin/busybox --install -s /bin; export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t debugfs debugfs /sys/kernel/debug; mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmp /tmp
# arm64 EL0 counter access (config1 rdpmc bit); TCG interrupts are slow, so no
# auto-throttling of samples; allow high sampling rates.
echo 1 > /proc/sys/kernel/perf_user_access
echo 0 > /proc/sys/kernel/perf_cpu_time_max_percent
echo 100000 > /proc/sys/kernel/perf_event_max_sample_rate
echo "{BEGIN}"
{command}
echo "{EXIT}$?"
poweroff -f
"#
    )
}

fn build_initramfs(assets: &Assets, payload: &Payload, dir: &Path) -> Result<PathBuf> {
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(&assets.busybox, root.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    fs::write(root.join("init"), init_script(&payload.command))?;
    for (src, dst) in &payload.files {
        fs::copy(src, root.join(dst)).with_context(|| format!("copy {}", src.display()))?;
    }
    status(Command::new("chmod").arg("-R").arg("a+rx").arg(&root))?;
    let cpio = dir.join("initramfs.cpio.gz");
    status(
        Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
            .arg(&cpio)
            .current_dir(&root),
    )?;
    let _ = fs::remove_dir_all(&root);
    Ok(cpio)
}

/// The QEMU machine of `g`, for the boot and for the device-tree dump alike (with
/// `dumpdtb`, QEMU writes the tree it would boot with and exits), so that the tree the
/// heterogeneous guest boots with describes the same machine.
///
/// `-nic none`: the guest needs no network, and `virt`'s default network card makes
/// QEMU load that card's option ROM (`efi-virtio.rom`), which only `ipxe-qemu`, a
/// Recommends of `qemu-system-arm`, ships: without it QEMU exits before booting.
fn qemu(g: &Guest, dumpdtb: Option<&Path>) -> Command {
    let mut machine = String::from(if g.hetero {
        "virt,gic-version=3"
    } else {
        "virt"
    });
    if let Some(dtb) = dumpdtb {
        machine.push_str(",dumpdtb=");
        machine.push_str(&dtb.to_string_lossy());
    }
    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.arg("-M")
        .arg(machine)
        .args(["-cpu", g.cpu.qemu_arg(), "-m", "1024", "-nographic"])
        .args(["-nic", "none"])
        .args(["-smp", &g.smp.to_string()]);
    cmd
}

fn hetero_dtb(g: &Guest, dir: &Path) -> Result<PathBuf> {
    let dtb = dir.join("virt.dtb");
    let status_ = qemu(g, Some(&dtb))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !dtb.exists() {
        bail!("qemu did not dump its device tree ({status_})");
    }
    let dts = output(
        Command::new("dtc")
            .args(["-q", "-I", "dtb", "-O", "dts"])
            .arg(&dtb),
    )
    .context("dtc could not decompile QEMU's device tree")?;
    let patched = crate::dts::heterogeneous(&dts, g.smp as usize)?;
    let het_dts = dir.join("het.dts");
    let het_dtb = dir.join("het.dtb");
    fs::write(&het_dts, patched)?;
    status(
        Command::new("dtc")
            .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
            .arg(&het_dtb)
            .arg(&het_dts),
    )?;
    Ok(het_dtb)
}

/// Boots the guest with `payload` and returns what it printed and its exit status.
/// The host tools must be there ([`ensure_host_tools`]).
pub fn run(g: &Guest, payload: &Payload) -> Result<Run> {
    let assets = assets(g.series)?;
    let dir = std::env::temp_dir().join(format!(
        "sampler-vm-{}-{}{}",
        std::process::id(),
        g.series.name(),
        if g.hetero { "-het" } else { "" }
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let initrd = build_initramfs(&assets, payload, &dir)?;
    let mut cmd = qemu(g, None);
    cmd.arg("-no-reboot")
        .arg("-kernel")
        .arg(&assets.image)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyAMA0 rdinit=/init panic=-1 quiet"]);
    if g.hetero {
        cmd.arg("-dtb").arg(hetero_dtb(g, &dir)?);
    }
    if g.icount {
        cmd.args(["-icount", "shift=0"]);
    }
    let log_path = dir.join("serial.log");
    let log = fs::File::create(&log_path)?;
    eprintln!(
        "xtask: booting {} {} (-cpu {}, {}{}, {} CPUs)",
        assets.kernel_release,
        display(&cmd).split_whitespace().next().unwrap_or(""),
        g.cpu.name(),
        if g.hetero { "two PMUs" } else { "one PMU" },
        if g.icount { ", icount" } else { "" },
        g.smp
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start qemu-system-aarch64")?;
    let started = Instant::now();
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if started.elapsed() > g.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let mut raw = Vec::new();
    fs::File::open(&log_path)?.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).replace('\r', "");
    let parsed = parse_serial(&text);
    let _ = fs::remove_dir_all(&dir);
    match parsed {
        Some(run) => Ok(run),
        None => {
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            bail!(
                "the guest printed no exit marker ({}); last serial lines:\n{}",
                if timed_out {
                    format!("timed out after {} s", g.timeout.as_secs())
                } else {
                    "qemu exited".to_owned()
                },
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        }
    }
}

/// The payload's output between the markers and its exit status.
fn parse_serial(text: &str) -> Option<Run> {
    let start = text.find(BEGIN)? + BEGIN.len();
    let rest = &text[start..];
    let exit = rest.find(EXIT)?;
    let rc_text: String = rest[exit + EXIT.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some(Run {
        output: rest[..exit].trim_start_matches('\n').to_owned(),
        rc: rc_text.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_markers() {
        let r = parse_serial(
            "boot\n=== TEST-BEGIN\nline 1\nline 2\n=== TEST-EXIT rc=3\n[ 1.0] poweroff",
        )
        .unwrap();
        assert_eq!(r.output, "line 1\nline 2\n");
        assert_eq!(r.rc, 3);
        assert!(parse_serial("=== TEST-BEGIN\nkernel panic").is_none());
        assert!(parse_serial("nothing").is_none());
    }

    #[test]
    fn the_archive_is_the_one_apt_has_for_the_hosts_release() {
        let targets = "http://deb.debian.org/debian-security/ bookworm-security deb\n\
                       http://mirror.example/debian/ bookworm deb-src\n\
                       http://mirror.example/debian/ bookworm deb\n\
                       http://deb.debian.org/debian/ bookworm-updates deb\n";
        assert_eq!(
            archive_uri(targets, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(archive_uri(targets, "trixie"), None);
        assert_eq!(archive_uri("", "bookworm"), None);
    }

    #[test]
    fn newest_kernel_by_numbers() {
        let mut v = [
            "linux-image-6.1.0-9-arm64-unsigned",
            "linux-image-6.1.0-44-arm64-unsigned",
            "linux-image-6.1.0-10-arm64-unsigned",
        ];
        v.sort_by_key(|p| version_key(p));
        assert_eq!(v.last(), Some(&"linux-image-6.1.0-44-arm64-unsigned"));
    }

    #[test]
    fn guests_have_no_network_card() {
        for hetero in [false, true] {
            let g = Guest {
                series: Series::V6_1,
                cpu: CpuModel::Max,
                hetero,
                icount: false,
                smp: 4,
                timeout: Duration::from_secs(1),
            };
            for dump in [None, Some(Path::new("/tmp/x.dtb"))] {
                let cmd = qemu(&g, dump);
                let args: Vec<String> = cmd
                    .get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                assert!(args.windows(2).any(|w| w == ["-nic", "none"]), "{args:?}");
                let machine = &args[args.iter().position(|a| a == "-M").unwrap() + 1];
                assert_eq!(machine.contains("gic-version=3"), hetero, "{machine}");
                assert_eq!(machine.contains("dumpdtb=/tmp/x.dtb"), dump.is_some());
            }
        }
    }

    #[test]
    fn init_runs_the_command_between_markers() {
        let s = init_script("/guest-tests --test-threads=1");
        let begin = s.find(BEGIN).unwrap();
        let cmd = s.find("/guest-tests").unwrap();
        let exit = s.find(EXIT).unwrap();
        assert!(begin < cmd && cmd < exit);
        assert!(s.contains("perf_user_access"));
    }
}
