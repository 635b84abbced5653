//! A LUKS2 keyslot of the guest's own: enrolled, opened and removed
//! natively (no cryptsetup in the initrd), in the format cryptsetup 2.x
//! reads (`cryptsetup open --key-file` opens what this enrols).
//!
//! A keyslot: PBKDF2-SHA256 of the passphrase (a full-entropy key, so a
//! few iterations are enough) keys aes-xts-plain64 over the keyslot area,
//! which holds the volume key split into 4000 stripes (LUKS's anti-forensic
//! split, SHA-256 diffuser). The JSON metadata gets the keyslot, the
//! volume-key digest lists it, and a token of type `snpguard-offline`
//! marks it as this agent's, so that it is found and removed by that
//! token and never by guessing. Both header copies are rewritten with
//! the next sequence id and their checksums, the primary first; nothing is
//! written unless both copies verify and agree.

use std::fs::File;
use std::os::unix::fs::FileExt as _;

use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Size of the binary part of a header.
const BIN_SIZE: usize = 4096;
const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
const HDR_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
/// Anti-forensic stripes (cryptsetup's default).
pub const STRIPES: usize = 4000;
/// The keyslot area cipher.
pub const AREA_CIPHER: &str = "aes-xts-plain64";
/// The token marking this agent's keyslot.
pub const TOKEN_TYPE: &str = "snpguard-offline";
/// Sector size of the keyslot area's encryption.
const AREA_SECTOR: usize = 512;
/// Keyslot areas are aligned to this.
const AREA_ALIGN: u64 = 4096;

/// Why a keyslot could not be enrolled, opened or removed; each names
/// its rule.
#[derive(Debug, thiserror::Error)]
pub enum KeyslotError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("LUKS2 header: {0}")]
    Header(String),
    #[error(
        "the volume key is {0} bytes; LUKS2 volume keys here are 64 (aes-xts-plain64, 512-bit)"
    )]
    KeySize(usize),
    #[error("the keyslot area has no room for another {0}-byte keyslot")]
    NoRoom(u64),
    #[error("the JSON metadata would be {need} bytes; the header holds {room}")]
    JsonTooLarge { need: usize, room: usize },
    #[error("keyslot {0}: {1}")]
    Keyslot(String, String),
}

fn header(msg: impl Into<String>) -> KeyslotError {
    KeyslotError::Header(msg.into())
}

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn checksum(bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&bytes[..448]);
    h.update([0u8; 64]);
    h.update(&bytes[512..]);
    h.finalize().into()
}

/// Both copies of a header that verified and agree.
pub struct Headers {
    hdr_size: u64,
    primary: Vec<u8>,
    secondary: Vec<u8>,
    json: Value,
}

fn read_copy(f: &File, offset: u64, magic: &[u8; 6]) -> Result<Vec<u8>, KeyslotError> {
    let io = |source| KeyslotError::Io {
        what: "reading the LUKS2 header",
        source,
    };
    let mut bin = vec![0u8; BIN_SIZE];
    f.read_exact_at(&mut bin, offset).map_err(io)?;
    if &bin[..6] != magic || u16::from_be_bytes([bin[6], bin[7]]) != 2 {
        return Err(header(format!("no LUKS2 header at offset {offset}")));
    }
    let hdr_size = be64(&bin, 8);
    if !HDR_SIZES.contains(&hdr_size) || be64(&bin, 256) != offset {
        return Err(header(format!(
            "the header at {offset} has a bad size or offset"
        )));
    }
    if &bin[72..79] != b"sha256\0" {
        return Err(header("only sha256 header checksums are supported"));
    }
    let mut bytes = bin;
    bytes.resize(hdr_size as usize, 0);
    f.read_exact_at(&mut bytes[BIN_SIZE..], offset + BIN_SIZE as u64)
        .map_err(io)?;
    if checksum(&bytes)[..] != bytes[448..480] {
        return Err(header(format!(
            "the header at offset {offset} does not match its checksum"
        )));
    }
    Ok(bytes)
}

