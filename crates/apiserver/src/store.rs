//! Durable object storage: SQLite (WAL, `synchronous=FULL`) in `DIR/state.db`, mirrored in memory
//! for reads, with a global resourceVersion sequence and an event log that lets watchers resume
//! across restarts until the log is compacted past their version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::{ApiError, Result};

/// Where an object lives: storage resource (`group/plural`), namespace ("" if cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// `group/plural` of the storage resource (`/pods` for the core group).
    pub res: String,
    /// Namespace, empty for cluster-scoped objects.
    pub ns: String,
    /// Object name.
    pub name: String,
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object was created (`ADDED`).
    Added,
    /// The object was changed (`MODIFIED`).
    Modified,
    /// The object was removed (`DELETED`).
    Deleted,
}

impl EventType {
    /// The watch event type string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "ADDED" => EventType::Added,
            "DELETED" => EventType::Deleted,
            _ => EventType::Modified,
        }
    }
}

/// One committed change, as kept in the event log and sent to watchers.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change was committed at.
    pub rv: u64,
    /// The object's storage key.
    pub key: Key,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for deletions: its last state at the deletion's version).
    pub object: Arc<Value>,
    /// The object before the change, when known (live changes; not kept in the log).
    pub previous: Option<Arc<Value>>,
}

/// The write precondition.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// The object must not exist (create).
    Absent,
    /// The object must exist at exactly this resourceVersion.
    Version(u64),
    /// The object must exist (any version).
    Present,
}

struct Snapshot {
    objects: BTreeMap<Key, Arc<Value>>,
    rv: u64,
}

struct Db {
    conn: Connection,
    compacted: u64,
}

/// A stored row that could not be read back.
struct Unreadable {
    key: Key,
    rv: i64,
    json: String,
    error: String,
}

/// The stored objects read back at start, and the rows that could not be.
type Loaded = (BTreeMap<Key, Arc<Value>>, Vec<Unreadable>);

/// Every stored object, and the rows that are not JSON this server can read (too deep for the
/// parser, damaged): each is reported with its key, and the rest is served.
fn load_objects(conn: &Connection) -> rusqlite::Result<Loaded> {
    let mut objects = BTreeMap::new();
    let mut unreadable = Vec::new();
    let mut stmt = conn.prepare("SELECT res, ns, name, rv, json FROM objects")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            Key {
                res: r.get(0)?,
                ns: r.get(1)?,
                name: r.get(2)?,
            },
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    for row in rows {
        let (key, rv, json) = row?;
        match serde_json::from_str::<Value>(&json) {
            Ok(value) => {
                objects.insert(key, Arc::new(value));
            }
            Err(e) => {
                tracing::error!(
                    resource = %key.res, namespace = %key.ns, name = %key.name, error = %e,
                    "stored object cannot be read back; not served"
                );
                unreadable.push(Unreadable {
                    key,
                    rv,
                    json,
                    error: e.to_string(),
                });
            }
        }
    }
    Ok((objects, unreadable))
}

/// Moves unreadable rows out of `objects` into the `quarantine` table.
fn quarantine(conn: &Connection, rows: &[Unreadable]) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS quarantine(
           res TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL, rv INTEGER NOT NULL,
           json TEXT NOT NULL, error TEXT NOT NULL)",
    )?;
    for row in rows {
        conn.execute(
            "INSERT INTO quarantine(res, ns, name, rv, json, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![row.key.res, row.key.ns, row.key.name, row.rv, row.json, row.error],
        )?;
        conn.execute(
            "DELETE FROM objects WHERE res = ?1 AND ns = ?2 AND name = ?3",
            params![row.key.res, row.key.ns, row.key.name],
        )?;
    }
    Ok(())
}

/// The object store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Mutex<Db>>,
    snap: Arc<RwLock<Snapshot>>,
    tx: broadcast::Sender<Arc<Change>>,
    path: Arc<PathBuf>,
    window: u64,
}

