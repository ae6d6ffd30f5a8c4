//! Field offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`): where
//! `task_struct.group_leader` and `task_struct.start_time` sit (the BPF program reads
//! the sampled process's start time through them, so that a process that reuses an
//! exited process's pid gets map entries of its own), and where a `perf_event`
//! program's context keeps its event and the event its count (the program reads the
//! sampling leader's count there, already brought up to date by the overflow, instead
//! of through a helper that reads the counter and the clocks again).
//!
//! Only this lookup is needed, so the type section is walked in place over the raw
//! bytes (the BTF format: `include/uapi/linux/btf.h`) instead of building the full
//! type graph (aya's parser materialises every type, tens of MB at its peak; its
//! member lists are not public either).

use std::path::Path;

/// Byte offsets of kernel fields the BPF program reads; all 0 (the default) when
/// unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct`'s `struct task_struct *group_leader`.
    pub group_leader: u32,
    /// `task_struct`'s `u64 start_time` (CLOCK_MONOTONIC nanoseconds at fork).
    pub start_time: u32,
    /// `bpf_perf_event_data_kern`'s `struct perf_event *event`, the event a
    /// `perf_event` program runs for; with `event_count`, 0 when either is missing.
    pub ctx_event: u32,
    /// `perf_event`'s `local64_t count`.
    pub event_count: u32,
    /// Not offsets: the BTF ids of the kernel function `bpf_rdonly_cast` (Linux
    /// 6.2+) and of `struct perf_event`, with which the program reads `count` with
    /// a plain load; 0 when the kernel has no such function.
    pub rdonly_cast_func: u32,
    pub perf_event_type: u32,
    /// `task_struct`'s `unsigned int flags` (`PF_*`), with which the program tells
    /// a task with user registers to walk from; 0 when missing.
    pub task_flags: u32,
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

// BTF kinds (`BTF_KIND_*`).
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

/// Reads the offsets from the BTF file at `path`.
///
/// The file (5 MB or more) is mapped where the kernel allows it (`/sys/kernel/btf/`
/// files can be mapped since Linux 6.16: no copy, and its pages are the kernel's),
/// else read into an anonymous mapping, not the heap: a heap block that large makes
/// glibc raise its mmap and trim thresholds for the rest of the run, and the process
/// then keeps ~10 MB more resident.
pub fn task_offsets_from(path: &Path) -> Result<KernelOffsets, String> {
    let data = read_mapped(path).map_err(|e| format!("{}: {e}", path.display()))?;
    task_offsets(&data).map_err(|e| format!("{}: {e}", path.display()))
}

/// The whole file at `path`, mapped or read into an anonymous mapping; freed on drop.
fn read_mapped(path: &Path) -> std::io::Result<Blob> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    // sysfs gives the BTF's real size; at most 256 MB is believed.
    let len = usize::try_from(file.metadata()?.len())
        .unwrap_or(usize::MAX)
        .min(256 << 20);
    if len == 0 {
        return Err(std::io::Error::other("empty file"));
    }
    // SAFETY: a read-only private mapping of the kernel's BTF, which does not change
    // while the kernel runs; another file is not changed under the mapping either
    // while this function's caller walks it (tests pass files of their own).
    if let Ok(map) = unsafe {
        memmap2::MmapOptions::new()
            .len(len)
            .map_copy_read_only(&file)
    } {
        return Ok(Blob::Mapped(map));
    }
    let mut buf = memmap2::MmapMut::map_anon(len)?;
    file.read_exact(&mut buf)?;
    Ok(Blob::Read(buf))
}

/// A BTF file's bytes: mapped, or copied.
enum Blob {
    Mapped(memmap2::Mmap),
    Read(memmap2::MmapMut),
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Read(m) => m,
        }
    }
}

