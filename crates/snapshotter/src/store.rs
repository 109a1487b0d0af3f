//! The snapshotter's metadata: one SQLite file (WAL, `synchronous=FULL`), so snapshots survive
//! restarts of the snapshotter and of containerd. Every call is one transaction and blocks: call
//! it from a blocking thread.
//!
//! The rules are those of containerd's `snapshots/storage`: keys are unique, a parent must exist
//! and be committed, only an active snapshot can be committed, a snapshot with children cannot
//! be removed, and only labels can be updated.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imc_api::Digest;
use rusqlite::{Connection, OptionalExtension, params};

use crate::SnapshotterError;

/// Longest key or parent name accepted (containerd's own keys are well under 1 KiB).
pub const MAX_KEY_LEN: usize = 4096;
/// Largest total size of one snapshot's labels (containerd allows 4 KiB per label).
pub const MAX_LABELS_BYTES: usize = 64 * 1024;

/// The kind of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Writable, may be committed.
    Active,
    /// Read-only view of its parent; cannot be committed.
    View,
    /// Immutable; may be a parent.
    Committed,
}

impl Kind {
    /// The name used in the store and in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "active" => Some(Kind::Active),
            "view" => Some(Kind::View),
            "committed" => Some(Kind::Committed),
            _ => None,
        }
    }
}

/// Where a committed snapshot served from a cache disk lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    /// The cache disk (as found under `DIR/caches/`, canonical).
    pub disk: PathBuf,
    /// The layer on it.
    pub diff_id: Digest,
}

/// One snapshot as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Row id; names the snapshot's directory under `snapshots/` (local snapshots only).
    pub id: i64,
    /// Key (active, view) or name (committed).
    pub key: String,
    /// Its kind.
    pub kind: Kind,
    /// Parent key, empty for none.
    pub parent: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Creation time.
    pub created: SystemTime,
    /// Last update.
    pub updated: SystemTime,
    /// Disk usage `(bytes, inodes)` once known (committed snapshots).
    pub usage: Option<(i64, i64)>,
    /// Set when the snapshot is a layer of a cache disk (no local directory).
    pub backing: Option<Backing>,
}

/// What a new snapshot is made of.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// Active, View, or Committed (a cache-disk layer).
    pub kind: Kind,
    /// Its key.
    pub key: String,
    /// Parent key, empty for none.
    pub parent: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// For a cache-disk layer.
    pub backing: Option<Backing>,
}

/// The metadata store.
#[derive(Debug)]
pub struct MetaStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    parent TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    size INTEGER,
    inodes INTEGER,
    cache_disk TEXT,
    diff_id TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
";

const COLUMNS: &str =
    "id, key, kind, parent, labels, created_ns, updated_ns, size, inodes, cache_disk, diff_id";

