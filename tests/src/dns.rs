//! A small authoritative DNS server (raw UDP: SRV and A answers) and a network namespace of
//! the test's own whose resolver configuration points at it, for DNS SRV discovery tests.
//!
//! `ip netns exec NS` runs a command in the namespace with `/etc/netns/NS/resolv.conf`
//! bind-mounted over `/etc/resolv.conf`, so the members' system resolvers (Go's in etcd,
//! ferrokv's own and glibc's) ask our server and nothing else. The namespace has only its
//! own loopback, so the whole 127.0.0.0/8 is the test's: the server listens on port 53 of a
//! 127.0.0.x address inside it (the thread serving it enters the namespace with `setns`).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{Error, Result};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The records the server answers from. Names are compared without case and without the
/// trailing dot; a known name asked for another type gets an empty answer (NODATA), an
/// unknown one NXDOMAIN.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    /// (`_service._tcp.domain`, priority, weight, port, target)
    pub srv: Vec<(String, u16, u16, u16, String)>,
    /// (host name, address)
    pub a: Vec<(String, Ipv4Addr)>,
}

impl Zone {
    pub fn srv(mut self, name: &str, port: u16, target: &str) -> Zone {
        self.srv
            .push((name.to_string(), 0, 0, port, target.to_string()));
        self
    }

    pub fn a(mut self, name: &str, addr: Ipv4Addr) -> Zone {
        self.a.push((name.to_string(), addr));
        self
    }
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A network namespace with only a loopback, and its resolv.conf naming `nameserver`.
pub struct IsolatedNetns {
    name: String,
    etc: PathBuf,
}

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

impl IsolatedNetns {
    /// Needs root (`ip netns add`, `/etc/netns`); fails with a clear message without.
    pub fn new(nameserver: Ipv4Addr) -> Result<IsolatedNetns> {
        if Command::new("ip").arg("-V").output().is_err() {
            return Err(Error::Settle(
                "the `ip` tool (iproute2) is missing: run scripts/install-test-deps.sh".into(),
            ));
        }
        let name = format!(
            "fkvdns-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let etc = PathBuf::from("/etc/netns").join(&name);
        let ns = IsolatedNetns { name, etc };
        let made = (|| {
            run(&["ip", "netns", "add", &ns.name])?;
            run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"])?;
            std::fs::create_dir_all(&ns.etc)?;
            std::fs::write(
                ns.etc.join("resolv.conf"),
                format!("nameserver {nameserver}\noptions timeout:1 attempts:1\n"),
            )?;
            Ok::<(), Error>(())
        })();
        made.map_err(|e| {
            Error::Settle(format!(
                "setting up a network namespace for DNS (needs root and CAP_NET_ADMIN): {e}"
            ))
        })?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NS program`: the program sees the namespace's network and resolv.conf.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for IsolatedNetns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// The DNS server, answering until dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Every question asked: (name, type).
    asked: Arc<Mutex<Vec<(String, u16)>>>,
}

impl DnsServer {
    /// Serves `zone` on `addr:53` inside `ns`.
    pub fn start(ns: &IsolatedNetns, addr: Ipv4Addr, zone: Zone) -> Result<DnsServer> {
        let path = format!("/run/netns/{}", ns.name());
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let (stop2, asked2) = (stop.clone(), asked.clone());
        let thread = std::thread::spawn(move || {
            let sock = match enter_and_bind(&path, addr) {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((reply, q)) = answer(&zone, &buf[..n]) {
                    if let Ok(mut a) = asked2.lock() {
                        a.push(q);
                    }
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(DnsServer {
                addr: SocketAddr::new(addr.into(), 53),
                stop,
                thread: Some(thread),
                asked,
            }),
            Ok(Err(e)) => Err(Error::Settle(format!("DNS server in {}: {e}", ns.name()))),
            Err(_) => Err(Error::Settle("DNS server thread did not start".into())),
        }
    }

    pub fn asked(&self) -> Vec<(String, u16)> {
        self.asked.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Moves this thread into the namespace at `path` and binds `addr:53` there.
fn enter_and_bind(path: &str, addr: Ipv4Addr) -> std::result::Result<UdpSocket, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid namespace fd; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    let sock = UdpSocket::bind((addr, 53)).map_err(|e| format!("bind {addr}:53: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    Ok(sock)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn encode_name(out: &mut Vec<u8>, name: &str) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// The reply to one query (uncompressed names), and the question it answered.
fn answer(zone: &Zone, q: &[u8]) -> Option<(Vec<u8>, (String, u16))> {
    if q.len() < 12 || be16(q, 4)? != 1 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos..pos + len)?).into_owned());
        pos += len;
    }
    let qtype = be16(q, pos)?;
    let question_end = pos + 4;
    let name = norm(&labels.join("."));

    let mut answers: Vec<Vec<u8>> = Vec::new();
    let known =
        zone.srv.iter().any(|r| norm(&r.0) == name) || zone.a.iter().any(|r| norm(&r.0) == name);
    let rr = |rtype: u16, rdata: Vec<u8>| {
        let mut r = Vec::new();
        encode_name(&mut r, &name);
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&30u32.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&rdata);
        r
    };
    if qtype == 33 {
        for (_, prio, weight, port, target) in zone.srv.iter().filter(|r| norm(&r.0) == name) {
            let mut d = Vec::new();
            d.extend_from_slice(&prio.to_be_bytes());
            d.extend_from_slice(&weight.to_be_bytes());
            d.extend_from_slice(&port.to_be_bytes());
            encode_name(&mut d, target);
            answers.push(rr(33, d));
        }
    }
    if qtype == 1 {
        for (_, ip) in zone.a.iter().filter(|r| norm(&r.0) == name) {
            answers.push(rr(1, ip.octets().to_vec()));
        }
    }
    let mut reply = Vec::new();
    reply.extend_from_slice(&q[..2]);
    // QR, AA, RD copied, RA; NXDOMAIN for a name we do not know at all.
    let rd = q[2] & 0x01;
    reply.push(0x84 | rd);
    reply.push(if known { 0x80 } else { 0x83 });
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(&q[12..question_end]);
    for a in answers {
        reply.extend_from_slice(&a);
    }
    Some((reply, (name, qtype)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_srv_a_nodata_and_nxdomain() {
        let zone = Zone::default()
            .srv("_etcd-server._tcp.x.test", 2380, "m1.x.test.")
            .a("m1.x.test", Ipv4Addr::new(127, 0, 0, 11));
        let query = |name: &str, t: u16| {
            let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            encode_name(&mut q, name);
            q.extend_from_slice(&t.to_be_bytes());
            q.extend_from_slice(&1u16.to_be_bytes());
            q
        };
        let (r, _) = answer(&zone, &query("_etcd-server._tcp.X.test.", 33)).unwrap();
        assert_eq!((r[3] & 0x0F, be16(&r, 6).unwrap()), (0, 1));
        let (r, _) = answer(&zone, &query("m1.x.test", 1)).unwrap();
        assert_eq!(&r[r.len() - 4..], &[127, 0, 0, 11]);
        let (r, _) = answer(&zone, &query("m1.x.test", 28)).unwrap();
        assert_eq!((r[3] & 0x0F, be16(&r, 6).unwrap()), (0, 0));
        let (r, _) = answer(&zone, &query("nope.x.test", 33)).unwrap();
        assert_eq!(r[3] & 0x0F, 3);
    }
}