/// The kind in a type's `info` word.
fn kind_of(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

/// One type of the type section: its header words and where its trailing data is.
#[derive(Clone, Copy)]
struct Type {
    info: u32,
    /// `size` or `type`, by kind.
    size_type: u32,
    /// Offset of the kind-specific data after the 12-byte header, in the type section.
    extra: usize,
}

impl Type {
    fn kind(self) -> u32 {
        kind_of(self.info)
    }
    fn vlen(self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(self) -> bool {
        self.info >> 31 == 1
    }
}

/// The type and string sections, checked to be walkable end to end, with where each
/// type starts: the section is walked once (a vmlinux has 100,000 types or more, and
/// resolving a member's type by walking again to its id cost several walks).
struct Btf<'a> {
    types_data: &'a [u8],
    strings: &'a [u8],
    /// Byte offset in `types_data` of type `id`, at `id - 1`.
    starts: Vec<u32>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, String> {
        let magic = data
            .get(..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or("truncated header")?;
        if magic != MAGIC {
            return Err(format!(
                "not BTF of this machine's byte order (magic {magic:#06x})"
            ));
        }
        let word = |i: usize| u32_at(data, 4 + 4 * i).ok_or("truncated header");
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (word(0)?, word(1)?, word(2)?, word(3)?, word(4)?);
        if (hdr_len as usize) < HEADER_LEN {
            return Err(format!("header length {hdr_len} below {HEADER_LEN}"));
        }
        let section = |off: u32, len: u32, what: &str| {
            let start = (hdr_len as usize).checked_add(off as usize);
            let end = start.and_then(|s| s.checked_add(len as usize));
            match (start, end) {
                (Some(s), Some(e)) if e <= data.len() => Ok(&data[s..e]),
                _ => Err(format!("{what} section past the end of the data")),
            }
        };
        let types_data = section(type_off, type_len, "type")?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < types_data.len() {
            // The section's length is a u32, so every offset in it is one.
            starts.push(at as u32);
            at = Self::type_at(types_data, at, starts.len() as u32)?.1;
        }
        Ok(Self {
            types_data,
            strings: section(str_off, str_len, "string")?,
            starts,
        })
    }

    /// The id of each type that is one of `wanted` (a kind and a name), in id order,
    /// with the index of its entry. Found by each type's `info` word and its name's
    /// bytes compared in place, with no type parsed and no string's end looked for:
    /// the walk passes over every type before the last one wanted (the kernel's
    /// function ids come late), and on a kernel's BTF that is most of its time.
    fn named<'s>(
        &'s self,
        wanted: &'s [(u32, &'s [u8])],
    ) -> impl Iterator<Item = (u32, usize)> + 's {
        let (types, strings) = (self.types_data, self.strings);
        self.starts.iter().zip(1u32..).filter_map(move |(&at, id)| {
            let at = at as usize;
            let kind = kind_of(u32_at(types, at + 4)?);
            if !wanted.iter().any(|(k, _)| *k == kind) {
                return None;
            }
            let rest = strings.get(u32_at(types, at)? as usize..)?;
            let i = wanted.iter().position(|(k, n)| {
                *k == kind && rest.get(..n.len()) == Some(n) && rest.get(n.len()) == Some(&0)
            })?;
            Some((id, i))
        })
    }

    /// The type at byte `at` (type `id`), and where the next one starts.
    fn type_at(types_data: &[u8], at: usize, id: u32) -> Result<(Type, usize), String> {
        let truncated = || format!("type {id} truncated");
        let info = u32_at(types_data, at + 4).ok_or_else(truncated)?;
        let size_type = u32_at(types_data, at + 8).ok_or_else(truncated)?;
        let t = Type {
            info,
            size_type,
            extra: at + 12,
        };
        let extra = match t.kind() {
            INT | VAR | DECL_TAG => 4,
            PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 0,
            ARRAY => 12,
            STRUCT | UNION | DATASEC | ENUM64 => 12 * t.vlen(),
            ENUM | FUNC_PROTO => 8 * t.vlen(),
            kind => {
                return Err(format!("type {id} has kind {kind}, unknown to this parser"));
            }
        };
        let next = t.extra + extra;
        if next > types_data.len() {
            return Err(truncated());
        }
        Ok((t, next))
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn get(&self, id: u32) -> Option<Type> {
        let at = *self.starts.get((id as usize).checked_sub(1)?)?;
        Some(Self::type_at(self.types_data, at as usize, id).ok()?.0)
    }

    /// The type behind typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind() {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_type,
                _ => return Some(t),
            }
        }
        None
    }

    /// (member type id, bit offset) of each member of a struct or union.
    fn members(&self, t: Type) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        (0..t.vlen()).filter_map(move |i| {
            let at = t.extra + 12 * i;
            let name = u32_at(self.types_data, at)?;
            let ty = u32_at(self.types_data, at + 4)?;
            let offset = u32_at(self.types_data, at + 8)?;
            // With kind_flag, the top 8 bits are a bitfield size.
            let bits = if t.kind_flag() {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            Some((name, ty, bits))
        })
    }

    /// Bit offset and type of member `name` of `t`, looking into anonymous struct and
    /// union members (where `task_struct` keeps fields under some configurations).
    fn member(&self, t: Type, name: &[u8], depth: u32) -> Option<(u32, Type)> {
        if depth > 8 {
            return None;
        }
        for (name_off, ty, bits) in self.members(t) {
            if name_off != 0 && self.name(name_off) == name {
                return Some((bits, self.resolve(ty)?));
            }
            if name_off == 0
                && let Some(inner) = self.resolve(ty)
                && matches!(inner.kind(), STRUCT | UNION)
                && let Some((b, found)) = self.member(inner, name, depth + 1)
            {
                return Some((bits + b, found));
            }
        }
        None
    }
}

