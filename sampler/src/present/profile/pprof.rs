//! pprof: a snapshot's sites as `profile.proto` (one sample type per counted quantity,
//! labels per process, thread, container, CPU and core type, mappings with build ids
//! and file offsets), gzipped; and a profile read back into a snapshot, for `report`.

use std::{
    collections::{BTreeSet, HashMap},
    io::{Read as _, Write as _},
    sync::Arc,
};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use prost::Message as _;

use super::proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
use crate::{
    kernel::session::Source,
    model::{
        functions,
        locations::Site,
        snapshot::{CpuRow, Snapshot},
    },
    symbolize::{Frame, Place, is_kernel},
};

/// The mapping kernel frames are in (perf's name for it).
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

/// What a profile says beyond the snapshot: when it started (ns since the epoch), a
/// comment (the command line), and the container of a cgroup id.
pub struct Meta<'a> {
    pub time_ns: i64,
    pub comment: String,
    pub container: &'a mut dyn FnMut(u64) -> String,
}

/// Now, in nanoseconds since the epoch (a profile's `time_nanos`).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// pprof's string table: index 0 is "".
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Self::default();
        s.id("");
        s
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// Whether an event counts nanoseconds (the software clocks) rather than events.
fn unit_of(event: &str) -> &'static str {
    match event.split(':').next().unwrap_or(event) {
        "cpu-clock" | "task-clock" => "nanoseconds",
        _ => "count",
    }
}

/// A mapping as the encoder collects it: keyed by binary, or by module name for
/// code outside any file (the kernel, JIT code, what could not be read).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MapKey {
    Binary(Arc<crate::symbolize::Binary>),
    Module(String),
}

