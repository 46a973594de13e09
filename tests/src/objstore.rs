//! Object-storage servers for the backup tests, started as real processes on loopback ports:
//! moto (S3, with IAM authentication on, optionally behind TLS with a test CA), Azurite (Azure
//! Blob) and fake-gcs-server (GCS), each installed by `scripts/build-backup-servers.sh`.
//! A missing install is an error (run `make deps`), never a skip.
//!
//! Buckets and containers are created here with each server's own API (the backup code never
//! creates one: a missing bucket is a configuration error it must report).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::member::{free_port, workspace_root};
use crate::{Error, Result, TlsFiles};

/// Azurite's well-known development account (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// A service account key that tells object_store to send no OAuth token (fake-gcs-server
/// accepts unauthenticated requests).
pub const FAKE_GCS_SERVICE_ACCOUNT: &str =
    r#"{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}"#;

fn fail(msg: impl Into<String>) -> Error {
    Error::Io(std::io::Error::other(msg.into()))
}

/// The install directory of one server (`moto`, `azurite` or `fake-gcs`).
pub fn server_dir(name: &str, expect: &str) -> Result<PathBuf> {
    let script = workspace_root().join("scripts/build-backup-servers.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(name)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(fail(format!(
            "{} {name} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let dir = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default(),
    );
    if !dir.join(expect).exists() {
        return Err(fail(format!(
            "{} {name} printed {}, which holds no {expect}: run `make deps`",
            script.display(),
            dir.display()
        )));
    }
    Ok(dir)
}

/// Which kind of server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3,
    Azure,
    Gcs,
}

/// A running object-storage server. Dropping it kills the process.
pub struct ObjectServer {
    pub kind: Kind,
    /// `http(s)://127.0.0.1:port`, plus `/devstoreaccount1` for Azurite.
    pub endpoint: String,
    pub port: u16,
    /// S3 only: the IAM access key the server accepts.
    pub access_key: String,
    pub secret_key: String,
    /// PEM of the CA of the server's certificate when it serves TLS.
    pub ca_pem: Option<String>,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// The server's data, kept across restarts.
    _data: Option<tempfile::TempDir>,
}

