//! The LUKS2 root volume: the VMK is the LUKS2 volume key itself (the
//! agent maps the data segment with it, pinned parameters, no header
//! trust); keyslot 0 holds a recovery passphrase, or no keyslot exists at
//! all (`--no-recovery-keyslot`: the volume key digest stays, so the VMK
//! alone opens it).
//!
//! Secrets reach the appliance only through the libguestfs `write` call
//! into a tmpfs mounted inside the appliance for the purpose; they are
//! overwritten and the tmpfs unmounted as soon as cryptsetup has used them,
//! on success or failure.

use std::fmt;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use zeroize::Zeroizing;

use super::appliance::{quote, Appliance};

/// Device-mapper name of the opened root volume (also in the agent config).
pub const MAPPER_NAME: &str = "snpguard_root";
/// Cipher of the data segment.
pub const CIPHER: &str = "aes-xts-plain64";
/// Volume key length: AES-256-XTS takes two 256-bit keys.
pub const KEY_BYTES: usize = 64;
/// Encryption sector size.
pub const SECTOR_SIZE: u32 = 512;
/// Data segment offset: the LUKS2 header and keyslot area before it.
pub const DATA_OFFSET: u64 = 16 * 1024 * 1024;

/// Inside the appliance's own tree (not the guest): where the tmpfs for
/// secrets is mounted. Nothing may be mounted at /sysroot when it is used.
const KEY_DIR: &str = "/sysroot/.snpguard-keys";

/// The volume master key. Zeroized on drop; no `Debug` output of bytes.
pub struct Vmk(Zeroizing<[u8; KEY_BYTES]>);

impl Vmk {
    /// A fresh key from the OS's CSPRNG.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; KEY_BYTES]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Vmk(k)
    }

    /// The key bytes.
    pub fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// The volume key of the data volume whose LUKS2 UUID is `uuid`,
    /// derived from this VMK as the agent derives it
    /// (`snpguard::volume::data_volume_key`).
    pub fn data_volume_key(&self, uuid: &str) -> Result<Vmk> {
        let k = snpguard::volume::data_volume_key(self.bytes(), uuid, KEY_BYTES)
            .context("deriving a data volume key")?;
        let mut out = Zeroizing::new([0u8; KEY_BYTES]);
        out.copy_from_slice(&k);
        Ok(Vmk(out))
    }
}

impl fmt::Debug for Vmk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Vmk(<redacted>)")
    }
}

/// The recovery passphrase: 8 groups of 5 characters from a 32-letter
/// alphabet without look-alikes (200 bits). Zeroized on drop.
pub struct RecoveryPassphrase(Zeroizing<String>);

impl RecoveryPassphrase {
    /// A fresh passphrase from the OS's CSPRNG.
    pub fn generate() -> Self {
        const ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz23456789-";
        let mut raw = Zeroizing::new([0u8; 40]);
        rand::rngs::OsRng.fill_bytes(raw.as_mut());
        let mut s = Zeroizing::new(String::with_capacity(47));
        for (i, b) in raw.iter().enumerate() {
            if i > 0 && i % 5 == 0 {
                s.push('.');
            }
            s.push(ALPHABET[(*b & 31) as usize] as char);
        }
        RecoveryPassphrase(s)
    }

    /// The passphrase, to print once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RecoveryPassphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryPassphrase(<redacted>)")
    }
}

/// The pinned parameters of a volume are the agent configuration's own
/// type: what convert formats is what `[luks]` and `[[volumes]]` state.
pub use snpguard_protocol::agent_config::Luks;

/// Fresh parameters of the root volume, with a random header UUID.
pub fn new_root() -> Luks {
    new_volume(MAPPER_NAME, &random_uuid())
}

/// Fresh parameters of a data volume mapped as `name`, with a random
/// header UUID.
pub fn new_data(name: &str) -> Luks {
    new_volume(name, &random_uuid())
}

/// The parameters convert pins for the volume mapped as `name` whose
/// LUKS2 header carries `uuid` (the agent finds it as `UUID=<uuid>`).
pub fn new_volume(name: &str, uuid: &str) -> Luks {
    Luks {
        device: format!("UUID={uuid}"),
        uuid: uuid.into(),
        name: name.into(),
        cipher: CIPHER.into(),
        key_bytes: KEY_BYTES,
        sector_size: SECTOR_SIZE,
        offset: DATA_OFFSET,
    }
}

