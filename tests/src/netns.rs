//! Network namespaces of the test's own, so a test can cut a member off the network for real:
//! its inbound *and* outbound peer connections, not just its listening port.
//!
//! Layout (all created by [`Net::new`], all removed when the [`Net`] drops, panics included):
//!
//! ```text
//!  host ns                 hub ns (bridge br0)              member ns mN
//!  fk<pid>h<seq> ──veth── host ┐
//!  10.X.Y.254              m1 ─┼── veth ── eth0 10.X.Y.1   (runs the member process)
//!                          m2 ─┤── veth ── eth0 10.X.Y.2
//!                          m3 ─┘── veth ── eth0 10.X.Y.3
//! ```
//!
//! The test process stays in the host namespace and reaches the members through its veth;
//! the only route it gains is the /24 of that veth. Names carry the pid and a per-process
//! sequence number so parallel test binaries never collide; the /24 is chosen from
//! 10.200.0.0-10.249.255.0 by pid and sequence and skipped when the host already has it.
//!
//! A cut sets the hub's end of the member's veth down: the member's own interface loses its
//! carrier and every packet either way is dropped (a black hole, as a real partition looks:
//! TCP retransmits, no RST), while the member's address and routes stay, so a heal is just
//! setting the link up again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Error, Result};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The test's namespaces: a hub with a bridge, one namespace per member, a veth to the host.
pub struct Net {
    prefix: String,
    host_if: String,
    subnet: String,
    members: Vec<String>,
    /// Holds the launcher script.
    dir: tempfile::TempDir,
}

/// Runs a command, mapping a non-zero exit to an error carrying its stderr.
fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Settle(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn host_has_subnet(subnet: &str) -> bool {
    Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {subnet}.")))
        .unwrap_or(true)
        || Command::new("ip")
            .args(["-4", "route", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{subnet}.")))
            .unwrap_or(true)
}

/// Namespaces left by a test process that was SIGKILLed (no Drop ran): `fkv-<pid>-...` of a
/// pid that no longer exists. Deleting a hub also destroys the host veth paired into it.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("fkv-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

impl Net {
    /// Creates the hub, `names.len()` member namespaces (member `names[i]` at `10.X.Y.(i+1)`)
    /// and the host's veth. Needs root (`ip netns add`); fails with a clear message without.
    pub fn new(names: &[&str]) -> Result<Net> {
        if Command::new("ip").arg("-V").output().is_err() {
            return Err(Error::Settle(
                "the `ip` tool (iproute2) is missing: run scripts/install-test-deps.sh".into(),
            ));
        }
        remove_stale();
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("fkv-{pid}-{seq}");
        let mut idx = (pid as usize * 7 + seq as usize * 131) % (50 * 256);
        let subnet = loop {
            let s = format!("10.{}.{}", 200 + idx / 256, idx % 256);
            if !host_has_subnet(&s) {
                break s;
            }
            idx = (idx + 1) % (50 * 256);
        };
        // Interface names are at most 15 bytes: "fk" + pid (<= 7 digits) + "h" + seq.
        let host_if = format!("fk{pid}h{}", seq % 100);
        let net = Net {
            prefix,
            host_if,
            subnet,
            members: names.iter().map(|s| s.to_string()).collect(),
            dir: tempfile::Builder::new().prefix("fkv-netns-").tempdir()?,
        };
        // From here on a failure drops `net`, which removes whatever was created.
        net.build().map_err(|e| {
            Error::Settle(format!(
                "setting up network namespaces (needs root and CAP_NET_ADMIN): {e}"
            ))
        })?;
        Ok(net)
    }

    fn build(&self) -> Result<()> {
        let hub = self.hub();
        run(&["ip", "netns", "add", &hub])?;
        run(&["ip", "-n", &hub, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        // Host end.
        run(&[
            "ip",
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "host",
            "netns",
            &hub,
        ])?;
        run(&[
            "ip", "-n", &hub, "link", "set", "host", "master", "br0", "up",
        ])?;
        let host_addr = format!("{}.254/24", self.subnet);
        run(&["ip", "addr", "add", &host_addr, "dev", &self.host_if])?;
        run(&["ip", "link", "set", &self.host_if, "up"])?;
        for (i, name) in self.members.iter().enumerate() {
            let ns = self.ns_of(name);
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip", "-n", &hub, "link", "add", name, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            run(&["ip", "-n", &hub, "link", "set", name, "master", "br0", "up"])?;
            let addr = format!("{}.{}/24", self.subnet, i + 1);
            run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// The namespace member `name` runs in.
    pub fn ns_of(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Member `name`'s address.
    pub fn ip_of(&self, name: &str) -> Result<String> {
        let i = self
            .members
            .iter()
            .position(|m| m == name)
            .ok_or_else(|| Error::Settle(format!("{name} has no namespace")))?;
        Ok(format!("{}.{}", self.subnet, i + 1))
    }

    /// A launcher for `MemberOpts::bin`: runs `bin` inside the namespace of the member named by
    /// its `--name=` flag (one launcher serves every member of a cluster). `exec` all the way
    /// down (`ip netns exec` execs too), so the pid the harness holds is the member's own.
    pub fn launcher(&self, bin: &Path) -> Result<PathBuf> {
        let path = self.dir.path().join("launch.sh");
        let script = format!(
            "#!/bin/sh\n\
             for a in \"$@\"; do case \"$a\" in --name=*) n=\"${{a#--name=}}\";; esac; done\n\
             exec ip netns exec \"{prefix}-$n\" \"{bin}\" \"$@\"\n",
            prefix = self.prefix,
            bin = bin.display()
        );
        std::fs::write(&path, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// Cuts member `name` off: nothing in or out, peers and clients alike.
    pub fn cut(&self, name: &str) -> Result<()> {
        run(&["ip", "-n", &self.hub(), "link", "set", name, "down"])
    }

    /// Undoes [`Net::cut`].
    pub fn heal(&self, name: &str) -> Result<()> {
        run(&["ip", "-n", &self.hub(), "link", "set", name, "up"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veths in it and their peers; the host's veth goes
        // with the hub, but delete it by name too in case the hub was never created.
        for name in &self.members {
            let _ = run(&["ip", "netns", "del", &self.ns_of(name)]);
        }
        let _ = run(&["ip", "netns", "del", &self.hub()]);
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
