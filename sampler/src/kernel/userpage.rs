//! Reading a counter from user space through its mmapped `perf_event_mmap_page`:
//! the seqlock loop, `rdpmc` on x86 and `mrs` of the PMU registers on arm64, the
//! `pmc_width` sign extension and the `time_*` extrapolation of enabled/running, as
//! libperf's `perf_mmap__read_self` does. Falls back to `read()` whenever the page
//! says user reads are not allowed for this event here (`index == 0`, no
//! `cap_user_rdpmc`), which is always the case for software events.
//!
//! The arithmetic is a pure function ([`decode`]) tested against recorded vectors; the
//! instructions run only after the page allowed them (an arm64 `mrs` without access
//! raises SIGILL, an x86 `rdpmc` without it SIGSEGV).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    ptr::{self, NonNull},
    sync::atomic::{Ordering, compiler_fence},
};

use serde::Serialize;

use crate::{
    kernel::counter,
    sys::{PerfSys, rseq::Rseq},
};

/// `struct perf_event_mmap_page` of `include/uapi/linux/perf_event.h` (the part before
/// the ring buffer's data area).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PerfEventMmapPage {
    pub version: u32,
    pub compat_version: u32,
    pub lock: u32,
    pub index: u32,
    pub offset: i64,
    pub time_enabled: u64,
    pub time_running: u64,
    pub capabilities: u64,
    pub pmc_width: u16,
    pub time_shift: u16,
    pub time_mult: u32,
    pub time_offset: u64,
    pub time_zero: u64,
    pub size: u32,
    pub reserved_1: u32,
    pub time_cycles: u64,
    pub time_mask: u64,
    pub reserved: [u8; 928],
    pub data_head: u64,
    pub data_tail: u64,
    pub data_offset: u64,
    pub data_size: u64,
    pub aux_head: u64,
    pub aux_tail: u64,
    pub aux_offset: u64,
    pub aux_size: u64,
}

const _: () = assert!(size_of::<PerfEventMmapPage>() == 1088);

/// `capabilities` bits.
pub mod cap {
    pub const USER_RDPMC: u64 = 1 << 2;
    pub const USER_TIME: u64 = 1 << 3;
    pub const USER_TIME_SHORT: u64 = 1 << 5;
}

/// The page fields one seqlock pass reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageFields {
    pub index: u32,
    pub offset: i64,
    pub time_enabled: u64,
    pub time_running: u64,
    pub capabilities: u64,
    pub pmc_width: u16,
    pub time_shift: u16,
    pub time_mult: u32,
    pub time_offset: u64,
    pub time_cycles: u64,
    pub time_mask: u64,
}

impl PageFields {
    /// User space may read this event's counter here.
    pub fn readable(&self) -> bool {
        self.index != 0 && self.capabilities & cap::USER_RDPMC != 0
    }
}

/// Counts as `read()` gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub value: u64,
    pub enabled: u64,
    pub running: u64,
}

/// How a value was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// x86 `rdpmc` through the user page.
    Rdpmc,
    /// arm64 `mrs` of `PMCCNTR_EL0`/`PMEVCNTR<n>_EL0` through the user page.
    Mrs,
    /// The `read()` system call.
    Read,
}

/// The value of a page whose counter read `raw_counter` (and the timestamp counter
/// `raw_timestamp`) in one seqlock pass; `None` when user reads are not allowed.
pub fn decode(f: &PageFields, raw_counter: u64, raw_timestamp: u64) -> Option<Counts> {
    if !f.readable() {
        return None;
    }
    let width = u32::from(f.pmc_width).clamp(1, 64);
    let shift = 64 - width;
    let pmc = ((raw_counter << shift) as i64) >> shift;
    let value = (f.offset as u64).wrapping_add(pmc as u64);
    let (mut enabled, mut running) = (f.time_enabled, f.time_running);
    if f.capabilities & cap::USER_TIME != 0 && enabled != running {
        let mut cyc = raw_timestamp;
        if f.capabilities & cap::USER_TIME_SHORT != 0 {
            cyc = f
                .time_cycles
                .wrapping_add(cyc.wrapping_sub(f.time_cycles) & f.time_mask);
        }
        let scaled = (u128::from(cyc) * u128::from(f.time_mult)) >> f.time_shift.min(127);
        let delta = f.time_offset.wrapping_add(scaled as u64);
        enabled = enabled.wrapping_add(delta);
        running = running.wrapping_add(delta);
    }
    Some(Counts {
        value,
        enabled,
        running,
    })
}

/// One volatile read of a field of a [`UserPage`].
macro_rules! field {
    ($page:expr, $f:ident) => {
        // SAFETY: the mapping lives as long as the UserPage and covers the whole struct
        // (one page >= 1088 bytes); `&raw const` projects without a reference, and the
        // kernel may change the field at any time, hence the volatile read.
        unsafe { ptr::read_volatile(&raw const (*$page.page.as_ptr()).$f) }
    };
}

