//! Symbolize: the addresses the BPF program recorded (sampled instructions and call
//! stacks) turned into functions and modules, with blazesym.
//!
//! Kernel addresses go through `/proc/kallsyms`. A process's addresses are first
//! normalized (which mapping, which file and offset, which build id) and named from
//! the process (ELF symbols, DWARF where present, JIT maps in `/tmp/perf-PID.map`,
//! names demangled), both while the process lives: results are cached per process
//! and address, and blazesym caches each binary's symbols. An address that cannot be
//! named is still shown, and why: `module+offset` for a stripped binary, `[exited]`
//! for a process gone before it was symbolized, `[anon]` for anonymous code without a
//! JIT map (`[jit]` with one), `[kernel]` when kernel symbols are hidden; a binary
//! deleted since it was started is read through `/proc/PID/map_files` and its module
//! says `(deleted)`.
//!
//! Uses `kernel` (the stack map); `model` builds function rows from its frames.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use blazesym::{
    Pid,
    normalize::{Normalizer, UserMeta},
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Kernel, Process, Source},
    },
};
use sampler_common::{LocKey, LocValue};
use serde::Serialize;

use crate::kernel::{Error, bpf::Bpf};

/// One frame of a location: the function and the module (binary or `[kernel]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Frame {
    pub function: String,
    pub module: String,
    pub kernel: bool,
}

impl Frame {
    fn marked(function: impl Into<String>, module: impl Into<String>, kernel: bool) -> Self {
        Self {
            function: function.into(),
            module: module.into(),
            kernel,
        }
    }
}

/// A binary a profile's addresses are in: its path and build id (hex, empty when it
/// has none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Binary {
    pub path: String,
    pub build_id: String,
}

/// Where an address is, for profiles (pprof's mappings and lines): the binary and the
/// offset in its file, or the address itself for kernel and anonymous code; the
/// source line where known (with `--inlined`, which reads DWARF).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Place {
    pub binary: Option<Arc<Binary>>,
    pub offset: u64,
    pub file: Option<Arc<str>>,
    pub line: u32,
}

/// One address as the cache keeps it.
#[derive(Debug, Clone)]
struct Resolved {
    frame: Arc<Frame>,
    place: Place,
}

impl Resolved {
    fn at(frame: Frame, addr: u64) -> Self {
        Self {
            frame: Arc::new(frame),
            place: Place {
                offset: addr,
                ..Place::default()
            },
        }
    }
}

/// Whether `addr` is a kernel address (the upper half of the address space, on
/// x86-64 and arm64 alike).
pub fn is_kernel(addr: u64) -> bool {
    addr >> 63 == 1
}

/// What could not be symbolized, counted over the run (distinct addresses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SymbolStats {
    /// Addresses of processes that exited before they were symbolized.
    pub exited: u64,
    /// Addresses of live processes that could not be read (see the warnings).
    pub unreadable: u64,
    /// Addresses in binaries without symbols (shown as `module+offset`).
    pub stripped: u64,
    /// Addresses in anonymous memory with no JIT map.
    pub anonymous: u64,
    /// Kernel addresses that could not be named.
    pub kernel_unknown: u64,
    /// Stacks the stack map no longer held when read.
    pub stacks_missing: u64,
}

/// A process as the cache knows it: (pid, start time).
type ProcKey = (u32, u64);

