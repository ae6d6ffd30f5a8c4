//! `-e` text, and a sysfs event alias, through parsing and planning on the recorded
//! Alder Lake (hybrid) and Juno (big.LITTLE) trees: an error is fine, a panic is not.
//! Input: `<event list>\0<alias terms>`; the alias is installed as `cpu_core/fuzz/`
//! and `armv8_cortex_a53/fuzz/`, and planned too.
#![no_main]

use std::{
    path::Path,
    sync::{Mutex, OnceLock},
};

use libfuzzer_sys::fuzz_target;
use sampler::{
    discover::pmu::{Alias, PmuSet},
    events::plan::{self, KernelVersion},
    events::syntax,
};

fn fixtures() -> &'static Mutex<Vec<PmuSet>> {
    static SETS: OnceLock<Mutex<Vec<PmuSet>>> = OnceLock::new();
    SETS.get_or_init(|| {
        ["adl", "juno"]
            .iter()
            .map(|m| {
                let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../tests/data/sysfs")
                    .join(m);
                PmuSet::discover(&root).expect("fixture")
            })
            .collect::<Vec<_>>()
            .into()
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (events, alias) = text.split_once('\0').unwrap_or((&text, ""));
    let mut sets = fixtures().lock().unwrap_or_else(|e| e.into_inner());
    for set in sets.iter_mut() {
        // The alias is replaced in place (cloning the trees costs more than planning).
        for p in set.pmus.iter_mut().filter(|p| p.core) {
            p.events.insert(
                "fuzz".to_owned(),
                Alias {
                    terms: alias.to_owned(),
                    scale: None,
                    unit: None,
                },
            );
        }
        let mut lists = vec![events.to_owned()];
        lists.extend(
            set.pmus
                .iter()
                .filter(|p| p.core)
                .map(|p| format!("{}/fuzz/", p.name)),
        );
        for list in lists {
            if let Ok(parsed) = syntax::parse(&list) {
                for kernel in [None, Some(KernelVersion(6, 1)), Some(KernelVersion(6, 12))] {
                    if let Ok(plan) = plan::plan(&parsed, set, &set.online, kernel) {
                        for p in &plan.plan {
                            for e in p.encodings() {
                                let _ = p.attr(e, plan::Mode::CountLeader);
                            }
                        }
                    }
                }
            }
        }
    }
});