/// A perf event's mmapped user page (one page, read-only).
pub struct UserPage {
    page: NonNull<PerfEventMmapPage>,
    len: usize,
}

// SAFETY: the mapping is read-only shared memory that the kernel updates; reading it
// from another thread is what the seqlock protocol is for.
unsafe impl Send for UserPage {}

impl UserPage {
    /// Maps the first page of `event`.
    pub fn map(event: BorrowedFd<'_>) -> io::Result<Self> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let len = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("no page size"))?;
        // SAFETY: a fresh shared read-only mapping of `len` bytes of a perf event fd;
        // the kernel validates the fd and length.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                event.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = NonNull::new(p.cast::<PerfEventMmapPage>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { page, len })
    }

    /// The page's fields, each read once (volatile); consistent only inside a seqlock
    /// pass.
    fn fields(&self) -> PageFields {
        PageFields {
            index: field!(self, index),
            offset: field!(self, offset),
            time_enabled: field!(self, time_enabled),
            time_running: field!(self, time_running),
            capabilities: field!(self, capabilities),
            pmc_width: field!(self, pmc_width),
            time_shift: field!(self, time_shift),
            time_mult: field!(self, time_mult),
            time_offset: field!(self, time_offset),
            time_cycles: field!(self, time_cycles),
            time_mask: field!(self, time_mask),
        }
    }

    /// The fields of one consistent seqlock pass, and the counter and timestamp read
    /// inside it (only where allowed). `None` after too many torn passes.
    pub fn snapshot(&self) -> Option<(PageFields, u64, u64)> {
        for _ in 0..1000 {
            let seq = field!(self, lock);
            compiler_fence(Ordering::SeqCst);
            let f = self.fields();
            let (counter, timestamp) = if f.readable() {
                // SAFETY: the page allows user counter reads for this event on this
                // thread right now (index != 0, cap_user_rdpmc), so the instruction
                // does not fault; a stale index is caught by the sequence check.
                unsafe { (arch::read_counter(f.index), arch::read_timestamp()) }
            } else {
                (0, 0)
            };
            compiler_fence(Ordering::SeqCst);
            if field!(self, lock) == seq {
                return Some((f, counter, timestamp));
            }
        }
        None
    }
}

impl UserPage {
    /// One read through the page with the index and the counter read inside a
    /// restartable sequence: the sequence checks that the thread is still on the CPU
    /// `rseq` named when it began, reads the index, and reads that counter, and the
    /// kernel restarts it at its abort path if the thread is preempted, migrated or
    /// signalled in between. So an index is never used on another CPU (on a
    /// heterogeneous system, another PMU: a wrong value, or SIGILL where that CPU
    /// grants no user access). The seqlock stays around it: an interrupt (a PMU
    /// overflow, multiplexing's rotation) does not restart a sequence but does move
    /// the counter, and bumps the page's lock. `None` after too many torn passes.
    pub fn read_rseq(&self, rseq: &Rseq) -> Option<RseqRead> {
        for _ in 0..1000 {
            let seq = field!(self, lock);
            compiler_fence(Ordering::SeqCst);
            let f = self.fields();
            let read = if f.readable() {
                let cpu = rseq.cpu_id();
                // SAFETY: `rseq` is this thread's registered area (not Send) and the
                // index pointer is into this live mapping. The page allows user reads
                // of this event (cap_user_rdpmc); the sequence reads the counter only
                // where it found a non-zero index on the CPU it checked, with no
                // preemption or migration in between (the kernel restarts it at the
                // abort path otherwise), i.e. while the event sits on that counter of
                // this CPU with user access on.
                let (status, index, counter) = unsafe {
                    arch::rseq_read(rseq.area(), &raw const (*self.page.as_ptr()).index, cpu)
                };
                match status {
                    arch::RSEQ_OK if index == f.index => {
                        // SAFETY: reading the timestamp counter needs no permission.
                        RseqRead::Read(f, counter, unsafe { arch::read_timestamp() })
                    }
                    // The index moved between the pass and the sequence: the lock
                    // has moved too, and the pass is retried below.
                    arch::RSEQ_OK => RseqRead::Zero,
                    arch::RSEQ_ABORT => RseqRead::Abort,
                    _ => {
                        // Index 0 in the sequence (or one no register has).
                        debug_assert_eq!(status, arch::RSEQ_ZERO);
                        RseqRead::Zero
                    }
                }
            } else {
                RseqRead::Zero
            };
            compiler_fence(Ordering::SeqCst);
            if field!(self, lock) == seq {
                return Some(read);
            }
        }
        None
    }
}