/// The snapshot's sites as a pprof profile. Addresses in binaries are their file
/// offsets, in mappings that start at 0 with file offset 0 (so address - start +
/// offset is the offset the build id's file has); kernel addresses are as the kernel
/// ran them, in `[kernel.kallsyms]`.
pub fn encode(s: &Snapshot, meta: Meta<'_>) -> Profile {
    let mut strings = Strings::new();
    let event = super::sampling_event(s);
    let mut sample_type = vec![
        ValueType {
            r#type: strings.id("samples"),
            unit: strings.id("count"),
        },
        ValueType {
            r#type: strings.id(&event),
            unit: strings.id(unit_of(&event)),
        },
    ];
    for m in &s.members {
        sample_type.push(ValueType {
            r#type: strings.id(m),
            unit: strings.id("count"),
        });
    }
    let comm: HashMap<(u32, u32, u64), &str> = s
        .tasks
        .iter()
        .map(|t| ((t.tgid, t.tid, t.start_ns), t.comm.as_str()))
        .collect();
    let process = functions::process_names(s);
    let pmu: HashMap<u32, &str> = s
        .cpus
        .iter()
        .filter_map(|c| Some((c.cpu, c.pmu.as_deref()?)))
        .collect();
    let mut containers: HashMap<u64, String> = HashMap::new();

    let mut mappings: Vec<(MapKey, u64, u64)> = Vec::new();
    let mut mapping_ids: HashMap<MapKey, u64> = HashMap::new();
    let mut functions: Vec<Function> = Vec::new();
    let mut function_ids: HashMap<(String, String), u64> = HashMap::new();
    let mut locations: Vec<Location> = Vec::new();
    let mut location_ids: HashMap<(u64, u64, u64, i64), u64> = HashMap::new();
    let mut samples = Vec::with_capacity(s.sites.len());
    let blank = Place::default();

    for site in &s.sites {
        let mut ids = Vec::with_capacity(site.frames.len());
        for (i, frame) in site.frames.iter().enumerate() {
            let place = site.places.get(i).unwrap_or(&blank);
            let key = match &place.binary {
                Some(b) => MapKey::Binary(Arc::clone(b)),
                None if frame.kernel => MapKey::Module(kernel_module(&frame.module)),
                None => MapKey::Module(frame.module.clone()),
            };
            let mapping = *mapping_ids.entry(key.clone()).or_insert_with(|| {
                mappings.push((key, u64::MAX, 0));
                mappings.len() as u64
            });
            let range = &mut mappings[mapping as usize - 1];
            range.1 = range.1.min(place.offset);
            range.2 = range.2.max(place.offset.saturating_add(1));
            let file = place.file.as_deref().unwrap_or("").to_owned();
            let function = *function_ids
                .entry((frame.function.clone(), file.clone()))
                .or_insert_with(|| {
                    let name = strings.id(&frame.function);
                    functions.push(Function {
                        id: functions.len() as u64 + 1,
                        name,
                        system_name: name,
                        filename: strings.id(&file),
                        start_line: 0,
                    });
                    functions.len() as u64
                });
            let line = i64::from(place.line);
            let id = *location_ids
                .entry((mapping, place.offset, function, line))
                .or_insert_with(|| {
                    locations.push(Location {
                        id: locations.len() as u64 + 1,
                        mapping_id: mapping,
                        address: place.offset,
                        line: vec![Line {
                            function_id: function,
                            line,
                            column: 0,
                        }],
                        is_folded: false,
                    });
                    locations.len() as u64
                });
            ids.push(id);
        }
        let mut value = vec![site.samples as i64, site.period_sum as i64];
        value.extend(site.counts.iter().take(s.members.len()).map(|&c| c as i64));
        let name = comm
            .get(&(site.tgid, site.tid, site.start_ns))
            .copied()
            .or_else(|| process.get(&(site.tgid, site.start_ns)).map(String::as_str))
            .unwrap_or("");
        let container = containers
            .entry(site.cgroup_id)
            .or_insert_with(|| (meta.container)(site.cgroup_id));
        let mut label = vec![
            num(&mut strings, "pid", site.tgid.into()),
            num(&mut strings, "tid", site.tid.into()),
            text(&mut strings, "comm", name),
            text(&mut strings, "container", container),
            num(&mut strings, "cpu", site.cpu.into()),
        ];
        if let Some(p) = pmu.get(&site.cpu) {
            label.push(text(&mut strings, "pmu", p));
        }
        samples.push(Sample {
            location_id: ids,
            value,
            label,
        });
    }

    let mapping = mappings
        .into_iter()
        .enumerate()
        .map(|(i, (key, lo, hi))| {
            let (filename, build_id, kernel) = match &key {
                MapKey::Binary(b) => (b.path.as_str(), b.build_id.as_str(), false),
                MapKey::Module(m) => (m.as_str(), "", m == KERNEL_MAPPING),
            };
            // Files' offsets from 0; the kernel's and anonymous code's from the
            // lowest address seen.
            let (start, limit) = match key {
                MapKey::Binary(_) => (0, hi.max(1)),
                MapKey::Module(_) => (lo.min(hi), hi),
            };
            Mapping {
                id: i as u64 + 1,
                memory_start: start,
                memory_limit: limit,
                file_offset: 0,
                filename: strings.id(filename),
                build_id: strings.id(build_id),
                has_functions: true,
                has_filenames: false,
                has_line_numbers: false,
                has_inline_frames: kernel,
            }
        })
        .collect();
    // The fixed period, or in frequency mode the mean period of the samples.
    let period = match s.period {
        Some(p) => p as i64,
        None => {
            let sum: u64 = s.sites.iter().map(|x| x.period_sum).sum();
            let n: u64 = s.sites.iter().map(|x| x.samples).sum();
            (sum / n.max(1)) as i64
        }
    };
    let period_type = Some(ValueType {
        r#type: strings.id(&event),
        unit: strings.id(unit_of(&event)),
    });
    let comment = vec![strings.id(&meta.comment)];
    let default_sample_type = strings.id(&event);
    Profile {
        sample_type,
        sample: samples,
        mapping,
        location: locations,
        function: functions,
        string_table: strings.table,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: meta.time_ns,
        duration_nanos: (s.duration_s * 1e9) as i64,
        period_type,
        period,
        comment,
        default_sample_type,
        doc_url: 0,
    }
}

fn kernel_module(module: &str) -> String {
    if module == "[kernel]" {
        KERNEL_MAPPING.to_owned()
    } else {
        module.to_owned()
    }
}

fn num(strings: &mut Strings, key: &str, n: i64) -> Label {
    Label {
        key: strings.id(key),
        str: 0,
        num: n,
        num_unit: 0,
    }
}

