//! The user stack walked by the sample program itself (x86-64), in place of the
//! kernel's `bpf_get_stackid` walk, from the registers of a sample taken in 64-bit
//! user code, or those its task entered the kernel with (`user_stack_id`).
//!
//! The kernel's walk reads each frame record with two user reads, and at the
//! outermost frame it reads the null frame pointer there and takes a page fault:
//! about 700 ns on this VM of a walk's 1,000, at every sample. This walk reads a
//! window of the stack (1 KiB, within the record's page) with one helper call,
//! takes the records in it with plain loads, and stops before a null, falling or
//! misaligned frame pointer. The stacks are those the kernel records for the same
//! frames (`tests/functions.rs` compares the two); where a register holds something
//! other than a frame pointer (code built without them), the stack is the sampled
//! instruction alone where the kernel would follow it into other memory.
//!
//! A sample taken in user code has its stack recorded with 0 for the sampled
//! instruction, which its location holds anyway: the samples of one call path share
//! a stack, whatever instruction each landed on, and a CPU remembers the stacks it
//! recorded lately, so most samples find their id without a lookup in the map (a
//! bucket and an entry in megabytes of map, which by the next sample no cache
//! holds).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::bpf_probe_read_user as bpf_probe_read_user_raw,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use sampler_common::{FIRST_FRAME_MAX, MAX_STACK_DEPTH, USER_STACK_ID_BIT, UserStack};

use crate::count_location;

/// The user stacks the program walks itself (x86-64, see `walk_user_stack`), by
/// id (`USER_STACK_ID_BIT` and the hash of the frames); sized as STACKS.
#[map(name = "USER_STACKS")]
static USER_STACKS: HashMap<u32, UserStack> = HashMap::with_max_entries(1, 0);

/// Each CPU's walk in progress.
#[map(name = "USER_WALK")]
static USER_WALK: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(1, 0);

/// The bytes of user memory that one read takes for a walk, at most.
const WINDOW_BYTES: u64 = 1024;
/// The user page size on x86-64: a read that stays in one page cannot run past the
/// end of a mapping.
const PAGE: u64 = 4096;

/// Each CPU's window of user memory for its walk: one read brings the frame records
/// that lie close together (a helper read costs about 90 ns here, more than a
/// record's two loads from the window).
#[map(name = "USER_WINDOW")]
static USER_WINDOW: PerCpuArray<Window> = PerCpuArray::with_max_entries(1, 0);

/// A window of user memory, and the index of the frame record in it; and the
/// stacks this CPU recorded lately.
#[repr(C)]
struct Window {
    at: u64,
    words_at: [u64; WINDOW_BYTES as usize / 8],
    seen: [Seen; SEEN_SLOTS],
}

/// How many of the stacks it recorded a CPU remembers, by their hash.
const SEEN_SLOTS: usize = 64;

/// A stack that USER_STACKS holds under its id (a stack is never taken out of
/// it): its hash and length, as `UserStack` stores them.
#[repr(C)]
#[derive(Clone, Copy)]
struct Seen {
    hash: u64,
    len: u64,
}