/// How a user-page read in a restartable sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RseqRead {
    /// A consistent pass's fields, and the counter and timestamp read in it.
    Read(PageFields, u64, u64),
    /// The kernel restarted the sequence (preemption, migration, a signal), or the
    /// thread was no longer on the CPU the sequence began on: `read()` instead.
    Abort,
    /// The page names no counter for this event here (index 0: a software event, the
    /// event is not on a counter of this CPU, or user access is off): `read()`
    /// instead.
    Zero,
}

/// How many user-page reads of an event ended which way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReadStats {
    /// Read from the page's counter, in one restartable sequence.
    pub success: u64,
    /// Restarted by the kernel (preempted, migrated, signalled) or begun on another
    /// CPU: read with `read()`.
    pub abort: u64,
    /// Index 0: no counter to read from user space here; read with `read()`.
    pub zero: u64,
}

impl ReadStats {
    pub fn total(&self) -> u64 {
        self.success + self.abort + self.zero
    }

    pub fn add(&mut self, other: &ReadStats) {
        self.success += other.success;
        self.abort += other.abort;
        self.zero += other.zero;
    }
}

impl Drop for UserPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, once.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.len) };
    }
}

/// The counter-read instruction of this architecture, or `None` where sampler has none.
pub fn page_method() -> Option<Method> {
    arch::METHOD
}

/// Reads `event` through its page when allowed, else with `read()` (of a single,
/// non-group event opened with [`crate::events::plan::READ_FORMAT`]).
pub fn read_event(
    sys: &dyn PerfSys,
    event: BorrowedFd<'_>,
    page: Option<&UserPage>,
) -> io::Result<(Counts, Method)> {
    if let (Some(page), Some(method)) = (page, page_method())
        && let Some((fields, counter, timestamp)) = page.snapshot()
        && let Some(counts) = decode(&fields, counter, timestamp)
    {
        return Ok((counts, method));
    }
    Ok((read_syscall(sys, event)?, Method::Read))
}

/// Reads `event` through its page in a restartable sequence ([`UserPage::read_rseq`]),
/// counting the outcome in `stats`; with `read()` when the page names no counter here
/// or the sequence was restarted.
pub fn read_event_rseq(
    sys: &dyn PerfSys,
    event: BorrowedFd<'_>,
    page: &UserPage,
    rseq: &Rseq,
    stats: &mut ReadStats,
) -> io::Result<(Counts, Method)> {
    if let Some(method) = page_method() {
        match page.read_rseq(rseq) {
            Some(RseqRead::Read(fields, counter, timestamp)) => {
                if let Some(counts) = decode(&fields, counter, timestamp) {
                    stats.success += 1;
                    return Ok((counts, method));
                }
                stats.zero += 1;
            }
            Some(RseqRead::Abort) => stats.abort += 1,
            Some(RseqRead::Zero) | None => stats.zero += 1,
        }
    }
    Ok((read_syscall(sys, event)?, Method::Read))
}

/// `read()` of a single event opened with the group `READ_FORMAT`.
pub fn read_syscall(sys: &dyn PerfSys, event: BorrowedFd<'_>) -> io::Result<Counts> {
    let mut buf = vec![0u8; counter::group_read_size(1)];
    let n = sys.read(event.as_fd(), &mut buf)?;
    let r = counter::parse_group_read(&buf[..n])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short read()"))?;
    Ok(Counts {
        value: r.values.first().map_or(0, |v| v.1),
        enabled: r.enabled,
        running: r.running,
    })
}

#[cfg(target_arch = "x86_64")]
mod arch {
    pub const METHOD: Option<super::Method> = Some(super::Method::Rdpmc);

