//! The agent's files in an initrd, read as the kernel unpacks it, so that
//! an operator sees what changed in the agent's configuration and CA
//! before approving a launch a guest submitted.
//!
//! An initrd is a sequence of newc cpio archives, each stored plain or
//! compressed (gzip or zstd here), separated by zero padding; the kernel
//! unpacks them in order and a later entry for a path replaces an earlier
//! one. The walk streams: nothing but the agent's files (at most
//! [`MAX_TEXT`] bytes each) and one digest per path is kept, and
//! [`Limits`] bound what a hostile initrd can cost.
//!
//! The kernel also follows symlinks and hard links while it unpacks. The
//! walk does not guess what such an initrd leaves at the agent's paths:
//! an entry climbing with `..`, a symlink on the way to an agent path or
//! a hard link shared with one is reported in [`AgentFiles::problems`],
//! and the review says to compare the initrds by hand.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, Read};

use sha2::{Digest, Sha256};

/// Where the agent reads its configuration inside the initrd.
pub const AGENT_CONFIG: &str = "etc/snpguard/agent.toml";

/// Directories whose files are the agent's: its configuration and CA
/// (`etc/snpguard`) and its binary (`usr/lib/snpguard`).
pub const AGENT_DIRS: [&str; 2] = ["etc/snpguard", "usr/lib/snpguard"];

/// The largest agent file whose text is kept for a diff; larger ones
/// (the agent binary) are shown by digest.
pub const MAX_TEXT: usize = 64 * 1024;

/// The most text kept over all agent files, and the most files listed:
/// a hostile initrd may fill the agent directories.
pub const MAX_KEPT: usize = 1 << 20;
pub const MAX_FILES: usize = 256;

/// What one initrd may cost to read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries over all archives.
    pub max_entries: usize,
    /// Bytes after decompression, over all archives.
    pub max_unpacked: u64,
    /// Bytes of entry names kept (one digest per path).
    pub max_names: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 200_000,
            max_unpacked: 4 << 30,
            max_names: 32 << 20,
        }
    }
}

/// What an agent file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file; `sha256` is of its contents.
    File,
    /// A symlink; `sha256` is of its target.
    Symlink,
}

impl Kind {
    /// `file` or `symlink`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Symlink => "symlink",
        }
    }
}

/// One of the agent's files as the unpacked initrd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFile {
    /// Path relative to the initrd's root, without a leading `/`.
    pub path: String,
    pub kind: Kind,
    /// SHA-256 of the contents (or symlink target), lowercase hex.
    pub sha256: String,
    /// The contents (or target) when they are UTF-8 text of at most
    /// [`MAX_TEXT`] bytes in an agent directory.
    pub text: Option<String>,
}

/// The agent's files of one initrd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFiles {
    /// Every file in [`AGENT_DIRS`], and the CA file the configuration
    /// names when it lies elsewhere; sorted by path.
    pub files: Vec<AgentFile>,
    /// Why what the guest sees at these paths may differ from `files`
    /// (symlinks, hard links, `..`); empty for an ordinary initrd.
    pub problems: Vec<String>,
}

/// Why an initrd could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("reading the initrd: {0}")]
    Io(#[from] io::Error),
    #[error("{part} of the initrd, at byte {offset}: {what}")]
    Malformed {
        part: String,
        offset: u64,
        what: String,
    },
    #[error(
        "part {part} of the initrd is {format}-compressed; SnpGuard reads plain, gzip and zstd \
         initrds (set COMPRESS=zstd in initramfs.conf, or compress=\"zstd\" for dracut)"
    )]
    Unsupported { part: usize, format: &'static str },
    #[error("the initrd {0}; it is not an initrd SnpGuard can review")]
    TooLarge(String),
}

