//! The extra apt sources of `packages.sources`: each one a deb822 file
//! `/etc/apt/sources.list.d/NAME.sources` whose `Signed-By` names its key at
//! `/etc/apt/keyrings/NAME.asc`. Both are rendered here from the config alone, so the same
//! config always gives the same bytes and a converged machine plans nothing.

use super::{Change, Written};
use crate::config::{self, AptSource};
use crate::root::Root;
use crate::sys::fs;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the deb822 file of source `name` lives on the target.
pub fn source_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/etc/apt/sources.list.d/{name}.sources"))
}

/// Where the key of source `name` lives on the target.
pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/etc/apt/keyrings/{name}.asc"))
}

/// The deb822 text of source `name`: fixed field order, one space between values.
pub fn render(name: &str, s: &AptSource) -> String {
    let join = |words: &[config::AptWord]| {
        words
            .iter()
            .map(|w| w.0.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let uris: Vec<&str> = s.uris.iter().map(|u| u.0.as_str()).collect();
    let mut out = format!(
        "# Written by olboot from packages.sources.{name}; changes here are undone.\n\
         Types: deb\nURIs: {}\nSuites: {}\n",
        uris.join(" "),
        join(&s.suites)
    );
    if !s.components.is_empty() {
        out.push_str(&format!("Components: {}\n", join(&s.components)));
    }
    if !s.architectures.is_empty() {
        out.push_str(&format!("Architectures: {}\n", join(&s.architectures)));
    }
    out.push_str(&format!("Signed-By: {}\n", key_path(name).display()));
    out
}

/// The changes that put every configured source and its key in place: a file is written when
/// it is missing or its content differs, carrying what it replaces so that a failed update can
/// put it back.
pub fn plan(root: &Root, sources: &indexmap::IndexMap<String, AptSource>) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    for (name, s) in sources {
        let key = key_text(root, name, s)?;
        for (kind, path, text) in [
            (Written::Key, key_path(name), key),
            (Written::Source, source_path(name), render(name, s)),
        ] {
            let old = fs::read_optional(&root.resolve(&path)?)?;
            if old.as_deref() != Some(text.as_str()) {
                changes.push(Change::Write {
                    kind,
                    source: name.clone(),
                    path,
                    text,
                    old,
                });
            }
        }
    }
    Ok(changes)
}

/// The armored key of source `name`, from the config, a file or a URL.
fn key_text(root: &Root, name: &str, s: &AptSource) -> Result<String> {
    let text = if let Some(k) = &s.key {
        return Ok(with_newline(&k.0));
    } else if let Some(file) = &s.key_file {
        read_key_file(&root.resolve(file)?)
            .with_context(|| format!("packages.sources.{name}.key_file"))?
    } else if let (Some(url), Some(sha)) = (&s.key_url, &s.key_sha256) {
        // The digest pins the content: a key in place with it needs no fetch, so a converged
        // run stays off the network.
        let have = fs::read_optional(&root.resolve(&key_path(name))?)?;
        if let Some(have) = have.filter(|h| config::hex(&Sha256::digest(h.as_bytes())) == sha.0) {
            return Ok(have);
        }
        let text = match url.local_path() {
            Some(p) => std::fs::read_to_string(root.resolve(p)?)
                .with_context(|| format!("cannot read {}", p.display()))?,
            None => crate::sys::http::get_text(&url.0, None)?,
        };
        let got = config::hex(&Sha256::digest(text.as_bytes()));
        if got != sha.0 {
            bail!(
                "packages.sources.{name}.key_url: {url} has sha256 {got}, not the key_sha256 \
                 {}",
                sha.0
            );
        }
        armored(name, &text)?;
        // Kept byte for byte, so that its digest is key_sha256.
        return Ok(text);
    } else {
        bail!("packages.sources.{name}: no key");
    };
    armored(name, &text)?;
    Ok(with_newline(&text))
}

fn armored(name: &str, text: &str) -> Result<()> {
    config::values::armored(text).map_err(|e| anyhow::anyhow!("packages.sources.{name}: {e}"))
}

/// A key file olboot trusts: owned by root and writable by nobody else, since whoever can
/// write it decides what the machine installs.
fn read_key_file(path: &Path) -> Result<String> {
    let m = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if m.uid() != 0 || m.mode() & 0o022 != 0 {
        bail!(
            "{} must be owned by root and not writable by group or others (owner {}, mode {:o})",
            path.display(),
            m.uid(),
            m.mode() & 0o7777
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn with_newline(s: &str) -> String {
    format!("{}\n", s.trim_end())
}

/// Whether apt has package lists of every URI of `sources` (apt names its list files after
/// the URI without its scheme, `/` turned into `_`).
pub fn lists_present(root: &Root, sources: &indexmap::IndexMap<String, AptSource>) -> Result<bool> {
    let dir = root.resolve(Path::new("/var/lib/apt/lists"))?;
    let names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    Ok(sources.values().flat_map(|s| &s.uris).all(|u| {
        let bare = u.0.split_once("://").map_or(u.0.as_str(), |(_, r)| r);
        let prefix = format!("{}_", bare.trim_end_matches('/').replace('/', "_"));
        names
            .iter()
            .any(|n| n.starts_with(&prefix) && n.contains("Packages"))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(yaml: &str) -> AptSource {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn renders_deb822_in_a_fixed_order() {
        let s = source(
            "{uris: [https://m/docker/debian], suites: [trixie], components: [stable], \
             architectures: [amd64], key: \"-----BEGIN PGP PUBLIC KEY BLOCK-----\\nx\\n-----END PGP PUBLIC KEY BLOCK-----\"}",
        );
        assert_eq!(
            render("docker", &s),
            "# Written by olboot from packages.sources.docker; changes here are undone.\n\
             Types: deb\nURIs: https://m/docker/debian\nSuites: trixie\nComponents: stable\n\
             Architectures: amd64\nSigned-By: /etc/apt/keyrings/docker.asc\n"
        );
        let flat = source("{uris: http://127.0.0.1:8/, suites: ./, key_file: /k.asc}");
        assert_eq!(
            render("t", &flat),
            "# Written by olboot from packages.sources.t; changes here are undone.\n\
             Types: deb\nURIs: http://127.0.0.1:8/\nSuites: ./\n\
             Signed-By: /etc/apt/keyrings/t.asc\n"
        );
    }

    #[test]
    fn lists_present_only_with_every_uris_packages_list() {
        let dir = tempfile::tempdir().unwrap();
        let lists = dir.path().join("var/lib/apt/lists");
        std::fs::create_dir_all(&lists).unwrap();
        let root = Root::at(dir.path());
        let sources: indexmap::IndexMap<String, AptSource> = serde_yaml::from_str(
            "a: {uris: [http://127.0.0.1:8/], suites: ./, key_file: /k}\n\
             b: {uris: [https://m.example/docker/debian], suites: trixie, components: stable, key_file: /k}\n",
        )
        .unwrap();
        assert!(!lists_present(&root, &sources).unwrap());
        std::fs::write(lists.join("127.0.0.1:8_._Packages"), "").unwrap();
        std::fs::write(
            lists.join("m.example_docker_debian_dists_trixie_InRelease"),
            "",
        )
        .unwrap();
        assert!(
            !lists_present(&root, &sources).unwrap(),
            "an InRelease alone is no list"
        );
        std::fs::write(
            lists.join("m.example_docker_debian_dists_trixie_stable_binary-amd64_Packages"),
            "",
        )
        .unwrap();
        assert!(lists_present(&root, &sources).unwrap());
    }

    #[test]
    fn a_key_file_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.asc");
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
        let e = format!("{:#}", read_key_file(&p).unwrap_err());
        assert!(e.contains("not writable by group or others"), "{e}");
    }
}