    /// `rdpmc` of the counter the page's `index` names (`index - 1`).
    ///
    /// # Safety
    /// The event's page must allow user reads (index != 0, cap_user_rdpmc) now.
    pub unsafe fn read_counter(index: u32) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: the caller guarantees rdpmc is permitted for this counter.
        unsafe {
            core::arch::asm!("rdpmc", in("ecx") index - 1, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags));
        }
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// How [`rseq_read`] ended.
    pub const RSEQ_OK: u32 = 0;
    pub const RSEQ_ABORT: u32 = 1;
    pub const RSEQ_ZERO: u32 = 2;

    /// In one restartable sequence: checks that `area`'s `cpu_id` is still `cpu`,
    /// loads `*index`, and, when it is not 0, `rdpmc` of counter `index - 1`. Returns
    /// `(RSEQ_OK, index, counter)`, `(RSEQ_ZERO, 0, _)` or `(RSEQ_ABORT, _, _)` (the
    /// kernel restarted the sequence, or the thread was not on `cpu`).
    ///
    /// The descriptor (`struct rseq_cs`: version, flags, start, post-commit offset,
    /// abort) is static, in a writable section of its own; the abort address is
    /// preceded by the signature, inside a `ud1` (the kernel's selftests' encoding),
    /// so that nothing ever executes it.
    ///
    /// # Safety
    /// `area` is this thread's registered rseq area; `index` points into a mapped
    /// user page of an event of this thread whose page allows user reads
    /// (`cap_user_rdpmc`).
    #[inline(never)]
    pub unsafe fn rseq_read(
        area: *const crate::sys::rseq::RseqArea,
        index: *const u32,
        cpu: u32,
    ) -> (u32, u32, u64) {
        let (status, idx, lo, hi): (u32, u64, u32, u32);
        // SAFETY: the caller's guarantees; the sequence writes only the area's
        // `rseq_cs` (as the rseq ABI asks) and reads `index` and the area.
        unsafe {
            core::arch::asm!(
                ".pushsection __sampler_rseq_cs, \"aw\"",
                ".balign 32",
                "7:",
                ".long 0, 0",
                ".quad 2f, 3f - 2f, 4f",
                ".popsection",
                "lea {t}, [rip + 7b]",
                "mov qword ptr [{area} + 8], {t}",
                "2:",
                "cmp dword ptr [{area} + 4], {cpu:e}",
                "jne 4f",
                "mov {idx:e}, dword ptr [{index}]",
                "test {idx:e}, {idx:e}",
                "jz 5f",
                "lea ecx, [{idx} - 1]",
                "rdpmc",
                "3:",
                "xor {st:e}, {st:e}",
                "jmp 6f",
                ".byte 0x0f, 0xb9, 0x3d",
                ".long 0x53053053",
                "4:",
                "mov {st:e}, 1",
                "jmp 6f",
                "5:",
                "mov {st:e}, 2",
                "6:",
                area = in(reg) area,
                index = in(reg) index,
                cpu = in(reg) cpu,
                t = out(reg) _,
                idx = out(reg) idx,
                st = out(reg) status,
                out("ecx") _,
                out("eax") lo,
                out("edx") hi,
                options(nostack),
            );
        }
        (status, idx as u32, (u64::from(hi) << 32) | u64::from(lo))
    }

    /// The TSC, the clock of the page's `time_*` fields on x86.
    ///
    /// # Safety
    /// None beyond the function's; `unsafe` to match the other architectures.
    pub unsafe fn read_timestamp() -> u64 {
        // SAFETY: rdtsc is always available to user space on Linux x86_64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
}

#[cfg(target_arch = "aarch64")]
mod arch {
    pub const METHOD: Option<super::Method> = Some(super::Method::Mrs);

    macro_rules! evcnt {
        ($($n:literal),*) => {
            /// `PMEVCNTR<n>_EL0` register names, by `n`, from the same list as the
            /// `mrs` arms below (checked against the architecture's numbering by a
            /// test: a widely copied C table has two entries swapped).
            #[cfg(test)]
            pub const EVCNT_NAMES: &[&str] = &[$(concat!("pmevcntr", $n, "_el0")),*];

            /// `mrs` of `PMEVCNTR<n>_EL0`.
            ///
            /// # Safety
            /// User access to that counter must be enabled for this event.
            unsafe fn read_evcnt(n: u32) -> u64 {
                let v: u64;
                match n {
                    $(
                        // SAFETY: the caller guarantees EL0 access to this counter.
                        $n => unsafe {
                            core::arch::asm!(concat!("mrs {}, pmevcntr", $n, "_el0"), out(reg) v,
                                options(nomem, nostack, preserves_flags))
                        },
                    )*
                    _ => return 0,
                }
                v
            }
        };
    }
    evcnt!(
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        25, 26, 27, 28, 29, 30
    );

    /// The page's `index` of the cycle counter: `PMCCNTR_EL0` (hardware index 31).
    pub const CYCLE_INDEX: u32 = 32;

    /// `mrs` of the counter the page's `index` names: 32 is `PMCCNTR_EL0`, the others
    /// `PMEVCNTR<index-1>_EL0`.
    ///
    /// # Safety
    /// The event's page must allow user reads (index != 0, cap_user_rdpmc) now.
    pub unsafe fn read_counter(index: u32) -> u64 {
        if index == CYCLE_INDEX {
            let v: u64;
            // SAFETY: the caller guarantees EL0 access to the cycle counter.
            unsafe {
                core::arch::asm!("mrs {}, pmccntr_el0", out(reg) v,
                    options(nomem, nostack, preserves_flags));
            }
            v
        } else {
            // SAFETY: forwarded from the caller.
            unsafe { read_evcnt(index - 1) }
        }
    }

    /// How [`rseq_read`] ended.
    pub const RSEQ_OK: u32 = 0;
    pub const RSEQ_ABORT: u32 = 1;
    pub const RSEQ_ZERO: u32 = 2;

