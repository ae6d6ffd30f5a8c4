//! PMU discovery from sysfs: `<root>/bus/event_source/devices/*` and
//! `<root>/devices/system/cpu/{online,possible}`.
//!
//! `<root>` is `/sys` on a live system, or a recorded tree (`--sysfs-root`) so that
//! other machines can stand in (see `tests/data/sysfs`). Parsing is pure and tolerant:
//! a PMU directory with a missing or garbage `type` is skipped with a warning, never a
//! panic; a missing devices directory is an error naming the path.

use std::{
    collections::BTreeMap,
    fmt, fs,
    path::{Path, PathBuf},
};

use crate::{
    discover::{Error, clip, cpus::CpuList},
    sys::read_sysfs_file,
};

/// The longest event alias (`events/<name>`) taken.
const MAX_ALIAS: usize = 4096;

/// One of the attr words a format field maps into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigWord {
    Config,
    Config1,
    Config2,
    Config3,
}

impl ConfigWord {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "config" => Self::Config,
            "config1" => Self::Config1,
            "config2" => Self::Config2,
            "config3" => Self::Config3,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Config1 => "config1",
            Self::Config2 => "config2",
            Self::Config3 => "config3",
        }
    }
}

/// A format field such as `event` = `config:0-7,32-35`: the value's bits are laid
/// into the ranges lowest first, as perf does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub word: ConfigWord,
    /// Inclusive bit ranges, in the order written.
    pub ranges: Vec<(u8, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("format `{0}` is not of the form config:LO-HI[,LO-HI...]")]
    Syntax(String),
    #[error("value {value:#x} does not fit field `{field}` ({spec}, {width} bits)")]
    TooWide {
        field: String,
        value: u64,
        spec: String,
        width: u32,
    },
}

impl Format {
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        let s = s.trim();
        let err = || FormatError::Syntax(clip(s, 80));
        let (word, bits) = s.split_once(':').ok_or_else(err)?;
        let word = ConfigWord::parse(word.trim()).ok_or_else(err)?;
        let mut ranges = Vec::new();
        for r in bits.split(',') {
            let (lo, hi) = match r.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (r.trim(), r.trim()),
            };
            let lo: u8 = lo.parse().map_err(|_| err())?;
            let hi: u8 = hi.parse().map_err(|_| err())?;
            if lo > hi || hi > 63 {
                return Err(err());
            }
            ranges.push((lo, hi));
        }
        Ok(Self { word, ranges })
    }

    /// Number of value bits the field holds.
    pub fn width(&self) -> u32 {
        self.ranges
            .iter()
            .map(|&(lo, hi)| u32::from(hi - lo) + 1)
            .sum()
    }

    /// The bits of `value` placed into the field's ranges, or an error naming `field`
    /// when the value has bits beyond the field's width.
    pub fn encode(&self, field: &str, value: u64) -> Result<u64, FormatError> {
        let width = self.width();
        if width < 64 && value >> width != 0 {
            return Err(FormatError::TooWide {
                field: field.to_owned(),
                value,
                spec: self.to_string(),
                width,
            });
        }
        let mut out = 0u64;
        let mut v = value;
        for &(lo, hi) in &self.ranges {
            let n = u32::from(hi - lo) + 1;
            let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            out |= (v & mask) << lo;
            v = if n == 64 { 0 } else { v >> n };
        }
        Ok(out)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.word.name())?;
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// An event alias from `events/<name>` (e.g. `event=0x3c,umask=0x01`), with its
/// `.scale` and `.unit` companions.
#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    pub terms: String,
    pub scale: Option<f64>,
    pub unit: Option<String>,
}

/// One PMU of `bus/event_source/devices`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pmu {
    pub name: String,
    /// The `type` to put in `perf_event_attr`.
    pub type_: u32,
    /// A CPU PMU (perf's `is_pmu_core`): named `cpu`/`cpum_cf`, or with a `cpus` file.
    pub core: bool,
    /// The CPUs it covers: `cpus`, else `cpumask`; `None` when it has neither.
    pub cpus: Option<CpuList>,
    pub formats: BTreeMap<String, Format>,
    pub events: BTreeMap<String, Alias>,
    pub caps: BTreeMap<String, String>,
}

