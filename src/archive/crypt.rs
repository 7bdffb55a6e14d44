//! age encryption of the archive: the key files, a decrypting reader for the opt pipeline and
//! an encrypting writer for `olboot pack`.
//!
//! Only X25519 keys (`AGE-SECRET-KEY-1…` / `age1…`, what `age-keygen` writes) are taken: no
//! passphrases, SSH keys or plugins, which would need a terminal or other programs at first
//! boot. age authenticates the stream per 64 KiB chunk, so a tampered chunk is found only when
//! it is reached: the pipeline's caller must treat everything unpacked before that as garbage
//! (it does: staging is renamed into place only after the whole stream was read).

use super::age::{self, Identity, OpenError, Recipient};
use crate::secret::SecretFile;
use anyhow::{bail, Context, Result};
use std::fmt;
use std::io::{BufRead, Write};
use std::path::Path;

pub use super::age::Encrypting;

/// How the age format begins: recognizing it gives a better error than "not compressed".
pub const MAGIC: &[u8] = b"age-encryption.org/";

/// The X25519 identities of an identity file. Never printed: its `Debug` names only the file.
pub struct Identities {
    keys: Vec<Identity>,
    file: String,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities({}, {} keys)", self.file, self.keys.len())
    }
}

impl Identities {
    /// Parse the identities in `file` (one per line, `#` comments and blank lines skipped).
    pub fn parse(file: &SecretFile) -> Result<Identities> {
        let name = file.path().display().to_string();
        let mut keys = Vec::new();
        for (n, line) in file.text().lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The line is the key, or a mistyped one: it is never echoed.
            let key = Identity::parse(line).with_context(|| {
                format!(
                    "{name}: line {}: not an age identity (AGE-SECRET-KEY-1…)",
                    n + 1
                )
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            bail!("{name}: no age identity (AGE-SECRET-KEY-1…) in the file");
        }
        Ok(Identities { keys, file: name })
    }

    /// A reader of the plaintext of the age stream `r`. Fails at once, before any plaintext,
    /// when `r` is not an age file or none of the identities opens it.
    pub fn decrypt<R: BufRead>(&self, r: R) -> Result<age::Decrypting<R>> {
        age::Decrypting::new(r, &self.keys).map_err(|e| match e {
            OpenError::NoMatchingKey => anyhow::anyhow!(
                "the archive is not encrypted to any identity in {}",
                self.file
            ),
            OpenError::Bad(e) => anyhow::anyhow!("cannot decrypt the archive: {e}"),
        })
    }
}

/// Recipients to encrypt to: `age1…` public keys.
#[derive(Debug, Clone, Default)]
pub struct Recipients(Vec<Recipient>);

impl Recipients {
    /// Add one `age1…` key; `from` says where it came from, for the error.
    pub fn add(&mut self, key: &str, from: &str) -> Result<()> {
        let r = Recipient::parse(key.trim())
            .with_context(|| format!("{from}: {key:?} is not an age recipient (age1…)"))?;
        self.0.push(r);
        Ok(())
    }

    /// Add every key of a recipients file (`#` comments and blank lines skipped).
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let before = self.0.len();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                self.add(line, &format!("{}: line {}", path.display(), n + 1))?;
            }
        }
        if self.0.len() == before {
            bail!("{}: no age recipient (age1…) in the file", path.display());
        }
        Ok(())
    }

    /// Whether there is none (the archive is then written in the clear).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Wrap `out` in a writer that encrypts to every recipient; its
    /// [`Encrypting::finish`] writes the last chunk.
    pub fn encrypt<W: Write>(&self, out: W) -> Result<Encrypting<W>> {
        if self.0.is_empty() {
            bail!("no age recipient");
        }
        Encrypting::new(out, &self.0).context("cannot write the age header")
    }
}

/// Where `olboot pack`'s zstd stream goes: the file, or an age encryption in front of it.
pub enum Output<W: Write> {
    /// Written as it is.
    Plain(W),
    /// Encrypted to the recipients (boxed: ring's key schedule is large).
    Age(Box<Encrypting<W>>),
}

impl<W: Write> Output<W> {
    /// Encrypt to `to` in front of `inner`, or not at all when `to` is empty.
    pub fn new(inner: W, to: &Recipients) -> Result<Output<W>> {
        Ok(if to.is_empty() {
            Output::Plain(inner)
        } else {
            Output::Age(Box::new(to.encrypt(inner)?))
        })
    }

    /// End the stream (age's last chunk) and give back the writer inside.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Output::Plain(w) => Ok(w),
            Output::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Output<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Plain(w) => w.write(buf),
            Output::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Plain(w) => w.flush(),
            Output::Age(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn identities(text: &str) -> Result<Identities> {
        Identities::parse(&SecretFile::from_text("/k", text))
    }

    /// A key pair from the reference tool: (identity file text, public key).
    fn keygen() -> (String, String) {
        let run = |args: &[&str], input: Option<&str>| {
            let mut c = std::process::Command::new("age-keygen");
            c.args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped());
            let mut child = c
                .spawn()
                .expect("age-keygen (Debian package age) is needed");
            if let Some(i) = input {
                child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
            }
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        };
        let id = run(&[], None);
        let public = run(&["-y"], Some(&id)).trim().to_string();
        (id, public)
    }

    #[test]
    fn round_trip_and_tampering() {
        let (id, public) = keygen();
        let ids = identities(&id).unwrap();
        let mut r = Recipients::default();
        r.add(&public, "test").unwrap();
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = r.encrypt(Vec::new()).unwrap();
        w.write_all(&plain).unwrap();
        let cipher = w.finish().unwrap();

        let mut out = Vec::new();
        let mut d = ids.decrypt(&cipher[..]).unwrap();
        d.read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);

        let mut sink = Vec::new();
        let cut = &cipher[..cipher.len() - 1];
        assert!(ids.decrypt(cut).unwrap().read_to_end(&mut sink).is_err());
        let mut bad = cipher.clone();
        let last = bad.len() - 10;
        bad[last] ^= 1;
        assert!(ids
            .decrypt(&bad[..])
            .unwrap()
            .read_to_end(&mut sink)
            .is_err());

        let other = identities(&keygen().0).unwrap();
        let e = other.decrypt(&cipher[..]).err().unwrap();
        assert!(
            e.to_string()
                .contains("not encrypted to any identity in /k"),
            "{e}"
        );
        let e = ids
            .decrypt(&b"age-encryption.org/v1\n-> X25519 !!\n"[..])
            .err()
            .unwrap();
        assert!(
            e.to_string().starts_with("cannot decrypt the archive: "),
            "{e}"
        );
        assert!(Recipients::default().encrypt(Vec::new()).is_err());
    }

    #[test]
    fn bad_identity_files_name_the_line_not_the_key() {
        let e = identities("# c\nAGE-SECRET-KEY-1NOPE\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/k: line 2: not an age identity (AGE-SECRET-KEY-1…)");
        assert!(identities("# only a comment\n").is_err());
        let shown = format!("{:?}", identities(&keygen().0).unwrap());
        assert_eq!(shown, "Identities(/k, 1 keys)");
    }
}
