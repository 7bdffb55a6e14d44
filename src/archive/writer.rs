//! Writer threads for the contents of small files.
//!
//! Unpacking a tree of tens of thousands of small files is bound by the system calls per
//! file more than by the bytes: one thread that creates, writes, stamps and closes every file
//! leaves the disk and the other core idle. So the unpacking thread keeps the tree's order and
//! does everything that names a path (creating files, directories, links, with every safety
//! check), and hands each small file it created, already open, to this pool with its content:
//! a writer thread writes the bytes, sets the owner, mode and mtime ([`Finish`]) and closes
//! it. Memory stays bounded: the buffers waiting in the pool and those kept for reuse hold
//! at most [`Writers::MAX_IN_FLIGHT`] bytes together (the unpacking thread waits for room
//! beyond that). [`Writers::finish`] waits for every file and returns the first error,
//! naming its entry.

use super::unpack::shown;
use anyhow::{Context, Result};
use rustix::fd::AsFd;
use rustix::fs::{Gid, Mode, Timestamps, Uid};
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// What is left to do to a file once its content is written, in the order it must be done:
/// the owner, then the mode (chown clears setuid/setgid), then the mtime.
pub struct Finish {
    /// The owner to set, if the file was not created with it.
    pub owner: Option<(Uid, Gid)>,
    /// The mode to set, if the file was not created with it.
    pub mode: Option<Mode>,
    /// The mtime (the atime is left alone).
    pub mtime: Timestamps,
}

impl Finish {
    /// Do it to `fd`; errors say which part failed.
    pub fn apply(&self, fd: impl AsFd) -> Result<()> {
        self.set_owner_and_mode(&fd)?;
        self.set_mtime(&fd)
    }

    /// The owner, then the mode: what must come before xattrs (chown clears
    /// `security.capability`).
    pub fn set_owner_and_mode(&self, fd: impl AsFd) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            rustix::fs::fchown(&fd, Some(uid), Some(gid))
                .map_err(std::io::Error::from)
                .context("cannot set the owner")?;
        }
        if let Some(mode) = self.mode {
            rustix::fs::fchmod(&fd, mode)
                .map_err(std::io::Error::from)
                .context("cannot set the mode")?;
        }
        Ok(())
    }

    /// The mtime, last of all.
    pub fn set_mtime(&self, fd: impl AsFd) -> Result<()> {
        rustix::fs::futimens(&fd, &self.mtime)
            .map_err(std::io::Error::from)
            .context("cannot set the mtime")
    }
}

/// Files sent to a writer at once.
const BATCH: usize = 16;
/// Batches waiting for a writer at most. With the batch being gathered and one per writer
/// being written, this bounds the files held open (a service's default limit is 1024).
const QUEUED: usize = 8;

/// The smallest buffer size; the sizes are its powers-of-two multiples up to
/// [`Writers::SMALL`].
const CLASS_MIN: usize = 4096;
const CLASSES: usize = (Writers::SMALL as usize / CLASS_MIN).trailing_zeros() as usize + 1;

/// The size class of a buffer for `n` bytes: the smallest power of two from [`CLASS_MIN`]
/// that holds them.
fn size_class(n: usize) -> usize {
    (n.max(CLASS_MIN).next_power_of_two() / CLASS_MIN).trailing_zeros() as usize
}

/// A file's whole content: the first `len` bytes of `data`, whose length is its size class.
pub struct Buffer {
    data: Vec<u8>,
    len: usize,
}

impl Buffer {
    /// The content, to be filled.
    pub fn content(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}

/// The error of a writer thread. It names its own entry, not the one the unpacking thread
/// was at when it learnt of it.
#[derive(Debug)]
pub struct WriterError(String);

impl std::fmt::Display for WriterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WriterError {}

/// One file to finish: its open descriptor, its whole content and what follows the content.
struct Job {
    file: File,
    data: Buffer,
    finish: Finish,
    /// The entry's name, for errors.
    name: PathBuf,
}

/// What the threads share: bytes in flight, buffers to reuse and the first error.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    room: Condvar,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    error: Option<anyhow::Error>,
    /// Emptied buffers for the next files, by size class; with the buffers in flight, they
    /// add up to at most [`Writers::MAX_IN_FLIGHT`] bytes. Reused because a fresh buffer for
    /// each file is a `mmap`, page faults and a `munmap` in musl's allocator.
    free: [Vec<Vec<u8>>; CLASSES],
    free_bytes: usize,
}

impl State {
    /// Drop free buffers, largest first, until `want` more bytes fit in the budget.
    fn evict(&mut self, want: usize) {
        for class in (0..CLASSES).rev() {
            while self.in_flight + self.free_bytes + want > Writers::MAX_IN_FLIGHT {
                let Some(b) = self.free[class].pop() else {
                    break;
                };
                self.free_bytes -= b.len();
            }
        }
    }

