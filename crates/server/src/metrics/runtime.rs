//! Equivalents of the three `go_*` families etcd's dashboards read (`go_goroutines`,
//! `go_memstats_alloc_bytes`, `go_threads`), each measuring the same thing in ferrokv's
//! runtime, with a HELP text that says what it is. Go's other `go_*` families (GC pauses,
//! GOGC, heap spans, ...) describe Go's collector, which ferrokv has no counterpart of, so
//! they are left out rather than filled with made-up numbers.

use std::fmt::Write as _;

/// Tasks alive in the tokio runtime that serves the scrape (the member's one runtime): the
/// unit of concurrency ferrokv runs its work in, as goroutines are etcd's.
fn tasks() -> Option<usize> {
    tokio::runtime::Handle::try_current()
        .ok()
        .map(|h| h.metrics().num_alive_tasks())
}

/// Bytes the system allocator (glibc malloc, which ferrokv uses: no `#[global_allocator]`)
/// has handed out and not had back, over all arenas: `uordblks` plus the mmapped chunks
/// (`hblkhd`). Go's `go_memstats_alloc_bytes` is likewise the live heap objects' bytes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_in_use() -> Option<f64> {
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's own statistics.
    let m = unsafe { libc::mallinfo2() };
    Some((m.uordblks + m.hblkhd) as f64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_in_use() -> Option<f64> {
    None
}

/// OS threads of the process (`Threads:` of `/proc/self/status`).
fn threads() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

pub fn render(out: &mut String) {
    let mut one = |name: &str, help: &str, v: f64| {
        super::header(out, name, help, "gauge");
        let _ = writeln!(out, "{name} {v}");
    };
    if let Some(n) = tasks() {
        one(
            "go_goroutines",
            "Number of tokio tasks that currently exist (ferrokv's counterpart of goroutines).",
            n as f64,
        );
    }
    if let Some(b) = heap_in_use() {
        one(
            "go_memstats_alloc_bytes",
            "Number of bytes allocated in heap and currently in use (glibc malloc's in-use bytes, all arenas).",
            b,
        );
    }
    if let Some(t) = threads() {
        one("go_threads", "Number of OS threads of the process.", t);
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn renders_the_three_families_with_real_values() {
        let _keep = vec![0u8; 1 << 20];
        // The test body itself runs in `block_on`, not as a task: one spawned task to count.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = rx.await;
        });
        let mut out = String::new();
        super::render(&mut out);
        let value = |name: &str| -> f64 {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{out}"))
        };
        assert!(value("go_goroutines") >= 1.0);
        assert!(value("go_memstats_alloc_bytes") >= (1 << 20) as f64);
        assert!(value("go_threads") >= 1.0);
        assert!(out.contains("# TYPE go_goroutines gauge"));
        let _ = tx.send(());
        let _ = task.await;
    }
}
