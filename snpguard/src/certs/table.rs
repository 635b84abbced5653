//! The GUID-keyed certificate table of the extended guest request (GHCB
//! spec, "SNP Extended Guest Request") and of the configfs-tsm `auxblob`.
//!
//! Layout: entries of 24 bytes `{guid[16], offset: u32 LE, length: u32 LE}`
//! terminated by an all-zero entry; offsets are from the start of the
//! table. GUIDs are stored in RFC 4122 (big-endian, string) byte order —
//! that is what the Linux sev-guest driver, the kernel's configfs-tsm and
//! the real auxblob in testdata (`c0b406a4a803…`) carry.

use super::cert::Cert;
use super::{CertError, CertSet};

/// ARK: `c0b406a4-a803-4952-9743-3fb6014cd0ae`.
pub const GUID_ARK: [u8; 16] = guid(0xc0b406a4, 0xa803, 0x4952, 0x9743_3fb6014cd0ae);
/// ASK: `4ab7b379-bbac-4fe4-a02f-05aef327c782`.
pub const GUID_ASK: [u8; 16] = guid(0x4ab7b379, 0xbbac, 0x4fe4, 0xa02f_05aef327c782);
/// VCEK: `63da758d-e664-4564-adc5-f4b93be8accd`.
pub const GUID_VCEK: [u8; 16] = guid(0x63da758d, 0xe664, 0x4564, 0xadc5_f4b93be8accd);
/// VLEK: `a8074bc2-a25a-483e-aae6-39c045a0b8a1`.
pub const GUID_VLEK: [u8; 16] = guid(0xa8074bc2, 0xa25a, 0x483e, 0xaae6_39c045a0b8a1);
/// CRL: `92f81bc3-5811-4d3d-97ff-d19f88dc67ea`.
pub const GUID_CRL: [u8; 16] = guid(0x92f81bc3, 0x5811, 0x4d3d, 0x97ff_d19f88dc67ea);

/// Largest table accepted (the kernel's default auxblob is a few pages).
pub const CERT_TABLE_MAX_SIZE: usize = 1024 * 1024;
/// Largest single entry accepted.
pub const CERT_TABLE_MAX_ENTRY: usize = 64 * 1024;
/// Most table entries accepted (before the terminator).
const MAX_ENTRIES: usize = 64;
const ENTRY_LEN: usize = 24;

/// A GUID in RFC 4122 byte order from its textual groups.
const fn guid(a: u32, b: u16, c: u16, d: u64) -> [u8; 16] {
    let a = a.to_be_bytes();
    let b = b.to_be_bytes();
    let c = c.to_be_bytes();
    let d = d.to_be_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

fn table_err(msg: impl Into<String>) -> CertError {
    CertError::Table(msg.into())
}

fn u32_le(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes);
    u32::from_le_bytes(b)
}

/// Builds a certificate table (the inverse of parsing): one entry per
/// (GUID, DER) pair, the all-zero terminator, then the certificates. What
/// a platform hands the guest; the simulated platform and tests use it.
pub fn encode(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
    let header = (entries.len() + 1) * 24;
    let mut table = Vec::with_capacity(header);
    let mut data = Vec::new();
    for (guid, der) in entries {
        table.extend_from_slice(guid);
        table.extend_from_slice(&((header + data.len()) as u32).to_le_bytes());
        table.extend_from_slice(&(der.len() as u32).to_le_bytes());
        data.extend_from_slice(der);
    }
    table.extend_from_slice(&[0u8; 24]);
    table.extend_from_slice(&data);
    table
}

/// Parses a certificate table; see the module documentation.
pub(crate) fn parse(table: &[u8]) -> Result<CertSet, CertError> {
    if table.len() > CERT_TABLE_MAX_SIZE {
        return Err(CertError::TooLarge {
            what: "certificate table".to_owned(),
            size: table.len(),
            limit: CERT_TABLE_MAX_SIZE,
        });
    }
    let mut set = CertSet::default();
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    let mut index = 0usize;
    loop {
        let start = index * ENTRY_LEN;
        let Some(entry) = table.get(start..start + ENTRY_LEN) else {
            return Err(table_err(format!(
                "entry {index} at byte {start} is truncated or the terminating all-zero entry is missing"
            )));
        };
        if entry.iter().all(|&b| b == 0) {
            break;
        }
        if index >= MAX_ENTRIES {
            return Err(table_err(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&entry[..16]);
        let offset = u32_le(&entry[16..20]) as usize;
        let length = u32_le(&entry[20..24]) as usize;
        if length > CERT_TABLE_MAX_ENTRY {
            return Err(CertError::TooLarge {
                what: format!("certificate table entry {index}"),
                size: length,
                limit: CERT_TABLE_MAX_ENTRY,
            });
        }
        let data = offset
            .checked_add(length)
            .and_then(|end| table.get(offset..end))
            .ok_or_else(|| {
                table_err(format!(
                    "entry {index}: offset {offset} + length {length} is outside the {}-byte table",
                    table.len()
                ))
            })?;
        let n = index;
        index += 1;
        let role = match id {
            GUID_ARK => "ARK",
            GUID_ASK => "ASK",
            GUID_VCEK => "VCEK",
            GUID_VLEK => "VLEK",
            GUID_CRL => "CRL",
            // Other GUIDs (e.g. a provider's own data) are not ours.
            _ => continue,
        };
        if length == 0 {
            return Err(table_err(format!("entry {n} ({role}) is empty")));
        }
        let range = offset..offset + length;
        if ranges
            .iter()
            .any(|r| r.start < range.end && range.start < r.end)
        {
            return Err(table_err(format!(
                "entry {n} ({role}) overlaps another certificate"
            )));
        }
        ranges.push(range);
        let what = format!("certificate table {role}");
        let duplicate = || CertError::Duplicate {
            role,
            first: "certificate table".to_owned(),
            second: "certificate table".to_owned(),
        };
        match role {
            "CRL" => {
                if set.crl.is_some() {
                    return Err(duplicate());
                }
                set.crl = Some(data.to_vec());
            }
            _ => {
                let cert = Cert::parse(data, &what)?;
                let slot = match role {
                    "ARK" => &mut set.ark,
                    "ASK" => &mut set.ask,
                    "VCEK" => &mut set.vcek,
                    _ => &mut set.vlek,
                };
                if slot.is_some() {
                    return Err(duplicate());
                }
                *slot = Some(cert);
            }
        }
    }
    Ok(set)
}