impl MetaStore {
    /// Opens (creating) the store at `path` (mode 0600).
    pub fn open(path: &Path) -> Result<Self, SnapshotterError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(SnapshotterError::io("restricting", path))?;
        Ok(MetaStore { conn })
    }

    /// The snapshot with this key.
    pub fn get(&self, key: &str) -> Result<Option<Record>, SnapshotterError> {
        get(&self.conn, key)
    }

    /// The snapshot with this key, or `NotFound`.
    pub fn require(&self, key: &str) -> Result<Record, SnapshotterError> {
        self.get(key)?.ok_or_else(|| SnapshotterError::NotFound {
            key: key.to_string(),
        })
    }

    /// The parents of `record`, nearest first.
    pub fn parents(&self, record: &Record) -> Result<Vec<Record>, SnapshotterError> {
        let mut out = Vec::new();
        let mut parent = record.parent.clone();
        while !parent.is_empty() {
            let p = self
                .get(&parent)?
                .ok_or_else(|| SnapshotterError::Corrupt {
                    key: record.key.clone(),
                    reason: format!("its ancestor {parent:?} is missing"),
                })?;
            parent = p.parent.clone();
            out.push(p);
            if out.len() > 10_000 {
                return Err(SnapshotterError::Corrupt {
                    key: record.key.clone(),
                    reason: "parent chain loops".into(),
                });
            }
        }
        Ok(out)
    }

    /// Creates a snapshot: the key must be new, the parent (if any) committed.
    pub fn create(&mut self, new: NewSnapshot) -> Result<Record, SnapshotterError> {
        check_key(&new.key)?;
        check_labels(&new.labels)?;
        let tx = self.conn.transaction()?;
        if get(&tx, &new.key)?.is_some() {
            return Err(SnapshotterError::AlreadyExists { key: new.key });
        }
        if !new.parent.is_empty() {
            let parent =
                get(&tx, &new.parent)?.ok_or_else(|| SnapshotterError::ParentNotFound {
                    parent: new.parent.clone(),
                })?;
            if parent.kind != Kind::Committed {
                return Err(SnapshotterError::InvalidArgument {
                    reason: format!("parent {:?} is not a committed snapshot", new.parent),
                });
            }
        }
        let now = nanos(SystemTime::now());
        tx.execute(
            "INSERT INTO snapshots (key, kind, parent, labels, created_ns, updated_ns, cache_disk, diff_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
            params![
                new.key,
                new.kind.as_str(),
                new.parent,
                labels_json(&new.labels),
                now,
                new.backing.as_ref().map(|b| b.disk.to_string_lossy().into_owned()),
                new.backing.as_ref().map(|b| b.diff_id.to_string()),
            ],
        )?;
        let record = get(&tx, &new.key)?
            .ok_or_else(|| SnapshotterError::Internal("inserted snapshot not found".into()))?;
        tx.commit()?;
        Ok(record)
    }

    /// Commits active snapshot `key` as `name` with `labels` and its measured usage.
    pub fn commit(
        &mut self,
        name: &str,
        key: &str,
        labels: &HashMap<String, String>,
        usage: (i64, i64),
    ) -> Result<Record, SnapshotterError> {
        check_key(name)?;
        check_labels(labels)?;
        let tx = self.conn.transaction()?;
        let active = get(&tx, key)?.ok_or_else(|| SnapshotterError::NotFound {
            key: key.to_string(),
        })?;
        if active.kind != Kind::Active {
            return Err(SnapshotterError::FailedPrecondition {
                reason: format!(
                    "snapshot {key:?} is not active (it is {})",
                    active.kind.as_str()
                ),
            });
        }
        if get(&tx, name)?.is_some() {
            return Err(SnapshotterError::AlreadyExists {
                key: name.to_string(),
            });
        }
        tx.execute(
            "UPDATE snapshots SET key = ?1, kind = 'committed', labels = ?2, updated_ns = ?3,
             size = ?4, inodes = ?5 WHERE id = ?6",
            params![
                name,
                labels_json(labels),
                nanos(SystemTime::now()),
                usage.0,
                usage.1,
                active.id
            ],
        )?;
        let record = get(&tx, name)?
            .ok_or_else(|| SnapshotterError::Internal("committed snapshot not found".into()))?;
        tx.commit()?;
        Ok(record)
    }

    /// Removes snapshot `key`, which must have no children; returns what it was.
    pub fn remove(&mut self, key: &str) -> Result<Record, SnapshotterError> {
        let tx = self.conn.transaction()?;
        let record = get(&tx, key)?.ok_or_else(|| SnapshotterError::NotFound {
            key: key.to_string(),
        })?;
        let children: i64 = tx.query_row(
            "SELECT COUNT(*) FROM snapshots WHERE parent = ?1",
            params![key],
            |r| r.get(0),
        )?;
        if children > 0 {
            return Err(SnapshotterError::FailedPrecondition {
                reason: format!(
                    "cannot remove snapshot {key:?}: it has {children} child snapshot(s)"
                ),
            });
        }
        tx.execute("DELETE FROM snapshots WHERE id = ?1", params![record.id])?;
        tx.commit()?;
        Ok(record)
    }

    /// Replaces labels of `key`: all of them when `paths` is empty, else the `labels` /
    /// `labels.<key>` paths given (a key absent from `labels` is deleted).
    pub fn update_labels(
        &mut self,
        key: &str,
        labels: &HashMap<String, String>,
        paths: &[String],
    ) -> Result<Record, SnapshotterError> {
        let tx = self.conn.transaction()?;
        let record = get(&tx, key)?.ok_or_else(|| SnapshotterError::NotFound {
            key: key.to_string(),
        })?;
        let mut merged = record.labels.clone();
        if paths.is_empty() {
            merged = labels.clone();
        } else {
            for path in paths {
                if path == "labels" {
                    merged = labels.clone();
                } else if let Some(k) = path.strip_prefix("labels.") {
                    match labels.get(k) {
                        Some(v) => merged.insert(k.to_string(), v.clone()),
                        None => merged.remove(k),
                    };
                } else {
                    return Err(SnapshotterError::InvalidArgument {
                        reason: format!(
                            "cannot update {path:?} of snapshot {key:?}: only labels can be updated"
                        ),
                    });
                }
            }
        }
        check_labels(&merged)?;
        tx.execute(
            "UPDATE snapshots SET labels = ?1, updated_ns = ?2 WHERE id = ?3",
            params![labels_json(&merged), nanos(SystemTime::now()), record.id],
        )?;
        let record = get(&tx, key)?
            .ok_or_else(|| SnapshotterError::Internal("updated snapshot not found".into()))?;
        tx.commit()?;
        Ok(record)
    }

    /// Records the measured usage of a snapshot.
    pub fn set_usage(&self, id: i64, usage: (i64, i64)) -> Result<(), SnapshotterError> {
        self.conn.execute(
            "UPDATE snapshots SET size = ?1, inodes = ?2 WHERE id = ?3",
            params![usage.0, usage.1, id],
        )?;
        Ok(())
    }

    /// Every snapshot, in creation order.
    pub fn list(&self) -> Result<Vec<Record>, SnapshotterError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM snapshots ORDER BY id"))?;
        let rows = stmt.query_map([], row)?;
        rows.map(|r| r.map_err(SnapshotterError::from).and_then(decode))
            .collect()
    }

    /// Committed snapshots served from a cache disk whose parent is `parent`.
    pub fn cached_children(&self, parent: &str) -> Result<Vec<Record>, SnapshotterError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM snapshots WHERE parent = ?1 AND cache_disk IS NOT NULL ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![parent], row)?;
        rows.map(|r| r.map_err(SnapshotterError::from).and_then(decode))
            .collect()
    }

    /// Row ids of every snapshot (their directories are the only ones to keep).
    pub fn ids(&self) -> Result<HashSet<i64>, SnapshotterError> {
        let mut stmt = self.conn.prepare("SELECT id FROM snapshots")?;
        let ids = stmt.query_map([], |r| r.get(0))?;
        Ok(ids.collect::<Result<_, _>>()?)
    }

    /// How many snapshots each cache disk serves.
    pub fn disks_in_use(&self) -> Result<HashMap<PathBuf, usize>, SnapshotterError> {
        let mut stmt = self.conn.prepare(
            "SELECT cache_disk, COUNT(*) FROM snapshots WHERE cache_disk IS NOT NULL GROUP BY cache_disk",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                PathBuf::from(r.get::<_, String>(0)?),
                r.get::<_, i64>(1)? as usize,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn check_key(key: &str) -> Result<(), SnapshotterError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(SnapshotterError::InvalidArgument {
            reason: format!(
                "snapshot key must be 1 to {MAX_KEY_LEN} bytes, got {}",
                key.len()
            ),
        });
    }
    Ok(())
}

