//! Writing a bundle: streamed, with fixed metadata.

use std::io::{self, Read, Write};

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

use super::{
    check_fixed_size, io_err, BundleError, ExtractLimits, LaunchConfig, CMDLINE, FIRMWARE, ID_AUTH,
    ID_BLOCK, INITRD, KERNEL, LAUNCH_CONFIG, MODE, MTIME,
};
use snpguard::idblock::{ID_AUTH_SIZE, ID_BLOCK_SIZE};

/// The large inputs of a bundle, streamed: the kernel and initrd can be
/// hundreds of megabytes and are never held in memory.
pub struct BundleSources<'a> {
    /// Firmware image, exactly `firmware_len` bytes.
    pub firmware: &'a mut dyn Read,
    /// Length of the firmware.
    pub firmware_len: u64,
    /// Kernel, exactly `kernel_len` bytes.
    pub kernel: &'a mut dyn Read,
    /// Length of the kernel.
    pub kernel_len: u64,
    /// Initrd, exactly `initrd_len` bytes.
    pub initrd: &'a mut dyn Read,
    /// Length of the initrd.
    pub initrd_len: u64,
    /// Kernel command line, written as is (no newline added).
    pub cmdline: &'a str,
    /// ID block, [`ID_BLOCK_SIZE`] bytes.
    pub id_block: &'a [u8],
    /// ID authentication information, [`ID_AUTH_SIZE`] bytes.
    pub id_auth: &'a [u8],
}

/// `launch-config.json` as a bundle holds it: `config`, validated, as
/// pretty JSON with a final newline.
pub fn config_json(config: &LaunchConfig) -> Result<Vec<u8>, BundleError> {
    config.validate()?;
    let mut json = serde_json::to_vec_pretty(config).map_err(BundleError::ConfigJson)?;
    json.push(b'\n');
    Ok(json)
}

/// Writes a bundle to `out`. The config is validated first and every
/// member is checked against [`ExtractLimits::default`], so what this
/// writes always extracts. On error the output is incomplete and must be
/// discarded.
pub fn write_bundle(
    out: impl Write,
    config: &LaunchConfig,
    src: BundleSources,
) -> Result<(), BundleError> {
    let config_json = config_json(config)?;
    check_fixed_size(ID_BLOCK, src.id_block.len() as u64, ID_BLOCK_SIZE)?;
    check_fixed_size(ID_AUTH, src.id_auth.len() as u64, ID_AUTH_SIZE)?;
    let limits = ExtractLimits::default();

    let sizes = [
        (LAUNCH_CONFIG, config_json.len() as u64, limits.max_config),
        (FIRMWARE, src.firmware_len, limits.max_member),
        (KERNEL, src.kernel_len, limits.max_member),
        (INITRD, src.initrd_len, limits.max_member),
        (CMDLINE, src.cmdline.len() as u64, limits.max_member),
    ];
    let mut total = (ID_BLOCK_SIZE + ID_AUTH_SIZE) as u64;
    for (member, len, limit) in sizes {
        if len > limit {
            return Err(BundleError::MemberTooLarge {
                member: member.into(),
                limit,
            });
        }
        total = total.saturating_add(len);
    }
    if total > limits.max_total {
        return Err(BundleError::TotalTooLarge {
            limit: limits.max_total,
        });
    }

    let gz = GzEncoder::new(out, Compression::default());
    let mut tar = tar::Builder::new(gz);
    append_exact(
        &mut tar,
        LAUNCH_CONFIG,
        &mut config_json.as_slice(),
        config_json.len() as u64,
    )?;
    append_exact(&mut tar, FIRMWARE, src.firmware, src.firmware_len)?;
    append_exact(&mut tar, KERNEL, src.kernel, src.kernel_len)?;
    append_exact(&mut tar, INITRD, src.initrd, src.initrd_len)?;
    let cmdline = src.cmdline.as_bytes();
    append_exact(&mut tar, CMDLINE, &mut &cmdline[..], cmdline.len() as u64)?;
    append_exact(
        &mut tar,
        ID_BLOCK,
        &mut &src.id_block[..],
        src.id_block.len() as u64,
    )?;
    append_exact(
        &mut tar,
        ID_AUTH,
        &mut &src.id_auth[..],
        src.id_auth.len() as u64,
    )?;
    let gz = tar
        .into_inner()
        .map_err(|e| io_err("finishing the tar stream", e))?;
    let mut out = gz
        .finish()
        .map_err(|e| io_err("finishing the gzip stream", e))?;
    out.flush().map_err(|e| io_err("flushing the bundle", e))?;
    Ok(())
}

/// Appends exactly `len` bytes of `data` as `name`; a source that is
/// shorter or longer than `len` is an error.
fn append_exact<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &mut dyn Read,
    len: u64,
) -> Result<(), BundleError> {
    let mut header = Header::new_ustar();
    header
        .set_path(name)
        .map_err(|e| io_err("setting a member name", e))?;
    header.set_entry_type(EntryType::Regular);
    header.set_size(len);
    header.set_mode(MODE);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_cksum();
    let mut counted = Counted {
        inner: data.take(len),
        count: 0,
    };
    tar.append(&header, &mut counted)
        .map_err(|e| io_err(&format!("writing {name}"), e))?;
    if counted.count != len {
        return Err(BundleError::SizeMismatch {
            member: name.into(),
            declared: len,
            actual: counted.count,
        });
    }
    let mut extra = [0u8; 1];
    let n = read_retrying(counted.inner.into_inner(), &mut extra)
        .map_err(|e| io_err(&format!("reading {name}"), e))?;
    if n != 0 {
        return Err(BundleError::SizeMismatch {
            member: name.into(),
            declared: len,
            actual: len + 1,
        });
    }
    Ok(())
}

struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

fn read_retrying(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