/// Reads the agent's files from the initrd in `r`.
pub fn agent_files<R: Read>(r: R, limits: &Limits) -> Result<AgentFiles, InitrdError> {
    let mut walk = Walk::new(*limits);
    let mut input = Input::new(r);
    let mut part = 0usize;
    loop {
        input.skip_zeros()?;
        let head = input.peek(6)?;
        if head.is_empty() {
            break;
        }
        part += 1;
        let format = Format::of(head);
        match format {
            Format::Cpio => {
                let name = format!("part {part} (plain cpio)");
                walk.archive(&mut input, &name)?;
            }
            Format::Gzip => {
                let d = flate2::bufread::GzDecoder::new(&mut input);
                walk.stream(Input::new(d), &format!("part {part} (gzip)"))?;
            }
            Format::Zstd => {
                let d = ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|e| {
                    InitrdError::Malformed {
                        part: format!("part {part} (zstd)"),
                        offset: 0,
                        what: format!("not a zstd frame: {e}"),
                    }
                })?;
                walk.stream(Input::new(d), &format!("part {part} (zstd)"))?;
            }
            Format::Other(name) => {
                return Err(InitrdError::Unsupported { part, format: name });
            }
            Format::Unknown => {
                return Err(InitrdError::Malformed {
                    part: format!("part {part}"),
                    offset: input.offset(),
                    what: format!(
                        "neither a cpio archive nor a compressed one (it starts with {})",
                        hex::encode(input.peek(6)?)
                    ),
                });
            }
        }
    }
    if part == 0 {
        return Err(InitrdError::Malformed {
            part: "the initrd".into(),
            offset: 0,
            what: "it is empty or all zeros".into(),
        });
    }
    Ok(walk.finish())
}

enum Format {
    Cpio,
    Gzip,
    Zstd,
    Other(&'static str),
    Unknown,
}

impl Format {
    fn of(head: &[u8]) -> Format {
        let starts = |m: &[u8]| head.starts_with(m);
        if starts(b"070701") || starts(b"070702") {
            Format::Cpio
        } else if starts(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Format::Other("xz")
        } else if starts(&[0x02, 0x21, 0x4c, 0x18]) || starts(&[0x04, 0x22, 0x4d, 0x18]) {
            Format::Other("lz4")
        } else if starts(b"BZh") {
            Format::Other("bzip2")
        } else if starts(&[0x89, b'L', b'Z', b'O']) {
            Format::Other("lzo")
        } else if starts(&[0x5d, 0, 0]) {
            Format::Other("lzma")
        } else {
            Format::Unknown
        }
    }
}

/// A buffered reader that can look `n` bytes ahead and counts what it
/// handed out.
struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    offset: u64,
}

impl<R: Read> Input<R> {
    fn new(inner: R) -> Self {
        Input {
            inner,
            buf: vec![0; 64 * 1024].into_boxed_slice(),
            pos: 0,
            end: 0,
            offset: 0,
        }
    }

    /// Bytes handed out so far.
    fn offset(&self) -> u64 {
        self.offset
    }

