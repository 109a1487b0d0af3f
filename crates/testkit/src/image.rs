//! Images built in code (tar layers with chosen entries; gzip, zstd or none; OCI and Docker media
//! types; indexes) and pushed to a registry.
//!
//! Tar headers are written by hand rather than through `tar::Builder::append_data`, because the
//! hostile-layer corpus needs entries the tar crate refuses to write (`../x`, absolute paths) and
//! xattrs need PAX records the crate cannot emit.

use std::io::Write;

use base64::Engine as _;
use imc_api::Digest;
use serde_json::{Value, json};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker schema2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker schema1 signed manifest media type (rejected by imc).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker foreign layer media type.
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// OCI non-distributable layer media type.
pub const OCI_NONDISTRIBUTABLE_LAYER: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Which family of media types an image uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OCI image spec media types.
    Oci,
    /// Docker image manifest v2 schema 2 media types.
    Docker,
}

impl Format {
    fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }
    fn config_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }
    fn index_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        }
    }
    /// The layer media type for `compression` in this format.
    pub fn layer_type(self, compression: Compression) -> &'static str {
        match (self, compression) {
            (Format::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (Format::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Format::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Format::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
            (Format::Docker, Compression::Gzip) => {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            }
            // Docker has no zstd media type of its own; containerd and buildkit use the OCI one.
            (Format::Docker, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// Owner, mode, mtime and xattrs of one entry.
#[derive(Clone, Debug)]
pub struct Meta {
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Extended attributes (`user.x`, `security.capability`, ...), written as PAX `SCHILY.xattr.` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    /// Root-owned, mtime 2020-01-01, no xattrs, the given mode.
    pub fn mode(mode: u32) -> Self {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_577_836_800,
            xattrs: Vec::new(),
        }
    }
    /// Sets the owner.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    /// Sets the mtime.
    pub fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }
    /// Adds an xattr.
    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.xattrs.push((name.to_owned(), value.to_vec()));
        self
    }
}

/// Kinds of tar entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (`link` is the target).
    Symlink,
    /// Hard link (`link` is the path of the entry linked to).
    Hardlink,
    /// Character device.
    CharDevice {
        /// The device's major number.
        major: u32,
        /// The device's minor number.
        minor: u32,
    },
    /// Block device.
    BlockDevice {
        /// The device's major number.
        major: u32,
        /// The device's minor number.
        minor: u32,
    },
    /// FIFO.
    Fifo,
}

/// One tar entry, with its path as raw bytes so hostile paths (`../x`, `/etc/x`) can be written.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Path inside the archive, written verbatim.
    pub path: Vec<u8>,
    /// What kind of entry.
    pub kind: Kind,
    /// Symlink target or hardlink source, written verbatim.
    pub link: Vec<u8>,
    /// File content (regular files only).
    pub content: Vec<u8>,
    /// Owner, mode, mtime, xattrs.
    pub meta: Meta,
}

