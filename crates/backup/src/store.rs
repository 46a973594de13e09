//! Where backups go: a URL plus the keys of a credentials Secret, opened as an object_store.
//!
//! | scheme | URL | Secret keys (all values are the key's content) |
//! |---|---|---|
//! | S3 and S3-compatible | `s3://bucket/prefix` | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`, `AWS_REGION` (default `us-east-1`), `AWS_ENDPOINT_URL` (e.g. `https://minio.example:9000`), `AWS_CA_BUNDLE` (PEM), `AWS_S3_FORCE_PATH_STYLE` (`true`/`false`) |
//! | Google Cloud Storage | `gs://bucket/prefix` | `GOOGLE_SERVICE_ACCOUNT_JSON` (the service account key file), optional `GOOGLE_STORAGE_ENDPOINT` (an emulator's base URL) |
//! | Azure Blob Storage | `az://container/prefix` | `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, optional `AZURE_STORAGE_ENDPOINT` (e.g. Azurite's `http://127.0.0.1:10000/devstoreaccount1`) |
//! | a mounted volume | `file:///dir` | none |
//!
//! [`StoreConfig::from_env`] reads the same names from the process environment (for the
//! CLI); there `AWS_CA_BUNDLE` and `GOOGLE_APPLICATION_CREDENTIALS` may also name a file.
//! The explicit fields of [`StoreConfig`] (endpoint, CA, path style, region) win over the
//! Secret's keys, so a cluster spec can set them without touching the Secret.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore};
use url::Url;

use crate::error::{Error, Result};

pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
pub const AWS_REGION: &str = "AWS_REGION";
pub const AWS_ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
pub const AWS_CA_BUNDLE: &str = "AWS_CA_BUNDLE";
pub const AWS_S3_FORCE_PATH_STYLE: &str = "AWS_S3_FORCE_PATH_STYLE";
pub const GOOGLE_SERVICE_ACCOUNT_JSON: &str = "GOOGLE_SERVICE_ACCOUNT_JSON";
pub const GOOGLE_APPLICATION_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";
pub const GOOGLE_STORAGE_ENDPOINT: &str = "GOOGLE_STORAGE_ENDPOINT";
pub const AZURE_STORAGE_ACCOUNT_NAME: &str = "AZURE_STORAGE_ACCOUNT_NAME";
pub const AZURE_STORAGE_ACCOUNT_KEY: &str = "AZURE_STORAGE_ACCOUNT_KEY";
pub const AZURE_STORAGE_ENDPOINT: &str = "AZURE_STORAGE_ENDPOINT";

/// Every credentials key this crate reads, for documentation and for `from_env`.
pub const CREDENTIAL_KEYS: &[&str] = &[
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
    AWS_REGION,
    AWS_ENDPOINT_URL,
    AWS_CA_BUNDLE,
    AWS_S3_FORCE_PATH_STYLE,
    GOOGLE_SERVICE_ACCOUNT_JSON,
    GOOGLE_STORAGE_ENDPOINT,
    AZURE_STORAGE_ACCOUNT_NAME,
    AZURE_STORAGE_ACCOUNT_KEY,
    AZURE_STORAGE_ENDPOINT,
];

/// How to reach a backup destination.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoreConfig {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or `file:///dir`.
    pub url: String,
    /// The keys of the credentials Secret (see the module docs for the names).
    pub credentials: BTreeMap<String, String>,
    /// An S3-compatible / emulator endpoint; overrides the Secret's endpoint key.
    pub endpoint: Option<String>,
    /// PEM of the CA that signed the endpoint's certificate (added to the system roots).
    pub ca_pem: Option<String>,
    /// S3 path-style addressing (`https://endpoint/bucket/key`), as most S3-compatible servers
    /// need; otherwise virtual-hosted style (`https://bucket.endpoint/key`).
    pub path_style: bool,
    pub region: Option<String>,
}

// Secrets must not reach logs through `{:?}`.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .field("endpoint", &self.endpoint)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("path_style", &self.path_style)
            .field("region", &self.region)
            .finish()
    }
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn is_pem(v: &str) -> bool {
    v.trim_start().starts_with("-----BEGIN")
}

impl StoreConfig {
    /// A config for `url` with no credentials (a `file://` URL needs none).
    pub fn new(url: impl Into<String>) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    /// The CLI's config: the URL given, credentials from the same names in the environment.
    /// `AWS_CA_BUNDLE` and `GOOGLE_APPLICATION_CREDENTIALS` may be paths (as the cloud CLIs
    /// take them); an endpoint without `AWS_S3_FORCE_PATH_STYLE` means path style, which is
    /// what S3-compatible servers expect.
    pub fn from_env(url: impl Into<String>) -> Result<StoreConfig> {
        Self::from_lookup(url, |k| std::env::var(k).ok())
    }