    macro_rules! rseq_read_asm {
        ($($n:literal),*) => {
            /// In one restartable sequence: checks that `area`'s `cpu_id` is still
            /// `cpu`, loads `*index`, and, when it names a counter (1-31: event counter
            /// `index - 1` through a table of `mrs`, 32: the cycle counter), reads it.
            /// Returns `(RSEQ_OK, index, counter)`, `(RSEQ_ZERO, index, _)` (0, or an
            /// index no register has) or `(RSEQ_ABORT, _, _)` (the kernel restarted the
            /// sequence, or the thread was not on `cpu`).
            ///
            /// The descriptor (`struct rseq_cs`) is static, in a writable section of its
            /// own; the abort address is preceded by the signature (`brk #0x45e0`,
            /// never executed).
            ///
            /// # Safety
            /// `area` is this thread's registered rseq area; `index` points into a
            /// mapped user page of an event of this thread whose page allows user reads
            /// (`cap_user_rdpmc`).
            #[inline(never)]
            pub unsafe fn rseq_read(
                area: *const crate::sys::rseq::RseqArea,
                index: *const u32,
                cpu: u32,
            ) -> (u32, u32, u64) {
                let (status, idx, counter): (u32, u32, u64);
                // SAFETY: the caller's guarantees; the sequence writes only the area's
                // `rseq_cs` (as the rseq ABI asks) and reads `index` and the area.
                unsafe {
                    core::arch::asm!(
                        ".pushsection __sampler_rseq_cs, \"aw\"",
                        ".balign 32",
                        "7:",
                        ".long 0, 0",
                        ".quad 2f, 3f - 2f, 4f",
                        ".popsection",
                        "adrp {t}, 7b",
                        "add {t}, {t}, :lo12:7b",
                        "str {t}, [{area}, #8]",
                        "2:",
                        "ldr {t:w}, [{area}, #4]",
                        "cmp {t:w}, {cpu:w}",
                        "b.ne 4f",
                        "ldr {idx:w}, [{index}]",
                        "cbz {idx:w}, 5f",
                        "cmp {idx:w}, #32",
                        "b.eq 8f",
                        "b.hi 5f",
                        "adr {t}, 9f",
                        "sub {c:w}, {idx:w}, #1",
                        "add {t}, {t}, {c:w}, uxtw #3",
                        "br {t}",
                        "9:",
                        $(
                            concat!("mrs {c}, pmevcntr", $n, "_el0"),
                            "b 3f",
                        )*
                        "8:",
                        "mrs {c}, pmccntr_el0",
                        "3:",
                        "mov {st:w}, #0",
                        "b 6f",
                        ".inst 0xd428bc00",
                        "4:",
                        "mov {st:w}, #1",
                        "b 6f",
                        "5:",
                        "mov {st:w}, #2",
                        "6:",
                        area = in(reg) area,
                        index = in(reg) index,
                        cpu = in(reg) cpu,
                        t = out(reg) _,
                        idx = out(reg) idx,
                        c = out(reg) counter,
                        st = out(reg) status,
                        options(nostack),
                    );
                }
                (status, idx, counter)
            }
        };
    }
    rseq_read_asm!(
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        25, 26, 27, 28, 29, 30
    );