/// Builds one layer tar from entries, in the order given.
#[derive(Clone, Debug)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
    compression: Compression,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    /// An empty gzip layer.
    pub fn new() -> Self {
        LayerBuilder {
            entries: Vec::new(),
            compression: Compression::Gzip,
        }
    }
    /// Sets the compression (default gzip).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }
    /// A regular file, mode 0644, root-owned.
    pub fn file(self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.file_with(path, content, Meta::mode(0o644))
    }
    /// A regular file with chosen metadata.
    pub fn file_with(self, path: &str, content: impl AsRef<[u8]>, meta: Meta) -> Self {
        self.entry(Entry {
            path: path.as_bytes().to_vec(),
            kind: Kind::File,
            link: Vec::new(),
            content: content.as_ref().to_vec(),
            meta,
        })
    }
    /// A directory, mode 0755.
    pub fn dir(self, path: &str) -> Self {
        self.dir_with(path, Meta::mode(0o755))
    }
    /// A directory with chosen metadata.
    pub fn dir_with(self, path: &str, meta: Meta) -> Self {
        self.entry(Entry {
            path: path.as_bytes().to_vec(),
            kind: Kind::Dir,
            link: Vec::new(),
            content: Vec::new(),
            meta,
        })
    }
    /// A symlink `path -> target`.
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(Entry {
            path: path.as_bytes().to_vec(),
            kind: Kind::Symlink,
            link: target.as_bytes().to_vec(),
            content: Vec::new(),
            meta: Meta::mode(0o777),
        })
    }
    /// A hardlink `path` to the earlier entry `target`.
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.entry(Entry {
            path: path.as_bytes().to_vec(),
            kind: Kind::Hardlink,
            link: target.as_bytes().to_vec(),
            content: Vec::new(),
            meta: Meta::mode(0o644),
        })
    }
    /// A character device.
    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Self {
        self.entry(Entry {
            path: path.as_bytes().to_vec(),
            kind: Kind::CharDevice { major, minor },
            link: Vec::new(),
            content: Vec::new(),
            meta: Meta::mode(0o666),
        })
    }
    /// A whiteout for `path` (writes `dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = match path.trim_end_matches('/').rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path.trim_end_matches('/')),
        };
        self.file(&format!("{dir}.wh.{name}"), b"")
    }
    /// An opaque marker for directory `dir` (writes `dir/.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Self {
        let dir = dir.trim_end_matches('/');
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }
    /// Any entry, written verbatim (hostile paths and links included).
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }
    /// A raw regular-file entry whose path is written verbatim (e.g. `../escape`, `/etc/x`).
    pub fn raw_file(self, path: &[u8], content: impl AsRef<[u8]>) -> Self {
        self.entry(Entry {
            path: path.to_vec(),
            kind: Kind::File,
            link: Vec::new(),
            content: content.as_ref().to_vec(),
            meta: Meta::mode(0o644),
        })
    }
    /// A raw link entry (symlink or hardlink) whose path and target are written verbatim.
    pub fn raw_link(self, path: &[u8], kind: Kind, target: &[u8]) -> Self {
        self.entry(Entry {
            path: path.to_vec(),
            kind,
            link: target.to_vec(),
            content: Vec::new(),
            meta: Meta::mode(0o777),
        })
    }

    /// The uncompressed tar bytes.
    pub fn tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            write_entry(&mut out, e);
        }
        // Two zero blocks end the archive.
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// Builds the layer: tar, compressed blob, digest and diffID.
    pub fn build(&self) -> BuiltLayer {
        let tar = self.tar();
        let blob = compress(&tar, self.compression);
        BuiltLayer {
            digest: Digest::of(&blob),
            diff_id: Digest::of(&tar),
            tar,
            blob,
            compression: self.compression,
        }
    }
}

/// Compresses `data`.
pub fn compress(data: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data).expect("gzip into memory");
            enc.finish().expect("gzip into memory")
        }
        Compression::Zstd => zstd::encode_all(data, 3).expect("zstd into memory"),
    }
}

/// A built layer.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// Uncompressed tar.
    pub tar: Vec<u8>,
    /// The blob as pushed (compressed per `compression`).
    pub blob: Vec<u8>,
    /// Digest of `blob`.
    pub digest: Digest,
    /// Digest of `tar` (the diffID).
    pub diff_id: Digest,
    /// How `blob` is compressed.
    pub compression: Compression,
}