/// The symbolization cache of one run.
pub struct Symbols {
    symbolizer: Symbolizer,
    normalizer: Normalizer,
    /// Where `/proc` is (a test may point elsewhere).
    proc_root: PathBuf,
    kernel: HashMap<u64, Resolved>,
    user: HashMap<ProcKey, HashMap<u64, Resolved>>,
    stacks: HashMap<u32, Arc<[u64]>>,
    /// Why kernel frames show as `[kernel]`, once known.
    kernel_hidden: Option<String>,
    kernel_checked: bool,
    /// Whether binaries are opened through `/proc/PID/map_files` (needs
    /// CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE), rather than by their paths.
    map_files: bool,
    /// Why live processes could not be symbolized (the first few).
    errors: Vec<String>,
    pub stats: SymbolStats,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Symbols {
    /// A cache; `inlined`: name the innermost inlined function at an address (from
    /// DWARF) instead of the function it was inlined into.
    pub fn new(inlined: bool) -> Self {
        Self {
            symbolizer: Symbolizer::builder()
                .enable_code_info(inlined)
                .enable_inlined_fns(inlined)
                .enable_demangling(true)
                .build(),
            normalizer: Normalizer::builder().enable_build_ids(true).build(),
            proc_root: PathBuf::from("/proc"),
            kernel: HashMap::new(),
            user: HashMap::new(),
            stacks: HashMap::new(),
            kernel_hidden: None,
            kernel_checked: false,
            map_files: true,
            errors: Vec::new(),
            stats: SymbolStats::default(),
        }
    }

    /// Reads the kernel's symbols now (they are cached for the run), while the
    /// process may still read `/proc/kallsyms` unrestricted: for a run that drops its
    /// capabilities after set-up. Returns why kernel frames will not be named, if so.
    pub fn preload_kernel(&mut self) -> Option<String> {
        let kallsyms = self.proc_root.join("kallsyms");
        let text = std::fs::File::open(&kallsyms).ok().and_then(|f| {
            use std::io::BufRead as _;
            std::io::BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .take(100_000)
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    let addr = u64::from_str_radix(w.next()?, 16).ok()?;
                    matches!(w.next()?, "T" | "t")
                        .then_some(addr)
                        .filter(|&a| a != 0)
                })
        });
        if let Some(addr) = text {
            self.resolve_kernel(&[addr]);
        } else if !self.kernel_checked {
            self.kernel_checked = true;
            self.kernel_hidden = kernel_symbols_hidden(&kallsyms);
        }
        self.kernel_hidden.clone()
    }

    /// Opens processes' binaries by the paths in their maps from now on, not through
    /// `/proc/PID/map_files` (which needs capabilities a run may have dropped).
    pub fn without_map_files(&mut self) {
        self.map_files = false;
    }

    /// One-line notes on what the frames cannot say (kernel symbols hidden).
    pub fn notes(&self) -> Vec<String> {
        self.kernel_hidden
            .iter()
            .chain(&self.errors)
            .cloned()
            .collect()
    }

    /// Symbolizes every address of `locations` not seen before: the sampled
    /// instructions and, through `bpf`'s stack map, the frames of their stacks. Call it
    /// as soon as locations are read, while their processes still run.
    pub fn resolve(&mut self, locations: &[(LocKey, LocValue)], bpf: &Bpf) -> Result<(), Error> {
        let mut kernel_new: Vec<u64> = Vec::new();
        let mut user_new: HashMap<ProcKey, Vec<u64>> = HashMap::new();
        for (key, _) in locations {
            let proc_key = (key.tgid, key.start);
            for id in [key.kernel_stack, key.user_stack] {
                if let Ok(id) = u32::try_from(id)
                    && !self.stacks.contains_key(&id)
                {
                    match bpf.stack(id)? {
                        Some(addrs) => {
                            self.stacks.insert(id, addrs.into());
                        }
                        None => self.stats.stacks_missing += 1,
                    }
                }
            }
            let stack = |id: i32| u32::try_from(id).ok().and_then(|id| self.stacks.get(&id));
            let kernel = stack(key.kernel_stack)
                .into_iter()
                .flat_map(|s| s.iter().copied());
            let user = stack(key.user_stack).into_iter().flat_map(|s| {
                sampler_common::user_stack_frames(key.user_stack, key.ip, !is_kernel(key.ip), s)
            });
            for addr in std::iter::once(key.ip).chain(kernel).chain(user) {
                if is_kernel(addr) {
                    if !self.kernel.contains_key(&addr) {
                        kernel_new.push(addr);
                    }
                } else if key.tgid != 0
                    && !self
                        .user
                        .get(&proc_key)
                        .is_some_and(|m| m.contains_key(&addr))
                {
                    user_new.entry(proc_key).or_default().push(addr);
                }
            }
        }
        // Processes first: they may exit; the kernel stays (and loading its symbols
        // the first time takes a while).
        for (proc_key, mut addrs) in user_new {
            addrs.sort_unstable();
            addrs.dedup();
            self.resolve_user(proc_key, &addrs);
        }
        if !kernel_new.is_empty() {
            kernel_new.sort_unstable();
            kernel_new.dedup();
            self.resolve_kernel(&kernel_new);
        }
        Ok(())
    }

    fn resolve_kernel(&mut self, addrs: &[u64]) {
        if !self.kernel_checked {
            self.kernel_checked = true;
            self.kernel_hidden = kernel_symbols_hidden(&self.proc_root.join("kallsyms"));
        }
        if self.kernel_hidden.is_some() {
            for &a in addrs {
                self.kernel.insert(
                    a,
                    Resolved::at(Frame::marked("[kernel]", "[kernel]", true), a),
                );
            }
            return;
        }
        let source = Source::Kernel(Kernel {
            vmlinux: blazesym::MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        });
        let results = self.symbolizer.symbolize(&source, Input::AbsAddr(addrs));
        for (i, &a) in addrs.iter().enumerate() {
            let mut line = (None, 0);
            let frame = match results.as_ref().ok().and_then(|r| r.get(i)) {
                Some(Symbolized::Sym(sym)) => {
                    line = source_line(sym);
                    Frame::marked(
                        innermost(sym),
                        sym.module.as_ref().map_or("[kernel]".to_owned(), |m| {
                            format!("[{}]", m.to_string_lossy())
                        }),
                        true,
                    )
                }
                _ => {
                    self.stats.kernel_unknown += 1;
                    Frame::marked(format!("[kernel]+{a:#x}"), "[kernel]", true)
                }
            };
            let mut resolved = Resolved::at(frame, a);
            (resolved.place.file, resolved.place.line) = line;
            self.kernel.insert(a, resolved);
        }
    }

    fn resolve_user(&mut self, proc_key: ProcKey, addrs: &[u64]) {
        let pid = Pid::from(proc_key.0);
        // Which file and offset each address is in (module+offset when unnamed).
        let normalized = self.normalizer.normalize_user_addrs(pid, addrs);
        let mut process = Process::new(pid);
        process.map_files = self.map_files;
        let named = self
            .symbolizer
            .symbolize(&Source::Process(process), Input::AbsAddr(addrs));
        let (normalized, named) = match (normalized, named) {
            (Ok(n), Ok(s)) => (n, s),
            (Err(e), _) | (_, Err(e)) => {
                // Gone, or unreadable: its addresses stay unnamed, and an unreadable
                // live process is said once.
                let alive = self.proc_root.join(proc_key.0.to_string()).exists();
                let (module, count) = if alive {
                    (format!("[unreadable: {e}]"), &mut self.stats.unreadable)
                } else {
                    ("[exited]".to_owned(), &mut self.stats.exited)
                };
                *count += addrs.len() as u64;
                if alive && self.errors.len() < 3 {
                    self.errors
                        .push(format!("cannot symbolize process {}: {e}", proc_key.0));
                }
                let cache = self.user.entry(proc_key).or_default();
                for &a in addrs {
                    cache.insert(
                        a,
                        Resolved::at(Frame::marked("[unknown]", module.clone(), false), a),
                    );
                }
                return;
            }
        };
        // One binary record per mapping of the answer.
        let binaries: Vec<Option<Arc<Binary>>> = normalized
            .meta
            .iter()
            .map(|m| match m {
                UserMeta::Elf(elf) => Some(Arc::new(Binary {
                    path: elf.path.display().to_string(),
                    build_id: elf.build_id.as_deref().map(hex).unwrap_or_default(),
                })),
                _ => None,
            })
            .collect();
        let cache = self.user.entry(proc_key).or_default();
        for (i, &a) in addrs.iter().enumerate() {
            let (file_offset, meta, binary) =
                normalized
                    .outputs
                    .get(i)
                    .map_or((0, None, None), |&(off, m)| {
                        (
                            off,
                            normalized.meta.get(m),
                            binaries.get(m).cloned().flatten(),
                        )
                    });
            let module = match meta {
                // A binary deleted since it was mapped is read through map_files
                // and marked.
                Some(UserMeta::Elf(elf)) if !elf.path.exists() => {
                    Some(format!("{} (deleted)", file_name(&elf.path)))
                }
                Some(UserMeta::Elf(elf)) => Some(file_name(&elf.path)),
                _ => None,
            };
            let mut line = (None, 0);
            let frame = match named.get(i) {
                Some(Symbolized::Sym(sym)) => {
                    line = source_line(sym);
                    Frame::marked(
                        innermost(sym),
                        // Named outside any file: from a JIT map (/tmp/perf-PID.map).
                        module.unwrap_or_else(|| {
                            sym.module
                                .as_ref()
                                .map_or("[jit]".to_owned(), |m| file_name(Path::new(&**m)))
                        }),
                        false,
                    )
                }
                _ => match module {
                    Some(module) => {
                        self.stats.stripped += 1;
                        Frame::marked(format!("{module}+{file_offset:#x}"), module, false)
                    }
                    None => {
                        self.stats.anonymous += 1;
                        Frame::marked("[unknown]", "[anon]", false)
                    }
                },
            };
            let place = Place {
                // Anonymous code keeps its address (there is no file to be in).
                offset: if binary.is_some() { file_offset } else { a },
                binary,
                file: line.0,
                line: line.1,
            };
            cache.insert(
                a,
                Resolved {
                    frame: Arc::new(frame),
                    place,
                },
            );
        }
    }

    /// The frames of a location, innermost first: the kernel stack, then the user
    /// stack (with `-g`), or the sampled instruction alone, each with where its
    /// address is (for profiles). Addresses not resolved yet show as `[unknown]`.
    pub fn located(&self, key: &LocKey) -> (Vec<Arc<Frame>>, Vec<Place>) {
        self.addrs(key)
            .into_iter()
            .map(|a| {
                let r = self.resolved(key, a);
                (r.frame, r.place)
            })
            .unzip()
    }

    fn addrs(&self, key: &LocKey) -> Vec<u64> {
        let stack = |id: i32| u32::try_from(id).ok().and_then(|id| self.stacks.get(&id));
        let (kernel, user) = (stack(key.kernel_stack), stack(key.user_stack));
        let mut addrs: Vec<u64> = Vec::new();
        match kernel {
            Some(k) => addrs.extend(k.iter()),
            None if is_kernel(key.ip) => addrs.push(key.ip),
            None => {}
        }
        match user {
            Some(u) => addrs.extend(sampler_common::user_stack_frames(
                key.user_stack,
                key.ip,
                !is_kernel(key.ip),
                u,
            )),
            None if !is_kernel(key.ip) => addrs.push(key.ip),
            None => {}
        }
        addrs
    }

    fn resolved(&self, key: &LocKey, addr: u64) -> Resolved {
        let found = if is_kernel(addr) {
            self.kernel.get(&addr)
        } else {
            self.user
                .get(&(key.tgid, key.start))
                .and_then(|m| m.get(&addr))
        };
        found.cloned().unwrap_or_else(|| {
            let module = if is_kernel(addr) {
                "[kernel]"
            } else {
                "[unknown]"
            };
            Resolved::at(Frame::marked("[unknown]", module, is_kernel(addr)), addr)
        })
    }

    /// Forgets the cached addresses of processes not in `live` (after they have
    /// left the maps): the cache follows what the maps hold.
    pub fn retain_processes(&mut self, live: &[(LocKey, LocValue)]) {
        let keep: std::collections::HashSet<ProcKey> =
            live.iter().map(|(k, _)| (k.tgid, k.start)).collect();
        self.user.retain(|k, _| keep.contains(k));
    }
}

