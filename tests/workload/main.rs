//! The function view's test workload, built by the tests with `rustc` (frame pointers
//! on, so that user stacks unwind): `workload cpu SECS` spends two thirds of its time
//! in `work::alpha_hot` (called through `via_alpha`) and one third in
//! `work::beta_hot` (called through `via_beta`); `workload sys SECS` makes system
//! calls in a loop, so that its samples land in the kernel; `workload stacks SECS`
//! walks 16,384 distinct call stacks (seven levels of four functions each) in turn,
//! for the symbolization benchmark; `workload jit SECS [nomap]` spins in code it
//! copied into anonymous executable memory, like a JIT, and names it in
//! `/tmp/perf-PID.map` (perf's JIT map convention) unless `nomap`; `workload
//! regressed SECS` is `cpu` with three times beta's work (alpha 2 : beta 3), the
//! "new build" of the profile diff test.
use std::{
    hint::black_box,
    io::Write as _,
    time::{Duration, Instant},
};

/// Iterations per unit of work; alpha does two units for each of beta's one.
const UNIT: u64 = 200_000;

mod work {
    use std::hint::black_box;

    /// The same loop shape in both hot functions: equal cost per iteration.
    #[inline(never)]
    pub fn alpha_hot(n: u64) -> u64 {
        let mut x = black_box(1u64);
        for i in 0..n {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        x
    }

    /// The same cost as `alpha_hot`, with other constants: identical bodies would be
    /// folded into one function by the compiler.
    /// Its loop body is `beta_step`, inlined: with `--inlined` the samples name it.
    #[inline(never)]
    pub fn beta_hot(n: u64) -> u64 {
        let mut x = black_box(3u64);
        for i in 0..n {
            x = beta_step(x, i);
        }
        x
    }

    #[inline(always)]
    fn beta_step(x: u64, i: u64) -> u64 {
        black_box(x.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(i))
    }

    /// The leaf of the distinct-stacks walk (other constants again).
    #[inline(never)]
    pub fn stack_leaf(n: u64) -> u64 {
        let mut x = black_box(5u64);
        for i in 0..n {
            x = black_box(x.wrapping_mul(3_202_034_522_624_059_733).wrapping_add(i));
        }
        x
    }
}

#[inline(never)]
fn via_alpha(n: u64) -> u64 {
    black_box(work::alpha_hot(n))
}

#[inline(never)]
fn via_beta(n: u64) -> u64 {
    black_box(work::beta_hot(n))
}

/// One level of the distinct-stacks walk: `path`'s digit at `level` (base 4) picks
/// which of four functions calls the next level, so each path is its own stack.
/// (Each with its own constant: identical bodies would be folded into one.)
macro_rules! level {
    ($($name:ident = $k:literal),+) => {
        $(
            #[inline(never)]
            fn $name(path: u32, level: u32) -> u64 {
                black_box(descend(path, level + 1)) ^ $k
            }
        )+
    };
}
level!(s0 = 0x11, s1 = 0x22, s2 = 0x33, s3 = 0x44);

const LEVELS: u32 = 7;

#[inline(never)]
fn descend(path: u32, level: u32) -> u64 {
    if level == LEVELS {
        return work::stack_leaf(2_000);
    }
    match (path >> (2 * level)) & 3 {
        0 => s0(path, level),
        1 => s1(path, level),
        2 => s2(path, level),
        _ => s3(path, level),
    }
}

#[inline(never)]
fn stacks(until: Instant) {
    let mut path = 0u32;
    while Instant::now() < until {
        for _ in 0..64 {
            black_box(descend(path, 0));
            path = (path + 1) % (1 << (2 * LEVELS));
        }
    }
}

#[inline(never)]
fn syscalls(until: Instant) {
    let mut null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null");
    while Instant::now() < until {
        for _ in 0..1000 {
            let _ = black_box(null.write(b"x"));
        }
    }
}

unsafe extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
}

/// Machine code of a loop that never ends (`jmp .` / `b .`).
#[cfg(target_arch = "x86_64")]
const SPIN: &[u8] = &[0xeb, 0xfe];
#[cfg(target_arch = "aarch64")]
const SPIN: &[u8] = &[0x00, 0x00, 0x00, 0x14];

/// Spins in "jitted" code on a thread of its own until the process ends.
fn jit(until: Instant, map: bool) {
    const PROT_RWX: i32 = 0x1 | 0x2 | 0x4;
    const MAP_PRIVATE_ANON: i32 = 0x02 | 0x20;
    // SAFETY: a fresh anonymous mapping, checked below before use.
    let code = unsafe { mmap(std::ptr::null_mut(), 4096, PROT_RWX, MAP_PRIVATE_ANON, -1, 0) };
    assert!(!code.is_null() && code as isize != -1, "mmap failed");
    // SAFETY: the mapping is 4096 writable bytes; SPIN is a few bytes.
    unsafe { std::ptr::copy_nonoverlapping(SPIN.as_ptr(), code, SPIN.len()) };
    if map {
        let line = format!("{:x} {:x} jitted_spin_loop\n", code as usize, SPIN.len());
        std::fs::write(format!("/tmp/perf-{}.map", std::process::id()), line)
            .expect("write the perf map");
    }
    let addr = code as usize;
    std::thread::spawn(move || {
        // SAFETY: `addr` holds a complete loop of machine code for this CPU, in
        // executable memory; it never returns, and the process exits under it.
        let f: extern "C" fn() = unsafe { std::mem::transmute(addr) };
        f();
    });
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    if map {
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", std::process::id()));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("cpu", String::as_str);
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    match mode {
        "sys" => syscalls(until),
        "stacks" => stacks(until),
        "jit" => jit(until, args.get(3).map(String::as_str) != Some("nomap")),
        // A "regressed build": beta_hot does three times the work (alpha 2 : beta 3).
        "regressed" => {
            let mut sum = 0u64;
            while Instant::now() < until {
                sum = sum.wrapping_add(via_alpha(2 * UNIT));
                sum = sum.wrapping_add(via_beta(3 * UNIT));
            }
            black_box(sum);
        }
        _ => {
            let mut sum = 0u64;
            while Instant::now() < until {
                sum = sum.wrapping_add(via_alpha(2 * UNIT));
                sum = sum.wrapping_add(via_beta(UNIT));
            }
            black_box(sum);
        }
    }
}