fn write_entry(out: &mut Vec<u8>, e: &Entry) {
    let (typ, size) = match e.kind {
        Kind::File => (tar::EntryType::Regular, e.content.len() as u64),
        Kind::Dir => (tar::EntryType::Directory, 0),
        Kind::Symlink => (tar::EntryType::Symlink, 0),
        Kind::Hardlink => (tar::EntryType::Link, 0),
        Kind::CharDevice { .. } => (tar::EntryType::Char, 0),
        Kind::BlockDevice { .. } => (tar::EntryType::Block, 0),
        Kind::Fifo => (tar::EntryType::Fifo, 0),
    };
    if !e.meta.xattrs.is_empty() {
        let mut records = Vec::new();
        for (name, value) in &e.meta.xattrs {
            records.extend(pax_record(&format!("SCHILY.xattr.{name}"), value));
        }
        let mut h = tar::Header::new_ustar();
        set_bytes(&mut h.as_old_mut().name, b"././@PaxHeader");
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(records.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        push_block(out, h.as_bytes(), &records);
    }
    if e.path.len() > 100 {
        long_name(out, tar::EntryType::GNULongName, &e.path);
    }
    if e.link.len() > 100 {
        long_name(out, tar::EntryType::GNULongLink, &e.link);
    }
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        set_bytes(&mut old.name, &e.path[..e.path.len().min(100)]);
        set_bytes(&mut old.linkname, &e.link[..e.link.len().min(100)]);
    }
    h.set_entry_type(typ);
    h.set_size(size);
    h.set_mode(e.meta.mode);
    h.set_uid(e.meta.uid);
    h.set_gid(e.meta.gid);
    h.set_mtime(e.meta.mtime);
    if let Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } = e.kind {
        h.set_device_major(major).expect("device major");
        h.set_device_minor(minor).expect("device minor");
    }
    h.set_cksum();
    push_block(
        out,
        h.as_bytes(),
        if e.kind == Kind::File {
            &e.content
        } else {
            &[]
        },
    );
}

fn long_name(out: &mut Vec<u8>, typ: tar::EntryType, name: &[u8]) {
    let mut data = name.to_vec();
    data.push(0);
    let mut h = tar::Header::new_gnu();
    set_bytes(&mut h.as_old_mut().name, b"././@LongLink");
    h.set_entry_type(typ);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    push_block(out, h.as_bytes(), &data);
}

fn set_bytes(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
}

fn push_block(out: &mut Vec<u8>, header: &[u8; 512], data: &[u8]) {
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// A PAX record `"<len> key=value\n"`, where len counts the whole record including itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Process settings of the image config (the fields a runtime uses).
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `Env` (`KEY=value`).
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `ExposedPorts` keys (`80/tcp`).
    pub exposed_ports: Vec<String>,
}

/// A platform of an image in an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestPlatform {
    /// `os`.
    pub os: String,
    /// `architecture`.
    pub architecture: String,
    /// `variant`.
    pub variant: Option<String>,
}

impl TestPlatform {
    /// `os/arch[/variant]`.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        TestPlatform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }
    fn json(&self) -> Value {
        let mut p = json!({"os": self.os, "architecture": self.architecture});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

/// A layer descriptor the registry holds no blob for, used to build foreign/non-distributable
/// layers for rejection tests.
#[derive(Clone, Debug)]
struct ForeignLayer {
    media_type: String,
    blob: Vec<u8>,
    diff_id: Digest,
}

/// Builds one image (manifest + config + layers).
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    format: Format,
    layers: Vec<BuiltLayer>,
    foreign: Vec<ForeignLayer>,
    config: ImageConfig,
    platform: TestPlatform,
}

impl ImageBuilder {
    /// An empty linux/amd64 image.
    pub fn new(format: Format) -> Self {
        ImageBuilder {
            format,
            layers: Vec::new(),
            foreign: Vec::new(),
            config: ImageConfig::default(),
            platform: TestPlatform::new("linux", "amd64", None),
        }
    }
    /// Adds a layer on top.
    pub fn layer(mut self, layer: BuiltLayer) -> Self {
        self.layers.push(layer);
        self
    }
    /// Sets the process config.
    pub fn config(mut self, config: ImageConfig) -> Self {
        self.config = config;
        self
    }
    /// Sets the platform written into the config (and used by an index).
    pub fn platform(mut self, os: &str, architecture: &str, variant: Option<&str>) -> Self {
        self.platform = TestPlatform::new(os, architecture, variant);
        self
    }
    /// Adds a foreign (Docker) or non-distributable (OCI) layer on top, with a URL, for rejection
    /// tests. Its blob is pushed too, so only the media type makes it unacceptable.
    pub fn foreign_layer(mut self) -> Self {
        let tar = LayerBuilder::new().file("foreign.txt", "foreign").tar();
        let blob = compress(&tar, Compression::Gzip);
        let media_type = match self.format {
            Format::Docker => DOCKER_FOREIGN_LAYER,
            Format::Oci => OCI_NONDISTRIBUTABLE_LAYER,
        };
        self.foreign.push(ForeignLayer {
            media_type: media_type.to_owned(),
            diff_id: Digest::of(&tar),
            blob,
        });
        self
    }

