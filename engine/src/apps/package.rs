//! App packages: `<id>-<version>.tar.gz` of an app directory ([`pack`]) and their unpacking
//! into a directory of the node ([`unpack`]).
//!
//! A package is untrusted input (any client or, via the swarm, any peer can hand one over), so
//! `unpack` accepts only regular files and directories under plain relative names (no `..`, no
//! absolute path, no symlink or hard link, no device), at most [`MAX_ENTRIES`] entries and
//! [`MAX_UNPACKED_BYTES`] bytes in all, counted while decompressing (a gzip bomb stops at the
//! limit). It unpacks into a fresh directory that nobody else uses; the caller moves it into
//! place once the manifest inside validated.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use super::manifest::{Manifest, ManifestError, MANIFEST_FILE};

/// Largest package accepted (compressed), in bytes.
pub const MAX_PACKAGE_BYTES: u64 = 256 * 1024 * 1024;
/// Most bytes a package may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 1024 * 1024 * 1024;
/// Most files and directories in one package.
pub const MAX_ENTRIES: usize = 20_000;

/// Why a package cannot be made or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The archive is not a gzip'd tar, or holds something a package must not.
    #[error("not a valid app package: {0}")]
    Invalid(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(m: impl Into<String>) -> PackageError {
    PackageError::Invalid(m.into())
}

/// The file name of a package: `<id>-<version>.tar.gz`.
pub fn file_name(manifest: &Manifest) -> String {
    format!("{}-{}.tar.gz", manifest.id, manifest.version)
}

/// Validates `dir` and packs it: every regular file and directory under it (symlinks are
/// refused: a package must be self-contained). Returns the manifest and the `.tar.gz` bytes.
pub fn pack(dir: &Path) -> Result<(Manifest, Vec<u8>), PackageError> {
    let manifest = Manifest::load(dir)?;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Io {
            action,
            path,
            source,
        }
    };
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&abs)
            .map_err(io("cannot read", &abs))?
            .collect::<Result<_, _>>()
            .map_err(io("cannot read", &abs))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = rel.join(entry.file_name());
            let kind = entry
                .file_type()
                .map_err(io("cannot stat", &entry.path()))?;
            if kind.is_symlink() {
                return Err(invalid(format!(
                    "{} is a symlink: packages hold files only; copy its target into the app directory",
                    name.display()
                )));
            } else if kind.is_dir() {
                tar.append_dir(&name, entry.path())
                    .map_err(io("cannot pack", &entry.path()))?;
                stack.push(name);
            } else if kind.is_file() {
                tar.append_path_with_name(entry.path(), &name)
                    .map_err(io("cannot pack", &entry.path()))?;
            }
        }
    }
    let gz = tar.into_inner().map_err(io("cannot pack", dir))?;
    let bytes = gz.finish().map_err(io("cannot pack", dir))?;
    Ok((manifest, bytes))
}

/// Unpacks `bytes` into `dest` (created; must not exist) under the limits of the module doc,
/// then validates the manifest inside. On error `dest` may hold a partial tree: the caller
/// removes it.
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<Manifest, PackageError> {
    if bytes.len() as u64 > MAX_PACKAGE_BYTES {
        return Err(invalid(format!("larger than {MAX_PACKAGE_BYTES} bytes")));
    }
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dest).map_err(io("cannot create", dest))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut total: u64 = 0;
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("not a .tar.gz ({e})")))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(invalid(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| invalid(format!("not a .tar.gz ({e})")))?;
        let raw = entry
            .path()
            .map_err(|e| invalid(format!("an entry has an unreadable name ({e})")))?
            .into_owned();
        let rel = plain(&raw)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(io("cannot create", &target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
                }
                let mode = entry.header().mode().unwrap_or(0o644);
                let mut file =
                    std::fs::File::create(&target).map_err(io("cannot write", &target))?;
                let left = MAX_UNPACKED_BYTES - total;
                let copied = std::io::copy(&mut (&mut entry).take(left + 1), &mut file)
                    .map_err(|e| invalid(format!("{}: cannot unpack ({e})", raw.display())))?;
                if copied > left {
                    return Err(invalid(format!(
                        "unpacks to more than {MAX_UNPACKED_BYTES} bytes"
                    )));
                }
                total += copied;
                file.flush().map_err(io("cannot write", &target))?;
                // Keep the executable bits (a script the manifest runs), nothing else special.
                use std::os::unix::fs::PermissionsExt;
                let perms =
                    std::fs::Permissions::from_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
                std::fs::set_permissions(&target, perms).map_err(io("cannot write", &target))?;
            }
            // pax/GNU extension headers carry long names; the tar crate applies them itself.
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => {}
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {}
            other => {
                return Err(invalid(format!(
                    "{} is a {other:?} entry: packages hold regular files and directories only",
                    raw.display()
                )))
            }
        }
    }
    if !dest.join(MANIFEST_FILE).is_file() {
        return Err(invalid(format!("no {MANIFEST_FILE} at its root")));
    }
    Ok(Manifest::load(dest)?)
}

/// A relative path of plain names (`.` dropped), or why not.
fn plain(path: &Path) -> Result<PathBuf, PackageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(invalid(format!(
                    "the entry {} leaves the package directory",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(dir: &Path) {
        std::fs::write(
            dir.join(MANIFEST_FILE),
            "id = \"com.example.t\"\nversion = \"0.1.0\"\nkind = \"process\"\n[process]\ncommand = \"sh\"\nargs = [\"run.sh\"]\n",
        )
        .unwrap();
        std::fs::create_dir(dir.join("lib")).unwrap();
        std::fs::write(dir.join("lib/x.txt"), "hello").unwrap();
        std::fs::write(dir.join("run.sh"), "echo hi").unwrap();
    }

    #[test]
    fn pack_then_unpack_round_trips() {
        let src = tempfile::tempdir().unwrap();
        app(src.path());
        let (m, bytes) = pack(src.path()).unwrap();
        assert_eq!(file_name(&m), "com.example.t-0.1.0.tar.gz");
        let dest = tempfile::tempdir().unwrap();
        let out = dest.path().join("u");
        let m2 = unpack(&bytes, &out).unwrap();
        assert_eq!(m2.id, m.id);
        assert_eq!(
            std::fs::read_to_string(out.join("lib/x.txt")).unwrap(),
            "hello"
        );
    }

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    #[test]
    fn traversal_links_and_junk_are_refused() {
        let dest = tempfile::tempdir().unwrap();
        // `..` in a name: written raw, since the tar crate's own setters refuse it.
        let dotdot = archive(|b| {
            let mut h = header(tar::EntryType::Regular, 1);
            h.as_old_mut().name[..9].copy_from_slice(b"../evil.x");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        });
        let e = unpack(&dotdot, &dest.path().join("a")).unwrap_err();
        assert!(e.to_string().contains("leaves the package"), "{e}");
        assert!(!dest.path().join("evil.x").exists());
        let link = archive(|b| {
            let mut h = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut h, "etc", "/etc").unwrap();
        });
        let e = unpack(&link, &dest.path().join("b")).unwrap_err();
        assert!(e.to_string().contains("Symlink"), "{e}");
        let e = unpack(b"not gzip at all", &dest.path().join("c")).unwrap_err();
        assert!(matches!(e, PackageError::Invalid(_)), "{e}");
        let empty = archive(|_| {});
        let e = unpack(&empty, &dest.path().join("d")).unwrap_err();
        assert!(e.to_string().contains(MANIFEST_FILE), "{e}");
    }
}
