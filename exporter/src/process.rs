//! The standard `process_*` metrics, read from `/proc/self` at scrape time.
//!
//! Linux only, like the exporter's deployment target; on other systems the
//! families are simply absent.

use std::fs;

use crate::snapshot::Family;

/// Linux reports CPU times in /proc in USER_HZ, fixed at 100 for userspace.
const USER_HZ: f64 = 100.0;

pub fn families() -> Vec<Family> {
    let mut out = Vec::with_capacity(6);
    if let Some(stat) = read_stat() {
        out.push(
            Family::counter(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent by the exporter in seconds.",
            )
            .with_value(stat.cpu_seconds),
        );
        if let Some(start) = boot_time().map(|boot| boot + stat.start_ticks / USER_HZ) {
            out.push(
                Family::gauge(
                    "process_start_time_seconds",
                    "Start time of the exporter since the Unix epoch in seconds.",
                )
                .with_value(start),
            );
        }
        out.push(
            Family::gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size of the exporter in bytes.",
            )
            .with_value(stat.vsize_bytes),
        );
    }
    if let Some(rss) = read_rss_bytes() {
        out.push(
            Family::gauge(
                "process_resident_memory_bytes",
                "Resident memory size of the exporter in bytes.",
            )
            .with_value(rss),
        );
    }
    if let Ok(dir) = fs::read_dir("/proc/self/fd") {
        out.push(
            Family::gauge(
                "process_open_fds",
                "Number of open file descriptors of the exporter.",
            )
            .with_value(dir.count() as f64),
        );
    }
    if let Some(max) = read_max_fds() {
        out.push(
            Family::gauge(
                "process_max_fds",
                "Maximum number of open file descriptors of the exporter.",
            )
            .with_value(max),
        );
    }
    out
}

struct Stat {
    cpu_seconds: f64,
    start_ticks: f64,
    vsize_bytes: f64,
}

fn read_stat() -> Option<Stat> {
    parse_stat(&fs::read_to_string("/proc/self/stat").ok()?)
}

/// Parses `/proc/<pid>/stat`. The command name may contain spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0; utime is field 14.
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
    })
}

fn read_rss_bytes() -> Option<f64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

fn read_max_fds() -> Option<f64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn boot_time() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_name() {
        let line = "4242 (my (odd) exe) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1000 12345678 500 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.cpu_seconds, 3.0);
        assert_eq!(stat.start_ticks, 1000.0);
        assert_eq!(stat.vsize_bytes, 12345678.0);
    }

    #[test]
    fn reads_own_process() {
        let names: Vec<String> = families()
            .into_iter()
            .map(|f| f.name.into_owned())
            .collect();
        for expected in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "missing {expected} in {names:?}"
            );
        }
    }
}