    /// Builds manifest, config and blobs.
    pub fn build(&self) -> BuiltImage {
        let mut diff_ids: Vec<String> = self.layers.iter().map(|l| l.diff_id.to_string()).collect();
        diff_ids.extend(self.foreign.iter().map(|f| f.diff_id.to_string()));
        let mut cfg = serde_json::Map::new();
        if let Some(e) = &self.config.entrypoint {
            cfg.insert("Entrypoint".into(), json!(e));
        }
        if let Some(c) = &self.config.cmd {
            cfg.insert("Cmd".into(), json!(c));
        }
        if !self.config.env.is_empty() {
            cfg.insert("Env".into(), json!(self.config.env));
        }
        if let Some(w) = &self.config.working_dir {
            cfg.insert("WorkingDir".into(), json!(w));
        }
        if let Some(u) = &self.config.user {
            cfg.insert("User".into(), json!(u));
        }
        if !self.config.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, Value> = self
                .config
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            cfg.insert("ExposedPorts".into(), Value::Object(ports));
        }
        let mut config = json!({
            "created": "2020-01-01T00:00:00Z",
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": Value::Object(cfg),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [],
        });
        if let Some(v) = &self.platform.variant {
            config["variant"] = json!(v);
        }
        let config = serde_json::to_vec(&config).expect("serialize config");
        let config_digest = Digest::of(&config);
        let mut layer_descs: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                json!({
                    "mediaType": self.format.layer_type(l.compression),
                    "size": l.blob.len(),
                    "digest": l.digest.to_string(),
                })
            })
            .collect();
        let mut blobs: Vec<(Digest, Vec<u8>)> = vec![(config_digest.clone(), config.clone())];
        blobs.extend(
            self.layers
                .iter()
                .map(|l| (l.digest.clone(), l.blob.clone())),
        );
        for f in &self.foreign {
            let digest = Digest::of(&f.blob);
            layer_descs.push(json!({
                "mediaType": f.media_type,
                "size": f.blob.len(),
                "digest": digest.to_string(),
                "urls": [format!("https://example.invalid/blobs/{digest}")],
            }));
            blobs.push((digest, f.blob.clone()));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest_type(),
            "config": {
                "mediaType": self.format.config_type(),
                "size": config.len(),
                "digest": config_digest.to_string(),
            },
            "layers": layer_descs,
        });
        let manifest = serde_json::to_vec_pretty(&manifest).expect("serialize manifest");
        BuiltImage {
            manifest_digest: Digest::of(&manifest),
            manifest,
            manifest_media_type: self.format.manifest_type().to_owned(),
            config_digest,
            config,
            layers: self.layers.clone(),
            blobs,
            platform: self.platform.clone(),
        }
    }
}

/// A built image: everything a registry needs to serve it.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// Raw manifest bytes, as pushed.
    pub manifest: Vec<u8>,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// Digest of `manifest`.
    pub manifest_digest: Digest,
    /// Raw config bytes.
    pub config: Vec<u8>,
    /// Digest of `config`.
    pub config_digest: Digest,
    /// The (distributable) layers, bottom first.
    pub layers: Vec<BuiltLayer>,
    /// Every blob to push (config first, then layers, then any foreign layer blobs).
    pub blobs: Vec<(Digest, Vec<u8>)>,
    /// The platform written into the config.
    pub platform: TestPlatform,
}

