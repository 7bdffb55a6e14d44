//! zstd in frames of at most one pipe buffer: written so by `olboot pack`, and decoded straight
//! into the pipe's buffers.
//!
//! A zstd stream of one long frame is decoded through the decoder's own window, and every
//! byte is copied once more out of it. A frame whose content size is in its header and fits
//! the buffer at hand is decoded in place instead (`ZSTD_d_stableOutBuffer`), blocks and
//! stored blocks written straight into the buffer the unpacking thread then reads. So `pack`
//! cuts the tar into frames of [`FRAME`] bytes (each its own frame, with its size and
//! checksum: any zstd decoder reads the concatenation, and it costs under 1 % of
//! compression here), and [`decode`] takes each frame in place where it can, and any other
//! (one long frame from `zstd` or `tar --zstd`, a header cut by the end of an input buffer)
//! through the window as before. Both give the same bytes.

use super::pipe::PipeWriter;
use anyhow::{bail, Context, Result};
use std::io::{self, BufRead, Write};
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer, SafeResult};

/// The content of each frame `pack` writes: the size of a pipe buffer.
pub const FRAME: usize = 1 << 20;

fn zstd_error(what: &str, code: usize) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", zstd_safe::get_error_name(code))
}

/// A writer that compresses what it is given as zstd frames of [`FRAME`] bytes each (the
/// last one shorter), each with its content size and checksum. Frames are independent, so a
/// batch of them is compressed on several threads at once, one context each (zstd's own
/// worker threads split a frame into jobs of several MiB: no help for frames of one).
pub struct FrameWriter<W: Write> {
    out: W,
    /// One context, and one output buffer, per frame of a batch.
    cctxs: Vec<(CCtx<'static>, Vec<u8>)>,
    /// The input of the batch being gathered: up to one [`FRAME`] per context.
    batch: Vec<u8>,
    wrote: bool,
}

impl<W: Write> FrameWriter<W> {
    /// A writer at zstd `level` that compresses up to `threads` frames at once.
    pub fn new(out: W, level: i32, threads: usize) -> Result<FrameWriter<W>> {
        let mut cctxs = Vec::new();
        for _ in 0..threads.max(1) {
            let mut cctx = CCtx::try_create().context("cannot make a zstd compressor")?;
            for p in [
                CParameter::CompressionLevel(level),
                CParameter::ChecksumFlag(true),
            ] {
                cctx.set_parameter(p)
                    .map_err(|c| zstd_error("cannot set up the zstd compressor", c))?;
            }
            cctxs.push((cctx, Vec::with_capacity(zstd_safe::compress_bound(FRAME))));
        }
        Ok(FrameWriter {
            batch: Vec::with_capacity(cctxs.len() * FRAME),
            out,
            cctxs,
            wrote: false,
        })
    }

    /// Compress the batch, a frame per [`FRAME`] bytes on a thread each, and write the
    /// frames out in order.
    fn flush_batch(&mut self) -> io::Result<()> {
        let mut srcs: Vec<&[u8]> = self.batch.chunks(FRAME).collect();
        if srcs.is_empty() {
            srcs.push(&[]); // No input at all still makes one (empty) frame.
        }
        let jobs = self.cctxs.iter_mut().zip(srcs);
        let results = std::thread::scope(|s| -> io::Result<Vec<SafeResult>> {
            let running = jobs
                .map(|((cctx, out), src)| {
                    std::thread::Builder::new().spawn_scoped(s, move || {
                        out.clear();
                        cctx.compress2(out, src)
                    })
                })
                .collect::<io::Result<Vec<_>>>()?;
            Ok(running
                .into_iter()
                .map(|t| t.join().expect("a zstd compression thread panicked"))
                .collect())
        })?;
        // One result per frame of the batch, in order; each frame is in its context's buffer.
        for (r, (_, compressed)) in results.into_iter().zip(&self.cctxs) {
            r.map_err(|c| io::Error::other(zstd_safe::get_error_name(c)))?;
            self.out.write_all(compressed)?;
            self.wrote = true;
        }
        self.batch.clear();
        Ok(())
    }