    /// The next `n` (at most the buffer's size) bytes without consuming
    /// them; fewer only at the end of the input.
    fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        let n = n.min(self.buf.len());
        if self.end - self.pos < n {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
            while self.end < n {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Ok(0) => break,
                    Ok(k) => self.end += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(&self.buf[self.pos..self.end.min(self.pos + n)])
    }

    /// Consumes the zero bytes that pad archives apart.
    fn skip_zeros(&mut self) -> io::Result<()> {
        loop {
            let buf = self.fill_buf()?;
            if buf.is_empty() {
                return Ok(());
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            let all = zeros == buf.len();
            self.consume(zeros);
            if !all {
                return Ok(());
            }
        }
    }
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Input<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
            loop {
                match self.inner.read(&mut self.buf) {
                    Ok(k) => {
                        self.end = k;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.end - self.pos);
        self.pos += n;
        self.offset += n as u64;
    }
}

/// What the unpacked tree holds at a path, as far as the review cares.
struct Entry {
    kind: Kind,
    sha256: [u8; 32],
    /// Kept only in the agent directories.
    data: Option<Vec<u8>>,
}

struct Walk {
    limits: Limits,
    entries: usize,
    unpacked: u64,
    names: usize,
    /// Every regular file and symlink, by normalised path.
    tree: BTreeMap<String, Entry>,
    /// Bytes of text kept in `tree`.
    kept: usize,
    /// Hard-link groups: (major, minor, inode) to the first path.
    links: HashMap<(u32, u32, u32), String>,
    problems: Vec<String>,
}

/// The newc header's fields, in order after the 6-byte magic.
const FIELDS: [&str; 13] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
/// PATH_MAX, with its NUL.
const MAX_NAME: usize = 4096;

impl Walk {
    fn new(limits: Limits) -> Self {
        Walk {
            limits,
            entries: 0,
            unpacked: 0,
            names: 0,
            tree: BTreeMap::new(),
            kept: 0,
            links: HashMap::new(),
            problems: Vec::new(),
        }
    }

    /// Walks every archive of a decompressed part.
    fn stream<R: Read>(&mut self, mut input: Input<R>, part: &str) -> Result<(), InitrdError> {
        loop {
            input.skip_zeros()?;
            let head = input.peek(6)?;
            if head.is_empty() {
                return Ok(());
            }
            if !matches!(Format::of(head), Format::Cpio) {
                let what = format!(
                    "expected a cpio archive, found bytes starting {}",
                    hex::encode(head)
                );
                return Err(self.malformed(part, &input, what));
            }
            self.archive(&mut input, part)?;
        }
    }

    fn malformed<R>(&self, part: &str, input: &Input<R>, what: String) -> InitrdError {
        InitrdError::Malformed {
            part: part.to_owned(),
            offset: input.offset,
            what,
        }
    }

    /// Reads exactly `n` bytes, naming what ended early.
    fn read_exact<R: Read>(
        &mut self,
        input: &mut Input<R>,
        part: &str,
        out: &mut [u8],
        what: &str,
    ) -> Result<(), InitrdError> {
        match input.read_exact(out) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.malformed(
                part,
                input,
                format!("the data ends inside {what} (truncated initrd?)"),
            )),
            Err(e) => Err(self.malformed(part, input, format!("reading {what}: {e}"))),
        }
    }

    fn count(&mut self, bytes: u64) -> Result<(), InitrdError> {
        self.unpacked = self.unpacked.saturating_add(bytes);
        if self.unpacked > self.limits.max_unpacked {
            return Err(InitrdError::TooLarge(format!(
                "unpacks to more than {} bytes",
                self.limits.max_unpacked
            )));
        }
        Ok(())
    }

    /// Walks one cpio archive up to and including its trailer.
    fn archive<R: Read>(&mut self, input: &mut Input<R>, part: &str) -> Result<(), InitrdError> {
        loop {
            let mut h = [0u8; 110];
            self.read_exact(input, part, &mut h, "a cpio header")?;
            if !(h.starts_with(b"070701") || h.starts_with(b"070702")) {
                return Err(self.malformed(
                    part,
                    input,
                    "a cpio header without the newc magic 070701".into(),
                ));
            }
            let mut f = [0u32; 13];
            for (i, name) in FIELDS.iter().enumerate() {
                let s = &h[6 + 8 * i..14 + 8 * i];
                f[i] = std::str::from_utf8(s)
                    .ok()
                    .and_then(|s| u32::from_str_radix(s, 16).ok())
                    .ok_or_else(|| {
                        self.malformed(
                            part,
                            input,
                            format!("the cpio header field {name} is not 8 hex digits"),
                        )
                    })?;
            }
            let [ino, mode, _, _, nlink, _, filesize, major, minor, _, _, namesize, _] = f;
            let namesize = namesize as usize;
            if namesize == 0 || namesize > MAX_NAME {
                return Err(self.malformed(
                    part,
                    input,
                    format!("an entry name of {namesize} bytes (1 to {MAX_NAME} allowed)"),
                ));
            }
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(InitrdError::TooLarge(format!(
                    "has more than {} entries",
                    self.limits.max_entries
                )));
            }
            let mut name = vec![0u8; namesize + pad4(110 + namesize)];
            self.read_exact(input, part, &mut name, "an entry name")?;
            if name[namesize - 1] != 0 {
                return Err(self.malformed(
                    part,
                    input,
                    "an entry name without its terminating NUL".into(),
                ));
            }
            name.truncate(namesize - 1);
            let raw = String::from_utf8_lossy(&name).into_owned();
            self.count(110 + name.len() as u64 + u64::from(filesize))?;
            if raw == "TRAILER!!!" {
                // As in the kernel, hard links pair only within an archive.
                self.links.clear();
                return self.skip(
                    input,
                    part,
                    u64::from(filesize) + pad4(filesize as usize) as u64,
                );
            }
            self.entry(
                input,
                part,
                &raw,
                mode,
                nlink,
                (major, minor, ino),
                filesize,
            )?;
        }
    }