impl BuiltImage {
    /// A Docker schema1 signed manifest (ES256 JWS, as libtrust writes it) naming this image's
    /// layers, for rejection tests. Push it with [`push_manifest`] and media type
    /// [`DOCKER_SCHEMA1_SIGNED`]; the test registry has schema1 compatibility enabled.
    pub fn schema1_manifest(&self, repo: &str, tag: &str) -> Vec<u8> {
        // schema1 lists layers top first, with one v1Compatibility entry each.
        let mut fs_layers = Vec::new();
        let mut history = Vec::new();
        let n = self.layers.len();
        for (i, l) in self.layers.iter().rev().enumerate() {
            fs_layers.push(json!({"blobSum": l.digest.to_string()}));
            let mut v1 =
                json!({"id": format!("{:064x}", n - i), "created": "2020-01-01T00:00:00Z"});
            if i + 1 < n {
                v1["parent"] = json!(format!("{:064x}", n - i - 1));
            }
            if i == 0 {
                v1["architecture"] = json!(self.platform.architecture);
                v1["os"] = json!(self.platform.os);
            }
            history.push(json!({"v1Compatibility": v1.to_string()}));
        }
        let unsigned = json!({
            "schemaVersion": 1,
            "name": repo,
            "tag": tag,
            "architecture": self.platform.architecture,
            "fsLayers": fs_layers,
            "history": history,
        });
        sign_schema1(&unsigned)
    }
}

/// Signs a schema1 manifest the way libtrust's `JSONSignature` does: the payload is the pretty
/// JSON (3-space indent), and the signature is spliced in before the closing `}`.
fn sign_schema1(unsigned: &Value) -> Vec<u8> {
    let pretty = pretty3(unsigned);
    // formatLength: bytes before the final "\n}"; formatTail: the final "\n}".
    let format_length = pretty.len() - 2;
    let tail = &pretty[format_length..];
    let protected = json!({
        "formatLength": format_length,
        "formatTail": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tail),
        "time": "2020-01-01T00:00:00Z",
    });
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let protected_b64 = b64.encode(protected.to_string());
    let payload_b64 = b64.encode(&pretty);
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .expect("generate schema1 key");
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .expect("load schema1 key");
    let sig = key
        .sign(&rng, format!("{protected_b64}.{payload_b64}").as_bytes())
        .expect("sign schema1 manifest");
    let public = ring::signature::KeyPair::public_key(&key).as_ref();
    // Uncompressed point: 0x04 || x || y.
    let (x, y) = (&public[1..33], &public[33..65]);
    let jwk = json!({"crv": "P-256", "kty": "EC", "x": b64.encode(x), "y": b64.encode(y), "kid": libtrust_kid(public)});
    let signatures = json!([{
        "header": {"jwk": jwk, "alg": "ES256"},
        "signature": b64.encode(sig.as_ref()),
        "protected": protected_b64,
    }]);
    let sig_json = pretty3(&signatures).replace('\n', "\n   ");
    let mut out = pretty[..format_length].to_owned();
    out.push_str(",\n   \"signatures\": ");
    out.push_str(&sig_json);
    out.push_str(tail);
    out.into_bytes()
}