impl Pmu {
    /// The CPUs events of this PMU can be opened on: its own list, or every online
    /// CPU when it has none (a core PMU without `cpus`, or a software-like PMU).
    pub fn covered_cpus(&self, online: &CpuList) -> CpuList {
        match &self.cpus {
            Some(c) => c.clone(),
            None => online.clone(),
        }
    }
}

/// What sysfs says about the machine's PMUs and CPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct PmuSet {
    pub root: PathBuf,
    pub online: CpuList,
    pub possible: Option<CpuList>,
    /// Sorted by name.
    pub pmus: Vec<Pmu>,
    /// Entries that could not be read, each naming the file and the problem.
    pub warnings: Vec<String>,
}

impl PmuSet {
    /// Reads the PMUs and CPU lists under `root` (`/sys` on a live system).
    pub fn discover(root: &Path) -> Result<Self, Error> {
        let online = CpuList::read(&root.join("devices/system/cpu/online"))?;
        let possible = CpuList::read(&root.join("devices/system/cpu/possible")).ok();
        let devices = root.join("bus/event_source/devices");
        let entries = fs::read_dir(&devices).map_err(|source| Error::Io {
            what: "list the PMUs in (is --sysfs-root right?)",
            path: devices.clone(),
            source,
        })?;
        let mut pmus = Vec::new();
        let mut warnings = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match read_pmu(&entry.path(), &name, &mut warnings) {
                Ok(pmu) => pmus.push(pmu),
                Err(w) => warnings.push(w),
            }
        }
        pmus.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            root: root.to_owned(),
            online,
            possible,
            pmus,
            warnings,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Pmu> {
        self.pmus.iter().find(|p| p.name == name)
    }

    pub fn core_pmus(&self) -> impl Iterator<Item = &Pmu> {
        self.pmus.iter().filter(|p| p.core)
    }

    /// More than one core PMU: big.LITTLE, Intel hybrid.
    pub fn heterogeneous(&self) -> bool {
        self.core_pmus().count() > 1
    }

    /// The core PMUs that cover `cpu`.
    pub fn core_pmus_of(&self, cpu: u32) -> impl Iterator<Item = &Pmu> {
        let online = &self.online;
        self.core_pmus()
            .filter(move |p| p.covered_cpus(online).contains(cpu))
    }
}

