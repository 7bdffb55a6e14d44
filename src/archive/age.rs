//! The age v1 file format (<https://age-encryption.org/v1>) for X25519 keys: the header with
//! its stanzas and MAC, and the STREAM payload of ChaCha20-Poly1305 chunks of 64 KiB.
//!
//! Written here over ring's ChaCha20-Poly1305, HKDF and HMAC (which rustls already carries)
//! and x25519-dalek, rather than taken from the `age` crate, whose localisation machinery
//! (fluent, embedded translations) and passphrase/plugin support cost 380 KB of the static
//! binary, more than the 3 MiB budget had left. The tests of `crypt` and
//! `tests/store.rs` check it against the `age` command-line tool both ways.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::{hkdf::HKDF_SHA256, hmac};
use std::io::{self, BufRead, Read, Write};
use x25519_dalek::{PublicKey, StaticSecret};

/// Plaintext bytes per STREAM chunk, and the tag that follows each.
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
const X25519_INFO: &[u8] = b"age-encryption.org/v1/X25519";
/// Bounds of a header olboot reads: lines, stanzas and the whole header (64 X25519 stanzas
/// take under 8 KiB; without it a stanza body of endless full lines grows without end).
const MAX_LINE: u64 = 4096;
const MAX_STANZAS: usize = 64;
const MAX_HEADER: usize = 64 * 1024;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// HKDF-SHA-256 of `ikm` with `salt` and `info`, 32 bytes.
fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    ring::hkdf::Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA-256 length");
    out
}

/// ChaCha20-Poly1305 under one key, with age's empty associated data.
struct Aead(LessSafeKey);

impl Aead {
    fn new(key: &[u8; 32]) -> Aead {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key");
        Aead(LessSafeKey::new(key))
    }

    /// Encrypt `buf` in place and append the tag.
    fn seal(&self, nonce: [u8; 12], buf: &mut Vec<u8>) -> io::Result<()> {
        let nonce = Nonce::assume_unique_for_key(nonce);
        self.0
            .seal_in_place_append_tag(nonce, Aad::empty(), buf)
            .map_err(|_| io::Error::other("cannot encrypt"))
    }

    /// Check and decrypt `buf` (ciphertext and tag) in place, leaving the plaintext; `false`
    /// when it does not authenticate.
    fn open(&self, nonce: [u8; 12], buf: &mut Vec<u8>) -> bool {
        let nonce = Nonce::assume_unique_for_key(nonce);
        match self.0.open_in_place(nonce, Aad::empty(), buf) {
            Ok(plain) => {
                let n = plain.len();
                buf.truncate(n);
                true
            }
            Err(_) => false,
        }
    }
}

fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| io::Error::other("no randomness from the kernel"))?;
    Ok(b)
}

// ---- bech32 (BIP 173) and unpadded base64, as age's keys and headers use them ----

