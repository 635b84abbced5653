//! The partition table of convert's output disk: an `sfdisk --dump` of
//! the input disk rewritten with the encrypted partitions grown. Text from
//! the input image, so untrusted; kept free of libguestfs so the fuzz
//! targets (`fuzz/`) can include this file as it is.

use anyhow::{bail, Context, Result};

/// Rewrites an `sfdisk --dump` of the input disk for the output disk: each
/// partition of `grown` (the root, the data volumes) grows by `grow` bytes
/// and every partition moves by as much for each grown one before it.
/// Identifiers (label-id, partition UUIDs, types, names, attributes) stay.
pub fn rewrite_sfdisk_dump(
    dump: &str,
    grown: &[i32],
    grow: u64,
    in_dev: &str,
    out_dev: &str,
) -> Result<String> {
    let sector: u64 = dump
        .lines()
        .find_map(|l| l.strip_prefix("sector-size:"))
        .map_or(Ok(512), |v| v.trim().parse())
        .context("sfdisk dump: bad sector-size")?;
    if sector == 0 {
        bail!("sfdisk dump: sector-size 0");
    }
    if grow % sector != 0 {
        bail!("the LUKS header size is not a multiple of the {sector}-byte sector");
    }
    let grow = grow / sector;
    let label = dump
        .lines()
        .find_map(|l| l.strip_prefix("label:"))
        .map(str::trim)
        .unwrap_or("");
    if label != "gpt" && label != "dos" {
        bail!("the input disk has a {label:?} partition table; convert handles gpt and dos");
    }
    if let Some(n) = grown.iter().find(|n| label == "dos" && **n > 4) {
        bail!(
            "partition {n}, which convert encrypts, is a logical partition; convert handles \
             primary ones"
        );
    }
    let mut parts = Vec::new();
    let mut header = Vec::new();
    for line in dump.lines() {
        if let Some((dev, rest)) = line.split_once(" : ") {
            let num = dev
                .trim()
                .strip_prefix(in_dev)
                .and_then(|n| n.parse::<i32>().ok())
                .with_context(|| format!("sfdisk dump: unexpected device {dev}"))?;
            let mut fields: Vec<(String, String)> = Vec::new();
            for f in split_fields(rest)? {
                let f = f.trim();
                match f.split_once('=') {
                    Some((k, v)) => fields.push((k.trim().into(), v.trim().into())),
                    None => fields.push((f.into(), String::new())),
                }
            }
            parts.push((num, fields));
        } else if line.starts_with("last-lba:") || line.starts_with("device:") {
            // The output disk is larger; sfdisk computes these.
        } else if !line.trim().is_empty() {
            header.push(line.to_string());
        }
    }
    let get = |fields: &[(String, String)], k: &str| -> Result<u64> {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .with_context(|| format!("sfdisk dump: a partition has no {k}"))?
            .1
            .parse()
            .with_context(|| format!("sfdisk dump: bad {k}"))
    };
    let mut grown_starts = Vec::with_capacity(grown.len());
    for g in grown {
        let start = parts
            .iter()
            .find(|(n, _)| n == g)
            .map(|(_, f)| get(f, "start"))
            .transpose()?
            .with_context(|| format!("partition {g} is not in the partition table"))?;
        grown_starts.push(start);
    }
    let mut out = header.join("\n");
    out.push_str("\n\n");
    for (num, mut fields) in parts {
        let start = get(&fields, "start")?;
        let size = get(&fields, "size")?;
        let before = grown_starts.iter().filter(|s| **s < start).count() as u64;
        let too_far =
            || anyhow::anyhow!("sfdisk dump: partition {num} grown or moved is past 2^64 sectors");
        let start = before
            .checked_mul(grow)
            .and_then(|shift| start.checked_add(shift))
            .ok_or_else(too_far)?;
        let size = if grown.contains(&num) {
            size.checked_add(grow).ok_or_else(too_far)?
        } else {
            size
        };
        for (k, v) in fields.iter_mut() {
            if k == "start" {
                *v = start.to_string();
            } else if k == "size" {
                *v = size.to_string();
            }
        }
        let rendered: Vec<String> = fields
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        out.push_str(&format!("{out_dev}{num} : {}\n", rendered.join(", ")));
    }
    Ok(out)
}

/// Splits the fields of a partition line at commas outside double quotes
/// (partition names are quoted and may hold commas).
fn split_fields(rest: &str) -> Result<Vec<&str>> {
    let mut out = Vec::new();
    let (mut quoted, mut start) = (false, 0);
    for (i, c) in rest.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&rest[start..i]);
                start = i + 1;
            }
            '\n' | '\r' => bail!("sfdisk dump: a line break inside a partition line"),
            _ => {}
        }
    }
    if quoted {
        bail!("sfdisk dump: unterminated quote in a partition line");
    }
    out.push(&rest[start..]);
    Ok(out)
}