    /// Keep `data` for reuse if it fits in the budget.
    fn recycle(&mut self, data: Vec<u8>) {
        if self.in_flight + self.free_bytes + data.len() <= Writers::MAX_IN_FLIGHT {
            self.free_bytes += data.len();
            self.free[size_class(data.len())].push(data);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pool; see the module documentation.
pub struct Writers {
    tx: Option<SyncSender<Vec<Job>>>,
    /// Files not sent to the writers yet.
    batch: Vec<Job>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Writers {
    /// Bytes of buffers the pool holds at most, in flight or free.
    pub const MAX_IN_FLIGHT: usize = 16 << 20;
    /// Files larger than this are written by the unpacking thread itself: they are bound by
    /// bandwidth, not by system calls, and would take the whole budget.
    pub const SMALL: u64 = 1 << 20;

    /// Start `n` writer threads (at least one).
    pub fn start(n: usize) -> Result<Writers> {
        let (tx, rx) = sync_channel::<Vec<Job>>(QUEUED);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::new();
        for _ in 0..n.max(1) {
            let (rx, shared) = (rx.clone(), shared.clone());
            let t = crate::engine::same_step()
                .spawn(move || work(&rx, &shared))
                .context("cannot start a writer thread")?;
            threads.push(t);
        }
        Ok(Writers {
            tx: Some(tx),
            batch: Vec::with_capacity(BATCH),
            shared,
            threads,
        })
    }

    /// A buffer for a file's content of `n` bytes (at most [`Writers::SMALL`]), reused
    /// where one of its size class is free. Its bytes are whatever the last file left there:
    /// the caller fills all `n` of them.
    pub fn buffer(&self, n: usize) -> Buffer {
        let class = size_class(n);
        let mut st = self.shared.lock();
        let data = match st.free[class].pop() {
            Some(b) => {
                st.free_bytes -= b.len();
                b
            }
            None => {
                // A new buffer: make room for it by freeing others first.
                st.evict(CLASS_MIN << class);
                drop(st);
                vec![0; CLASS_MIN << class]
            }
        };
        Buffer { data, len: n }
    }

    /// Hand over `file`, just created, to be filled with `data`, finished and closed. Waits
    /// while the pool is full; fails if a writer failed already. Files go to the writers in
    /// batches of [`BATCH`], so that a writer is woken once per batch, not once per file.
    pub fn submit(
        &mut self,
        file: File,
        data: Buffer,
        finish: Finish,
        name: PathBuf,
    ) -> Result<()> {
        let len = data.data.len();
        let mut st = self.shared.lock();
        while st.error.is_none() && st.in_flight > 0 && st.in_flight + len > Self::MAX_IN_FLIGHT {
            drop(st);
            // The writers may be waiting for the files of this batch.
            self.send()?;
            st = self.shared.lock();
            if st.in_flight + len > Self::MAX_IN_FLIGHT {
                st = self.shared.room.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        st.in_flight += len;
        drop(st);
        self.batch.push(Job {
            file,
            data,
            finish,
            name,
        });
        if self.batch.len() == BATCH {
            self.send()?;
        }
        Ok(())
    }

    /// Send the files gathered so far to the writers.
    fn send(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        match self.tx.as_ref().map(|tx| tx.send(batch)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self
                .error()
                .unwrap_or_else(|| anyhow::anyhow!("the writer threads stopped"))),
        }
    }

    fn error(&self) -> Option<anyhow::Error> {
        self.shared.lock().error.take()
    }

    /// Wait until every file handed over is written and closed; the first error, if any.
    pub fn finish(&mut self) -> Result<()> {
        self.send()?;
        self.stop();
        self.error().map_or(Ok(()), Err)
    }

    fn stop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            // A writer cannot panic but by a bug; its files then simply stay unfinished and
            // the unpack fails on the error below.
            if t.join().is_err() {
                let mut st = self.shared.lock();
                st.error
                    .get_or_insert_with(|| anyhow::anyhow!("a writer thread panicked"));
            }
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A writer thread: take batches until the channel closes; after an error, only drain.
fn work(rx: &Mutex<Receiver<Vec<Job>>>, shared: &Shared) {
    loop {
        let batch = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(batch) => batch,
            Err(_) => return,
        };
        let mut r = Ok(());
        let mut buffers = Vec::with_capacity(batch.len());
        for mut job in batch {
            if r.is_ok() && shared.lock().error.is_none() {
                r = write(&mut job);
            }
            buffers.push(std::mem::take(&mut job.data.data));
            // Dropping the job closes the file.
        }
        let mut st = shared.lock();
        for data in buffers {
            st.in_flight -= data.len();
            st.recycle(data);
        }
        if let Err(e) = r {
            st.error
                .get_or_insert_with(|| WriterError(format!("{e:#}")).into());
        }
        drop(st);
        shared.room.notify_all();
    }
}

fn write(job: &mut Job) -> Result<()> {
    let name = || shown(job.name.as_os_str().as_bytes());
    job.file
        .write_all(&job.data.data[..job.data.len])
        .with_context(|| format!("archive entry {}: cannot write the file", name()))?;
    job.finish
        .apply(&job.file)
        .with_context(|| format!("archive entry {}", name()))
}