/// Walks the frame pointers of the user stack from `ip`, `sp` and `bp` (the user's
/// registers), records the stack in USER_STACKS and gives its id, or a negative
/// errno (counted) when it could not be recorded.
///
/// The frames are those the kernel's walk (`perf_callchain_user`) records: the
/// sampled instruction, then the return address of each frame record (`[bp]` the
/// next record, `[bp + 8]` the return address), up to 127. Unlike it, this walk
/// stops where the next record is not above the one before (or the first not
/// within `FIRST_FRAME_MAX` above the stack pointer): so it ends at the outermost
/// frame's null pointer, where the kernel's reads it and takes a page fault (about
/// 700 ns on this VM, most of a walk), and it does not follow a register that holds
/// something other than a frame pointer (code built without them) into memory that
/// is not a stack: such a stack is the sampled instruction alone.
///
/// With `at_ip` 1 (a sample taken in user code, whose location's `ip` is `ip`) the
/// stack's innermost frame is recorded as 0, and user space takes the location's
/// `ip` in its place (see `USER_STACK_ID_BIT`): the samples of a loop, at many
/// instructions, then share one stack and its id, which this CPU remembers
/// (`Window::seen`).
///
/// A global function, which the verifier checks once for any registers, not at
/// each place and state the sample program calls it from.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn walk_user_stack(ip: u64, sp: u64, bp: u64, at_ip: u64) -> i32 {
    let (Some(walk), Some(window)) = (USER_WALK.get_ptr_mut(0), USER_WINDOW.get_ptr_mut(0)) else {
        return -12;
    };
    // SAFETY: per-CPU array slots; programs do not nest on one CPU.
    let (walk, window) = unsafe { (&mut *walk, &mut *window) };
    // The sampled instruction, or 0 in its place where the location holds it.
    let first = if at_ip != 0 { 0 } else { ip };
    walk.frames[0] = first;
    let mut hash = mix(HASH_SEED, first);
    let mut len: u32 = 1;
    let mut fp = if bp >= sp && bp - sp <= FIRST_FRAME_MAX {
        bp
    } else {
        0
    };
    let mut low = sp;
    // The window holds WINDOW_BYTES of user memory from `base` (none at first).
    let mut base = u64::MAX;
    while (len as usize) < MAX_STACK_DEPTH {
        if fp == 0 || fp < low || fp & 7 != 0 {
            break;
        }
        if fp < base || fp - base > WINDOW_BYTES - 16 {
            // The window that starts at this record, or ends where its page does
            // if that is nearer (the mapping may end there: the bytes below the
            // record on its page are mapped as it is); a record across two pages
            // ends it.
            let page_rest = PAGE - (fp & (PAGE - 1));
            base = if page_rest >= WINDOW_BYTES {
                fp
            } else if page_rest >= 16 {
                fp + page_rest - WINDOW_BYTES
            } else {
                fp + 16 - WINDOW_BYTES
            };
            // SAFETY: a helper read of user memory into the window; it fails on a
            // bad address.
            let read = unsafe {
                bpf_probe_read_user_raw(
                    window.words_at.as_mut_ptr().cast(),
                    WINDOW_BYTES as u32,
                    base as *const c_void,
                )
            };
            if read != 0 {
                break;
            }
        }
        // Through the map: to the compiler, which otherwise checks the byte
        // distance (whose low bits it knows are 0, and the verifier does not) in
        // place of the index, and to the verifier, which then need not tell apart
        // the addresses it came from (the states of each frame stay few).
        window.at = (fp - base) >> 3;
        // SAFETY: the field just written.
        let at = unsafe { core::ptr::read_volatile(&window.at) } as usize;
        let (Some(&next), Some(&ret)) = (window.words_at.get(at), window.words_at.get(at + 1))
        else {
            break;
        };
        if let Some(slot) = walk.frames.get_mut(len as usize) {
            *slot = ret;
        }
        hash = mix(hash, ret);
        len += 1;
        low = fp + 16;
        fp = next;
    }
    walk.len = len;
    walk.hash = hash;
    record_user_stack(hash, len)
}

/// The id in USER_STACKS of a stack whose frames hash to `hash`: `USER_STACK_ID_BIT`
/// and the hash folded to 30 bits.
#[inline(always)]
fn stack_id_of(hash: u64) -> i32 {
    ((hash ^ (hash >> 32)) as u32 & (USER_STACK_ID_BIT - 1) | USER_STACK_ID_BIT) as i32
}

/// Records CPU's walk (USER_WALK, `len` frames with their `hash`) in USER_STACKS;
/// its id, or a negative errno (counted).
///
/// A global function: the verifier checks it once, for any hash and length, not at
/// each of the walk's ends (one per frame count).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn record_user_stack(hash: u64, len: u32) -> i32 {
    let (Some(walk), Some(window)) = (USER_WALK.get_ptr(0), USER_WINDOW.get_ptr_mut(0)) else {
        return -12;
    };
    // SAFETY: the per-CPU slots the walk used.
    let (walk, window) = unsafe { (&*walk, &mut *window) };
    let id = stack_id_of(hash) as u32;
    // A stack this CPU recorded lately is in the map (nothing takes a stack out):
    // its id without a lookup there.
    let Some(seen) = window.seen.get_mut(hash as usize & (SEEN_SLOTS - 1)) else {
        return -12;
    };
    if seen.hash == hash && seen.len == u64::from(len) {
        return id as i32;
    }
    // The stack under `id` is this one when its 64-bit hash and length are the
    // same (the kernel's stack map, with the flag it is used with, compares a
    // 32-bit hash alone); a different stack there is a collision, as in the
    // kernel's map.
    let this = |stored: &UserStack| stored.hash == hash && stored.len == len;
    // SAFETY: a map value, read while the program runs.
    let here = match unsafe { USER_STACKS.get(id) } {
        Some(stored) => this(stored),
        None => match USER_STACKS.insert(id, walk, u64::from(BPF_NOEXIST)) {
            Ok(()) => true,
            // Another CPU recorded a stack there since.
            // SAFETY: as above.
            Err(-17) => match unsafe { USER_STACKS.get(id) } {
                Some(stored) => this(stored),
                None => {
                    count_location(|stats| stats.stack_errors += 1);
                    return -17;
                }
            },
            Err(err) => {
                count_location(|stats| match err {
                    -7 | -12 => stats.stack_full += 1, // E2BIG, ENOMEM
                    _ => stats.stack_errors += 1,
                });
                return err;
            }
        },
    };
    if !here {
        count_location(|stats| stats.stack_collisions += 1);
        return -17; // EEXIST
    }
    *seen = Seen {
        hash,
        len: u64::from(len),
    };
    id as i32
}

/// The frames' hash before the first frame.
const HASH_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// One step of the frames' hash (a multiply and a rotate: cheap, and every bit of
/// `value` reaches the high half the id is folded from).
#[inline(always)]
fn mix(hash: u64, value: u64) -> u64 {
    (hash ^ value)
        .wrapping_mul(0xff51_afd7_ed55_8ccd)
        .rotate_left(29)
}