fn check_labels(labels: &HashMap<String, String>) -> Result<(), SnapshotterError> {
    let total: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_LABELS_BYTES {
        return Err(SnapshotterError::InvalidArgument {
            reason: format!("labels are {total} bytes, more than {MAX_LABELS_BYTES}"),
        });
    }
    Ok(())
}

fn labels_json(labels: &HashMap<String, String>) -> String {
    // A map of strings always serialises.
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_string())
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

fn time(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}

type Row = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn decode(r: Row) -> Result<Record, SnapshotterError> {
    let (id, key, kind, parent, labels, created, updated, size, inodes, disk, diff_id) = r;
    let corrupt = |reason: String| SnapshotterError::Corrupt {
        key: key.clone(),
        reason,
    };
    let kind = Kind::parse(&kind).ok_or_else(|| corrupt(format!("unknown kind {kind:?}")))?;
    let labels: HashMap<String, String> =
        serde_json::from_str(&labels).map_err(|e| corrupt(format!("labels: {e}")))?;
    let backing = match (disk, diff_id) {
        (Some(disk), Some(diff_id)) => Some(Backing {
            disk: PathBuf::from(disk),
            diff_id: diff_id
                .parse()
                .map_err(|e| corrupt(format!("diff id {diff_id:?}: {e}")))?,
        }),
        _ => None,
    };
    Ok(Record {
        id,
        key: key.clone(),
        kind,
        parent,
        labels,
        created: time(created),
        updated: time(updated),
        usage: size.zip(inodes),
        backing,
    })
}