fn rv_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) `path`, keeping the last `window` changes for watch resume.
    /// The database and its `-wal`/`-shm` files are owner-only (0600). Blocking.
    pub fn open(path: &Path, window: u64) -> Result<Self> {
        let db_err = |source| ApiError::Database {
            path: path.display().to_string(),
            source,
        };
        crate::data_dir::prepare_database(path)?;
        let conn = Connection::open(path).map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS objects(
               res TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
               rv INTEGER NOT NULL, json TEXT NOT NULL,
               PRIMARY KEY(res, ns, name)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS events(
               rv INTEGER PRIMARY KEY, res TEXT NOT NULL, ns TEXT NOT NULL,
               name TEXT NOT NULL, type TEXT NOT NULL, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )
        .map_err(db_err)?;
        let meta = |k: &str| -> Result<u64> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.unwrap_or(0) as u64)
            .map_err(db_err)
        };
        let rv = meta("rv")?;
        let compacted = meta("compacted")?;
        let (objects, unreadable) = load_objects(&conn).map_err(db_err)?;
        if !unreadable.is_empty() {
            // Kept aside, not lost: an operator can still look at them.
            quarantine(&conn, &unreadable).map_err(db_err)?;
            tracing::error!(
                count = unreadable.len(),
                path = %path.display(),
                "objects in the state database could not be read back; they were moved to its \
                 quarantine table and are not served"
            );
        }
        let (tx, _) = broadcast::channel(4096);
        Ok(Store {
            db: Arc::new(Mutex::new(Db { conn, compacted })),
            snap: Arc::new(RwLock::new(Snapshot { objects, rv })),
            tx,
            path: Arc::new(path.to_path_buf()),
            window: window.max(1),
        })
    }

    /// The current object at `key`.
    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        let snap = self.snap.read().unwrap_or_else(|e| e.into_inner());
        snap.objects.get(key).cloned()
    }

    /// All objects of a storage resource (in one namespace, or all when `ns` is None), with the
    /// resourceVersion the list is consistent at.
    pub fn list(&self, res: &str, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let snap = self.snap.read().unwrap_or_else(|e| e.into_inner());
        let lo = Key {
            res: res.to_owned(),
            ns: ns.unwrap_or("").to_owned(),
            name: String::new(),
        };
        let items = snap
            .objects
            .range(lo..)
            .take_while(|(k, _)| k.res == res && ns.is_none_or(|n| k.ns == n))
            .map(|(_, v)| v.clone())
            .collect();
        (items, snap.rv)
    }

    /// Every object, of every resource (for garbage collection).
    pub fn all(&self) -> Vec<(Key, Arc<Value>)> {
        let snap = self.snap.read().unwrap_or_else(|e| e.into_inner());
        snap.objects
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The latest committed resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.snap.read().unwrap_or_else(|e| e.into_inner()).rv
    }

    /// Subscribes to changes committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// Writes `object` at `key` (or deletes it when `object` is None) if `expect` holds, durably,
    /// and returns the stored object with its new resourceVersion.
    pub async fn write(
        &self,
        key: Key,
        object: Option<Value>,
        expect: Expect,
        kind_name: &str,
    ) -> Result<Arc<Value>> {
        let this = self.clone();
        let kind_name = kind_name.to_owned();
        tokio::task::spawn_blocking(move || this.write_blocking(key, object, expect, &kind_name))
            .await
            .map_err(|e| ApiError::Internal(format!("store task: {e}")))?
    }

    fn write_blocking(
        &self,
        key: Key,
        object: Option<Value>,
        expect: Expect,
        kind_name: &str,
    ) -> Result<Arc<Value>> {
        let mut db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.get(&key);
        let not_found = || ApiError::NotFound {
            kind: kind_name.to_owned(),
            name: key.name.clone(),
        };
        match (expect, &current) {
            (Expect::Absent, Some(_)) => {
                return Err(ApiError::AlreadyExists {
                    kind: kind_name.to_owned(),
                    name: key.name.clone(),
                });
            }
            (Expect::Version(_) | Expect::Present, None) => return Err(not_found()),
            (Expect::Version(v), Some(cur)) if rv_of(cur) != v => {
                return Err(ApiError::Conflict {
                    kind: kind_name.to_owned(),
                    name: key.name.clone(),
                });
            }
            _ => {}
        }
        let rv = self.current_rv() + 1;
        let (kind, mut stored) = match object {
            Some(obj) => (
                if current.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                },
                obj,
            ),
            None => (
                EventType::Deleted,
                current.as_deref().cloned().ok_or_else(not_found)?,
            ),
        };
        if let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let json = stored.to_string();
        // Nothing is stored that could not be read back (nor served) again.
        crate::limits::check_object(&stored, json.len())?;
        let path = self.path.display().to_string();
        let db_err = |source| ApiError::Database {
            path: path.clone(),
            source,
        };
        let compacted = db.compacted;
        let tx = db.conn.transaction().map_err(db_err)?;
        {
            if kind == EventType::Deleted {
                tx.prepare_cached("DELETE FROM objects WHERE res = ?1 AND ns = ?2 AND name = ?3")
                    .and_then(|mut s| s.execute(params![key.res, key.ns, key.name]))
                    .map_err(db_err)?;
            } else {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO objects(res, ns, name, rv, json) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| s.execute(params![key.res, key.ns, key.name, rv as i64, json]))
                .map_err(db_err)?;
            }
            tx.prepare_cached(
                "INSERT INTO events(rv, res, ns, name, type, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    rv as i64,
                    key.res,
                    key.ns,
                    key.name,
                    kind.as_str(),
                    json
                ])
            })
            .map_err(db_err)?;
            tx.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES ('rv', ?1)")
                .and_then(|mut s| s.execute([rv as i64]))
                .map_err(db_err)?;
        }
        // Bound the event log: watchers older than the window get 410 and relist.
        let slack = (self.window / 8).max(1);
        if rv > compacted + self.window + slack {
            let upto = rv - self.window;
            tx.prepare_cached("DELETE FROM events WHERE rv <= ?1")
                .and_then(|mut s| s.execute([upto as i64]))
                .map_err(db_err)?;
            tx.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES ('compacted', ?1)")
                .and_then(|mut s| s.execute([upto as i64]))
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            db.compacted = upto;
        } else {
            tx.commit().map_err(db_err)?;
        }
        let stored = Arc::new(stored);
        {
            let mut snap = self.snap.write().unwrap_or_else(|e| e.into_inner());
            if kind == EventType::Deleted {
                snap.objects.remove(&key);
            } else {
                snap.objects.insert(key.clone(), stored.clone());
            }
            snap.rv = rv;
        }
        // Sent while holding the db lock so watchers see changes in resourceVersion order.
        let _ = self.tx.send(Arc::new(Change {
            rv,
            key,
            kind,
            object: stored.clone(),
            previous: current,
        }));
        Ok(stored)
    }

    /// Changes of storage resource `res` after `since`, from the durable log. Fails with
    /// [`ApiError::Gone`] when the log no longer reaches back to `since`.
    pub async fn changes_since(&self, res: &str, since: u64) -> Result<Vec<Change>> {
        let this = self.clone();
        let res = res.to_owned();
        tokio::task::spawn_blocking(move || {
            let db = this.db.lock().unwrap_or_else(|e| e.into_inner());
            // resourceVersions are stored as SQLite's signed integers.
            let Ok(since_i64) = i64::try_from(since) else {
                return Ok(Vec::new());
            };
            if since < db.compacted {
                return Err(ApiError::Gone {
                    requested: since,
                    oldest: db.compacted,
                });
            }
            let path = this.path.display().to_string();
            let db_err = |source| ApiError::Database {
                path: path.clone(),
                source,
            };
            let mut stmt = db
                .conn
                .prepare_cached(
                    "SELECT rv, ns, name, type, json FROM events WHERE res = ?1 AND rv > ?2 ORDER BY rv",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![res, since_i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (rv, ns, name, kind, json) = row.map_err(db_err)?;
                let object: Value = match serde_json::from_str(&json) {
                    Ok(o) => o,
                    Err(e) => {
                        // Written by an older server without limits: skipped, not fatal.
                        tracing::warn!(rv, resource = %res, namespace = %ns, name = %name, error = %e,
                            "a change in the watch log cannot be read back; skipped");
                        continue;
                    }
                };
                out.push(Change {
                    rv: rv as u64,
                    key: Key {
                        res: res.clone(),
                        ns,
                        name,
                    },
                    kind: EventType::parse(&kind),
                    object: Arc::new(object),
                    previous: None,
                });
            }
            Ok(out)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("store task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> Key {
        Key {
            res: "g/things".into(),
            ns: String::new(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn versions_survive_reopen_and_old_versions_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path, 4).unwrap();
        let a = store
            .write(
                key("a"),
                Some(json!({"metadata": {"name": "a"}})),
                Expect::Absent,
                "Thing",
            )
            .await
            .unwrap();
        assert_eq!(rv_of(&a), 1);
        let err = store
            .write(
                key("a"),
                Some(json!({"metadata": {}})),
                Expect::Version(7),
                "Thing",
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Conflict { .. }));
        for i in 0..10 {
            store
                .write(
                    key(&format!("n{i}")),
                    Some(json!({"metadata": {}})),
                    Expect::Absent,
                    "Thing",
                )
                .await
                .unwrap();
        }
        drop(store);
        let store = Store::open(&path, 4).unwrap();
        assert_eq!(store.current_rv(), 11);
        assert_eq!(store.list("g/things", None).0.len(), 11);
        assert!(matches!(
            store.changes_since("g/things", 1).await,
            Err(ApiError::Gone { .. })
        ));
        let recent = store.changes_since("g/things", 9).await.unwrap();
        assert_eq!(recent.iter().map(|c| c.rv).collect::<Vec<_>>(), [10, 11]);
    }

    #[tokio::test]
    async fn an_unreadable_object_is_set_aside_and_the_rest_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path, 100).unwrap();
        store
            .write(
                key("fine"),
                Some(json!({"metadata": {"name": "fine"}})),
                Expect::Absent,
                "Thing",
            )
            .await
            .unwrap();
        drop(store);
        // What an older server could store: too deep for serde_json to parse again.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let conn = Connection::open(&path).unwrap();
        for (name, json) in [("deep", deep.as_str()), ("cut", "{\"metadata\": {")] {
            conn.execute(
                "INSERT INTO objects(res, ns, name, rv, json) VALUES ('g/things', '', ?1, 7, ?2)",
                params![name, json],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO events(rv, res, ns, name, type, json) VALUES (99, 'g/things', '', 'deep', 'ADDED', ?1)",
            params![deep],
        )
        .unwrap();
        drop(conn);

        let store = Store::open(&path, 100).unwrap();
        let names: Vec<_> = store
            .list("g/things", None)
            .0
            .iter()
            .map(|o| o["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, [json!("fine")]);
        let changes = store.changes_since("g/things", 0).await.unwrap();
        assert_eq!(changes.iter().map(|c| c.rv).collect::<Vec<_>>(), [1]);
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 2);
    }

    #[tokio::test]
    async fn an_object_too_deep_or_too_big_is_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db"), 100).unwrap();
        let mut deep = json!(1);
        for _ in 0..150 {
            deep = json!([deep]);
        }
        let big = json!({"metadata": {}, "data": "x".repeat(crate::limits::MAX_OBJECT_BYTES)});
        for (name, obj) in [("deep", json!({"metadata": {}, "x": deep})), ("big", big)] {
            let err = store
                .write(key(name), Some(obj), Expect::Absent, "Thing")
                .await
                .unwrap_err();
            assert!(
                matches!(err, ApiError::TooLarge(_) | ApiError::Unprocessable(_)),
                "{err}"
            );
        }
        assert_eq!(store.current_rv(), 0);
        assert!(store.list("g/things", None).0.is_empty());
    }
}
