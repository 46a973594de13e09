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
    /// `RLIMIT_AS` (u64::MAX when unlimited, as Go's collector reports it).
    pub virtual_max_bytes: Option<f64>,
    /// IpExt InOctets/OutOctets of `/proc/self/net/netstat`: the network namespace's
    /// totals, which is what Prometheus' Go process collector reports too.
    pub network_rx_tx: Option<(f64, f64)>,
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
        virtual_max_bytes: None,
        network_rx_tx: None,
    })
}

fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of one `/proc/self/limits` row; "unlimited" is RLIM_INFINITY.
fn soft_limit(limits: &str, row: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with(row))?;
    match line.trim_start_matches(row).split_whitespace().next()? {
        "unlimited" => Some(u64::MAX as f64),
        v => v.parse().ok(),
    }
}

fn max_open_files(limits: &str) -> Option<f64> {
    soft_limit(limits, "Max open files")
}

/// InOctets and OutOctets from the `IpExt:` header/value line pair of `/proc/<pid>/net/netstat`.
fn ip_ext_octets(netstat: &str) -> Option<(f64, f64)> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("IpExt:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |n: &str| {
        let at = names.iter().position(|x| *x == n)?;
        values.get(at)?.parse::<f64>().ok()
    };
    Some((get("InOctets")?, get("OutOctets")?))
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
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    s.max_fds = max_open_files(&limits);
    s.virtual_max_bytes = soft_limit(&limits, "Max address space");
    s.network_rx_tx = std::fs::read_to_string("/proc/self/net/netstat")
        .ok()
        .and_then(|n| ip_ext_octets(&n));
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
    if let Some((rx, tx)) = s.network_rx_tx {
        one(
            out,
            "process_network_receive_bytes_total",
            "Number of bytes received by the process over the network.",
            "counter",
            rx,
        );
        one(
            out,
            "process_network_transmit_bytes_total",
            "Number of bytes sent by the process over the network.",
            "counter",
            tx,
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
    if let Some(v) = s.virtual_max_bytes {
        one(
            out,
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            "gauge",
            v,
        );
    }
    // etcd's own file descriptor gauges (etcdserver's monitorFileDescriptor): the same
    // numbers as process_open_fds and process_max_fds.
    if let Some(v) = s.open_fds {
        one(
            out,
            "os_fd_used",
            "The number of used file descriptors.",
            "gauge",
            v,
        );
    }
    if let Some(v) = s.max_fds {
        one(out, "os_fd_limit", "The file descriptor limit.", "gauge", v);
    }
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
        let limits = "Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(
            soft_limit(limits, "Max address space"),
            Some(u64::MAX as f64)
        );
        let netstat =
            "TcpExt: A B\nTcpExt: 1 2\nIpExt: InNoRoutes InOctets OutOctets\nIpExt: 0 1500 900\n";
        assert_eq!(ip_ext_octets(netstat), Some((1500.0, 900.0)));
    }

    #[test]
    fn samples_this_process() {
        let s = sample().unwrap();
        assert!(s.resident_bytes > 0.0 && s.open_fds.unwrap() > 0.0);
    }
}