    /// [`StoreConfig::from_env`] with the environment passed in (for tests).
    pub fn from_lookup(
        url: impl Into<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<StoreConfig> {
        let mut credentials = BTreeMap::new();
        for key in CREDENTIAL_KEYS {
            if let Some(v) = env(key).filter(|v| !v.is_empty()) {
                credentials.insert(key.to_string(), v);
            }
        }
        if let Some(ca) = credentials.get(AWS_CA_BUNDLE).cloned() {
            if !is_pem(&ca) {
                let pem = std::fs::read_to_string(&ca).map_err(|e| Error::io(&ca, e))?;
                credentials.insert(AWS_CA_BUNDLE.into(), pem);
            }
        }
        if !credentials.contains_key(GOOGLE_SERVICE_ACCOUNT_JSON) {
            if let Some(path) = env(GOOGLE_APPLICATION_CREDENTIALS).filter(|v| !v.is_empty()) {
                let json = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                credentials.insert(GOOGLE_SERVICE_ACCOUNT_JSON.into(), json);
            }
        }
        let path_style = match env(AWS_S3_FORCE_PATH_STYLE) {
            Some(v) => truthy(&v),
            None => credentials.contains_key(AWS_ENDPOINT_URL),
        };
        Ok(StoreConfig {
            url: url.into(),
            credentials,
            path_style,
            ..Default::default()
        })
    }

    fn cred(&self, key: &str) -> Option<&str> {
        self.credentials
            .get(key)
            .map(|v| v.trim_end_matches(['\n', '\r']))
            .filter(|v| !v.is_empty())
    }

    fn required(&self, key: &str) -> Result<&str> {
        self.cred(key).ok_or_else(|| {
            Error::Config(format!(
                "{} needs the credentials key {key}",
                redact(&self.url)
            ))
        })
    }
}

/// A URL as it may appear in messages: never with a userinfo part.
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// The kinds of store, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    S3,
    Gcs,
    Azure,
    File,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::S3 => "s3",
            Scheme::Gcs => "gs",
            Scheme::Azure => "az",
            Scheme::File => "file",
        }
    }
}

/// A parsed backup URL: the scheme, the bucket/container (for `file://`, the directory) and
/// the key prefix inside it (no leading or trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub scheme: Scheme,
    pub bucket: String,
    pub prefix: String,
}

impl Location {
    /// Parses `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or
    /// `file:///dir`. For `file://` the whole path is the directory and the prefix is empty.
    pub fn parse(url: &str) -> Result<Location> {
        let bad = |reason: &str| Error::BadUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let scheme = match parsed.scheme() {
            "s3" | "s3a" => Scheme::S3,
            "gs" | "gcs" => Scheme::Gcs,
            "az" | "azure" | "abfs" => Scheme::Azure,
            "file" => Scheme::File,
            other => {
                return Err(bad(&format!(
                    "unknown scheme {other:?}: use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///dir"
                )))
            }
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad(
                "credentials do not belong in the URL: put them in the credentials Secret or the environment",
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("a backup URL has no query or fragment"));
        }
        let path = percent_decode(parsed.path()).map_err(|r| bad(&r))?;
        if scheme == Scheme::File {
            if parsed
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(bad("file:// URLs name a local directory: file:///dir"));
            }
            let dir = path.trim_end_matches('/');
            if !dir.starts_with('/') || dir.is_empty() {
                return Err(bad("file:// needs an absolute directory: file:///dir"));
            }
            return Ok(Location {
                scheme,
                bucket: dir.to_string(),
                prefix: String::new(),
            });
        }
        let bucket = parsed.host_str().unwrap_or_default().to_string();
        if bucket.is_empty() {
            return Err(bad("no bucket/container: expected scheme://bucket/prefix"));
        }
        let prefix = path.trim_matches('/').to_string();
        if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
            return Err(bad(
                "the prefix may not contain empty, '.' or '..' segments",
            ));
        }
        Ok(Location {
            scheme,
            bucket,
            prefix,
        })
    }

    /// The URL of the store root (no prefix).
    pub fn root_url(&self) -> String {
        match self.scheme {
            Scheme::File => format!("file://{}", self.bucket),
            s => format!("{}://{}", s.as_str(), self.bucket),
        }
    }

    /// The URL of `key` in this store.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{}", self.root_url(), key)
    }
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("path {s:?} is not UTF-8"))
}