fn get(conn: &Connection, key: &str) -> Result<Option<Record>, SnapshotterError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM snapshots WHERE key = ?1"),
        params![key],
        row,
    )
    .optional()?
    .map(decode)
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.db")).unwrap();
        (dir, store)
    }

    fn new(kind: Kind, key: &str, parent: &str) -> NewSnapshot {
        NewSnapshot {
            kind,
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
            backing: None,
        }
    }

    fn code(r: Result<Record, SnapshotterError>) -> String {
        match r {
            Ok(_) => "ok".into(),
            Err(e) => format!("{:?}", e.code()),
        }
    }

    #[test]
    fn follows_containerds_storage_rules() {
        let (_d, mut s) = store();
        let none = HashMap::new();
        // Each line: an operation and the gRPC code it must give, in sequence.
        assert_eq!(code(s.create(new(Kind::Active, "a", ""))), "ok");
        assert_eq!(code(s.create(new(Kind::Active, "a", ""))), "AlreadyExists");
        assert_eq!(code(s.create(new(Kind::Active, "b", "nope"))), "NotFound");
        assert_eq!(
            code(s.create(new(Kind::Active, "b", "a"))),
            "InvalidArgument",
            "parent active"
        );
        assert_eq!(code(s.commit("c", "a", &none, (1, 1))), "ok");
        assert_eq!(
            code(s.commit("c2", "a", &none, (1, 1))),
            "NotFound",
            "key gone after commit"
        );
        assert_eq!(code(s.create(new(Kind::View, "v", "c"))), "ok");
        assert_eq!(
            code(s.commit("c3", "v", &none, (1, 1))),
            "FailedPrecondition",
            "view"
        );
        assert_eq!(code(s.create(new(Kind::Active, "x", ""))), "ok");
        assert_eq!(
            code(s.commit("c", "x", &none, (1, 1))),
            "AlreadyExists",
            "name taken"
        );
        assert_eq!(code(s.remove("c")), "FailedPrecondition", "has a child");
        assert_eq!(code(s.remove("v")), "ok");
        assert_eq!(code(s.remove("c")), "ok");
        assert_eq!(code(s.remove("c")), "NotFound");
        assert_eq!(code(s.create(new(Kind::Active, "", ""))), "InvalidArgument");
    }

    #[test]
    fn survives_reopening_and_keeps_parents_and_backing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let diff: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        {
            let mut s = MetaStore::open(&path).unwrap();
            let mut n = new(Kind::Committed, "sha256:x", "");
            n.backing = Some(Backing {
                disk: "/d/caches/one.erofs".into(),
                diff_id: diff.clone(),
            });
            n.labels
                .insert("containerd.io/snapshot.ref".into(), "sha256:x".into());
            s.create(n).unwrap();
            s.create(new(Kind::Active, "k", "sha256:x")).unwrap();
        }
        let s = MetaStore::open(&path).unwrap();
        let k = s.require("k").unwrap();
        let parents = s.parents(&k).unwrap();
        assert_eq!(parents.len(), 1);
        assert_eq!(parents[0].key, "sha256:x");
        assert_eq!(parents[0].labels["containerd.io/snapshot.ref"], "sha256:x");
        assert_eq!(
            parents[0].backing,
            Some(Backing {
                disk: "/d/caches/one.erofs".into(),
                diff_id: diff
            })
        );
        assert_eq!(
            s.disks_in_use().unwrap(),
            HashMap::from([(PathBuf::from("/d/caches/one.erofs"), 1)])
        );
    }

    #[test]
    fn updates_only_labels_by_path() {
        let (_d, mut s) = store();
        let mut n = new(Kind::Active, "a", "");
        n.labels = HashMap::from([("x".into(), "1".into()), ("y".into(), "2".into())]);
        s.create(n).unwrap();
        let want = HashMap::from([("x".to_string(), "9".to_string())]);
        // (paths, resulting labels as sorted "k=v")
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["labels.x"], "x=9,y=2"),
            (vec!["labels.y"], "x=9"),
            (vec![], "x=9"),
        ];
        for (paths, expected) in cases {
            let paths: Vec<String> = paths.into_iter().map(String::from).collect();
            let r = s.update_labels("a", &want, &paths).unwrap();
            let mut got: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            got.sort();
            assert_eq!(got.join(","), expected, "{paths:?}");
        }
        let e = s.update_labels("a", &want, &["parent".into()]).unwrap_err();
        assert_eq!(e.code(), containerd_snapshots::tonic::Code::InvalidArgument);
    }
}
