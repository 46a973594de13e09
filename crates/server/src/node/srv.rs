//! DNS SRV discovery (`--discovery-srv DOMAIN`, `--discovery-srv-name NAME`), as etcd 3.6's
//! `embed.Config.GetDNSClusterNames` and `client/pkg/srv.GetCluster` do it:
//!
//! - look up `_etcd-server-ssl[-NAME]._tcp.DOMAIN` (https peers) and
//!   `_etcd-server[-NAME]._tcp.DOMAIN` (http peers) and combine what both found;
//! - resolve every SRV target and every advertised peer URL of this member to an address; the
//!   target whose address is one of ours is this member (named `--name`), the others are named
//!   `0`, `1`, ... in SRV order (they publish their real names once they run);
//! - a member not among the targets stops with etcd's `cannot find local etcd member "NAME" in
//!   SRV records`.
//!
//! SRV records are looked up with a small DNS client of our own that reads the system resolver
//! configuration (`/etc/resolv.conf`: `nameserver`, `search`, `domain`, `options ndots: timeout:
//! attempts:`) the way Go's resolver does, so the same names are tried in the same order and
//! failures read as Go's (`lookup _etcd-server._tcp.DOMAIN on 127.0.0.53:53: no such host`).
//! Host names (targets, our own URLs) go through the system's `getaddrinfo`, which honours
//! `/etc/hosts` and `/etc/resolv.conf` as Go's resolver does on a glibc system.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const RESOLV_CONF: &str = "/etc/resolv.conf";
const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;

/// One SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// With its trailing dot, as Go's `net.SRV.Target`.
    pub target: String,
}

/// The parts of resolv.conf Go's resolver uses (`dnsConfig`), with Go's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResolvConf {
    pub servers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
    pub timeout: Duration,
    pub attempts: u32,
}

impl ResolvConf {
    /// `/etc/resolv.conf`, or Go's defaults when it cannot be read.
    pub fn system() -> ResolvConf {
        let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        ResolvConf::parse(&text, hostname.trim())
    }

    /// Go's `dnsReadConfig`: up to 3 name servers on port 53 (default the loopback ones), the
    /// last `search`/`domain` line wins, and without one the search list is the domain of the
    /// host name.
    pub fn parse(text: &str, hostname: &str) -> ResolvConf {
        let mut conf = ResolvConf {
            servers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        };
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        if conf.servers.len() < 3 {
                            conf.servers.push(SocketAddr::new(ip, 53));
                        }
                    }
                }
                Some("domain") => {
                    if let Some(d) = words.next() {
                        conf.search = vec![ensure_rooted(d)];
                    }
                }
                Some("search") => {
                    conf.search = words
                        .filter(|w| *w != "." && !w.is_empty())
                        .map(ensure_rooted)
                        .collect();
                }
                Some("options") => {
                    for opt in words {
                        if let Some(n) = opt.strip_prefix("ndots:") {
                            conf.ndots = n.parse::<usize>().unwrap_or(1).min(15);
                        } else if let Some(n) = opt.strip_prefix("timeout:") {
                            conf.timeout =
                                Duration::from_secs(n.parse::<u64>().unwrap_or(5).max(1));
                        } else if let Some(n) = opt.strip_prefix("attempts:") {
                            conf.attempts = n.parse::<u32>().unwrap_or(2).max(1);
                        }
                    }
                }
                _ => {}
            }
        }
        if conf.servers.is_empty() {
            conf.servers = vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 53),
            ];
        }
        if conf.search.is_empty() {
            if let Some((_, domain)) = hostname.split_once('.') {
                if !domain.is_empty() {
                    conf.search = vec![ensure_rooted(domain)];
                }
            }
        }
        conf
    }

    /// Go's `dnsConfig.nameList`: the fully qualified names to try for `name`, in order.
    pub fn name_list(&self, name: &str) -> Vec<String> {
        if name.ends_with('.') {
            return vec![name.to_string()];
        }
        let has_ndots = name.matches('.').count() >= self.ndots;
        let rooted = format!("{name}.");
        let mut names = Vec::new();
        if has_ndots {
            names.push(rooted.clone());
        }
        for suffix in &self.search {
            names.push(format!("{rooted}{suffix}"));
        }
        if !has_ndots {
            names.push(rooted);
        }
        names
    }
}