impl Headers {
    /// Reads both copies; refuses unless both verify and have the same
    /// sequence id and metadata (a header cryptsetup would repair first).
    pub fn read(f: &File) -> Result<Headers, KeyslotError> {
        let primary = read_copy(f, 0, MAGIC_PRIMARY)?;
        let hdr_size = be64(&primary, 8);
        let secondary = read_copy(f, hdr_size, MAGIC_SECONDARY).map_err(|e| {
            header(format!(
                "the secondary header: {e}; repair it with cryptsetup repair first"
            ))
        })?;
        if be64(&primary, 16) != be64(&secondary, 16)
            || primary[BIN_SIZE..] != secondary[BIN_SIZE..]
        {
            return Err(header(
                "the two header copies disagree; repair them with cryptsetup repair first",
            ));
        }
        let end = primary[BIN_SIZE..]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(primary.len() - BIN_SIZE);
        let json: Value = serde_json::from_slice(&primary[BIN_SIZE..BIN_SIZE + end])
            .map_err(|e| header(format!("the JSON metadata: {e}")))?;
        if json
            .pointer("/config/requirements/mandatory")
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(header(
                "the volume has mandatory requirements this agent does not know",
            ));
        }
        Ok(Headers {
            hdr_size,
            primary,
            secondary,
            json,
        })
    }

    fn obj(&self, name: &str) -> Result<&Map<String, Value>, KeyslotError> {
        self.json
            .get(name)
            .and_then(Value::as_object)
            .ok_or_else(|| header(format!("the JSON metadata has no {name} object")))
    }

    /// The keyslots the token of this agent names.
    pub fn own_keyslots(&self) -> Vec<String> {
        let Some(tokens) = self.json.get("tokens").and_then(Value::as_object) else {
            return Vec::new();
        };
        tokens
            .values()
            .filter(|t| t.get("type").and_then(Value::as_str) == Some(TOKEN_TYPE))
            .filter_map(|t| t.get("keyslots").and_then(Value::as_array))
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect()
    }

    /// The id of the digest covering segment 0.
    fn segment_digest(&self) -> Result<String, KeyslotError> {
        self.obj("digests")?
            .iter()
            .find(|(_, d)| {
                d.get("segments")
                    .and_then(Value::as_array)
                    .is_some_and(|s| s.iter().any(|v| v == "0"))
            })
            .map(|(id, _)| id.clone())
            .ok_or_else(|| header("no digest covers segment 0"))
    }

    /// Checks `key` against the volume-key digest (PBKDF2).
    pub fn check_volume_key(&self, key: &[u8]) -> Result<(), KeyslotError> {
        let id = self.segment_digest()?;
        let d = &self.obj("digests")?[&id];
        let field = |k: &str| {
            d.get(k)
                .ok_or_else(|| header(format!("digest {id} has no {k}")))
        };
        if field("type")?.as_str() != Some("pbkdf2") || field("hash")?.as_str() != Some("sha256") {
            return Err(header(format!("digest {id} is not pbkdf2 over sha256")));
        }
        let iterations = field("iterations")?
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .filter(|i| (1..=10_000_000).contains(i))
            .ok_or_else(|| header(format!("digest {id}: iterations out of range")))?;
        let b64 = |k: &str| -> Result<Vec<u8>, KeyslotError> {
            field(k)?
                .as_str()
                .and_then(|s| snpguard_protocol::attest::unb64(s, 256))
                .filter(|v| !v.is_empty())
                .ok_or_else(|| header(format!("digest {id}: {k} is not base64")))
        };
        let (salt, want) = (b64("salt")?, b64("digest")?);
        if want.len() < 32 {
            return Err(header(format!("digest {id} is shorter than 32 bytes")));
        }
        let mut got = Zeroizing::new(vec![0u8; want.len()]);
        pbkdf2::pbkdf2_hmac::<Sha256>(key, &salt, iterations, &mut got);
        if got[..] == want[..] {
            Ok(())
        } else {
            Err(KeyslotError::Keyslot(
                "-".into(),
                "the key does not match the volume-key digest".into(),
            ))
        }
    }

    /// Where the keyslots area is: [2 * hdr_size, that + keyslots_size).
    fn keyslots_area(&self) -> Result<(u64, u64), KeyslotError> {
        let size: u64 = self
            .json
            .pointer("/config/keyslots_size")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| header("config.keyslots_size is missing"))?;
        let start = 2 * self.hdr_size;
        Ok((start, start.saturating_add(size)))
    }

    /// A free, aligned stretch of `size` bytes of the keyslots area.
    fn free_area(&self, size: u64) -> Result<u64, KeyslotError> {
        let (start, end) = self.keyslots_area()?;
        let mut used: Vec<(u64, u64)> = Vec::new();
        for (id, k) in self.obj("keyslots")? {
            let n = |p: &str| {
                k.pointer(p)
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| header(format!("keyslot {id}: {p} is missing")))
            };
            let (o, s) = (n("/area/offset")?, n("/area/size")?);
            used.push((o, o.saturating_add(s)));
        }
        used.sort();
        let mut at = start;
        for (o, e) in used {
            if at.saturating_add(size) <= o {
                break;
            }
            at = at.max(e.div_ceil(AREA_ALIGN) * AREA_ALIGN);
        }
        if at.saturating_add(size) > end {
            return Err(KeyslotError::NoRoom(size));
        }
        Ok(at)
    }

    /// Writes `json` as the new metadata into both copies (next sequence
    /// id, fresh checksums): the primary, synced, then the secondary.
    fn write(&mut self, f: &File, json: Value) -> Result<(), KeyslotError> {
        let text = serde_json::to_vec(&json).map_err(|e| header(e.to_string()))?;
        let room = self.hdr_size as usize - BIN_SIZE;
        // At least one NUL ends the JSON area's text.
        if text.len() >= room {
            return Err(KeyslotError::JsonTooLarge {
                need: text.len() + 1,
                room,
            });
        }
        let seqid = be64(&self.primary, 16)
            .checked_add(1)
            .ok_or_else(|| header("the sequence id cannot grow"))?;
        let io = |source| KeyslotError::Io {
            what: "writing the LUKS2 header",
            source,
        };
        for (copy, offset) in [
            (&mut self.primary, 0u64),
            (&mut self.secondary, self.hdr_size),
        ] {
            copy[16..24].copy_from_slice(&seqid.to_be_bytes());
            copy[BIN_SIZE..].fill(0);
            copy[BIN_SIZE..BIN_SIZE + text.len()].copy_from_slice(&text);
            copy[448..512].fill(0);
            let sum = checksum(copy);
            copy[448..480].copy_from_slice(&sum);
            f.write_all_at(copy, offset).map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        self.json = json;
        Ok(())
    }
}