/// An opened backup destination: a store plus the key prefix under which backups live.
#[derive(Clone)]
pub struct Destination {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) location: Location,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Destination({})", self.url())
    }
}

/// object_store reaches the network through reqwest, which here is built without a compiled-in
/// crypto provider (see the workspace Cargo.toml): install ring as the process default once.
/// Everything else in the workspace already uses ring, so this changes nothing for them.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Destination {
    /// Opens the store a config names. Nothing is contacted yet: see [`Destination::check`].
    pub fn open(cfg: &StoreConfig) -> Result<Destination> {
        install_crypto_provider();
        let location = Location::parse(&cfg.url)?;
        let store: Arc<dyn ObjectStore> = match location.scheme {
            Scheme::File => {
                std::fs::create_dir_all(&location.bucket)
                    .map_err(|e| Error::io(&location.bucket, e))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&location.bucket)
                        .map_err(|e| Error::store("opening", &cfg.url, e))?,
                )
            }
            Scheme::S3 => Arc::new(open_s3(cfg, &location)?),
            Scheme::Gcs => Arc::new(open_gcs(cfg, &location)?),
            Scheme::Azure => Arc::new(open_azure(cfg, &location)?),
        };
        Ok(Destination { store, location })
    }

    /// The destination's URL (`scheme://bucket/prefix`).
    pub fn url(&self) -> String {
        if self.location.prefix.is_empty() {
            self.location.root_url()
        } else {
            self.location.url_of(&self.location.prefix)
        }
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The full URL of an object key of this store.
    pub fn url_of(&self, key: &str) -> String {
        self.location.url_of(key)
    }

    /// One listing under the prefix: proves the endpoint answers, the credentials are accepted
    /// and the bucket exists, with the store's own words in the error otherwise.
    pub async fn check(&self) -> Result<()> {
        let prefix = self.prefix_path(None);
        self.store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map(|_| ())
            .map_err(|e| match Error::store("listing", &self.url(), e) {
                // The prefix not existing yet is fine; the bucket not existing is not, and
                // object stores report that as an error of its own, not as NotFound.
                Error::NotFound(_) => Error::NotFound(format!("bucket of {}", self.url())),
                other => other,
            })
    }

    /// `<prefix>/<rest>` as an object path.
    pub(crate) fn prefix_path(&self, rest: Option<&str>) -> Option<ObjPath> {
        let mut parts: Vec<&str> = Vec::new();
        if !self.location.prefix.is_empty() {
            parts.push(&self.location.prefix);
        }
        if let Some(r) = rest.filter(|r| !r.is_empty()) {
            parts.push(r);
        }
        if parts.is_empty() {
            None
        } else {
            Some(ObjPath::from(parts.join("/")))
        }
    }
}

fn client_options(
    cfg: &StoreConfig,
    endpoint: Option<&str>,
    ca: Option<&str>,
) -> Result<ClientOptions> {
    let mut opts = ClientOptions::new()
        .with_connect_timeout(std::time::Duration::from_secs(10))
        // Parts are 5 MiB or more; a slow link gets minutes for each.
        .with_timeout(std::time::Duration::from_secs(300));
    if endpoint.is_some_and(|e| e.starts_with("http://")) {
        opts = opts.with_allow_http(true);
    }
    if let Some(pem) = ca {
        let cert = object_store::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| Error::Config(format!("the CA of {}: {e}", redact(&cfg.url))))?;
        opts = opts.with_root_certificate(cert);
    }
    Ok(opts)
}

fn retry() -> object_store::RetryConfig {
    // Few, quick retries: a backup that cannot reach its store should say so within seconds,
    // and the next scheduled attempt is the real retry.
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    }
}

