//! The `process_*` families of Prometheus' process collector, read from `/proc/self` at
//! scrape time (nothing is kept between scrapes). Off Linux the families are left out.

use std::fmt::Write as _;

/// `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat`; 100 on every Linux ABI
/// ferrokv builds for (it is fixed by the kernel's ABI, not by `CONFIG_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;
/// Page size for the resident set in `/proc/<pid>/stat` (x86-64 and the usual aarch64 kernels).
const PAGE_BYTES: f64 = 4096.0;

/// What one scrape read from `/proc`.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub start_time_seconds: f64,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

/// Parses `/proc/<pid>/stat` (fields after the parenthesised command name, which may hold
/// spaces) and the boot time from `/proc/stat`.
pub fn parse_stat(stat: &str, boot_time: f64) -> Option<ProcessSample> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); utime is field 14, starttime 22, vsize 23, rss 24.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| f.get(field - 3).and_then(|v| v.parse::<f64>().ok());
    Some(ProcessSample {
        cpu_seconds: (num(14)? + num(15)?) / TICKS_PER_SECOND,
        start_time_seconds: boot_time + num(22)? / TICKS_PER_SECOND,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)? * PAGE_BYTES,
        open_fds: None,
        max_fds: None,
    })
}

fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn sample() -> Option<ProcessSample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| boot_time(&s))
        .unwrap_or(0.0);
    let mut s = parse_stat(&stat, boot)?;
    s.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    s.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| max_open_files(&l));
    Some(s)
}

pub fn render(out: &mut String) {
    let Some(s) = sample() else { return };
    let one = |out: &mut String, name: &str, help: &str, kind: &str, v: f64| {
        super::header(out, name, help, kind);
        let _ = writeln!(out, "{name} {v}");
    };
    one(
        out,
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        "counter",
        s.cpu_seconds,
    );
    if let Some(v) = s.max_fds {
        one(
            out,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            "gauge",
            v,
        );
    }
    if let Some(v) = s.open_fds {
        one(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
            v,
        );
    }
    one(
        out,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "gauge",
        s.resident_bytes,
    );
    one(
        out,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        "gauge",
        s.start_time_seconds,
    );
    one(
        out,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        "gauge",
        s.virtual_bytes,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "42 (fer rokv) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1000 \
                    123456789 2000 18446744073709551615";
        let s = parse_stat(stat, 1_700_000_000.0).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.start_time_seconds, 1_700_000_010.0);
        assert_eq!(s.virtual_bytes, 123456789.0);
        assert_eq!(s.resident_bytes, 2000.0 * 4096.0);
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1.7e9));
        let limits = "Limit Soft Hard Units\nMax open files            1024                 4096                 files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
    }

    #[test]
    fn samples_this_process() {
        let s = sample().unwrap();
        assert!(s.resident_bytes > 0.0 && s.open_fds.unwrap() > 0.0);
    }
}
