//! configfs-tsm evidence as JSON: `{"outblob": <base64>, "auxblob":
//! <base64>, ...}` — the report and the certificate table read from
//! `/sys/kernel/config/tsm/report/*/{outblob,auxblob}`.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use super::{CertError, CertSet};

/// Largest JSON document accepted.
pub const TSM_JSON_MAX_SIZE: usize = 2 * 1024 * 1024;
/// Largest decoded report accepted (a v5 report is 1184 bytes).
const OUTBLOB_MAX: usize = 16 * 1024;

#[derive(serde::Deserialize)]
struct TsmJson {
    outblob: String,
    #[serde(default)]
    auxblob: Option<String>,
}

fn tsm_err(msg: impl Into<String>) -> CertError {
    CertError::Tsm(msg.into())
}

/// Decodes base64 in either alphabet (standard or URL-safe, not mixed),
/// padded or not, with surrounding whitespace tolerated.
fn decode_b64(field: &str, text: &str, limit: usize) -> Result<Vec<u8>, CertError> {
    let text = text.trim();
    // 4 characters carry 3 bytes; reject before decoding anything huge.
    if text.len() / 4 * 3 > limit + 3 {
        return Err(CertError::TooLarge {
            what: format!("configfs-tsm {field}"),
            size: text.len() / 4 * 3,
            limit,
        });
    }
    let url = text.contains(['-', '_']);
    let std = text.contains(['+', '/']);
    let alphabet = match (url, std) {
        (true, true) => {
            return Err(tsm_err(format!(
                "{field}: mixes the standard and URL-safe base64 alphabets"
            )))
        }
        (true, false) => &alphabet::URL_SAFE,
        (false, _) => &alphabet::STANDARD,
    };
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(false);
    let bytes = GeneralPurpose::new(alphabet, config)
        .decode(text)
        .map_err(|e| tsm_err(format!("{field}: invalid base64: {e}")))?;
    if bytes.len() > limit {
        return Err(CertError::TooLarge {
            what: format!("configfs-tsm {field}"),
            size: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}

/// Parses configfs-tsm JSON into the raw report (`outblob`, not yet
/// parsed) and the certificates of `auxblob` (empty when absent).
pub fn parse_tsm_json(json: &[u8]) -> Result<(Vec<u8>, CertSet), CertError> {
    if json.len() > TSM_JSON_MAX_SIZE {
        return Err(CertError::TooLarge {
            what: "configfs-tsm json".to_owned(),
            size: json.len(),
            limit: TSM_JSON_MAX_SIZE,
        });
    }
    let doc: TsmJson = serde_json::from_slice(json).map_err(|e| tsm_err(e.to_string()))?;
    let report = decode_b64("outblob", &doc.outblob, OUTBLOB_MAX)?;
    if report.is_empty() {
        return Err(tsm_err("outblob is empty"));
    }
    let certs = match doc.auxblob.as_deref().map(str::trim) {
        None | Some("") => CertSet::default(),
        Some(aux) => {
            let table = decode_b64("auxblob", aux, super::CERT_TABLE_MAX_SIZE)?;
            CertSet::from_cert_table(&table)?
        }
    };
    Ok((report, certs))
}
