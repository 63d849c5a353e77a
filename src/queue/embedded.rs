//! The embedded store: one redb file, written by one thread that commits in groups.
//!
//! redb gives crash-safe transactions on a single file (copy-on-write B-trees, checksummed
//! commit slots, an fsync per durable commit) with no server. Every write goes through one
//! writer thread: it takes whatever has arrived since its last commit (accepted calls, calls
//! done, new attempt counts), writes them in one transaction and commits it with
//! `Durability::Immediate`, then releases the accepting requests of that group. A 202 is thus
//! sent only after an fsync that covers its call, and a thousand clients share a few fsyncs
//! instead of paying one each. Done calls are deleted in the same groups; when the queue is
//! empty and the file has grown, it is compacted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel::{self, Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::store::{Id, Meta, Pending, Queued, Store, StoreError};

/// Each call's head, as JSON.
const META: TableDefinition<u64, &[u8]> = TableDefinition::new("meta");
/// Each call's body, as the client sent it.
const BODY: TableDefinition<u64, &[u8]> = TableDefinition::new("body");

/// Most operations committed in one transaction.
const MAX_GROUP: usize = 4096;
/// The page cache redb may use; its default (1 GiB) is sized for databases, not a queue.
const CACHE_BYTES: usize = 16 << 20;
/// The file is compacted when the queue is empty and it is larger than this.
const COMPACT_ABOVE: u64 = 4 << 20;

enum Op {
    Push(Box<Queued>, Sender<Result<Id, StoreError>>),
    Done(Id),
    Update(Id, Vec<u8>),
    Flush(Sender<()>),
}

/// The redb-backed store (see the module docs).
pub struct Embedded {
    /// `None` once closed: the file's lock is released then, so it can be opened again.
    db: Shared,
    ops: Mutex<Option<Sender<Op>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

type Shared = Arc<RwLock<Option<Database>>>;

fn closed() -> StoreError {
    StoreError("the store is closed".into())
}

fn failed(e: impl Into<redb::Error>) -> StoreError {
    StoreError(e.into().to_string())
}

impl Embedded {
    /// Opens (or creates) the store at `path`, recovering it if the last run was killed.
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError(format!("{}: {}", path.display(), failed(e).0)))?;
        let txn = db.begin_write().map_err(failed)?;
        let (next, kept) = {
            let meta = txn.open_table(META).map_err(failed)?;
            txn.open_table(BODY).map_err(failed)?;
            let last = meta.last().map_err(failed)?.map(|(k, _)| k.value());
            (last.map_or(1, |k| k + 1), meta.len().map_err(failed)?)
        };
        txn.commit().map_err(failed)?;
        let db = Arc::new(RwLock::new(Some(db)));
        let kept = AtomicU64::new(kept);
        let (tx, rx) = channel::unbounded();
        let writer = Writer {
            db: Arc::clone(&db),
            next,
            kept,
            path: path.to_owned(),
            compacted_at: COMPACT_ABOVE,
        };
        let writer = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError(format!("starting the writer: {e}")))?;
        Ok(Embedded {
            db,
            ops: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            path: path.to_owned(),
        })
    }

    fn send(&self, op: Op) -> bool {
        match &*self.ops.lock() {
            Some(tx) => tx.send(op).is_ok(),
            None => false,
        }
    }
}

impl Store for Embedded {
    fn push(&self, call: Queued) -> Result<Id, StoreError> {
        let (tx, rx) = channel::bounded(1);
        if !self.send(Op::Push(Box::new(call), tx)) {
            return Err(closed());
        }
        rx.recv()
            .unwrap_or_else(|_| Err(StoreError("the store's writer stopped".into())))
    }

    fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        let db = self.db.read();
        let db = db.as_ref().ok_or_else(closed)?;
        let txn = db.begin_read().map_err(failed)?;
        let meta = txn.open_table(META).map_err(failed)?;
        let bodies = txn.open_table(BODY).map_err(failed)?;
        let mut pending = Vec::new();
        for entry in meta.iter().map_err(failed)? {
            let (id, head) = entry.map_err(failed)?;
            let id = id.value();
            let Ok(head) = serde_json::from_slice::<Meta>(head.value()) else {
                log::warn!("queue store: call {id} cannot be read; left out");
                continue;
            };
            let body = bodies
                .get(id)
                .map_err(failed)?
                .map_or(0, |b| b.value().len());
            let call = Queued {
                meta: head,
                body: Vec::new(),
            };
            pending.push(Pending {
                id,
                bytes: call.bytes() + body as u64,
                function: call.meta.function,
                namespace: call.meta.namespace,
                attempts: call.meta.attempts,
            });
        }
        Ok(pending)
    }

    fn load(&self, id: Id) -> Result<Option<Queued>, StoreError> {
        let db = self.db.read();
        let db = db.as_ref().ok_or_else(closed)?;
        let txn = db.begin_read().map_err(failed)?;
        let meta = txn.open_table(META).map_err(failed)?;
        let Some(head) = meta.get(id).map_err(failed)? else {
            return Ok(None);
        };
        let meta: Meta = serde_json::from_slice(head.value())
            .map_err(|e| StoreError(format!("call {id}: {e}")))?;
        let body = txn
            .open_table(BODY)
            .map_err(failed)?
            .get(id)
            .map_err(failed)?
            .map_or_else(Vec::new, |b| b.value().to_vec());
        Ok(Some(Queued { meta, body }))
    }

    fn done(&self, id: Id) {
        self.send(Op::Done(id));
    }

    fn retry_later(&self, id: Id, meta: &Meta) {
        match serde_json::to_vec(meta) {
            Ok(head) => {
                self.send(Op::Update(id, head));
            }
            Err(e) => log::warn!("queue store: call {id}: {e}"),
        }
    }

    fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    fn close(&self) {
        let (tx, rx) = channel::bounded(1);
        if self.send(Op::Flush(tx)) {
            let _ = rx.recv();
        }
        self.ops.lock().take();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
        self.db.write().take();
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.close();
    }
}

