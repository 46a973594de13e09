//! Driving the real `etcdctl` (API v3): one-shot commands, interactive stdin, and `watch` as a
//! long-running child whose stdout lines are read as they come.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The outcome of one `etcdctl` run.
#[derive(Debug)]
pub struct CtlOutput {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }

    /// stdout of a run that must have succeeded; panics with both streams otherwise.
    pub fn ok(&self) -> &str {
        assert!(
            self.success(),
            "etcdctl failed ({:?})\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// stderr of a run that must have failed.
    pub fn err(&self) -> &str {
        assert!(
            !self.success(),
            "etcdctl unexpectedly succeeded\nstdout: {}",
            self.stdout
        );
        &self.stderr
    }

    /// stdout parsed as JSON (`-w json`), panicking with the text if it is not.
    pub fn json(&self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(out)
            .unwrap_or_else(|e| panic!("etcdctl output is not JSON ({e}): {out}"))
    }

    pub fn lines(&self) -> Vec<&str> {
        self.ok().lines().collect()
    }
}

fn etcdctl_bin() -> String {
    std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into())
}

/// Which etcdctl runs: the system one (Debian's 3.4, or `ETCDCTL_BIN`), or etcd 3.6's from
/// `scripts/build-etcd36.sh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctl {
    System,
    V36,
}

fn command(args: &[String]) -> Command {
    command_of(Ctl::System, args)
}

fn command_of(ctl: Ctl, args: &[String]) -> Command {
    let bin = match ctl {
        Ctl::System => std::path::PathBuf::from(etcdctl_bin()),
        // A missing 3.6 build makes the spawn fail below with the reason in stderr.
        Ctl::V36 => crate::member::etcd36_dir()
            .map(|d| d.join("etcdctl"))
            .unwrap_or_else(|e| std::path::PathBuf::from(format!("etcdctl-3.6-unavailable: {e}"))),
    };
    let mut c = Command::new(bin);
    c.env("ETCDCTL_API", "3")
        // A short dial timeout so a refused connection fails the test quickly.
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=10s")
        .args(args);
    c
}

/// Runs etcdctl with the given args (and optional stdin) to completion.
pub fn run(args: &[String], stdin: Option<&str>) -> CtlOutput {
    run_with(Ctl::System, args, stdin)
}

/// [`run`] with the chosen etcdctl.
pub fn run_with(ctl: Ctl, args: &[String], stdin: Option<&str>) -> CtlOutput {
    let mut c = command_of(ctl, args);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            return CtlOutput {
                status: None,
                stdout: String::new(),
                stderr: format!("could not spawn etcdctl: {e} (apt-get install -y etcd-client)"),
            }
        }
    };
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Dropping the pipe afterwards sends EOF, which ends interactive input.
        let _ = pipe.write_all(text.as_bytes());
    }
    match child.wait_with_output() {
        Ok(o) => CtlOutput {
            status: Some(o.status),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Err(e) => CtlOutput {
            status: None,
            stdout: String::new(),
            stderr: e.to_string(),
        },
    }
}

/// `etcdctl --endpoints=<endpoints> <args>`.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> CtlOutput {
    let mut all = vec![format!("--endpoints={endpoints}")];
    all.extend(args.iter().map(|s| s.to_string()));
    run(&all, None)
}

/// Same as [`etcdctl`] with `stdin` piped in.
pub fn etcdctl_stdin(endpoints: &str, args: &[&str], stdin: &str) -> CtlOutput {
    let mut all = vec![format!("--endpoints={endpoints}")];
    all.extend(args.iter().map(|s| s.to_string()));
    run(&all, Some(stdin))
}

/// A running `etcdctl watch`; its stdout lines arrive on a channel fed by a reader thread.
pub struct CtlWatch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl CtlWatch {
    /// Spawns `etcdctl <args>` (args include `watch ...` and the endpoint flags).
    pub fn spawn(args: &[String]) -> std::io::Result<CtlWatch> {
        let mut child = command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    match line {
                        Ok(l) => {
                            if tx.send(l).is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            });
        }
        Ok(CtlWatch { child, lines: rx })
    }

    /// Collects exactly `n` lines, or panics with what arrived when `timeout` passes first.
    pub fn take_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => got.push(l),
                Err(_) => panic!(
                    "etcdctl watch: expected {n} lines within {timeout:?}, got {}: {got:?}",
                    got.len()
                ),
            }
        }
        got
    }
}

impl Drop for CtlWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes standard base64 (etcdctl `-w json` prints keys and values that way).
pub fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a') as u32 + 26),
            b'0'..=b'9' => Some((c - b'0') as u32 + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The `kvs` of a `get -w json` output as (key, value) strings.
pub fn json_kvs(v: &serde_json::Value) -> Vec<(String, String)> {
    let b64 = |x: &serde_json::Value| {
        String::from_utf8_lossy(&base64_decode(x.as_str().unwrap_or(""))).into_owned()
    };
    v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| (b64(&kv["key"]), b64(&kv["value"])))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_round_trips_known_vectors() {
        let cases: &[(&str, &[u8])] = &[
            ("", b""),
            ("Zg==", b"f"),
            ("Zm8=", b"fo"),
            ("Zm9v", b"foo"),
            ("Zm9vYmFy", b"foobar"),
            ("/w==", &[0xff]),
        ];
        for (enc, dec) in cases {
            assert_eq!(base64_decode(enc), *dec, "decoding {enc}");
        }
    }
}
