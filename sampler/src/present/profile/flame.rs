//! Folded stacks (Brendan Gregg's collapsed format: `comm;outer;...;inner weight`,
//! one line per distinct stack) and the flame graph inferno draws from them.

use std::collections::BTreeMap;

use inferno::flamegraph;

use super::{Error, Weight};
use crate::model::{functions::process_names, snapshot::Snapshot};

/// A frame's name as a folded line can hold it: `;` separates frames and a line
/// ends the stack, so both are replaced.
fn clean(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            ';' => ':',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect()
}

/// The snapshot's sites as folded stacks weighed by `weight`, outermost frame first
/// after the process name; kernel frames marked `_[k]` (as perf's collapse does, so
/// that flame graphs colour them). Lines sorted, zero weights left out.
pub fn folded(s: &Snapshot, weight: &Weight) -> String {
    let comm = process_names(s);
    let mut acc: BTreeMap<String, u64> = BTreeMap::new();
    for site in &s.sites {
        let w = weight.of(site);
        if w == 0 {
            continue;
        }
        let mut line = comm
            .get(&(site.tgid, site.start_ns))
            .map_or_else(|| format!("[pid {}]", site.tgid), |c| clean(c));
        for f in site.frames.iter().rev() {
            line.push(';');
            line.push_str(&clean(&f.function));
            if f.kernel {
                line.push_str("_[k]");
            }
        }
        *acc.entry(line).or_default() += w;
    }
    let mut out = String::new();
    for (line, w) in acc {
        out.push_str(&line);
        out.push(' ');
        out.push_str(&w.to_string());
        out.push('\n');
    }
    out
}

/// The flame graph of `folded`, titled with what it shows.
pub fn svg(folded: &str, title: &str, weight: &Weight) -> Result<Vec<u8>, Error> {
    let mut options = flamegraph::Options::default();
    options.title = title.to_owned();
    options.count_name = weight.name().to_owned();
    let mut out = Vec::new();
    if folded.is_empty() {
        // inferno refuses an empty input; say so in the picture instead.
        options.subtitle = Some("no samples were recorded".to_owned());
        flamegraph::from_lines(&mut options, std::iter::once("[no samples] 1"), &mut out)
    } else {
        flamegraph::from_lines(&mut options, folded.lines(), &mut out)
    }
    .map_err(|e| Error::FlameGraph(e.to_string()))?;
    Ok(out)
}

/// The title of a run's flame graph: the event, the weight and the duration.
pub fn title(s: &Snapshot, weight: &Weight) -> String {
    format!(
        "sampler: {}, weight {}, {:.1} s",
        super::sampling_event(s),
        weight.name(),
        s.duration_s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_lines_weigh_each_stack() {
        let s = crate::present::profile::pprof::tests::example();
        let samples = folded(&s, &Weight::Samples);
        let lines: Vec<&str> = samples.lines().collect();
        assert_eq!(lines.len(), 2, "{samples}");
        assert!(
            lines
                .iter()
                .any(|l| l.ends_with(";main;alpha;do_syscall_[k] 20")),
            "{samples}"
        );
        assert!(
            lines.iter().any(|l| l.ends_with(";main;beta 10")),
            "{samples}"
        );
        let by_member = folded(&s, &Weight::Member(0, "instructions".into()));
        assert!(by_member.contains(";main;beta 20000"), "{by_member}");
        // Round trip: the weights per stack parse back (the count after the last space).
        let total: u64 = samples
            .lines()
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 30);
        assert_eq!(clean("a;b\nc"), "a:b c");
    }

    #[test]
    fn svg_holds_the_frames_and_the_title() {
        let s = crate::present::profile::pprof::tests::example();
        let w = Weight::Samples;
        let svg = String::from_utf8(svg(&folded(&s, &w), &title(&s, &w), &w).unwrap()).unwrap();
        assert!(svg.contains("<svg"), "{}", &svg[..200.min(svg.len())]);
        assert!(svg.contains("alpha") && svg.contains("beta"));
        assert!(svg.contains("weight samples, 2.0 s"));
        let empty = String::from_utf8(svg_empty()).unwrap();
        assert!(empty.contains("no samples"));
    }

    fn svg_empty() -> Vec<u8> {
        svg("", "t", &Weight::Samples).unwrap()
    }
}