/// The name at a symbolized address: the innermost inlined function when asked for
/// and known, else the function.
fn innermost(sym: &blazesym::symbolize::Sym<'_>) -> String {
    sym.inlined
        .last()
        .map_or_else(|| sym.name.to_string(), |f| f.name.to_string())
}

/// The source file and line of a symbolized address, when the symbolizer read them.
fn source_line(sym: &blazesym::symbolize::Sym<'_>) -> (Option<Arc<str>>, u32) {
    sym.code_info.as_deref().map_or((None, 0), |c| {
        (
            Some(Arc::from(c.to_path().display().to_string())),
            c.line.unwrap_or(0),
        )
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Why kernel addresses cannot be named here, when they cannot: `kallsyms` missing or
/// showing every address as 0 (`kernel.kptr_restrict`, or no privileges).
fn kernel_symbols_hidden(kallsyms: &Path) -> Option<String> {
    use std::io::BufRead as _;
    let file = match std::fs::File::open(kallsyms) {
        Ok(f) => f,
        Err(e) => {
            return Some(format!(
                "kernel frames show as [kernel]: {} is not readable ({e})",
                kallsyms.display()
            ));
        }
    };
    let mut lines = std::io::BufReader::new(file).lines().map_while(Result::ok);
    let any_nonzero = lines.by_ref().take(64).any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|a| a.bytes().any(|b| b != b'0'))
    });
    (!any_nonzero).then(|| {
        let restrict = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned());
        format!(
            "kernel frames show as [kernel]: {} hides kernel addresses \
             (kernel.kptr_restrict = {restrict}); run as root with kptr_restrict 0 or 1",
            kallsyms.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_addresses_are_the_upper_half() {
        assert!(is_kernel(0xffff_ffff_8100_0000));
        assert!(is_kernel(0xffff_8000_1000_0000));
        assert!(!is_kernel(0x5555_5555_0000));
        assert!(!is_kernel(0x7fff_ffff_f000));
    }

    #[test]
    fn hidden_kallsyms_is_said_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("sampler-sym-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hidden = dir.join("kallsyms-hidden");
        std::fs::write(
            &hidden,
            "0000000000000000 T _stext\n0000000000000000 t foo\n",
        )
        .unwrap();
        let why = kernel_symbols_hidden(&hidden).expect("hidden");
        assert!(why.contains("kptr_restrict"), "{why}");
        let shown = dir.join("kallsyms-shown");
        std::fs::write(&shown, "ffffffff81000000 T _stext\n").unwrap();
        assert_eq!(kernel_symbols_hidden(&shown), None);
        let why = kernel_symbols_hidden(&dir.join("missing")).expect("missing");
        assert!(why.contains("not readable"), "{why}");
    }
}