    fn skip<R: Read>(
        &mut self,
        input: &mut Input<R>,
        part: &str,
        n: u64,
    ) -> Result<(), InitrdError> {
        let copied = io::copy(&mut input.by_ref().take(n), &mut io::sink())?;
        if copied < n {
            return Err(self.malformed(
                part,
                input,
                "the data ends inside an entry (truncated initrd?)".into(),
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn entry<R: Read>(
        &mut self,
        input: &mut Input<R>,
        part: &str,
        raw: &str,
        mode: u32,
        nlink: u32,
        inode: (u32, u32, u32),
        filesize: u32,
    ) -> Result<(), InitrdError> {
        let (path, climbs) = normalise(raw);
        if climbs {
            self.problem(format!(
                "the entry {} climbs with '..', so it may land on any path",
                crate::text::escape(raw)
            ));
        }
        let kind = match mode & S_IFMT {
            S_IFREG => Some(Kind::File),
            S_IFLNK => Some(Kind::Symlink),
            _ => None,
        };
        let agent = in_agent_dirs(&path);
        if kind == Some(Kind::Symlink) && is_agent_ancestor(&path) {
            self.problem(format!(
                "{path} is a symlink, so the agent's files may be read from elsewhere"
            ));
        }
        if kind == Some(Kind::File) && nlink >= 2 {
            match self.links.get(&inode) {
                Some(first) if first != &path && (agent || in_agent_dirs(first)) => {
                    let msg = format!("{path} is a hard link to {first}");
                    self.problem(msg);
                }
                Some(_) => {}
                None => {
                    self.names += path.len();
                    self.links.insert(inode, path.clone());
                }
            }
        }
        let size = filesize as usize;
        // The configuration is always kept (one entry replaces another).
        let budget = path == AGENT_CONFIG || self.kept + size <= MAX_KEPT;
        let keep = agent && kind.is_some() && size <= MAX_TEXT && budget;
        let mut hash = Sha256::new();
        let mut data = keep.then(|| Vec::with_capacity(size));
        let mut left = u64::from(filesize);
        let mut chunk = [0u8; 16 * 1024];
        while left > 0 {
            let n = (left as usize).min(chunk.len());
            self.read_exact(input, part, &mut chunk[..n], "an entry's data")?;
            hash.update(&chunk[..n]);
            if let Some(d) = data.as_mut() {
                d.extend_from_slice(&chunk[..n]);
            }
            left -= n as u64;
        }
        self.skip(input, part, pad4(size) as u64)?;
        match kind {
            Some(kind) => {
                if !self.tree.contains_key(&path) {
                    self.names += path.len();
                }
                if self.names > self.limits.max_names {
                    return Err(InitrdError::TooLarge(format!(
                        "has more than {} bytes of entry names",
                        self.limits.max_names
                    )));
                }
                self.kept += data.as_ref().map_or(0, Vec::len);
                let entry = Entry {
                    kind,
                    sha256: hash.finalize().into(),
                    data,
                };
                if let Some(old) = self.tree.insert(path, entry) {
                    self.kept -= old.data.map_or(0, |d| d.len());
                }
            }
            // A directory, device or fifo replaces whatever was there.
            None => {
                if let Some(old) = self.tree.remove(&path) {
                    self.kept -= old.data.map_or(0, |d| d.len());
                }
            }
        }
        Ok(())
    }

    fn problem(&mut self, p: String) {
        // Bounded: a hostile initrd could repeat the same trick.
        if self.problems.len() < 16 && !self.problems.contains(&p) {
            self.problems.push(p);
        }
    }

    fn finish(mut self) -> AgentFiles {
        let mut files: Vec<AgentFile> = self
            .tree
            .iter()
            .filter(|(p, _)| in_agent_dirs(p))
            .map(|(p, e)| file(p, e))
            .collect();
        let ca = files
            .iter()
            .find(|f| f.path == AGENT_CONFIG && f.kind == Kind::File)
            .and_then(|f| f.text.as_deref())
            .and_then(configured_ca);
        if let Some(ca) = ca {
            if !in_agent_dirs(&ca) {
                match self.tree.get(&ca) {
                    Some(e) => files.push(file(&ca, e)),
                    None => self.problems.push(format!(
                        "{AGENT_CONFIG} names the CA file /{ca}, which the initrd does not hold"
                    )),
                }
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        if files.len() > MAX_FILES {
            self.problems.push(format!(
                "the agent directories hold {} files; only the first {MAX_FILES} are listed",
                files.len()
            ));
            files.truncate(MAX_FILES);
        }
        AgentFiles {
            files,
            problems: self.problems,
        }
    }
}

fn file(path: &str, e: &Entry) -> AgentFile {
    AgentFile {
        path: path.to_owned(),
        kind: e.kind,
        sha256: hex::encode(e.sha256),
        text: e
            .data
            .as_ref()
            .and_then(|d| std::str::from_utf8(d).ok())
            .map(str::to_owned),
    }
}

/// The CA file the agent configuration `config` names, as a path in
/// the initrd (no leading `/`), if the configuration parses.
pub fn configured_ca(config: &str) -> Option<String> {
    let table: toml::Table = config.parse().ok()?;
    Some(normalise(table.get("ca")?.as_str()?).0)
}

/// The padding after `n` bytes up to a multiple of 4.
fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// `name` without leading `/`, `./`, empty and `.` components, with
/// `..` resolved lexically; and whether it had a `..`.
fn normalise(name: &str) -> (String, bool) {
    let mut parts: Vec<&str> = Vec::new();
    let mut climbs = false;
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                climbs = true;
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    (parts.join("/"), climbs)
}

fn in_agent_dirs(path: &str) -> bool {
    AGENT_DIRS.iter().any(|d| {
        path.strip_prefix(d)
            .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Whether `path` is an agent directory, one of its parents, or inside
/// one: a symlink there redirects what the agent reads.
fn is_agent_ancestor(path: &str) -> bool {
    AGENT_DIRS.iter().any(|d| {
        d == &path
            || d.strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('/'))
            || path
                .strip_prefix(d)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// A newc cpio archive of `entries` (path, mode, contents; a symlink's
/// contents are its target), ending with the trailer: for tests and fuzz
/// seeds.
#[doc(hidden)]
pub fn newc(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let trailer: (&str, u32, &[u8]) = ("TRAILER!!!", 0, b"");
    for (i, (name, mode, data)) in entries.iter().chain([&trailer]).enumerate() {
        let fields = [
            i as u32 + 1,
            *mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len() + pad4(110 + name.len() + 1), 0);
        out.extend_from_slice(data);
        out.resize(out.len() + pad4(data.len()), 0);
    }
    out
}

#[cfg(test)]
mod tests;