/// libtrust's key id: base32 of the first 240 bits of sha256(SubjectPublicKeyInfo DER), in
/// 12 groups of 4 separated by ':'.
fn libtrust_kid(uncompressed_point: &[u8]) -> String {
    use sha2::Digest as _;
    // SPKI prefix for an EC P-256 public key.
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(uncompressed_point);
    let hash = sha2::Sha256::digest(&spki);
    let b32 = base32(&hash[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect::<Vec<_>>()
        .join(":")
}

fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// JSON with 3-space indentation, as Go's `json.MarshalIndent(v, "", "   ")` writes it.
fn pretty3(v: &Value) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(v, &mut ser).expect("serialize json");
    String::from_utf8(buf).expect("json is utf-8")
}

/// Builds an OCI index or Docker manifest list over several images.
#[derive(Clone, Debug)]
pub struct IndexBuilder {
    format: Format,
    images: Vec<BuiltImage>,
}

impl IndexBuilder {
    /// An empty index in `format` (OCI index or Docker manifest list).
    pub fn new(format: Format) -> Self {
        IndexBuilder {
            format,
            images: Vec::new(),
        }
    }
    /// Adds an image; its platform comes from the image.
    pub fn image(mut self, image: BuiltImage) -> Self {
        self.images.push(image);
        self
    }
    /// Builds the index.
    pub fn build(&self) -> BuiltIndex {
        let manifests: Vec<Value> = self
            .images
            .iter()
            .map(|i| {
                json!({
                    "mediaType": i.manifest_media_type,
                    "size": i.manifest.len(),
                    "digest": i.manifest_digest.to_string(),
                    "platform": i.platform.json(),
                })
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": self.format.index_type(),
            "manifests": manifests,
        });
        let manifest = serde_json::to_vec_pretty(&index).expect("serialize index");
        BuiltIndex {
            digest: Digest::of(&manifest),
            manifest,
            media_type: self.format.index_type().to_owned(),
            images: self.images.clone(),
        }
    }
}

/// A built index and the images it names.
#[derive(Clone, Debug)]
pub struct BuiltIndex {
    /// Raw index bytes.
    pub manifest: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// Digest of `manifest`.
    pub digest: Digest,
    /// The platform images.
    pub images: Vec<BuiltImage>,
}

/// Basic credentials for pushing to a registry that requires them.
pub type PushCredentials<'a> = Option<(&'a str, &'a str)>;

/// Pushes `image` as `registry_host/repo:tag` (blobs, then the manifest). `registry_host` is
/// `host:port` for plain HTTP, or a base URL (`TestRegistry::url()`, possibly `https://`, whose
/// certificate is not checked). Handles anonymous, Basic and Bearer-token registries.
pub async fn push(
    registry_host: &str,
    repo: &str,
    tag: &str,
    image: &BuiltImage,
    credentials: PushCredentials<'_>,
) -> anyhow::Result<()> {
    let pusher = Pusher::new(registry_host, repo, credentials);
    pusher.push_image(image).await?;
    pusher
        .put_manifest(tag, &image.manifest_media_type, &image.manifest)
        .await
}

/// Pushes every image of `index` by digest, then the index as `registry_host/repo:tag`.
pub async fn push_index(
    registry_host: &str,
    repo: &str,
    tag: &str,
    index: &BuiltIndex,
    credentials: PushCredentials<'_>,
) -> anyhow::Result<()> {
    let pusher = Pusher::new(registry_host, repo, credentials);
    for image in &index.images {
        pusher.push_image(image).await?;
        pusher
            .put_manifest(
                &image.manifest_digest.to_string(),
                &image.manifest_media_type,
                &image.manifest,
            )
            .await?;
    }
    pusher
        .put_manifest(tag, &index.media_type, &index.manifest)
        .await
}

/// Pushes raw manifest bytes with a chosen media type as `registry_host/repo:tag` (for schema1
/// and other odd manifests). Blobs must already be there.
pub async fn push_manifest(
    registry_host: &str,
    repo: &str,
    tag: &str,
    media_type: &str,
    manifest: &[u8],
    credentials: PushCredentials<'_>,
) -> anyhow::Result<()> {
    Pusher::new(registry_host, repo, credentials)
        .put_manifest(tag, media_type, manifest)
        .await
}

/// Pushes blobs only (no manifest), e.g. before [`push_manifest`].
pub async fn push_blobs(
    registry_host: &str,
    repo: &str,
    image: &BuiltImage,
    credentials: PushCredentials<'_>,
) -> anyhow::Result<()> {
    Pusher::new(registry_host, repo, credentials)
        .push_image(image)
        .await
}

/// Installs the ring rustls provider reqwest needs (it is built with `rustls-no-provider`).
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

struct Pusher {
    http: reqwest::Client,
    base: String,
    repo: String,
    credentials: Option<(String, String)>,
    bearer: tokio::sync::Mutex<Option<String>>,
}

impl Pusher {
    fn new(host: &str, repo: &str, credentials: PushCredentials<'_>) -> Self {
        install_crypto_provider();
        Pusher {
            // Test registries use self-signed certificates when they speak TLS.
            http: reqwest::Client::builder()
                .tls_danger_accept_invalid_certs(true)
                .build()
                .expect("build push HTTP client"),
            base: if host.starts_with("http://") || host.starts_with("https://") {
                host.trim_end_matches('/').to_owned()
            } else {
                format!("http://{host}")
            },
            repo: repo.to_owned(),
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            bearer: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends a request built by `make`, answering one auth challenge if the registry asks.
    async fn send(
        &self,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let authorize = |rb: reqwest::RequestBuilder, bearer: &Option<String>| match (
            bearer,
            &self.credentials,
        ) {
            (Some(t), _) => rb.bearer_auth(t),
            (None, Some((u, p))) => rb.basic_auth(u, Some(p)),
            (None, None) => rb,
        };
        let bearer = self.bearer.lock().await.clone();
        let resp = authorize(make(&self.http), &bearer).send().await?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Ok(resp);
        };
        let param = |name: &str| {
            params.split(',').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        let realm =
            param("realm").ok_or_else(|| anyhow::anyhow!("bearer challenge without realm"))?;
        let service = param("service").unwrap_or_default();
        let scope = format!("repository:{}:pull,push", self.repo);
        let token_url = reqwest::Url::parse_with_params(
            &realm,
            &[("service", service.as_str()), ("scope", scope.as_str())],
        )?;
        let mut rb = self.http.get(token_url);
        if let Some((u, p)) = &self.credentials {
            rb = rb.basic_auth(u, Some(p));
        }
        let token_resp = rb.send().await?;
        anyhow::ensure!(
            token_resp.status().is_success(),
            "token server answered {}",
            token_resp.status()
        );
        let body: Value = token_resp.json().await?;
        let token = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .ok_or_else(|| anyhow::anyhow!("token server gave no token"))?
            .to_owned();
        *self.bearer.lock().await = Some(token.clone());
        Ok(make(&self.http).bearer_auth(token).send().await?)
    }

    async fn push_image(&self, image: &BuiltImage) -> anyhow::Result<()> {
        for (digest, data) in &image.blobs {
            self.push_blob(digest, data).await?;
        }
        Ok(())
    }

    async fn push_blob(&self, digest: &Digest, data: &[u8]) -> anyhow::Result<()> {
        let head_url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repo);
        if self
            .send(|c| c.head(&head_url))
            .await?
            .status()
            .is_success()
        {
            return Ok(());
        }
        let start_url = format!("{}/v2/{}/blobs/uploads/", self.base, self.repo);
        let resp = self.send(|c| c.post(&start_url)).await?;
        anyhow::ensure!(
            resp.status().as_u16() == 202,
            "starting upload of {digest}: {}",
            resp.status()
        );
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("upload of {digest}: no Location"))?
            .to_owned();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{sep}digest={digest}");
        let body = data.to_vec();
        let resp = self
            .send(|c| {
                c.put(&put_url)
                    .header("content-type", "application/octet-stream")
                    .body(body.clone())
            })
            .await?;
        let status = resp.status();
        anyhow::ensure!(
            status.as_u16() == 201,
            "upload of {digest}: {status}: {}",
            resp.text().await.unwrap_or_default()
        );
        Ok(())
    }

    async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        manifest: &[u8],
    ) -> anyhow::Result<()> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repo);
        let body = manifest.to_vec();
        let resp = self
            .send(|c| {
                c.put(&url)
                    .header("content-type", media_type)
                    .body(body.clone())
            })
            .await?;
        let status = resp.status();
        anyhow::ensure!(
            status.as_u16() == 201,
            "putting manifest {}:{reference}: {status}: {}",
            self.repo,
            resp.text().await.unwrap_or_default()
        );
        Ok(())
    }
}