    /// `CNTVCT_EL0`, the clock of the page's `time_*` fields on arm64.
    ///
    /// # Safety
    /// None beyond the function's; `unsafe` to match the other architectures.
    pub unsafe fn read_timestamp() -> u64 {
        let v: u64;
        // SAFETY: the virtual counter is readable from EL0 on Linux.
        unsafe {
            core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v,
                options(nomem, nostack));
        }
        v
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod arch {
    pub const METHOD: Option<super::Method> = None;
    pub unsafe fn read_counter(_: u32) -> u64 {
        0
    }
    pub unsafe fn read_timestamp() -> u64 {
        0
    }
    pub const RSEQ_OK: u32 = 0;
    pub const RSEQ_ABORT: u32 = 1;
    pub const RSEQ_ZERO: u32 = 2;
    pub unsafe fn rseq_read(
        _: *const crate::sys::rseq::RseqArea,
        _: *const u32,
        _: u32,
    ) -> (u32, u32, u64) {
        (2, 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, mem::offset_of, path::Path};

    use super::*;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    use crate::sys::rseq::Rseq;

    fn vectors() -> Vec<(String, HashMap<String, String>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/userpage");
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains("layout") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap();
            let kv = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            out.push((name, kv));
        }
        assert_eq!(out.len(), 7);
        out
    }

    fn hex(kv: &HashMap<String, String>, k: &str) -> u64 {
        u64::from_str_radix(kv[k].trim_start_matches("0x"), 16).unwrap()
    }

    #[test]
    fn decodes_every_recorded_vector() {
        for (name, kv) in vectors() {
            let f = PageFields {
                index: kv["index"].parse().unwrap(),
                offset: hex(&kv, "offset_hex") as i64,
                time_enabled: kv["time_enabled"].parse().unwrap(),
                time_running: kv["time_running"].parse().unwrap(),
                capabilities: hex(&kv, "capabilities_hex"),
                pmc_width: kv["pmc_width"].parse().unwrap(),
                time_shift: kv["time_shift"].parse().unwrap(),
                time_mult: kv["time_mult"].parse().unwrap(),
                time_offset: hex(&kv, "time_offset_hex"),
                time_cycles: hex(&kv, "time_cycles_hex"),
                time_mask: hex(&kv, "time_mask_hex"),
            };
            assert_eq!(
                f.readable(),
                kv["cap_user_rdpmc"] == "1" && f.index != 0,
                "{name}"
            );
            let got = decode(
                &f,
                hex(&kv, "raw_counter_hex"),
                hex(&kv, "raw_timestamp_hex"),
            );
            if kv["expected_result"] == "ok" {
                let c = got.unwrap_or_else(|| panic!("{name}: unreadable"));
                assert_eq!(
                    c.value,
                    kv["expected_count"].parse::<u64>().unwrap(),
                    "{name}"
                );
                assert_eq!(
                    c.enabled,
                    kv["expected_enabled"].parse::<u64>().unwrap(),
                    "{name}"
                );
                assert_eq!(
                    c.running,
                    kv["expected_running"].parse::<u64>().unwrap(),
                    "{name}"
                );
                if let Some(scaled) = kv.get("expected_scaled_count_header_formula") {
                    assert_eq!(
                        counter::scaled(c.value, c.enabled, c.running),
                        Some(scaled.parse().unwrap()),
                        "{name}"
                    );
                }
            } else {
                assert_eq!(
                    kv["expected_result"],
                    "unavailable_fallback_to_read_syscall"
                );
                assert_eq!(got, None, "{name}");
            }
        }
    }

    #[test]
    fn layout_matches_the_kernel() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/userpage/perf_event_mmap_page_layout.txt");
        let text = std::fs::read_to_string(path).unwrap();
        let ours: HashMap<&str, (usize, usize)> = [
            ("version", (offset_of!(PerfEventMmapPage, version), 4)),
            (
                "compat_version",
                (offset_of!(PerfEventMmapPage, compat_version), 4),
            ),
            ("lock", (offset_of!(PerfEventMmapPage, lock), 4)),
            ("index", (offset_of!(PerfEventMmapPage, index), 4)),
            ("offset", (offset_of!(PerfEventMmapPage, offset), 8)),
            (
                "time_enabled",
                (offset_of!(PerfEventMmapPage, time_enabled), 8),
            ),
            (
                "time_running",
                (offset_of!(PerfEventMmapPage, time_running), 8),
            ),
            (
                "capabilities",
                (offset_of!(PerfEventMmapPage, capabilities), 8),
            ),
            ("pmc_width", (offset_of!(PerfEventMmapPage, pmc_width), 2)),
            ("time_shift", (offset_of!(PerfEventMmapPage, time_shift), 2)),
            ("time_mult", (offset_of!(PerfEventMmapPage, time_mult), 4)),
            (
                "time_offset",
                (offset_of!(PerfEventMmapPage, time_offset), 8),
            ),
            ("time_zero", (offset_of!(PerfEventMmapPage, time_zero), 8)),
            ("size", (offset_of!(PerfEventMmapPage, size), 4)),
            (
                "__reserved_1",
                (offset_of!(PerfEventMmapPage, reserved_1), 4),
            ),
            (
                "time_cycles",
                (offset_of!(PerfEventMmapPage, time_cycles), 8),
            ),
            ("time_mask", (offset_of!(PerfEventMmapPage, time_mask), 8)),
            ("__reserved", (offset_of!(PerfEventMmapPage, reserved), 928)),
            ("data_head", (offset_of!(PerfEventMmapPage, data_head), 8)),
            ("data_tail", (offset_of!(PerfEventMmapPage, data_tail), 8)),
            (
                "data_offset",
                (offset_of!(PerfEventMmapPage, data_offset), 8),
            ),
            ("data_size", (offset_of!(PerfEventMmapPage, data_size), 8)),
            ("aux_head", (offset_of!(PerfEventMmapPage, aux_head), 8)),
            ("aux_tail", (offset_of!(PerfEventMmapPage, aux_tail), 8)),
            ("aux_offset", (offset_of!(PerfEventMmapPage, aux_offset), 8)),
            ("aux_size", (offset_of!(PerfEventMmapPage, aux_size), 8)),
        ]
        .into_iter()
        .collect();
        let mut checked = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [field, offset, size] = parts[..] else {
                continue;
            };
            let (o, s) = ours[field];
            assert_eq!(
                (o, s),
                (offset.parse().unwrap(), size.parse().unwrap()),
                "{field}"
            );
            checked += 1;
        }
        assert_eq!(checked, ours.len());
        assert!(text.contains(&format!("# sizeof={}", size_of::<PerfEventMmapPage>())));
    }

    #[test]
    fn width_edge_cases() {
        let f = |width, offset: i64| PageFields {
            index: 1,
            offset,
            capabilities: cap::USER_RDPMC,
            pmc_width: width,
            ..PageFields::default()
        };
        // 64 bits: no extension; 32: the top bit is the sign; upper garbage ignored.
        assert_eq!(decode(&f(64, 0), u64::MAX, 0).unwrap().value, u64::MAX);
        assert_eq!(
            decode(&f(32, 10), 0xdead_beef_ffff_ffff, 0).unwrap().value,
            9
        );
        assert_eq!(
            decode(&f(32, 0), 0x7fff_ffff, 0).unwrap().value,
            0x7fff_ffff
        );
        // A nonsense width 0 is treated as 1 bit, never a shift overflow.
        assert!(decode(&f(0, 0), 1, 0).is_some());
        let mut no_cap = f(48, 0);
        no_cap.capabilities = 0;
        assert_eq!(decode(&no_cap, 1, 0), None);
    }

    /// The sequence's own paths, without a PMU: an index of 0 reads nothing, and a
    /// thread not on the CPU it names takes the abort path.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn rseq_sequence_reads_zero_and_aborts_off_its_cpu() {
        std::thread::spawn(|| {
            const CPU: u32 = 0;
            crate::sys::pin_to_cpu(0, CPU).unwrap();
            std::thread::yield_now();
            let rseq = Rseq::current().expect("rseq on Linux 4.18+");
            assert_eq!(rseq.cpu_id(), CPU);
            let zero = 0u32;
            let mut zeros = 0;
            for _ in 0..1000 {
                // SAFETY: `rseq` is this thread's area and the index is 0, so no
                // counter is read.
                let (status, index, _) = unsafe { arch::rseq_read(rseq.area(), &zero, CPU) };
                assert_ne!(status, arch::RSEQ_OK);
                if status == arch::RSEQ_ZERO {
                    assert_eq!(index, 0);
                    zeros += 1;
                }
            }
            assert!(
                zeros > 900,
                "{zeros} of 1000 reads of index 0 were not restarted"
            );
            let nonzero = 3u32;
            for other in [CPU + 1, u32::MAX] {
                // SAFETY: `rseq` is this thread's area and the CPU named is not the
                // thread's, so the sequence aborts before any counter is read.
                let (status, _, _) = unsafe { arch::rseq_read(rseq.area(), &nonzero, other) };
                assert_eq!(status, arch::RSEQ_ABORT, "on CPU {CPU}, not {other}");
            }
        })
        .join()
        .unwrap();
    }

    /// The kernel restarts a sequence in which the thread slept: the index is read
    /// from a page that userfaultfd holds back until another thread supplies it, so
    /// the load inside the sequence blocks, the thread is switched out, and on its
    /// way back to user space the kernel moves it to the abort address. It does so
    /// only when the descriptor is valid and the signature precedes that address
    /// (else it kills the process with SIGSEGV). The page is supplied only once the
    /// reader has been switched out (its voluntary switches went up): supplied
    /// sooner, the fault handler finds the page before it sleeps, nothing switches,
    /// and there is nothing to restart (seen once in a 6.12 guest).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn rseq_sequence_restarts_when_the_thread_sleeps_inside_it() {
        let held = HeldPage::new();
        let addr = held.addr;
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let rseq = Rseq::current().expect("rseq on Linux 4.18+");
            let tid = crate::sys::gettid();
            tx.send((tid, voluntary_switches(tid))).unwrap();
            let cpu = rseq.cpu_id();
            // SAFETY: this thread's area; the page is supplied with zeroes, so the
            // index read is 0 and no counter is read.
            let first = unsafe { arch::rseq_read(rseq.area(), addr as *const u32, cpu) };
            // SAFETY: as above; the page now holds zeroes.
            let again = unsafe { arch::rseq_read(rseq.area(), addr as *const u32, rseq.cpu_id()) };
            (first.0, again.0)
        });
        let (tid, before) = rx.recv().unwrap();
        held.wait_for_fault();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while voluntary_switches(tid) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the reader faulted on the held page but was not switched out in 10 s"
            );
            std::thread::yield_now();
        }
        held.supply();
        let (first, again) = reader.join().unwrap();
        assert_eq!(
            first,
            arch::RSEQ_ABORT,
            "a sequence that slept was not restarted"
        );
        assert_eq!(again, arch::RSEQ_ZERO, "the supplied page reads index 0");
    }

    /// How many times thread `tid` of this process gave up its CPU by sleeping
    /// (`voluntary_ctxt_switches` in its status).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn voluntary_switches(tid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no voluntary_ctxt_switches in the status of {tid}"))
    }

    /// An anonymous page registered with userfaultfd: a load from it blocks until
    /// [`HeldPage::supply`] copies a page of zeroes in.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    struct HeldPage {
        uffd: std::os::fd::OwnedFd,
        addr: usize,
        len: usize,
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    impl HeldPage {
        // include/uapi/linux/userfaultfd.h: _IOWR(0xAA, nr, struct), same on both.
        const UFFD_API: u64 = 0xAA;
        const UFFDIO_API: libc::Ioctl = 0xc018_aa3f_u32 as libc::Ioctl;
        const UFFDIO_REGISTER: libc::Ioctl = 0xc020_aa00_u32 as libc::Ioctl;
        const UFFDIO_COPY: libc::Ioctl = 0xc028_aa03_u32 as libc::Ioctl;
        const REGISTER_MODE_MISSING: u64 = 1;
        const USER_MODE_ONLY: libc::c_long = 1;

        fn new() -> Self {
            use std::os::fd::FromRawFd as _;
            // SAFETY: plain system calls on memory and descriptors this function owns.
            unsafe {
                // User-mode faults only: allowed without privileges since 5.11;
                // older kernels take the plain call as root.
                let mut fd = libc::syscall(
                    libc::SYS_userfaultfd,
                    libc::O_CLOEXEC as libc::c_long | Self::USER_MODE_ONLY,
                );
                if fd < 0 {
                    fd = libc::syscall(libc::SYS_userfaultfd, libc::c_long::from(libc::O_CLOEXEC));
                }
                assert!(fd >= 0, "userfaultfd: {}", io::Error::last_os_error());
                let uffd = std::os::fd::OwnedFd::from_raw_fd(fd as i32);
                let mut api = [Self::UFFD_API, 0, 0];
                assert_eq!(
                    libc::ioctl(fd as i32, Self::UFFDIO_API, api.as_mut_ptr()),
                    0,
                    "UFFDIO_API: {}",
                    io::Error::last_os_error()
                );
                let len = libc::sysconf(libc::_SC_PAGESIZE) as usize;
                let p = libc::mmap(
                    ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                let mut register = [p as u64, len as u64, Self::REGISTER_MODE_MISSING, 0];
                assert_eq!(
                    libc::ioctl(fd as i32, Self::UFFDIO_REGISTER, register.as_mut_ptr()),
                    0,
                    "UFFDIO_REGISTER: {}",
                    io::Error::last_os_error()
                );
                Self {
                    uffd,
                    addr: p as usize,
                    len,
                }
            }
        }

        /// Waits for a fault on the page.
        fn wait_for_fault(&self) {
            use std::os::fd::AsRawFd as _;
            let mut msg = [0u64; 4];
            // SAFETY: reads one 32-byte `struct uffd_msg` into `msg`.
            let n = unsafe { libc::read(self.uffd.as_raw_fd(), msg.as_mut_ptr().cast(), 32) };
            assert_eq!(n, 32, "uffd read: {}", io::Error::last_os_error());
            assert_eq!(msg[0] & 0xff, 0x12, "UFFD_EVENT_PAGEFAULT");
            assert_eq!(msg[2] as usize & !(self.len - 1), self.addr);
        }

        /// Supplies the page, a page of zeroes, and wakes the threads waiting on it.
        fn supply(&self) {
            use std::os::fd::AsRawFd as _;
            let zeroes = vec![0u8; self.len];
            let mut copy = [
                self.addr as u64,
                zeroes.as_ptr() as u64,
                self.len as u64,
                0,
                0,
            ];
            // SAFETY: a `struct uffdio_copy` that copies the page of zeroes in `zeroes`
            // into the registered page.
            let rc =
                unsafe { libc::ioctl(self.uffd.as_raw_fd(), Self::UFFDIO_COPY, copy.as_mut_ptr()) };
            assert_eq!(rc, 0, "UFFDIO_COPY: {}", io::Error::last_os_error());
        }
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    impl Drop for HeldPage {
        fn drop(&mut self) {
            // SAFETY: unmaps the page mapped in `new`, after every user has finished.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        }
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn evcnt_register_table_follows_the_numbering() {
        assert_eq!(arch::EVCNT_NAMES.len(), 31);
        for (n, name) in arch::EVCNT_NAMES.iter().enumerate() {
            assert_eq!(*name, format!("pmevcntr{n}_el0"));
        }
    }
}
