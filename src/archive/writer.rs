//! Writer threads for the contents of small files.
//!
//! Unpacking a tree of tens of thousands of small files is bound by the system calls per
//! file more than by the bytes: one thread that creates, writes, stamps and closes every file
//! leaves the disk and the other core idle. So the unpacking thread keeps the tree's order and
//! does everything that names a path (creating files, directories, links, with every safety
//! check), and hands each small file it created, already open, to this pool with its content:
//! a writer thread writes the bytes, sets the mtime and closes it. Memory stays bounded: at
//! most [`Writers::MAX_IN_FLIGHT`] bytes wait in the pool; the unpacking thread waits for
//! room beyond that. [`Writers::finish`] waits for every file and returns the first error,
//! naming its entry.

use anyhow::{Context, Result};
use rustix::fs::Timestamps;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// One file to finish: its open descriptor, its whole content and its mtime.
struct Job {
    file: File,
    data: Vec<u8>,
    mtime: Timestamps,
    /// The entry's name, for errors.
    name: PathBuf,
}

/// What the threads share: bytes in flight and the first error.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    room: Condvar,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    error: Option<anyhow::Error>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pool; see the module documentation.
pub struct Writers {
    tx: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Writers {
    /// Bytes of file content the pool holds at most.
    pub const MAX_IN_FLIGHT: usize = 16 << 20;
    /// Files larger than this are written by the unpacking thread itself: they are bound by
    /// bandwidth, not by system calls, and would take the whole budget.
    pub const SMALL: u64 = 1 << 20;

    /// Start `n` writer threads (at least one).
    pub fn start(n: usize) -> Result<Writers> {
        let (tx, rx) = sync_channel::<Job>(1024);
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
            shared,
            threads,
        })
    }

    /// Hand over `file`, just created, to be filled with `data`, stamped with `mtime` and
    /// closed. Waits while the pool is full; fails if a writer failed already.
    pub fn submit(
        &self,
        file: File,
        data: Vec<u8>,
        mtime: Timestamps,
        name: PathBuf,
    ) -> Result<()> {
        let len = data.len().min(Self::MAX_IN_FLIGHT);
        let mut st = self.shared.lock();
        while st.error.is_none() && st.in_flight > 0 && st.in_flight + len > Self::MAX_IN_FLIGHT {
            st = self.shared.room.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        st.in_flight += len;
        drop(st);
        let job = Job {
            file,
            data,
            mtime,
            name,
        };
        let sent = self.tx.as_ref().map(|tx| tx.send(job));
        match sent {
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

/// A writer thread: take jobs until the channel closes; after an error, only drain.
fn work(rx: &Mutex<Receiver<Job>>, shared: &Shared) {
    loop {
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let len = job.data.len().min(Writers::MAX_IN_FLIGHT);
        let failed = shared.lock().error.is_some();
        let r = if failed { Ok(()) } else { write(job) };
        let mut st = shared.lock();
        st.in_flight -= len;
        if let Err(e) = r {
            st.error.get_or_insert(e);
        }
        drop(st);
        shared.room.notify_all();
    }
}

fn write(mut job: Job) -> Result<()> {
    let name = job.name.display();
    job.file
        .write_all(&job.data)
        .with_context(|| format!("archive entry {name:?}: cannot write the file"))?;
    rustix::fs::futimens(&job.file, &job.mtime)
        .map_err(std::io::Error::from)
        .with_context(|| format!("archive entry {name:?}: cannot set the mtime"))
}
