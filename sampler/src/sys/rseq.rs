//! The calling thread's restartable-sequence area (`rseq(2)`, Linux 4.18+).
//!
//! A restartable sequence is a short stretch of code that the kernel restarts at an
//! abort address, instead of resuming it, when the thread is preempted, migrated or
//! signalled inside it. The user-page counter reads use one (see
//! `kernel::userpage`): the counter index and the counter are read on one CPU with
//! nothing in between, so a read can never use one CPU's index on another CPU's PMU.
//!
//! The kernel allows one area per thread. glibc 2.35+ registers its own for every
//! thread and says where (`__rseq_offset` from the thread pointer, `__rseq_size`);
//! sampler uses that one when it is there, and registers its own otherwise (musl, or
//! glibc with `glibc.pthread.rseq=0`), unregistering it when the [`Rseq`] is dropped.

use std::{
    io,
    marker::PhantomData,
    ptr::{self, NonNull},
};

/// The signature that must precede every abort address. glibc registers its area with
/// the same values (`RSEQ_SIG` of `sysdeps/unix/sysv/linux/*/bits/rseq.h`).
#[cfg(target_arch = "x86_64")]
pub const SIGNATURE: u32 = 0x5305_3053;
/// `brk #0x45e0`, as glibc and the kernel's selftests use on arm64.
#[cfg(target_arch = "aarch64")]
pub const SIGNATURE: u32 = 0xd428_bc00;

/// `struct rseq` of `include/uapi/linux/rseq.h`: the original 32-byte ABI, which every
/// kernel with rseq accepts.
#[repr(C, align(32))]
#[derive(Debug, Default)]
pub struct RseqArea {
    pub cpu_id_start: u32,
    pub cpu_id: u32,
    pub rseq_cs: u64,
    pub flags: u32,
    pub node_id: u32,
    pub mm_cid: u32,
}

const _: () = assert!(size_of::<RseqArea>() == 32);

/// Byte offsets in the area, for the critical sections' assembly.
pub const CPU_ID_OFFSET: usize = 4;
pub const RSEQ_CS_OFFSET: usize = 8;

/// `cpu_id` before registration, and after a failed one.
const CPU_ID_UNREGISTERED: u32 = u32::MAX;

/// `RSEQ_FLAG_UNREGISTER`.
const FLAG_UNREGISTER: libc::c_int = 1;

/// The calling thread's rseq area; not `Send`: it is valid on its own thread only.
pub struct Rseq {
    area: NonNull<RseqArea>,
    /// Our own registration, unregistered on drop; `None` for the C library's.
    owned: Option<Box<RseqArea>>,
    _thread: PhantomData<*const ()>,
}

impl Rseq {
    /// The thread's area: the C library's where it registered one, else one sampler
    /// registers. The error says why there is none (a kernel without rseq, or an area
    /// registered by someone who does not say where).
    pub fn current() -> io::Result<Self> {
        if let Some(area) = libc_area() {
            return Ok(Self {
                area,
                owned: None,
                _thread: PhantomData,
            });
        }
        let mut own = Box::new(RseqArea {
            cpu_id: CPU_ID_UNREGISTERED,
            ..RseqArea::default()
        });
        let area = NonNull::from(own.as_mut());
        // SAFETY: `area` is a 32-byte aligned, 32-byte `struct rseq` that lives until
        // `Drop` unregisters it (the Box is kept in `owned`); the kernel writes to it
        // while this thread runs. Registration is per thread, and `Rseq` is not Send.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_rseq,
                area.as_ptr(),
                size_of::<RseqArea>() as u32,
                0,
                SIGNATURE,
            )
        };
        if ret != 0 {
            let e = io::Error::last_os_error();
            let why = match e.raw_os_error() {
                Some(libc::ENOSYS) => "this kernel has no rseq (added in 4.18)".to_owned(),
                Some(libc::EBUSY) => {
                    "this thread's rseq area was registered by another library, which does \
                     not say where"
                        .to_owned()
                }
                _ => format!("registering an rseq area failed: {e}"),
            };
            return Err(io::Error::new(e.kind(), why));
        }
        Ok(Self {
            area,
            owned: Some(own),
            _thread: PhantomData,
        })
    }

    /// The area, for a critical section's assembly.
    pub fn area(&self) -> *const RseqArea {
        self.area.as_ptr()
    }

    /// The CPU this thread runs on, as the kernel keeps it in the area.
    pub fn cpu_id(&self) -> u32 {
        // SAFETY: the area is registered for this thread (not Send) and lives as long
        // as `self`; the kernel updates the field, hence the volatile read.
        unsafe { ptr::read_volatile(&raw const (*self.area.as_ptr()).cpu_id) }
    }
}

impl Drop for Rseq {
    fn drop(&mut self) {
        if let Some(own) = &self.owned {
            // SAFETY: unregisters exactly the area registered in `current`, on the same
            // thread (Rseq is not Send), before its memory is freed.
            unsafe {
                libc::syscall(
                    libc::SYS_rseq,
                    ptr::from_ref::<RseqArea>(own),
                    size_of::<RseqArea>() as u32,
                    FLAG_UNREGISTER,
                    SIGNATURE,
                );
            }
        }
    }
}

/// glibc's area for this thread: the thread pointer plus `__rseq_offset`, when
/// `__rseq_size` says it registered one (glibc 2.35+).
#[cfg(target_env = "gnu")]
fn libc_area() -> Option<NonNull<RseqArea>> {
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names only looks symbols up.
    let (size, offset) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()),
            libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()),
        )
    };
    if size.is_null() || offset.is_null() {
        return None;
    }
    // SAFETY: glibc defines `const unsigned int __rseq_size` and `const ptrdiff_t
    // __rseq_offset`, set before any user code runs and never changed after.
    let (size, offset) = unsafe { (*size.cast::<u32>(), *offset.cast::<isize>()) };
    if size < 16 {
        // 0: glibc did not register (the tunable is off, or the kernel said no). The
        // critical sections need the fields up to `rseq_cs` (16 bytes).
        return None;
    }
    NonNull::new(
        thread_pointer()
            .wrapping_byte_offset(offset)
            .cast_mut()
            .cast(),
    )
}

#[cfg(not(target_env = "gnu"))]
fn libc_area() -> Option<NonNull<RseqArea>> {
    // musl registers no area (as of 1.2.5), and a static binary has no dlsym.
    None
}

/// The thread pointer (`__builtin_thread_pointer()`), from which glibc's area lies
/// at `__rseq_offset`.
#[cfg(target_env = "gnu")]
fn thread_pointer() -> *const u8 {
    let tp: *const u8;
    // SAFETY: reads the thread pointer register; no memory is touched but the TCB's
    // self pointer at fs:0 on x86_64, which the C library keeps for this purpose.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        core::arch::asm!("mov {}, qword ptr fs:0", out(reg) tp, options(nostack, readonly, preserves_flags));
        #[cfg(target_arch = "aarch64")]
        core::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags));
    }
    tp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_area_names_the_cpu_this_thread_runs_on() {
        std::thread::spawn(|| {
            let rseq = Rseq::current().expect("rseq on Linux 4.18+");
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            for cpu in 0..cpus as u32 {
                if crate::sys::pin_to_cpu(0, cpu).is_ok() {
                    // The kernel updates cpu_id when the thread returns to user space
                    // on its new CPU.
                    std::thread::yield_now();
                    assert_eq!(rseq.cpu_id(), cpu);
                    assert_eq!(crate::sys::current_cpu(), Some(cpu));
                }
            }
        })
        .join()
        .unwrap();
    }
}