fn ensure_rooted(s: &str) -> String {
    if s.ends_with('.') {
        s.to_string()
    } else {
        format!("{s}.")
    }
}

/// Go's `net.DNSError` text: `lookup NAME on SERVER: ERR`.
fn dns_error(name: &str, server: Option<SocketAddr>, err: &str) -> String {
    match server {
        Some(s) => format!("lookup {name} on {s}: {err}"),
        None => format!("lookup {name}: {err}"),
    }
}

/// What one exchange with one server gave.
enum Answer {
    Records(Vec<Srv>),
    /// NXDOMAIN, or no SRV answer: Go's "no such host", and another server will not help.
    NoSuchHost,
    /// Anything else: try the next server (Go's `lastErr`).
    Failed(String),
}

/// `net.LookupSRV(service, "tcp", domain)`: the SRV records of `_service._tcp.domain`, sorted by
/// priority and shuffled by weight as Go sorts them.
pub(super) async fn lookup_srv(
    conf: &ResolvConf,
    service: &str,
    domain: &str,
) -> Result<Vec<Srv>, String> {
    let target = format!("_{service}._tcp.{domain}");
    let mut last: Option<String> = None;
    let mut last_server = None;
    for fqdn in conf.name_list(&target) {
        match try_one_name(conf, &fqdn).await {
            Ok(mut records) => {
                sort_by_priority_weight(&mut records);
                return Ok(records);
            }
            Err((server, err)) => {
                last_server = server;
                last = Some(err);
            }
        }
    }
    // Go reports the name as asked, not the last candidate tried.
    let err = last.unwrap_or_else(|| "no such host".to_string());
    Err(dns_error(&target, last_server, &err))
}

/// Go's `tryOneName`: every server, `attempts` rounds; a "no such host" ends it at once.
async fn try_one_name(
    conf: &ResolvConf,
    fqdn: &str,
) -> Result<Vec<Srv>, (Option<SocketAddr>, String)> {
    let query = encode_query(fqdn, TYPE_SRV).map_err(|e| (None, e))?;
    let mut last = (None, "no such host".to_string());
    for _ in 0..conf.attempts {
        for server in &conf.servers {
            match exchange(*server, &query, conf.timeout).await {
                Ok(reply) => match parse_srv_reply(&reply, query_id(&query)) {
                    Answer::Records(r) => return Ok(r),
                    Answer::NoSuchHost => return Err((Some(*server), "no such host".into())),
                    Answer::Failed(e) => last = (Some(*server), e),
                },
                Err(e) => last = (Some(*server), e),
            }
        }
    }
    Err(last)
}

fn query_id(query: &[u8]) -> u16 {
    u16::from_be_bytes([query[0], query[1]])
}

/// A standard recursive query for `fqdn` of `qtype`, class IN, with a random id.
fn encode_query(fqdn: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let id: u16 = rand::random();
    let mut q = Vec::with_capacity(fqdn.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    for label in fqdn.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("no such host".into());
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

/// UDP first; a truncated reply is asked again over TCP, as Go does.
async fn exchange(server: SocketAddr, query: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    let udp = async {
        let bind: SocketAddr = if server.is_ipv4() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        } else {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
        };
        let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
        sock.connect(server).await.map_err(|e| e.to_string())?;
        sock.send(query).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1232];
        loop {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // A reply to another query (a late one) is skipped, as Go's dnsPacketRoundTrip.
            if n >= 12 && buf[..2] == query[..2] {
                buf.truncate(n);
                return Ok::<Vec<u8>, String>(buf);
            }
        }
    };
    let reply = tokio::time::timeout(timeout, udp)
        .await
        .map_err(|_| "i/o timeout".to_string())??;
    if reply[2] & 0x02 == 0 {
        return Ok(reply);
    }
    let tcp = async {
        let mut s = TcpStream::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        let len = u16::try_from(query.len()).map_err(|e| e.to_string())?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        s.write_all(&framed).await.map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<Vec<u8>, String>(buf)
    };
    tokio::time::timeout(timeout, tcp)
        .await
        .map_err(|_| "i/o timeout".to_string())?
}