/// Diffuses `buf` in place with SHA-256, as LUKS's AF does.
fn diffuse(buf: &mut [u8]) {
    for (i, block) in buf.chunks_mut(32).enumerate() {
        let mut h = Sha256::new();
        h.update((i as u32).to_be_bytes());
        h.update(&*block);
        let d = h.finalize();
        let n = block.len();
        block.copy_from_slice(&d[..n]);
    }
}

/// LUKS's anti-forensic split of `key` into `stripes` blocks.
fn af_split(key: &[u8], stripes: usize) -> Zeroizing<Vec<u8>> {
    use rand::RngCore as _;
    let n = key.len();
    let mut out = Zeroizing::new(vec![0u8; n * stripes]);
    let mut acc = Zeroizing::new(vec![0u8; n]);
    rand::rngs::OsRng.fill_bytes(&mut out[..n * (stripes - 1)]);
    for s in out[..n * (stripes - 1)].chunks(n) {
        for (a, b) in acc.iter_mut().zip(s) {
            *a ^= b;
        }
        diffuse(&mut acc);
    }
    for ((o, a), k) in out[n * (stripes - 1)..].iter_mut().zip(acc.iter()).zip(key) {
        *o = a ^ k;
    }
    out
}

/// The inverse of [`af_split`].
fn af_merge(split: &[u8], n: usize, stripes: usize) -> Zeroizing<Vec<u8>> {
    let mut acc = Zeroizing::new(vec![0u8; n]);
    for s in split[..n * (stripes - 1)].chunks(n) {
        for (a, b) in acc.iter_mut().zip(s) {
            *a ^= b;
        }
        diffuse(&mut acc);
    }
    let mut key = Zeroizing::new(vec![0u8; n]);
    for ((k, a), s) in key
        .iter_mut()
        .zip(acc.iter())
        .zip(&split[n * (stripes - 1)..])
    {
        *k = a ^ s;
    }
    key
}

