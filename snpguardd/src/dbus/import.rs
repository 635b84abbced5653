//! The import/export directory: the only place path-based methods touch.
//!
//! Rules, each rejected with `InvalidInput` naming it: a path is
//! absolute, has no `..` component, lies inside the import directory, and
//! no component below the import directory is a symlink. Resolution is
//! done by the kernel (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS` relative to the directory opened at start), so a
//! symlink swapped in between check and open cannot escape.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{fstat, openat2, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use snpguard_protocol::dbus::{limit, Error};

/// The opened import directory.
pub struct ImportDir {
    /// As configured (what clients see and use in their paths).
    path: PathBuf,
    /// Canonical form, accepted as a prefix too.
    canonical: PathBuf,
    dir: OwnedFd,
}

impl ImportDir {
    /// Opens the directory; it must exist.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let canonical = path
            .canonicalize()
            .map_err(|e| Error::Storage(format!("import directory {}: {e}", path.display())))?;
        let dir = File::open(&canonical)
            .map_err(|e| Error::Storage(format!("import directory {}: {e}", path.display())))?;
        Ok(ImportDir {
            path: path.to_path_buf(),
            canonical,
            dir: dir.into(),
        })
    }

    /// The directory as configured.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path` relative to the import directory, if it obeys the rules.
    fn relative<'a>(&self, path: &'a str) -> Result<&'a Path, Error> {
        let shown = self.path.display();
        if path.len() > limit::PATH {
            return Err(Error::InvalidInput(format!(
                "path longer than {} bytes",
                limit::PATH
            )));
        }
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(Error::InvalidInput(format!(
                "path {path:?} is not absolute; give a full path inside {shown}"
            )));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(Error::InvalidInput(format!(
                "path {path:?} contains \"..\"; give a plain path inside {shown}"
            )));
        }
        let rel = p
            .strip_prefix(&self.path)
            .or_else(|_| p.strip_prefix(&self.canonical))
            .map_err(|_| {
                Error::InvalidInput(format!(
                    "path {path:?} is outside the import directory {shown}; copy the file there first"
                ))
            })?;
        if rel.as_os_str().is_empty() {
            return Err(Error::InvalidInput(format!(
                "path {path:?} names the import directory itself, not a file in it"
            )));
        }
        Ok(rel)
    }

    fn resolve(&self, path: &str, flags: OFlags, mode: Mode) -> Result<File, Error> {
        let rel = self.relative(path)?;
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let fd = openat2(
            &self.dir,
            rel,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            mode,
            how,
        )
        .map_err(|e| match e {
            Errno::LOOP | Errno::XDEV => Error::InvalidInput(format!(
                "path {path:?} goes through a symlink; symlinks are not followed in {}",
                self.path.display()
            )),
            Errno::NOENT => Error::InvalidInput(format!("path {path:?} does not exist")),
            Errno::EXIST if self.is_symlink(rel) => Error::InvalidInput(format!(
                "path {path:?} is a symlink; symlinks are not followed in {}",
                self.path.display()
            )),
            Errno::EXIST => Error::AlreadyExists(format!("{path:?} exists; pick a new file name")),
            e => Error::InvalidInput(format!("cannot open {path:?}: {e}")),
        })?;
        Ok(File::from(fd))
    }

    fn is_symlink(&self, rel: &Path) -> bool {
        rustix::fs::statat(&self.dir, rel, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
    }

    /// Opens a regular file inside the directory for reading. It must
    /// have one link: a hard link made into the import directory would
    /// let a caller who can write there have the daemon read a file
    /// elsewhere on the same file system (its own state, say) that the
    /// caller could not hand over itself.
    pub fn open_file(&self, path: &str) -> Result<File, Error> {
        let f = self.resolve(path, OFlags::RDONLY, Mode::empty())?;
        require_regular(&f, path)?;
        require_single_link(&f, path, &self.path)?;
        Ok(f)
    }

    /// Creates a new file (mode 0644) inside the directory for writing.
    pub fn create_file(&self, path: &str) -> Result<File, Error> {
        self.resolve(
            path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(0o644),
        )
    }

    /// Removes a file created by [`Self::create_file`] after a failure.
    pub fn remove_file(&self, path: &str) {
        if let Ok(rel) = self.relative(path) {
            let _ = rustix::fs::unlinkat(&self.dir, rel, rustix::fs::AtFlags::empty());
        }
    }
}

/// Registration inputs must be regular files: a pipe or a device could
/// block the daemon or never end.
pub fn require_regular(f: &File, what: &str) -> Result<(), Error> {
    let st = fstat(f).map_err(|e| Error::InvalidInput(format!("{what}: fstat: {e}")))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Error::InvalidInput(format!(
            "{what} is not a regular file; pass a file, not a pipe or device"
        )));
    }
    Ok(())
}

/// Refuses a file with more than one name (`st_nlink > 1`), checked on
/// the opened file, so a link added or removed around the open changes
/// nothing.
fn require_single_link(f: &File, what: &str, dir: &Path) -> Result<(), Error> {
    let st = fstat(f).map_err(|e| Error::InvalidInput(format!("{what}: fstat: {e}")))?;
    if st.st_nlink > 1 {
        return Err(Error::InvalidInput(format!(
            "{what:?} has {} hard links; files in {} must have one — copy the file there \
             (cp, not ln)",
            st.st_nlink,
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hard_linked_file_is_refused_a_copy_is_not() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("master.key");
        std::fs::write(&secret, b"not for callers").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let import = ImportDir::open(dir.path()).unwrap();
        let linked = dir.path().join("vcek.der");
        std::fs::hard_link(&secret, &linked).unwrap();
        let e = import
            .open_file(linked.to_str().unwrap())
            .expect_err("hard link refused");
        let Error::InvalidInput(msg) = e else {
            panic!("wrong error: {e:?}")
        };
        assert!(msg.contains("has 2 hard links"), "{msg}");
        assert!(msg.contains("cp, not ln"), "{msg}");
        // Two names inside the directory count the same.
        let copy = dir.path().join("copy.der");
        std::fs::copy(&secret, &copy).unwrap();
        import
            .open_file(copy.to_str().unwrap())
            .expect("a copy is taken");
        std::fs::hard_link(&copy, dir.path().join("again.der")).unwrap();
        assert!(import.open_file(copy.to_str().unwrap()).is_err());
        // Back to one name: taken again.
        std::fs::remove_file(dir.path().join("again.der")).unwrap();
        import.open_file(copy.to_str().unwrap()).expect("one link");
    }
}