/// The embedded store, opened when it is first needed: at once when its file exists (calls
/// a previous run left), otherwise at the first accepted call. A gateway that never queues a
/// call leaves no file behind, and holds no lock on one.
pub struct Lazy {
    path: PathBuf,
    store: RwLock<Option<Arc<Embedded>>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Lazy {
    pub fn new(path: &Path) -> Result<Lazy, StoreError> {
        let store = match path.exists() {
            true => Some(Arc::new(Embedded::open(path)?)),
            false => None,
        };
        Ok(Lazy {
            path: path.to_owned(),
            store: RwLock::new(store),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether the file is open.
    pub fn is_open(&self) -> bool {
        self.store.read().is_some()
    }

    fn opened(&self) -> Option<Arc<Embedded>> {
        self.store.read().clone()
    }

    fn open(&self) -> Result<Arc<Embedded>, StoreError> {
        if let Some(store) = self.opened() {
            return Ok(store);
        }
        let mut slot = self.store.write();
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        if let Some(store) = &*slot {
            return Ok(Arc::clone(store));
        }
        let store = Arc::new(Embedded::open(&self.path)?);
        log::info!("async queue stored in {}", self.path.display());
        *slot = Some(Arc::clone(&store));
        Ok(store)
    }
}

impl Store for Lazy {
    fn push(&self, call: Queued) -> Result<Id, StoreError> {
        self.open()?.push(call)
    }

    fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        self.opened().map_or(Ok(Vec::new()), |s| s.pending())
    }

    fn load(&self, id: Id) -> Result<Option<Queued>, StoreError> {
        self.opened().map_or(Ok(None), |s| s.load(id))
    }

    fn done(&self, id: Id) {
        if let Some(store) = self.opened() {
            store.done(id);
        }
    }

    fn retry_later(&self, id: Id, meta: &Meta) {
        if let Some(store) = self.opened() {
            store.retry_later(id, meta);
        }
    }

    fn disk_bytes(&self) -> u64 {
        self.opened().map_or(0, |s| s.disk_bytes())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(store) = self.store.write().take() {
            store.close();
        }
    }
}

/// The one thread that writes.
struct Writer {
    db: Shared,
    next: Id,
    /// Calls kept, as of the last commit.
    kept: AtomicU64,
    path: PathBuf,
    /// The file's size after the last compaction (or the threshold): compacting again is worth
    /// it once the file has grown past twice that.
    compacted_at: u64,
}

impl Writer {
    fn run(mut self, ops: Receiver<Op>) {
        while let Ok(first) = ops.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match ops.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            self.commit(group);
            if self.kept.load(Ordering::Relaxed) == 0 {
                self.compact_if_grown();
            }
        }
    }

    /// Writes a group in one durable transaction, then answers its pushes.
    fn commit(&mut self, group: Vec<Op>) {
        let first = self.next;
        let written = self.write(&group);
        let mut id = first;
        let mut kept = self.kept.load(Ordering::Relaxed) as i64;
        for op in group {
            match (op, &written) {
                (Op::Push(_, reply), Ok(())) => {
                    let _ = reply.send(Ok(id));
                    id += 1;
                    kept += 1;
                }
                (Op::Push(_, reply), Err(e)) => {
                    let _ = reply.send(Err(e.clone()));
                }
                (Op::Done(_), Ok(())) => kept -= 1,
                (Op::Flush(reply), _) => {
                    let _ = reply.send(());
                }
                (Op::Done(id) | Op::Update(id, _), Err(e)) => {
                    log::warn!("queue store: call {id} not updated: {e}");
                }
                (Op::Update(..), Ok(())) => {}
            }
        }
        match written {
            Ok(()) => self.kept.store(kept.max(0) as u64, Ordering::Relaxed),
            Err(_) => self.next = first,
        }
    }

    fn write(&mut self, group: &[Op]) -> Result<(), StoreError> {
        let db = self.db.read();
        let db = db.as_ref().ok_or_else(closed)?;
        let txn = db.begin_write().map_err(failed)?;
        {
            let mut meta = txn.open_table(META).map_err(failed)?;
            let mut bodies = txn.open_table(BODY).map_err(failed)?;
            for op in group {
                match op {
                    Op::Push(call, _) => {
                        let head = serde_json::to_vec(&call.meta)
                            .map_err(|e| StoreError(e.to_string()))?;
                        meta.insert(self.next, head.as_slice()).map_err(failed)?;
                        bodies
                            .insert(self.next, call.body.as_slice())
                            .map_err(failed)?;
                        self.next += 1;
                    }
                    Op::Done(id) => {
                        meta.remove(*id).map_err(failed)?;
                        bodies.remove(*id).map_err(failed)?;
                    }
                    Op::Update(id, head) => {
                        if meta.get(*id).map_err(failed)?.is_some() {
                            meta.insert(*id, head.as_slice()).map_err(failed)?;
                        }
                    }
                    Op::Flush(_) => {}
                }
            }
        }
        txn.commit().map_err(failed)
    }

    /// Gives back the space of a burst once it has drained: redb reuses freed pages but does
    /// not shrink its file by itself.
    fn compact_if_grown(&mut self) {
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size <= self.compacted_at.saturating_mul(2) {
            return;
        }
        let mut db = self.db.write();
        let Some(db) = db.as_mut() else {
            return;
        };
        match db.compact() {
            Ok(_) => {
                let after = std::fs::metadata(&self.path).map_or(0, |m| m.len());
                log::info!("queue store compacted: {size} -> {after} bytes");
                self.compacted_at = after.max(COMPACT_ABOVE);
            }
            Err(e) => log::warn!("queue store: compaction failed: {}", failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::TempDir;

    fn call(n: usize) -> Queued {
        super::super::store::sample("/x", n)
    }

    #[test]
    fn calls_outlive_the_store_until_done_and_keep_their_attempts() {
        let scratch = TempDir::new("queue-unit");
        let dir = scratch.path();
        let path = dir.join("q.redb");
        let ids: Vec<Id> = {
            let store = Embedded::open(&path).unwrap();
            let ids = (0..3).map(|n| store.push(call(n)).unwrap()).collect();
            store.close();
            ids
        };
        let store = Embedded::open(&path).unwrap();
        let pending = store.pending().unwrap();
        assert_eq!(pending.iter().map(|p| p.id).collect::<Vec<_>>(), ids);
        assert_eq!(store.load(ids[2]).unwrap().unwrap(), call(2));
        store.done(ids[0]);
        let mut retried = call(1).meta;
        retried.attempts = 2;
        store.retry_later(ids[1], &retried);
        let later = store.push(call(4)).unwrap();
        assert!(later > ids[2], "ids keep increasing across opens");
        store.close();
        let store = Embedded::open(&path).unwrap();
        let pending = store.pending().unwrap();
        assert_eq!(
            pending
                .iter()
                .map(|p| (p.id, p.attempts))
                .collect::<Vec<_>>(),
            vec![(ids[1], 2), (ids[2], 0), (later, 0)]
        );
        assert_eq!(store.load(ids[0]).unwrap(), None);
        store.close();
    }

    #[test]
    fn the_file_is_made_by_the_first_call_and_reopened_when_it_exists() {
        let scratch = TempDir::new("queue-lazy");
        let dir = scratch.path();
        let path = dir.join("q.redb");
        let store = Lazy::new(&path).unwrap();
        assert_eq!(store.pending().unwrap(), Vec::new());
        assert!(!path.exists() && !store.is_open());
        let id = store.push(call(3)).unwrap();
        assert!(path.exists());
        store.close();
        let store = Lazy::new(&path).unwrap();
        assert!(store.is_open(), "a file left by a run is opened at once");
        assert_eq!(store.pending().unwrap()[0].id, id);
        store.close();
        assert!(store.push(call(1)).is_err(), "closed is closed");
    }

    #[test]
    fn a_drained_queue_gives_its_disk_back() {
        let scratch = TempDir::new("queue-compact");
        let dir = scratch.path();
        let path = dir.join("q.redb");
        let store = Embedded::open(&path).unwrap();
        let ids: Vec<Id> = (0..200)
            .map(|_| store.push(call(64 << 10)).unwrap())
            .collect();
        let full = store.disk_bytes();
        assert!(full > 12 << 20, "{full}");
        for id in ids {
            store.done(id);
        }
        store.close();
        let store = Embedded::open(&path).unwrap();
        // The compaction runs after the group that emptied the queue; a flush follows it.
        store.push(call(1)).map(|id| store.done(id)).unwrap();
        store.close();
        assert!(
            store.disk_bytes() < full / 2,
            "{} of {full}",
            store.disk_bytes()
        );
    }
}
