//! The daemon's master key and the sealing of secrets at rest.
//!
//! The master key (32 bytes) comes from the systemd credential
//! `snpguard-master-key` (`$CREDENTIALS_DIRECTORY`) when present, else
//! from `<state>/master.key`, created on first start with mode 0600. Key
//! files hold the 32 raw bytes or 64 hexadecimal digits (a trailing
//! newline is allowed), so `openssl rand -hex 32` or `systemd-creds
//! encrypt` of either works.
//!
//! Secrets are sealed with XChaCha20-Poly1305 under a random 192-bit
//! nonce. The associated data names the purpose and the owner
//! (`snpguard/v1/vmk/<record id>`), so a sealed value moved to another
//! record or purpose does not open. Sealed layout: version byte (1) ‖
//! nonce (24) ‖ ciphertext ‖ tag (16).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::fsutil;

/// Length of the master key.
pub const MASTER_KEY_LEN: usize = 32;
/// Name of the systemd credential holding the master key.
pub const CREDENTIAL_NAME: &str = "snpguard-master-key";
/// Name of the master key file in the state directory.
pub const MASTER_KEY_FILE: &str = "master.key";

const SEALED_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Longest key file accepted: 64 hex digits and a CR LF.
const MAX_KEY_FILE_LEN: u64 = 66;

/// What a sealed secret is for; part of its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A record's volume master key.
    Vmk,
    /// A record's ID key (P-384 scalar).
    IdKey,
    /// The daemon's author key (P-384 scalar).
    AuthorKey,
    /// The HPKE ingestion private key (X25519).
    IngestionKey,
    /// The key for attestation nonces.
    NonceHmacKey,
    /// The TLS private key (PKCS#8 PEM).
    TlsKey,
    /// The value that proves the master key matches the store.
    KeyCheck,
}

impl Purpose {
    /// The purpose's name in the associated data.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Vmk => "vmk",
            Purpose::IdKey => "id-key",
            Purpose::AuthorKey => "author-key",
            Purpose::IngestionKey => "ingestion-key",
            Purpose::NonceHmacKey => "nonce-hmac-key",
            Purpose::TlsKey => "tls-key",
            Purpose::KeyCheck => "key-check",
        }
    }

    fn aad(self, owner: &str) -> Vec<u8> {
        format!("snpguard/v1/{}/{owner}", self.name()).into_bytes()
    }
}

/// Why the master key could not be had, or a secret not sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A key file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// A key file others can read or write.
    #[error(
        "{} has mode {mode:04o}; a master key file must not be accessible to group or others: \
         run `chmod 600 {}` (and check who could have read it)",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file that is a symbolic link or not a regular file.
    #[error("{} is not a regular file; the master key must be a plain file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A key file that holds neither 32 bytes nor 64 hex digits.
    #[error(
        "{} does not hold a master key (32 bytes, or 64 hexadecimal digits); \
         restore the right file or credential",
        path.display()
    )]
    BadKeyFile {
        /// The file.
        path: PathBuf,
    },
    /// The system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
    /// Encryption failed (a plaintext too large for the cipher).
    #[error("sealing a {0} failed")]
    Seal(&'static str),
    /// A sealed value that is malformed, was sealed with another master
    /// key, or belongs to another owner or purpose.
    #[error(
        "the sealed {purpose} of {owner:?} does not open: wrong master key, or the value was \
         altered or moved"
    )]
    Unseal {
        /// What the value is.
        purpose: &'static str,
        /// Whose it is.
        owner: String,
    },
}

/// Fills `buf` from the operating system's generator.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), SecretsError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| SecretsError::Random(e.to_string()))
}

/// Where the master key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// A systemd credential.
    Credential(PathBuf),
    /// A key file in the state directory.
    File {
        /// The file.
        path: PathBuf,
        /// Whether this start created it.
        created: bool,
    },
}

