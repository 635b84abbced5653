//! Text that came from elsewhere (a guest, a staging directory, a bus
//! caller) and is shown to an operator or written to the journal: the
//! check that a kernel command line is printable, and the escaping of
//! anything that could drive a terminal (ESC sequences, carriage return,
//! backspace, bidirectional overrides) before it is printed.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The first control character of `s` (C0, DEL or C1) and its byte
/// offset. A kernel command line has none: the kernel splits on spaces,
/// and anything below 0x20 only serves to hide text from a reviewer.
pub fn first_control(s: &str) -> Option<(usize, char)> {
    s.char_indices().find(|(_, c)| c.is_control())
}

/// Why a command line is refused: NUL, control character, too long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// Longer than [`snpguard::measure::MAX_CMDLINE_LEN`].
    #[error(
        "the command line is {len} bytes; at most {max} are accepted — shorten it",
        max = snpguard::measure::MAX_CMDLINE_LEN
    )]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A control character (NUL, tab, newline, CR, ESC, DEL, C1 …).
    #[error(
        "the command line has the control character {} at byte offset {offset}; \
         a command line is printable text — remove it",
        escape_char(*.ch)
    )]
    Control {
        /// Byte offset of the character.
        offset: usize,
        /// The character.
        ch: char,
    },
}

/// Checks a kernel command line submitted for measurement: at most
/// [`snpguard::measure::MAX_CMDLINE_LEN`] bytes, no control character.
pub fn check_cmdline(cmdline: &str) -> Result<(), CmdlineError> {
    if cmdline.len() > snpguard::measure::MAX_CMDLINE_LEN {
        return Err(CmdlineError::TooLong { len: cmdline.len() });
    }
    match first_control(cmdline) {
        Some((offset, ch)) => Err(CmdlineError::Control { offset, ch }),
        None => Ok(()),
    }
}

/// Characters that reorder or hide text on screen without being control
/// characters: the bidirectional embeddings, overrides and isolates, and
/// the marks (Trojan Source, CVE-2021-42574).
fn is_bidi_format(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape_char(c: char) -> String {
    match c {
        '\\' => "\\\\".to_owned(),
        '\t' => "\\t".to_owned(),
        '\n' => "\\n".to_owned(),
        '\r' => "\\r".to_owned(),
        c if (c as u32) < 0x100 => format!("\\x{:02x}", c as u32),
        c => format!("\\u{{{:x}}}", c as u32),
    }
}

/// `s` safe to print: control characters and bidirectional formatting
/// characters become `\xNN`, `\t`, `\n`, `\r` or `\u{NNNN}`, and a
/// backslash becomes `\\`, so that the printed text is unambiguous and
/// cannot move the cursor, clear the screen or hide what follows.
/// Borrowed when there is nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    let needs = |c: char| c == '\\' || c.is_control() || is_bidi_format(c);
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs(c) {
            let _ = out.write_str(&escape_char(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_is_borrowed_unchanged() {
        let s = "root=UUID=1234 console=ttyS0 quiet é ü 漢";
        assert!(matches!(escape(s), Cow::Borrowed(x) if x == s));
        assert_eq!(check_cmdline(s), Ok(()));
    }

    #[test]
    fn terminal_controls_are_escaped() {
        // A line that would show "quiet" while hiding "init=/bin/sh".
        let s = "quiet\r\x1b[2Kinit=/bin/sh\x7f\u{9b}\u{202e}x\\";
        assert_eq!(
            escape(s),
            "quiet\\r\\x1b[2Kinit=/bin/sh\\x7f\\x9b\\u{202e}x\\\\"
        );
        assert_eq!(escape("a\tb\nc\0"), "a\\tb\\nc\\x00");
    }

    #[test]
    fn every_control_character_is_refused_by_offset() {
        for c in (0u8..0x20)
            .map(char::from)
            .chain(['\x7f', '\u{85}', '\u{9b}'])
        {
            let s = format!("console=ttyS0 {c}x");
            assert_eq!(
                check_cmdline(&s),
                Err(CmdlineError::Control { offset: 14, ch: c }),
                "{c:?}"
            );
        }
        let e = check_cmdline("a\x1bb").unwrap_err().to_string();
        assert!(e.contains("\\x1b at byte offset 1"), "{e}");
        assert!(!e.contains('\x1b'), "{e}");
    }

    #[test]
    fn overlong_command_line_is_refused() {
        let max = snpguard::measure::MAX_CMDLINE_LEN;
        assert_eq!(check_cmdline(&"x".repeat(max)), Ok(()));
        assert_eq!(
            check_cmdline(&"x".repeat(max + 1)),
            Err(CmdlineError::TooLong { len: max + 1 })
        );
    }
}
