//! Turns QEMU `virt` (gic-version=3)'s device tree into a heterogeneous one: two PMUs
//! (`arm,cortex-a53-pmu` on the first half of the CPUs, `arm,cortex-a57-pmu` on the
//! second) through GICv3 `ppi-partitions`, like a big.LITTLE machine. Linux ignores
//! `interrupt-affinity` on a PPI, so the partitions are what makes it work:
//!
//! - label the CPU nodes, give the GIC 4 interrupt cells and two partitions;
//! - append a 0 cell (no partition) to every other 3-cell interrupt specifier, and to
//!   each 10-cell entry of the PCIe `interrupt-map`;
//! - replace the `pmu` node by the two PMU nodes on PPI 7 of their partition.

use anyhow::{Result, bail};
use regex::{Captures, Regex};

pub fn heterogeneous(dts: &str, ncpu: usize) -> Result<String> {
    let half = (ncpu / 2).max(1);
    let refs =
        |r: std::ops::Range<usize>| r.map(|i| format!("&cpu{i}")).collect::<Vec<_>>().join(" ");
    let (a, b) = (refs(0..half), refs(half..ncpu));

    let cpu = Regex::new(r"\n(\t\t)cpu@(\d+) \{")?;
    let mut s = cpu
        .replace_all(dts, |c: &Captures| {
            format!("\n{}cpu{}: cpu@{} {{", &c[1], &c[2], &c[2])
        })
        .into_owned();

    let gic = "#interrupt-cells = <0x03>;\n\n\t\tits@";
    if !s.contains(gic) {
        bail!("GICv3 node with an ITS not found in QEMU's device tree");
    }
    s = s.replacen(
        gic,
        &format!(
            "#interrupt-cells = <0x04>;\n\n\t\tppi-partitions {{\n\
             \t\t\tpart0: interrupt-partition-0 {{ affinity = <{a}>; }};\n\
             \t\t\tpart1: interrupt-partition-1 {{ affinity = <{b}>; }};\n\
             \t\t}};\n\n\t\tits@"
        ),
        1,
    );

    let add_cell = |group: usize, what: &'static str| {
        move |c: &Captures| -> Result<String> {
            let cells: Vec<&str> = c[2].split_whitespace().collect();
            if !cells.len().is_multiple_of(group) {
                bail!(
                    "{what} with {} cells is not a multiple of {group}",
                    cells.len()
                );
            }
            let mut out = Vec::new();
            for chunk in cells.chunks(group) {
                out.extend_from_slice(chunk);
                out.push("0x00");
            }
            Ok(format!("{}{what} = <{}>;", &c[1], out.join(" ")))
        }
    };
    s = replace_all_fallible(
        &Regex::new(r"(\t+)interrupts = <([^>]*)>;")?,
        &s,
        add_cell(3, "interrupts"),
    )?;
    s = replace_all_fallible(
        &Regex::new(r"(\t+)interrupt-map = <([^>]*)>;")?,
        &s,
        add_cell(10, "interrupt-map"),
    )?;

    // After the cell fix-up, QEMU's PMU node reads <0x01 0x07 0x04 0x00>.
    let pmu = Regex::new(
        r#"\tpmu \{\n\t\tinterrupts = <0x01 0x07 0x04 0x00>;\n\t\tcompatible = "arm,armv8-pmuv3";\n\t\};\n"#,
    )?;
    let two = "\tpmu-a53 {\n\t\tcompatible = \"arm,cortex-a53-pmu\";\n\t\tinterrupts = <0x01 0x07 0x04 &part0>;\n\t};\n\n\
               \tpmu-a57 {\n\t\tcompatible = \"arm,cortex-a57-pmu\";\n\t\tinterrupts = <0x01 0x07 0x04 &part1>;\n\t};\n";
    if pmu.find_iter(&s).count() != 1 {
        bail!("the pmu node of QEMU's device tree was not found exactly once");
    }
    Ok(pmu.replace(&s, two).into_owned())
}

fn replace_all_fallible(
    re: &Regex,
    s: &str,
    mut f: impl FnMut(&Captures) -> Result<String>,
) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for c in re.captures_iter(s) {
        let m = c.get(0).expect("group 0");
        out.push_str(&s[last..m.start()]);
        out.push_str(&f(&c)?);
        last = m.end();
    }
    out.push_str(&s[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_LIKE: &str = "/ {\n\tcpus {\n\t\tcpu@0 {\n\t\t};\n\t\tcpu@1 {\n\t\t};\n\t};\n\
        \tintc@8000000 {\n\t\t#interrupt-cells = <0x03>;\n\n\t\tits@8080000 {\n\t\t};\n\t};\n\
        \tpcie@10000000 {\n\t\tinterrupt-map = <0x00 0x00 0x00 0x01 0x8002 0x00 0x00 0x00 0x03 0x04>;\n\t};\n\
        \tuart {\n\t\tinterrupts = <0x00 0x01 0x04>;\n\t};\n\
        \tpmu {\n\t\tinterrupts = <0x01 0x07 0x04>;\n\t\tcompatible = \"arm,armv8-pmuv3\";\n\t};\n};\n";

    #[test]
    fn two_pmus_on_partitions() {
        let out = heterogeneous(QEMU_LIKE, 2).unwrap();
        assert!(out.contains("cpu0: cpu@0 {"));
        assert!(out.contains("#interrupt-cells = <0x04>;"));
        assert!(out.contains("part0: interrupt-partition-0 { affinity = <&cpu0>; };"));
        assert!(out.contains("part1: interrupt-partition-1 { affinity = <&cpu1>; };"));
        assert!(out.contains("interrupts = <0x00 0x01 0x04 0x00>;"));
        assert!(out.contains(
            "interrupt-map = <0x00 0x00 0x00 0x01 0x8002 0x00 0x00 0x00 0x03 0x04 0x00>;"
        ));
        assert!(out.contains(
            "compatible = \"arm,cortex-a53-pmu\";\n\t\tinterrupts = <0x01 0x07 0x04 &part0>;"
        ));
        assert!(out.contains("interrupts = <0x01 0x07 0x04 &part1>;"));
        assert!(!out.contains("armv8-pmuv3"));
    }

    #[test]
    fn unexpected_trees_are_errors() {
        assert!(heterogeneous("/ { };", 4).is_err());
        let bad_map = QEMU_LIKE.replace("0x03 0x04>;\n\t};\n\tuart", "0x03>;\n\t};\n\tuart");
        assert!(
            heterogeneous(&bad_map, 2)
                .unwrap_err()
                .to_string()
                .contains("interrupt-map")
        );
    }
}