/// Reads a possibly compressed name at `*pos`, leaving `*pos` after it; with a trailing dot.
fn read_name(msg: &[u8], pos: &mut usize) -> Option<String> {
    let mut out = String::new();
    let mut at = *pos;
    let mut jumped = false;
    // Bounds the pointer chain, so a looping message cannot loop us.
    for _ in 0..128 {
        let len = *msg.get(at)? as usize;
        if len & 0xC0 == 0xC0 {
            let off = ((len & 0x3F) << 8) | *msg.get(at + 1)? as usize;
            if !jumped {
                *pos = at + 2;
            }
            jumped = true;
            at = off;
            continue;
        }
        if len == 0 {
            if !jumped {
                *pos = at + 1;
            }
            if out.is_empty() {
                out.push('.');
            }
            return Some(out);
        }
        let label = msg.get(at + 1..at + 1 + len)?;
        out.push_str(&String::from_utf8_lossy(label));
        out.push('.');
        at += 1 + len;
    }
    None
}

fn be16(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// Go's `checkHeader` + `skipToAnswer` + the SRV loop of `goLookupSRV`.
fn parse_srv_reply(msg: &[u8], id: u16) -> Answer {
    let parsed = (|| {
        if be16(msg, 0)? != id {
            return Some(Answer::Failed("server misbehaving".into()));
        }
        let flags = be16(msg, 2)?;
        let rcode = flags & 0x000F;
        if rcode == 3 {
            return Some(Answer::NoSuchHost);
        }
        if rcode != 0 {
            return Some(Answer::Failed("server misbehaving".into()));
        }
        if flags & 0x8000 == 0 {
            return Some(Answer::Failed("server misbehaving".into()));
        }
        let qd = be16(msg, 4)? as usize;
        let an = be16(msg, 6)? as usize;
        let mut pos = 12;
        for _ in 0..qd {
            read_name(msg, &mut pos)?;
            pos += 4;
        }
        let mut records = Vec::new();
        for _ in 0..an {
            read_name(msg, &mut pos)?;
            let rtype = be16(msg, pos)?;
            let rdlen = be16(msg, pos + 8)? as usize;
            let rdata = pos + 10;
            if rtype == TYPE_SRV {
                let mut tpos = rdata + 6;
                let target = read_name(msg, &mut tpos)?;
                records.push(Srv {
                    priority: be16(msg, rdata)?,
                    weight: be16(msg, rdata + 2)?,
                    port: be16(msg, rdata + 4)?,
                    target,
                });
            }
            pos = rdata + rdlen;
        }
        if records.is_empty() {
            return Some(Answer::NoSuchHost);
        }
        Some(Answer::Records(records))
    })();
    parsed.unwrap_or_else(|| Answer::Failed("cannot unmarshal DNS message".into()))
}

/// Go's `byPriorityWeight.sort`: by priority, and within one priority an order drawn at
/// random with chances by weight (RFC 2782).
fn sort_by_priority_weight(records: &mut [Srv]) {
    records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    let mut start = 0;
    while start < records.len() {
        let end = records[start..]
            .iter()
            .position(|r| r.priority != records[start].priority)
            .map_or(records.len(), |p| start + p);
        shuffle_by_weight(&mut records[start..end]);
        start = end;
    }
}

fn shuffle_by_weight(mut recs: &mut [Srv]) {
    let mut sum: u32 = recs.iter().map(|r| u32::from(r.weight)).sum();
    while sum > 0 && recs.len() > 1 {
        let mut s = 0;
        let n = rand::random_range(0..sum);
        for i in 0..recs.len() {
            s += u32::from(recs[i].weight);
            if s > n {
                if i > 0 {
                    recs.swap(0, i);
                }
                break;
            }
        }
        sum -= u32::from(recs[0].weight);
        recs = &mut recs[1..];
    }
}

/// Go's `net.ResolveTCPAddr("tcp", hostport)`: the first IPv4 address (else the first one).
async fn resolve_tcp(hostport: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("lookup {hostport}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("lookup {hostport}: no such host"))
}

/// `host:port` of a URL as Go's `url.Host` (brackets around an IPv6 literal); Go refuses a
/// host without a port here.
fn url_host(u: &url::Url) -> Result<String, String> {
    let host = match u.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    // The url crate drops a port equal to the scheme's default, which Go keeps; an
    // explicit `:80` must still resolve, so the default stands in for it.
    match u.port_or_known_default() {
        Some(p) => Ok(format!("{host}:{p}")),
        None => Err(format!("address {host}: missing port in address")),
    }
}

/// etcd's `srv.GetCluster(scheme, service, name, dns, apurls)`: `name=scheme://target:port`
/// for every SRV target of `_service._tcp.dns`.
async fn get_cluster(
    conf: &ResolvConf,
    scheme: &str,
    service: &str,
    name: &str,
    dns: &str,
    apurls: &[url::Url],
) -> Result<Vec<String>, String> {
    let mut ours: Vec<(SocketAddr, &url::Url)> = Vec::new();
    for u in apurls {
        ours.push((resolve_tcp(&url_host(u)?).await?, u));
    }
    let records = lookup_srv(conf, service, dns)
        .await
        .map_err(|e| format!("error querying DNS SRV records for _{service} {e}"))?;
    let mut temp_name = 0;
    let mut parts = Vec::new();
    let mut err = None;
    for srv in records {
        let short = srv.target.trim_end_matches('.');
        let url_host = if short.contains(':') {
            format!("[{short}]:{}", srv.port)
        } else {
            format!("{short}:{}", srv.port)
        };
        let addr = match resolve_tcp(&format!("{}:{}", srv.target, srv.port)).await {
            Ok(a) => a,
            Err(e) => {
                err = Some(e);
                continue;
            }
        };
        let own = ours.iter().find(|(a, _)| *a == addr).map(|(_, u)| *u);
        let n = match own {
            Some(_) => name.to_string(),
            None => {
                temp_name += 1;
                (temp_name - 1).to_string()
            }
        };
        match own {
            Some(u) if u.scheme() != scheme => {
                err = Some(format!(
                    "bootstrap at {scheme}://{url_host} from DNS for {service} has scheme mismatch with expected peer {}",
                    crate::apply::membership::url_string(u)
                ));
            }
            _ => parts.push(format!("{n}={scheme}://{url_host}")),
        }
    }
    if parts.is_empty() {
        // Go wraps the last error, or nil (an empty list, no error) when there was none.
        if let Some(e) = err {
            return Err(format!("error querying DNS SRV records for _{service} {e}"));
        }
    }
    Ok(parts)
}

/// etcd's `GetDNSClusterNames`: the https and the http services combined; the error joins
/// both lookups' errors (Go's `errors.Join`: one per line). Discovery failed only when the
/// list is empty.
pub(super) async fn dns_cluster_names(
    name: &str,
    domain: &str,
    service_name: Option<&str>,
    apurls: &[url::Url],
) -> (Vec<String>, Option<String>) {
    let conf = ResolvConf::system();
    let suffix = service_name.map(|s| format!("-{s}")).unwrap_or_default();
    let ssl_service = format!("etcd-server-ssl{suffix}");
    let http_service = format!("etcd-server{suffix}");
    let advertise: Vec<String> = apurls
        .iter()
        .map(crate::apply::membership::url_string)
        .collect();

    let (mut found, ssl_err) =
        match get_cluster(&conf, "https", &ssl_service, name, domain, apurls).await {
            Ok(v) => (v, None),
            Err(e) => (Vec::new(), Some(e)),
        };
    tracing::info!(
        service_scheme = "https",
        service_name = %ssl_service,
        server_name = name,
        discovery_srv = domain,
        advertise_peer_urls = ?advertise,
        found_cluster = ?found,
        error = ssl_err.as_deref().unwrap_or(""),
        "get cluster for etcd-server-ssl SRV"
    );
    let http_err = match get_cluster(&conf, "http", &http_service, name, domain, apurls).await {
        Ok(v) => {
            found.extend(v);
            None
        }
        Err(e) => Some(e),
    };
    tracing::info!(
        service_scheme = "http",
        service_name = %http_service,
        server_name = name,
        discovery_srv = domain,
        advertise_peer_urls = ?advertise,
        found_cluster = ?found,
        error = http_err.as_deref().unwrap_or(""),
        "get cluster for etcd-server SRV"
    );
    let joined: Vec<String> = [ssl_err, http_err].into_iter().flatten().collect();
    let err = if joined.is_empty() {
        None
    } else {
        Some(joined.join("\n"))
    };
    (found, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_reads_as_gos() {
        let c = ResolvConf::parse(
            "# c\nnameserver 127.0.0.9\nnameserver ::1\nsearch a.test b.test\noptions ndots:2 timeout:1 attempts:3\n",
            "host",
        );
        assert_eq!(c.servers[0].to_string(), "127.0.0.9:53");
        assert_eq!(c.servers[1].to_string(), "[::1]:53");
        assert_eq!(c.search, vec!["a.test.", "b.test."]);
        assert_eq!(
            (c.ndots, c.timeout, c.attempts),
            (2, Duration::from_secs(1), 3)
        );
        // ndots 2: "_s._tcp" (1 dot) tries the search list first.
        assert_eq!(
            c.name_list("_s._tcp"),
            vec!["_s._tcp.a.test.", "_s._tcp.b.test.", "_s._tcp."]
        );
        let d = ResolvConf::parse("", "box.example.org");
        assert_eq!(d.servers.len(), 2);
        assert_eq!(d.search, vec!["example.org."]);
        assert_eq!(
            d.name_list("_e._tcp.x.test"),
            vec!["_e._tcp.x.test.", "_e._tcp.x.test.example.org."]
        );
        assert_eq!(d.name_list("x.test."), vec!["x.test."]);
    }

    #[test]
    fn srv_replies_parse_with_compression() {
        let q = encode_query("_etcd-server._tcp.x.test.", TYPE_SRV).unwrap();
        let mut r = q.clone();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 1; // one answer
        r.extend_from_slice(&[0xC0, 12, 0, 33, 0, 1, 0, 0, 0, 60]);
        let mut rdata = vec![0, 1, 0, 5, 0x09, 0x4C];
        rdata.extend_from_slice(&[2, b'm', b'1', 0xC0, 30]); // "m1." + "x.test."
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&rdata);
        let name_at = 12 + 1 + "_etcd-server".len() + 1 + "_tcp".len();
        assert_eq!(name_at, 30);
        match parse_srv_reply(&r, query_id(&q)) {
            Answer::Records(v) => assert_eq!(
                v,
                vec![Srv {
                    priority: 1,
                    weight: 5,
                    port: 2380,
                    target: "m1.x.test.".into()
                }]
            ),
            _ => panic!("not parsed"),
        }
        let mut nx = q.clone();
        nx[2] = 0x81;
        nx[3] = 0x83;
        assert!(matches!(
            parse_srv_reply(&nx, query_id(&q)),
            Answer::NoSuchHost
        ));
    }

    #[test]
    fn errors_read_as_gos() {
        let s: SocketAddr = "127.0.0.2:53".parse().unwrap();
        assert_eq!(
            dns_error("_etcd-server._tcp.x.test", Some(s), "no such host"),
            "lookup _etcd-server._tcp.x.test on 127.0.0.2:53: no such host"
        );
        let u = url::Url::parse("unix://h.test").unwrap();
        assert_eq!(
            url_host(&u).unwrap_err(),
            "address h.test: missing port in address"
        );
    }

    #[test]
    fn zero_weights_keep_the_order() {
        let r = |p, t: &str| Srv {
            priority: p,
            weight: 0,
            port: 1,
            target: t.into(),
        };
        let mut v = vec![r(2, "c."), r(1, "a."), r(1, "b.")];
        sort_by_priority_weight(&mut v);
        assert_eq!(v[2].target, "c.");
    }
}