fn read_pmu(dir: &Path, name: &str, warnings: &mut Vec<String>) -> Result<Pmu, String> {
    let type_path = dir.join("type");
    let type_text = read_sysfs_file(&type_path)
        .map_err(|e| format!("{}: skipped: {e}", type_path.display()))?;
    let type_: u32 = type_text.trim().parse().map_err(|_| {
        format!(
            "{}: skipped: `{}` is not a PMU type",
            type_path.display(),
            type_text.trim()
        )
    })?;

    let mut cpus = None;
    let mut has_cpus_file = false;
    for file in ["cpus", "cpumask"] {
        let p = dir.join(file);
        if let Ok(text) = read_sysfs_file(&p) {
            has_cpus_file |= file == "cpus";
            match CpuList::parse(&text) {
                Ok(list) => {
                    cpus = Some(list);
                    break;
                }
                Err(e) => warnings.push(format!("{}: ignored: {e}", p.display())),
            }
        }
    }
    let core = name == "cpu" || name == "cpum_cf" || has_cpus_file;

    let mut formats = BTreeMap::new();
    for (field, path) in list_dir(&dir.join("format")) {
        match read_sysfs_file(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| Format::parse(&t).map_err(|e| e.to_string()))
        {
            Ok(f) => {
                formats.insert(field, f);
            }
            Err(e) => warnings.push(format!("{}: ignored: {e}", path.display())),
        }
    }

    let mut events = BTreeMap::new();
    let files = list_dir(&dir.join("events"));
    let companion = |event: &str, suffix: &str| -> Option<String> {
        files
            .iter()
            .find(|(n, _)| n.strip_suffix(suffix) == Some(event))
            .and_then(|(_, p)| read_sysfs_file(p).ok())
            .map(|s| s.trim().to_owned())
    };
    for (event, path) in &files {
        if event.ends_with(".scale")
            || event.ends_with(".unit")
            || event.ends_with(".per-pkg")
            || event.ends_with(".snapshot")
        {
            continue;
        }
        match read_sysfs_file(path) {
            // Real aliases are a few terms; a longer file is not one (and would flood
            // `sampler list` and any message that quotes it).
            Ok(terms) if terms.trim().len() > MAX_ALIAS => warnings.push(format!(
                "{}: ignored: {} bytes, too long for an event alias (at most {MAX_ALIAS})",
                path.display(),
                terms.trim().len()
            )),
            Ok(terms) => {
                let scale = companion(event, ".scale").and_then(|s| s.parse().ok());
                let unit = companion(event, ".unit");
                events.insert(
                    event.clone(),
                    Alias {
                        terms: terms.trim().to_owned(),
                        scale,
                        unit,
                    },
                );
            }
            Err(e) => warnings.push(format!("{}: ignored: {e}", path.display())),
        }
    }

    let mut caps = BTreeMap::new();
    for (cap, path) in list_dir(&dir.join("caps")) {
        if let Ok(v) = read_sysfs_file(&path) {
            caps.insert(cap, v.trim().to_owned());
        }
    }

    Ok(Pmu {
        name: name.to_owned(),
        type_,
        core,
        cpus,
        formats,
        events,
        caps,
    })
}