/// A version 4 UUID in its text form.
pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Formats `device` (in the appliance) as LUKS2 with `vmk` as the volume
/// key and `recovery` in keyslot 0 (no keyslot at all without it), opens
/// it as `params.name`, and checks the header states exactly `params` and
/// those keyslots.
pub fn format_and_open(
    app: &Appliance,
    device: &str,
    params: &Luks,
    vmk: &Vmk,
    recovery: Option<&RecoveryPassphrase>,
) -> Result<()> {
    app.sh(&format!(
        "if grep -qs ' /sysroot ' /proc/mounts; then echo '/sysroot is in use'; exit 1; fi
mkdir -p {KEY_DIR}
mount -t tmpfs -o size=64k,mode=0700 snpguard-keys {KEY_DIR}
test \"$(stat -f -c %T {KEY_DIR})\" = tmpfs"
    ))
    .context("mounting a tmpfs for the keys in the appliance")?;
    let result = format_with_keys(app, device, params, vmk, recovery);
    let wiped = app.sh(&format!(
        "for f in {KEY_DIR}/vmk {KEY_DIR}/passphrase; do
  if [ -f \"$f\" ]; then dd if=/dev/zero of=\"$f\" bs=\"$(stat -c %s \"$f\")\" count=1 conv=notrunc status=none; rm -f \"$f\"; fi
done
umount {KEY_DIR}
rmdir {KEY_DIR}"
    ));
    result?;
    wiped.context("wiping the keys in the appliance")?;
    Ok(())
}

fn format_with_keys(
    app: &Appliance,
    device: &str,
    params: &Luks,
    vmk: &Vmk,
    recovery: Option<&RecoveryPassphrase>,
) -> Result<()> {
    // luksFormat always fills a keyslot: without a recovery passphrase it
    // gets a throw-away one, never shown, and the slot is destroyed below.
    let throwaway;
    let passphrase = match recovery {
        Some(p) => p,
        None => {
            throwaway = RecoveryPassphrase::generate();
            &throwaway
        }
    };
    app.write_appliance_file(&format!("{KEY_DIR}/vmk"), vmk.bytes())?;
    app.write_appliance_file(
        &format!("{KEY_DIR}/passphrase"),
        passphrase.expose().as_bytes(),
    )?;
    let dev = quote(device);
    app.sh(&format!(
        "cryptsetup luksFormat -q --type luks2 --batch-mode \
         --volume-key-file {KEY_DIR}/vmk --key-size {bits} --cipher {cipher} \
         --sector-size {sector} --offset {offset_sectors} --uuid {uuid} \
         --pbkdf argon2id --pbkdf-memory 262144 --pbkdf-parallel 1 \
         --key-file {KEY_DIR}/passphrase --key-slot 0 {dev}
cryptsetup open --type luks2 --volume-key-file {KEY_DIR}/vmk {dev} {name}",
        bits = params.key_bytes * 8,
        cipher = quote(&params.cipher),
        sector = params.sector_size,
        offset_sectors = params.offset / 512,
        uuid = quote(&params.uuid),
        name = quote(&params.name),
    ))
    .with_context(|| format!("formatting {device} as LUKS2"))?;
    if recovery.is_none() {
        // Batch mode removes the last keyslot without asking; the volume
        // key digest stays, and the VMK alone opens the volume.
        app.sh(&format!("cryptsetup luksKillSlot --batch-mode {dev} 0"))
            .context("removing the throw-away keyslot (--no-recovery-keyslot)")?;
    }
    let dump = app.sh(&format!("cryptsetup luksDump {dev}"))?;
    check_dump(&dump, params)?;
    let want: &[u32] = if recovery.is_some() { &[0] } else { &[] };
    let got = keyslots(&dump);
    if got != want {
        bail!("the new LUKS2 header has keyslots {got:?}, expected {want:?}; refusing to continue");
    }
    Ok(())
}

/// The keyslot numbers a `cryptsetup luksDump` lists.
pub fn keyslots(dump: &str) -> Vec<u32> {
    dump.lines()
        .skip_while(|l| l.trim_end() != "Keyslots:")
        .skip(1)
        .take_while(|l| l.starts_with([' ', '\t']))
        .filter_map(|l| {
            let (n, kind) = l.trim().split_once(": ")?;
            (!kind.is_empty() && !l.starts_with('\t'))
                .then(|| n.parse().ok())
                .flatten()
        })
        .collect()
}

/// Checks a `cryptsetup luksDump` against the parameters the agent pins.
pub fn check_dump(dump: &str, p: &Luks) -> Result<()> {
    let has = |needle: &str| dump.lines().any(|l| l.trim() == needle);
    let want = [
        "Version:       \t2".to_string(),
        format!("UUID:          \t{}", p.uuid),
        format!("offset: {} [bytes]", p.offset),
        format!("cipher: {}", p.cipher),
        format!("sector: {} [bytes]", p.sector_size),
    ];
    for w in &want {
        let w = w.replace('\t', "");
        let found = has(w.trim())
            || dump
                .lines()
                .any(|l| l.split_whitespace().eq(w.split_whitespace()));
        if !found {
            bail!("the new LUKS2 header does not state `{w}`; refusing to continue");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "LUKS header information
Version:       \t2
Epoch:         \t3
UUID:          \t0b5c7d1e-aaaa-4bbb-8ccc-123456789abc
Data segments:
  0: crypt
\toffset: 16777216 [bytes]
\tlength: (whole device)
\tcipher: aes-xts-plain64
\tsector: 512 [bytes]
";

    /// What `cryptsetup luksDump` (2.6) prints after the data segments.
    const SLOTS: &str = "Keyslots:
  0: luks2
\tKey:        512 bits
\tPriority:   normal
\tCipher:     aes-xts-plain64
\tCipher key: 512 bits
\tPBKDF:      argon2id
\tTime cost:  4
\tSalt:       e4 d5 c2 9e 06 82 61 99 b2 3f 38 79 da d4 cf 7d
\tAF stripes: 4000
\tAF hash:    sha256
\tArea offset:32768 [bytes]
\tDigest ID:  0
Tokens:
Digests:
  0: pbkdf2
\tHash:       sha256
";

    fn params() -> Luks {
        new_volume(MAPPER_NAME, "0b5c7d1e-aaaa-4bbb-8ccc-123456789abc")
    }

    #[test]
    fn dump_matches_parameters() {
        check_dump(DUMP, &params()).unwrap();
        let wrong_offset = DUMP.replace("16777216", "2097152");
        assert!(check_dump(&wrong_offset, &params()).is_err());
        let wrong_sector = DUMP.replace("sector: 512", "sector: 4096");
        assert!(check_dump(&wrong_sector, &params()).is_err());
        let v1 = DUMP.replace("\t2\n", "\t1\n");
        assert!(check_dump(&v1, &params()).is_err());
    }

    #[test]
    fn keyslots_are_read_from_the_dump() {
        assert_eq!(keyslots(&format!("{DUMP}{SLOTS}")), [0]);
        let two = SLOTS.replace("Tokens:", "  1: luks2\n\tKey:        512 bits\nTokens:");
        assert_eq!(keyslots(&format!("{DUMP}{two}")), [0, 1]);
        // After `luksKillSlot 0` (cryptsetup 2.6.1): the section is empty,
        // the digest stays.
        let none = "Keyslots:\nTokens:\nDigests:\n  0: pbkdf2\n\tHash:       sha256\n";
        assert_eq!(keyslots(&format!("{DUMP}{none}")), Vec::<u32>::new());
        assert_eq!(keyslots(DUMP), Vec::<u32>::new());
    }

    #[test]
    fn uuids_and_passphrases_are_well_formed_and_fresh() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, random_uuid());
        let p = RecoveryPassphrase::generate();
        assert_eq!(p.expose().len(), 47);
        assert_eq!(p.expose().matches('.').count(), 7);
        assert_ne!(p.expose(), RecoveryPassphrase::generate().expose());
        assert_eq!(format!("{p:?}"), "RecoveryPassphrase(<redacted>)");
        assert_eq!(format!("{:?}", Vmk::generate()), "Vmk(<redacted>)");
    }

    #[test]
    fn data_volume_keys_are_the_agents_derivation() {
        let vmk = Vmk::generate();
        let p = new_data("snpguard_var");
        assert_eq!(p.name, "snpguard_var");
        assert_eq!(p.mapper(), "/dev/mapper/snpguard_var");
        let k = vmk.data_volume_key(&p.uuid).unwrap();
        let want = snpguard::volume::data_volume_key(vmk.bytes(), &p.uuid, KEY_BYTES).unwrap();
        assert_eq!(&k.bytes()[..], &want[..]);
        assert_ne!(k.bytes(), vmk.bytes());
        assert!(vmk.data_volume_key("not-a-uuid").is_err());
    }
}