/// Finds the offsets in a BTF blob.
///
/// The task fields are required (an error says which is missing); the perf event
/// fields are not: without them the program reads the count through a helper.
pub fn task_offsets(data: &[u8]) -> Result<KernelOffsets, String> {
    let btf = Btf::parse(data)?;
    // One walk over the types finds the three structs and the function.
    const STRUCTS: [&[u8]; 3] = [b"task_struct", b"bpf_perf_event_data_kern", b"perf_event"];
    const WANTED: [(u32, &[u8]); 4] = [
        (STRUCT, STRUCTS[0]),
        (STRUCT, STRUCTS[1]),
        (STRUCT, STRUCTS[2]),
        (FUNC, b"bpf_rdonly_cast"),
    ];
    let mut found: [Option<(u32, Type)>; 3] = [None; 3];
    let mut rdonly_cast_func = 0;
    for (id, i) in btf.named(&WANTED) {
        match found.get_mut(i) {
            Some(slot @ None) => *slot = btf.get(id).map(|t| (id, t)),
            None if rdonly_cast_func == 0 => rdonly_cast_func = id,
            _ => {}
        }
        if rdonly_cast_func != 0 && found.iter().all(Option::is_some) {
            break;
        }
    }
    let field = |strukt: usize, name: &str, want: fn(Type) -> bool| -> Result<u32, String> {
        let strukt_name = String::from_utf8_lossy(STRUCTS[strukt]);
        let (_, t) = found[strukt].ok_or_else(|| format!("no struct {strukt_name}"))?;
        let (bits, ty) = btf
            .member(t, name.as_bytes(), 0)
            .ok_or_else(|| format!("struct {strukt_name} has no member {name}"))?;
        if bits % 8 != 0 || !want(ty) {
            return Err(format!(
                "{strukt_name}.{name} is not the field expected (bit offset {bits}, kind {})",
                ty.kind()
            ));
        }
        Ok(bits / 8)
    };
    let eight_bytes = |t: Type| matches!(t.kind(), INT | STRUCT) && t.size_type == 8;
    let (ctx_event, event_count) = match (
        field(1, "event", |t| t.kind() == PTR),
        field(2, "count", eight_bytes),
    ) {
        (Ok(e), Ok(c)) => (e, c),
        _ => (0, 0),
    };
    Ok(KernelOffsets {
        group_leader: field(0, "group_leader", |t| t.kind() == PTR)?,
        start_time: field(0, "start_time", |t| {
            matches!(t.kind(), INT | ENUM | ENUM64) && t.size_type == 8
        })?,
        ctx_event,
        event_count,
        rdonly_cast_func,
        perf_event_type: found[2].map_or(0, |(id, _)| id),
        task_flags: field(0, "flags", |t| t.kind() == INT && t.size_type == 4).unwrap_or(0),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF blobs for tests.
    #[derive(Default)]
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub fn new() -> Self {
            Self {
                strings: vec![0],
                next_id: 1,
                ..Self::default()
            }
        }
        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn words(&mut self, w: &[u32]) {
            for x in w {
                self.types.extend_from_slice(&x.to_ne_bytes());
            }
        }
        /// Adds a type with raw trailing words; returns its id.
        pub fn ty(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            flag: bool,
            st: u32,
            extra: &[u32],
        ) -> u32 {
            let name = self.str(name);
            let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
            self.words(&[name, info, st]);
            self.words(extra);
            self.next_id += 1;
            self.next_id - 1
        }
        /// A struct (or union) with (name, type, bit offset) members.
        pub fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
            flag: bool,
        ) -> u32 {
            let mut extra = Vec::new();
            for (n, t, off) in members {
                extra.extend([self.str(n), *t, *off]);
            }
            self.ty(name, kind, members.len() as u32, flag, size, &extra)
        }
        pub fn finish(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_ne_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_ne_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A `task_struct` shaped like the kernel's: start_time inside an anonymous
    /// struct (as with `randomized_struct_fields_start`), types of every trailing-data
    /// shape before it, and a bitfield struct (kind_flag offsets).
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.ty("long long unsigned int", INT, 0, false, 8, &[64]);
        let u64_ = b.ty("u64", TYPEDEF, 0, false, int, &[]);
        b.ty("e", ENUM, 2, false, 4, &[1, 0, 1, 1]);
        b.ty("", FUNC_PROTO, 1, false, 0, &[0, int]);
        b.ty("arr", ARRAY, 0, false, 0, &[int, int, 4]);
        b.ty("v", VAR, 0, false, int, &[1]);
        b.ty("e64", ENUM64, 1, false, 8, &[1, 0, 0]);
        b.ty("tag", DECL_TAG, 0, false, int, &[0]);
        b.composite(
            STRUCT,
            "bits",
            4,
            &[("a", int, 3 << 24), ("b", int, (5 << 24) | 3)],
            true,
        );
        b.ty("task_struct", FWD, 0, false, 0, &[]);
        // The pointer refers to task_struct (id 14), declared below.
        let ptr = b.ty("", PTR, 0, false, 14, &[]);
        let konst = b.ty("", CONST, 0, false, ptr, &[]);
        let anon = b.composite(
            STRUCT,
            "",
            16,
            &[("pid", int, 0), ("start_time", u64_, 64)],
            false,
        );
        let task = b.composite(
            STRUCT,
            "task_struct",
            4096,
            &[
                ("state", int, 0),
                ("flags", 23, 64),
                ("", anon, 512),
                ("group_leader", konst, 2048),
            ],
            false,
        );
        assert_eq!(task, 14);
        // The perf event structs: `count` a one-word struct behind a typedef (as
        // `local64_t`), the context's `event` a pointer.
        let word = b.composite(STRUCT, "", 8, &[("a", int, 0)], false);
        let local64 = b.ty("local64_t", TYPEDEF, 0, false, word, &[]);
        b.composite(
            STRUCT,
            "perf_event",
            1024,
            &[("event_entry", int, 0), ("count", local64, 8 * 320)],
            false,
        );
        let event_ptr = b.ty("", PTR, 0, false, int, &[]);
        b.composite(
            STRUCT,
            "bpf_perf_event_data_kern",
            24,
            &[
                ("regs", event_ptr, 0),
                ("data", event_ptr, 64),
                ("event", event_ptr, 128),
            ],
            false,
        );
        // Kernel functions: another one first, then the one the program calls
        // (linkage 1, global, in the FUNC's vlen), id 22.
        let proto = b.ty("", FUNC_PROTO, 1, false, int, &[0, int]);
        b.ty("bpf_cast_to_kern_ctx", FUNC, 1, false, proto, &[]);
        assert_eq!(b.ty("bpf_rdonly_cast", FUNC, 1, false, proto, &[]), 22);
        // `task_struct`'s flags, a 4-byte int.
        assert_eq!(b.ty("unsigned int", INT, 0, false, 4, &[32]), 23);
        b.finish()
    }

    #[test]
    fn finds_fields_through_anonymous_members_and_qualifiers() {
        let got = task_offsets(&sample()).unwrap();
        assert_eq!(
            got,
            KernelOffsets {
                group_leader: 256,
                start_time: 72,
                ctx_event: 16,
                event_count: 320,
                rdonly_cast_func: 22,
                perf_event_type: 17,
                task_flags: 8,
            }
        );
    }

    #[test]
    fn missing_perf_event_fields_leave_the_helper_not_an_error() {
        let mut b = Builder::new();
        let int = b.ty("long long unsigned int", INT, 0, false, 8, &[64]);
        let ptr = b.ty("", PTR, 0, false, int, &[]);
        b.composite(
            STRUCT,
            "task_struct",
            16,
            &[("group_leader", ptr, 0), ("start_time", int, 64)],
            false,
        );
        // `count` of the wrong size: unusable, so neither offset is given.
        let small = b.ty("int", INT, 0, false, 4, &[32]);
        b.composite(STRUCT, "perf_event", 8, &[("count", small, 0)], false);
        b.composite(
            STRUCT,
            "bpf_perf_event_data_kern",
            24,
            &[("event", ptr, 128)],
            false,
        );
        let got = task_offsets(&b.finish()).unwrap();
        assert_eq!((got.group_leader, got.start_time), (0, 8));
        assert_eq!((got.ctx_event, got.event_count), (0, 0));
        assert_eq!(got.rdonly_cast_func, 0, "no such function");
    }

    #[test]
    fn errors_name_the_problem() {
        let mut bad = sample();
        bad[0] ^= 0xff;
        assert!(task_offsets(&bad).unwrap_err().contains("magic"));
        let data = sample();
        assert!(
            task_offsets(&data[..30])
                .unwrap_err()
                .contains("past the end")
        );
        assert!(task_offsets(&data[..10]).unwrap_err().contains("truncated"));

        let mut b = Builder::new();
        let int = b.ty("int", INT, 0, false, 4, &[32]);
        b.composite(STRUCT, "task_struct", 8, &[("start_time", int, 0)], false);
        let e = task_offsets(&b.finish()).unwrap_err();
        assert!(e.contains("no member group_leader"), "{e}");

        let mut b = Builder::new();
        let int = b.ty("int", INT, 0, false, 4, &[32]);
        let ptr = b.ty("", PTR, 0, false, int, &[]);
        b.composite(
            STRUCT,
            "task_struct",
            8,
            &[("group_leader", ptr, 0), ("start_time", int, 64)],
            false,
        );
        let e = task_offsets(&b.finish()).unwrap_err();
        assert!(e.contains("start_time is not the field expected"), "{e}");

        let mut b = Builder::new();
        b.ty("x", 31, 0, false, 0, &[]);
        assert!(task_offsets(&b.finish()).unwrap_err().contains("unknown"));
    }

    #[test]
    fn hostile_blobs_do_not_panic() {
        let data = sample();
        for cut in 0..data.len() {
            let _ = task_offsets(&data[..cut]);
        }
        for i in 0..data.len() {
            let mut d = data.clone();
            d[i] = d[i].wrapping_add(0x55);
            let _ = task_offsets(&d);
        }
    }
}