impl Drop for ObjectServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl ObjectServer {
    /// moto on a free port with authentication on: an IAM user with an access key that may do
    /// everything, and `buckets` created. With `tls`, it serves https with `tls`'s server
    /// certificate (for 127.0.0.1), so clients need `tls.ca_cert`.
    pub async fn s3(buckets: &[&str], tls: Option<&TlsFiles>) -> Result<ObjectServer> {
        let dir = server_dir("moto", "bin/python")?;
        let port = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut args = vec![
            "-m".to_string(),
            "moto.server".into(),
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        if let Some(t) = tls {
            args.extend([
                "-c".to_string(),
                t.server_cert.display().to_string(),
                "-k".into(),
                t.server_key.display().to_string(),
            ]);
        }
        // The bootstrap below makes exactly 3 + buckets requests unauthenticated; every
        // request after those must carry a valid signature of a known key.
        let envs = vec![(
            "INITIAL_NO_AUTH_ACTION_COUNT".to_string(),
            (3 + buckets.len()).to_string(),
        )];
        let mut s = ObjectServer::spawn(
            Kind::S3,
            dir.join("bin/python"),
            args,
            envs,
            port,
            format!("{scheme}://127.0.0.1:{port}"),
        )?;
        s.ca_pem = match tls {
            Some(t) => Some(std::fs::read_to_string(&t.ca_cert)?),
            None => None,
        };
        s.wait_port().await?;
        let ca = tls
            .map(|t| t.ca_cert.display().to_string())
            .unwrap_or_default();
        let mut cmd = Command::new(dir.join("bin/python"));
        cmd.arg("-c")
            .arg(MOTO_BOOTSTRAP)
            .arg(&s.endpoint)
            .arg(ca)
            .args(buckets);
        let out = cmd.stdin(Stdio::null()).output()?;
        if !out.status.success() {
            return Err(fail(format!(
                "moto bootstrap failed: {}\nlog:\n{}",
                String::from_utf8_lossy(&out.stderr),
                s.log_text()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut words = text.split_whitespace();
        s.access_key = words.next().unwrap_or_default().to_string();
        s.secret_key = words.next().unwrap_or_default().to_string();
        if s.secret_key.is_empty() {
            return Err(fail(format!("moto bootstrap printed no key: {text:?}")));
        }
        Ok(s)
    }

    /// Azurite's blob service on a free port, persisting under its own directory (so a restart
    /// keeps the data), with `containers` created.
    pub async fn azurite(containers: &[&str]) -> Result<ObjectServer> {
        let dir = server_dir("azurite", "node_modules/.bin/azurite-blob")?;
        let port = free_port();
        let data = tempfile::tempdir()?;
        let args = vec![
            dir.join("node_modules/azurite/dist/src/blob/main.js")
                .display()
                .to_string(),
            "--blobHost".into(),
            "127.0.0.1".into(),
            "--blobPort".into(),
            port.to_string(),
            "--location".into(),
            data.path().display().to_string(),
            "--skipApiVersionCheck".into(),
            "--disableProductStyleUrl".into(),
        ];
        let node = PathBuf::from("node");
        let mut s = ObjectServer::spawn(
            Kind::Azure,
            node,
            args,
            vec![],
            port,
            format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
        )?;
        s._data = Some(data);
        s.wait_port().await?;
        for c in containers {
            s.create_bucket(c)?;
        }
        Ok(s)
    }

    /// fake-gcs-server on a free port, storing objects on disk, with `buckets` created.
    pub async fn gcs(buckets: &[&str]) -> Result<ObjectServer> {
        let dir = server_dir("fake-gcs", "fake-gcs-server")?;
        let port = free_port();
        let data = tempfile::tempdir()?;
        let root = data.path().join("root");
        std::fs::create_dir_all(&root)?;
        let args = vec![
            "-scheme".to_string(),
            "http".into(),
            "-host".into(),
            "127.0.0.1".into(),
            "-port".into(),
            port.to_string(),
            "-backend".into(),
            "filesystem".into(),
            "-filesystem-root".into(),
            root.display().to_string(),
            "-public-host".into(),
            format!("127.0.0.1:{port}"),
            "-external-url".into(),
            format!("http://127.0.0.1:{port}"),
            "-log-level".into(),
            "warn".into(),
        ];
        let mut s = ObjectServer::spawn(
            Kind::Gcs,
            dir.join("fake-gcs-server"),
            args,
            vec![],
            port,
            format!("http://127.0.0.1:{port}"),
        )?;
        s._data = Some(data);
        s.wait_port().await?;
        for b in buckets {
            s.create_bucket(b)?;
        }
        Ok(s)
    }

    fn spawn(
        kind: Kind,
        program: PathBuf,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        port: u16,
        endpoint: String,
    ) -> Result<ObjectServer> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("server.log");
        let mut s = ObjectServer {
            kind,
            endpoint,
            port,
            access_key: String::new(),
            secret_key: String::new(),
            ca_pem: None,
            program,
            args,
            envs,
            child: None,
            log,
            _dir: dir,
            _data: None,
        };
        s.start_process()?;
        Ok(s)
    }

    fn start_process(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|source| Error::Spawn {
                bin: self.program.clone(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_port(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(fail(format!(
                        "{:?} server exited ({status}) before serving; log:\n{}",
                        self.kind,
                        self.log_text()
                    )));
                }
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "{:?} server not listening on {} after 60 s; log:\n{}",
                    self.kind,
                    self.port,
                    self.log_text()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same port and data directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start_process()?;
        self.wait_port().await
    }

    /// fake-gcs-server only: stores an object through its JSON upload API. object_store writes
    /// through GCS's XML API (`PUT /bucket/object`, XML multipart uploads), which
    /// fake-gcs-server does not serve, so GCS tests seed objects this way and exercise
    /// listing, reading, selecting, downloading and deleting through object_store.
    pub fn put_object(&self, bucket: &str, name: &str, data: &[u8]) -> Result<()> {
        if self.kind != Kind::Gcs {
            return Err(fail("put_object is for fake-gcs-server"));
        }
        let encoded: String = name
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let path = format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={encoded}");
        let (status, text) = http(
            self.port,
            "POST",
            &path,
            &[("Content-Type", "application/octet-stream".into())],
            data,
        )?;
        if status / 100 != 2 {
            return Err(fail(format!(
                "uploading {name} to fake-gcs-server: {status} {text}"
            )));
        }
        Ok(())
    }

    /// Creates a bucket (S3: only within the unauthenticated bootstrap, so use `s3(buckets)`).
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        match self.kind {
            Kind::S3 => Err(fail("moto buckets are created by ObjectServer::s3")),
            Kind::Gcs => {
                let body = format!(r#"{{"name":"{name}"}}"#);
                let (status, text) = http(
                    self.port,
                    "POST",
                    "/storage/v1/b?project=test",
                    &[("Content-Type", "application/json".into())],
                    body.as_bytes(),
                )?;
                if status / 100 != 2 {
                    return Err(fail(format!("creating GCS bucket {name}: {status} {text}")));
                }
                Ok(())
            }
            Kind::Azure => {
                let out = Command::new("python3")
                    .arg("-c")
                    .arg(AZURE_CREATE_CONTAINER)
                    .arg(self.port.to_string())
                    .arg(AZURITE_ACCOUNT)
                    .arg(AZURITE_KEY)
                    .arg(name)
                    .stdin(Stdio::null())
                    .output()?;
                if !out.status.success() {
                    return Err(fail(format!(
                        "creating Azurite container {name}: {}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
                Ok(())
            }
        }
    }
}

/// One plain HTTP/1.1 request to 127.0.0.1:`port`; returns the status and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

/// The store's on-disk data for filesystem-backed tests, e.g. to corrupt an object.
pub fn flip_byte(path: &Path, offset: u64) -> Result<()> {
    let mut data = std::fs::read(path)?;
    let i = (offset as usize).min(data.len().saturating_sub(1));
    data[i] ^= 0x40;
    std::fs::write(path, data)?;
    Ok(())
}

/// argv: endpoint, CA file ('' for none), buckets... Prints "<access key> <secret key>".
const MOTO_BOOTSTRAP: &str = r#"
import json, sys, time
import boto3
from botocore.config import Config
ep, ca, buckets = sys.argv[1], sys.argv[2], sys.argv[3:]
kw = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="bootstrap",
          aws_secret_access_key="bootstrap", verify=ca or True,
          config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
iam = boto3.client("iam", **kw)
iam.create_user(UserName="backup")
key = iam.create_access_key(UserName="backup")["AccessKey"]
iam.put_user_policy(UserName="backup", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
s3 = boto3.client("s3", **kw)
for b in buckets:
    s3.create_bucket(Bucket=b)
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;

/// argv: port, account, base64 key, container. Create Container with Shared Key auth.
const AZURE_CREATE_CONTAINER: &str = r#"
import base64, hashlib, hmac, http.client, sys
from email.utils import formatdate
port, account, key, name = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
date = formatdate(usegmt=True)
version = "2021-08-06"
path = "/%s/%s" % (account, name)
canon_headers = "x-ms-date:%s\nx-ms-version:%s\n" % (date, version)
canon_resource = "/%s%s\nrestype:container" % (account, path)
to_sign = "PUT\n" + "\n" * 11 + canon_headers + canon_resource
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
c.request("PUT", path + "?restype=container", body=b"", headers={
    "x-ms-date": date, "x-ms-version": version, "Content-Length": "0",
    "Authorization": "SharedKey %s:%s" % (account, sig)})
r = c.getresponse()
body = r.read().decode()
if r.status // 100 != 2:
    print(r.status, body)
    sys.exit(1)
"#;