impl fmt::Display for MasterKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MasterKeySource::Credential(p) => write!(f, "systemd credential {}", p.display()),
            MasterKeySource::File {
                path,
                created: true,
            } => write!(f, "{} (created)", path.display()),
            MasterKeySource::File { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// The daemon's master key. Zeroized on drop; `Debug` shows only where it
/// came from.
pub struct MasterKey {
    key: Zeroizing<[u8; MASTER_KEY_LEN]>,
    source: MasterKeySource,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Loads the master key: the credential in `$CREDENTIALS_DIRECTORY`
    /// when set and present, else `<state_dir>/master.key`, created when
    /// absent.
    pub fn load(state_dir: &Path) -> Result<MasterKey, SecretsError> {
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Self::load_from(creds.as_deref(), state_dir)
    }

    /// [`MasterKey::load`] with the credentials directory given.
    pub fn load_from(
        credentials_dir: Option<&Path>,
        state_dir: &Path,
    ) -> Result<MasterKey, SecretsError> {
        if let Some(dir) = credentials_dir {
            let path = dir.join(CREDENTIAL_NAME);
            if path.exists() {
                // systemd owns the credential's permissions.
                let key = read_key_file(&path)?;
                return Ok(MasterKey {
                    key,
                    source: MasterKeySource::Credential(path),
                });
            }
        }
        let path = state_dir.join(MASTER_KEY_FILE);
        let created = create_key_file(&path)?;
        check_permissions(&path)?;
        let key = read_key_file(&path)?;
        Ok(MasterKey {
            key,
            source: MasterKeySource::File { path, created },
        })
    }

    /// A master key from raw bytes (tests, and key import).
    pub fn from_bytes(bytes: &[u8; MASTER_KEY_LEN], source: MasterKeySource) -> MasterKey {
        MasterKey {
            key: Zeroizing::new(*bytes),
            source,
        }
    }

    /// Where the key came from.
    pub fn source(&self) -> &MasterKeySource {
        &self.source
    }

    /// Seals `plaintext` for `purpose` of `owner`.
    pub fn seal(
        &self,
        purpose: Purpose,
        owner: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SecretsError> {
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let aad = purpose.aad(owner);
        let ct = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretsError::Seal(purpose.name()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a value sealed by [`MasterKey::seal`] for the same purpose
    /// and owner.
    pub fn unseal(
        &self,
        purpose: Purpose,
        owner: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let err = || SecretsError::Unseal {
            purpose: purpose.name(),
            owner: owner.to_owned(),
        };
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != SEALED_VERSION {
            return Err(err());
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| err())?;
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        let aad = purpose.aad(owner);
        cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| err())
    }
}

/// Creates the key file with a fresh key unless it exists; true when
/// created. The key is written to a temporary file (0600, fsync) and
/// linked into place, so the file is never seen half-written, and a
/// concurrent creator's key is never replaced.
fn create_key_file(path: &Path) -> Result<bool, SecretsError> {
    let io_err = |error| SecretsError::Io {
        path: path.to_owned(),
        error,
    };
    if fs::symlink_metadata(path).is_ok() {
        return Ok(false);
    }
    let dir = path.parent().ok_or_else(|| SecretsError::NotAFile {
        path: path.to_owned(),
    })?;
    let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    random_bytes(key.as_mut())?;
    let (mut file, tmp) = fsutil::create_temp(dir, 0o600).map_err(io_err)?;
    let linked = (|| {
        file.write_all(key.as_ref())?;
        file.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io_err(e)),
    }
    fsutil::fsync_dir(dir).map_err(io_err)?;
    Ok(true)
}

fn check_permissions(path: &Path) -> Result<(), SecretsError> {
    let meta = fs::symlink_metadata(path).map_err(|error| SecretsError::Io {
        path: path.to_owned(),
        error,
    })?;
    if !meta.file_type().is_file() {
        return Err(SecretsError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretsError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; MASTER_KEY_LEN]>, SecretsError> {
    let io_err = |error| SecretsError::Io {
        path: path.to_owned(),
        error,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(O_NOFOLLOW)
        .open(path)
        .map_err(io_err)?;
    if !file.metadata().map_err(io_err)?.is_file() {
        return Err(SecretsError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize + 1));
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    parse_key(&buf).ok_or_else(|| SecretsError::BadKeyFile {
        path: path.to_owned(),
    })
}

/// `O_NOFOLLOW` on Linux (all architectures the daemon supports).
const O_NOFOLLOW: i32 = 0o400000;

fn parse_key(buf: &[u8]) -> Option<Zeroizing<[u8; MASTER_KEY_LEN]>> {
    let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    if buf.len() == MASTER_KEY_LEN {
        key.copy_from_slice(buf);
        return Some(key);
    }
    let text = buf
        .strip_suffix(b"\n")
        .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
        .unwrap_or(buf);
    if text.len() != 2 * MASTER_KEY_LEN {
        return None;
    }
    hex::decode_to_slice(text, key.as_mut()).ok()?;
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_bytes(
            &[7; 32],
            MasterKeySource::Credential(PathBuf::from("/test")),
        )
    }

    #[test]
    fn first_start_creates_a_0600_key_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = MasterKey::load_from(None, dir.path()).unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        assert_eq!(
            a.source(),
            &MasterKeySource::File {
                path: path.clone(),
                created: true
            }
        );
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let b = MasterKey::load_from(None, dir.path()).unwrap();
        assert!(matches!(
            b.source(),
            MasterKeySource::File { created: false, .. }
        ));
        assert_eq!(*a.key, *b.key);
        // Only the key file: no temporary left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn group_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        MasterKey::load_from(None, dir.path()).unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = MasterKey::load_from(None, dir.path()).unwrap_err();
        assert!(
            matches!(err, SecretsError::Permissions { mode: 0o640, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn symlinked_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, [1u8; 32]).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(MASTER_KEY_FILE)).unwrap();
        let err = MasterKey::load_from(None, dir.path()).unwrap_err();
        assert!(matches!(err, SecretsError::NotAFile { .. }), "{err:?}");
    }

    #[test]
    fn malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        fs::write(&path, b"short").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = MasterKey::load_from(None, dir.path()).unwrap_err();
        assert!(matches!(err, SecretsError::BadKeyFile { .. }), "{err:?}");
    }

    #[test]
    fn credential_wins_and_may_be_hex() {
        let state = tempfile::tempdir().unwrap();
        let creds = tempfile::tempdir().unwrap();
        let hex_key = format!("{}\n", "ab".repeat(32));
        fs::write(creds.path().join(CREDENTIAL_NAME), hex_key).unwrap();
        let k = MasterKey::load_from(Some(creds.path()), state.path()).unwrap();
        assert!(matches!(k.source(), MasterKeySource::Credential(_)));
        assert_eq!(*k.key, [0xab; 32]);
        assert!(!state.path().join(MASTER_KEY_FILE).exists());
        // A credentials directory without our credential: the key file.
        let empty = tempfile::tempdir().unwrap();
        let k = MasterKey::load_from(Some(empty.path()), state.path()).unwrap();
        assert!(matches!(
            k.source(),
            MasterKeySource::File { created: true, .. }
        ));
    }

    #[test]
    fn seal_round_trips_with_fresh_nonces() {
        let k = key();
        let a = k.seal(Purpose::Vmk, "r1", b"secret").unwrap();
        let b = k.seal(Purpose::Vmk, "r1", b"secret").unwrap();
        assert_ne!(a, b);
        assert_eq!(&k.unseal(Purpose::Vmk, "r1", &a).unwrap()[..], b"secret");
        assert!(!a.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn sealed_value_is_bound_to_owner_purpose_and_key() {
        let k = key();
        let s = k.seal(Purpose::Vmk, "r1", b"secret").unwrap();
        assert!(matches!(
            k.unseal(Purpose::Vmk, "r2", &s),
            Err(SecretsError::Unseal { .. })
        ));
        assert!(k.unseal(Purpose::IdKey, "r1", &s).is_err());
        let other = MasterKey::from_bytes(&[8; 32], MasterKeySource::Credential("/x".into()));
        assert!(other.unseal(Purpose::Vmk, "r1", &s).is_err());
        let mut tampered = s.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(k.unseal(Purpose::Vmk, "r1", &tampered).is_err());
        assert!(k.unseal(Purpose::Vmk, "r1", &s[..10]).is_err());
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let dbg = format!("{:?}", key());
        assert!(!dbg.contains('7'), "{dbg}");
    }
}