fn area_cipher(key: &[u8]) -> xts_mode::Xts128<aes::Aes256> {
    use aes::cipher::KeyInit as _;
    let k1 = aes::Aes256::new_from_slice(&key[..32]).expect("32-byte half");
    let k2 = aes::Aes256::new_from_slice(&key[32..]).expect("32-byte half");
    xts_mode::Xts128::new(k1, k2)
}

/// The keyslot key: PBKDF2-SHA256 of the passphrase.
fn slot_key(passphrase: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<Vec<u8>> {
    let mut k = Zeroizing::new(vec![0u8; 64]);
    pbkdf2::pbkdf2_hmac::<Sha256>(passphrase, salt, iterations, &mut k);
    k
}

/// Enrols `passphrase` for the volume key `volume_key` (checked against
/// the header's digest first) in a new keyslot marked with this agent's
/// token; returns the keyslot id. An existing keyslot of this agent is
/// removed first (one at a time).
pub fn enrol(
    f: &File,
    volume_key: &[u8],
    passphrase: &[u8],
    iterations: u32,
) -> Result<String, KeyslotError> {
    use rand::RngCore as _;
    if volume_key.len() != 64 {
        return Err(KeyslotError::KeySize(volume_key.len()));
    }
    remove(f)?;
    let mut h = Headers::read(f)?;
    h.check_volume_key(volume_key)?;
    let split_len = volume_key.len() * STRIPES;
    let area_len = (split_len as u64).div_ceil(AREA_ALIGN) * AREA_ALIGN;
    let offset = h.free_area(area_len)?;
    let id = (0u32..)
        .map(|i| i.to_string())
        .find(|i| !h.obj("keyslots").is_ok_and(|k| k.contains_key(i)))
        .expect("a free keyslot id");
    let mut salt = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let key = slot_key(passphrase, &salt, iterations);
    let mut area = Zeroizing::new(vec![0u8; area_len as usize]);
    area[..split_len].copy_from_slice(&af_split(volume_key, STRIPES));
    let enc_len = split_len.div_ceil(AREA_SECTOR) * AREA_SECTOR;
    area_cipher(&key).encrypt_area(
        &mut area[..enc_len],
        AREA_SECTOR,
        0,
        xts_mode::get_tweak_default,
    );
    let io = |source| KeyslotError::Io {
        what: "writing the keyslot area",
        source,
    };
    // The area first: a keyslot the metadata names is complete.
    f.write_all_at(&area, offset).map_err(io)?;
    f.sync_data().map_err(io)?;
    let mut json = h.json.clone();
    json["keyslots"][&id] = json!({
        "type": "luks2",
        "key_size": volume_key.len(),
        "af": { "type": "luks1", "stripes": STRIPES, "hash": "sha256" },
        "area": {
            "type": "raw",
            "offset": offset.to_string(),
            "size": area_len.to_string(),
            "encryption": AREA_CIPHER,
            "key_size": 64,
        },
        "kdf": {
            "type": "pbkdf2",
            "hash": "sha256",
            "iterations": iterations,
            "salt": snpguard_protocol::attest::b64(&salt),
        },
    });
    let digest = h.segment_digest()?;
    json["digests"][&digest]["keyslots"]
        .as_array_mut()
        .ok_or_else(|| header(format!("digest {digest} has no keyslots list")))?
        .push(json!(id));
    if !json.get("tokens").is_some_and(Value::is_object) {
        json["tokens"] = json!({});
    }
    let token = (0u32..)
        .map(|i| i.to_string())
        .find(|i| {
            !json["tokens"]
                .as_object()
                .is_some_and(|t| t.contains_key(i))
        })
        .expect("a free token id");
    json["tokens"][&token] = json!({ "type": TOKEN_TYPE, "keyslots": [id] });
    h.write(f, json)?;
    Ok(id)
}

/// Opens keyslot `id` with `passphrase`; the volume key, checked against
/// the header's digest.
pub fn open(
    f: &File,
    h: &Headers,
    id: &str,
    passphrase: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeyslotError> {
    let bad = |why: &str| KeyslotError::Keyslot(id.to_owned(), why.to_owned());
    let k = h
        .obj("keyslots")?
        .get(id)
        .ok_or_else(|| bad("no such keyslot"))?;
    let s = |p: &str| k.pointer(p).and_then(Value::as_str);
    let u = |p: &str| k.pointer(p).and_then(Value::as_u64);
    if s("/type") != Some("luks2")
        || s("/af/type") != Some("luks1")
        || s("/af/hash") != Some("sha256")
        || s("/area/type") != Some("raw")
        || s("/area/encryption") != Some(AREA_CIPHER)
        || u("/area/key_size") != Some(64)
        || s("/kdf/type") != Some("pbkdf2")
        || s("/kdf/hash") != Some("sha256")
    {
        return Err(bad("not a pbkdf2/sha256, aes-xts-plain64 keyslot"));
    }
    let key_size = u("/key_size")
        .filter(|&n| n == 64)
        .ok_or_else(|| bad("key_size is not 64"))? as usize;
    let stripes = u("/af/stripes")
        .filter(|&n| n == STRIPES as u64)
        .ok_or_else(|| bad("stripes is not 4000"))? as usize;
    let iterations = u("/kdf/iterations")
        .and_then(|i| u32::try_from(i).ok())
        .filter(|i| (1..=10_000_000).contains(i))
        .ok_or_else(|| bad("iterations out of range"))?;
    let salt = s("/kdf/salt")
        .and_then(|v| snpguard_protocol::attest::unb64(v, 256))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad("salt is not base64"))?;
    let offset: u64 = s("/area/offset")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("area offset"))?;
    let size: u64 = s("/area/size")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("area size"))?;
    let split_len = key_size * stripes;
    let enc_len = split_len.div_ceil(AREA_SECTOR) * AREA_SECTOR;
    let (start, end) = h.keyslots_area()?;
    if (size as usize) < enc_len || offset < start || offset.saturating_add(size) > end {
        return Err(bad("the area is outside the keyslots area or too small"));
    }
    let mut area = Zeroizing::new(vec![0u8; enc_len]);
    f.read_exact_at(&mut area, offset)
        .map_err(|source| KeyslotError::Io {
            what: "reading the keyslot area",
            source,
        })?;
    let key = slot_key(passphrase, &salt, iterations);
    area_cipher(&key).decrypt_area(&mut area, AREA_SECTOR, 0, xts_mode::get_tweak_default);
    let vk = af_merge(&area[..split_len], key_size, stripes);
    h.check_volume_key(&vk)
        .map_err(|_| bad("the passphrase does not open it"))?;
    Ok(vk)
}