fn open_s3(cfg: &StoreConfig, loc: &Location) -> Result<object_store::aws::AmazonS3> {
    use object_store::aws::AmazonS3Builder;
    let endpoint = cfg
        .endpoint
        .as_deref()
        .or_else(|| cfg.cred(AWS_ENDPOINT_URL));
    let ca = cfg.ca_pem.as_deref().or_else(|| cfg.cred(AWS_CA_BUNDLE));
    let path_style = cfg.path_style || cfg.cred(AWS_S3_FORCE_PATH_STYLE).is_some_and(truthy);
    let region = cfg
        .region
        .as_deref()
        .or_else(|| cfg.cred(AWS_REGION))
        .unwrap_or("us-east-1");
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&loc.bucket)
        .with_region(region)
        .with_access_key_id(cfg.required(AWS_ACCESS_KEY_ID)?)
        .with_secret_access_key(cfg.required(AWS_SECRET_ACCESS_KEY)?)
        .with_virtual_hosted_style_request(!path_style)
        .with_retry(retry())
        .with_client_options(client_options(cfg, endpoint, ca)?);
    if let Some(t) = cfg.cred(AWS_SESSION_TOKEN) {
        b = b.with_token(t);
    }
    if let Some(e) = endpoint {
        b = b.with_endpoint(e);
        if e.starts_with("http://") {
            b = b.with_allow_http(true);
        }
    }
    b.build()
        .map_err(|e| Error::Config(format!("{}: {e}", redact(&cfg.url))))
}

fn open_gcs(cfg: &StoreConfig, loc: &Location) -> Result<object_store::gcp::GoogleCloudStorage> {
    use object_store::gcp::GoogleCloudStorageBuilder;
    let endpoint = cfg
        .endpoint
        .as_deref()
        .or_else(|| cfg.cred(GOOGLE_STORAGE_ENDPOINT));
    let ca = cfg.ca_pem.as_deref();
    let mut b = GoogleCloudStorageBuilder::new()
        .with_bucket_name(&loc.bucket)
        .with_service_account_key(cfg.required(GOOGLE_SERVICE_ACCOUNT_JSON)?)
        .with_retry(retry())
        .with_client_options(client_options(cfg, endpoint, ca)?);
    if let Some(e) = endpoint {
        b = b.with_base_url(e);
    }
    b.build()
        .map_err(|e| Error::Config(format!("{}: {e}", redact(&cfg.url))))
}

fn open_azure(cfg: &StoreConfig, loc: &Location) -> Result<object_store::azure::MicrosoftAzure> {
    use object_store::azure::MicrosoftAzureBuilder;
    let endpoint = cfg
        .endpoint
        .as_deref()
        .or_else(|| cfg.cred(AZURE_STORAGE_ENDPOINT));
    let ca = cfg.ca_pem.as_deref();
    let mut b = MicrosoftAzureBuilder::new()
        .with_container_name(&loc.bucket)
        .with_account(cfg.required(AZURE_STORAGE_ACCOUNT_NAME)?)
        .with_access_key(cfg.required(AZURE_STORAGE_ACCOUNT_KEY)?)
        .with_retry(retry())
        .with_client_options(client_options(cfg, endpoint, ca)?);
    if let Some(e) = endpoint {
        b = b.with_endpoint(e.to_string());
        if e.starts_with("http://") {
            b = b.with_allow_http(true);
        }
    }
    b.build()
        .map_err(|e| Error::Config(format!("{}: {e}", redact(&cfg.url))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        let l = Location::parse("s3://b/a/p/").unwrap();
        assert_eq!(
            (l.scheme, l.bucket.as_str(), l.prefix.as_str()),
            (Scheme::S3, "b", "a/p")
        );
        let l = Location::parse("gs://b").unwrap();
        assert_eq!((l.scheme, l.prefix.as_str()), (Scheme::Gcs, ""));
        let l = Location::parse("az://c/x").unwrap();
        assert_eq!((l.scheme, l.bucket.as_str()), (Scheme::Azure, "c"));
        let l = Location::parse("file:///var/backups/").unwrap();
        assert_eq!(
            (l.scheme, l.bucket.as_str()),
            (Scheme::File, "/var/backups")
        );
        assert_eq!(l.root_url(), "file:///var/backups");
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, want) in [
            ("http://x/y", "unknown scheme"),
            ("s3:///p", "no bucket"),
            ("s3://AK:SK@b/p", "credentials do not belong"),
            ("file://host/dir", "local directory"),
            ("s3://b/a//c", "empty"),
            ("nonsense", "relative URL"),
        ] {
            let e = match Location::parse(url) {
                Ok(l) => panic!("{url} parsed: {l:?}"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("SK"), "{e}");
        }
    }

    #[test]
    fn from_env_defaults_to_path_style_with_an_endpoint() {
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("a".to_string()),
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:9000".to_string()),
            _ => None,
        };
        let c = StoreConfig::from_lookup("s3://b", env).unwrap();
        assert!(c.path_style);
        assert_eq!(c.credentials.len(), 2);
        assert!(!format!("{c:?}").contains("\"a\""));
        let e = Destination::open(&c).unwrap_err().to_string();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    }
}
