//! A bounded in-memory pipe between two threads of the unpack pipeline.
//!
//! The writer fills fixed-size buffers and sends them over a bounded channel; the reader hands
//! them out through [`BufRead`] and sends the empty ones back, so the pipe never holds more
//! than `buffers × size` bytes and allocates nothing after it is made. The end of the data is
//! an explicit message: a writer that is dropped without [`PipeWriter::finish`] (its thread
//! failed) makes the reader fail instead of seeing a clean, truncated end.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

enum Msg {
    /// A buffer and how many of its bytes are data.
    Data(Vec<u8>, usize),
    End,
}

/// The message of the error a side sees when the other side went away. The pipeline uses
/// it to tell the first failure from its echoes in the other threads.
pub const CLOSED: &str = "the other end of the pipe went away";

/// Whether `e` only says that the other side of a pipe stopped (a consequence, not a cause).
pub fn is_closed(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.to_string() == CLOSED)
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, CLOSED)
}

/// A pipe of `buffers` buffers of `size` bytes each.
pub fn pipe(buffers: usize, size: usize) -> (PipeWriter, PipeReader) {
    let (data_tx, data_rx) = sync_channel(buffers);
    let (free_tx, free_rx) = sync_channel(buffers + 1);
    for _ in 0..buffers {
        // Cannot fail: the channel has room for all of them and the receiver is alive.
        // Buffers keep their full length: only `filled`/`end` say how much is data, so
        // nothing is zeroed again after this.
        let _ = free_tx.send(vec![0; size]);
    }
    (
        PipeWriter {
            data: data_tx,
            free: free_rx,
            cur: Vec::new(),
            filled: 0,
            size,
        },
        PipeReader {
            data: data_rx,
            free: free_tx,
            cur: Vec::new(),
            pos: 0,
            end: 0,
            ended: false,
        },
    )
}

/// The sending half.
pub struct PipeWriter {
    data: SyncSender<Msg>,
    free: Receiver<Vec<u8>>,
    /// The buffer being filled (empty when none is held).
    cur: Vec<u8>,
    filled: usize,
    size: usize,
}

impl PipeWriter {
    /// The size of the pipe's buffers.
    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// The free part of the buffer being filled, at least `at_least` bytes of it (up to
    /// [`PipeWriter::buffer_size`]): a buffer with less room left is sent on first. Waits for
    /// the reader to return a buffer if needed. [`PipeWriter::advance`] says how much of it
    /// was filled.
    pub fn space(&mut self, at_least: usize) -> io::Result<&mut [u8]> {
        if !self.cur.is_empty() && self.cur.len() - self.filled < at_least {
            self.flush()?;
        }
        if self.cur.is_empty() {
            self.cur = self.free.recv().map_err(|_| closed())?;
            self.filled = 0;
        }
        Ok(&mut self.cur[self.filled..])
    }

    /// `n` more bytes of [`PipeWriter::space`] are data; a full buffer is sent on.
    pub fn advance(&mut self, n: usize) -> io::Result<()> {
        self.filled += n;
        if self.filled == self.cur.len() {
            self.flush()?;
        }
        Ok(())
    }

    /// Read once from `r` straight into the pipe's buffer; returns 0 at the end of `r`.
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        let n = r.read(self.space(1)?)?;
        self.advance(n)?;
        Ok(n)
    }

    /// Copy all of `r` into the pipe; returns the number of bytes copied.
    pub fn copy_from(&mut self, r: &mut impl Read) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            crate::sys::signal::check()?;
            match self.read_from(r) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Send what is buffered and mark the end of the data.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        self.data.send(Msg::End).map_err(|_| closed())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.space(1)?;
        let n = buf.len().min(room.len());
        room[..n].copy_from_slice(&buf[..n]);
        self.advance(n)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.filled > 0 {
            let full = std::mem::take(&mut self.cur);
            self.data
                .send(Msg::Data(full, self.filled))
                .map_err(|_| closed())?;
            self.filled = 0;
        }
        Ok(())
    }
}

/// The receiving half.
pub struct PipeReader {
    data: Receiver<Msg>,
    free: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    end: usize,
    ended: bool,
}

impl BufRead for PipeReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos >= self.end && !self.ended {
            let (next, end) = match self.data.recv() {
                Ok(Msg::Data(v, n)) => (v, n),
                Ok(Msg::End) => {
                    self.ended = true;
                    (Vec::new(), 0)
                }
                Err(_) => return Err(closed()),
            };
            let used = std::mem::replace(&mut self.cur, next);
            self.pos = 0;
            self.end = end;
            if !used.is_empty() {
                // The writer may be gone already (it finished): nothing to give back then.
                let _ = self.free.try_send(used);
            }
        }
        Ok(&self.cur[self.pos..self.end])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.end);
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_through_buf(self, buf)
    }
}

/// `Read::read` for a reader whose `BufRead` side is the real one: copy out of its buffer.
pub(crate) fn read_through_buf(r: &mut impl BufRead, buf: &mut [u8]) -> io::Result<usize> {
    let avail = r.fill_buf()?;
    let n = avail.len().min(buf.len());
    buf[..n].copy_from_slice(&avail[..n]);
    r.consume(n);
    Ok(n)
}

/// What `fill` writes into a pipe of 2 buffers of `size` bytes, read on the calling thread
/// while `fill` runs on another; `fill`'s error comes first.
#[cfg(test)]
pub fn through_pipe(
    size: usize,
    fill: impl FnOnce(&mut PipeWriter) -> anyhow::Result<()> + Send,
) -> anyhow::Result<Vec<u8>> {
    let (mut w, mut r) = pipe(2, size);
    std::thread::scope(|s| {
        let t = s.spawn(move || -> anyhow::Result<()> {
            fill(&mut w)?;
            Ok(w.finish()?)
        });
        let mut got = Vec::new();
        let read = r.read_to_end(&mut got);
        drop(r);
        t.join().expect("the pipe's writer panicked")?;
        read?;
        Ok(got)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_all_bytes_in_order() {
        let (mut w, mut r) = pipe(2, 7);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let src = data.clone();
        let t = std::thread::spawn(move || {
            w.copy_from(&mut &src[..500]).unwrap();
            w.write_all(&src[500..]).unwrap();
            w.finish().unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn a_writer_that_dies_is_an_error_not_an_end() {
        let (mut w, mut r) = pipe(2, 4);
        w.write_all(b"abc").unwrap();
        w.flush().unwrap();
        drop(w);
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        assert!(is_closed(&e));
    }

    #[test]
    fn a_reader_that_dies_stops_the_writer() {
        let (mut w, r) = pipe(1, 4);
        drop(r);
        let e = w.write_all(&[0; 64]).unwrap_err();
        assert!(is_closed(&e));
    }
}