/// Removes this agent's keyslots (found by its token only) and their
/// token; the areas are overwritten with zeros. Returns the ids removed.
pub fn remove(f: &File) -> Result<Vec<String>, KeyslotError> {
    let mut h = Headers::read(f)?;
    let own = h.own_keyslots();
    if own.is_empty() {
        return Ok(own);
    }
    let mut json = h.json.clone();
    let mut areas = Vec::new();
    for id in &own {
        if let Some(k) = json["keyslots"].as_object_mut().and_then(|k| k.remove(id)) {
            let n = |p: &str| {
                k.pointer(p)
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<u64>().ok())
            };
            if let (Some(o), Some(s)) = (n("/area/offset"), n("/area/size")) {
                areas.push((o, s));
            }
        }
    }
    if let Some(digests) = json["digests"].as_object_mut() {
        for d in digests.values_mut() {
            if let Some(list) = d.get_mut("keyslots").and_then(Value::as_array_mut) {
                list.retain(|k| !own.iter().any(|o| k == o.as_str()));
            }
        }
    }
    if let Some(tokens) = json["tokens"].as_object_mut() {
        tokens.retain(|_, t| t.get("type").and_then(Value::as_str) != Some(TOKEN_TYPE));
    }
    // The metadata first: an area no keyslot names is free, whatever it holds.
    h.write(f, json)?;
    let (start, end) = h.keyslots_area()?;
    for (o, s) in areas {
        if o >= start && o.saturating_add(s) <= end {
            f.write_all_at(&vec![0u8; s as usize], o)
                .and_then(|()| f.sync_data())
                .map_err(|source| KeyslotError::Io {
                    what: "wiping the keyslot area",
                    source,
                })?;
        }
    }
    Ok(own)
}

#[cfg(test)]
pub(crate) mod tests;