fn text(strings: &mut Strings, key: &str, v: &str) -> Label {
    Label {
        key: strings.id(key),
        str: strings.id(v),
        num: 0,
        num_unit: 0,
    }
}

/// The profile, serialized and gzipped (as pprof stores it on disk and serves it).
pub fn to_gzip(p: &Profile) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(&p.encode_to_vec());
    gz.finish().unwrap_or_default()
}

/// A profile from its bytes, gzipped or not. `Err` says why it is not one.
pub fn decode(bytes: &[u8]) -> Result<Profile, String> {
    let raw;
    let body = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .take(1 << 30)
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip: {e}"))?;
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    let p = Profile::decode(body).map_err(|e| format!("protobuf: {e}"))?;
    if p.sample_type.is_empty() {
        return Err("it has no sample types".to_owned());
    }
    if p.string_table.first().is_some_and(|s| !s.is_empty()) || p.string_table.is_empty() {
        return Err("its string table does not start with \"\"".to_owned());
    }
    Ok(p)
}

/// A profile read back as a snapshot: its samples as sites (frames from the
/// locations' lines, innermost first), the sample types after the sampling event as
/// members, the CPUs from the `cpu` and `pmu` labels; functions and stacks built as
/// for a live run. Shares are of the profile's samples (profiles leave idle out).
pub fn snapshot(p: &Profile) -> Snapshot {
    let string = |i: i64| -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| p.string_table.get(i))
            .map_or("", String::as_str)
    };
    let types: Vec<&str> = p.sample_type.iter().map(|t| string(t.r#type)).collect();
    let samples_at = types.iter().position(|&t| t == "samples").unwrap_or(0);
    let period_name = p.period_type.as_ref().map(|t| string(t.r#type));
    let period_at = period_name
        .and_then(|n| types.iter().position(|&t| t == n))
        .or_else(|| (types.len() > 1).then_some(usize::from(samples_at == 0)));
    let event = period_at.map_or("samples", |i| types[i]).to_owned();
    let member_at: Vec<usize> = (0..types.len())
        .filter(|&i| i != samples_at && Some(i) != period_at)
        .collect();
    let members: Vec<String> = member_at.iter().map(|&i| types[i].to_owned()).collect();

    let functions: HashMap<u64, &Function> = p.function.iter().map(|f| (f.id, f)).collect();
    let mappings: HashMap<u64, &Mapping> = p.mapping.iter().map(|m| (m.id, m)).collect();
    let mut frames_of: HashMap<u64, Vec<Arc<Frame>>> = HashMap::new();
    for loc in &p.location {
        let mapping = mappings.get(&loc.mapping_id);
        let file = mapping.map_or("", |m| string(m.filename));
        let kernel = is_kernel(loc.address) || file == KERNEL_MAPPING;
        let module = if file == KERNEL_MAPPING {
            "[kernel]".to_owned()
        } else if file.starts_with('[') {
            file.to_owned()
        } else {
            file.rsplit('/').next().unwrap_or(file).to_owned()
        };
        let frames = loc
            .line
            .iter()
            .map(|l| {
                let name = functions.get(&l.function_id).map_or("", |f| string(f.name));
                Arc::new(Frame {
                    function: if name.is_empty() {
                        format!("{module}+{:#x}", loc.address)
                    } else {
                        name.to_owned()
                    },
                    module: module.clone(),
                    kernel,
                })
            })
            .collect::<Vec<_>>();
        let frames = if frames.is_empty() {
            vec![Arc::new(Frame {
                function: format!("{module}+{:#x}", loc.address),
                module,
                kernel,
            })]
        } else {
            frames
        };
        frames_of.insert(loc.id, frames);
    }

    let mut cpus: BTreeSet<(u32, Option<String>)> = BTreeSet::new();
    let mut sites = Vec::with_capacity(p.sample.len());
    let mut comms: HashMap<u32, String> = HashMap::new();
    let mut stacks = false;
    for sample in &p.sample {
        let value = |i: usize| sample.value.get(i).map_or(0, |&v| v.max(0) as u64);
        let (mut pid, mut tid, mut cpu, mut pmu) = (0u32, 0u32, 0u32, None);
        for l in &sample.label {
            match string(l.key) {
                "pid" => pid = l.num as u32,
                "tid" => tid = l.num as u32,
                "cpu" => cpu = l.num as u32,
                "pmu" => pmu = Some(string(l.str).to_owned()),
                "comm" => {
                    comms.entry(pid).or_insert_with(|| string(l.str).to_owned());
                }
                _ => {}
            }
        }
        cpus.insert((cpu, pmu));
        let frames: Vec<Arc<Frame>> = sample
            .location_id
            .iter()
            .flat_map(|id| frames_of.get(id).cloned().unwrap_or_default())
            .collect();
        stacks |= sample.location_id.len() > 1;
        let mut counts = [0; sampler_common::MAX_MEMBERS];
        for (slot, &i) in counts.iter_mut().zip(&member_at) {
            *slot = value(i);
        }
        sites.push(Site {
            tgid: pid,
            tid,
            start_ns: 0,
            cpu,
            cgroup_id: 0,
            frames,
            places: Vec::new(),
            user_stack: true,
            samples: value(samples_at),
            period_sum: period_at.map_or(0, value),
            counts,
        });
    }
    let total: u64 = sites.iter().map(|s| s.samples).sum();
    let mut per_cpu: HashMap<u32, u64> = HashMap::new();
    for site in &sites {
        *per_cpu.entry(site.cpu).or_default() += site.samples;
    }
    let mut s = Snapshot {
        source: Source::Software,
        duration_s: p.duration_nanos as f64 / 1e9,
        frequency_hz: None,
        period: (p.period > 0).then_some(p.period as u64),
        samples: total,
        idle_samples: 0,
        dropped: 0,
        evicted: 0,
        cpus: cpus
            .into_iter()
            .map(|(cpu, pmu)| CpuRow {
                cpu,
                event: event.clone(),
                pmu,
                encoding: "profile",
                samples: per_cpu.get(&cpu).copied().unwrap_or(0),
                idle_samples: 0,
            })
            .collect(),
        tasks: Vec::new(),
        members,
        events: Vec::new(),
        warnings: Vec::new(),
        bpf: None,
        check: Vec::new(),
        sites,
        functions: None,
        stacks: None,
        locations: None,
    };
    s.functions = Some(functions::functions(&s, None));
    if stacks {
        let mut rows = functions::stacks(&s, None);
        for r in &mut rows {
            r.comm = comms.get(&r.tgid).cloned().unwrap_or_default();
        }
        s.stacks = Some(rows);
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::symbolize::Binary;

    fn frame(f: &str, m: &str, kernel: bool) -> Arc<Frame> {
        Arc::new(Frame {
            function: f.into(),
            module: m.into(),
            kernel,
        })
    }

    /// A snapshot of two functions, 2:1, called from main, in one binary, with a
    /// kernel frame under the first.
    pub(crate) fn example() -> Snapshot {
        let (maps, run) = crate::model::snapshot::tests::example();
        let mut s = Snapshot::build(&maps, &[], &run, 2.0);
        s.members = vec!["instructions".into()];
        let bin = Arc::new(Binary {
            path: "/usr/bin/work".into(),
            build_id: "abcd".into(),
        });
        let at = |off: u64| Place {
            binary: Some(Arc::clone(&bin)),
            offset: off,
            file: None,
            line: 0,
        };
        let site = |frames: Vec<Arc<Frame>>, places: Vec<Place>, n: u64| Site {
            tgid: 7,
            tid: 8,
            start_ns: s.tasks.first().map_or(0, |t| t.start_ns),
            cpu: 0,
            cgroup_id: 42,
            frames,
            places,
            user_stack: true,
            samples: n,
            period_sum: n * 1000,
            counts: [n * 2000, 0, 0, 0],
        };
        s.sites = vec![
            site(
                vec![
                    frame("do_syscall", "[kernel]", true),
                    frame("alpha", "work", false),
                    frame("main", "work", false),
                ],
                vec![
                    Place {
                        offset: 0xffff_ffff_8100_1000,
                        ..Place::default()
                    },
                    at(0x1100),
                    at(0x1000),
                ],
                20,
            ),
            site(
                vec![frame("beta", "work", false), frame("main", "work", false)],
                vec![at(0x1200), at(0x1000)],
                10,
            ),
        ];
        s.samples = 30;
        s
    }

    fn meta(container: &mut dyn FnMut(u64) -> String) -> Meta<'_> {
        Meta {
            time_ns: 1_700_000_000_000_000_000,
            comment: "sampler record".into(),
            container,
        }
    }

    #[test]
    fn encodes_types_labels_mappings_and_locations() {
        let s = example();
        let mut seen = Vec::new();
        let mut names = |id: u64| {
            seen.push(id);
            format!("cg{id}")
        };
        let p = encode(&s, meta(&mut names));
        let st = |i: i64| p.string_table[i as usize].as_str();
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (st(t.r#type), st(t.unit)))
            .collect();
        let event = crate::present::profile::sampling_event(&s);
        assert_eq!(types[0], ("samples", "count"));
        assert_eq!(types[1].0, event);
        assert_eq!(types[2], ("instructions", "count"));
        assert_eq!(st(p.default_sample_type), event);
        assert_eq!(p.duration_nanos, 2_000_000_000);
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.sample[0].value, vec![20, 20_000, 40_000]);
        let labels: Vec<(&str, String)> = p.sample[0]
            .label
            .iter()
            .map(|l| {
                let v = if l.str != 0 {
                    st(l.str).to_owned()
                } else {
                    l.num.to_string()
                };
                (st(l.key), v)
            })
            .collect();
        for want in [
            ("pid", "7"),
            ("tid", "8"),
            ("container", "cg42"),
            ("cpu", "0"),
        ] {
            assert!(
                labels.contains(&(want.0, want.1.to_owned())),
                "{want:?} in {labels:?}"
            );
        }
        assert!(labels.iter().any(|(k, _)| *k == "comm"));
        // One container lookup per cgroup.
        assert_eq!(seen, vec![42]);
        // main is one location, shared by both stacks; leaf first.
        assert_eq!(p.location.len(), 4);
        assert_eq!(p.sample[0].location_id.len(), 3);
        assert_eq!(p.sample[0].location_id[2], p.sample[1].location_id[1]);
        let work = p
            .mapping
            .iter()
            .find(|m| st(m.filename) == "/usr/bin/work")
            .unwrap();
        assert_eq!(st(work.build_id), "abcd");
        assert_eq!((work.memory_start, work.file_offset), (0, 0));
        assert!(work.memory_limit > 0x1200);
        let beta = p.location.iter().find(|l| l.address == 0x1200).unwrap();
        assert_eq!(beta.mapping_id, work.id);
        let kernel = p
            .mapping
            .iter()
            .find(|m| st(m.filename) == KERNEL_MAPPING)
            .unwrap();
        assert!(kernel.memory_start <= 0xffff_ffff_8100_1000);
        assert!(kernel.memory_limit > 0xffff_ffff_8100_1000);
        for l in &p.location {
            let m = p.mapping.iter().find(|m| m.id == l.mapping_id).unwrap();
            assert!(m.memory_start <= l.address && l.address < m.memory_limit);
        }
    }

    #[test]
    fn round_trips_through_gzip_into_the_same_function_rows() {
        let s = example();
        let mut names = |_| String::new();
        let bytes = to_gzip(&encode(&s, meta(&mut names)));
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
        let back = snapshot(&decode(&bytes).unwrap());
        assert_eq!(back.samples, 30);
        assert_eq!(back.members, vec!["instructions".to_owned()]);
        let rows = back.functions.as_ref().unwrap();
        let row = |f: &str| rows.iter().find(|r| r.function == f).unwrap();
        assert_eq!(row("alpha").total_samples, 20);
        assert_eq!(row("beta").samples, 10);
        assert_eq!(row("main").total_samples, 30);
        assert_eq!(row("main").samples, 0);
        assert_eq!(row("do_syscall").module, "[kernel]");
        assert!(row("do_syscall").kernel);
        assert_eq!(row("alpha").module, "work");
        assert_eq!(row("beta").counts["instructions"], 20_000);
        assert!(back.stacks.is_some());
    }

    #[test]
    fn what_is_not_a_profile_says_why() {
        assert!(decode(b"hello").unwrap_err().contains("protobuf"));
        assert!(decode(&[0x1f, 0x8b, 0, 0]).unwrap_err().contains("gzip"));
        assert!(decode(b"").unwrap_err().contains("no sample types"));
    }
}