    /// Write the last frames (one empty frame if nothing was written: still a zstd stream)
    /// and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.batch.is_empty() || !self.wrote {
            self.flush_batch()?;
        }
        Ok(self.out)
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let full = self.cctxs.len() * FRAME;
        let n = data.len().min(full - self.batch.len());
        self.batch.extend_from_slice(&data[..n]);
        if self.batch.len() == full {
            self.flush_batch()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// How the frames of a stream were decoded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Frames {
    /// Straight into a pipe buffer.
    pub in_place: u64,
    /// Through the decoder's window.
    pub windowed: u64,
}

/// Decompress all the zstd frames of `src` into `out`. Anything after the last frame that
/// is not another frame is an error, and so is a stream that ends inside one. `verified`:
/// the stream is checked against a sha256 before anything unpacked from it is used, so the
/// frames' own checksums are not computed (they cost 3 % of an unpack).
pub fn decode(mut src: impl BufRead, out: &mut PipeWriter, verified: bool) -> Result<Frames> {
    let mut d = DCtx::try_create().context("cannot make a zstd decompressor")?;
    // Accept the long windows `zstd --long` makes (up to 128 MiB) rather than fail.
    for p in [
        DParameter::WindowLogMax(27),
        DParameter::ForceIgnoreChecksum(verified),
    ] {
        d.set_parameter(p)
            .map_err(|c| zstd_error("cannot set up the zstd decompressor", c))?;
    }
    let mut frames = Frames::default();
    loop {
        crate::sys::signal::check()?;
        let head = src.fill_buf()?;
        if head.is_empty() {
            return Ok(frames);
        }
        // Between frames the decoder is at its initial stage, where its mode may change.
        let size = in_place_size(head, out.buffer_size());
        d.set_parameter(DParameter::StableOutBuffer(size.is_some()))
            .map_err(|c| zstd_error("cannot set up the zstd decompressor", c))?;
        match size {
            Some(n) => {
                frame_in_place(&mut d, &mut src, out, n)?;
                frames.in_place += 1;
            }
            None => {
                frame_through_window(&mut d, &mut src, out)?;
                frames.windowed += 1;
            }
        }
    }
}

/// The content size of the frame starting `head`, if its header is all there and says it
/// fits in `room` bytes.
fn in_place_size(head: &[u8], room: usize) -> Option<usize> {
    match zstd_safe::get_frame_content_size(head) {
        Ok(Some(n)) if n <= room as u64 => Some(n as usize),
        _ => None,
    }
}

/// Decode one frame of `n` bytes straight into one buffer of `out`: zstd requires that the
/// buffer and the position it left stay exactly as they were between its calls.
fn frame_in_place(
    d: &mut DCtx,
    src: &mut impl BufRead,
    out: &mut PipeWriter,
    n: usize,
) -> Result<()> {
    let buf = out.space(n)?;
    let mut pos = 0;
    loop {
        let input = src.fill_buf()?;
        if input.is_empty() {
            bail!("the archive ends inside a zstd frame");
        }
        let mut inb = InBuffer::around(input);
        let mut outb = OutBuffer::around_pos(&mut *buf, pos);
        let hint = d
            .decompress_stream(&mut outb, &mut inb)
            .map_err(|c| zstd_error("corrupt zstd data", c))?;
        pos = outb.pos();
        let used = inb.pos;
        src.consume(used);
        if hint == 0 {
            break;
        }
    }
    out.advance(pos)?;
    Ok(())
}

/// Decode one frame through the decoder's window, into whatever room `out` has.
fn frame_through_window(d: &mut DCtx, src: &mut impl BufRead, out: &mut PipeWriter) -> Result<()> {
    loop {
        crate::sys::signal::check()?;
        let input = src.fill_buf()?;
        let ended = input.is_empty();
        let mut inb = InBuffer::around(input);
        let mut outb = OutBuffer::around(out.space(1)?);
        let hint = d
            .decompress_stream(&mut outb, &mut inb)
            .map_err(|c| zstd_error("corrupt zstd data", c))?;
        let (used, made) = (inb.pos, outb.pos());
        src.consume(used);
        out.advance(made)?;
        if hint == 0 {
            return Ok(());
        }
        if ended && made == 0 {
            bail!("the archive ends inside a zstd frame");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::pipe::through_pipe;

    /// Decode `z` through a pipe of `size`-byte buffers, its input in `chunk`-byte reads.
    fn decoded(z: &[u8], size: usize, chunk: usize) -> Result<(Vec<u8>, Frames)> {
        let mut frames = Frames::default();
        let data = through_pipe(size, |w| {
            frames = decode(io::BufReader::with_capacity(chunk, z), w, false)?;
            Ok(())
        })?;
        Ok((data, frames))
    }

    fn framed(data: &[u8]) -> Vec<u8> {
        framed_on(data, 3)
    }

    fn framed_on(data: &[u8], threads: usize) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new(), 3, threads).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn sample(n: usize) -> Vec<u8> {
        // Compressible, with a stretch that zstd stores raw.
        let mut v: Vec<u8> = (0..n).map(|i| (i / 7 % 13) as u8).collect();
        let mut x = 1u32;
        for b in v.iter_mut().skip(n / 3).take(n / 4) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        v
    }

    #[test]
    fn frames_of_one_buffer_each_and_any_decoder_reads_them() {
        let data = sample(3 * FRAME + 12345);
        let z = framed(&data);
        let mut frames = 0;
        let mut rest = &z[..];
        while !rest.is_empty() {
            let size = zstd_safe::get_frame_content_size(rest).unwrap().unwrap();
            assert!(size <= FRAME as u64);
            let len = zstd_safe::find_frame_compressed_size(rest).unwrap();
            rest = &rest[len..];
            frames += 1;
        }
        assert_eq!(frames, 4);
        assert!(framed_on(&data, 1) == z, "the bytes depend on the threads");
        assert_eq!(zstd::decode_all(&z[..]).unwrap(), data);
        assert_eq!(zstd::decode_all(&framed(b"")[..]).unwrap(), b"");
    }

    #[test]
    fn in_place_and_through_the_window_give_the_same_bytes() {
        let data = sample(2 * FRAME + 777);
        let one_frame = zstd::encode_all(&data[..], 3).unwrap();
        let z = framed(&data);
        // In place; every frame header cut by the end of an input buffer (none is under 6
        // bytes); buffers too small for a frame (but the short last one); one long frame.
        for (z, size, chunk, in_place, windowed) in [
            (&z, FRAME, 64 << 10, 3, 0),
            (&z, FRAME, 5, 0, 3),
            (&z, FRAME / 3, 64 << 10, 1, 2),
            (&one_frame, FRAME, 64 << 10, 0, 1),
        ] {
            let (got, frames) = decoded(z, size, chunk).unwrap();
            assert!(got == data, "{size} {chunk}: other bytes");
            assert_eq!(frames, Frames { in_place, windowed }, "{size} {chunk}");
        }
    }

    #[test]
    fn skippable_and_empty_frames_are_read_over() {
        let data = sample(FRAME + 5);
        let mut z = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
        z.extend(framed(b""));
        z.extend(framed(&data));
        let (got, frames) = decoded(&z, FRAME, 64 << 10).unwrap();
        assert!(got == data, "other bytes");
        assert_eq!(frames.in_place + frames.windowed, 4);
    }

    #[test]
    fn truncated_and_garbage_tails_fail() {
        let data = sample(FRAME + 99);
        for z in [framed(&data), zstd::encode_all(&data[..], 3).unwrap()] {
            let e = decoded(&z[..z.len() - 1], FRAME, 64 << 10).unwrap_err();
            assert!(
                format!("{e:#}").contains("ends inside a zstd frame"),
                "{e:#}"
            );
            let mut g = z.clone();
            g.extend_from_slice(b"garbage!");
            let e = decoded(&g, FRAME, 64 << 10).unwrap_err();
            assert!(format!("{e:#}").contains("corrupt zstd data"), "{e:#}");
        }
    }
}