/// The regular files of `dir` as (name, path), sorted; empty when it does not exist.
fn list_dir(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/sysfs")
            .join(name)
    }

    pub fn load(name: &str) -> PmuSet {
        PmuSet::discover(&fixture(name)).unwrap()
    }

    #[test]
    fn format_parse_encode_split_ranges() {
        let f = Format::parse("config:0-7,32-35\n").unwrap();
        assert_eq!(f.word, ConfigWord::Config);
        assert_eq!(f.width(), 12);
        assert_eq!(f.to_string(), "config:0-7,32-35");
        assert_eq!(f.encode("event", 0x3c).unwrap(), 0x3c);
        assert_eq!(f.encode("event", 0xabc).unwrap(), 0xbc | (0xa << 32));
        let e = f.encode("event", 0x1000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "value 0x1000 does not fit field `event` (config:0-7,32-35, 12 bits)"
        );
        let single = Format::parse("config1:1").unwrap();
        assert_eq!(single.word, ConfigWord::Config1);
        assert_eq!(single.encode("rdpmc", 1).unwrap(), 2);
        assert!(single.encode("rdpmc", 2).is_err());
        let full = Format::parse("config1:0-63").unwrap();
        assert_eq!(full.encode("offcore_rsp", u64::MAX).unwrap(), u64::MAX);
    }

    #[test]
    fn format_rejects_garbage() {
        for bad in [
            "",
            "config",
            "config:",
            "config:8-7",
            "config:0-64",
            "bogus:0-7",
            "config:a",
        ] {
            assert!(Format::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn juno_has_two_core_pmus_on_disjoint_cpus() {
        let s = load("juno");
        assert_eq!(s.online.to_string(), "0-5");
        assert!(s.heterogeneous());
        let core: Vec<(&str, String)> = s
            .core_pmus()
            .map(|p| (p.name.as_str(), p.cpus.as_ref().unwrap().to_string()))
            .collect();
        assert_eq!(
            core,
            [
                ("armv8_cortex_a53", "0,3-5".to_owned()),
                ("armv8_cortex_a57", "1-2".to_owned())
            ]
        );
        let a57 = s.get("armv8_cortex_a57").unwrap();
        assert_eq!(a57.type_, 10);
        assert_eq!(a57.events["cpu_cycles"].terms, "event=0x0011");
        assert_eq!(a57.formats["threshold"].to_string(), "config1:5-16");
        assert!(a57.events.contains_key("inst_spec"));
        assert!(
            !s.get("armv8_cortex_a53")
                .unwrap()
                .events
                .contains_key("inst_spec")
        );
        assert_eq!(
            s.core_pmus_of(3)
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["armv8_cortex_a53"]
        );
        assert!(!s.get("software").unwrap().core);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn adl_hybrid_with_uncore_and_scales() {
        let s = load("adl");
        assert!(s.heterogeneous());
        let core: Vec<&str> = s.core_pmus().map(|p| p.name.as_str()).collect();
        assert_eq!(core, ["cpu_atom", "cpu_core"]);
        assert_eq!(
            s.get("cpu_core")
                .unwrap()
                .cpus
                .as_ref()
                .unwrap()
                .to_string(),
            "0-15"
        );
        assert_eq!(
            s.get("cpu_atom")
                .unwrap()
                .cpus
                .as_ref()
                .unwrap()
                .to_string(),
            "16-23"
        );
        // Alias without trailing newline, and with one.
        let core_pmu = s.get("cpu_core").unwrap();
        assert_eq!(
            core_pmu.events["topdown-retiring"].terms,
            "event=0x00,umask=0x80"
        );
        assert_eq!(core_pmu.events["cpu-cycles"].terms, "event=0x3c");
        assert_eq!(core_pmu.caps["pmu_name"], "alderlake_hybrid");
        // Uncore: cpumask, not core.
        let imc = s.get("uncore_imc_free_running_0").unwrap();
        assert!(!imc.core);
        assert_eq!(imc.cpus.as_ref().unwrap().to_string(), "0");
        assert_eq!(imc.events["data_read"].scale, Some(6.103515625e-5));
        assert_eq!(imc.events["data_read"].unit.as_deref(), Some("MiB"));
        assert!(!imc.events.contains_key("data_read.scale"));
        let power = s.get("power").unwrap();
        assert_eq!(power.events["energy-pkg"].unit.as_deref(), Some("Joules"));
    }

    #[test]
    fn vm_has_no_core_pmu() {
        let s = load("vm");
        assert_eq!(s.core_pmus().count(), 0);
        assert!(!s.heterogeneous());
        assert_eq!(s.online.to_string(), "0-1");
        assert_eq!(s.get("software").unwrap().type_, 1);
        assert_eq!(s.get("msr").unwrap().events["tsc"].terms, "event=0x00");
    }

    #[test]
    fn unreadable_root_names_the_path() {
        let e = PmuSet::discover(Path::new("/nonexistent/sysfs")).unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/sysfs/devices/system/cpu/online"),
            "{e}"
        );
    }

    #[test]
    fn hostile_tree_is_reported_not_fatal() {
        let root = std::env::temp_dir().join(format!("sampler-hostile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dev = root.join("bus/event_source/devices");
        fs::create_dir_all(root.join("devices/system/cpu")).unwrap();
        fs::write(root.join("devices/system/cpu/online"), "0-3\n").unwrap();
        for (pmu, ty) in [("good", "4"), ("garbage", "x9"), ("notype", "")] {
            fs::create_dir_all(dev.join(pmu).join("format")).unwrap();
            if !ty.is_empty() {
                fs::write(dev.join(pmu).join("type"), ty).unwrap();
            }
        }
        fs::write(dev.join("good/cpus"), "0-99999999999").unwrap();
        fs::write(dev.join("good/format/event"), "config:0-99").unwrap();
        let s = PmuSet::discover(&root).unwrap();
        assert_eq!(s.pmus.len(), 1);
        let good = &s.pmus[0];
        assert!(
            good.core,
            "a cpus file makes it a core PMU even if unparsable"
        );
        assert_eq!(good.cpus, None);
        assert!(good.formats.is_empty());
        assert_eq!(s.warnings.len(), 4, "{:#?}", s.warnings);
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains("garbage/type") && w.contains("x9"))
        );
        let _ = fs::remove_dir_all(&root);
    }
}