const BECH32: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn polymod(values: impl Iterator<Item = u8>) -> u32 {
    const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    let mut chk = 1u32;
    for v in values {
        let top = chk >> 25;
        chk = ((chk & 0x1ff_ffff) << 5) ^ u32::from(v);
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

/// The 32-byte payload of a bech32 string with human-readable part `hrp` (lowercase).
pub fn bech32_decode(s: &str, hrp: &str) -> Option<[u8; 32]> {
    bech32_bytes(s, hrp)?.try_into().ok()
}

/// The payload of a bech32 string with human-readable part `hrp` (lowercase).
fn bech32_bytes(s: &str, hrp: &str) -> Option<Vec<u8>> {
    if s.bytes().any(|b| b.is_ascii_lowercase()) && s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let s = s.to_ascii_lowercase();
    let (h, data) = s.rsplit_once('1')?;
    if h != hrp || data.len() < 6 {
        return None;
    }
    let values: Vec<u8> = data
        .bytes()
        .map(|c| BECH32.iter().position(|&x| x == c).map(|p| p as u8))
        .collect::<Option<_>>()?;
    let expanded = h
        .bytes()
        .map(|b| b >> 5)
        .chain([0])
        .chain(h.bytes().map(|b| b & 31));
    if polymod(expanded.chain(values.iter().copied())) != 1 {
        return None;
    }
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for &v in &values[..values.len() - 6] {
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits >= 5 || acc & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=c.len() {
            out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Canonical unpadded base64, as age requires (no `=`, unused bits zero).
fn b64_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::new();
    for c in s.chunks(4) {
        let mut n = 0u32;
        for (i, &ch) in c.iter().enumerate() {
            let v = B64.iter().position(|&x| x == ch)? as u32;
            n |= v << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = c.len() * 6 / 8;
        if n.to_be_bytes()[1..][keep..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&bytes[..keep]);
    }
    Some(out)
}

// ---- keys ----

/// An X25519 identity (`AGE-SECRET-KEY-1…`). No `Debug`: it is never printed.
pub struct Identity(StaticSecret);

impl Identity {
    /// Parse one `AGE-SECRET-KEY-1…` line.
    pub fn parse(s: &str) -> Option<Identity> {
        bech32_decode(s, "age-secret-key-").map(|k| Identity(StaticSecret::from(k)))
    }

    /// The file key, if the X25519 stanza (`share`, `body`) was made for this identity.
    fn unwrap(&self, share: &[u8], body: &[u8]) -> Option<[u8; 16]> {
        let share: [u8; 32] = share.try_into().ok()?;
        let shared = self.0.diffie_hellman(&PublicKey::from(share));
        if !shared.was_contributory() || body.len() != 32 {
            return None;
        }
        let ours = PublicKey::from(&self.0);
        let salt = [share.as_slice(), ours.as_bytes()].concat();
        let key = hkdf(&salt, shared.as_bytes(), X25519_INFO);
        let mut buf = body.to_vec();
        Aead::new(&key).open([0; 12], &mut buf).then_some(())?;
        buf.try_into().ok()
    }
}

/// An X25519 recipient (`age1…`).
#[derive(Debug, Clone)]
pub struct Recipient(PublicKey);

impl Recipient {
    /// Parse one `age1…` key.
    pub fn parse(s: &str) -> Option<Recipient> {
        bech32_decode(s, "age").map(|k| Recipient(PublicKey::from(k)))
    }

    /// The stanza that gives `file_key` to this recipient.
    fn wrap(&self, file_key: &[u8; 16]) -> io::Result<String> {
        let eph = StaticSecret::from(random::<32>()?);
        let share = PublicKey::from(&eph);
        let shared = eph.diffie_hellman(&self.0);
        let salt = [share.as_bytes().as_slice(), self.0.as_bytes()].concat();
        let key = hkdf(&salt, shared.as_bytes(), X25519_INFO);
        let mut body = file_key.to_vec();
        Aead::new(&key).seal([0; 12], &mut body)?;
        Ok(format!(
            "-> X25519 {}\n{}\n",
            b64_encode(share.as_bytes()),
            b64_encode(&body)
        ))
    }
}

// ---- header ----

/// One line of the header, at most [`MAX_LINE`] bytes, with its newline; the header so far,
/// `header`, stays within [`MAX_HEADER`].
fn line(r: &mut impl BufRead, header: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut l = Vec::new();
    r.by_ref().take(MAX_LINE).read_until(b'\n', &mut l)?;
    if header.len() + l.len() > MAX_HEADER {
        return Err(bad(format!(
            "the age header goes on past {} KiB",
            MAX_HEADER / 1024
        )));
    }
    if l.last() != Some(&b'\n') {
        return Err(bad(
            "not an age file: the header ends early or has a line too long",
        ));
    }
    header.extend_from_slice(&l);
    l.pop();
    Ok(l)
}

/// A stanza: its arguments (after `-> `) and its body.
struct Stanza {
    args: Vec<Vec<u8>>,
    body: Vec<u8>,
}

/// Read the header, up to the MAC: the stanzas, the bytes the MAC covers and the MAC.
fn read_header(r: &mut impl BufRead) -> io::Result<(Vec<Stanza>, Vec<u8>, Vec<u8>)> {
    let mut header = Vec::new();
    if line(r, &mut header)? != VERSION_LINE[..VERSION_LINE.len() - 1] {
        return Err(bad(
            "not an age-encrypted archive (no age-encryption.org/v1 header)",
        ));
    }
    let mut stanzas = Vec::new();
    loop {
        let l = line(r, &mut header)?;
        if let Some(mac) = l.strip_prefix(b"--- ") {
            // The MAC covers the header up to and including "---".
            header.truncate(header.len() - l.len() - 1 + 3);
            let mac = b64_decode(mac).ok_or_else(|| bad("bad age header MAC"))?;
            return Ok((stanzas, header, mac));
        }
        let args = l
            .strip_prefix(b"-> ")
            .ok_or_else(|| bad("bad age header line"))?;
        let args = args.split(|&b| b == b' ').map(<[u8]>::to_vec).collect();
        let mut body = Vec::new();
        loop {
            let b = line(r, &mut header)?;
            body.extend(b64_decode(&b).ok_or_else(|| bad("bad age stanza body"))?);
            if b.len() < 64 {
                break;
            }
        }
        if stanzas.len() == MAX_STANZAS {
            return Err(bad("more than 64 stanzas in the age header"));
        }
        stanzas.push(Stanza { args, body });
    }
}

/// HMAC-SHA-256 of the header under the key derived from `file_key`.
fn header_mac_key(file_key: &[u8; 16]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &hkdf(&[], file_key, b"header"))
}

/// Why no identity opened the header.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// No stanza is for these identities.
    NoMatchingKey,
    /// The header is not what an age file has.
    Bad(String),
}

/// Read the header of `r` and open it with one of `ids`: the payload key of the stream.
fn open(r: &mut impl BufRead, ids: &[Identity]) -> Result<[u8; 32], OpenError> {
    let (stanzas, header, mac) = read_header(r).map_err(|e| OpenError::Bad(e.to_string()))?;
    let file_key = stanzas
        .iter()
        .filter(|s| s.args.len() == 2 && s.args[0] == b"X25519")
        .find_map(|s| {
            let share = b64_decode(&s.args[1])?;
            ids.iter().find_map(|id| id.unwrap(&share, &s.body))
        })
        .ok_or(OpenError::NoMatchingKey)?;
    hmac::verify(&header_mac_key(&file_key), &header, &mac)
        .map_err(|_| OpenError::Bad("the age header's MAC does not match".into()))?;
    let mut nonce = [0; 16];
    r.read_exact(&mut nonce)
        .map_err(|e| OpenError::Bad(format!("no payload nonce: {e}")))?;
    Ok(hkdf(&nonce, &file_key, b"payload"))
}

// ---- STREAM ----

/// The nonce of chunk `counter`: 11 bytes big-endian counter, then the last-chunk flag.
fn chunk_nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut n = [0; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// The plaintext of an age file, chunk by chunk; each is authenticated before it is given out.
pub struct Decrypting<R> {
    inner: R,
    aead: Aead,
    counter: u64,
    /// The current chunk (ciphertext while it is read, then plaintext) and the read position.
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: BufRead> Decrypting<R> {
    /// Open `r` with one of `ids`.
    pub fn new(mut r: R, ids: &[Identity]) -> Result<Decrypting<R>, OpenError> {
        let key = open(&mut r, ids)?;
        Ok(Decrypting {
            inner: r,
            aead: Aead::new(&key),
            counter: 0,
            chunk: Vec::with_capacity(CHUNK + TAG),
            pos: 0,
            done: false,
        })
    }

    /// Read and authenticate the next chunk into `self.chunk`.
    fn next_chunk(&mut self) -> io::Result<()> {
        self.chunk.clear();
        self.pos = 0;
        let want = (CHUNK + TAG) as u64;
        self.inner
            .by_ref()
            .take(want)
            .read_to_end(&mut self.chunk)?;
        // A full chunk is the last one only if nothing follows it.
        let last = self.chunk.len() < CHUNK + TAG || self.inner.fill_buf()?.is_empty();
        let counter = self.counter;
        let broken = || {
            bad(format!(
                "the age stream does not authenticate at chunk {counter} (truncated or altered)"
            ))
        };
        if self.chunk.len() < TAG || (last && self.chunk.len() == TAG && self.counter > 0) {
            return Err(broken());
        }
        let nonce = chunk_nonce(self.counter, last);
        if !self.aead.open(nonce, &mut self.chunk) {
            return Err(broken());
        }
        self.counter += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: BufRead> BufRead for Decrypting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.chunk.len() && !self.done {
            self.next_chunk()?;
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.chunk.len());
    }
}

impl<R: BufRead> Read for Decrypting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        super::pipe::read_through_buf(self, buf)
    }
}

/// A writer that age-encrypts to some recipients; [`Encrypting::finish`] writes the last
/// chunk.
pub struct Encrypting<W: Write> {
    inner: W,
    aead: Aead,
    counter: u64,
    chunk: Vec<u8>,
}

impl<W: Write> Encrypting<W> {
    /// Write the header for `to` into `out`, and return the writer of the payload.
    pub fn new(mut out: W, to: &[Recipient]) -> io::Result<Encrypting<W>> {
        let file_key = random::<16>()?;
        let mut header = String::from_utf8_lossy(VERSION_LINE).into_owned();
        for r in to {
            header.push_str(&r.wrap(&file_key)?);
        }
        header.push_str("---");
        let mac = hmac::sign(&header_mac_key(&file_key), header.as_bytes());
        header.push_str(&format!(" {}\n", b64_encode(mac.as_ref())));
        let nonce = random::<16>()?;
        out.write_all(header.as_bytes())?;
        out.write_all(&nonce)?;
        let key = hkdf(&nonce, &file_key, b"payload");
        Ok(Encrypting {
            inner: out,
            aead: Aead::new(&key),
            counter: 0,
            chunk: Vec::with_capacity(CHUNK + TAG),
        })
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let nonce = chunk_nonce(self.counter, last);
        self.aead.seal(nonce, &mut self.chunk)?;
        self.inner.write_all(&self.chunk)?;
        self.chunk.clear();
        self.counter += 1;
        Ok(())
    }

    /// Write the final chunk and give back the writer inside.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Encrypting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A full chunk is sealed only once more data comes: the last one must not be empty.
        if self.chunk.len() == CHUNK && !buf.is_empty() {
            self.seal(false)?;
        }
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_canonical_form() {
        for n in 0..70 {
            let data: Vec<u8> = (0..n as u8).map(|b| b.wrapping_mul(37)).collect();
            assert_eq!(b64_decode(b64_encode(&data).as_bytes()), Some(data));
        }
        assert_eq!(b64_encode(b"hi"), "aGk");
        assert_eq!(b64_decode(b"aGk="), None);
        assert_eq!(b64_decode(b"aGl"), None, "unused bits set");
    }

    #[test]
    fn bech32_of_bip_173() {
        // BIP 173's valid string whose data part is every character once, in order.
        let s = "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw";
        let bytes = bech32_bytes(s, "abcdef").unwrap();
        assert_eq!(bytes.len(), 20);
        assert_eq!(bytes[..5], [0x00, 0x44, 0x32, 0x14, 0xc7]);
        assert!(bech32_bytes(&s.to_uppercase(), "abcdef").is_some());
        assert!(bech32_bytes("abcdef1Qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw", "abcdef").is_none());
        assert!(bech32_bytes("abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxx", "abcdef").is_none());
        assert!(bech32_bytes(s, "abc").is_none());
        assert!(bech32_decode(s, "abcdef").is_none(), "not 32 bytes");
    }

    #[test]
    fn a_stanza_body_of_endless_full_lines_stops_at_the_header_bound() {
        let mut file = format!("age-encryption.org/v1\n-> X25519 {}\n", "A".repeat(43));
        let line = format!("{}\n", "A".repeat(4092));
        file.push_str(&line.repeat(2 * MAX_HEADER / line.len()));
        let e = open(&mut file.as_bytes(), &[]).err().unwrap();
        assert_eq!(
            e,
            OpenError::Bad("the age header goes on past 64 KiB".into())
        );
    }

    #[test]
    fn chunk_boundaries_round_trip() {
        let id = Identity(StaticSecret::from([7; 32]));
        let to = [Recipient(PublicKey::from(&id.0))];
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let mut w = Encrypting::new(Vec::new(), &to).unwrap();
            w.write_all(&plain).unwrap();
            let cipher = w.finish().unwrap();
            let mut out = Vec::new();
            let mut r = Decrypting::new(&cipher[..], std::slice::from_ref(&id))
                .ok()
                .unwrap();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, plain, "length {len}");
            if len > CHUNK {
                // Cut at a chunk boundary: the full chunk is then taken as the last and fails.
                let header_len = cipher.len() - len.div_ceil(CHUNK) * TAG - len;
                let cut = &cipher[..header_len + CHUNK + TAG];
                let mut r = Decrypting::new(cut, std::slice::from_ref(&id))
                    .ok()
                    .unwrap();
                assert!(r.read_to_end(&mut Vec::new()).is_err(), "length {len}");
            }
        }
    }
}
