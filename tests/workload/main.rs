//! The function view's test workload, built by the tests with `rustc` (frame pointers
//! on, so that user stacks unwind): `workload cpu SECS` spends two thirds of its time
//! in `work::alpha_hot` (called through `via_alpha`) and one third in
//! `work::beta_hot` (called through `via_beta`); `workload sys SECS` makes system
//! calls in a loop, so that its samples land in the kernel.
use std::{
    hint::black_box,
    io::Write as _,
    time::{Duration, Instant},
};

/// Iterations per unit of work; alpha does two units for each of beta's one.
const UNIT: u64 = 200_000;

mod work {
    use std::hint::black_box;

    /// The same loop body in both hot functions: equal cost per iteration.
    #[inline(never)]
    pub fn alpha_hot(n: u64) -> u64 {
        let mut x = black_box(1u64);
        for i in 0..n {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        x
    }

    #[inline(never)]
    pub fn beta_hot(n: u64) -> u64 {
        let mut x = black_box(1u64);
        for i in 0..n {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("cpu", String::as_str);
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    match mode {
        "sys" => syscalls(until),
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
